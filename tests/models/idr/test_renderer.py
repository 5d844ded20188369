"""IDR's appearance renderer (``pipeline.models.idr.model``): its hash-grid position features train
and fade in coarsest level first."""
import pytest
import torch

from pipeline.models.idr.model import NeuralRenderer, RendererConfig


def test_renderer_appearance_grid_adds_position_features_and_trains():
    torch.manual_seed(0)
    renderer = NeuralRenderer(8, RendererConfig(hidden_dim=32, num_layers=3, weight_norm=False,
                                                position_encoding="hashgrid", hash_levels=4, hash_log2_size=10,
                                                hash_max_resolution=64))
    assert renderer.encode_points(torch.zeros(5, 3)).shape == (5, 3 + 4 * 2)
    points, normals, dirs, feature = torch.rand(64, 3) * 2 - 1, torch.randn(64, 3), torch.randn(64, 3), torch.zeros(64, 8)
    renderer(points, normals, dirs, feature).sum().backward()
    assert renderer.encoding.table.grad is not None and renderer.encoding.table.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="position_encoding"):
        NeuralRenderer(8, RendererConfig(position_encoding="fourier"))


def test_appearance_grid_levels_fade_in_coarsest_first():
    renderer = NeuralRenderer(8, RendererConfig(hidden_dim=16, num_layers=2, weight_norm=False,
                                                position_encoding="hashgrid", hash_levels=4, hash_log2_size=10,
                                                hash_max_resolution=64, coarse_to_fine=0.5))
    points = torch.rand(32, 3) * 2 - 1
    renderer.set_progress(0.0)
    assert torch.equal(renderer.encode_points(points)[:, 3:], torch.zeros(32, 8))  # only x itself
    renderer.set_progress(0.25)  # half-way through the fade: the two coarse levels, nothing finer
    assert renderer.level_weights().tolist() == [1.0, 1.0, 0.0, 0.0]
    renderer.set_progress(1.0)
    full = renderer.encode_points(points)
    assert renderer.level_weights() is None and torch.equal(full[:, 3:], renderer.encoding(((points + 1) / 2)))
