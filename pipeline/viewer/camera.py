"""Between viser's cameras and ours.

viser states every camera in the OpenCV convention that recon uses inside (x right, y down, z
forward; ``wxyz`` and ``position`` are the rotation and translation of camera-to-world, see
``viser.CameraHandle.wxyz``), with a VERTICAL field of view in radians and the canvas's aspect
(width / height), principal point at the centre. So the conversion is a quaternion <-> matrix and
a field of view <-> focal length; ``tests/viewer/test_camera.py`` checks it against
``look_at`` and against what a real browser reports.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.geometry.cameras import Cameras, Intrinsics


def quaternion_to_matrix(wxyz) -> np.ndarray:
    """A unit quaternion (w, x, y, z) -> rotation matrix (3, 3); the quaternion is normalised first."""
    from scipy.spatial.transform import Rotation

    w, x, y, z = np.asarray(wxyz, dtype=np.float64)
    return Rotation.from_quat([x, y, z, w]).as_matrix()  # scipy normalises; its order is (x, y, z, w)


def matrix_to_quaternion(rotation) -> np.ndarray:
    """A rotation matrix (3, 3) -> unit quaternion (w, x, y, z) with w >= 0."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(rotation, dtype=np.float64)).as_quat()
    q = np.array([w, x, y, z])
    return q if w >= 0 else -q


def viser_to_c2w(wxyz, position) -> np.ndarray:
    """viser's camera pose -> OpenCV camera-to-world (4, 4)."""
    c2w = np.eye(4)
    c2w[:3, :3] = quaternion_to_matrix(wxyz)
    c2w[:3, 3] = np.asarray(position, dtype=np.float64)
    return c2w


def c2w_to_viser(c2w) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV camera-to-world (4, 4) -> viser's (wxyz, position), e.g. for a camera frustum."""
    c2w = np.asarray(c2w, dtype=np.float64)
    return matrix_to_quaternion(c2w[:3, :3]), c2w[:3, 3].copy()


def preview_size(aspect: float, long_side: int) -> tuple[int, int]:
    """(width, height) of a preview whose longer side is ``long_side`` pixels at ``aspect`` = w / h."""
    if not (aspect > 0 and math.isfinite(aspect)):
        aspect = 1.0
    if aspect >= 1:
        return long_side, max(1, round(long_side / aspect))
    return max(1, round(long_side * aspect)), long_side


def viewer_intrinsics(fov_y: float, aspect: float, long_side: int) -> Intrinsics:
    """A centred pinhole camera of vertical field of view ``fov_y`` (radians) whose image has the
    canvas's aspect and ``long_side`` pixels on its longer side."""
    width, height = preview_size(aspect, long_side)
    # the focal length follows the height the canvas maps to, so the preview covers the canvas exactly
    f = 0.5 * height / math.tan(0.5 * fov_y)
    return Intrinsics("pinhole", width, height, f, f, width / 2.0, height / 2.0)


def viser_camera(wxyz, position, fov_y: float, aspect: float, long_side: int, device="cpu") -> Cameras:
    """A viser camera as a batch of one of our cameras, for ``render_image``."""
    return Cameras.from_intrinsics([viewer_intrinsics(fov_y, aspect, long_side)], viser_to_c2w(wxyz, position)[None],
                                   device=device)


def vertical_fov(intrinsics: Intrinsics) -> float:
    """The vertical field of view of a perspective camera, radians (for its frustum)."""
    return 2 * math.atan(0.5 * intrinsics.height / intrinsics.fy)


__all__ = ["quaternion_to_matrix", "matrix_to_quaternion", "viser_to_c2w", "c2w_to_viser", "preview_size",
           "viewer_intrinsics", "viser_camera", "vertical_fov"]
