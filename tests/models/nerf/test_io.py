"""NeRF model files (``pipeline.models.nerf.io``) reload with their config and background."""
import torch

from pipeline.models.nerf import io as nerf_io
from tests.tiny_configs import build_nerf_model, tiny_nerf_config


def test_a_model_file_reloads_with_its_config_and_background(tmp_path):
    aabb = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    cfg = tiny_nerf_config(background="learned")
    torch.manual_seed(0)
    model = build_nerf_model(cfg, aabb)
    nerf_io.save_model(tmp_path / "model.pt", model, cfg.background, "black", {"max_steps": 8})
    loaded = nerf_io.load_model_file(tmp_path / "model.pt")
    assert loaded.config == cfg.model and loaded.learn_background and not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    saved = torch.load(tmp_path / "model.pt", weights_only=False)
    assert saved["config"]["max_steps"] == 8 and saved["scene_background"] == "black"
