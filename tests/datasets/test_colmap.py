"""The COLMAP reader on models written by pycolmap itself with known cameras (binary and text), and
the COLMAP text writer round trip. Images are 32x24 (``tests.scenes.W``, ``H``)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from datasets import detect_format, read_scene
from datasets.colmap import read_colmap, read_colmap_points, scene_to_reconstruction, write_colmap_text
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.cameras import Intrinsics
from tests.scenes import H, W, ring_poses, write_images


def _colmap_camera(model, camera_id, params):
    import pycolmap

    cam = pycolmap.Camera.create_from_model_name(camera_id, model, 30.0, W, H)
    cam.params = params
    return cam


COLMAP_CASES = [  # COLMAP model, params, expected recon intrinsics
    ("PINHOLE", [30.0, 31.0, 16.2, 11.9], Intrinsics("pinhole", W, H, 30.0, 31.0, 16.2, 11.9)),
    ("SIMPLE_RADIAL", [29.0, 16.0, 12.0, 0.05], Intrinsics("opencv", W, H, 29.0, 29.0, 16.0, 12.0, (0.05,))),
    ("OPENCV", [30.0, 31.0, 16.0, 12.0, -0.1, 0.01, 0.001, -0.002],
     Intrinsics("opencv", W, H, 30.0, 31.0, 16.0, 12.0, (-0.1, 0.01, 0.001, -0.002, 0.0))),
    ("OPENCV_FISHEYE", [20.0, 20.5, 16.0, 12.0, 0.01, -0.02, 0.003, -0.004],
     Intrinsics("fisheye", W, H, 20.0, 20.5, 16.0, 12.0, (0.01, -0.02, 0.003, -0.004))),
    ("RADIAL_FISHEYE", [21.0, 16.0, 12.0, 0.02, -0.01],
     Intrinsics("fisheye", W, H, 21.0, 21.0, 16.0, 12.0, (0.02, -0.01))),
]


def write_colmap_fixture(root, binary, cases=COLMAP_CASES):
    """A COLMAP model with one camera and image per case (written with pycolmap itself), images/
    beside it and two sparse points; returns the expected OpenCV c2w per image name."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    expected = {}
    for i, ((model, params, _), c2w) in enumerate(zip(cases, ring_poses(len(cases))), start=1):
        rec.add_camera_with_trivial_rig(_colmap_camera(model, i, params))
        w2c = np.linalg.inv(c2w)
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"img{i}.png", camera_id=i, image_id=i),
                                         pycolmap.Rigid3d(w2c[:3, :4]))
        expected[f"img{i}"] = c2w
    rec.add_point3D(np.array([0.1, 0.2, 0.3]), pycolmap.Track(), np.array([255, 0, 10], dtype=np.uint8))
    rec.add_point3D(np.array([-1.0, 0.5, 2.0]), pycolmap.Track(), np.array([1, 2, 3], dtype=np.uint8))
    model_dir = root / "sparse" / "0"
    model_dir.mkdir(parents=True)
    (rec.write_binary if binary else rec.write_text)(str(model_dir))
    write_images(root / "images", [f"img{i}.png" for i in range(1, len(cases) + 1)])
    return expected


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_colmap_reader_returns_the_cameras_and_poses_written(tmp_path, binary):
    expected = write_colmap_fixture(tmp_path, binary)
    assert detect_format(tmp_path) == "colmap"
    scene = read_scene(tmp_path, test_every=0)
    assert [f.name for f in scene.frames] == sorted(expected)
    for frame, (_, _, intr) in zip(scene.frames, COLMAP_CASES):
        assert frame.intrinsics == intr
        np.testing.assert_allclose(frame.c2w, expected[frame.name], atol=1e-12)
    xyz, rgb = read_colmap_points(tmp_path)
    order = np.argsort(xyz[:, 0])
    np.testing.assert_allclose(xyz[order], [[-1.0, 0.5, 2.0], [0.1, 0.2, 0.3]])
    assert rgb[order].tolist() == [[1, 2, 3], [255, 0, 10]]


def test_colmap_reader_holds_out_every_eighth_image_by_default(tmp_path):
    cases = [COLMAP_CASES[0]] * 10
    write_colmap_fixture(tmp_path, binary=True, cases=cases)
    scene = read_colmap(tmp_path)
    assert scene.splits["test"] == [0, 8] and len(scene.splits["train"]) == 8


def test_colmap_reader_rejects_unsupported_models_with_a_hint(tmp_path):
    write_colmap_fixture(tmp_path, binary=True, cases=[("FOV", [30.0, 31.0, 16.0, 12.0, 0.5], None)])
    with pytest.raises(SceneError, match="FOV.*image_undistorter"):
        read_colmap(tmp_path)


def test_colmap_reader_skips_missing_images_with_one_warning(tmp_path, recon_log):
    write_colmap_fixture(tmp_path, binary=True)
    (tmp_path / "images" / "img2.png").unlink()
    scene = read_colmap(tmp_path, test_every=0)
    assert "img2" not in [f.name for f in scene.frames] and len(scene) == len(COLMAP_CASES) - 1
    warnings = [r for r in recon_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "img2.png" in warnings[0].getMessage()


def test_write_colmap_text_round_trips_a_scene(tmp_path):
    paths = write_images(tmp_path / "data" / "images", ["a.png", "b.png", "c.png"])
    intrinsics = [Intrinsics("pinhole", W, H, 30.0, 30.5, 16.0, 12.0),
                  Intrinsics("opencv", W, H, 30.0, 30.5, 16.0, 12.0, (0.1, -0.01, 0.001, 0.002, 0.003)),
                  Intrinsics("fisheye", W, H, 25.0, 25.0, 16.0, 12.0, (0.01, 0.02, -0.01, 0.001))]
    scene = Scene([Frame(p, k, c2w) for p, k, c2w in zip(paths, intrinsics, ring_poses(3))])
    write_colmap_text(scene, tmp_path / "data" / "sparse" / "0")
    back = read_colmap(tmp_path / "data", test_every=0)
    assert [f.intrinsics for f in back.frames] == intrinsics
    for a, b in zip(scene.frames, back.frames):
        np.testing.assert_allclose(b.c2w, a.c2w, atol=1e-12)
    assert scene_to_reconstruction(scene).num_cameras() == 3
