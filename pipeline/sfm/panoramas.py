"""Pose estimation of levelled 360-degree panoramas with COLMAP's spherical camera.

COLMAP registers equirectangular images natively (the ``EQUIRECTANGULAR`` camera of pycolmap's
``panorama`` module, SPHERICAL mode: features and two-view geometry on the sphere). On real indoor
panoramas (white walls, wide baselines between rooms) its defaults register nothing; what makes
them register (bench/RESULTS.md, panoramas) is:

- the panoramas upsampled (``panorama_upscale``) before SIFT: a 1024x512 panorama spends 2.8 px
  per degree, too few for the small features of a room;
- upright SIFT (``panorama_upright_sift``): a levelled panorama has no in-plane rotation near the
  horizon, and fixed orientations make descriptors more distinctive;
- pairs accepted from ``panorama_min_num_inliers`` verified correspondences (wide baselines);
- pairs whose relative rotation is not about the vertical removed (``panorama_max_pair_tilt_deg``):
  they are false matches, which a levelled capture makes easy to see; and the pairs that loops of
  three pairs contradict (``panorama_loop_check``; :mod:`pipeline.sfm.pair_checks`);
- the global mapper (rotation averaging, then global positioning) with the cameras' gravity as
  a prior (``panorama_gravity_prior``): in a levelled panorama's camera frame the direction of
  gravity is +y (OpenCV: y down), which removes two of the three rotational degrees of freedom
  that rotation averaging has to find; bundle adjustment then keeps those rotations.

The model is written at the panoramas' own size (keypoints scaled back), so ``sparse/`` opens
with the original images.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from datasets.readers_common import image_size
from datasets.scene import Scene, SceneError
from pipeline.sfm.config import EstimationConfig
from pipeline.sfm.database import export_database, restore_database, settings_key, write_state
from pipeline.sfm.diagnose import diagnose_registration, save_failure_report
from pipeline.sfm.mapping import largest, write_model
from pipeline.sfm.pair_checks import GRAVITY_IN_CAMERA, drop_inconsistent_pairs, drop_tilted_pairs
from pipeline.sfm.prepare import PreparedImage, prepare



def is_panorama_scene(scene: Scene) -> bool:
    """True when every frame is an equirectangular panorama; mixed folders are an error."""
    models = {f.intrinsics.model == "equirect" for f in scene.frames}
    if models == {True, False}:
        raise SceneError(f"{scene.source}: the folder mixes 360-degree panoramas and ordinary photos; estimate "
                         "their poses in two runs (one folder each)")
    return models == {True}


def _upsampled(prepared: list[PreparedImage], src_dir: Path, dst_dir: Path, factor: float) -> list[PreparedImage]:
    """The panoramas resized by ``factor`` into ``dst_dir`` as PNG (names ``<stem>.png``)."""
    from PIL import Image

    dst_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for im in prepared:
        name = Path(im.colmap_name).stem + ".png"
        w, h = int(round(im.width * factor / 2)) * 2, int(round(im.width * factor / 2))
        target = dst_dir / name
        if not target.exists() or image_size(target, apply_exif_orientation=False) != (w, h):
            with Image.open(src_dir / im.colmap_name) as img:
                img.convert("RGB").resize((w, h), Image.BICUBIC).save(target, compress_level=1)
        out.append(replace(im, colmap_name=name, width=w, height=h))
    return out


def _extract(pycolmap, db_path: Path, image_dir: Path, images: list[PreparedImage], cfg: EstimationConfig,
             device) -> None:
    options = pycolmap.FeatureExtractionOptions(num_threads=cfg.num_threads)
    options.sift.max_num_features = cfg.max_num_features * 2  # a panorama holds a whole room
    options.sift.peak_threshold = cfg.sift_peak_threshold
    options.sift.domain_size_pooling = cfg.sift_domain_size_pooling
    options.sift.upright = cfg.panorama_upright_sift
    same_size = len({(im.width, im.height) for im in images}) == 1
    pycolmap.extract_features(db_path, image_dir, image_names=[im.colmap_name for im in images],
                              camera_mode=pycolmap.CameraMode.SINGLE if same_size else pycolmap.CameraMode.PER_IMAGE,
                              reader_options=pycolmap.ImageReaderOptions(camera_model="EQUIRECTANGULAR"),
                              extraction_options=options, device=device)
    if cfg.panorama_gravity_prior:
        with pycolmap.Database.open(db_path) as db:
            for image in db.read_all_images():
                sensor = pycolmap.sensor_t(type=pycolmap.SensorType.CAMERA, id=image.camera_id)
                db.write_pose_prior(pycolmap.PosePrior(corr_data_id=pycolmap.data_t(sensor_id=sensor, id=image.image_id),
                                                       gravity=GRAVITY_IN_CAMERA))


def _match(pycolmap, db_path: Path, num_images: int, cfg: EstimationConfig, device) -> str:
    options = pycolmap.FeatureMatchingOptions(num_threads=cfg.num_threads, guided_matching=cfg.guided_matching)
    verification = pycolmap.TwoViewGeometryOptions()
    verification.min_num_inliers = cfg.panorama_min_num_inliers
    verification.ransac.random_seed = cfg.seed
    verification.compute_relative_pose = True  # for the pair checks (pipeline/sfm/pair_checks.py)
    if cfg.matcher == "sequential" or (cfg.matcher == "auto" and num_images > cfg.exhaustive_max_images):
        pairing = pycolmap.SequentialPairingOptions(overlap=cfg.sequential_overlap)
        pycolmap.match_sequential(db_path, matching_options=options, pairing_options=pairing,
                                  verification_options=verification, device=device)
        return "sequential"
    pycolmap.match_exhaustive(db_path, matching_options=options, verification_options=verification, device=device)
    return "exhaustive"


def _map(pycolmap, db_path: Path, image_dir: Path, out: Path, mapper: str, cfg: EstimationConfig) -> dict:
    import shutil

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions(num_threads=cfg.num_threads, random_seed=cfg.seed)
        options.min_num_matches = cfg.panorama_min_num_inliers
        options.mapper.rotation_averaging.use_gravity = cfg.panorama_gravity_prior
        # with few points per panorama, bundle adjustment tilts weakly observed cameras by tens of
        # degrees (bench/RESULTS.md, panoramas): keep the levelled rotations that rotation averaging
        # found and let it refine the positions and points only
        options.mapper.bundle_adjustment.constant_rig_from_world_rotation = cfg.panorama_gravity_prior
        gpu = bool(pycolmap.has_cuda) and cfg.use_gpu != "no"
        options.mapper.global_positioning.use_gpu = gpu
        options.mapper.bundle_adjustment.ceres.use_gpu = gpu
        return dict(pycolmap.global_mapping(db_path, image_dir, out, options))
    options = pycolmap.IncrementalPipelineOptions(num_threads=cfg.num_threads, random_seed=cfg.seed)
    options.min_num_matches = cfg.panorama_min_num_inliers
    options.mapper.abs_pose_min_num_inliers = cfg.abs_pose_min_num_inliers
    options.mapper.abs_pose_min_inlier_ratio = cfg.abs_pose_min_inlier_ratio
    return dict(pycolmap.incremental_mapping(db_path, image_dir, out, options))


def _rescale_model(rec, factor: float) -> None:
    """Cameras and keypoints of ``rec`` scaled by ``factor`` (back to the panoramas' own size)."""
    for camera in rec.cameras.values():
        camera.rescale(factor)
    for image in rec.images.values():
        for point in image.points2D:
            point.xy = point.xy * factor


def estimate_panoramas(scene: Scene, cfg: EstimationConfig, work_dir: Path, out_dir: Path, final_dir: Path,
                       log: logging.Logger, pycolmap, device) -> tuple[Scene, dict]:
    """Poses of ``scene``'s panoramas; the same contract as :func:`pipeline.sfm.estimate.estimate`."""
    timings: dict[str, float] = {}
    report: dict = {"mode": "estimate", "images_given": len(scene), "camera": "equirectangular (spherical SfM)",
                    "intrinsics": "none (equirectangular)", "device": "cuda" if device == pycolmap.Device.cuda else "cpu"}
    t = time.time()
    prepared, unreadable = prepare(scene, work_dir / "originals", log)
    report["unreadable"] = unreadable
    if len(prepared) < 2:
        save_failure_report(work_dir, report, timings)
        raise SceneError(f"pose estimation needs at least 2 readable panoramas; got {len(prepared)} of {len(scene)}")
    image_dir = work_dir / "images"
    upsampled = _upsampled(prepared, work_dir / "originals", image_dir, cfg.panorama_upscale)
    timings["prepare_s"] = time.time() - t

    settings = {k: getattr(cfg, k) for k in ("panorama_upscale", "panorama_upright_sift", "panorama_gravity_prior",
                                              "max_num_features", "sift_peak_threshold", "sift_domain_size_pooling")}
    extract_key = settings_key({"images": [(im.colmap_name, im.width, im.height,
                                    str(scene.frames[im.frame_index].image_path.resolve()),
                                    scene.frames[im.frame_index].image_path.stat().st_mtime_ns) for im in upsampled],
                        "settings": settings})
    match_key = settings_key({"extract": extract_key, "min_inliers": cfg.panorama_min_num_inliers, "matcher": cfg.matcher,
                              "max_tilt": cfg.panorama_max_pair_tilt_deg, "loops": cfg.panorama_loop_check,
                      "guided": cfg.guided_matching, "seed": cfg.seed})
    db_path = work_dir / "database.db"
    state = restore_database(db_path, final_dir / "colmap")
    if state.get("extract") != extract_key:
        db_path.unlink(missing_ok=True)
        state = {}
    report["effective_settings"] = {**settings, "min_num_inliers": cfg.panorama_min_num_inliers}
    t = time.time()
    if state.get("extract") != extract_key:
        log.info(f"extracting SIFT features of {len(upsampled)} panoramas at {upsampled[0].width}x{upsampled[0].height}")
        _extract(pycolmap, db_path, image_dir, upsampled, cfg, device)
        state = {"extract": extract_key}
        write_state(db_path, state)
        report["database"] = "new"
    else:
        report["database"] = "reused features"
    timings["extract_s"] = time.time() - t
    t = time.time()
    if state.get("match") != match_key:
        log.info("matching the panoramas")
        report["matcher"] = _match(pycolmap, db_path, len(upsampled), cfg, device)
        checks = {}
        if cfg.panorama_max_pair_tilt_deg > 0:
            checks["pairs_tilted"] = drop_tilted_pairs(pycolmap, db_path, cfg.panorama_max_pair_tilt_deg)
        if cfg.panorama_loop_check:
            checks.update(drop_inconsistent_pairs(pycolmap, db_path,
                                                  confirm_below_inliers=2 * cfg.panorama_min_num_inliers))
        report["pair_checks"] = checks
        log.info(f"pair checks: {checks}")
        state["match"] = match_key
        write_state(db_path, state)
    else:
        report["database"] = "reused features and matches"
        report["matcher"] = "reused"
    timings["match_s"] = time.time() - t

    t = time.time()
    first = cfg.panorama_mapper
    log.info(f"mapping ({first}{', gravity prior' if cfg.panorama_gravity_prior and first == 'global' else ''})")
    models = _map(pycolmap, db_path, image_dir, work_dir / "models", first, cfg)
    best, mapper_used = largest(models), first
    if best is None or best.num_reg_images() < len(upsampled):
        other = "incremental" if first == "global" else "global"
        n_first = 0 if best is None else best.num_reg_images()
        log.info(f"{first} mapping registered {n_first}/{len(upsampled)}; trying {other} mapping")
        other_models = _map(pycolmap, db_path, image_dir, work_dir / f"models_{other}", other, cfg)
        other_best = largest(other_models)
        if other_best is not None and other_best.num_reg_images() > n_first:
            models, best, mapper_used = other_models, other_best, f"{other} ({first} registered {n_first})"
    timings["map_s"] = time.time() - t
    report["mapper"] = mapper_used

    diagnose_registration(pycolmap, db_path, scene, upsampled, models, best, cfg.panorama_min_num_inliers,
                          cfg.min_registered_fraction, report, timings, work_dir, log)

    t = time.time()
    _rescale_model(best, 1.0 / cfg.panorama_upscale)
    if report.get("summary", {}).get("mean_reprojection_error_px") is not None:
        report["summary"]["mean_reprojection_error_px"] = float(best.compute_mean_reprojection_error())
    for stats in report["per_image"].values():
        if stats["reprojection_error_px"] is not None:
            stats["reprojection_error_px"] /= cfg.panorama_upscale
    no_undistort = replace(cfg, undistort=False)  # nothing to undistort in a panorama
    posed = write_model(pycolmap, scene, best, upsampled, image_dir, out_dir, final_dir, no_undistort)
    export_database(db_path, out_dir / "colmap")
    timings["write_s"] = time.time() - t
    report["points"] = int(len(posed.meta["sparse_points"]["xyz"]))
    report["undistorted"] = False
    report["reprojection_error_units"] = "px of the panoramas' own size"
    return posed, report

