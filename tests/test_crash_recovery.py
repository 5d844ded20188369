"""Crash recovery of the real training stages (issue #26): time-based checkpoints, kill -9 and
resume through the CLI, a checkpoint of another config or a truncated one, and budgets that are
checked before any work.

The kill tests run ``run.py nerf`` / ``run.py idr`` on a tiny config in a subprocess, kill its
process group with SIGKILL after its first checkpoint, re-run the same command and check that it
resumed past that checkpoint, kept the time budget across the two runs, completed its outputs and
beat an untrained model of the same config.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ROOT

NERF_TINY = ["model.grid.levels=6", "model.grid.features_per_level=2", "model.grid.log2_table_size=12",
             "model.grid.base_resolution=4", "model.grid.finest_resolution=64", "model.grid.backend=torch",
             "model.width=16", "model.occupancy_resolution=8", "model.march_steps=32", "samples_per_batch=2048",
             "initial_rays=128", "occupancy_warmup_steps=4", "occupancy_update_every=2", "lpips=false",
             "cpu_threads=1"]
IDR_TINY = ["batch_rays=256", "eikonal_points=64", "mesh_resolution=32", "sdf.hidden_dim=32", "sdf.feature_dim=8",
            "sdf.init_radius=0.25", "renderer.hidden_dim=32", "tracing.steps=8", "tracing.samples=16"]
EVERY_S = 1.0  # checkpoint period of the kill tests (trained seconds)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A workspace posed by ``run.py poses`` on the shaded-sphere scene (8 training, 2 test views)."""
    from tests.scenes import write_sphere_scene

    root = tmp_path_factory.mktemp("crash")
    data = write_sphere_scene(root / "data")
    _cli("poses", "--data", str(data), "--workspace", str(root / "W"))
    return root / "W"


def _env():
    return {**os.environ, "RECON_QUIET": "1", "CI": "true", "PYTHONUNBUFFERED": "1"}


def _cli(*args, timeout=120) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _kill_after_first_checkpoint(stage: str, ws: Path, args: list[str], log: Path) -> dict:
    """Start ``run.py <stage>``; once its first checkpoint is on disk, wait a little (a kill at some
    moment after it), SIGKILL the whole process group. Returns the checkpoint then on disk and the
    wall seconds between its writing and the kill (an upper bound of the training lost)."""
    ckpt = ws / ".resume" / stage / "checkpoint.pt"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), stage, "--workspace", str(ws), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT, start_new_session=True)
        try:
            deadline = time.time() + 90
            while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            assert ckpt.exists(), f"no checkpoint before the run ended:\n{log.read_text()}"
            time.sleep(0.6 * EVERY_S)
            assert proc.poll() is None, f"the run ended before the kill:\n{log.read_text()}"
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = time.time()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    return {"state": state, "lost_wall_s": killed_at - ckpt.stat().st_mtime}


def _record(name: str, row: dict) -> None:
    """Print what the kill cost (``pytest -s`` shows it; the issue's closing note quotes it)."""
    print(f"\n{name}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))


def _untrained_nerf_psnr(ws: Path, overrides: list[str], out: Path) -> float:
    """PSNR of the same config's model after one training step, scored like the stage scores."""
    from pipeline.evaluation.nerf_views import evaluate
    from pipeline.runner.config import load_config
    from pipeline.runner.workspace import Workspace
    from pipeline.training.nerf_fit import fit_nerf
    from stages.nerf import NerfConfig

    cfg = load_config(NerfConfig, None, overrides + ["max_steps=1", "max_time_s=0"])
    w = Workspace(ws)
    scene = w.load_scene()
    model, _ = fit_nerf(scene, scene.split("train"), cfg, torch.device("cpu"), None)
    out.mkdir(parents=True, exist_ok=True)
    return evaluate(model, scene, scene.eval_split(), out, w.normalization().scale, cfg.eval_chunk, False, False,
                    torch.device("cpu"))["psnr"]


def _untrained_idr_metrics(ws: Path, overrides: list[str], out: Path) -> dict:
    """PSNR and mask IoU of the same config's untrained model, scored like the stage scores."""
    from pipeline.evaluation.idr_views import evaluate_views
    from pipeline.models.idr.io import build_model
    from pipeline.runner.config import load_config
    from pipeline.runner.workspace import Workspace
    from pipeline.training.idr_data import MaskOptions, background_color, load_masks, load_views, train_test_split
    from stages.idr import IDRConfig

    cfg = load_config(IDRConfig, None, overrides)
    w = Workspace(ws)
    scene = w.load_scene()
    train_idx, test_idx = train_test_split(scene, cfg.holdout_every)
    opts = MaskOptions(cfg.mask_source, cfg.mask_folder, cfg.mask_threshold, cfg.mask_background)
    train_views = load_views(scene, train_idx, load_masks(scene, train_idx, opts), cfg.downscale)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.sdf, cfg.renderer, cfg.tracing, background_color(cfg.background, train_views)).eval()
    views = load_views(scene, test_idx, load_masks(scene, test_idx, opts), cfg.eval_downscale)
    out.mkdir(parents=True, exist_ok=True)
    return evaluate_views(model, views, scene, out, w.normalization().scale, cfg.render_chunk)


