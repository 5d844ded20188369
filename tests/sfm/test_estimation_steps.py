"""Pose estimation's steps on their own (``pipeline.sfm``): images prepared for COLMAP, camera
parameters through COLMAP and back, the diagnosis of an image that did not register."""
import numpy as np
import pytest

from datasets.scene import Frame, Scene
from pipeline.geometry.cameras import Intrinsics
from pipeline.sfm.cameras import colmap_camera_params, intrinsics_from_colmap
from pipeline.sfm.diagnose import ImageStats, diagnose
from pipeline.sfm.prepare import prepare_images

pycolmap = pytest.importorskip("pycolmap")


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


def test_point_views_list_each_observation_by_frame():
    """The tracks of a COLMAP model as (point index, frame index) rows: the frames are the posed
    images in the order the scene keeps them; an observation in an image not kept is left out."""
    from types import SimpleNamespace as NS

    from pipeline.sfm.mapping import point_views

    images = {7: NS(name="b.jpg"), 3: NS(name="a.jpg"), 9: NS(name="dropped.jpg")}

    def point(*image_ids):
        return NS(track=NS(elements=[NS(image_id=i) for i in image_ids]))

    rec = NS(images=images, points3D={101: point(3, 7), 55: point(7, 9, 7)})
    np.testing.assert_array_equal(point_views(rec, ["a.jpg", "b.jpg"]), [[0, 0], [0, 1], [1, 1]])
