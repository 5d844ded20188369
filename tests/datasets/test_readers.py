"""The LLFF, IDR, Middlebury, photo-folder, panorama and nerfstudio readers on tiny fixtures written
here with known cameras; the nerfstudio writer round trip (COLMAP: ``test_colmap.py``). Images are
32x24 (``tests.scenes.W``, ``H``) unless a test needs otherwise."""
from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from datasets import detect_format, read_scene
from datasets.idr import decompose_projection, read_idr
from datasets.llff import read_llff
from datasets.middlebury import read_middlebury
from datasets.nerfstudio import read_nerfstudio, write_nerfstudio
from datasets.panoramas import read_panorama_folder, zind_c2w
from datasets.scene import Frame, Scene, SceneError
from pipeline.geometry.cameras import Intrinsics, look_at
from tests.scenes import H, W, ring_poses, write_images


# ---------------------------------------------------------------------------------------------
# LLFF


def opencv_to_llff(c2w, h, w, f):
    """The LLFF 3x5 block [down, right, backwards, centre, (h, w, f)] of an OpenCV c2w."""
    block = np.zeros((3, 5))
    block[:, 0], block[:, 1], block[:, 2] = c2w[:3, 1], c2w[:3, 0], -c2w[:3, 2]
    block[:, 3], block[:, 4] = c2w[:3, 3], (h, w, f)
    return block


def write_llff_fixture(root, n=9, focal=28.0):
    poses = ring_poses(n, seed=3)
    rows = [np.concatenate([opencv_to_llff(c, H, W, focal).ravel(), [0.5 + i, 10.0 + i]]) for i, c in enumerate(poses)]
    np.save(root / "poses_bounds.npy", np.stack(rows))
    write_images(root / "images", [f"{i:03d}.JPG" for i in range(n)])  # upper-case suffix on purpose
    write_images(root / "images_2", [f"{i:03d}.png" for i in range(n)], width=W // 2, height=H // 2)
    return poses


def test_llff_reader_converts_axes_and_keeps_bounds(tmp_path):
    poses = write_llff_fixture(tmp_path)
    assert detect_format(tmp_path) == "llff"
    scene = read_scene(tmp_path)
    assert len(scene) == 9
    for frame, c2w in zip(scene.frames, poses):
        np.testing.assert_allclose(frame.c2w, c2w, atol=1e-12)
        assert frame.intrinsics == Intrinsics("pinhole", W, H, 28.0, 28.0, W / 2, H / 2)
    assert scene.splits["test"] == [0, 8]
    assert scene.meta["near_far"][3] == [3.5, 13.0]


def test_llff_reader_scales_intrinsics_for_downscaled_images(tmp_path):
    write_llff_fixture(tmp_path)
    scene = read_llff(tmp_path, factor=2)
    assert scene.frames[0].image_path.parent.name == "images_2"
    assert scene.frames[0].intrinsics == Intrinsics("pinhole", W // 2, H // 2, 14.0, 14.0, W / 4, H / 4)
    with pytest.raises(SceneError, match="images_4"):
        read_llff(tmp_path, factor=4)


# ---------------------------------------------------------------------------------------------
# IDR / DTU


def write_idr_fixture(root, n=3):
    """cameras.npz with world_mat = s * K [R | t] (original units) and a scale_mat that puts the
    object in the unit sphere. Returns (K list, c2w in the normalised frame list, scale_mat)."""
    scale_mat = np.eye(4)
    scale_mat[:3, :3] *= 2.5  # normalised -> original: X = 2.5 x + centre
    scale_mat[:3, 3] = [10.0, -4.0, 3.0]
    data, Ks, c2ws = {}, [], []
    for i, c2w_norm in enumerate(ring_poses(n, radius=2.5, seed=5)):
        K = np.array([[30.0 + i, 0.0, 15.7], [0.0, 31.0 - i, 12.2], [0.0, 0.0, 1.0]])
        c2w_world = c2w_norm.copy()
        c2w_world[:3, 3] = scale_mat[:3, :3] @ c2w_norm[:3, 3] + scale_mat[:3, 3]
        world_mat = np.eye(4)
        world_mat[:3, :4] = K @ np.linalg.inv(c2w_world)[:3, :4] * (-2.0 if i == 1 else 3.0)  # any scale
        data[f"world_mat_{i}"], data[f"scale_mat_{i}"] = world_mat, scale_mat
        Ks.append(K)
        c2ws.append(c2w_norm)
    np.savez(root / "cameras.npz", **data)
    write_images(root / "image", [f"{i:06d}.png" for i in range(n)])
    write_images(root / "mask", [f"{i:03d}.png" for i in range(n)])
    return Ks, c2ws, scale_mat


def test_idr_reader_recovers_intrinsics_and_normalised_poses(tmp_path):
    Ks, c2ws, scale_mat = write_idr_fixture(tmp_path)
    assert detect_format(tmp_path) == "idr"
    scene = read_scene(tmp_path)
    for frame, K, c2w in zip(scene.frames, Ks, c2ws):
        k = frame.intrinsics
        np.testing.assert_allclose([k.fx, k.fy, k.cx, k.cy], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]], atol=1e-6)
        np.testing.assert_allclose(frame.c2w, c2w, atol=1e-6)
        assert frame.mask_path is not None and frame.mask_path.parent.name == "mask"
    np.testing.assert_array_equal(scene.bounds, [[-1, -1, -1], [1, 1, 1]])
    np.testing.assert_array_equal(scene.meta["recon"]["idr_scale_mat"], scale_mat)


