"""Camera paths for novel-view renders: orbit, LLFF-style spiral, a smooth path through the
training cameras, and nerfstudio ``camera_path.json`` files (read and written).

Every path is a :class:`CameraPath`: OpenCV camera-to-world matrices (N, 4, 4) in the frame the
cameras were given in (the normalised scene frame inside the pipeline) plus per-frame intrinsics.
Field of view here is always the VERTICAL one in degrees, as in nerfstudio and three.js.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.geometry.cameras import Cameras, Intrinsics, look_at
from pipeline.geometry.normalize import focus_point
from pipeline.runner.io import write_json

PATH_KINDS = ("orbit", "spiral", "smooth", "file")
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])  # same flip as datasets/nerfstudio.py


@dataclass
class CameraPath:
    """c2w: (N, 4, 4) OpenCV camera-to-world; intrinsics: one per frame; fps of the video."""

    c2w: np.ndarray
    intrinsics: list[Intrinsics]
    fps: float = 24.0

    def __post_init__(self):
        self.c2w = np.asarray(self.c2w, dtype=np.float64).reshape(-1, 4, 4)
        if len(self.intrinsics) == 1 and len(self.c2w) > 1:
            self.intrinsics = list(self.intrinsics) * len(self.c2w)
        if len(self.intrinsics) != len(self.c2w):
            raise ValueError(f"a camera path needs one intrinsics per pose: {len(self.intrinsics)} vs {len(self.c2w)}")

    def __len__(self) -> int:
        return len(self.c2w)

    def camera(self, i: int, device="cpu", dtype=torch.float32) -> Cameras:
        """Frame ``i`` as a batch of one camera."""
        return Cameras.from_intrinsics([self.intrinsics[i]], self.c2w[i:i + 1], dtype=dtype, device=device)

    def with_intrinsics(self, intrinsics: Intrinsics) -> "CameraPath":
        return CameraPath(self.c2w, [intrinsics] * len(self), self.fps)


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> Intrinsics:
    """A centred pinhole camera with the given VERTICAL field of view in degrees."""
    if not 0 < fov_deg < 180:
        raise ValueError(f"field of view must be in (0, 180) degrees, got {fov_deg}")
    f = 0.5 * height / math.tan(0.5 * math.radians(fov_deg))
    return Intrinsics("pinhole", int(width), int(height), f, f, width / 2.0, height / 2.0)


def vertical_fov_deg(intrinsics: Intrinsics) -> float:
    """The vertical field of view of a perspective camera, degrees."""
    return math.degrees(2 * math.atan(0.5 * intrinsics.height / intrinsics.fy))


# ----------------------------------------------------------------------------------------------
# What the training cameras tell about the scene.


def camera_up(c2w: np.ndarray) -> np.ndarray:
    """The mean world up direction of OpenCV cameras (their -y axis), unit (3,). c2w: (N, 4, 4)."""
    up = -np.asarray(c2w)[:, :3, 1].mean(0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-9 else np.array([0.0, 0.0, 1.0])


def scene_center(c2w: np.ndarray, bounds: Optional[np.ndarray] = None) -> np.ndarray:
    """The centre of the region of interest: the bounds' centre if known, else where the cameras look."""
    if bounds is not None:
        return np.asarray(bounds, dtype=np.float64).reshape(2, 3).mean(0)
    c2w = np.asarray(c2w)
    return focus_point(c2w) if len(c2w) >= 2 else c2w[0, :3, 3] + c2w[0, :3, 2]