def _assert_complete(ws: Path, stage: str, files: tuple[str, ...]) -> dict:
    out = ws / stage
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done"
    for name in files:
        assert (out / name).exists(), name
    assert not (ws / ".resume" / stage).exists()  # cleared once the stage completed
    return json.loads((out / "metrics.json").read_text())


def test_nerf_killed_after_a_checkpoint_resumes_past_it_within_its_time_budget(workspace, tmp_path, one_thread):
    budget = 4.0
    args = NERF_TINY + ["max_steps=100000", f"max_time_s={budget}", f"checkpoint_every_s={EVERY_S}"]
    killed = _kill_after_first_checkpoint("nerf", workspace, args, tmp_path / "killed.log")
    step, trained = killed["state"]["step"], killed["state"]["elapsed"]
    assert step > 0 and EVERY_S <= trained < budget
    assert killed["lost_wall_s"] < EVERY_S + 1.0  # at most one period of training lost (+ the kill's delay)

    t0 = time.time()
    log = _cli("nerf", "--workspace", str(workspace), *args)
    resumed_wall = time.time() - t0
    assert f"nerf: resuming from step {step} " in log, log
    metrics = _assert_complete(workspace, "nerf", ("model.pt", "renders/r_4.png", "depth/r_4.npy"))
    assert metrics["steps"] > step
    # the budget counts the seconds trained before the kill: the total ends at it, not above
    assert budget <= metrics["train_time_s"] < budget + 0.5
    untrained = _untrained_nerf_psnr(workspace, NERF_TINY, tmp_path / "untrained")
    assert math.isfinite(metrics["psnr"]) and metrics["psnr"] > untrained + 3.0, (metrics["psnr"], untrained)
    assert metrics["eval_description"] == "2 views of the test split"
    _record("nerf kill -9", {"checkpoint_step": step, "checkpoint_trained_s": trained,
                             "lost_wall_s": killed["lost_wall_s"], "final_steps": metrics["steps"],
                             "train_time_s": metrics["train_time_s"], "resumed_run_wall_s": resumed_wall,
                             "psnr": metrics["psnr"], "untrained_psnr": untrained})


def test_idr_killed_after_a_checkpoint_resumes_past_it_within_its_time_budget(workspace, tmp_path, one_thread):
    budget = 4.0
    args = IDR_TINY + ["max_steps=100000", f"max_time_s={budget}", f"checkpoint_every_s={EVERY_S}"]
    killed = _kill_after_first_checkpoint("idr", workspace, args, tmp_path / "killed.log")
    step, trained = killed["state"]["iteration"], killed["state"]["elapsed_s"]
    assert step > 0 and EVERY_S <= trained < budget
    assert killed["lost_wall_s"] < EVERY_S + 1.0

    log = _cli("idr", "--workspace", str(workspace), *args)
    assert f"idr: resuming from step {step} " in log, log
    metrics = _assert_complete(workspace, "idr", ("model.pt", "mesh.ply", "renders/r_4.png", "depth/r_4.npy"))
    assert metrics["iterations"] > step and metrics["stopped_by_time"]
    assert budget <= metrics["train_time_s"] < budget + 1.0
    untrained = _untrained_idr_metrics(workspace, IDR_TINY, tmp_path / "untrained")
    assert math.isfinite(metrics["psnr"]) and metrics["psnr"] > untrained["psnr"] + 1.0, (metrics, untrained)
    assert metrics["mask_iou"] > untrained["mask_iou"] + 0.2, (metrics["mask_iou"], untrained["mask_iou"])
    _record("idr kill -9", {"checkpoint_step": step, "checkpoint_trained_s": trained,
                            "lost_wall_s": killed["lost_wall_s"], "final_steps": metrics["iterations"],
                            "train_time_s": metrics["train_time_s"], "psnr": metrics["psnr"],
                            "untrained_psnr": untrained["psnr"], "mask_iou": metrics["mask_iou"],
                            "untrained_mask_iou": untrained["mask_iou"]})


