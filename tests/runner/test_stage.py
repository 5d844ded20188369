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
    assert list((ws / ".tmp").glob("train-*"))  # the killed run's half-written folder
    assert (ws / ".resume" / "train" / "step.txt").read_text() == "5"

    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert (ws / "train" / "resumed_from.txt").read_text() == "5"
    assert json.loads((ws / "train" / "manifest.json").read_text())["metrics"] == {"resumed_from": 5}
    assert not (ws / ".resume" / "train").exists()  # resume state is dropped once the stage completes
    assert not list((ws / ".tmp").glob("train-*"))  # the killed run's leftovers were removed
    assert not (ws / "train" / ".owner").exists()


@dataclass
class DataConfig:
    data: str = ""


def make_data_stage(calls: list) -> Stage:
    def run(ctx):
        calls.append(sorted(p.name for p in Path(ctx.config.data).iterdir()))
        return {}
    return Stage(name="read", config_cls=DataConfig, run=run, data_inputs=lambda cfg: [cfg.data])


def test_changed_dataset_makes_stage_rerun_and_says_what_changed(tmp_path, recon_log):
    data, ws, calls = tmp_path / "data", Workspace(tmp_path / "w"), []
    data.mkdir()
    for i in range(5):
        (data / f"r_{i}.png").write_bytes(b"x" * i)
    stage = make_data_stage(calls)
    run_stage(stage, ws, DataConfig(str(data)))
    assert run_stage(stage, ws, DataConfig(str(data))).skipped

    (data / "r_3.png").unlink()
    (data / "r_1.png").write_bytes(b"longer now")
    assert not run_stage(stage, ws, DataConfig(str(data))).skipped
    assert calls[-1] == ["r_0.png", "r_1.png", "r_2.png", "r_4.png"]
    said = recon_log.text
    assert "1 file removed (r_3.png)" in said and "1 file modified (r_1.png)" in said
    assert run_stage(stage, ws, DataConfig(str(data))).skipped


def test_changed_config_is_named_when_the_stage_reruns(tmp_path, recon_log):
    ws = Workspace(tmp_path / "w")
    stage = make_counting_stage([])
    run_stage(stage, ws, CountConfig(3))
    run_stage(stage, ws, CountConfig(4))
    assert "value 3 -> 4" in recon_log.text


def test_failed_start_creates_no_workspace(tmp_path):
    ws = Workspace(tmp_path / "w", create=False)
    with pytest.raises(FileNotFoundError, match="no-such-data"):
        run_stage(make_data_stage([]), ws, DataConfig(str(tmp_path / "no-such-data")))
    assert not ws.root.exists()


def test_a_live_run_of_the_same_stage_is_refused(tmp_path):
    ws = Workspace(tmp_path / "w")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = ws.root / ".tmp" / "count-live0000"
        live.mkdir(parents=True)
        (live / ".owner").write_text(str(other.pid))
        with pytest.raises(WorkspaceError, match=f"already running.*{other.pid}"):
            run_stage(make_counting_stage([]), ws, CountConfig())
        assert live.exists()  # a live run's folder is not touched
    finally:
        other.kill()
        other.wait()
    assert not run_stage(make_counting_stage([]), ws, CountConfig()).skipped  # its owner is gone now
    assert not live.exists()


def test_unwritable_workspace_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(WorkspaceError, match="cannot write to the workspace .*--workspace"):
        run_stage(make_counting_stage([]), Workspace(blocker / "w", create=False), CountConfig())
