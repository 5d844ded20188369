"""``render_image``: one ray through each pixel's centre, or the colour and opacity of k x k rays
spread over each pixel's area (anti-aliased edges) with depth still the centre ray's."""
import numpy as np
import pytest
import torch

from pipeline.geometry.cameras import Cameras, Intrinsics
from pipeline.models.render import render_image, subpixel_offsets


class HalfPlane:
    """Black matter where a ray points to x < 0 (camera frame = world frame), white nothing elsewhere;
    the black rays' distance grows with x, so a blend of depths would show."""

    def render_rays(self, rays_o, rays_d):
        x = rays_d[:, 0] / rays_d[:, 2]
        black = (x < 0).float()
        return {"rgb": (1 - black)[:, None].expand(-1, 3).clone(), "acc": black, "t": 2.0 + x}

    def query_color(self, points, dirs):
        return torch.zeros_like(points)


def edge_camera() -> Cameras:
    # 4 x 1 px, the edge x = 0 at u = 2.25: a quarter of column 2 is black, columns 0-1 all black
    return Cameras.from_intrinsics([Intrinsics("pinhole", 4, 1, 10.0, 10.0, 2.25, 0.5)], np.eye(4)[None])


def test_one_ray_per_pixel_sees_its_centre_only():
    out = render_image(HalfPlane(), edge_camera())
    np.testing.assert_allclose(out["rgb"][0, :, 0].numpy(), [0, 0, 1, 1])
    np.testing.assert_allclose(out["t"][0].numpy(), 2.0 + (np.arange(4) + 0.5 - 2.25) / 10, rtol=1e-6)


def test_supersampled_pixels_average_their_area_and_keep_the_centre_depth():
    out = render_image(HalfPlane(), edge_camera(), supersample=4)
    np.testing.assert_allclose(out["rgb"][0, :, 0].numpy(), [0, 0, 0.75, 1])  # column 2: 3/4 white
    np.testing.assert_allclose(out["acc"][0].numpy(), [1, 1, 0.25, 0])
    centre = render_image(HalfPlane(), edge_camera())
    torch.testing.assert_close(out["t"], centre["t"])
    torch.testing.assert_close(out["depth"], centre["depth"])  # a depth of one surface, not a blend


def test_subpixel_offsets_are_stratified_and_odd_grids_hold_the_centre():
    assert subpixel_offsets(1) == [(0.5, 0.5)]
    three = subpixel_offsets(3)
    assert len(three) == 9 and (0.5, 0.5) in three
    assert sorted({x for x, _ in subpixel_offsets(2)}) == [0.25, 0.75]
    with pytest.raises(ValueError):
        subpixel_offsets(0)
