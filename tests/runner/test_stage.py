"""The stage runner: up-to-date stages are skipped, --force re-runs, killed stages leave no
half-written output under the final name, and resumable state survives the kill."""
import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.runner.stage import Stage, run_stage
from pipeline.runner.workspace import Workspace, WorkspaceError

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class CountConfig:
    value: int = 1


def make_counting_stage(calls: list) -> Stage:
    def run(ctx):
        calls.append(ctx.config.value)
        (ctx.out_dir / "result.txt").write_text(str(ctx.config.value * 2))
        return {"doubled": ctx.config.value * 2}
    return Stage(name="count", config_cls=CountConfig, run=run)


def test_up_to_date_stage_is_skipped_and_force_reruns(tmp_path):
    ws, calls = Workspace(tmp_path / "w"), []
    stage = make_counting_stage(calls)
    first = run_stage(stage, ws, CountConfig(3))
    assert not first.skipped and calls == [3]
    assert (ws.stage_dir("count") / "result.txt").read_text() == "6"
    manifest = json.loads((ws.stage_dir("count") / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["metrics"] == {"doubled": 6}
    assert manifest["config"] == {"value": 3} and "torch" in manifest["versions"] and manifest["duration_s"] >= 0

    assert run_stage(stage, ws, CountConfig(3)).skipped and calls == [3]
    assert not run_stage(stage, ws, CountConfig(3), force=True).skipped and calls == [3, 3]
    assert not run_stage(stage, ws, CountConfig(4)).skipped and calls == [3, 3, 4]  # new config -> re-run
    assert (ws.stage_dir("count") / "result.txt").read_text() == "8"


def test_changed_input_file_makes_stage_rerun(tmp_path):
    ws, calls = Workspace(tmp_path / "w"), []
    (ws.root / "poses").mkdir()
    (ws.root / "poses" / "transforms.json").write_text("{}")
    stage = make_counting_stage(calls)
    stage.inputs = ("poses/transforms.json",)
    run_stage(stage, ws, CountConfig())
    assert run_stage(stage, ws, CountConfig()).skipped
    (ws.root / "poses" / "transforms.json").write_text('{"frames": []}')
    assert not run_stage(stage, ws, CountConfig()).skipped


def test_missing_input_says_which_command_makes_it(tmp_path):
    stage = Stage(name="nerf", config_cls=CountConfig, run=lambda ctx: {}, inputs=("poses/transforms.json",),
                  produced_by={"poses/transforms.json": "`python run.py poses --data DIR --workspace W`"})
    with pytest.raises(WorkspaceError, match="run.py poses"):
        run_stage(stage, Workspace(tmp_path / "w"), CountConfig())


def test_failing_stage_keeps_previous_output(tmp_path):
    ws, calls = Workspace(tmp_path / "w"), []
    run_stage(make_counting_stage(calls), ws, CountConfig(1))

    def broken(ctx):
        (ctx.out_dir / "result.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_stage(Stage(name="count", config_cls=CountConfig, run=broken), ws, CountConfig(2))
    assert (ws.stage_dir("count") / "result.txt").read_text() == "2"
    assert json.loads((ws.stage_dir("count") / "manifest.json").read_text())["config"] == {"value": 1}


KILLED_STAGE = textwrap.dedent("""
    import os, signal, sys
    from dataclasses import dataclass
    sys.path.insert(0, {root!r})
    from pipeline.runner.stage import Stage, run_stage
    from pipeline.runner.workspace import Workspace

    @dataclass
    class Cfg:
        steps: int = 10

    def run(ctx):
        done = ctx.resume_dir / "step.txt"
        start = int(done.read_text()) if done.exists() else 0
        (ctx.out_dir / "resumed_from.txt").write_text(str(start))
        for step in range(start, ctx.config.steps):
            (ctx.out_dir / "partial.bin").write_bytes(b"x" * 1000)
            done.write_text(str(step + 1))  # a checkpoint, as a training stage would keep
            if step == 4 and start == 0:
                os.kill(os.getpid(), signal.SIGKILL)  # killed mid-way, as by the OOM killer or Ctrl-C twice
        return {{"resumed_from": start}}

    run_stage(Stage(name="train", config_cls=Cfg, run=run), Workspace({ws!r}), Cfg())
""")


def test_killed_stage_leaves_no_output_under_final_name_and_resumes(tmp_path):
    ws = tmp_path / "w"
    script = KILLED_STAGE.format(root=str(ROOT), ws=str(ws))
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert killed.returncode == -9
    assert not (ws / "train").exists()  # nothing half-written under the final name
    assert (ws / ".resume" / "train" / "step.txt").read_text() == "5"

    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert (ws / "train" / "resumed_from.txt").read_text() == "5"
    assert json.loads((ws / "train" / "manifest.json").read_text())["metrics"] == {"resumed_from": 5}
    assert not (ws / ".resume" / "train").exists()  # resume state is dropped once the stage completes
