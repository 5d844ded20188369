"""Pose estimation with pycolmap: photos -> calibrated cameras, sparse points and a diagnosis.

:func:`estimate` runs the steps in order: images prepared for COLMAP (:mod:`pipeline.sfm.prepare`),
SIFT features (:mod:`~pipeline.sfm.features`), matching (``matcher=auto``: exhaustive for small sets,
sequential for ordered captures, spatial with GPS priors, vocabulary-tree retrieval otherwise:
:mod:`~pipeline.sfm.matching`), mapping (incremental, or global for large sets, falling back to
global mapping when images are left out: :mod:`~pipeline.sfm.mapping`) and the diagnosis
(:mod:`~pipeline.sfm.diagnose`). It returns the scene with poses and intrinsics, and a report:
images given and registered, per-image features / matched neighbours / reprojection error, the
unregistered images with the likely cause in plain words, other models found, the time of each step.

Files: the COLMAP database lives in ``work_dir`` (and a copy in ``out_dir/colmap/``) and is reused
by a re-run with the same images and feature settings (:mod:`~pipeline.sfm.database`); the final
model is written to ``out_dir/sparse/`` (COLMAP binary, COLMAP's own frame).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

from datasets.scene import Scene, SceneError
from pipeline.sfm.colmap import colmap_device, import_pycolmap, quiet_colmap
from pipeline.sfm.config import EstimationConfig, check_config, effective_settings
from pipeline.sfm.database import (append_model_keypoints, export_database, extraction_key, matching_key,
                                   restore_database, write_state)
from pipeline.sfm.diagnose import diagnose_registration, save_failure_report
from pipeline.sfm.features import apply_intrinsics_file, camera_groups, extract, use_known_intrinsics
from pipeline.sfm.keypoints import align_track_keypoints, read_frames_and_images
from pipeline.sfm.mapping import reconstruct, write_model
from pipeline.sfm.matching import choose_matcher, consecutive_gain, match_images, prior_positions
from pipeline.sfm.panoramas import estimate_panoramas, is_panorama_scene
from pipeline.sfm.prepare import prepare
from pipeline.sfm.refine import bundle_adjust, refine_principal_point
from pipeline.sfm.tracks import finish_model


def estimate(scene: Scene, cfg: EstimationConfig, work_dir: Path, out_dir: Path, final_dir: Path,
             log: logging.Logger) -> tuple[Scene, dict]:
    """Estimate poses (and intrinsics unless known) of ``scene``'s images.

    ``work_dir`` holds what survives an interruption or a failure (prepared images, the database,
    the models, the report of a failure); ``out_dir`` receives ``sparse/``, ``colmap/`` (and
    ``undistorted/`` when asked); ``final_dir`` is where ``out_dir`` is published: the last finished
    run's database is read from there, and undistorted image paths point there.
    Returns the scene holding only the registered frames (poses in COLMAP's frame, splits remapped)
    and the report dict (``mode: "estimate"``); the sparse points are in ``scene.meta["sparse_points"]``
    (``xyz`` (M, 3), ``rgb`` (M, 3) uint8) for the caller to write after normalisation.
    Raises SceneError when fewer than 3 images are readable or fewer than
    ``min_registered_fraction`` register; the report is then kept in ``work_dir/report.json``.
    """
    pycolmap = import_pycolmap()
    timings: dict[str, float] = {}
    report: dict = {"mode": "estimate", "images_given": len(scene)}
    check_config(cfg)
    device = colmap_device(pycolmap, cfg.use_gpu)
    quiet = log.getEffectiveLevel() > logging.DEBUG  # DEBUG shows COLMAP's own log
    if is_panorama_scene(scene):
        with quiet_colmap(pycolmap, quiet):
            return estimate_panoramas(scene, cfg, work_dir, out_dir, final_dir, log, pycolmap, device)
    scene = apply_intrinsics_file(cfg, scene)
    known = use_known_intrinsics(cfg, scene)
    report.update(intrinsics=(f"known (from {cfg.intrinsics_file})" if cfg.intrinsics_file else "known (from the dataset)")
                  if known else f"estimated ({cfg.camera_model})",
                  device="cuda" if device == pycolmap.Device.cuda else "cpu")

    # 1. images COLMAP can read; corrupt files are skipped and named
    t = time.time()
    image_dir = work_dir / "images"
    prepared, unreadable = prepare(scene, image_dir, log)
    timings["prepare_s"] = time.time() - t
    report["unreadable"] = unreadable
    if len(prepared) < 3:
        save_failure_report(work_dir, report, timings)
        raise SceneError(f"pose estimation needs at least 3 readable, overlapping images; got {len(prepared)} "
                         f"readable of {len(scene)}" + (f" (unreadable: {', '.join(unreadable)})" if unreadable else "")
                         + ". Add photos of the same scene taken from nearby viewpoints.")

    # 2-3. features and matches, reused from an earlier run with the same images and settings
    eff = effective_settings(cfg, [(im.width, im.height) for im in prepared])
    report["effective_settings"] = asdict(eff)
    extract_key = extraction_key(scene, prepared, known, cfg, eff)
    groups = camera_groups(prepared, scene, cfg, known)
    db_path = work_dir / "database.db"
    state = restore_database(db_path, final_dir / "colmap")
    if state.get("extract") != extract_key:
        db_path.unlink(missing_ok=True)
        state = {}
    with quiet_colmap(pycolmap, quiet):
        t = time.time()
        if state.get("extract") != extract_key:
            log.info(f"extracting SIFT features of {len(prepared)} images (max size {eff.max_image_size} px)")
            extract(pycolmap, db_path, image_dir, groups, cfg, eff, device)
            state = {"extract": extract_key}
            write_state(db_path, state)
            report["database"] = "new"
        else:
            report["database"] = "reused features"
        timings["extract_s"] = time.time() - t
        # the matching strategy, from the data (the ordered-capture check looks at the features)
        t = time.time()
        names = [im.colmap_name for im in prepared]
        positions, prior_source = prior_positions(cfg, scene, [im.frame_index for im in prepared],
                                                  [scene.frames[im.frame_index].image_path for im in prepared])
        choice = choose_matcher(cfg, names, lambda order: consecutive_gain(pycolmap, db_path, order, cfg.seed),
                                positions, prior_source)
        matcher = choice.matcher
        log.info(f"matching: {matcher} ({choice.reason})")
        report.update(matcher=matcher, matcher_reason=choice.reason)
        match_key = matching_key(extract_key, matcher, cfg, eff)
        if state.get("match") != match_key:
            match_images(pycolmap, db_path, choice, groups, cfg, eff, device, known, names)
            state["match"] = match_key
            write_state(db_path, state)
        else:
            report["database"] = "reused features and matches"
        timings["match_s"] = time.time() - t

        # 4. mapping: keep the largest model; the diagnosis reports the others
        t = time.time()
        models, best, mapper_used, mapper_reason = reconstruct(pycolmap, db_path, image_dir, work_dir, len(prepared),
                                                               cfg, eff, known, log)
        timings["map_s"] = time.time() - t
        # 4b. the tracks' keypoints aligned at full resolution, then bundle adjustment
        frames_and_images = None  # SIFT frames and grey images of the registered images, read once for 4b and 4e
        if best is not None and eff.refine_keypoints:
            t = time.time()
            frames_and_images = read_frames_and_images(pycolmap, best, db_path, image_dir)
            report["keypoint_refinement"] = align_track_keypoints(best, *frames_and_images)
            bundle_adjust(pycolmap, best, not known, cfg.num_threads)
            timings["refine_keypoints_s"] = time.time() - t
        # 4c. the principal point, when the views support it (checked on held-out tracks)
        if best is not None and eff.refine_principal_point and not known:
            t = time.time()
            checks = refine_principal_point(pycolmap, best, cfg.pp_min_views, cfg.pp_min_z, cfg.pp_max_shift,
                                            num_threads=cfg.num_threads, log=log)
            report["principal_point"] = [asdict(c) for c in checks]
            timings["principal_point_s"] = time.time() - t
        # 4d. the tracks extended by guided 2D-3D matching, then the poses adjusted once more on
        # tracks that three or more views see; 4e. the tracks' keypoints aligned on image patches,
        # then adjusted again
        if best is not None:
            t = time.time()
            if cfg.align_keypoints and frames_and_images is None:
                frames_and_images = read_frames_and_images(pycolmap, best, db_path, image_dir)
            report.update(finish_model(pycolmap, best, db_path, cfg, not known, eff.max_reproj_error, log,
                                       frames_and_images))
            timings["finish_s"] = time.time() - t
    report.update(mapper=mapper_used, mapper_reason=mapper_reason)

    # 5. per-image counts and diagnosis
    diagnose_registration(pycolmap, db_path, scene, prepared, models, best, eff.min_num_inliers,
                          cfg.min_registered_fraction, report, timings, work_dir, log)

    # outputs: the model, the posed scene, optional undistortion, the database for the next run
    t = time.time()
    posed = write_model(pycolmap, scene, best, prepared, image_dir, out_dir, final_dir, cfg)
    export_database(db_path, out_dir / "colmap")
    if best is not None and frames_and_images is not None:  # step 4g's keypoints, for COLMAP to read the model
        append_model_keypoints(out_dir / "colmap" / "database.db", best, frames_and_images[0])
    timings["write_s"] = time.time() - t
    report["points"] = int(len(posed.meta["sparse_points"]["xyz"]))
    report["undistorted"] = bool(cfg.undistort)
    return posed, report
