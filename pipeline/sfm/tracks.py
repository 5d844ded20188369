"""Steps 4d-4g of pose estimation (:func:`finish_model`): the model's tracks extended by guided
2D-3D matching, a last bundle adjustment on the tracks that three or more views see, then the
tracks' keypoints aligned on image patches and the poses adjusted once more, with a robust loss;
then, with the poses that fit the aligned keypoints, the tracks extended and aligned again, and the
points tracked by patch alignment into the views where SIFT missed them
(:mod:`pipeline.sfm.patch_tracks`), before a last robust adjustment.

The mapper adds an observation to a track only through a verified two-view match. A view seen
from an unusual angle (below an object, at its edge) shares few verified matches, so it keeps few
observations and a weakly determined pose even where its keypoints do see the model's points. Here
every registered image's unused keypoints are matched to the 3D points that project within
``radius_px`` of them: a keypoint joins a point's track when its SIFT descriptor is close to the
track's (mean of the track's unit descriptors; distance at most ``max_distance``) and clearly
closer than to the next candidate point (``ratio``). The poses are then re-adjusted and the
observations that do not fit are dropped (:func:`pipeline.sfm.refine.adjust_on_long_tracks`, then
``ObservationManager.filter_all_points3D``, with the mapper's own limits). On 14 fixed mapper
models it leaves fewer views above 0.3 deg in 12 and more in none (bench/pose_refinement.py;
bench/RESULTS.md, poses at scale).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from pipeline.sfm.cameras import reprojection_errors
from pipeline.sfm.config import EstimationConfig
from pipeline.sfm.keypoints import align_track_keypoints_affine
from pipeline.sfm.patch_tracks import track_points_into_views
from pipeline.sfm.refine import adjust_on_long_tracks, bundle_adjust, use_iterative_solver


def _unit_descriptors(pycolmap, db_path: Path, image_ids) -> dict[int, np.ndarray]:
    db = pycolmap.Database.open(str(db_path))
    try:
        out = {}
        for image_id in image_ids:
            d = db.read_descriptors(image_id).to_float().data.astype(np.float32)
            out[image_id] = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
        return out
    finally:
        db.close()


def track_descriptors(rec, descriptors: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point ids (P,), positions (P, 3), unit mean descriptors (P, 128)) of ``rec``'s 3D points."""
    ids = np.array(sorted(rec.point3D_ids()), dtype=np.int64)
    xyz = np.zeros((len(ids), 3))
    desc = np.zeros((len(ids), 128), dtype=np.float32)
    for k, point_id in enumerate(ids):
        point = rec.points3D[int(point_id)]
        xyz[k] = point.xyz
        # keypoints appended by step 4g (patch_tracks) have no descriptor in the database
        described = [descriptors[e.image_id][e.point2D_idx] for e in point.track.elements
                     if e.point2D_idx < len(descriptors[e.image_id])]
        desc[k] = np.mean(described, axis=0) if described else 0.0
    desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-9)
    return ids, xyz, desc


def guided_matches(uv: np.ndarray, point_desc: np.ndarray, keypoints: np.ndarray, keypoint_desc: np.ndarray,
                   radius_px: float, max_distance: float, ratio: float) -> list[tuple[int, int]]:
    """[(point index, keypoint index)] for projected points ``uv`` (P, 2) with descriptors (P, 128)
    against free keypoints (K, 2) with descriptors (K, 128): for each keypoint, the candidate point
    within ``radius_px`` nearest in descriptor space, kept when at most ``max_distance`` and below
    ``ratio`` times the second candidate's; each point gets at most one keypoint (the closest)."""
    if not len(uv) or not len(keypoints):
        return []
    near = cKDTree(keypoints).sparse_distance_matrix(cKDTree(uv), radius_px, output_type="ndarray")
    if not len(near):
        return []
    kp, point = near["i"].astype(np.int64), near["j"].astype(np.int64)
    dist = np.linalg.norm(point_desc[point] - keypoint_desc[kp], axis=1)
    order = np.lexsort((dist, kp))  # by keypoint, then descriptor distance
    kp, point, dist = kp[order], point[order], dist[order]
    first = np.flatnonzero(np.r_[True, kp[1:] != kp[:-1]])  # each keypoint's nearest candidate
    has_second = np.r_[first[1:] - first[:-1] > 1, len(kp) - first[-1] > 1]
    second = np.where(has_second, dist[np.minimum(first + 1, len(dist) - 1)], np.inf)
    keep = (dist[first] <= max_distance) & (dist[first] < ratio * second)
    kp, point, dist = kp[first][keep], point[first][keep], dist[first][keep]
    if not len(kp):
        return []
    order = np.lexsort((dist, point))  # each point keeps its closest keypoint
    kp, point = kp[order], point[order]
    unique = np.r_[True, point[1:] != point[:-1]]
    return sorted(zip(point[unique].tolist(), kp[unique].tolist()))


