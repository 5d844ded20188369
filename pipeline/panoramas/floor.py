"""The floor plane below a set of panorama cameras, fitted robustly to sparse points.

The poses stage's frame is gravity-aligned (+z up), so the floor is a plane whose normal is near
+z, below every camera. Sparse points under the cameras also hit furniture tops, skirting and
the odd bad triangulation, so the fit is RANSAC over the LOWER part of the points (tables stand
at about half the camera height: keeping the lowest third of the height range leaves them out),
with the normal constrained near +z, then a least-squares refinement on the inliers with a
threshold from their robust spread. A plane counts only when its points spread under the cameras
(a table top beside them does not), and only when few points lie below it: the floor is the lowest
surface, while a band of wall points at one height all around the room (what remains when the floor
itself has too few points) has the rest of the walls below it. Units are whatever the points are in (no metric scale needed).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class FloorConfig:
    max_tilt_deg: float = 10.0  # the floor normal is within this of +z (the frame is gravity-aligned)
    lower_fraction: float = 0.35  # candidates: the lowest part of the range between the floor and the cameras
    reach: float = 3.0  # candidates within reach x (camera height) of some camera in the plan
    min_points: int = 20  # fewer candidate or inlier points: no floor
    min_coverage: float = 0.5  # the inliers span at least this fraction of the cameras' plan extent
    max_below: float = 0.25  # points clearly below the plane, at most this fraction of its inliers
    ransac_trials: int = 500
    inlier_fraction: float = 0.02  # RANSAC inlier band, as a fraction of the cameras' height above the points
    seed: int = 0


@dataclass
class FloorFit:
    """A plane n . x = offset (unit normal n, pointing up) and how well the points support it."""

    normal: np.ndarray  # (3,)
    offset: float
    inliers: int
    candidates: int
    residual_rms: float  # of the inliers, in the points' units
    offset_sigma: float  # 1-sigma of the plane's offset: residual_rms / sqrt(inliers)
    method: str = "sparse points"  # or "photometric sweep" (pipeline.panoramas.floor_sweep)
    details: dict = field(default_factory=dict)  # what the method reports beyond the plane

    def height(self, points: np.ndarray) -> np.ndarray:
        """Signed height above the plane of points (..., 3) -> (...)."""
        return np.asarray(points) @ self.normal - self.offset

    def tilt_deg(self) -> float:
        return float(np.degrees(np.arccos(np.clip(self.normal[2], -1.0, 1.0))))

    def to_dict(self) -> dict:
        return {"method": self.method, "normal": self.normal.tolist(), "offset": self.offset,
                "inliers": self.inliers, "candidates": self.candidates, "residual_rms": self.residual_rms,
                "offset_sigma": self.offset_sigma, "tilt_deg": self.tilt_deg(), **self.details}


class FloorFitError(ValueError):
    """No floor could be fitted; the message says why (too few points below the cameras, ...)."""


def _plane_lsq(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares plane of points (K, 3): unit normal (pointing +z) and offset."""
    centroid = points.mean(0)
    _, _, vt = np.linalg.svd(points - centroid, full_matrices=False)
    normal = vt[-1]
    if normal[2] < 0:
        normal = -normal
    return normal, float(normal @ centroid)


def floor_candidates(points: np.ndarray, centres: np.ndarray, cfg: FloorConfig) -> tuple[np.ndarray, float]:
    """The points that can be floor: below the lowest camera, in the lower part of the height range,
    within reach of a camera in the plan. points (M, 3), centres (N, 3) -> (K, 3), and the rough
    camera height above the lowest points (the scale of the RANSAC band)."""
    below = points[points[:, 2] < centres[:, 2].min()]
    if len(below) < cfg.min_points:
        raise FloorFitError(f"only {len(below)} sparse points lie below the cameras (need {cfg.min_points})")
    z_low = float(np.percentile(below[:, 2], 2))  # robust to a few points below the floor
    height = float(centres[:, 2].min() - z_low)
    lower = below[below[:, 2] < z_low + cfg.lower_fraction * height]
    plan_dist = np.linalg.norm(lower[:, None, :2] - centres[None, :, :2], axis=-1).min(1)
    near = lower[plan_dist < cfg.reach * height]
    if len(near) < cfg.min_points:
        raise FloorFitError(f"only {len(near)} sparse points lie low enough under the cameras to be floor "
                            f"(need {cfg.min_points})")
    return near, height


