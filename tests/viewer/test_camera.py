"""viser's cameras <-> ours: a viser camera looking at a point sees it at the image centre, up is up,
the field of view spans the image, and frusta go back to the same pose."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.geometry.cameras import look_at
from pipeline.viewer.camera import (c2w_to_viser, matrix_to_quaternion, preview_size, quaternion_to_matrix,
                                    viewer_intrinsics, viser_camera, viser_to_c2w)


def random_rotations(n: int, seed: int = 0) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.random(n, random_state=seed).as_matrix()


def test_quaternion_round_trip():
    for rot in random_rotations(50):
        q = matrix_to_quaternion(rot)
        assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(quaternion_to_matrix(q), rot, atol=1e-12)
        np.testing.assert_allclose(quaternion_to_matrix(-q), rot, atol=1e-12)  # q and -q: the same rotation


def test_our_quaternions_are_visers():
    import viser.transforms as vtf

    for rot in random_rotations(20, seed=1):
        np.testing.assert_allclose(quaternion_to_matrix(vtf.SO3.from_matrix(rot).wxyz), rot, atol=1e-10)
        np.testing.assert_allclose(vtf.SO3(matrix_to_quaternion(rot)).as_matrix(), rot, atol=1e-10)


def test_frustum_pose_round_trip():
    c2w = look_at([1.0, -2.0, 0.5], [0.1, 0.2, 0.3])
    wxyz, position = c2w_to_viser(c2w)
    np.testing.assert_allclose(viser_to_c2w(wxyz, position), c2w, atol=1e-12)


def points(*xyz) -> torch.Tensor:
    return torch.as_tensor(np.asarray(xyz, dtype=np.float32))


def viser_camera_handle(position, target, up, fov=math.radians(50), width=640, height=400):
    """viser's own CameraHandle of a (fake) browser, posed by viser's look-at/up code."""
    import viser

    client = SimpleNamespace(_websock_connection=SimpleNamespace(queue_message=lambda message: None))
    camera = viser.CameraHandle(client)
    state = camera._state
    state.update_timestamp, state.fov, state.image_width, state.image_height = 1.0, fov, width, height
    state.position, state.look_at, state.up_direction = np.asarray(position, float), np.zeros(3), np.asarray(up, float)
    camera.look_at = target  # viser computes wxyz from position, look_at and up
    return camera


@pytest.mark.parametrize("up", [(0, 0, 1), (0, 1, 0), (0.3, -0.2, 0.9)])
def test_a_viser_camera_looking_at_a_point_sees_it_at_the_image_centre(up):
    position, target = np.array([2.0, -1.5, 1.2]), np.array([0.2, 0.3, -0.1])
    handle = viser_camera_handle(position, target, up)
    cam = viser_camera(handle.wxyz, handle.position, handle.fov, handle.aspect, long_side=128)
    w, h = int(cam.width[0]), int(cam.height[0])
    assert (w, h) == (128, 80)
    uv, depth = cam.project_world(points(target))
    np.testing.assert_allclose(uv[0].numpy(), [w / 2, h / 2], atol=1e-3)
    assert abs(float(depth[0]) - np.linalg.norm(target - position)) < 1e-4
    # a point above the target (along up, as the browser shows it) is above the centre: smaller v
    up_unit = np.asarray(up, float) / np.linalg.norm(up)
    above, _ = cam.project_world(points(target + 0.1 * up_unit))
    assert above[0, 1] < h / 2 - 1
    # ... and a point to the right of the camera is right of the centre
    right = np.cross(target - position, up_unit)
    right_uv, _ = cam.project_world(points(target + 0.1 * right / np.linalg.norm(right)))
    assert right_uv[0, 0] > w / 2 + 1


def test_the_vertical_field_of_view_spans_the_image_height():
    fov = math.radians(60)
    for aspect, side in ((16 / 9, 128), (0.5, 128), (1.0, 64)):
        k = viewer_intrinsics(fov, aspect, side)
        assert max(k.width, k.height) == side and abs(k.width / k.height - aspect) < 0.03
        # a ray at half the vertical field of view above the axis hits the top edge of the image
        assert abs(k.cy - k.fy * math.tan(fov / 2)) < 1e-9 and k.cx == k.width / 2


def test_preview_size_of_odd_aspects():
    assert preview_size(2.0, 64) == (64, 32)
    assert preview_size(0.25, 64) == (16, 64)
    assert preview_size(float("nan"), 64) == (64, 64)
    assert preview_size(1000.0, 64) == (64, 1)
