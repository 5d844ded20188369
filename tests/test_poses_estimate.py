"""The poses stage: import of known poses, estimation with pycolmap, diagnostics of bad input."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from datasets import read_scene
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.alignment import pose_errors
from pipeline.geometry.cameras import Intrinsics
from pipeline.geometry.mesh import read_ply
from pipeline.runner.stage import run_stage
from pipeline.runner.workspace import Workspace
from pipeline.sfm.cameras import colmap_camera_params, intrinsics_from_colmap
from pipeline.sfm.diagnose import ImageStats, diagnose
from pipeline.sfm.prepare import prepare_images
from stages.poses import STAGE

pycolmap = pytest.importorskip("pycolmap")


def run_poses(workspace, *overrides, force=False):
    config = STAGE.load_config(None, ["num_threads=2", *overrides])
    return run_stage(STAGE, Workspace(workspace), config, force=force)


def copy_images(sources, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for src in sources:
        shutil.copy(src, folder / src.name)
    return folder


# --- fast unit tests ----------------------------------------------------------------------------


def test_prepare_images_composites_rotates_and_names_corrupt_files(tmp_path):
    from PIL import Image

    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:15, 10:20] = (255, 0, 0, 255)  # a red square on a transparent background
    Image.fromarray(rgba).save(tmp_path / "object.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # portrait photo: stored landscape, shown rotated by 90 degrees
    Image.fromarray(np.full((20, 40, 3), 128, np.uint8)).save(tmp_path / "portrait.jpg", exif=exif)
    good = (tmp_path / "portrait.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"not an image at all")
    scene = Scene([Frame(tmp_path / n, None) for n in ("object.png", "portrait.jpg", "truncated.jpg", "garbage.jpg")])

    prepared, unreadable = prepare_images(scene, tmp_path / "colmap_images", "white")

    assert sorted(unreadable) == ["garbage", "truncated"]
    by_name = {p.colmap_name: p for p in prepared}
    composited = np.asarray(Image.open(tmp_path / "colmap_images" / "object.png"))
    assert composited.shape == (20, 30, 3)
    assert tuple(composited[0, 0]) == (255, 255, 255) and tuple(composited[10, 15]) == (255, 0, 0)
    assert (by_name["portrait.png"].width, by_name["portrait.png"].height) == (20, 40)  # rotated as displayed


def test_camera_parameters_round_trip_through_colmap():
    intr = Intrinsics("opencv", 640, 480, 500.0, 501.0, 320.5, 239.5, (0.1, -0.05, 0.001, 0.002, 0.0))
    model, params = colmap_camera_params(intr)
    camera = pycolmap.Camera.create_from_model_name(1, model, 0.0, 640, 480)
    camera.params = [float(p) for p in params.split(",")]
    assert intrinsics_from_colmap(camera) == intr


def test_diagnosis_names_the_cause_from_the_counts():
    median_features, median_sharpness = 3000.0, 0.01
    few = ImageStats("dark", features=80, sharpness=0.001)
    assert "too few features" in diagnose(few, median_features, median_sharpness)
    assert "blurred" in diagnose(few, median_features, median_sharpness)
    elsewhere = ImageStats("elsewhere", features=2500, raw_matches=0, sharpness=0.01)
    assert "too little overlap" in diagnose(elsewhere, median_features, median_sharpness)
    repeated = ImageStats("facade", features=2800, raw_matches=900, verified_matches=40, best_inliers=12,
                          sharpness=0.01)
    assert "repeated texture" in diagnose(repeated, median_features, median_sharpness)
    group = ImageStats("other_place", features=2800, raw_matches=900, verified_matches=600, best_inliers=200,
                       neighbours=1, neighbour_names=["other_place_2.jpg"], neighbours_registered=0, sharpness=0.01)
    assert "no overlap with the registered images" in diagnose(group, median_features, median_sharpness)
    split = ImageStats("island", features=2800, raw_matches=900, verified_matches=600, best_inliers=200,
                       neighbours=3, neighbours_registered=1, sharpness=0.01, other_model=1)
    assert "disconnected" in diagnose(split, median_features, median_sharpness)


# --- the stage on real data ------------------------------------------------------------------------


def test_import_keeps_lego_poses_up_to_the_saved_normalisation(shared_data, tmp_path):
    data = shared_data("lego-200")
    run_poses(tmp_path / "W", f"data={data}")
    ws = Workspace(tmp_path / "W")
    imported = ws.load_scene()
    back = ws.normalization().inverse()
    original = {str(f.image_path.resolve()): f.c2w for f in read_scene(data).frames}
    assert len(imported) == len(original) == 40
    for frame in imported.frames:
        np.testing.assert_allclose(back.apply_c2w(frame.c2w), original[str(frame.image_path.resolve())], atol=1e-6)
    assert json.loads((ws.stage_dir("poses") / "report.json").read_text())["mode"] == "import"


def test_temple_ring_estimate_matches_the_calibration_and_reuses_the_database(shared_data, tmp_path):
    data = shared_data("temple-ring")
    run_poses(tmp_path / "W", f"data={data}", "estimate=true")
    ws = Workspace(tmp_path / "W")
    out = ws.stage_dir("poses")
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "estimate" and report["images_given"] == 16
    assert report["images_registered"] >= 15
    assert set(report["timings_s"]) >= {"extract_s", "match_s", "map_s"}
    assert all(v["features"] > 0 for v in report["per_image"].values())
    assert (out / "sparse" / "cameras.bin").exists() and (out / "transforms.json").exists()
    import pycolmap  # one calibration for the 16 views: the per-image cameras of matching were merged

    assert pycolmap.Reconstruction(out / "sparse").num_cameras() == 1
    points = read_ply(out / "points.ply")
    assert len(points["verts"] if isinstance(points, dict) else points[0]) > 100

    ref = {str(f.image_path.resolve()): f.c2w for f in read_scene(data).frames}
    est = ws.load_scene()
    errors = pose_errors(np.stack([f.c2w for f in est.frames]),
                         np.stack([ref[str(f.image_path.resolve())] for f in est.frames]))
    assert errors["rotation_deg_median"] <= 1.0
    assert errors["center_rel_median"] <= 0.02

    # a re-run with other mapping options reuses features and matches
    run_poses(tmp_path / "W", f"data={data}", "estimate=true", "mapper=global", force=True)
    again = json.loads((out / "report.json").read_text())
    assert again["database"] == "reused features and matches"
    assert again["images_registered"] >= 15


def test_corrupt_image_is_skipped_and_named(shared_data, tmp_path):
    lund = shared_data("lund") / "images"
    folder = copy_images(sorted(lund.glob("*.jpg"))[:10], tmp_path / "photos")
    good = (folder / "01.jpg").read_bytes()
    (folder / "99_truncated.jpg").write_bytes(good[:3000])
    (folder / "98_garbage.jpg").write_bytes(b"\x00" * 100)
    run_poses(tmp_path / "W", f"data={folder}", "format=photos", "min_registered_fraction=0.7")
    report = json.loads((tmp_path / "W" / "poses" / "report.json").read_text())
    named = {Path(name).stem for name in report["unreadable"]}  # the reader or the stage may name them
    assert {"99_truncated", "98_garbage"} <= named
    assert report["images_registered"] >= 9
    import pycolmap  # same-size photos share one estimated camera (shared_intrinsics=true)

    assert pycolmap.Reconstruction(tmp_path / "W" / "poses" / "sparse").num_cameras() == 1


def test_two_unrelated_photos_are_a_clear_error(shared_data, tmp_path):
    folder = copy_images([shared_data("lund") / "images" / "01.jpg",
                          shared_data("temple-ring") / "templeSR0001.png"], tmp_path / "photos")
    with pytest.raises(SceneError, match="at least 3 readable, overlapping images"):
        run_poses(tmp_path / "W", f"data={folder}", "format=photos")


def test_photos_of_another_place_are_listed_with_the_cause(shared_data, tmp_path):
    lund = sorted((shared_data("lund") / "images").glob("*.jpg"))[:6]
    temple = [shared_data("temple-ring") / "templeSR0001.png", shared_data("temple-ring") / "templeSR0009.png"]
    folder = copy_images(lund + temple, tmp_path / "photos")
    with pytest.raises(SceneError) as failure:
        run_poses(tmp_path / "W", f"data={folder}", "format=photos")
    message = str(failure.value)
    assert "templeSR0001" in message and "templeSR0009" in message
    assert "overlap" in message
    assert (tmp_path / "W" / ".resume" / "poses" / "report.json").exists()  # the report survives the failure


def test_builtin_scene_estimate_registers_every_view_accurately(tmp_path):
    """The built-in scene at its default size (50 views, 200 px): every view registered, and the
    small-image settings (0.5 px reprojection limit, guided matching) keep the poses close to the
    truth. The issue's 0.2 deg is checked by bench/poses.py; this guards against regressions (the
    COLMAP defaults gave 0.64 deg, 0.95%)."""
    from datasets.synthetic import SyntheticConfig, generate

    data = generate(tmp_path / "scene", SyntheticConfig())
    report = run_poses(tmp_path / "W", f"data={data}", "estimate=true").manifest["metrics"]
    ws = Workspace(tmp_path / "W")
    assert report["images_registered"] == len(read_scene(data)) == 50
    effective = json.loads((ws.stage_dir("poses") / "report.json").read_text())["effective_settings"]
    assert effective["max_reproj_error"] == 0.5 and effective["guided_matching"] is True
    ref = {f.name: f.c2w for f in read_scene(data).frames}
    est = ws.load_scene()
    errors = pose_errors(np.stack([f.c2w for f in est.frames]), np.stack([ref[f.name] for f in est.frames]))
    assert errors["rotation_deg_median"] <= 0.3
    assert errors["center_rel_median"] <= 0.005
