"""IDR training (``pipeline.training.idr``) on the posed sphere workspace: it resumes from its
checkpoint and stops at its time budget."""
import torch

from tests.tiny_configs import tiny_idr_config


def _settings(**values):
    from pipeline.training.idr import TrainSettings

    base = dict(max_steps=4, max_time_s=0.0, batch_rays=128, eikonal_points=32, lr=1e-3, lr_grid=1e-2,
                lr_cameras=1e-3, lr_final_factor=0.1, checkpoint_every=0, checkpoint_every_s=0.0, seed=0,
                resume_config={"key": "same-config"}, camera_gauge=True)
    return TrainSettings(**{**base, **values})


def _model(cfg):
    from pipeline.models.idr.io import build_model

    return build_model(cfg.sdf, cfg.renderer, cfg.tracing, [1, 1, 1])


def test_training_resumes_from_checkpoint(sphere_workspace, tmp_path, one_thread):
    import logging

    from pipeline.training.idr_data import MaskOptions, RayBank, load_masks, load_views
    from pipeline.training.idr import CHECKPOINT_NAME, train

    scene = sphere_workspace.load_scene()
    idx = scene.split("train")
    views = load_views(scene, idx, load_masks(scene, idx, MaskOptions()), 1)
    bank = RayBank(views, 1.0)
    cfg = tiny_idr_config()
    resume = tmp_path / "resume"
    resume.mkdir()

    log = logging.getLogger("test")
    first = train(_model(cfg), views.cameras, None, bank, cfg.loss, _settings(max_steps=4), resume, log)
    assert first["steps"] == 4 and (resume / CHECKPOINT_NAME).exists()
    second = train(_model(cfg), views.cameras, None, bank, cfg.loss, _settings(max_steps=6), resume, log)
    assert second["steps"] == 6
    assert torch.load(resume / CHECKPOINT_NAME, weights_only=False)["iteration"] == 6


def test_time_budget_stops_training(sphere_workspace, tmp_path, one_thread):
    import logging

    from pipeline.training.idr_data import MaskOptions, RayBank, load_masks, load_views
    from pipeline.training.idr import train

    scene = sphere_workspace.load_scene()
    idx = scene.split("train")
    views = load_views(scene, idx, load_masks(scene, idx, MaskOptions()), 1)
    cfg = tiny_idr_config()
    settings = _settings(max_steps=10 ** 6, max_time_s=1.0)
    summary = train(_model(cfg), views.cameras, None, RayBank(views, 1.0), cfg.loss, settings,
                    tmp_path, logging.getLogger("test"))
    assert summary["stopped_by_time"] and 0 < summary["steps"] < 10 ** 6
