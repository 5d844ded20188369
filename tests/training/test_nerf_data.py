"""NeRF training rays (``pipeline.training.nerf_data``): shares drawn near the mask edges and where
the error is high."""
import torch

from pipeline.training.nerf_data import PixelData
from tests.scenes import write_ball_workspace


def test_edge_and_error_rays_go_where_they_are_asked(tmp_path):
    from pipeline.geometry.masks import mask_edges

    ws = write_ball_workspace(tmp_path)
    scene = ws.load_scene()
    data = PixelData(scene, scene.split("train"), torch.device("cpu"), True, edge_fraction=0.5)
    generator = torch.Generator().manual_seed(0)
    alpha = data.colors[:, 3] > 127  # uint8 alpha: the float loader's > 0.5
    edge = torch.zeros(data.num_pixels, dtype=torch.bool)
    for v, (h, w) in enumerate(data.sizes):
        start = int(data.offsets[v])
        edge[start:start + h * w] = mask_edges(alpha[start:start + h * w].view(h, w), 2).reshape(-1)
    pixels = data.sample(1000, generator)[3]
    assert bool(edge[pixels[:500]].all())
    assert float(edge[pixels[500:]].float().mean()) < 0.9  # the rest stays uniform

    data = PixelData(scene, scene.split("train"), torch.device("cpu"), True)
    data.enable_error_map(0.5)
    hot = torch.arange(10, 20)
    data.record_error(torch.arange(data.num_pixels), torch.zeros(data.num_pixels))
    data.record_error(hot, torch.ones(10))
    pixels = data.sample(1000, generator)[3]
    assert bool(torch.isin(pixels[:500], hot).all())
