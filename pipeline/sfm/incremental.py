"""Incremental mapping: COLMAP's incremental pipeline, its loop driven from Python.

``pycolmap.incremental_mapping`` runs COLMAP's ``IncrementalPipeline`` in C++. Its global bundle
adjustments factor the reduced camera system with a sparse Cholesky below 1000 images, and at 400
views of an object they take three fifths of the mapping time. :func:`incremental_mapping` runs the
same steps (``IncrementalPipeline::Run``, ``Reconstruct`` and ``ReconstructSubModel`` of COLMAP
4.x) on pycolmap's ``IncrementalMapper``, with one difference: each global refinement uses the
linear solver that the model's shape suits (:func:`pipeline.sfm.refine.use_iterative_solver`:
iterative Schur for a compact capture past ``ITERATIVE_MIN_IMAGES``). Below that size every call is
COLMAP's own, with COLMAP's options, so the models are COLMAP's (tests/sfm/test_incremental.py).
A progress bar counts the registered images.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.runner.log import progress
from pipeline.sfm.refine import set_iterative_schur, use_iterative_solver

# COLMAP's kMinNumInitialRegTrials: a young model that fails this many registrations in a row is
# given up for another initial pair
MIN_NUM_INITIAL_REG_TRIALS = 30
NUM_INIT_RELAXATIONS = 2  # COLMAP's kNumInitRelaxations


@dataclass
class MappingStats:
    """What the loop did: global refinements, how many with the iterative solver, their time."""

    global_refinements: int = 0
    iterative: int = 0
    global_s: float = 0.0
    diameters: list = field(default_factory=list)  # (registered images, covisibility diameter) past the floor


class _Loop:
    """One run of the pipeline over a database (the state COLMAP keeps in ``IncrementalPipeline``)."""

    def __init__(self, pycolmap, db_path: Path, image_dir: Path, options, log: logging.Logger):
        self.image_dir, self.log = image_dir, log
        self.status = pycolmap.IncrementalPipelineStatus
        database = pycolmap.Database.open(str(db_path))
        try:
            self.manager = pycolmap.ReconstructionManager()
            self.controller = pycolmap.IncrementalPipeline(options, database, self.manager)
        finally:
            database.close()
        self.options = self.controller.options  # as COLMAP customised them for the database
        self.num_images = self.controller.database_cache.num_images()
        self.mapper = pycolmap.IncrementalMapper(self.controller.database_cache)
        self.stats = MappingStats()
        self.bar = None

    def run(self) -> None:
        """``IncrementalPipeline::Run``: map, then relax the initial pair's thresholds twice."""
        if self.num_images == 0:
            self.log.warning("mapping: no images with matches in the database")
            return
        mapper_options = self.options.get_mapper()
        self.bar = progress(total=self.num_images, desc="mapping (registered images)")
        try:
            if self._reconstruct(mapper_options):
                return
            for _ in range(NUM_INIT_RELAXATIONS):
                if self.mapper.num_total_reg_images() == self.num_images:
                    break
                mapper_options.init_min_num_inliers = int(mapper_options.init_min_num_inliers) // 2
                self.mapper.reset_initialization_stats()
                if self._reconstruct(mapper_options) or self.mapper.num_total_reg_images() == self.num_images:
                    break
                mapper_options.init_min_tri_angle = mapper_options.init_min_tri_angle / 2
                self.mapper.reset_initialization_stats()
                if self._reconstruct(mapper_options):
                    break
        finally:
            self.bar.close()

    def _reconstruct(self, mapper_options) -> bool:
        """``IncrementalPipeline::Reconstruct``: models from initial pairs until the images are
        used up; True to stop mapping altogether."""
        opts, status = self.options, self.status
        for _ in range(opts.init_num_trials):
            index = self.manager.add()
            rec = self.manager.get(index)
            result = self._sub_model(mapper_options, rec)
            if result in (status.BAD_INITIAL_PAIR, status.NO_INITIAL_PAIR):
                self.mapper.end_reconstruction(True)
                self.manager.delete(index)
                if result == status.NO_INITIAL_PAIR:  # none left until the thresholds are relaxed
                    return False
                continue
            num_reg, total_reg = rec.num_reg_images(), self.mapper.num_total_reg_images()
            if (opts.multiple_models and self.manager.size() > 1 and num_reg < opts.min_model_size) or num_reg == 0:
                self.mapper.end_reconstruction(True)
                self.manager.delete(index)
            else:
                rec.update_point_3d_errors()
                self.mapper.end_reconstruction(False)
            if (not opts.multiple_models or self.manager.size() >= opts.max_num_models
                    or total_reg >= self.num_images - 1):
                return True
        return False

    def _sub_model(self, mapper_options, rec):
        """``IncrementalPipeline::ReconstructSubModel``: grow one model image by image."""
        opts, mapper = self.options, self.mapper
        mapper.begin_reconstruction(rec)
        if rec.num_reg_frames() == 0:
            result = self.controller.initialize_reconstruction(mapper, mapper_options, rec)
            if result != self.status.SUCCESS:
                return result
            self.bar.update(rec.num_reg_images())  # COLMAP's initialisation took the pair's colours
        prev_frames, prev_points = rec.num_reg_frames(), rec.num_points3D()
        structure_less_flags = ([True] if opts.structure_less_registration_only
                                else [False, True] if opts.structure_less_registration_fallback else [False])
        success = prev_success = True
        while success or prev_success:
            prev_success, success = success, False
            image_id = None
            for structure_less in structure_less_flags:
                register = mapper.register_next_structure_less_image if structure_less else mapper.register_next_image
                for trial, image_id in enumerate(mapper.find_next_images(mapper_options, structure_less)):
                    success = register(mapper_options, image_id)
                    if success or (trial >= MIN_NUM_INITIAL_REG_TRIALS and rec.num_reg_images() < opts.min_model_size):
                        break
                if success:
                    break
            if success:
                tri_options = opts.get_triangulation()
                mapper.triangulate_image(tri_options, image_id)
                mapper.iterative_local_refinement(opts.ba_local_max_refinements, opts.ba_local_max_refinement_change,
                                                  mapper_options, opts.get_local_bundle_adjustment(), tri_options,
                                                  image_id)
                if self.controller.check_run_global_refinement(rec, prev_frames, prev_points):
                    self._global_refinement(mapper_options, rec)
                    prev_frames, prev_points = rec.num_reg_frames(), rec.num_points3D()
                self._registered(rec, image_id)
            if mapper.num_shared_reg_images() >= opts.max_model_overlap:
                break
            if not success and prev_success:  # one global refinement, then one more try
                self._global_refinement(mapper_options, rec)
        # the final global refinement, unless the last one was global
        if rec.num_reg_frames() > 0 and rec.num_reg_frames() != prev_frames and rec.num_points3D() != prev_points:
            self._global_refinement(mapper_options, rec)
        return self.status.SUCCESS

    def _global_refinement(self, mapper_options, rec) -> None:
        """COLMAP's iterative global refinement (retriangulation and bundle adjustment, repeated while
        observations change) and frame filtering, with the solver the model's shape suits."""
        started = time.perf_counter()
        options = self.options.get_global_bundle_adjustment()
        iterative, diameter = use_iterative_solver(rec)  # ~0.2 s at 400 images
        if diameter:
            self.stats.diameters.append((rec.num_reg_images(), diameter))
        if iterative:
            set_iterative_schur(options)
        self.mapper.iterative_global_refinement(self.options.ba_global_max_refinements,
                                                self.options.ba_global_max_refinement_change, mapper_options,
                                                options, self.options.get_triangulation())
        self.mapper.filter_frames(mapper_options)
        self.stats.global_refinements += 1
        self.stats.iterative += int(iterative)
        self.stats.global_s += time.perf_counter() - started

    def _registered(self, rec, image_id: int) -> None:
        if self.options.extract_colors and not rec.extract_colors_for_image(image_id, str(self.image_dir)):
            self.log.warning(f"mapping: could not read {rec.images[image_id].name} in {self.image_dir} "
                             f"for the points' colours")
        self.bar.update(1)


def incremental_mapping(pycolmap, db_path: Path, image_dir: Path, out: Path, options,
                        log: logging.Logger | None = None) -> tuple[dict, MappingStats]:
    """({model index: pycolmap.Reconstruction}, what the loop did) from incremental mapping of the
    images in the database at ``db_path`` with ``options`` (``pycolmap.IncrementalPipelineOptions``),
    as ``pycolmap.incremental_mapping``; the models are also written to ``out/<index>``. ``image_dir``:
    the images the database was made from (the points' colours)."""
    log = log or logging.getLogger(__name__)
    options.image_path = str(image_dir)  # where COLMAP's initialisation reads the first pair's colours
    loop = _Loop(pycolmap, Path(db_path), Path(image_dir), options, log)
    loop.run()
    out.mkdir(parents=True, exist_ok=True)
    loop.manager.write(str(out))
    return {k: loop.manager.get(k) for k in range(loop.manager.size())}, loop.stats
