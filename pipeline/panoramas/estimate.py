"""Panorama centres in metres (or relative units, said so) with 1-sigma uncertainties: the work of
the centres stage, from the poses stage's outputs to the content of ``centres/centres.json``.

Order: parse ``known_distance`` first (a bad name fails before any work); fit the floor when there
are sparse points; choose the scale source (:mod:`pipeline.panoramas.scale`); map the cameras to the
output frame; the bundle adjustment's covariance of the centres when the poses were estimated
(:mod:`pipeline.panoramas.uncertainty`), through the same similarity; distances and their sigmas
(:mod:`pipeline.panoramas.distances`); errors against reference centres when the dataset has them
(:mod:`pipeline.panoramas.ground_truth`, evaluation only: computed after the estimate, from it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pipeline.panoramas.centres import PosedPanoramas, distance_matrix, yaw_deg
from pipeline.panoramas.distances import centre_covariances, distance_sigmas, scale_rel_sigma
from pipeline.panoramas.floor import FloorConfig, FloorFit, FloorFitError, fit_floor
from pipeline.panoramas.floor_choice import choose_floor
from pipeline.panoramas.floor_sweep import SweepConfig, sweep_floor_fit
from pipeline.panoramas.ground_truth import centre_errors, read_reference
from pipeline.panoramas.scale import (MetricFrame, dataset_units, from_camera_height, from_dataset,
                                      from_known_distance, parse_known_distance, relative_frame)
from pipeline.panoramas.uncertainty import CovarianceError, ba_centre_covariance


@dataclass
class ScaleOptions:
    camera_height_m: float = 0.0
    camera_height_sigma_m: float = 0.01
    known_distance: str = ""
    known_distance_sigma_m: float = 0.005
    floor: FloorConfig = field(default_factory=FloorConfig)
    sweep: Optional[SweepConfig] = field(default_factory=SweepConfig)  # None: no photometric floor sweep
    reference: str = ""  # a dataset with the true centres, to SCORE against (default: the posed dataset)


@dataclass
class CentresResult:
    names: list[str]
    c2w: np.ndarray  # (N, 4, 4) in the output frame
    frame: MetricFrame
    floor: Optional[FloorFit]
    distances: np.ndarray  # (N, N)
    sigmas: Optional[np.ndarray]  # (N, N) or None
    centre_covs: Optional[np.ndarray]  # (N, 3, 3) or None
    points: Optional[np.ndarray]  # (M, 3) sparse points in the output frame
    uncertainty: dict
    evaluation: Optional[dict]

    @property
    def centres(self) -> np.ndarray:
        return self.c2w[:, :3, 3]


def _choose_frame(posed: PosedPanoramas, opts: ScaleOptions, floor: Optional[FloorFit], floor_reason: str,
                  log: logging.Logger) -> MetricFrame:
    centres = posed.centres
    if opts.known_distance:
        known = parse_known_distance(opts.known_distance, posed.names, opts.known_distance_sigma_m)
        return from_known_distance(known, posed.names, centres, floor)
    fallback = ""
    if opts.camera_height_m > 0:
        if floor is not None:
            return from_camera_height(opts.camera_height_m, opts.camera_height_sigma_m, centres, floor)
        fallback = f"camera_height_m={opts.camera_height_m:g} was given but no floor could be fitted: {floor_reason}"
        log.warning(f"centres: {fallback}; falling back to the next scale source")
    metric = dataset_units(posed.source) if posed.mode == "import" else None
    frame = from_dataset(posed.normalization, metric) if metric else relative_frame(floor, fallback)
    if fallback:
        frame.details["fallback"] = fallback
    return frame


def _covariance(posed: PosedPanoramas, frame: MetricFrame, centres_out: np.ndarray,
                log: logging.Logger) -> tuple[Optional[np.ndarray], dict]:
    """The centres' covariance (3N, 3N) in the output frame, or None and the reason."""
    if posed.mode != "estimate" or posed.sparse_dir is None:
        why = (f"the poses were imported from {posed.source}: there is no bundle adjustment to take a covariance "
               "from" if posed.mode == "import" else "the poses stage left no sparse model (poses/sparse/)")
        return None, {"method": None, "reason": why}
    try:
        cc = ba_centre_covariance(posed.sparse_dir, posed.names)
    except CovarianceError as exc:
        log.warning(f"centres: no uncertainty: {exc}")
        return None, {"method": None, "reason": str(exc)}
    to_out = frame.transform.compose(posed.normalization)  # COLMAP frame -> normalised -> output
    linear = to_out.scale * to_out.rotation
    big = np.kron(np.eye(len(posed.names)), linear)
    cov = big @ cc.covariance @ big.T
    # the model re-adjusted for the covariance must be the one transforms.json came from
    mismatch = float(np.abs(to_out.apply_points(cc.centres) - centres_out).max())
    spread = float(np.ptp(centres_out, axis=0).max())
    info = {**cc.details, "model_vs_transforms_max_rel": mismatch / max(spread, 1e-12)}
    if mismatch > 0.01 * spread:
        log.warning(f"centres: the sparse model's centres differ from transforms.json by {mismatch:.3g} "
                    f"({mismatch / spread:.1%} of the spread): the covariance may not belong to these poses")
    return cov, info


