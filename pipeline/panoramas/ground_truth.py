"""Reference panorama centres for EVALUATION ONLY (never an input of the estimate), and the errors of
estimated centres against them.

References: the built-in room's ``centers.json`` (exact centres, yaws, room bounds; metres) and a
ZInD-style ``poses.json`` (read by :func:`datasets.panoramas.read_panorama_folder`, which puts it in
recon's world frame: metres, +z up, floor at z = 0). The room's size, the scale of the percentages,
is the diagonal of the room's floor box when it is known, else that of the reference centres' box.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.geometry.alignment import rotation_angle_deg, umeyama
from pipeline.panoramas.centres import distance_matrix, level_c2w


@dataclass
class ReferenceCentres:
    names: list[str]
    c2w: np.ndarray  # (N, 4, 4) OpenCV, metres, +z up, floor at z = 0
    room_size_m: float
    room_size_from: str
    source: Path


def read_reference(source: Optional[Path]) -> Optional[ReferenceCentres]:
    """The reference centres of the dataset at ``source``, or None when it has none."""
    if source is None or not Path(source).is_dir():
        return None
    source = Path(source)
    if not any((source / f).is_file() for f in ("centers.json", "poses.json")) and source.name in ("panos", "panoramas"):
        source = source.parent  # ZInD layout: DATA/poses.json beside DATA/panos/
    if (source / "centers.json").is_file():
        data = json.loads((source / "centers.json").read_text())
        entries = data["panoramas"]
        names = [Path(e["file"]).stem for e in entries]
        c2w = np.stack([level_c2w(e["center"], e["yaw_deg"]) for e in entries])
        lo, hi = np.asarray(data["room_bounds"], dtype=np.float64)
        return ReferenceCentres(names, c2w, float(np.linalg.norm((hi - lo)[:2])), "room floor box diagonal",
                                source / "centers.json")
    if (source / "poses.json").is_file():
        from datasets.panoramas import read_panorama_folder

        scene = read_panorama_folder(source)
        names = [f.name for f in scene.frames]
        c2w = np.stack([f.c2w for f in scene.frames])
        xy = c2w[:, :2, 3]
        return ReferenceCentres(names, c2w, float(np.linalg.norm(xy.max(0) - xy.min(0))),
                                "diagonal of the reference centres' plan box (no room bounds given)",
                                source / "poses.json")
    return None


def rigid_2d(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation (2, 2) and translation (2,) minimising |R src + t - dst| over plan points (N, 2)."""
    ms, md = src.mean(0), dst.mean(0)
    u, _, vt = np.linalg.svd((dst - md).T @ (src - ms))
    rot = u @ np.diag([1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    return rot, md - rot @ ms


def centre_errors(names: list[str], c2w: np.ndarray, units: str, ref: ReferenceCentres) -> dict:
    """Errors of estimated panoramas (names, c2w (N, 4, 4) in the output frame) against the
    reference: centre error after a 3-D similarity alignment (% of the room size, metres), after a
    rigid 2-D plan alignment without scale (metres; only when units are metres), pairwise distance
    error (%; metric distances compared as they are, relative ones after the best common scale) and
    rotation error after the similarity's rotation (degrees)."""
    common = [n for n in names if n in ref.names]
    if len(common) < 3:
        return {"skipped": f"only {len(common)} panoramas are in the reference {ref.source} (need 3)"}
    est = np.stack([c2w[names.index(n)] for n in common])
    gt = np.stack([ref.c2w[ref.names.index(n)] for n in common])
    sim = umeyama(est[:, :3, 3], gt[:, :3, 3])
    aligned = sim.apply_c2w(est)
    err_sim = np.linalg.norm(aligned[:, :3, 3] - gt[:, :3, 3], axis=1)
    rel_rot = np.einsum("nji,njk->nik", gt[:, :3, :3], aligned[:, :3, :3])
    rot_err = rotation_angle_deg(rel_rot)
    d_est, d_gt = distance_matrix(est[:, :3, 3]), distance_matrix(gt[:, :3, 3])
    iu = np.triu_indices(len(common), 1)
    d_est, d_gt = d_est[iu], d_gt[iu]
    if units != "m":
        d_est = d_est * (d_est @ d_gt) / (d_est @ d_est)  # relative units: the best common scale first
    dist_err = np.abs(d_est - d_gt) / d_gt * 100
    out = {
        "reference": str(ref.source), "panoramas": len(common), "room_size_m": ref.room_size_m,
        "room_size_from": ref.room_size_from,
        "centre_error_sim3_median_pct": float(np.median(err_sim) / ref.room_size_m * 100),
        "centre_error_sim3_max_pct": float(err_sim.max() / ref.room_size_m * 100),
        "centre_error_sim3_median_m": float(np.median(err_sim)), "centre_error_sim3_max_m": float(err_sim.max()),
        "distance_error_median_pct": float(np.median(dist_err)), "distance_error_max_pct": float(dist_err.max()),
        "distance_error_compared": "as estimated (metres)" if units == "m" else "after the best common scale",
        "rotation_error_median_deg": float(np.median(rot_err)), "rotation_error_max_deg": float(rot_err.max()),
        "alignment_scale": sim.scale,
    }
    if units == "m":
        rot, t = rigid_2d(est[:, :2, 3], gt[:, :2, 3])
        err_2d = np.linalg.norm(est[:, :2, 3] @ rot.T + t - gt[:, :2, 3], axis=1)
        out.update(centre_error_rigid2d_median_m=float(np.median(err_2d)), centre_error_rigid2d_max_m=float(err_2d.max()))
    return out
