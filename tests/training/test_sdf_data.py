"""The sdf stage's training rays: uniform pixels, and with the error map a share of each batch
drawn where the renders are still wrong."""
from types import SimpleNamespace

import numpy as np
import torch

from pipeline.training.pixel_store import build_store
from pipeline.training.sdf_data import PixelRays


def tiny_rays() -> PixelRays:
    images = [np.full((4, 5, 3), v * 40, np.uint8) for v in range(2)]  # 2 views of 4 x 5 px: 40 pixels
    store = build_store([(4, 5), (4, 5)], 3, lambda v: images[v], budget_bytes=1 << 20)
    return PixelRays(SimpleNamespace(store=store, mask_flat=np.ones(store.num_pixels, bool)))


def test_the_error_map_draws_its_share_where_the_error_is():
    rays = tiny_rays()
    generator = torch.Generator().manual_seed(0)
    assert len(rays) == 40 and rays.pixel_error is None
    rays.enable_error_map(0.5, cdf_every=1)
    rays.record_error(torch.arange(40), torch.zeros(40))
    rays.record_error(torch.tensor([27]), torch.tensor([0.3]))  # one pixel still wrong (view 1, row 1, col 2)
    rows = rays.draw(1000, generator)
    assert (rows[:500] == 27).all()  # the error map's half, all on the wrong pixel
    assert len(torch.unique(rows[500:])) == 40  # the uniform half still reaches every pixel
    view, uv, rgb, mask = rays.batch(rows[:1])
    assert int(view[0]) == 1 and uv[0].tolist() == [2.5, 1.5] and torch.allclose(rgb[0], torch.full((3,), 40 / 255))
    # the drawing table follows the recorded errors
    rays.record_error(torch.tensor([27, 3]), torch.tensor([0.0, 0.5]))
    assert (rays.draw(10, generator)[:5] == 3).all()


def test_without_the_error_map_pixels_are_uniform():
    rows = tiny_rays().draw(4000, torch.Generator().manual_seed(1))
    counts = torch.bincount(rows, minlength=40)
    assert counts.min() > 60 and counts.max() < 140  # 100 expected each


def test_jittered_rays_go_through_random_points_of_their_pixels():
    rays = tiny_rays()
    rows = rays.draw(2000, torch.Generator().manual_seed(2))
    _, centres, _, _ = rays.batch(rows)
    _, uv, rgb, _ = rays.batch(rows, torch.Generator().manual_seed(3))
    offset = uv - (centres - 0.5)  # from each pixel's corner
    assert (offset >= 0).all() and (offset < 1).all()  # inside the pixel it was drawn for
    assert offset.mean(0).sub(0.5).abs().max() < 0.03 and offset.std(0).min() > 0.25  # spread over its area
    # the draw is the generator's: two ranks with one seed get the same rays
    assert torch.equal(uv, rays.batch(rows, torch.Generator().manual_seed(3))[1])


def test_surface_anchors_are_the_points_and_the_training_rays_that_saw_them():
    from pipeline.geometry.normalize import Similarity
    from pipeline.training.sdf_data import surface_anchors

    points = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    views = np.array([[0, 0], [0, 1], [1, 1], [1, 2]])  # frame 2 is held out: not in centres
    centres = {0: np.array([0.0, 0.0, -1.0]), 1: np.array([1.0, 0.0, 3.0])}
    to_model = Similarity(0.5, np.eye(3), np.array([0.0, 0.0, 1.0]))  # x_model = x / 2 + (0, 0, 1)
    anchors = surface_anchors(points, views, centres, to_model)
    torch.testing.assert_close(anchors.points, torch.tensor([[0.0, 0.0, 1.5], [0.5, 0.0, 1.0]]))
    assert anchors.num_rays == 3
    torch.testing.assert_close(anchors.ray_origins[0], torch.tensor([0.0, 0.0, 0.5]))
    torch.testing.assert_close(anchors.ray_depths, torch.tensor([1.0, np.hypot(0.5, 1.0), 1.5], dtype=torch.float32))
    ends = anchors.ray_origins + anchors.ray_dirs * anchors.ray_depths[:, None]
    torch.testing.assert_close(ends, anchors.points[[0, 0, 1]])  # each ray ends at its point
    assert surface_anchors(points, None, centres, to_model).num_rays == 0  # no tracks: points only
    assert surface_anchors(np.zeros((0, 3)), views, centres, to_model) is None
