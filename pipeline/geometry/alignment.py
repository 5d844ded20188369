"""Compare estimated cameras with reference cameras: align with a similarity, then measure errors.

Estimated poses (structure from motion) live in an arbitrary frame and scale, so they are first
brought onto the reference cameras by the least-squares similarity between camera centres
(Umeyama 1991); the rotation error is then the angle between aligned and reference camera
orientations, the centre error the distance between centres divided by the reference camera-ring
radius (median distance of the reference centres from their centroid), so figures compare across
scenes of any scale.

Used by the poses stage's tests and benchmark, and by the evaluation stage.
"""
from __future__ import annotations

import numpy as np

from pipeline.geometry.normalize import Similarity


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> Similarity:
    """The similarity minimising sum |s R src_i + t - dst_i|^2. src, dst: (N, 3), N >= 3 (N = 2 fixes
    everything but the rotation about the line through the points)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3:
        raise ValueError(f"umeyama needs two (N, 3) arrays of the same shape, got {src.shape} and {dst.shape}")
    if len(src) < 2:
        raise ValueError(f"umeyama needs at least 2 point pairs, got {len(src)}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    cov = dst_c.T @ src_c / len(src)
    u, sing, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # keep a proper rotation, not a reflection
        sign[2, 2] = -1
    rotation = u @ sign @ vt
    var_src = (src_c ** 2).sum() / len(src)
    scale = float(np.trace(np.diag(sing) @ sign) / var_src) if with_scale and var_src > 0 else 1.0
    translation = mu_dst - scale * rotation @ mu_src
    return Similarity(scale, rotation, translation)


def align_cameras(est_c2w: np.ndarray, ref_c2w: np.ndarray, robust: bool = True) -> Similarity:
    """The similarity taking estimated cameras onto reference cameras (apply it with ``apply_c2w``).

    est_c2w, ref_c2w: (N, 4, 4) OpenCV camera-to-world of the same N cameras, in the same order.
    Fitted on camera centres. ``robust`` (N >= 5): least-median-of-squares over minimal subsets,
    then a least-squares refit on the cameras within 3 robust sigmas, so that one badly
    registered camera does not drag the others (its error is still reported by pose_errors).
    """
    est_c2w, ref_c2w = _check_pair(est_c2w, ref_c2w)
    est_c, ref_c = est_c2w[:, :3, 3], ref_c2w[:, :3, 3]
    if len(est_c) == 2:  # centres alone leave the roll about the baseline free: fix it with orientations
        return _align_two(est_c2w, ref_c2w)
    sim = umeyama(est_c, ref_c)
    if robust and len(est_c) >= 5:
        sim = _least_median_fit(est_c, ref_c, sim)
    return sim


def _residuals(sim: Similarity, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    return np.linalg.norm(sim.apply_points(src) - dst, axis=1)


def _least_median_fit(src: np.ndarray, dst: np.ndarray, initial: Similarity, trials: int = 300) -> Similarity:
    rng = np.random.default_rng(0)  # deterministic: the same cameras always give the same figures
    best, best_median = initial, float(np.median(_residuals(initial, src, dst)))
    for _ in range(trials):
        subset = rng.choice(len(src), 3, replace=False)
        try:
            candidate = umeyama(src[subset], dst[subset])
        except (ValueError, np.linalg.LinAlgError):
            continue
        median = float(np.median(_residuals(candidate, src, dst)))
        if median < best_median:
            best, best_median = candidate, median
    scale_of_scene = float(np.median(np.linalg.norm(dst - dst.mean(0), axis=1)))
    threshold = max(3 * 1.4826 * best_median, 1e-9 * max(scale_of_scene, 1e-12))
    keep = _residuals(best, src, dst) <= threshold
    return umeyama(src[keep], dst[keep]) if keep.sum() >= max(3, len(src) // 2) else initial


def _align_two(est_c2w: np.ndarray, ref_c2w: np.ndarray) -> Similarity:
    est_c, ref_c = est_c2w[:, :3, 3], ref_c2w[:, :3, 3]
    d_est, d_ref = est_c[1] - est_c[0], ref_c[1] - ref_c[0]
    scale = np.linalg.norm(d_ref) / max(np.linalg.norm(d_est), 1e-12)
    # rotation: the mean of the per-camera rotations ref_R @ est_R^T, projected back onto SO(3)
    mean = sum(r[:3, :3] @ e[:3, :3].T for r, e in zip(ref_c2w, est_c2w))
    u, _, vt = np.linalg.svd(mean)
    rotation = u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt
    translation = ref_c.mean(0) - scale * rotation @ est_c.mean(0)
    return Similarity(scale, rotation, translation)


def ring_radius(c2w: np.ndarray) -> float:
    """The scale of a camera set: median distance of the camera centres from their centroid."""
    centers = np.asarray(c2w, dtype=np.float64)[:, :3, 3]
    return float(np.median(np.linalg.norm(centers - centers.mean(0), axis=1)))


def rotation_angle_deg(rotations: np.ndarray) -> np.ndarray:
    """Angle in degrees of each rotation matrix. rotations: (N, 3, 3) -> (N,)."""
    r = np.asarray(rotations, dtype=np.float64)
    cos = (np.trace(r, axis1=-2, axis2=-1) - 1) / 2
    axis = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = np.linalg.norm(axis, axis=-1) / 2
    return np.degrees(np.arctan2(sin, cos))  # accurate for small angles, unlike arccos


def mean_rotation(rotations: np.ndarray) -> np.ndarray:
    """The chordal L2 mean of rotations (N, 3, 3): the rotation nearest their sum, projected onto SO(3)."""
    u, _, vt = np.linalg.svd(np.asarray(rotations, dtype=np.float64).sum(0))
    return u @ np.diag([1, 1, np.sign(np.linalg.det(u @ vt))]) @ vt


def orientation_errors_deg(est_c2w: np.ndarray, ref_c2w: np.ndarray) -> np.ndarray:
    """Per-camera angle (N,) between reference and estimated orientations after the one rotation that
    brings the estimated orientations best onto the reference ones (the chordal mean of
    ``ref_R_i est_R_i^T``, refitted on the cameras within 3 robust sigmas, so one bad camera does not
    tilt the others). This is how rotation averaging is scored: it measures the orientations alone,
    whatever the centres."""
    est_c2w, ref_c2w = _check_pair(est_c2w, ref_c2w)
    per_camera = np.einsum("nij,nkj->nik", ref_c2w[:, :3, :3], est_c2w[:, :3, :3])  # ref_R @ est_R^T
    align = mean_rotation(per_camera)
    errors = rotation_angle_deg(np.einsum("ij,njk->nik", align.T, per_camera))
    keep = errors <= max(3 * 1.4826 * float(np.median(errors)), 1e-9)
    if len(errors) >= 5 and max(3, len(errors) // 2) <= keep.sum() < len(errors):
        align = mean_rotation(per_camera[keep])
        errors = rotation_angle_deg(np.einsum("ij,njk->nik", align.T, per_camera))
    return errors


def relative_rotation_errors_deg(est_c2w: np.ndarray, ref_c2w: np.ndarray) -> np.ndarray:
    """Angle (N (N-1) / 2,) between the reference and estimated relative rotation of every camera pair."""
    est_c2w, ref_c2w = _check_pair(est_c2w, ref_c2w)
    i, j = np.triu_indices(len(est_c2w), 1)
    rel_est = np.einsum("nji,njk->nik", est_c2w[i, :3, :3], est_c2w[j, :3, :3])  # R_i^T R_j
    rel_ref = np.einsum("nji,njk->nik", ref_c2w[i, :3, :3], ref_c2w[j, :3, :3])
    return rotation_angle_deg(np.einsum("nji,njk->nik", rel_ref, rel_est))


def pose_errors(est_c2w: np.ndarray, ref_c2w: np.ndarray, sim: Similarity | None = None) -> dict:
    """Errors of estimated cameras against reference cameras after similarity alignment.

    est_c2w, ref_c2w: (N, 4, 4), same cameras in the same order. ``sim``: the alignment (computed
    with :func:`align_cameras` when None). Returns ``rotation_deg_median/max`` (orientations after the
    centre-fitted similarity), ``orientation_deg_median/max`` (after the orientations' own best
    rotation: :func:`orientation_errors_deg`), ``relative_rotation_deg_median/max`` (every pair,
    no alignment), ``center_rel_median/max`` (centre distance / camera-ring radius of the
    reference), ``ring_radius``, ``num_cameras``,
    per-camera lists ``rotation_deg`` and ``center_rel``, and the alignment ``similarity`` (dict).
    """
    est_c2w, ref_c2w = _check_pair(est_c2w, ref_c2w)
    sim = align_cameras(est_c2w, ref_c2w) if sim is None else sim
    aligned = sim.apply_c2w(est_c2w)
    relative = np.einsum("nji,njk->nik", ref_c2w[:, :3, :3], aligned[:, :3, :3])  # ref_R^T @ aligned_R
    rot_err = rotation_angle_deg(relative)
    radius = ring_radius(ref_c2w)
    center_err = np.linalg.norm(aligned[:, :3, 3] - ref_c2w[:, :3, 3], axis=1) / max(radius, 1e-12)
    oriented = orientation_errors_deg(est_c2w, ref_c2w)
    pairwise = relative_rotation_errors_deg(est_c2w, ref_c2w)
    return {
        "num_cameras": int(len(est_c2w)),
        # orientations in their own best common frame: free of the centre fit's rotation, which is
        # weakly determined when the centres are nearly collinear or planar (a facade walk)
        "orientation_deg_median": float(np.median(oriented)),
        "orientation_deg_max": float(oriented.max()),
        # between pairs of cameras: needs no alignment at all
        "relative_rotation_deg_median": float(np.median(pairwise)),
        "relative_rotation_deg_max": float(pairwise.max()),
        "rotation_deg_median": float(np.median(rot_err)),
        "rotation_deg_max": float(rot_err.max()),
        "center_rel_median": float(np.median(center_err)),
        "center_rel_max": float(center_err.max()),
        "ring_radius": radius,
        "rotation_deg": rot_err.tolist(),
        "center_rel": center_err.tolist(),
        "similarity": sim.to_dict(),
    }


def _check_pair(est_c2w, ref_c2w) -> tuple[np.ndarray, np.ndarray]:
    est_c2w = np.asarray(est_c2w, dtype=np.float64)
    ref_c2w = np.asarray(ref_c2w, dtype=np.float64)
    if est_c2w.shape != ref_c2w.shape or est_c2w.ndim != 3 or est_c2w.shape[1:] != (4, 4):
        raise ValueError(f"need two (N, 4, 4) camera arrays of the same N, got {est_c2w.shape} and {ref_c2w.shape}")
    if len(est_c2w) < 2:
        raise ValueError(f"aligning cameras needs at least 2 of them, got {len(est_c2w)}")
    return est_c2w, ref_c2w
