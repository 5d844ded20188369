"""The layering README's "Architecture" section promises, checked on the source: stages only
orchestrate (no stage imports another, library code imports no stage), module imports form no
cycle (function-level imports included), package ``__init__`` files stay empty, modules stay short,
and each stage's default config is its dataclass."""
from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages", "datasets")
MAX_MODULE_LINES = 400


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the product's packages."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the product's modules it imports anywhere in its body. ``from pkg import mod``
    counts as importing ``pkg.mod``; the implicit import of a parent package does not count."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                            for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_modules_import_no_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_no_stage_imports_another_and_the_library_imports_no_stage():
    for module, deps in import_graph().items():
        stage_deps = {d for d in deps if d.startswith("stages.")}
        if module.startswith("stages."):
            assert not stage_deps, f"{module} imports the stage(s) {sorted(stage_deps)}: call library code instead"
        elif module != "stages":
            assert not stage_deps and "stages" not in deps, f"library module {module} imports {sorted(stage_deps)}"


def test_library_package_init_files_are_empty():
    for path in ROOT.glob("pipeline/**/__init__.py"):
        assert not path.read_text().strip(), f"{path} re-exports names: import them from their own module"


def test_modules_are_short():
    too_long = {str(p.relative_to(ROOT)): n for p in _modules().values()
                if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by job): {too_long}"


def _stages():
    from stages import available_stages

    return available_stages().items()


@pytest.mark.parametrize("name,stage", list(_stages()))
def test_the_default_config_is_the_dataclass(name, stage):
    assert stage.default_config is None, f"stage {name}: defaults belong in {stage.config_cls.__name__}, not a YAML file"
    assert stage.load_config() == stage.config_cls()
    assert dataclasses.is_dataclass(stage.config_cls)
