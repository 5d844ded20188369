"""Camera models in float64: projection round trips, distortion inverses, ray generation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.geometry.cameras import (Cameras, Intrinsics, distort_fisheye, distort_opencv, image_rays, look_at,
                              pixel_grid, undistort_fisheye, undistort_opencv)

W, H = 64, 48


def random_cameras(model: str, n: int, seed: int) -> Cameras:
    """n random cameras of one model with realistic, moderate distortion, float64."""
    rng = np.random.default_rng(seed)
    intrinsics = []
    for _ in range(n):
        if model == "equirect":
            intrinsics.append(Intrinsics("equirect", 2 * H, H))
            continue
        f = rng.uniform(0.6, 1.5) * W
        dist = {"pinhole": (),
                "opencv": (rng.uniform(-0.2, 0.2), rng.uniform(-0.05, 0.05), rng.uniform(-0.01, 0.01),
                           rng.uniform(-0.01, 0.01), rng.uniform(-0.01, 0.01)),
                "fisheye": tuple(rng.uniform(-0.05, 0.05, 4))}[model]
        intrinsics.append(Intrinsics(model, W, H, f, f * rng.uniform(0.95, 1.05), W / 2 + rng.uniform(-3, 3),
                                     H / 2 + rng.uniform(-3, 3), dist))
    c2w = [look_at(rng.normal(size=3) * 3, rng.normal(size=3) * 0.3, up=(0, 0, 1)) for _ in range(n)]
    return Cameras.from_intrinsics(intrinsics, np.stack(c2w), dtype=torch.float64)


def random_pixels(cams: Cameras, per_camera: int, seed: int) -> tuple[Cameras, torch.Tensor]:
    """One camera per pixel (gathered) and pixels inside each image, (N, 2)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.arange(len(cams)).repeat_interleave(per_camera)
    per_ray = cams[idx]
    uv = torch.rand(len(idx), 2, generator=gen, dtype=torch.float64)
    uv = uv * torch.stack([per_ray.width, per_ray.height], -1).double()
    return per_ray, uv


@pytest.mark.parametrize("model", ["pinhole", "opencv", "fisheye", "equirect"])
def test_unproject_then_project_returns_the_pixel(model):
    per_ray, uv = random_pixels(random_cameras(model, 8, seed=1), 500, seed=2)
    depth = torch.rand(len(uv), dtype=torch.float64) * 5 + 0.5
    points_cam = per_ray.unproject(uv) * depth[:, None]
    assert (per_ray.project(points_cam) - uv).abs().max() < 1e-4


@pytest.mark.parametrize("model", ["pinhole", "opencv", "fisheye", "equirect"])
def test_world_round_trip_through_generated_rays(model):
    """A point at t along a generated ray projects back to its pixel, with the model's depth."""
    per_ray, uv = random_pixels(random_cameras(model, 6, seed=3), 300, seed=4)
    rays_o, rays_d, z_scale = per_ray.generate_rays(uv)
    t = torch.rand(len(uv), dtype=torch.float64) * 4 + 0.5
    uv_back, depth = per_ray.project_world(rays_o + t[:, None] * rays_d)
    assert (uv_back - uv).abs().max() < 1e-4
    assert torch.allclose(depth, t * z_scale, atol=1e-9)


