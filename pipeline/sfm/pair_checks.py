"""Checks of verified panorama pairs before mapping: false pairs removed from the COLMAP database.

Indoor panoramas give false pairs easily (white walls, repeated doors and cabinets, wide
baselines) and a handful of them is enough to bend a global reconstruction. Two checks that
need no ground truth:

- upright: two levelled panoramas differ by a rotation about the vertical only, so a relative
  rotation that tilts the vertical is false (:func:`drop_tilted_pairs`);
- loops: around a triplet of pairs the relative rotations must compose to the identity and the
  three directions between the centres must close a triangle with positive sides
  (:func:`drop_inconsistent_pairs`, the loop-consistency idea of 1DSfM / Theia). A pair that only
  takes part in broken triplets is removed, the weakest first; a weak pair (few inliers) that
  no consistent triplet confirms is removed too.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GRAVITY_IN_CAMERA = np.array([0.0, 1.0, 0.0])  # OpenCV camera: y points down


@dataclass
class RelativePose:
    rotation: np.ndarray  # (3, 3) cam2_from_cam1
    centre_dir: np.ndarray  # (3,) unit direction from camera 1 to camera 2's centre, in camera 1's frame
    inliers: int


def _angle_deg(rotation: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))))


def read_relative_poses(pycolmap, db_path: Path) -> dict[tuple[int, int], RelativePose]:
    """{(id1, id2): relative pose} of the verified pairs that have one, in both directions."""
    poses = {}
    with pycolmap.Database.open(db_path) as db:
        pair_ids, geometries = db.read_two_view_geometries()
    for pair_id, geometry in zip(pair_ids, geometries):
        if geometry.cam2_from_cam1 is None:
            continue
        a, b = pycolmap.pair_id_to_image_pair(pair_id)
        rot = geometry.cam2_from_cam1.rotation.matrix()
        t = np.asarray(geometry.cam2_from_cam1.translation, dtype=np.float64)
        if np.linalg.norm(t) == 0:
            continue
        t = t / np.linalg.norm(t)
        n = len(geometry.inlier_matches)
        poses[(a, b)] = RelativePose(rot, -rot.T @ t, n)  # x2 = R x1 + t: centre 2 is at -R^T t in camera 1
        poses[(b, a)] = RelativePose(rot.T, t, n)
    return poses


def _delete(pycolmap, db_path: Path, pairs: list[tuple[int, int]]) -> None:
    with pycolmap.Database.open(db_path) as db:
        for a, b in pairs:
            db.delete_two_view_geometry(a, b)


def drop_tilted_pairs(pycolmap, db_path: Path, max_tilt_deg: float) -> int:
    """Delete the pairs whose relative rotation tilts the vertical by more than ``max_tilt_deg``.
    Returns how many were deleted."""
    poses = read_relative_poses(pycolmap, db_path)
    tilted = []
    for (a, b), pose in poses.items():
        if a < b:
            down = pose.rotation @ GRAVITY_IN_CAMERA
            if np.degrees(np.arccos(np.clip(down[1], -1.0, 1.0))) > max_tilt_deg:
                tilted.append((a, b))
    _delete(pycolmap, db_path, tilted)
    return len(tilted)


def triplet_consistent(poses: dict, a: int, b: int, c: int, max_rotation_deg: float,
                       max_direction_deg: float) -> bool:
    """True when the pairs (a, b), (b, c), (a, c) agree: rotations compose to the identity and the
    centre directions close a triangle with positive side lengths."""
    r_ba, r_cb, r_ac = poses[(a, b)].rotation, poses[(b, c)].rotation, poses[(c, a)].rotation
    if _angle_deg(r_ac @ r_cb @ r_ba) > max_rotation_deg:
        return False
    u_ab, u_ac = poses[(a, b)].centre_dir, poses[(a, c)].centre_dir
    u_bc = r_ba.T @ poses[(b, c)].centre_dir  # into camera a's frame
    sides = np.stack([u_ab, u_bc], 1)
    lengths, *_ = np.linalg.lstsq(sides, u_ac, rcond=None)
    residual = float(np.linalg.norm(sides @ lengths - u_ac))
    return bool(lengths.min() > 0 and residual < np.sin(np.radians(max_direction_deg)))


def drop_inconsistent_pairs(pycolmap, db_path: Path, max_rotation_deg: float = 3.0, max_direction_deg: float = 5.0,
                            confirm_below_inliers: int = 20) -> dict:
    """Remove the pairs that the loop checks reject (see the module doc), greedily: the weakest
    pair with no consistent triplet and at least one broken one first, then the triplets are
    re-checked. Pairs with fewer than ``confirm_below_inliers`` inliers that no consistent triplet
    confirms go too. Returns counts and the removed pairs' image ids."""
    poses = read_relative_poses(pycolmap, db_path)
    edges = {(a, b) for a, b in poses if a < b}
    nodes = sorted({i for e in edges for i in e})
    removed: list[tuple[int, int]] = []

    def support():
        good = {e: 0 for e in edges}
        bad = {e: 0 for e in edges}
        for a, b, c in itertools.combinations(nodes, 3):
            triangle = [(a, b), (b, c), (a, c)]
            if all(e in edges for e in triangle):
                ok = triplet_consistent(poses, a, b, c, max_rotation_deg, max_direction_deg)
                for e in triangle:
                    (good if ok else bad)[e] += 1
        return good, bad

    while True:
        good, bad = support()
        broken = [e for e in edges if bad[e] > 0 and good[e] == 0]
        if not broken:
            break
        weakest = min(broken, key=lambda e: (poses[e].inliers, -bad[e]))
        edges.discard(weakest)
        removed.append(weakest)
    unconfirmed = [e for e in edges if good[e] == 0 and poses[e].inliers < confirm_below_inliers]
    for e in unconfirmed:
        edges.discard(e)
    _delete(pycolmap, db_path, removed + unconfirmed)
    return {"pairs_in_broken_loops": len(removed), "weak_pairs_unconfirmed": len(unconfirmed),
            "pairs_kept": len(edges)}
