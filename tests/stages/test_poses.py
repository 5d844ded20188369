"""The poses stage on real data and the built-in scene: import of known poses, estimation with
pycolmap, diagnostics of bad input."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from datasets import read_scene
from datasets.scene import SceneError
from pipeline.geometry.alignment import pose_errors
from pipeline.geometry.mesh import read_ply
from pipeline.runner.stage import run_stage
from pipeline.runner.workspace import Workspace
from pipeline.sfm.database import restore_database
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
    points = read_ply(out / "points.ply")[0]
    assert len(points) > 100
    views = np.load(out / "points_views.npy")  # the tracks: every observation lies in its image
    est_frames = ws.load_scene().frames
    assert views[:, 0].max() < len(points) and len(np.unique(views[:, 0])) == len(points)
    for j, f in views[::7]:
        frame, k = est_frames[f], est_frames[f].intrinsics
        x = (points[j] - frame.c2w[:3, 3]) @ frame.c2w[:3, :3]
        assert x[2] > 0 and 0 <= k.fx * x[0] / x[2] + k.cx <= k.width and 0 <= k.fy * x[1] / x[2] + k.cy <= k.height

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
    full_report = json.loads((ws.stage_dir("poses") / "report.json").read_text())
    effective = full_report["effective_settings"]
    assert effective["max_reproj_error"] == 0.5 and effective["guided_matching"] is True
    # the last step: tracks extended by guided 2D-3D matching, poses adjusted on tracks of 3+ views
    assert full_report["track_extension"]["observations_added"] > 0
    assert full_report["final_adjustment"]["min_track_length"] == 3
    # then the tracks' keypoints aligned on image patches (step 4e): most of them move a little
    alignment = full_report["keypoint_alignment"]
    assert alignment["moved"] > 0.5 * alignment["observations"] and 0 < alignment["median_shift_px"] < 1
    assert 0.05 < alignment["loss_scale_px"] < 1.0  # 2x the keypoint noise of 200 px renders (~0.1 px)
    # and with those poses guided matching finds more: the tracks that grew are aligned again (step 4f)
    again = full_report["extension_after_alignment"]
    assert again["observations_added"] > 0 and 0 < again["tracks_grown"] <= again["observations_added"]
    assert again["moved"] > 0.5 * again["realigned"]
    # and the points are tracked by patch alignment into the views where SIFT missed them (step 4g):
    # of the 50 views x the median view's observations tried, over a third join their tracks
    tracked = full_report["tracked_into_views"]
    assert tracked["per_view"] > 50 and 0.35 * tracked["candidates"] < tracked["added"] <= tracked["candidates"]
    assert tracked["observations_dropped"] < 0.2 * tracked["added"]
    assert tracked["loss_scale_px"] == again["loss_scale_px"]  # one adjustment after both steps
    # the keypoints that step 4g appended are in the exported database too, with descriptors, so
    # that COLMAP accepts the model with it (it checks the keypoint counts to continue mapping)...
    exported = ws.stage_dir("poses") / "colmap"
    model = pycolmap.Reconstruction(ws.stage_dir("poses") / "sparse")
    sift = {i: full_report["per_image"][Path(model.images[i].name).stem]["features"] for i in model.reg_image_ids()}
    db = pycolmap.Database.open(str(exported / "database.db"))
    counts = {i: (db.num_keypoints_for_image(i), db.num_descriptors_for_image(i)) for i in model.reg_image_ids()}
    db.close()
    assert all(k == d == len(model.images[i].points2D) for i, (k, d) in counts.items())
    assert sum(k - sift[i] for i, (k, _) in counts.items()) >= tracked["added"] - tracked["observations_dropped"]
    continued = tmp_path / "continued"
    (continued / "images").mkdir(parents=True)
    shutil.copy(exported / "database.db", continued / "database.db")
    maps = pycolmap.incremental_mapping(continued / "database.db", continued / "images", continued,
                                       input_path=ws.stage_dir("poses") / "sparse")
    assert max(m.num_reg_images() for m in maps.values()) == 50
    # ... and a later run that starts from that copy reads SIFT's keypoints only
    restored = tmp_path / "restored" / "database.db"
    restored.parent.mkdir()
    assert "sift_keypoints" not in restore_database(restored, exported)
    db = pycolmap.Database.open(str(restored))
    assert all(db.num_keypoints_for_image(i) == db.num_descriptors_for_image(i) == n for i, n in sift.items())
    db.close()
    ref = {f.name: f.c2w for f in read_scene(data).frames}
    est = ws.load_scene()
    errors = pose_errors(np.stack([f.c2w for f in est.frames]), np.stack([ref[f.name] for f in est.frames]))
    assert errors["rotation_deg_median"] <= 0.3
    assert errors["center_rel_median"] <= 0.005