def _fit_floor(posed: PosedPanoramas, opts: ScaleOptions,
               log: logging.Logger) -> tuple[Optional[FloorFit], str, dict]:
    """The floor from the sparse points and, when a camera height is to give the scale, from the
    images (photometric sweep); :func:`choose_floor` picks one. (floor or None, why not, comparison)."""
    points_fit, points_reason = None, ""
    try:
        points_fit = fit_floor(posed.points, posed.centres, opts.floor)
        log.info(f"centres: floor plane fitted to {points_fit.inliers}/{points_fit.candidates} low sparse points "
                 f"(tilt {points_fit.tilt_deg():.2f} deg)")
    except FloorFitError as exc:
        points_reason = str(exc)
    sweep_fit, sweep_reason = None, ""
    if opts.sweep is not None and opts.camera_height_m > 0 and posed.image_paths:
        try:
            sweep_fit = sweep_floor_fit(posed.image_paths, posed.c2w, posed.names, opts.sweep)
            d = sweep_fit.details
            log.info(f"centres: photometric floor sweep: {d['pairs_agreeing']}/{d['pairs_used']} panorama pairs "
                     f"agree, camera height {float(sweep_fit.height(posed.centres).mean()):.4g} model units "
                     f"(+-{sweep_fit.offset_sigma:.2g}) in {d['seconds']:.1f} s")
        except FloorFitError as exc:
            sweep_reason = str(exc)
            log.info(f"centres: photometric floor sweep failed: {exc}")
    floor, reason, record = choose_floor(points_fit, points_reason, sweep_fit, sweep_reason, posed.centres)
    if record.get("agree") is False:
        log.warning(f"centres: the sparse points' floor and the photometric sweep's differ by "
                    f"{record['height_difference_rel']:.1%} of the camera height; using the {record['chosen']}'s")
    return floor, reason, record


