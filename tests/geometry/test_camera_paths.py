"""Camera paths: orbit, spiral, smooth path through training cameras, nerfstudio camera_path.json."""
import json
import math

import numpy as np
import pytest
import torch

from pipeline.geometry.camera_paths import (intrinsics_from_fov, make_path, orbit_from_cameras, orbit_path,
                                   read_nerfstudio_camera_path, smooth_path, spiral_path, vertical_fov_deg,
                                   write_nerfstudio_camera_path)
from pipeline.geometry.cameras import look_at

K = intrinsics_from_fov(64, 48, 40.0)


def assert_rotations(c2w):
    R = c2w[:, :3, :3]
    np.testing.assert_allclose(R @ np.transpose(R, (0, 2, 1)), np.broadcast_to(np.eye(3), R.shape), atol=1e-9)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)


def test_orbit_looks_at_the_centre_from_the_requested_radius():
    center = np.array([0.3, -0.2, 0.1])
    path = orbit_path(center, radius=2.5, n_frames=12, intrinsics=K, elevation_deg=30.0)
    assert len(path) == 12
    assert_rotations(path.c2w)
    for c2w in path.c2w:
        eye = c2w[:3, 3]
        assert np.linalg.norm(eye - center) == pytest.approx(2.5)
        # the optical axis (+z in OpenCV) points at the centre
        np.testing.assert_allclose(c2w[:3, 2], (center - eye) / 2.5, atol=1e-9)
        # elevation above the plane perpendicular to +z
        assert math.degrees(math.asin((eye - center)[2] / 2.5)) == pytest.approx(30.0)
        # image up (-y) points to world +z side: the horizon is level
        assert -c2w[:3, 1] @ np.array([0, 0, 1.0]) > 0
        assert abs(c2w[:3, 0] @ np.array([0, 0, 1.0])) < 1e-9
    # the centre projects to the principal point of every frame
    for i in range(len(path)):
        uv, depth = path.camera(i).project_world(torch.tensor(center[None], dtype=torch.float32))
        np.testing.assert_allclose(uv[0].numpy(), [32, 24], atol=1e-3)
        assert float(depth[0]) == pytest.approx(2.5, rel=1e-5)
    # consecutive frames are evenly spaced and a full turn is covered
    steps = np.linalg.norm(np.diff(path.c2w[:, :3, 3], axis=0), axis=1)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)


def test_orbit_fitted_to_a_camera_ring_reproduces_its_radius_and_elevation():
    ring = np.stack([look_at([3 * math.cos(a) * math.cos(0.4), 3 * math.sin(a) * math.cos(0.4), 3 * math.sin(0.4)],
                             [0, 0, 0]) for a in np.linspace(0, 2 * math.pi, 9, endpoint=False)])
    path = orbit_from_cameras(ring, 30, K)
    np.testing.assert_allclose(np.linalg.norm(path.c2w[:, :3, 3], axis=1), 3.0, rtol=1e-6)
    np.testing.assert_allclose(path.c2w[:, 2, 3], 3 * math.sin(0.4), atol=1e-6)
    np.testing.assert_allclose(path.c2w[0], ring[0], atol=1e-6)  # starts at the first training view


def forward_facing_cameras(n=10):
    rng = np.random.default_rng(0)
    poses = []
    for _ in range(n):
        eye = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3), -4.0])
        poses.append(look_at(eye, [0, 0, 0], up=(0, -1, 0)))
    return np.stack(poses)


def test_spiral_stays_near_the_captures_and_keeps_the_focus_point_centred():
    cams = forward_facing_cameras()
    path = spiral_path(cams, 40, K)
    assert len(path) == 40
    assert_rotations(path.c2w)
    eyes = path.c2w[:, :3, 3]
    lo, hi = cams[:, :3, 3].min(0), cams[:, :3, 3].max(0)
    assert np.all(eyes >= lo - 0.15) and np.all(eyes <= hi + 0.15)  # around the captures, not beyond
    assert eyes[:, 0].max() - eyes[:, 0].min() > 0.5  # it does move
    # every frame looks at the same focus point (here the origin, where all cameras look)
    for c2w in path.c2w:
        to_focus = -c2w[:3, 3] / np.linalg.norm(c2w[:3, 3])
        assert c2w[:3, 2] @ to_focus > 0.999


def test_smooth_path_passes_through_the_training_cameras_smoothly():
    ring = np.stack([look_at([3 * math.cos(a), 3 * math.sin(a), 1.0], [0, 0, 0])
                     for a in np.linspace(0, math.pi, 6)])
    shuffled = ring[[0, 3, 1, 5, 2, 4]]  # unordered capture: the tour puts it back in order
    path = smooth_path(shuffled, 101, K)
    assert_rotations(path.c2w)
    np.testing.assert_allclose(path.c2w[0], ring[0], atol=1e-9)
    np.testing.assert_allclose(path.c2w[-1], ring[-1], atol=1e-9)
    # every training camera is on the path
    for c2w in ring:
        assert np.min(np.linalg.norm(path.c2w[:, :3, 3] - c2w[:3, 3], axis=1)) < 0.05
    # smooth: no jumps (steps vary little) and the view keeps pointing at the object
    steps = np.linalg.norm(np.diff(path.c2w[:, :3, 3], axis=0), axis=1)
    assert steps.max() < 1.5 * steps.mean()
    for c2w in path.c2w:
        assert c2w[:3, 2] @ (-c2w[:3, 3] / np.linalg.norm(c2w[:3, 3])) > 0.98


def test_nerfstudio_camera_path_round_trip(tmp_path):
    path = orbit_path([0, 0, 0], 2.0, 5, intrinsics_from_fov(80, 60, 55.0), fps=12)
    file = write_nerfstudio_camera_path(tmp_path / "camera_path.json", path)
    data = json.loads(file.read_text())
    assert data["render_width"] == 80 and len(data["camera_path"]) == 5
    assert data["camera_path"][0]["fov"] == pytest.approx(55.0)
    back = read_nerfstudio_camera_path(file)
    np.testing.assert_allclose(back.c2w, path.c2w, atol=1e-9)
    assert back.fps == 12 and vertical_fov_deg(back.intrinsics[0]) == pytest.approx(55.0)


def test_nerfstudio_camera_path_from_the_viewer_uses_opengl_axes(tmp_path):
    # a viewer camera at z=+3 looking down -z (OpenGL) is an OpenCV camera whose +z points to -z
    c2w_gl = np.eye(4)
    c2w_gl[2, 3] = 3.0
    (tmp_path / "p.json").write_text(json.dumps({
        "camera_type": "perspective", "render_height": 30, "render_width": 40, "fps": 10,
        "camera_path": [{"camera_to_world": c2w_gl.reshape(-1).tolist(), "fov": 60, "aspect": 4 / 3}]}))
    p = read_nerfstudio_camera_path(tmp_path / "p.json")
    np.testing.assert_allclose(p.c2w[0, :3, 2], [0, 0, -1])
    np.testing.assert_allclose(p.c2w[0, :3, 1], [0, -1, 0])
    assert p.intrinsics[0].fy == pytest.approx(15 / math.tan(math.radians(30)))


def test_bad_path_requests_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="orbit"):
        make_path("zigzag", forward_facing_cameras(), 5, K)
    with pytest.raises(ValueError, match="path_file"):
        make_path("file", forward_facing_cameras(), 5, K)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="camera_path"):
        read_nerfstudio_camera_path(tmp_path / "bad.json")
