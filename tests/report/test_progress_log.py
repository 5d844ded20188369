"""The training curve (``pipeline.training.progress_log``) survives resumes like the checkpoint does:
after an interruption or a kill the resumed run's ``metrics.jsonl`` is the uninterrupted run's,
each step once; a fresh start begins a new file; a torn last line is skipped."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from pipeline.models.nerf.model import default_aabb
from pipeline.training import nerf as nerf_training
from pipeline.training import progress_log
from pipeline.training.nerf_data import PixelData
from pipeline.training.progress_log import FILE_NAME, ProgressLog, read_progress_log
from tests.scenes import write_ball_workspace
from tests.tiny_configs import build_nerf_model, tiny_nerf_config
from tests.training.test_nerf import _interrupt_at_call, _train


def steps_of(folder) -> list[int]:
    return [row["step"] for row in read_progress_log(folder / FILE_NAME)]


def test_lines_are_due_every_n_steps_or_seconds_and_a_resume_drops_the_lines_after_its_checkpoint(tmp_path):
    curve = ProgressLog(tmp_path, every_steps=10, every_s=5.0)
    for step in range(1, 41):
        elapsed = 0.1 * step + (6.0 if step > 25 else 0.0)  # a slow stretch after step 25
        if curve.due(step, elapsed, last=step == 40):
            curve.write(step, elapsed, loss=1.0 / step, psnr=float("nan"))
    curve.close()
    assert steps_of(tmp_path) == [1, 10, 20, 26, 30, 40]
    assert read_progress_log(tmp_path / FILE_NAME)[0]["psnr"] is None  # NaN as JSON null
    with open(tmp_path / FILE_NAME, "a") as f:
        f.write('{"step": 41, "elaps')  # the torn line of a killed run
    assert steps_of(tmp_path) == [1, 10, 20, 26, 30, 40]

    ProgressLog(tmp_path, start_step=20, start_elapsed=2.0).close()  # resumed from a step-20 checkpoint
    assert steps_of(tmp_path) == [1, 10, 20]
    ProgressLog(tmp_path).close()  # a fresh start (no checkpoint, or one set aside)
    assert steps_of(tmp_path) == []
    assert not ProgressLog(None).due(1, 1.0)  # no resume folder: nothing logged


@pytest.fixture
def ball(tmp_path, monkeypatch):
    monkeypatch.setattr(progress_log, "EVERY_STEPS", 2)  # 8 steps: lines at 1, 2, 4, 6, 8
    monkeypatch.setattr(progress_log, "EVERY_S", 1e9)
    scene = write_ball_workspace(tmp_path).load_scene()
    cfg = tiny_nerf_config()
    aabb = default_aabb(scene.bounds, cfg.scene_radius)

    def fresh():
        torch.manual_seed(0)
        return build_nerf_model(cfg, aabb)

    def data():
        return PixelData(scene, scene.split("train"), torch.device("cpu"), use_alpha=True)

    return cfg, fresh, data


def test_the_curve_of_an_interrupted_and_resumed_nerf_run_is_the_straight_runs(tmp_path, ball, one_thread):
    cfg, fresh, data = ball
    straight_dir, resume_dir = tmp_path / "straight", tmp_path / "resume"
    straight_dir.mkdir()
    resume_dir.mkdir()
    _train(fresh(), data(), cfg, straight_dir)
    straight = read_progress_log(straight_dir / FILE_NAME)
    assert [r["step"] for r in straight] == [1, 2, 4, 6, 8]

    model = fresh()
    _interrupt_at_call(model, 6)  # Ctrl-C in step 6: the checkpoint holds step 5
    with pytest.raises(KeyboardInterrupt):
        _train(model, data(), cfg, resume_dir)
    assert steps_of(resume_dir) == [1, 2, 4]
    _train(fresh(), data(), cfg, resume_dir)
    resumed = read_progress_log(resume_dir / FILE_NAME)
    assert [r["step"] for r in resumed] == [1, 2, 4, 6, 8]
    # the same training (resuming is exact), so the same losses
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in straight], rel=1e-5)
    assert [r["elapsed_s"] for r in resumed] == sorted(r["elapsed_s"] for r in resumed)


def test_after_a_kill_the_lines_past_the_last_checkpoint_are_redone_once(tmp_path, ball, one_thread, monkeypatch):
    cfg, fresh, data = ball
    run_dir, killed_dir = tmp_path / "run", tmp_path / "killed"
    run_dir.mkdir()
    killed_dir.mkdir()
    save = nerf_training.save_checkpoint

    def save_and_keep_step_3(path, state):  # the files a kill after step 3's checkpoint would leave
        save(path, state)
        if state["step"] == 3:
            shutil.copy(path, killed_dir / nerf_training.CHECKPOINT_NAME)

    monkeypatch.setattr(nerf_training, "save_checkpoint", save_and_keep_step_3)
    _train(fresh(), data(), cfg, run_dir)  # tiny_nerf_config checkpoints every 3 steps
    monkeypatch.setattr(nerf_training, "save_checkpoint", save)
    # the curve went on past the checkpoint before the kill: lines 4 .. 8 are in the file
    shutil.copy(run_dir / FILE_NAME, killed_dir / FILE_NAME)
    _train(fresh(), data(), cfg, killed_dir)
    assert steps_of(killed_dir) == [1, 2, 4, 6, 8]
    assert json.loads((killed_dir / FILE_NAME).read_text().splitlines()[-1])["step"] == 8


def test_the_idr_loop_logs_its_curve_across_a_resume(sphere_workspace, tmp_path, monkeypatch, one_thread):
    import logging

    from pipeline.training.idr import train
    from pipeline.training.idr_data import MaskOptions, RayBank, load_masks, load_views
    from tests.tiny_configs import tiny_idr_config
    from tests.training.test_idr import _model, _settings

    monkeypatch.setattr(progress_log, "EVERY_STEPS", 2)
    monkeypatch.setattr(progress_log, "EVERY_S", 1e9)
    scene = sphere_workspace.load_scene()
    idx = scene.split("train")
    views = load_views(scene, idx, load_masks(scene, idx, MaskOptions()), 1)
    cfg, log = tiny_idr_config(), logging.getLogger("test")
    resume = tmp_path / "resume"
    resume.mkdir()
    train(_model(cfg), views.cameras, None, RayBank(views, 1.0), cfg.loss, _settings(max_steps=4), resume, log)
    assert steps_of(resume) == [1, 2, 4]
    train(_model(cfg), views.cameras, None, RayBank(views, 1.0), cfg.loss, _settings(max_steps=6), resume, log)
    rows = read_progress_log(resume / FILE_NAME)
    assert [r["step"] for r in rows] == [1, 2, 4, 6]
    assert all(r["loss"] > 0 and r["lr"] > 0 and 0 <= r["hit_in_mask"] <= 1 for r in rows)