def plan_coverage(inliers: np.ndarray, centres: np.ndarray) -> float:
    """How much of the cameras' plan extent the inlier points (K, 3) span: along each principal axis
    of the camera centres (N, 3), the inliers' 5-95 percentile range over the cameras' range; the
    smaller of the two (an axis along which the cameras hardly spread does not count)."""
    xy = centres[:, :2] - centres[:, :2].mean(0)
    _, _, axes = np.linalg.svd(xy, full_matrices=False) if len(xy) > 1 else (None, None, np.eye(2))
    spread = float(np.ptp(xy @ axes.T, axis=0).max()) if len(xy) > 1 else 0.0
    coverage = 1.0
    for axis in axes:
        cam_range = float(np.ptp(xy @ axis))
        if cam_range < 0.2 * spread or cam_range <= 0:
            continue
        proj = (inliers[:, :2] - centres[:, :2].mean(0)) @ axis
        coverage = min(coverage, float(np.subtract(*np.percentile(proj, [95, 5]))) / cam_range)
    return coverage


def fit_floor(points: Optional[np.ndarray], centres: np.ndarray, cfg: FloorConfig = FloorConfig()) -> FloorFit:
    """Fit the floor plane under cameras at ``centres`` (N, 3) to sparse ``points`` (M, 3) (same frame,
    +z up). Raises :class:`FloorFitError` with the reason when there is no floor to fit."""
    if points is None or len(points) == 0:
        raise FloorFitError("there are no sparse points (poses imported without points.ply)")
    centres = np.asarray(centres, np.float64)
    points = np.asarray(points, np.float64)
    cand, height = floor_candidates(points, centres, cfg)
    below = points[points[:, 2] < centres[:, 2].min()]
    band = cfg.inlier_fraction * height
    cos_max = np.cos(np.radians(cfg.max_tilt_deg))
    rng = np.random.default_rng(cfg.seed)  # deterministic: the same points give the same floor
    best, best_count = None, 0
    for _ in range(cfg.ransac_trials):
        a, b, c = cand[rng.choice(len(cand), 3, replace=False)]
        normal = np.cross(b - a, c - a)
        norm = np.linalg.norm(normal)
        if norm < 1e-12:
            continue
        normal = normal / norm * np.sign(normal[2] or 1.0)
        if normal[2] < cos_max:
            continue
        inside = np.abs(cand @ normal - normal @ a) < band
        count = int(inside.sum())
        # a table top can hold more points than the floor: only a plane spreading under the cameras counts
        if count > best_count and count >= cfg.min_points and \
                plan_coverage(cand[inside], centres) >= cfg.min_coverage and \
                (below @ normal < normal @ a - 3 * band).sum() <= cfg.max_below * count:
            best, best_count = (normal, float(normal @ a)), count
    if best is None:
        raise FloorFitError(f"no plane within {cfg.max_tilt_deg:g} deg of level holds {cfg.min_points} of the "
                            f"{len(cand)} low points, spans {cfg.min_coverage:.0%} of the cameras' extent in the "
                            f"plan and has few points below it (at most {cfg.max_below:.0%} of its own)")
    normal, offset = best
    inliers = cand[np.abs(cand @ normal - offset) < band]
    for _ in range(3):  # refine: least squares on the inliers, band from their robust spread
        normal, offset = _plane_lsq(inliers)
        resid = cand @ normal - offset
        mad = 1.4826 * np.median(np.abs(resid[np.abs(resid) < band]))
        keep = np.abs(resid) < max(3.0 * mad, 1e-3 * band)
        if keep.sum() < cfg.min_points:
            break
        inliers = cand[keep]
    normal, offset = _plane_lsq(inliers)
    if normal[2] < cos_max:
        raise FloorFitError(f"the refined floor plane is tilted {np.degrees(np.arccos(normal[2])):.1f} deg "
                            f"(more than {cfg.max_tilt_deg:g})")
    coverage = plan_coverage(inliers, centres)
    if coverage < cfg.min_coverage:  # a table top or a bench: compact, not under the cameras
        raise FloorFitError(f"the best level plane ({len(inliers)} points) spans only {coverage:.0%} of the "
                            f"cameras' extent in the plan (need {cfg.min_coverage:.0%}): no floor among the points")
    rms = float(np.sqrt(np.mean((inliers @ normal - offset) ** 2)))
    return FloorFit(normal, offset, int(len(inliers)), int(len(cand)), rms, rms / np.sqrt(len(inliers)))
