"""Incremental mapping driven from Python (pipeline.sfm.incremental): COLMAP's models, and the
iterative solver for the global adjustments of a compact capture past the size floor."""
import numpy as np
import pytest

from datasets import read_scene
from datasets.synthetic import SyntheticConfig, generate
from pipeline.geometry.alignment import pose_errors
from pipeline.sfm import refine
from pipeline.sfm.cameras import c2w_from_image
from pipeline.sfm.config import EstimationConfig, effective_settings
from pipeline.sfm.incremental import incremental_mapping
from pipeline.sfm.mapping import incremental_options
from pipeline.sfm.matching import match
from pipeline.sfm.prepare import prepare_images

pycolmap = pytest.importorskip("pycolmap")  # after torch's imports: the other order can crash the renderer


@pytest.fixture(scope="module")
def matched_scene(tmp_path_factory):
    """(database path, image folder, true camera-to-world by image name, the poses stage's settings):
    30 views of the built-in scene at 160 px, SIFT features as the stage extracts them for such small
    images, matched exhaustively."""
    root = tmp_path_factory.mktemp("incremental")
    scene = read_scene(generate(root / "scene", SyntheticConfig(views=30, size=160)))
    images = root / "images"
    prepared, _ = prepare_images(scene, images, "white")  # composited, in one folder, as COLMAP gets them
    eff = effective_settings(EstimationConfig(), [(160, 160)] * 30)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.sift.first_octave, extraction.sift.peak_threshold = eff.first_octave, eff.peak_threshold
    reader = pycolmap.ImageReaderOptions()  # the scene's intrinsics, as the stage takes them
    k = scene.frames[0].intrinsics
    reader.camera_model, reader.camera_params = "PINHOLE", f"{k.fx},{k.fy},{k.cx},{k.cy}"
    db = root / "database.db"
    pycolmap.extract_features(db, images, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    match(pycolmap, db, "exhaustive", EstimationConfig(num_threads=1), eff, pycolmap.Device.cpu, known=True)
    truth = {im.colmap_name: scene.frames[im.frame_index].c2w for im in prepared}
    return db, images, truth, eff


def options(eff):
    opts = incremental_options(pycolmap, EstimationConfig(), eff, known=True, num_images=30)
    opts.num_threads = 1  # one thread and one seed: COLMAP's mapping repeats exactly
    opts.random_seed = 3
    return opts


def rotation_errors(rec, truth) -> np.ndarray:
    images = [rec.images[i] for i in sorted(rec.reg_image_ids())]
    errors = pose_errors(np.stack([c2w_from_image(im) for im in images]), np.stack([truth[im.name] for im in images]))
    return np.asarray(errors["rotation_deg"])


def test_the_python_loop_maps_as_colmaps_own_pipeline(matched_scene, tmp_path):
    db, images, truth, eff = matched_scene
    colmap = pycolmap.incremental_mapping(db, images, tmp_path / "colmap", options=options(eff))
    ours, stats = incremental_mapping(pycolmap, db, images, tmp_path / "ours", options(eff))
    assert sorted(colmap) == sorted(ours) == [0]
    a, b = colmap[0], ours[0]
    assert sorted(a.reg_image_ids()) == sorted(b.reg_image_ids())
    assert a.num_reg_images() >= 24  # the mapper alone, 30 sparse views of 160 px (the stage's later steps add the rest)
    assert a.num_points3D() == b.num_points3D()
    for image_id in a.reg_image_ids():  # the same steps in the same order: the same numbers
        assert np.allclose(a.images[image_id].cam_from_world().matrix(), b.images[image_id].cam_from_world().matrix(),
                           atol=1e-9)
    assert stats.global_refinements > 3 and stats.iterative == 0  # 30 images: COLMAP's solver throughout
    assert (tmp_path / "ours" / "0" / "images.bin").exists()  # written where pycolmap writes them
    assert np.median(rotation_errors(b, truth)) < 1.0  # the mapper alone, before the stage refines it


def test_past_the_floor_a_compact_capture_is_adjusted_by_the_iterative_solver(matched_scene, tmp_path, monkeypatch):
    db, images, truth, eff = matched_scene
    monkeypatch.setattr(refine, "ITERATIVE_MIN_IMAGES", 10)  # as if 30 views were many
    ours, stats = incremental_mapping(pycolmap, db, images, tmp_path / "ours", options(eff))
    # each global refinement past 10 images took the iterative solver while the model was compact
    # (here up to ~20 images; the sparse views' covisibility graph then stretches and comes apart)
    compact = [d <= refine.ITERATIVE_MAX_DIAMETER for _, d in stats.diameters]
    assert stats.iterative == sum(compact) > 0 and not all(compact)
    colmap = pycolmap.incremental_mapping(db, images, tmp_path / "colmap", options=options(eff))
    assert ours[0].num_reg_images() >= colmap[0].num_reg_images() - 1
    # another solver, another path through mapping: poses as accurate, not the same numbers
    assert np.median(rotation_errors(ours[0], truth)) < 1.5 * np.median(rotation_errors(colmap[0], truth)) + 0.05
