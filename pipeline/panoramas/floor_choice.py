"""Which floor plane the centres stage uses when it has two: the one fitted to the sparse points
(:mod:`pipeline.panoramas.floor`) and the photometric sweep's (:mod:`pipeline.panoramas.floor_sweep`).

Both measure the cameras' height above the floor in model units. When both exist they are compared
(the difference of the mean camera heights against their combined sigma, with 1 % slack for what
the sigmas leave out) and the one with the smaller relative sigma is used; a disagreement is
reported, not hidden. When one fails the other is used; when both fail there is no floor, and the
reasons of both are kept.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from pipeline.panoramas.floor import FloorFit


def _summary(fit: FloorFit, centres: np.ndarray) -> dict:
    height = float(fit.height(centres).mean())
    return {"method": fit.method, "mean_camera_height": height, "sigma": fit.offset_sigma,
            "rel_sigma": fit.offset_sigma / height if height > 0 else None}


def choose_floor(points_fit: Optional[FloorFit], points_reason: str, sweep_fit: Optional[FloorFit],
                 sweep_reason: str, centres: np.ndarray) -> tuple[Optional[FloorFit], str, dict]:
    """(the floor to use or None, the reason when None, what was compared) for cameras at
    ``centres`` (N, 3). A reason is "" when that method was not tried."""
    record: dict = {}
    if points_reason:
        record["sparse_points"] = {"fitted": False, "reason": points_reason}
    if sweep_reason:
        record["photometric_sweep"] = {"fitted": False, "reason": sweep_reason}
    fits = [f for f in (points_fit, sweep_fit) if f is not None and float(f.height(centres).mean()) > 0]
    if not fits:
        reasons = [f"{name}: {why}" for name, why in (("sparse points", points_reason),
                                                      ("photometric sweep", sweep_reason)) if why]
        return None, "; ".join(reasons) or "no floor fit was tried", record
    if len(fits) == 1:
        return fits[0], "", record
    a, b = (_summary(f, centres) for f in fits)
    record["sparse_points"], record["photometric_sweep"] = a, b
    diff = abs(a["mean_camera_height"] - b["mean_camera_height"])
    tolerance = 3.0 * math.hypot(a["sigma"], b["sigma"]) + 0.01 * a["mean_camera_height"]
    best = min(fits, key=lambda f: _summary(f, centres)["rel_sigma"])
    record.update(agree=bool(diff <= tolerance), height_difference_rel=diff / a["mean_camera_height"],
                  chosen=best.method)
    return best, "", record