def test_decompose_projection_handles_negative_scale():
    K = np.array([[500.0, 0.0, 320.0], [0.0, 480.0, 240.0], [0.0, 0.0, 1.0]])
    c2w = look_at([1.0, -2.0, 0.5], [0, 0, 0])
    P = -7.0 * K @ np.linalg.inv(c2w)[:3, :4]
    K_back, c2w_back = decompose_projection(P)
    np.testing.assert_allclose(K_back, K, atol=1e-9)
    np.testing.assert_allclose(c2w_back, c2w, atol=1e-12)


def test_idr_reader_requires_one_image_per_camera(tmp_path):
    write_idr_fixture(tmp_path)
    (tmp_path / "image" / "000002.png").unlink()
    with pytest.raises(SceneError, match="2 images but cameras.npz has 3 cameras"):
        read_idr(tmp_path)


# ---------------------------------------------------------------------------------------------
# Middlebury


def test_middlebury_reader_inverts_world_to_camera(tmp_path, recon_log):
    poses = ring_poses(3, seed=6)
    K = np.array([[40.0, 0.0, 15.3], [0.0, 41.0, 11.8], [0.0, 0.0, 1.0]])
    lines = ["3"]
    for i, c2w in enumerate(poses):
        w2c = np.linalg.inv(c2w)
        values = [*K.ravel(), *w2c[:3, :3].ravel(), *w2c[:3, 3]]
        lines.append(f"obj{i}.png " + " ".join(repr(float(v)) for v in values))
    (tmp_path / "obj_par.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "README.txt").write_text("The (tight) bounding box for the model is\n(-0.1 0.02 -0.01)\n(0.03 0.2 0.06)\n")
    write_images(tmp_path, ["obj0.png", "obj2.png"])  # obj1.png is missing
    assert detect_format(tmp_path) == "middlebury"
    scene = read_scene(tmp_path)
    assert [f.name for f in scene.frames] == ["obj0", "obj2"]
    np.testing.assert_allclose(scene.frames[1].c2w, poses[2], atol=1e-12)
    assert scene.frames[0].intrinsics == Intrinsics("pinhole", W, H, 40.0, 41.0, 15.3, 11.8)
    np.testing.assert_allclose(scene.bounds, [[-0.1, 0.02, -0.01], [0.03, 0.2, 0.06]])
    assert sum("obj1.png" in r.getMessage() for r in recon_log.records) == 1


def test_middlebury_reader_rejects_a_short_line(tmp_path):
    (tmp_path / "x_par.txt").write_text("1\nimg.png 1 0 0\n")
    with pytest.raises(SceneError, match=r"x_par.txt:2: expected 'name' \+ 21 numbers"):
        read_middlebury(tmp_path)


# ---------------------------------------------------------------------------------------------
# Photos


def write_jpeg_with_exif(path, width, height, tags):
    from PIL import Image

    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (height, width, 3), dtype=np.uint8))
    exif = Image.Exif()
    for tag, value in tags.items():
        if tag in (0x0112,):
            exif[tag] = value
        else:
            exif.get_ifd(0x8769)[tag] = value
    img.save(path, exif=exif)


