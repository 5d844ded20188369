"""NeRF training (``pipeline.training.nerf``) on a tiny ball workspace: resume after an interruption
or a kill ends where an uninterrupted run ends; a negative time budget is an error."""
import pytest
import torch

from pipeline.models.nerf.model import default_aabb
from pipeline.training import nerf as nerf_training
from pipeline.training.common import settings_from
from pipeline.training.nerf import NeRFTrainSettings
from pipeline.training.nerf_data import PixelData
from tests.scenes import write_ball_workspace
from tests.tiny_configs import build_nerf_model, tiny_nerf_config


def _train(model, data, cfg, resume_dir):
    return nerf_training.train(model, data, settings_from(NeRFTrainSettings, cfg), torch.device("cpu"), resume_dir)


def _interrupt_at_call(model, n):
    """Make model.render_rays raise KeyboardInterrupt on its n-th call (a user pressing Ctrl-C)."""
    calls = {"n": 0}
    original = model.render_rays

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    model.render_rays = flaky


def test_resume_after_an_interruption_restores_step_optimiser_and_rng(tmp_path, one_thread):
    ws = write_ball_workspace(tmp_path)
    scene = ws.load_scene()
    data = PixelData(scene, scene.split("train"), torch.device("cpu"), use_alpha=True)
    aabb = default_aabb(scene.bounds, tiny_nerf_config().scene_radius)

    def fresh():
        torch.manual_seed(0)
        return build_nerf_model(tiny_nerf_config(), aabb)

    straight = fresh()
    _train(straight, data, tiny_nerf_config(), None)

    resume_dir = tmp_path / "resume"
    resume_dir.mkdir()
    interrupted = fresh()
    _interrupt_at_call(interrupted, 6)
    with pytest.raises(KeyboardInterrupt):
        _train(interrupted, data, tiny_nerf_config(), resume_dir)
    saved = torch.load(resume_dir / nerf_training.CHECKPOINT_NAME, weights_only=False)
    assert saved["step"] == 5
    assert all(int(s["step"]) == 5 for s in saved["optimizer"]["state"].values())

    torch.manual_seed(123)  # disturb the global RNG: the checkpoint must restore its own
    resumed = build_nerf_model(tiny_nerf_config(), aabb)
    stats = _train(resumed, data, tiny_nerf_config(), resume_dir)
    assert stats["steps"] == 8
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_from_a_periodic_checkpoint_after_a_kill_repeats_nothing(tmp_path, one_thread, monkeypatch):
    """A killed process leaves only the last periodic checkpoint; resuming from it (with the
    error map and edge rays on, whose state is saved too) ends where an uninterrupted run ends."""
    import shutil

    ws = write_ball_workspace(tmp_path)
    scene = ws.load_scene()
    cfg = tiny_nerf_config(error_fraction=0.5, edge_fraction=0.25)

    def data():
        return PixelData(scene, scene.split("train"), torch.device("cpu"), True, cfg.edge_fraction, cfg.edge_width)

    aabb = default_aabb(scene.bounds, cfg.scene_radius)
    torch.manual_seed(0)
    straight = build_nerf_model(cfg, aabb)
    run_dir, killed_dir = tmp_path / "run", tmp_path / "killed"
    run_dir.mkdir()
    killed_dir.mkdir()
    save = nerf_training.save_checkpoint

    def save_and_keep_step_3(path, state):  # the file a kill after step 3 would leave
        save(path, state)
        if state["step"] == 3:
            shutil.copy(path, killed_dir / nerf_training.CHECKPOINT_NAME)

    monkeypatch.setattr(nerf_training, "save_checkpoint", save_and_keep_step_3)
    _train(straight, data(), cfg, run_dir)
    monkeypatch.setattr(nerf_training, "save_checkpoint", save)

    torch.manual_seed(0)
    resumed = build_nerf_model(cfg, aabb)
    stats = _train(resumed, data(), cfg, killed_dir)
    assert stats["steps"] == 8
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_negative_time_budget_is_an_error_naming_the_key(tmp_path):
    ws = write_ball_workspace(tmp_path)
    scene = ws.load_scene()
    data = PixelData(scene, scene.split("train"), torch.device("cpu"), True)
    cfg = tiny_nerf_config(max_time_s=-1.0)
    with pytest.raises(ValueError, match="max_time_s"):
        _train(build_nerf_model(cfg, default_aabb(scene.bounds, cfg.scene_radius)), data, cfg, None)