class FakeClock:
    """A clock that advances ``tick`` seconds at every reading."""

    def __init__(self, tick: float):
        self.now, self.tick = 1000.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_both_stages_checkpoint_every_30_trained_seconds_by_default(tmp_path, monkeypatch, one_thread):
    """With a clock that makes each NeRF step take 2.5 s, the first checkpoint is written at
    step 12 (30 s), the next at step 24 (60 s); the IDR loop's first one 30-33 s in."""
    from pipeline.training import idr as idr_training
    from pipeline.training import nerf as nerf_training
    from pipeline.training.common import settings_from
    from pipeline.training.nerf_data import PixelData
    from pipeline.models.nerf.model import default_aabb
    from stages.idr import IDRConfig
    from stages.nerf import NerfConfig
    from tests.scenes import write_ball_workspace
    from tests.tiny_configs import build_nerf_model, tiny_nerf_config

    assert NerfConfig().checkpoint_every_s == 30.0 and IDRConfig().checkpoint_every_s == 30.0
    assert NerfConfig().checkpoint_every == 0 and IDRConfig().checkpoint_every == 0

    saves = []
    monkeypatch.setattr(nerf_training, "save_checkpoint", lambda path, state: saves.append((state["step"], state["elapsed"])))
    monkeypatch.setattr(nerf_training, "time", SimpleNamespace(perf_counter=FakeClock(2.5)))
    cfg = tiny_nerf_config(max_steps=30, checkpoint_every=NerfConfig.checkpoint_every,
                           checkpoint_every_s=NerfConfig.checkpoint_every_s)
    scene = write_ball_workspace(tmp_path).load_scene()
    data = PixelData(scene, scene.split("train"), torch.device("cpu"), use_alpha=True)
    model = build_nerf_model(cfg, default_aabb(scene.bounds, cfg.scene_radius))
    nerf_training.train(model, data, settings_from(nerf_training.NeRFTrainSettings, cfg), torch.device("cpu"), tmp_path)
    assert saves == [(12, 30.0), (24, 60.0), (30, 75.0)]  # the last one: the end of training

    saves.clear()
    monkeypatch.setattr(idr_training, "save_checkpoint", lambda path, state: saves.append(
        (state["iteration"], state["elapsed_s"])))
    monkeypatch.setattr(idr_training, "time", SimpleNamespace(time=FakeClock(1.0)))
    monkeypatch.setattr(idr_training, "training_step", lambda *a, **k: (
        sum(p.sum() * 0 for p in a[0].parameters()), {"loss": 0.0, "psnr": 0.0, "hit_in_mask": 0.0}))
    from tests.tiny_configs import tiny_idr_config
    from pipeline.models.idr.io import build_model

    icfg = tiny_idr_config(max_steps=15)
    settings = settings_from(idr_training.TrainSettings, icfg, resume_config=None)
    bank = SimpleNamespace(sample=lambda n, g: (torch.zeros(1, dtype=torch.long), torch.zeros(1, 2),
                                                torch.zeros(1, 3), torch.zeros(1, dtype=torch.bool)))
    imodel = build_model(icfg.sdf, icfg.renderer, icfg.tracing, [1, 1, 1])
    idr_training.train(imodel, None, None, bank, icfg.loss, settings, tmp_path, SimpleNamespace(
        info=lambda *a: None, warning=lambda *a: None))
    first_step, first_s = saves[0]
    assert 30.0 <= first_s < 33.0 and 8 <= first_step <= 11, saves
    assert len(saves) == 2 and saves[-1][0] == 15, saves  # one periodic, one at the end (15 steps ~ 45 s)


def _interrupted_run(stage_module, ws, cfg, monkeypatch, target, name, at_call: int):
    """Run a stage in-process, raising KeyboardInterrupt (Ctrl-C) at the ``at_call``-th call of
    ``target.name``; the stage keeps its checkpoint."""
    from pipeline.runner.stage import run_stage

    original = getattr(target, name)
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage_module.STAGE, ws, cfg)
    monkeypatch.setattr(target, name, original)
    ckpt = ws.root / ".resume" / stage_module.STAGE.name / "checkpoint.pt"
    assert ckpt.exists()
    return ckpt