def test_photo_folder_guesses_intrinsics_and_survives_a_corrupt_file(tmp_path, recon_log):
    folder = tmp_path / "photos"
    folder.mkdir()
    write_jpeg_with_exif(folder / "a_exif35.jpg", 36, 24, {0xA405: 50})  # 50 mm equivalent, 3:2
    write_jpeg_with_exif(folder / "b_portrait.JPG", 32, 24, {0x0112: 6})  # stored landscape, shown portrait
    write_images(folder, ["c_plain.png"])
    (folder / "d_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    assert detect_format(folder) == "photos"
    scene = read_scene(folder)
    assert [f.name for f in scene.frames] == ["a_exif35", "b_portrait", "c_plain"]
    assert not scene.has_poses and all(f.c2w is None for f in scene.frames)
    a, b, c = (f.intrinsics for f in scene.frames)
    assert math.isclose(a.fx, 50.0, rel_tol=1e-12)  # 50 mm on a 36 mm wide frame of 36 px = 50 px
    assert (b.width, b.height) == (24, 32) and b.fx == pytest.approx(1.2 * 32)
    assert (c.cx, c.cy, c.fx) == (16.0, 12.0, pytest.approx(1.2 * 32))
    assert scene.load_image(1).shape == (32, 24, 3)  # the loader agrees with the rotated size
    assert scene.meta["unreadable"] == ["d_broken.jpg"]
    assert scene.meta["exif_focal"] == {"a_exif35": True, "b_portrait": False, "c_plain": False}
    assert sum("d_broken.jpg" in r.getMessage() for r in recon_log.records) == 1


def test_photo_focal_from_focal_plane_resolution(tmp_path):
    from datasets.photos import focal_from_exif

    # 4 mm lens, sensor 6.4 mm wide at 4000 px (FocalPlaneXResolution in px per cm), image resized to 640 px
    tags = {0x920A: 4.0, 0xA20E: 4000 / 0.64, 0xA210: 3, 0xA002: 4000, 0xA003: 3000}
    assert focal_from_exif(tags, 640, 480) == pytest.approx(4.0 / 6.4 * 640)
    assert focal_from_exif({0x920A: 4.0}, 640, 480) is None  # no sensor size: caller falls back


# ---------------------------------------------------------------------------------------------
# Panoramas


def test_panorama_folder_without_poses(tmp_path):
    write_images(tmp_path / "panos", ["p0.jpg", "p1.jpg"], width=64, height=32)
    assert detect_format(tmp_path) == "panoramas"
    scene = read_scene(tmp_path)
    assert [f.intrinsics for f in scene.frames] == [Intrinsics("equirect", 64, 32)] * 2
    assert not scene.has_poses


def test_panorama_folder_names_and_skips_a_non_equirect_image(tmp_path):
    write_images(tmp_path / "panos", ["ok.jpg"], width=64, height=32)
    write_images(tmp_path / "panos", ["wide.jpg"], width=60, height=32)
    scene = read_panorama_folder(tmp_path)
    assert [f.name for f in scene.frames] == ["ok"]
    assert "2 x height" in scene.meta["skipped"]["wide.jpg"]
    write_images(tmp_path / "only_wide", ["wide.jpg"], width=60, height=32)
    with pytest.raises(SceneError, match="none of the 1 images is a 2:1"):
        read_panorama_folder(tmp_path / "only_wide")


def test_panorama_folder_with_zind_poses(tmp_path):
    write_images(tmp_path / "panos", ["a.jpg", "b.jpg"], width=64, height=32)
    entries = [{"image": "panos/a.jpg", "center_xy_m": [1.0, 2.0], "camera_height_m": 1.5, "yaw_deg": 0.0},
               {"image": "panos/b.jpg", "center_xy_m": [-3.0, 0.5], "camera_height_m": 1.4, "yaw_deg": 90.0}]
    (tmp_path / "poses.json").write_text(json.dumps({"panoramas": entries}))
    scene = read_panorama_folder(tmp_path)
    a, b = scene.frames
    np.testing.assert_allclose(a.c2w[:3, 3], [1.0, -2.0, 1.5])  # plan y mirrored, height on z
    np.testing.assert_allclose(a.c2w[:3, 1], [0, 0, -1], atol=1e-15)  # image down = world down
    # centre column of yaw 0 looks along plan angle +90 deg (ZInD), i.e. world -y after the mirror
    np.testing.assert_allclose(a.c2w[:3, 2], [0, -1, 0], atol=1e-15)
    np.testing.assert_allclose(b.c2w, zind_c2w([-3.0, 0.5], 1.4, 90.0))
    assert all(math.isclose(np.linalg.det(f.c2w[:3, :3]), 1.0) for f in scene.frames)
    assert scene.meta["plan_xy_m"]["b"] == [-3.0, 0.5]


# ---------------------------------------------------------------------------------------------
# nerfstudio writer -> reader


def test_nerfstudio_write_read_round_trip_is_exact(tmp_path):
    paths = write_images(tmp_path / "images", [f"f{i}.png" for i in range(4)])
    masks = write_images(tmp_path / "masks", [f"f{i}.png" for i in range(4)])
    depth = tmp_path / "depth" / "f0.npy"
    depth.parent.mkdir()
    np.save(depth, np.ones((H, W), np.float32))
    intrinsics = [Intrinsics("pinhole", W, H, 30.123456789, 31.1, 16.05, 11.95),
                  Intrinsics("opencv", W, H, 30.0, 30.0, 16.0, 12.0, (0.1, -0.02, 0.001, 0.0015, 0.003)),
                  Intrinsics("fisheye", W, H, 20.0, 20.1, 16.0, 12.0, (0.01, -0.002, 0.0003, -0.00004)),
                  Intrinsics("equirect", W, H // 2 * 2)]
    rng = np.random.default_rng(8)
    poses = [c @ np.diag([1, 1, 1, 1.0]) + np.pad(rng.normal(size=(3, 4)) * 1e-9, ((0, 1), (0, 0)))
             for c in ring_poses(4, seed=8)]  # non-round numbers
    frames = [Frame(p, k, c2w, mask_path=m, depth_path=depth if i == 0 else None)
              for i, (p, k, c2w, m) in enumerate(zip(paths, intrinsics, poses, masks))]
    scene = Scene(frames, {"train": [0, 1], "val": [2], "test": [3]}, bounds=[[-1, -2, -3], [1, 2, 3]])
    out = write_nerfstudio(scene, tmp_path / "transforms.json")
    back = read_nerfstudio(out)
    assert [f.intrinsics for f in back.frames] == intrinsics
    for a, b in zip(scene.frames, back.frames):
        assert np.array_equal(a.c2w, b.c2w)  # bit for bit
        assert (a.image_path, a.mask_path, a.depth_path) == (b.image_path, b.mask_path, b.depth_path)
    assert back.splits == scene.splits
    np.testing.assert_array_equal(back.bounds, scene.bounds)


def test_nerfstudio_reader_skips_missing_images_with_one_warning(tmp_path, recon_log):
    write_images(tmp_path / "images", ["a.png", "c.png"])
    frames = [{"file_path": f"images/{n}.png", "transform_matrix": np.eye(4).tolist()} for n in "abcd"]
    (tmp_path / "transforms.json").write_text(json.dumps(
        {"camera_model": "PINHOLE", "fl_x": 30, "fl_y": 30, "cx": 16, "cy": 12, "w": W, "h": H, "frames": frames}))
    scene = read_scene(tmp_path)
    assert [f.name for f in scene.frames] == ["a", "c"]
    warnings = [r.getMessage() for r in recon_log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "images/b.png" in warnings[0] and "images/d.png" in warnings[0]