@pytest.mark.parametrize("model", ["pinhole", "opencv", "fisheye", "equirect"])
def test_generated_rays_are_unit_and_start_at_the_camera_centre(model):
    cams = random_cameras(model, 3, seed=5)
    rays_o, rays_d, _, (h, w) = image_rays(cams, index=1)
    assert rays_d.shape == (h * w, 3)
    assert torch.allclose(rays_d.norm(dim=-1), torch.ones(h * w, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(rays_o, cams.c2w[1, :3, 3].expand_as(rays_o))


def test_distort_then_undistort_opencv_returns_the_point():
    gen = torch.Generator().manual_seed(6)
    xy = (torch.rand(2000, 2, generator=gen, dtype=torch.float64) - 0.5) * 1.2
    dist = torch.tensor([-0.15, 0.04, 0.003, -0.002, -0.005], dtype=torch.float64)
    distorted = distort_opencv(xy, dist)
    assert (distorted - xy).abs().max() > 1e-3  # the test would be empty without real distortion
    assert (undistort_opencv(distorted, dist) - xy).abs().max() < 1e-9


def test_distort_then_undistort_fisheye_returns_the_point():
    gen = torch.Generator().manual_seed(7)
    xy = (torch.rand(2000, 2, generator=gen, dtype=torch.float64) - 0.5) * 3.0  # up to ~65 degrees off-axis
    dist = torch.tensor([0.03, -0.01, 0.004, -0.001], dtype=torch.float64)
    distorted = distort_fisheye(xy, dist)
    assert (distorted - xy).abs().max() > 1e-2
    assert (undistort_fisheye(distorted, dist) - xy).abs().max() < 1e-9


def test_pinhole_ray_goes_through_its_pixel_centre():
    """The top-left pixel centre (0.5, 0.5) of a known camera looks along ((0.5 - cx)/fx, (0.5 - cy)/fy, 1)."""
    k = Intrinsics("pinhole", 4, 2, fx=2.0, fy=4.0, cx=2.0, cy=1.0)
    cams = Cameras.from_intrinsics([k], np.eye(4)[None], dtype=torch.float64)
    uv = pixel_grid(4, 2, dtype=torch.float64)
    assert uv[0].tolist() == [0.5, 0.5] and uv[-1].tolist() == [3.5, 1.5]
    _, rays_d, z_scale = cams[torch.zeros(8, dtype=torch.long)].generate_rays(uv)
    expected = torch.tensor([(0.5 - 2.0) / 2.0, (0.5 - 1.0) / 4.0, 1.0], dtype=torch.float64)
    assert torch.allclose(rays_d[0], expected / expected.norm(), atol=1e-12)
    assert math.isclose(float(z_scale[0]), 1.0 / float(expected.norm()), rel_tol=1e-12)


def test_equirect_top_row_looks_up_and_centre_looks_forward():
    k = Intrinsics("equirect", 64, 32)
    cams = Cameras.from_intrinsics([k], np.eye(4)[None], dtype=torch.float64)
    top = cams.unproject(torch.tensor([[16.0, 0.0], [48.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(top, torch.tensor([[0.0, -1.0, 0.0]] * 2, dtype=torch.float64), atol=1e-12)  # -y = up
    centre = cams.unproject(torch.tensor([[32.0, 16.0], [48.0, 16.0]], dtype=torch.float64))
    assert torch.allclose(centre[0], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(centre[1], torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12)  # lon +90 = right


def test_look_at_puts_the_target_on_the_optical_axis_and_up_at_the_top():
    c2w = look_at([3.0, 1.0, 2.0], [0.0, 0.0, 0.5], up=(0, 0, 1))
    k = Intrinsics("pinhole", 64, 48, 50.0, 50.0, 32.0, 24.0)
    cams = Cameras.from_intrinsics([k, k], np.stack([c2w, c2w]), dtype=torch.float64)
    uv, depth = cams.project_world(torch.tensor([[0.0, 0.0, 0.5], [0.0, 0.0, 1.5]], dtype=torch.float64))
    assert torch.allclose(uv[0], torch.tensor([32.0, 24.0], dtype=torch.float64), atol=1e-9)
    assert depth[0] > 0 and uv[1, 1] < uv[0, 1]  # a point above the target appears higher in the image
    assert math.isclose(np.linalg.det(c2w[:3, :3]), 1.0, rel_tol=1e-12)


def test_scaled_intrinsics_keep_pixel_centres_consistent():
    """Downscaling by 2 maps pixel centre (u, v) of the big image to (u/2, v/2) of the small one."""
    big = Intrinsics("opencv", 64, 48, 60.0, 61.0, 31.3, 23.1, (0.1, -0.02, 0.001, 0.002, 0.0))
    small = big.scaled(0.5)
    assert (small.width, small.height) == (32, 24)
    cams = Cameras.from_intrinsics([big, small], np.stack([np.eye(4)] * 2), dtype=torch.float64)
    point = torch.tensor([[0.2, -0.1, 2.0]], dtype=torch.float64).expand(2, 3)
    uv = cams.project(point)
    assert torch.allclose(uv[1], uv[0] / 2, atol=1e-12)


def test_intrinsics_reject_wrong_distortion_and_models():
    with pytest.raises(ValueError, match="takes 4 distortion"):
        Intrinsics("fisheye", 10, 10, 1, 1, 5, 5, (0.1, 0, 0, 0, 0.2))
    with pytest.raises(ValueError, match="unknown camera model"):
        Intrinsics("orthographic", 10, 10)
    assert Intrinsics.from_dict(Intrinsics("opencv", 8, 6, 5, 5, 4, 3, (0.1,)).to_dict()).dist == (0.1, 0, 0, 0, 0)
