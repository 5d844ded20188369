"""Step 4 of pose estimation: mapping (incremental, or global), and the model as outputs: COLMAP's
``sparse/`` folder, the posed :class:`Scene`, its sparse points and, when asked, undistorted images."""
from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from datasets.scene import Scene
from pipeline.sfm.cameras import c2w_from_image, intrinsics_from_colmap
from pipeline.sfm.config import Effective, EstimationConfig
from pipeline.sfm.incremental import incremental_mapping
from pipeline.sfm.prepare import PreparedImage


def global_ba_ratio(cfg: EstimationConfig, num_images: int) -> float:
    """Growth of the model (registered images, points) between two global bundle adjustments of
    incremental mapping: ``cfg.ba_global_ratio``, or when 0 COLMAP's 1.1 for small sets and 1.3 from
    ``cfg.ba_global_ratio_min_images`` images (the global adjustments are what makes incremental
    mapping grow ~n^2; fewer of them cost little accuracy once many views constrain each other)."""
    if cfg.ba_global_ratio > 0:
        return cfg.ba_global_ratio
    return 1.3 if num_images >= cfg.ba_global_ratio_min_images else 1.1


def incremental_options(pycolmap, cfg: EstimationConfig, eff: Effective, known: bool, num_images: int):
    """``pycolmap.IncrementalPipelineOptions`` of the poses stage for ``num_images`` images."""
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.random_seed = cfg.seed
    options.min_num_matches = eff.min_num_inliers
    options.mapper.abs_pose_min_num_inliers = eff.abs_pose_min_num_inliers
    options.mapper.abs_pose_min_inlier_ratio = cfg.abs_pose_min_inlier_ratio
    # COLMAP's thresholds are 4 px everywhere (12 px for absolute-pose RANSAC); keep their ratios
    err = eff.max_reproj_error
    options.mapper.filter_max_reproj_error = err
    options.mapper.init_max_error = err
    options.mapper.abs_pose_max_error = 3 * err
    options.triangulation.complete_max_reproj_error = err
    options.triangulation.merge_max_reproj_error = err
    ratio = global_ba_ratio(cfg, num_images)
    options.ba_global_frames_ratio = ratio
    options.ba_global_points_ratio = ratio
    if known:
        options.ba_refine_focal_length = False
        options.ba_refine_extra_params = False
        options.ba_refine_principal_point = False
    return options