def extend_tracks(pycolmap, rec, db_path: Path, radius_px: float = 1.5, max_distance: float = 0.5,
                  ratio: float = 0.8) -> dict:
    """Add to ``rec`` (in place) the observations found by :func:`guided_matches` in every
    registered image, with the descriptors of the COLMAP database ``db_path``. Returns
    ``{"observations_before", "observations_added"}``."""
    image_ids = sorted(rec.reg_image_ids())
    descriptors = _unit_descriptors(pycolmap, db_path, image_ids)
    point_ids, xyz, point_desc = track_descriptors(rec, descriptors)
    before = int(rec.compute_num_observations())
    added = 0
    for image_id in image_ids:
        image = rec.images[image_id]
        camera = rec.cameras[image.camera_id]
        points2D = image.points2D
        free = np.array([not p.has_point3D() for p in points2D], dtype=bool)
        free[len(descriptors[image_id]):] = False  # keypoints appended by step 4g: no descriptor to match
        if not free.any():
            continue
        seen = {p.point3D_id for p in points2D if p.has_point3D()}
        pose = image.cam_from_world().matrix()
        in_camera = xyz @ pose[:, :3].T + pose[:, 3]
        candidate = (in_camera[:, 2] > 1e-6) & ~np.isin(point_ids, list(seen))
        uv = np.asarray(camera.img_from_cam(in_camera[candidate]), dtype=np.float64).reshape(-1, 2)
        inside = np.all(np.isfinite(uv), axis=1) & (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & \
            (uv[:, 0] < camera.width) & (uv[:, 1] < camera.height)
        index = np.flatnonzero(candidate)[inside]
        free_idx = np.flatnonzero(free)
        keypoints = np.array([points2D[int(i)].xy for i in free_idx])
        for point, kp in guided_matches(uv[inside], point_desc[index], keypoints, descriptors[image_id][free_idx],
                                        radius_px, max_distance, ratio):
            rec.add_observation(int(point_ids[index[point]]), pycolmap.TrackElement(image_id, int(free_idx[kp])))
            added += 1
    return {"observations_before": before, "observations_added": added}


# the robust adjustment of step 4e stops once an iteration lowers the cost by less than this
# fraction: a Cauchy loss needs ~4x the iterations of least squares to reach 1e-6 (400 views: 5.4 s
# against 1.2 s), and on the fixed mapper models 1e-4 moved the rotations by at most 0.005 deg
ROBUST_FUNCTION_TOLERANCE = 1e-4


def _adjust(pycolmap, rec, cfg: EstimationConfig, refine_intrinsics: bool, loss_scale_px: float = 0.0,
            iterative: bool = False) -> dict | None:
    tolerance = max(cfg.ba_function_tolerance, ROBUST_FUNCTION_TOLERANCE) if loss_scale_px > 0 \
        else cfg.ba_function_tolerance
    if cfg.final_min_track_length > 2:
        return adjust_on_long_tracks(pycolmap, rec, cfg.final_min_track_length, refine_intrinsics,
                                     num_threads=cfg.num_threads, function_tolerance=tolerance,
                                     loss_scale_px=loss_scale_px, iterative=iterative)
    bundle_adjust(pycolmap, rec, refine_intrinsics, cfg.num_threads, tolerance, loss_scale_px, iterative)
    return None


def keypoint_noise_px(rec) -> float:
    """The keypoints' noise per axis (px) in ``rec``, from the median of its reprojection errors: for
    isotropic Gaussian noise of standard deviation s per axis the error's median is s * sqrt(2 ln 2)."""
    errors = np.concatenate([np.zeros(0), *reprojection_errors(rec).values()])
    return float(np.median(errors)) / np.sqrt(2 * np.log(2)) if len(errors) else 0.0


def _drop_misfits(pycolmap, rec, max_reproj_error: float) -> int:
    """Drop the observations above ``max_reproj_error`` px or under the mapper's minimum
    triangulation angle (as the mapper filters); returns how many."""
    min_angle = pycolmap.IncrementalMapperOptions().filter_min_tri_angle
    return int(pycolmap.ObservationManager(rec).filter_all_points3D(max_reproj_error, min_angle))


def finish_model(pycolmap, rec, db_path: Path, cfg: EstimationConfig, refine_intrinsics: bool,
                 max_reproj_error: float, log: logging.Logger | None = None,
                 frames_and_images: tuple[dict, dict] | None = None) -> dict:
    """Steps 4d and 4e on ``rec`` in place.

    4d: with ``cfg.extend_tracks``, :func:`extend_tracks`, a bundle adjustment, and the observations
    above ``max_reproj_error`` px (or under the mapper's minimum triangulation angle) dropped; then,
    with ``cfg.final_min_track_length`` > 2 or after an extension, the last bundle adjustment (poses
    moved by tracks of ``final_min_track_length`` views or more).
    4e: with ``cfg.align_keypoints`` and ``frames_and_images``
    (:func:`pipeline.sfm.keypoints.read_frames_and_images`), the tracks' keypoints aligned on their
    reference patches
    (:func:`pipeline.sfm.keypoints.align_track_keypoints_affine`), the observations that then do not
    fit dropped, and a last adjustment with a Cauchy loss of ``cfg.align_loss_scale`` times the
    keypoint noise (:func:`keypoint_noise_px`).
    4f: with ``cfg.extend_after_alignment`` as well (and ``cfg.extend_tracks``), the tracks extended
    again, the grown tracks aligned and the misfits dropped (:func:`_extend_and_align_again`).
    4g: with ``cfg.track_into_views`` as well, the points tracked by patch alignment into the views
    where SIFT gave them no keypoint, and the misfits dropped (:func:`_track_into_views`).
    After 4f and 4g, step 4e's robust adjustment is repeated once.
    Returns the report's entries: ``track_extension``, ``final_adjustment``, ``keypoint_alignment``,
    ``extension_after_alignment`` and ``tracked_into_views`` where they ran, and ``solver`` (the
    adjustments' linear solver, :func:`pipeline.sfm.refine.use_iterative_solver`)."""
    iterative, diameter = use_iterative_solver(rec)
    out: dict = {"solver": {"iterative_schur": iterative, "covisibility_diameter": diameter}}
    if log is not None and iterative:
        log.info(f"adjustments with Ceres' iterative Schur solver: {rec.num_reg_images()} images, all within "
                 f"{diameter:.0f} hops of each other (a compact capture)")
    if cfg.extend_tracks:
        extension = extend_tracks(pycolmap, rec, db_path)
        _adjust(pycolmap, rec, cfg, refine_intrinsics, iterative=iterative)
        extension["observations_dropped"] = _drop_misfits(pycolmap, rec, max_reproj_error)
        out["track_extension"] = extension
        if log is not None:
            log.info(f"tracks extended: +{extension['observations_added']} observations to "
                     f"{extension['observations_before']}, {extension['observations_dropped']} dropped after adjustment")
    if cfg.final_min_track_length > 2 or cfg.extend_tracks:
        done = _adjust(pycolmap, rec, cfg, refine_intrinsics, iterative=iterative)
        if done is not None:
            out["final_adjustment"] = done
            if log is not None:
                held = done["held_images"]
                log.info(f"last adjustment: poses moved by the {done['points_used']} of {done['points']} points "
                         f"that {cfg.final_min_track_length}+ views see"
                         + (f"; held as mapped (too few such points): {', '.join(held)}" if held else ""))
    if cfg.align_keypoints and frames_and_images is not None:
        alignment = align_track_keypoints_affine(rec, *frames_and_images)
        # an aligned keypoint that no longer fits the model where it stood was most likely aligned
        # on something else (an occluding edge, a repeated texture): dropped before the adjustment,
        # which on the fixed models did as well as adjusting first and dropping after, at half the cost
        alignment["observations_dropped"] = _drop_misfits(pycolmap, rec, max_reproj_error)
        # the misfits under the limit are left to a robust loss, scaled by the noise of the rest
        alignment["loss_scale_px"] = cfg.align_loss_scale * keypoint_noise_px(rec)
        _adjust(pycolmap, rec, cfg, refine_intrinsics, alignment["loss_scale_px"], iterative)
        out["keypoint_alignment"] = alignment
        if log is not None:
            loss = f"a Cauchy loss of {alignment['loss_scale_px']:.2f} px" if alignment["loss_scale_px"] > 0 \
                else "least squares"
            log.info(f"track keypoints aligned on their reference patches: {alignment['moved']} of "
                     f"{alignment['observations']} moved (median {alignment['median_shift_px']:.2f} px), "
                     f"{alignment['observations_dropped']} dropped as misfits, then adjusted with {loss}")
        grow = cfg.extend_after_alignment and cfg.extend_tracks
        if grow:
            out["extension_after_alignment"] = _extend_and_align_again(pycolmap, rec, db_path, max_reproj_error,
                                                                      frames_and_images, log)
        if cfg.track_into_views:
            out["tracked_into_views"] = _track_into_views(pycolmap, rec, max_reproj_error, frames_and_images, log)
        if grow or cfg.track_into_views:
            # one robust adjustment for both ways of growing the tracks: on the fixed mapper models
            # 3.6 views above 0.3 deg per model against 4.0 with one after each, and ~5 s less at 400
            # views (bench/RESULTS.md, poses at scale)
            loss_scale_px = cfg.align_loss_scale * keypoint_noise_px(rec)
            _adjust(pycolmap, rec, cfg, refine_intrinsics, loss_scale_px, iterative)
            for key in ("extension_after_alignment", "tracked_into_views"):
                if key in out:
                    out[key]["loss_scale_px"] = loss_scale_px
            if log is not None:
                loss = f"a Cauchy loss of {loss_scale_px:.2f} px" if loss_scale_px > 0 else "least squares"
                log.info(f"adjusted once more, with {loss}")
    return out


def _extend_and_align_again(pycolmap, rec, db_path: Path, max_reproj_error: float,
                            frames_and_images: tuple[dict, dict], log: logging.Logger | None) -> dict:
    """Step 4f: after step 4e the poses and points fit the keypoints better, so their projections
    land within ``extend_tracks``' radius of keypoints that step 4d's guided matching missed: the
    tracks are extended again, the tracks that grew are aligned on their (possibly new) reference
    patches, and the misfits dropped (the caller adjusts)."""
    lengths = {point_id: point.track.length() for point_id, point in rec.points3D.items()}
    extension = extend_tracks(pycolmap, rec, db_path)
    grown = {point_id for point_id, point in rec.points3D.items() if point.track.length() > lengths.get(point_id, 0)}
    alignment = align_track_keypoints_affine(rec, *frames_and_images, points=grown)
    extension.update(tracks_grown=len(grown), realigned=alignment["observations"], moved=alignment["moved"],
                     observations_dropped=_drop_misfits(pycolmap, rec, max_reproj_error))
    if log is not None:
        log.info(f"tracks extended again after the alignment: +{extension['observations_added']} observations on "
                 f"{len(grown)} tracks, their {alignment['observations']} keypoints aligned ({alignment['moved']} "
                 f"moved), {extension['observations_dropped']} dropped as misfits")
    return extension


def _track_into_views(pycolmap, rec, max_reproj_error: float, frames_and_images: tuple[dict, dict],
                      log: logging.Logger | None) -> dict:
    """Step 4g: :func:`pipeline.sfm.patch_tracks.track_points_into_views`, then the misfits dropped
    (the caller adjusts)."""
    tracked = track_points_into_views(pycolmap, rec, *frames_and_images)
    tracked["observations_dropped"] = _drop_misfits(pycolmap, rec, max_reproj_error)
    if log is not None:
        log.info(f"points tracked into the views where SIFT missed them: +{tracked['added']} observations of "
                 f"{tracked['candidates']} tried (at most {tracked['per_view']} a view, within "
                 f"{tracked['max_angle_deg']:.0f} deg of an observing view), {tracked['observations_dropped']} "
                 f"dropped as misfits")
    return tracked
