"""Depth maps -> one fused, coloured point cloud with outliers removed.

Three filters, in order, each optional:
1. per-pixel validity (e.g. accumulated opacity above a threshold: no background pixels);
2. multi-view consistency: a pixel's 3-D point must agree with the depth seen by at least
   ``min_consistent_views`` other views (relative depth difference below ``consistency_tol``),
   as in COLMAP's fusion; points no other view confirms are floaters or noise;
3. statistical outlier removal: points whose mean distance to their ``k`` nearest neighbours is
   more than ``std_ratio`` standard deviations above the average (as in Open3D / PCL).
A voxel grid then averages points (and colours) per cell so overlapping views do not pile up.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from pipeline.geometry.cameras import Cameras, pixel_grid


@dataclass
class DepthView:
    """One view to fuse. depth: (H, W) in the camera's depth convention (z-depth for perspective,
    range for equirect); rgb: (H, W, 3) in [0, 1] or None; valid: (H, W) bool or None (all);
    camera: a batch of one camera."""

    depth: np.ndarray
    camera: Cameras
    rgb: Optional[np.ndarray] = None
    valid: Optional[np.ndarray] = None


def depth_to_points(depth: np.ndarray, camera: Cameras, valid: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """World points of the valid pixels of a depth map: (points (M, 3) float64, flat pixel indices (M,))."""
    h, w = depth.shape
    flat = depth.reshape(-1).astype(np.float64)
    ok = np.isfinite(flat) & (flat > 0)
    if valid is not None:
        ok &= np.asarray(valid).reshape(-1).astype(bool)
    idx = np.nonzero(ok)[0]
    cam = camera.to(dtype=torch.float64)
    uv = pixel_grid(w, h, dtype=torch.float64)[torch.from_numpy(idx)]
    dirs = cam.unproject(uv)  # z = 1 for perspective (times z-depth), unit for equirect (times range)
    pts_cam = dirs * torch.from_numpy(flat[idx])[:, None]
    R, t = cam.c2w[0, :3, :3], cam.c2w[0, :3, 3]
    return (pts_cam @ R.T + t).numpy(), idx


def consistency_counts(points: np.ndarray, views: Sequence[DepthView], skip: int, tol: float) -> np.ndarray:
    """For each point (M, 3), how many views other than ``skip`` see a surface at the same depth
    (relative difference < ``tol``) where the point projects."""
    counts = np.zeros(len(points), dtype=np.int32)
    pts = torch.from_numpy(points)
    for j, view in enumerate(views):
        if j == skip:
            continue
        cam = view.camera.to(dtype=torch.float64)
        uv, d = cam.project_world(pts)
        uv, d = uv.numpy(), d.numpy()
        h, w = view.depth.shape
        col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = (d > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        seen = np.zeros(len(points), dtype=bool)
        ref = view.depth[row[inside], col[inside]].astype(np.float64)
        ok_ref = np.isfinite(ref) & (ref > 0)
        if view.valid is not None:
            ok_ref &= np.asarray(view.valid)[row[inside], col[inside]].astype(bool)
        close = ok_ref & (np.abs(d[inside] - ref) < tol * np.maximum(ref, 1e-12))
        seen[np.nonzero(inside)[0][close]] = True
        counts += seen
    return counts


def statistical_outliers(points: np.ndarray, k: int = 16, std_ratio: float = 2.0) -> np.ndarray:
    """Boolean mask (M,) of the points to keep (see the module docstring)."""
    from scipy.spatial import cKDTree

    if len(points) <= k:
        return np.ones(len(points), dtype=bool)
    dist, _ = cKDTree(points).query(points, k=k + 1, workers=-1)
    mean_dist = dist[:, 1:].mean(1)
    return mean_dist <= mean_dist.mean() + std_ratio * mean_dist.std()


def voxel_downsample(points: np.ndarray, colors: Optional[np.ndarray], voxel: float):
    """Average points (and colours) per cubic cell of side ``voxel``: (points (K, 3), colors (K, 3) or None)."""
    if voxel <= 0 or len(points) == 0:
        return points, colors
    keys = np.floor(points / voxel).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)

    def mean(values):
        out = np.zeros((len(counts), values.shape[1]), dtype=np.float64)
        np.add.at(out, inverse, values)
        return out / counts[:, None]

    return mean(points), None if colors is None else mean(colors)


def fuse_depth_maps(views: Sequence[DepthView], min_consistent_views: int = 1, consistency_tol: float = 0.01,
                    outlier_k: int = 16, outlier_std_ratio: float = 2.0, voxel_size: float = 0.0,
                    max_points: int = 2_000_000, seed: int = 0) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Fuse views into (points (M, 3), colors (M, 3) in [0, 1] or None), in the cameras' frame.

    ``min_consistent_views`` = 0 or a single view disables the consistency check; ``outlier_k`` = 0
    disables statistical removal; ``voxel_size`` = 0 keeps every point (then at most ``max_points``,
    drawn at random).
    """
    all_points, all_colors = [], []
    use_consistency = min_consistent_views > 0 and len(views) > 1
    for i, view in enumerate(views):
        points, idx = depth_to_points(view.depth, view.camera, view.valid)
        colors = None if view.rgb is None else np.asarray(view.rgb, dtype=np.float64).reshape(-1, 3)[idx]
        if use_consistency and len(points):
            keep = consistency_counts(points, views, i, consistency_tol) >= min_consistent_views
            points = points[keep]
            colors = None if colors is None else colors[keep]
        all_points.append(points)
        all_colors.append(colors)
    points = np.concatenate(all_points) if all_points else np.zeros((0, 3))
    has_colors = all(c is not None for c in all_colors) and bool(all_colors)
    colors = np.concatenate(all_colors) if has_colors else None
    points, colors = voxel_downsample(points, colors, voxel_size)
    if len(points) > max_points:
        choice = np.random.default_rng(seed).choice(len(points), max_points, replace=False)
        points, colors = points[choice], None if colors is None else colors[choice]
    if outlier_k > 0 and len(points):
        keep = statistical_outliers(points, outlier_k, outlier_std_ratio)
        points, colors = points[keep], None if colors is None else colors[keep]
    return points, colors


__all__ = ["DepthView", "depth_to_points", "consistency_counts", "statistical_outliers", "voxel_downsample",
           "fuse_depth_maps"]
