"""IDR training (``pipeline.training.idr``) on the posed sphere workspace: it resumes from its
checkpoint, stops at its time budget, and returns the mean of its last steps' weights."""
import torch

from tests.tiny_configs import tiny_idr_config


def _settings(**values):
    from pipeline.training.idr import TrainSettings

    base = dict(max_steps=4, max_time_s=0.0, batch_rays=128, eikonal_points=32, lr=1e-3, lr_grid=1e-2,
                lr_cameras=1e-3, lr_final_factor=0.1, average_tail=0.0, checkpoint_every=0, checkpoint_every_s=0.0, seed=0,
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


def test_training_returns_the_mean_of_the_tail_and_resumes_it(sphere_workspace, tmp_path, one_thread):
    import logging

    from pipeline.training.idr_data import MaskOptions, RayBank, load_masks, load_views
    from pipeline.training.idr import CHECKPOINT_NAME, train

    scene = sphere_workspace.load_scene()
    idx = scene.split("train")
    views = load_views(scene, idx, load_masks(scene, idx, MaskOptions()), 1)
    bank, cfg, log = RayBank(views, 1.0), tiny_idr_config(), logging.getLogger("test")
    model = _model(cfg)
    summary = train(model, views.cameras, None, bank, cfg.loss, _settings(max_steps=4, average_tail=0.5), tmp_path, log)
    assert summary["averaged_steps"] == 2  # the steps begun at 50% and 75% of the budget
    last_step = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["model"]
    trained = model.state_dict()
    assert any(not torch.equal(trained[k], last_step[k]) for k in last_step)  # the mean, not the last step

    # a finished run resumed from its checkpoint (nothing left to train) gives the same mean back
    again = _model(cfg)
    resumed = train(again, views.cameras, None, bank, cfg.loss, _settings(max_steps=4, average_tail=0.5), tmp_path, log)
    assert resumed["averaged_steps"] == 2
    for name, value in again.state_dict().items():
        assert torch.equal(value, trained[name]), name