def estimate_centres(posed: PosedPanoramas, opts: ScaleOptions, log: logging.Logger) -> CentresResult:
    """Everything centres.json and plan.png hold (see the module doc)."""
    if opts.known_distance:  # a bad name fails before any work
        parse_known_distance(opts.known_distance, posed.names, opts.known_distance_sigma_m)
    floor, floor_reason, floor_choice = _fit_floor(posed, opts, log)
    frame = _choose_frame(posed, opts, floor, floor_reason, log)
    if frame.source == "dataset poses":
        floor = None  # the dataset's frame has its own floor at z = 0
    c2w = frame.transform.apply_c2w(posed.c2w)
    centres = c2w[:, :3, 3]
    cov, uncertainty = _covariance(posed, frame, centres, log)
    scale_sigma = scale_rel_sigma(frame, centres, cov, posed.names)
    if scale_sigma is not None:
        frame.details["scale_rel_sigma"] = scale_sigma
    if floor is None and floor_reason:
        frame.details["floor"] = {"fitted": False, "reason": floor_reason}
    if floor_choice and frame.source != "dataset poses":
        frame.details["floor_methods"] = floor_choice
    points = frame.transform.apply_points(posed.points) if posed.points is not None else None
    ref = read_reference(Path(opts.reference) if opts.reference else posed.source)
    evaluation = centre_errors(posed.names, c2w, frame.units, ref) if ref is not None else None
    return CentresResult(posed.names, c2w, frame, floor, distance_matrix(centres),
                         distance_sigmas(centres, cov, frame, posed.names),
                         centre_covariances(centres, cov, scale_sigma), points, uncertainty, evaluation)


def frame_description(result: CentresResult) -> str:
    f = result.frame
    if f.source == "dataset poses":
        return "the dataset's own world frame (metres, +z up)"
    floor = "levelled on the fitted floor plane, z = 0 on the floor" if result.floor is not None else \
        "+z up (gravity from the panoramas), no floor fitted: z has an arbitrary origin"
    units = "metres" if f.units == "m" else "relative units"
    return f"the poses stage's normalised frame in {units}, {floor}; x, y as there"


def centres_json(result: CentresResult) -> dict:
    """The content of centres.json (schema: units, scale_source, panoramas{stem: centre, yaw_deg,
    sigma}, distances{names, matrix, sigma})."""
    yaws = yaw_deg(result.c2w)
    panoramas = {}
    for i, name in enumerate(result.names):
        entry = {"centre": result.centres[i].tolist(), "yaw_deg": float(yaws[i]), "sigma": None}
        if result.centre_covs is not None:
            cov = result.centre_covs[i]
            entry.update(sigma=float(np.sqrt(np.trace(cov))), sigma_xyz=np.sqrt(np.diag(cov)).tolist(),
                         covariance=cov.tolist())
        if result.floor is not None or result.frame.source == "dataset poses":
            entry["height_above_floor"] = float(result.centres[i][2])
        panoramas[name] = entry
    out = {
        "units": result.frame.units,
        "scale_source": result.frame.to_dict(),
        "frame": frame_description(result),
        "panoramas": panoramas,
        "distances": {"names": result.names, "matrix": result.distances.tolist(),
                      "sigma": None if result.sigmas is None else result.sigmas.tolist()},
        "uncertainty": {**result.uncertainty,
                        "sigma": "1-sigma; a centre's sigma is the root of its covariance's trace (3-D), relative to "
                                 "the centroid of the panoramas (the frame's origin and orientation are arbitrary)"},
    }
    if result.evaluation is not None:
        out["evaluation"] = {"note": "against the dataset's reference centres, after the estimate (never an input)",
                             **result.evaluation}
    return out


def headline_metrics(result: CentresResult) -> dict:
    """The numbers for the stage's manifest."""
    sig = [p for p in ([] if result.centre_covs is None else np.sqrt(np.trace(result.centre_covs, axis1=1, axis2=2)))]
    metrics = {"panoramas": len(result.names), "units": result.frame.units, "scale_source": result.frame.source,
               "median_centre_sigma": float(np.median(sig)) if sig else None}
    if result.sigmas is not None:
        iu = np.triu_indices(len(result.names), 1)
        metrics["median_distance_sigma"] = float(np.median(result.sigmas[iu]))
    if result.evaluation and "skipped" not in result.evaluation:
        keys = ("centre_error_sim3_median_pct", "centre_error_sim3_max_pct", "centre_error_sim3_median_m",
                "centre_error_sim3_max_m", "centre_error_rigid2d_median_m", "distance_error_median_pct",
                "distance_error_max_pct", "rotation_error_median_deg")
        metrics.update({k: result.evaluation[k] for k in keys if k in result.evaluation})
    return metrics
