"""New panoramas at new centres: poses between two panoramas (centres on the straight line,
orientation by slerp), a walk through all of them, a forward-looking perspective camera along the
walk, and rendering a trained field as an equirect panorama at any pose.

All poses are OpenCV camera-to-world (4, 4) in the frame they are given in (the normalised scene
frame inside the pipeline).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.geometry.camera_paths import tour_order
from pipeline.geometry.cameras import Cameras, Intrinsics, look_at
from pipeline.models.render import render_image

WALK_ORDERS = ("nearest", "capture")


def interpolate_pose(c2w_a: np.ndarray, c2w_b: np.ndarray, t: float) -> np.ndarray:
    """The pose a fraction ``t`` in [0, 1] of the way from a to b: centre on the straight line,
    rotation by spherical linear interpolation (scipy's Slerp). c2w_a, c2w_b: (4, 4)."""
    from scipy.spatial.transform import Rotation, Slerp

    slerp = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([c2w_a[:3, :3], c2w_b[:3, :3]])))
    out = np.eye(4)
    out[:3, :3] = slerp([float(t)]).as_matrix()[0]
    out[:3, 3] = (1 - t) * np.asarray(c2w_a)[:3, 3] + t * np.asarray(c2w_b)[:3, 3]
    return out


@dataclass
class PathPose:
    """One pose of a path: ``c2w`` (4, 4) a fraction ``t`` of the way from frame ``a`` to frame ``b``."""

    c2w: np.ndarray
    a: int
    b: int
    t: float


def between(c2w: np.ndarray, a: int, b: int, steps: int) -> list[PathPose]:
    """``steps`` (>= 2) poses from frame a to frame b, both included: t = 0, 1/(steps-1), ..., 1."""
    if steps < 2:
        raise ValueError(f"steps must be >= 2 (both ends are included), got {steps}")
    return [PathPose(interpolate_pose(c2w[a], c2w[b], t), a, b, float(t)) for t in np.linspace(0, 1, steps)]


def walk_order(c2w: np.ndarray, order: str = "nearest") -> list[int]:
    """The order in which a walk visits the frames: ``nearest`` (a greedy nearest-neighbour tour
    from the first) or ``capture`` (as given)."""
    if order not in WALK_ORDERS:
        raise ValueError(f"walk_order must be one of {WALK_ORDERS}, got {order!r}")
    return tour_order(c2w[:, :3, 3]) if order == "nearest" else list(range(len(c2w)))


def walk(c2w: np.ndarray, order: list[int], steps: int) -> list[PathPose]:
    """A walk through the frames ``order`` at an even pace: segment k gets about ``steps`` poses
    per median segment length (at least one), the last frame's pose ends the walk."""
    if len(order) < 2:
        raise ValueError("a walk needs at least 2 panoramas")
    lengths = np.array([np.linalg.norm(c2w[j, :3, 3] - c2w[i, :3, 3]) for i, j in zip(order, order[1:])])
    unit = max(float(np.median(lengths)), 1e-12)
    poses = []
    for (i, j), length in zip(zip(order, order[1:]), lengths):
        n = max(1, int(round(steps * length / unit)))
        poses += [PathPose(interpolate_pose(c2w[i], c2w[j], t), i, j, float(t)) for t in np.arange(n) / n]
    poses.append(PathPose(np.asarray(c2w[order[-1]], dtype=np.float64), order[-2], order[-1], 1.0))
    return poses


def forward_views(centres: np.ndarray, up: np.ndarray, lookahead: int = 3) -> np.ndarray:
    """Forward-looking perspective cameras (K, 4, 4) along a walk through ``centres`` (K, 3): each
    looks towards where the walk is ``lookahead`` poses later (smooths the turns at panoramas),
    level with ``up``; where the walk stands still it keeps the previous direction."""
    k = len(centres)
    forward = np.array([1.0, 0.0, 0.0])
    out = []
    for i in range(k):
        ahead = centres[min(k - 1, i + lookahead)] - centres[max(0, i - lookahead)]
        ahead = ahead - np.dot(ahead, up) * up  # level: no pitch
        if np.linalg.norm(ahead) > 1e-9:
            forward = ahead / np.linalg.norm(ahead)
        out.append(look_at(centres[i], centres[i] + forward, up))
    return np.stack(out)


def equirect_camera(c2w: np.ndarray, width: int, device="cpu") -> Cameras:
    """A batch of one equirect camera (width x width/2) at the pose ``c2w`` (4, 4)."""
    width = int(width) + int(width) % 2
    return Cameras.from_intrinsics([Intrinsics("equirect", width, width // 2)], np.asarray(c2w)[None], device=device)


@torch.no_grad()
def render_panorama(model, c2w: np.ndarray, width: int, device, chunk: int = 8192) -> dict:
    """The field seen as an equirect panorama from ``c2w``: rgb (H, W, 3) in [0, 1] and depth
    (H, W) range in the model's (normalised) units, numpy float32, H = W / 2."""
    r = render_image(model, equirect_camera(c2w, width, device), chunk=chunk)
    return {"rgb": r["rgb"].clamp(0, 1).numpy(), "depth": r["depth"].numpy(), "acc": r["acc"].numpy()}
