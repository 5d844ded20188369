"""Equirect helpers of the interpolation work: WS-PSNR on known cases, the exact rotation
resampling of a panorama (a 90-degree yaw is a column shift, and it agrees with the cameras of
pipeline/geometry/cameras.py), cos(latitude) row sampling of the NeRF training data, slerp poses."""
import math

import numpy as np
import pytest
import torch

from datasets.scene import Frame, Scene
from pipeline.geometry.cameras import Cameras, Intrinsics, pixel_grid
from pipeline.panoramas.equirect import latitude_weights, pixel_directions, rotate_equirect
from pipeline.panoramas.interpolate import between, interpolate_pose, walk, walk_order
from pipeline.panoramas.metrics import nearest_panorama_baseline, ws_mse, ws_psnr, ws_ssim
from pipeline.training.nerf_data import PixelData


def yaw(deg: float) -> np.ndarray:
    """A levelled OpenCV camera rotation (camera -y = world +z) turned by ``deg`` about world z."""
    a = math.radians(deg)
    forward = np.array([math.cos(a), math.sin(a), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    return np.stack([np.cross(down, forward), down, forward], 1)


def test_ws_psnr_known_cases():
    rng = np.random.default_rng(0)
    img = rng.random((16, 32, 3))
    assert ws_psnr(img, img) == math.inf
    # a uniform error of 0.1 everywhere: 20 dB whatever the weights
    assert ws_psnr(img + 0.1, img) == pytest.approx(20.0, abs=1e-9)
    # the weights are cos(latitude) of the row centres, symmetric, largest at the equator
    w = latitude_weights(16)
    np.testing.assert_allclose(w, np.cos((0.5 - (np.arange(16) + 0.5) / 16) * math.pi))
    # an error only in the polar rows counts far less than the same error at the equator
    polar, equator = img.copy(), img.copy()
    polar[0] += 0.5
    equator[8] += 0.5
    assert ws_mse(polar, img) == pytest.approx(0.25 * 32 * 3 * w[0] / (w.sum() * 32 * 3))
    assert ws_psnr(polar, img) - ws_psnr(equator, img) == pytest.approx(10 * math.log10(w[8] / w[0]))
    assert ws_ssim(img, img) == pytest.approx(1.0, abs=1e-5)


def test_a_90_degree_yaw_is_a_column_shift_and_matches_the_cameras():
    rng = np.random.default_rng(1)
    img = rng.random((16, 32, 3)).astype(np.float32)
    source, target = yaw(30.0), yaw(120.0)  # the target camera is turned 90 deg to the left (towards +y)
    out = rotate_equirect(img, source, target)
    # target longitude 0 looks where the source's longitude -90 deg looks: 8 columns to the left
    np.testing.assert_array_equal(out, np.roll(img, 8, axis=1))
    # the same through pipeline/geometry/cameras.py: each target pixel's world ray projects in the
    # source camera onto the source pixel whose colour it took
    k = Intrinsics("equirect", 32, 16)
    cams = Cameras.from_intrinsics([k, k], np.stack([np.eye(4), np.eye(4)]), dtype=torch.float64)
    cams.c2w[0, :3, :3] = torch.as_tensor(source)
    cams.c2w[1, :3, :3] = torch.as_tensor(target)
    uv = pixel_grid(32, 16, dtype=torch.float64)
    _, dirs, _ = cams[1].generate_rays(uv)
    uv_source, _ = cams[0].project_world(dirs)  # points at unit distance from the shared centre
    col = np.floor(uv_source[:, 0].numpy() % 32).astype(int)
    row = np.floor(uv_source[:, 1].numpy()).astype(int)
    np.testing.assert_array_equal(out.reshape(-1, 3), img[row, col])
    # pixel_directions agrees with Cameras.unproject
    np.testing.assert_allclose(pixel_directions(32, 16).reshape(-1, 3), cams[0].unproject(uv).numpy(), atol=1e-12)


def test_rotation_resampling_is_exact_on_smooth_images_and_inverts():
    # a smooth function on the sphere resampled to another orientation equals the function there
    h, w = 64, 128
    d = pixel_directions(w, h)
    r_s, r_t = yaw(10.0) @ _tilt(20.0), yaw(-70.0)
    f = lambda dirs_world: 0.5 + 0.4 * dirs_world[..., :1] * np.array([1.0, 0.5, -0.5])  # noqa: E731
    img = f(d @ r_s.T)  # world direction of each source pixel
    out = rotate_equirect(img, r_s, r_t)
    assert np.abs(out - f(d @ r_t.T)).max() < 0.01
    # the baseline helper = the rotation, after resizing to the target size
    c_s, c_t = np.eye(4), np.eye(4)
    c_s[:3, :3], c_t[:3, :3] = r_s, r_t
    np.testing.assert_allclose(nearest_panorama_baseline(img, c_s, c_t, (h, w)), out)


def _tilt(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def test_cos_latitude_row_sampling_is_uniform_on_the_sphere(tmp_path):
    import imageio.v3 as iio

    h, w = 32, 64
    frames = []
    for i in range(2):
        path = tmp_path / f"p{i}.png"
        iio.imwrite(path, np.zeros((h, w, 3), np.uint8))
        frames.append(Frame(path, Intrinsics("equirect", w, h), np.eye(4), name=f"p{i}"))
    scene = Scene(frames, background="none")
    weighted = PixelData(scene, [0, 1], "cpu", False, latitude_weighting=True)
    plain = PixelData(scene, [0, 1], "cpu", False, latitude_weighting=False)
    gen = torch.Generator().manual_seed(0)
    n = 200000
    _, d_weighted, _, pix = weighted.sample(n, gen)
    _, d_plain, _, _ = plain.sample(n, gen)
    # uniform on the sphere: the up component (camera -y) is uniform in [-1, 1], so E|up| = 1/2;
    # uniform pixels crowd the poles: E|sin(latitude)| = 2 / pi
    assert abs(float(d_weighted[:, 1].abs().mean()) - 0.5) < 0.01
    assert abs(float(d_plain[:, 1].abs().mean()) - 2 / math.pi) < 0.01
    # rows by cos(latitude), columns uniform, both views drawn
    local = pix % (h * w)
    rows, cols = (local // w).numpy(), (local % w).numpy()
    row_freq = np.bincount(rows, minlength=h) / n
    expected = latitude_weights(h) / latitude_weights(h).sum()
    assert np.abs(row_freq - expected).max() < 0.004
    assert np.abs(np.bincount(cols, minlength=w) / n - 1 / w).max() < 0.003
    assert 0.48 < float((pix >= h * w).float().mean()) < 0.52


def test_slerp_between_and_walk_poses():
    a, b = np.eye(4), np.eye(4)
    a[:3, :3], b[:3, :3] = yaw(0.0), yaw(90.0)
    a[:3, 3], b[:3, 3] = [0, 0, 1.5], [2, 0, 1.5]
    mid = interpolate_pose(a, b, 0.5)
    np.testing.assert_allclose(mid[:3, :3], yaw(45.0), atol=1e-12)
    np.testing.assert_allclose(mid[:3, 3], [1, 0, 1.5])
    poses = between(np.stack([a, b]), 0, 1, 5)
    assert [p.t for p in poses] == [0, 0.25, 0.5, 0.75, 1]
    np.testing.assert_allclose(poses[0].c2w, a, atol=1e-12)
    np.testing.assert_allclose(poses[-1].c2w, b, atol=1e-12)
    with pytest.raises(ValueError, match="steps"):
        between(np.stack([a, b]), 0, 1, 1)
    c = b.copy()
    c[:3, 3] = [2, 4, 1.5]  # twice as far from b as b from a
    c2w = np.stack([a, c, b])
    assert walk_order(c2w, "nearest") == [0, 2, 1] and walk_order(c2w, "capture") == [0, 1, 2]
    path = walk(c2w, [0, 2, 1], steps=3)
    first = sum(p.a == 0 and p.b == 2 for p in path)
    second = sum(p.a == 2 and p.b == 1 and p.t < 1 for p in path)
    assert (first, second) == (2, 4) and len(path) == 7  # an even pace: the longer segment gets twice the poses
    np.testing.assert_allclose(path[-1].c2w, c)


def test_panoramas_without_bounds_are_normalised_around_their_centres(tmp_path):
    from pipeline.geometry.normalize import PANORAMA_ROOM_FACTOR, normalize_scene

    centres = np.array([[-8.3, -2.6, 1.4], [1.0, -4.5, 1.4], [0.0, 0.1, 1.4], [-3.4, -2.4, 1.4]])
    frames = []
    for i, c in enumerate(centres):
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = yaw(40.0 * i), c
        frames.append(Frame(tmp_path / f"p{i}.png", Intrinsics("equirect", 64, 32), c2w, name=f"p{i}"))
    normalised, sim = normalize_scene(Scene(frames, background="none"), "sphere", 1.0)
    new = np.stack([f.c2w[:3, 3] for f in normalised.frames])
    # the middle of the centres at the origin, the farthest at 1 / PANORAMA_ROOM_FACTOR: the room
    # around the cameras fills the unit sphere instead of lying outside it (object-centric rule)
    np.testing.assert_allclose((new.min(0) + new.max(0)) / 2, 0, atol=1e-12)
    assert np.linalg.norm(new, axis=1).max() == pytest.approx(1 / PANORAMA_ROOM_FACTOR)
    np.testing.assert_allclose(sim.apply_points(centres), new, atol=1e-12)
    assert normalised.bounds is None