@pytest.mark.parametrize("stage_name", ["nerf", "idr"])
def test_a_changed_config_or_a_damaged_checkpoint_warns_and_starts_afresh(stage_name, tmp_path, monkeypatch,
                                                                           recon_log, one_thread):
    """Resuming after a change of the model's size: a warning naming the change, the old
    checkpoint moved aside, a fresh and complete run (no traceback); the same for a checkpoint
    without a recorded config that does not fit the model, and for a truncated checkpoint."""
    import stages.idr as idr
    import stages.nerf as nerf
    from pipeline.runner.stage import run_stage
    from pipeline.runner.workspace import Workspace
    from pipeline.training import idr as idr_training
    from pipeline.training.nerf_data import PixelData
    from tests.scenes import write_sphere_scene
    from tests.tiny_configs import tiny_idr_config, tiny_nerf_config
    from stages.poses import STAGE as POSES, PosesConfig

    ws = Workspace(tmp_path / "W")
    run_stage(POSES, ws, PosesConfig(data=str(write_sphere_scene(tmp_path / "data"))))
    # three sizes of the model: each run below differs from the last completed one (else it is up to date)
    if stage_name == "nerf":
        module, steps_key, ckpt_key, size_key = nerf, "steps", "step", "model.width"
        a, b, c = (tiny_nerf_config(max_steps=10) for _ in range(3))
        b.model.width, c.model.width = 32, 24
        interrupt = (PixelData, "sample")
    else:
        module, steps_key, ckpt_key, size_key = idr, "iterations", "iteration", "sdf.hidden_dim"
        a, b, c = (tiny_idr_config(max_steps=10, **{"sdf.hidden_dim": n}) for n in (32, 48, 40))
        interrupt = (idr_training, "training_step")
    resume = ws.root / ".resume" / stage_name

    def steps_trained():
        return json.loads((ws.stage_dir(stage_name) / "metrics.json").read_text())[steps_key]

    # 1. another config: the warning names what changed
    ckpt = _interrupted_run(module, ws, a, monkeypatch, *interrupt, at_call=6)
    assert torch.load(ckpt, weights_only=False)[ckpt_key] == 5  # Ctrl-C saved the steps done
    recon_log.clear()
    run_stage(module.STAGE, ws, b)
    assert "was made with another config" in recon_log.text and size_key in recon_log.text, recon_log.text
    assert "resuming" not in recon_log.text and steps_trained() == 10 and not resume.exists()
    assert (ws.stage_dir(stage_name) / "manifest.json").exists()

    # 2. no recorded config and weights that do not fit: the same, from load_state_dict's error
    ckpt = _interrupted_run(module, ws, a, monkeypatch, *interrupt, at_call=6)
    state = torch.load(ckpt, weights_only=False)
    state["config"] = None
    torch.save(state, ckpt)
    recon_log.clear()
    run_stage(module.STAGE, ws, c)
    assert "does not fit this model" in recon_log.text and "resuming" not in recon_log.text, recon_log.text
    assert steps_trained() == 10

    # 3. a truncated checkpoint (a disk that filled up, a copy cut short)
    ckpt = _interrupted_run(module, ws, a, monkeypatch, *interrupt, at_call=6)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    recon_log.clear()
    run_stage(module.STAGE, ws, a)
    assert "cannot be read" in recon_log.text and "resuming" not in recon_log.text, recon_log.text
    assert steps_trained() == 10

    # and an unchanged config does resume (the warnings above are not given for everything)
    _interrupted_run(module, ws, b, monkeypatch, *interrupt, at_call=6)
    recon_log.clear()
    run_stage(module.STAGE, ws, b)
    assert re.search(rf"{stage_name}: resuming from step 5 ", recon_log.text), recon_log.text
    assert "another config" not in recon_log.text and steps_trained() == 10


@pytest.mark.parametrize("stage,key,value", [("nerf", "max_time_s", "-1"), ("idr", "max_time_s", "-0.5"),
                                             ("nerf", "max_steps", "0"), ("idr", "checkpoint_every_s", "-3"),
                                             ("eval", "holdout_max_time_s", "-10")])
def test_negative_budgets_are_config_errors_before_any_work(stage, key, value, tmp_path):
    """Checked when the stage starts, before it reads the scene: the workspace here has no scene."""
    import importlib

    from pipeline.runner.config import ConfigError
    from pipeline.runner.workspace import Workspace

    module = importlib.import_module(f"stages.{stage}")
    cfg = module.STAGE.load_config(overrides=[f"{key}={value}"])
    ctx = SimpleNamespace(config=cfg, workspace=Workspace(tmp_path / "empty"), out_dir=tmp_path, resume_dir=tmp_path,
                          log=None, force=False)
    with pytest.raises(ConfigError, match=rf"^{key} must be >= "):
        module.run(ctx)


def test_the_nerf_log_says_which_views_its_psnr_was_measured_on():
    from stages.nerf import views_scored

    assert views_scored(2, "test split") == "2 views of the test split"
    assert views_scored(5, "training views (no held-out split)") == "5 training views (no held-out split)"
    assert views_scored(1, "held out of training: pano_001") == "1 view held out of training: pano_001"