def _basis(up: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to ``up`` and each other, and ``up`` itself."""
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    helper = np.array([1.0, 0, 0]) if abs(up[0]) < 0.9 else np.array([0, 1.0, 0])
    e1 = np.cross(up, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(up, e1), up


# ----------------------------------------------------------------------------------------------
# Paths.


def orbit_path(center, radius: float, n_frames: int, intrinsics: Intrinsics, elevation_deg: float = 20.0,
               up=(0.0, 0.0, 1.0), start_azimuth_deg: float = 0.0, turns: float = 1.0,
               fps: float = 24.0) -> CameraPath:
    """Cameras on a circle of ``radius`` around ``center``, ``elevation_deg`` above the plane
    perpendicular to ``up``, all looking at ``center``; one full turn spread over ``n_frames``
    (the last frame stops one step short of the first, so the video loops seamlessly)."""
    center = np.asarray(center, dtype=np.float64)
    e1, e2, up_unit = _basis(np.asarray(up, dtype=np.float64))
    elev = math.radians(elevation_deg)
    poses = []
    for k in range(n_frames):
        az = math.radians(start_azimuth_deg) + 2 * math.pi * turns * k / n_frames
        offset = radius * (math.cos(elev) * (math.cos(az) * e1 + math.sin(az) * e2) + math.sin(elev) * up_unit)
        poses.append(look_at(center + offset, center, up_unit))
    return CameraPath(np.stack(poses), [intrinsics], fps)


def orbit_from_cameras(c2w: np.ndarray, n_frames: int, intrinsics: Intrinsics, bounds=None,
                       radius: Optional[float] = None, elevation_deg: Optional[float] = None,
                       fps: float = 24.0) -> CameraPath:
    """An orbit fitted to training cameras: their centre of interest, median distance and median
    elevation (each can be given instead)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    center = scene_center(c2w, bounds)
    up = camera_up(c2w)
    offsets = c2w[:, :3, 3] - center
    dist = np.linalg.norm(offsets, axis=1)
    if radius is None:
        radius = float(np.median(dist))
    if elevation_deg is None:
        elevation_deg = float(np.degrees(np.median(np.arcsin(np.clip(offsets @ up / np.maximum(dist, 1e-12), -1, 1)))))
    e1, e2, _ = _basis(up)
    first = offsets[0]
    start = float(np.degrees(np.arctan2(first @ e2, first @ e1)))  # start beside the first training view
    return orbit_path(center, radius, n_frames, intrinsics, elevation_deg, up, start, fps=fps)


def _mean_rotation(rotations: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(rotations).mean().as_matrix()


def spiral_path(c2w: np.ndarray, n_frames: int, intrinsics: Intrinsics, rotations: float = 2.0,
                radius_percentile: float = 90.0, z_rate: float = 0.5, focus_distance: Optional[float] = None,
                fps: float = 24.0) -> CameraPath:
    """The LLFF spiral for forward-facing captures: around the mean training camera, with radii
    from the spread of the camera centres, every frame looking at a focus point in front of it."""
    c2w = np.asarray(c2w, dtype=np.float64)
    centers = c2w[:, :3, 3]
    mean_center = centers.mean(0)
    mean_rot = _mean_rotation(c2w[:, :3, :3])
    if focus_distance is None:
        focus = focus_point(c2w) if len(c2w) >= 2 else mean_center + mean_rot[:, 2]
        focus_distance = float((focus - mean_center) @ mean_rot[:, 2])
        if not np.isfinite(focus_distance) or focus_distance <= 1e-6:  # parallel cameras: look ahead
            focus_distance = float(np.linalg.norm(centers - mean_center, axis=1).max() * 4 + 1e-3)
    local = (centers - mean_center) @ mean_rot  # camera centres in the mean camera's frame
    radii = np.percentile(np.abs(local), radius_percentile, axis=0)
    radii = np.where(radii < 1e-6, 0.05 * focus_distance, radii)
    target = mean_center + focus_distance * mean_rot[:, 2]
    up = -mean_rot[:, 1]
    poses = []
    for theta in np.linspace(0, 2 * math.pi * rotations, n_frames, endpoint=False):
        offset = np.array([math.cos(theta), -math.sin(theta), math.sin(theta * z_rate)]) * radii
        poses.append(look_at(mean_center + mean_rot @ offset, target, up))
    return CameraPath(np.stack(poses), [intrinsics], fps)


def tour_order(centers: np.ndarray) -> list[int]:
    """A short open tour through points (greedy nearest neighbour from the first): indices."""
    remaining = list(range(1, len(centers)))
    order = [0]
    while remaining:
        last = centers[order[-1]]
        j = int(np.argmin(np.linalg.norm(centers[remaining] - last, axis=1)))
        order.append(remaining.pop(j))
    return order


def smooth_path(c2w: np.ndarray, n_frames: int, intrinsics: Intrinsics, keyframes: int = 0,
                reorder: bool = True, fps: float = 24.0) -> CameraPath:
    """A smooth path through training cameras: a cubic spline on the centres and a cubic rotation
    spline (scipy's ``RotationSpline``, the C2-smooth successor of piecewise slerp) on the
    orientations, both over chord length so the speed is even.

    ``reorder`` visits the cameras in a nearest-neighbour tour (captures are often unordered);
    ``keyframes`` > 0 keeps that many cameras evenly spread along the tour (fewer wiggles).
    """
    from scipy.interpolate import CubicSpline
    from scipy.spatial.transform import Rotation, RotationSpline

    c2w = np.asarray(c2w, dtype=np.float64)
    if len(c2w) < 2:
        raise ValueError("a smooth path needs at least 2 cameras")
    order = tour_order(c2w[:, :3, 3]) if reorder else list(range(len(c2w)))
    if 2 <= keyframes < len(order):
        order = [order[i] for i in np.round(np.linspace(0, len(order) - 1, keyframes)).astype(int)]
    keys = c2w[order]
    centers = keys[:, :3, 3]
    steps = np.linalg.norm(np.diff(centers, axis=0), axis=1)
    # chord length, plus a little rotation so coincident centres still advance
    angles = np.array([Rotation.from_matrix(keys[i + 1, :3, :3] @ keys[i, :3, :3].T).magnitude()
                       for i in range(len(keys) - 1)])
    scale = max(float(np.median(steps)), 1e-9)
    param = np.concatenate([[0.0], np.cumsum(steps + 0.05 * scale * angles + 1e-9)])
    spline = CubicSpline(param, centers, bc_type="natural")
    rot_spline = RotationSpline(param, Rotation.from_matrix(keys[:, :3, :3]))
    s = np.linspace(0, param[-1], n_frames)
    poses = np.tile(np.eye(4), (n_frames, 1, 1))
    poses[:, :3, :3] = rot_spline(s).as_matrix()
    poses[:, :3, 3] = spline(s)
    return CameraPath(poses, [intrinsics], fps)


# ----------------------------------------------------------------------------------------------
# nerfstudio camera_path.json


def read_nerfstudio_camera_path(path: str | Path, width: Optional[int] = None,
                                height: Optional[int] = None) -> CameraPath:
    """A nerfstudio ``camera_path.json`` (viewer export: ``camera_path`` entries with a flattened
    4x4 OpenGL ``camera_to_world`` and a vertical ``fov`` in degrees; ``render_width``,
    ``render_height``, ``fps``). Poses are taken as given, i.e. in the frame of the scene the path
    was made for: for a path made in nerfstudio on recon's ``poses/transforms.json`` that is our
    normalised frame when nerfstudio ran with ``--orientation-method none --center-method none
    --auto-scale-poses False``. Only perspective paths are supported."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: camera path file not found; export one from the nerfstudio viewer "
                                "or set path to orbit|spiral|smooth") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-export the camera path") from None
    entries = data.get("camera_path")
    if not entries:
        raise ValueError(f"{path}: no 'camera_path' list; is this a nerfstudio camera_path.json?")
    camera_type = str(data.get("camera_type", "perspective")).lower()
    if camera_type != "perspective":
        raise ValueError(f"{path}: camera_type {camera_type!r} is not supported; export a perspective path")
    w = int(width or data.get("render_width", 0) or 0)
    h = int(height or data.get("render_height", 0) or 0)
    if not (w and h):
        raise ValueError(f"{path}: no render_width/render_height; give the export a width and height")
    poses, intrinsics = [], []
    for i, entry in enumerate(entries):
        m = np.asarray(entry.get("camera_to_world", []), dtype=np.float64)
        if m.size not in (12, 16):
            raise ValueError(f"{path}: camera_path[{i}].camera_to_world needs 12 or 16 numbers, got {m.size}")
        m = np.vstack([m.reshape(-1, 4)[:3], [0, 0, 0, 1]])
        poses.append(m @ OPENGL_TO_OPENCV)
        intrinsics.append(intrinsics_from_fov(w, h, float(entry.get("fov", data.get("default_fov", 50.0)))))
    return CameraPath(np.stack(poses), intrinsics, float(data.get("fps", 24.0)))


def write_nerfstudio_camera_path(path: str | Path, camera_path: CameraPath) -> Path:
    """Write a path as a nerfstudio ``camera_path.json`` (renderable by ``ns-render camera-path``)."""
    k0 = camera_path.intrinsics[0]
    entries = [{"camera_to_world": (c2w @ OPENGL_TO_OPENCV).reshape(-1).tolist(), "fov": vertical_fov_deg(k),
                "aspect": k.width / k.height} for c2w, k in zip(camera_path.c2w, camera_path.intrinsics)]
    data = {"camera_type": "perspective", "render_width": k0.width, "render_height": k0.height,
            "fps": camera_path.fps, "seconds": len(camera_path) / camera_path.fps, "camera_path": entries}
    write_json(Path(path), data)
    return Path(path)


def make_path(kind: str, train_c2w: np.ndarray, n_frames: int, intrinsics: Intrinsics, bounds=None,
              path_file: str = "", fps: float = 24.0, radius: Optional[float] = None,
              elevation_deg: Optional[float] = None, keyframes: int = 0) -> CameraPath:
    """The path ``kind`` (orbit | spiral | smooth | file) for a scene with training cameras ``train_c2w``."""
    if kind == "orbit":
        return orbit_from_cameras(train_c2w, n_frames, intrinsics, bounds, radius, elevation_deg, fps)
    if kind == "spiral":
        return spiral_path(train_c2w, n_frames, intrinsics, fps=fps)
    if kind == "smooth":
        return smooth_path(train_c2w, n_frames, intrinsics, keyframes=keyframes, fps=fps)
    if kind == "file":
        if not path_file:
            raise ValueError("path=file needs path_file=/path/to/camera_path.json (nerfstudio format)")
        return read_nerfstudio_camera_path(path_file)
    raise ValueError(f"unknown camera path {kind!r}; choose one of {', '.join(PATH_KINDS)}")


__all__ = ["CameraPath", "PATH_KINDS", "intrinsics_from_fov", "vertical_fov_deg", "orbit_path",
           "orbit_from_cameras", "spiral_path", "smooth_path", "read_nerfstudio_camera_path",
           "write_nerfstudio_camera_path", "make_path", "camera_up", "scene_center", "tour_order"]