def map_images(pycolmap, db_path: Path, image_dir: Path, out: Path, mapper: str, cfg: EstimationConfig,
               eff: Effective, known: bool, num_images: int, log: logging.Logger | None = None) -> tuple[dict, str]:
    """({model id: pycolmap.Reconstruction}, a note on the global adjustments or "") from incremental
    mapping (:func:`pipeline.sfm.incremental.incremental_mapping`) or global mapping of the
    ``num_images`` images in the database."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if mapper == "incremental":
        options = incremental_options(pycolmap, cfg, eff, known, num_images)
        models, stats = incremental_mapping(pycolmap, db_path, image_dir, out, options, log)
        note = (f"{stats.global_refinements} global refinements ({stats.global_s:.1f} s), "
                f"{stats.iterative} of them with the iterative solver")
        if stats.diameters:
            note += f" (covisibility diameter {stats.diameters[-1][1]:g} at {stats.diameters[-1][0]} images)"
        return models, note
    options = pycolmap.GlobalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.random_seed = cfg.seed
    options.min_num_matches = eff.min_num_inliers
    gpu = bool(pycolmap.has_cuda) and cfg.use_gpu != "no"
    options.mapper.global_positioning.use_gpu = gpu
    options.mapper.bundle_adjustment.ceres.use_gpu = gpu
    if known:
        options.mapper.bundle_adjustment.refine_focal_length = False
        options.mapper.bundle_adjustment.refine_extra_params = False
        options.mapper.bundle_adjustment.refine_principal_point = False
    return dict(pycolmap.global_mapping(db_path, image_dir, out, options=options)), ""


def largest(models: dict):
    """The model with the most registered images (None when there is none)."""
    return max(models.values(), key=lambda r: r.num_reg_images()) if models else None


def choose_mapper(cfg: EstimationConfig, num_images: int) -> tuple[str, str]:
    """(incremental | global, why in one line) for ``num_images`` images: ``mapper=auto`` maps
    globally from ``global_min_images`` on (incremental mapping bundle-adjusts again and again as
    it grows: ~n^2; global mapping solves all rotations, then all positions, then one adjustment)."""
    if cfg.mapper != "auto":
        return cfg.mapper, f"mapper={cfg.mapper} in the config"
    if num_images >= cfg.global_min_images:
        return "global", f"{num_images} images >= global_min_images={cfg.global_min_images}"
    return "incremental", f"{num_images} images < global_min_images={cfg.global_min_images}"


def reconstruct(pycolmap, db_path: Path, image_dir: Path, work_dir: Path, num_images: int, cfg: EstimationConfig,
                eff: Effective, known: bool, log: logging.Logger) -> tuple[dict, object, str, str]:
    """Map with the mapper :func:`choose_mapper` picks; when incremental mapping leaves some of the
    ``num_images`` out and ``cfg.fallback_to_global``, map globally too and keep the result that
    registers more. Returns (every model found, the largest or None, the mapper that made it, in
    words, why that mapper)."""
    mapper, reason = choose_mapper(cfg, num_images)
    if mapper == "incremental":
        reason += f"; global bundle adjustment each time the model grew x{global_ba_ratio(cfg, num_images)}"
    log.info(f"mapping: {mapper} ({reason})")
    models, note = map_images(pycolmap, db_path, image_dir, work_dir / "models", mapper, cfg, eff, known, num_images,
                              log)
    if note:
        log.info(f"mapping: {note}")
        reason += f"; {note}"
    mapper_used = mapper
    best = largest(models)
    if mapper == "incremental" and cfg.fallback_to_global and (best is None or best.num_reg_images() < num_images):
        n_inc = 0 if best is None else best.num_reg_images()
        log.info(f"incremental mapping registered {n_inc}/{num_images}; trying global mapping")
        global_models, _ = map_images(pycolmap, db_path, image_dir, work_dir / "models_global", "global", cfg,
                                      eff, known, num_images, log)
        best_global = largest(global_models)
        if best_global is not None and best_global.num_reg_images() > n_inc:
            models, best, mapper_used = global_models, best_global, "global (incremental registered %d)" % n_inc
            reason += f"; incremental registered {n_inc}/{num_images}, global more"
    return models, best, mapper_used, reason


def posed_scene(scene: Scene, rec, prepared: list[PreparedImage]) -> tuple[Scene, list[str]]:
    """The registered frames with COLMAP's poses and intrinsics (splits remapped to them), and
    their image names in the COLMAP model."""
    by_name = {im.name: im for im in rec.images.values() if im.has_pose}
    frames, old_to_new, names = [], {}, []
    for prep in prepared:
        image = by_name.get(prep.colmap_name)
        if image is None:
            continue
        frame = scene.frames[prep.frame_index]
        intr = intrinsics_from_colmap(rec.cameras[image.camera_id])
        old_to_new[prep.frame_index] = len(frames)
        names.append(prep.colmap_name)
        frames.append(replace(frame, c2w=c2w_from_image(image), intrinsics=intr))
    splits = {k: [old_to_new[i] for i in v if i in old_to_new] for k, v in scene.splits.items()}
    splits = {k: v for k, v in splits.items() if v}
    meta = dict(scene.meta)
    return Scene(frames, splits, None, scene.background, meta, scene.source), names


def undistort(pycolmap, posed: Scene, colmap_names: list[str], sparse_dir: Path, image_dir: Path, out_dir: Path,
              final_dir: Path, num_threads: int) -> Scene:
    """Undistorted pinhole images in ``out_dir/undistorted/images``; the frames point at their
    place once ``out_dir`` is published as ``final_dir``."""
    tmp = out_dir / "undistorted"
    pycolmap.undistort_images(str(tmp), str(sparse_dir), str(image_dir), num_threads=num_threads)
    rec_u = pycolmap.Reconstruction(str(tmp / "sparse"))
    final = final_dir / "undistorted" / "images"
    by_name = {im.name: im for im in rec_u.images.values()}
    frames = []
    for frame, colmap_name in zip(posed.frames, colmap_names):
        image = by_name[colmap_name]
        frames.append(replace(frame, image_path=final / colmap_name,
                              intrinsics=intrinsics_from_colmap(rec_u.cameras[image.camera_id])))
    return Scene(frames, posed.splits, posed.bounds, posed.background, posed.meta, posed.source)


def write_model(pycolmap, scene: Scene, rec, prepared: list[PreparedImage], image_dir: Path, out_dir: Path,
                final_dir: Path, cfg: EstimationConfig) -> Scene:
    """Write ``rec`` to ``out_dir/sparse`` (and undistorted images when ``cfg.undistort``); return
    the posed scene (:func:`posed_scene`) with the sparse points in ``meta["sparse_points"]``
    (``xyz`` (M, 3) float64, ``rgb`` (M, 3) uint8, COLMAP's frame; ``views`` (K, 2) int64: each
    observation's point index and frame index in the posed scene, from the points' tracks)."""
    sparse_dir = out_dir / "sparse"
    sparse_dir.mkdir(parents=True, exist_ok=True)
    rec.write(str(sparse_dir))
    posed, colmap_names = posed_scene(scene, rec, prepared)
    if cfg.undistort:
        posed = undistort(pycolmap, posed, colmap_names, sparse_dir, image_dir, out_dir, final_dir, cfg.num_threads)
    points = np.array([p.xyz for p in rec.points3D.values()], dtype=np.float64).reshape(-1, 3)
    colors = np.array([p.color for p in rec.points3D.values()], dtype=np.uint8).reshape(-1, 3)
    posed.meta["sparse_points"] = {"xyz": points, "rgb": colors, "views": point_views(rec, colmap_names)}
    return posed


def point_views(rec, colmap_names: list[str]) -> np.ndarray:
    """(K, 2) int64: (point index in ``rec.points3D``'s order, frame index) for every image that
    observes a point, the frames being the images ``colmap_names`` in order."""
    frame_of = {name: i for i, name in enumerate(colmap_names)}
    frame_of_image = {image_id: frame_of.get(image.name) for image_id, image in rec.images.items()}
    pairs = {(j, frame_of_image[el.image_id]) for j, point in enumerate(rec.points3D.values())
             for el in point.track.elements if frame_of_image.get(el.image_id) is not None}
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)
