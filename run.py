#!/usr/bin/env python3
"""recon: photos -> camera poses -> neural fields (NeRF, IDR) -> depth, novel views, meshes, metrics.

    python run.py                                   # demo: built-in scene -> every available stage -> outputs/demo/
    python run.py demo --method idr                 # the same chain with IDR instead of NeRF
    python run.py synthetic --out DIR [--views N --size S --seed K --panoramas]
    python run.py poses --data DIR --workspace W    # import poses, or estimate them
    python run.py <stage> --workspace W [--config configs/X.yaml] [key=value ...] [--force]
    python run.py view --workspace W [--port 8080]  # live 3-D viewer in the browser

Any config key can be given as ``key=value`` or as ``--key value`` (``--flag`` alone means true).
``--debug`` shows the traceback of an error (it is always written to ``W/logs/run.log``).

Interrupted (Ctrl-C, a crash, kill -9)? Run the same command again: finished stages are kept and
skipped, a training stage resumes from its last checkpoint (at most ~30 s of training is lost).
Changed the data or the config? A stage re-runs when its config, its inputs in the workspace or
its dataset folder (file names, sizes, modification times) changed, and says what changed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from datasets.scene import SceneError  # noqa: E402
from pipeline.runner.config import ConfigError, valid_keys  # noqa: E402
from pipeline.runner.log import get_logger  # noqa: E402
from pipeline.runner.runtime import flush_denormals, keep_freed_memory  # noqa: E402
from pipeline.runner.stage import run_stage  # noqa: E402
from pipeline.runner.workspace import Workspace, WorkspaceError  # noqa: E402

DEMO_DIR = ROOT / "outputs" / "demo"


def flags_to_overrides(extra: list[str]) -> list[str]:
    """``--key value`` / ``--flag`` / ``key=value`` -> ``key=value`` overrides (dashes become underscores)."""
    overrides, i = [], 0
    while i < len(extra):
        arg = extra[i]
        if arg.startswith("--"):
            key = arg[2:].replace("-", "_")
            if "=" in key:
                overrides.append(key)
            elif i + 1 < len(extra) and not extra[i + 1].startswith("--") and "=" not in extra[i + 1]:
                overrides.append(f"{key}={extra[i + 1]}")
                i += 1
            else:
                overrides.append(f"{key}=true")
        elif "=" in arg:
            overrides.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r}: give config values as key=value or --key value")
        i += 1
    return overrides


def run_one_stage(name: str, workspace: Path, config_path, overrides: list[str], force: bool) -> None:
    from stages import available_stages

    stages = available_stages()
    if name not in stages:
        raise ConfigError(f"no stage {name!r}; available: {', '.join(stages)}")
    stage = stages[name]
    config = stage.load_config(config_path, overrides)
    result = run_stage(stage, Workspace(workspace, create=False), config, force=force)
    if result.manifest:  # under torchrun, ranks > 0 have none: rank 0 reports
        print_metrics(name, result.manifest.get("metrics", {}), result.out_dir)


def print_metrics(name: str, metrics: dict, out_dir: Path) -> None:
    print(f"{name}: outputs in {out_dir}")
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    for key, value in flat.items():
        print(f"  {key:<28} {value:.4g}" if isinstance(value, float) else f"  {key:<28} {value}")


def cmd_synthetic(args, extra) -> None:
    from datasets.synthetic import SyntheticConfig, generate

    config = SyntheticConfig(views=args.views, size=args.size, seed=args.seed, panoramas=args.panoramas)
    t0 = time.time()
    generate(Path(args.out), config)
    print(f"synthetic scene written to {args.out} in {time.time() - t0:.1f}s")


def cmd_demo(args, extra) -> None:
    """Built-in scene -> every available stage of the method's chain, in outputs/demo/."""
    from datasets.synthetic import SyntheticConfig, generate
    from pipeline.training import distributed
    from stages import DEMO_CHAINS, available_stages

    out = Path(args.out)
    scene_dir = out / "scene"
    log = get_logger("demo")
    t0 = time.time()
    distributed.init_from_env()  # under torchrun: rank 0 writes the scene, the training stages use every rank
    if distributed.is_main():
        generate(scene_dir, SyntheticConfig(views=args.views, size=args.size, seed=args.seed, panoramas=args.panoramas))
    distributed.barrier()
    log.info(f"built-in scene in {scene_dir} ({time.time() - t0:.1f}s)")
    stages = available_stages()
    chain = [name for name in DEMO_CHAINS[args.method] if name in stages]
    workspace = Workspace(out / f"workspace-{args.method}", create=False)
    overrides = flags_to_overrides(extra)
    chain_keys = set()
    for name in chain:
        chain_keys |= {k.split(".")[0] for k in valid_keys(stages[name].config_cls)}
        chain_keys |= set(getattr(stages[name].config_cls, "renamed_keys", {}))
    unused = [o for o in overrides if o.split("=", 1)[0].split(".")[0] not in chain_keys]
    if unused:
        raise ConfigError(f"{', '.join(unused)}: no stage of the {args.method} demo ({', '.join(chain)}) has "
                          f"such a key; `python run.py <stage> --help` lists each stage's keys")
    for name in chain:
        stage = stages[name]
        stage_overrides = [f"data={scene_dir}"] if name == "poses" else []
        # demo-wide overrides apply to the stages that have those keys (e.g. max_time_s=60)
        keys = {f.name for f in dataclasses.fields(stage.config_cls)}
        keys |= set(getattr(stage.config_cls, "renamed_keys", {}))  # old names still work for a release
        stage_overrides += [o for o in overrides if o.split("=", 1)[0].split(".")[0] in keys]
        config = stage.load_config(None, stage_overrides)
        result = run_stage(stage, workspace, config, force=args.force)
        if result.manifest:
            print_metrics(name, result.manifest.get("metrics", {}), result.out_dir)
    if not distributed.is_main():
        return
    missing = [n for n in DEMO_CHAINS[args.method] if n not in stages]
    print(f"demo done in {time.time() - t0:.1f}s: workspace {workspace.root}"
          + (f" (stages not available yet: {', '.join(missing)})" if missing else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    demo = sub.add_parser("demo", help="built-in scene through every available stage (the default command)")
    from stages import DEMO_CHAINS

    demo.add_argument("--method", choices=tuple(DEMO_CHAINS), default="nerf")
    demo.add_argument("--out", default=str(DEMO_DIR), help="output folder (default outputs/demo)")
    demo.add_argument("--views", type=int, default=50)
    demo.add_argument("--size", type=int, default=200)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--panoramas", action="store_true")
    demo.add_argument("--force", action="store_true", help="re-run stages that are up to date")

    syn = sub.add_parser("synthetic", help="write the built-in synthetic scene")
    syn.add_argument("--out", required=True)
    syn.add_argument("--views", type=int, default=50)
    syn.add_argument("--size", type=int, default=200)
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--panoramas", action="store_true", help="also write the indoor scene's panoramas")

    view = sub.add_parser("view", help="a live 3-D viewer of a workspace in the browser (viser)")
    from pipeline.viewer.server import add_arguments as add_view_arguments

    add_view_arguments(view)  # --workspace --port --host --max-seconds --device --method --threads

    from stages import available_stages

    for name, stage in available_stages().items():
        defaults = f" Defaults in configs/{stage.default_config}." if stage.default_config else ""
        p = sub.add_parser(name, help=stage.description,
                           description=f"{stage.description}. Config keys: "
                           f"{', '.join(valid_keys(stage.config_cls))}.{defaults}")
        p.add_argument("--workspace", required=True, help="the workspace folder")
        p.add_argument("--config", default=None, help="a YAML config (a path or a name in configs/)")
        p.add_argument("--force", action="store_true", help="re-run even if the outputs are up to date")
        if name == "poses":
            p.add_argument("--data", help="the dataset folder (any supported format)")
    return parser


# what a user can cause (bad data, config, workspace, paths): one line and exit code 2; anything else
# is a bug and keeps its traceback
USER_ERRORS = (ConfigError, WorkspaceError, SceneError, ValueError, FileNotFoundError, NotADirectoryError,
               IsADirectoryError, PermissionError)


def user_error_line(exc: BaseException) -> str:
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}; choose a folder you can write to"
    if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
        return f"no space left on the disk writing {exc.filename or ''}; free space and run again (finished work is kept)"
    return " ".join(str(exc).split())  # one line, however the message was built


def main(argv=None) -> int:
    flush_denormals()
    keep_freed_memory()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("RECON_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv or (argv[0].startswith("--") and argv[0] not in ("-h", "--help")) or "=" in argv[0]:
        argv = ["demo"] + argv  # `python run.py max_time_s=60` is the demo with an override
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    workspace = getattr(args, "workspace", None)
    try:
        if args.command == "demo":
            cmd_demo(args, extra)
        elif args.command == "view":
            if extra:
                parser.error(f"unknown arguments: {extra}")
            from pipeline.viewer.server import run_from_args

            return run_from_args(args)
        elif args.command == "synthetic":
            if extra:
                parser.error(f"unknown arguments: {extra}")
            cmd_synthetic(args, extra)
        else:
            overrides = flags_to_overrides(extra)
            if getattr(args, "data", None):
                overrides.insert(0, f"data={os.path.abspath(args.data)}")
            run_one_stage(args.command, Path(args.workspace), args.config, overrides, args.force)
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; an interrupted stage resumes from its last checkpoint "
              "when run again", file=sys.stderr)
        return 130
    except BaseException as exc:
        if debug or not (isinstance(exc, USER_ERRORS) or (isinstance(exc, OSError) and exc.errno == 28)):
            raise
        log = Path(workspace) / "logs" / "run.log" if workspace else None
        where = f" (details in {log}; --debug shows them here)" if log is not None and log.exists() else ""
        print(f"error: {user_error_line(exc)}{where}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
