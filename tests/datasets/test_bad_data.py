"""Bad or unusual input data in the dataset readers (issue 26): images that are not 8-bit RGB are
converted correctly on load, undecodable images are named by ``datasets.validate.check_images``,
non-finite or non-rigid poses and non-finite intrinsics are rejected at read time naming the file
and frame, and frames of mixed sizes get their own intrinsics. Fixtures are a few 16x12 images
written here."""
from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from datasets import read_scene
from datasets.nerfstudio import opencv_to_opengl, read_blender, read_nerfstudio
from datasets.scene import Frame, Scene, SceneError, load_image_file, mask_from_image
from datasets.validate import check_images
from pipeline.geometry.cameras import Intrinsics
from tests.scenes import ring_poses

W, H = 16, 12


def _rgb(seed=0, width=W, height=H):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_png16(path, array):
    """A 16-bit PNG (grey, grey + alpha, RGB or RGBA by the channel count) written by hand: PIL
    cannot write 16-bit colour PNGs."""
    array = np.asarray(array, dtype=">u2")
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + array[y].tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------
# image modes


def test_grey_png_loads_as_rgb_with_the_grey_values(tmp_path):
    grey = _rgb()[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    img = load_image_file(tmp_path / "grey.png")
    assert img.shape == (H, W, 3) and img.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(np.round(img[..., c] * 255), grey)


def test_grey_alpha_png_loads_as_rgba_with_its_alpha(tmp_path):
    grey, alpha = _rgb(1)[..., 0], _rgb(2)[..., 0]
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save(tmp_path / "la.png")
    img = load_image_file(tmp_path / "la.png")
    assert img.shape == (H, W, 4)
    np.testing.assert_array_equal(np.round(img[..., :3] * 255), np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(np.round(img[..., 3] * 255), alpha)


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey-alpha", "rgb", "rgba"])
def test_16bit_png_keeps_16_bit_precision(tmp_path, channels):
    k = np.random.default_rng(channels).integers(0, 255, (H, W, channels))
    values = (257 * k + 1).astype(np.uint16)  # off the 8-bit grid: truncation to 8 bits loses the +1
    path = write_png16(tmp_path / "deep.png", values[..., 0] if channels == 1 else values)
    img = load_image_file(path)
    got = np.round(img.astype(np.float64) * 65535).astype(np.int64)
    expected = {1: np.repeat(values, 3, -1), 2: np.concatenate([np.repeat(values[..., :1], 3, -1), values[..., 1:]], -1),
                3: values, 4: values}[channels]
    assert img.shape == (H, W, 3 if channels in (1, 3) else 4)
    np.testing.assert_array_equal(got, expected)


def test_palette_png_with_transparency_loads_as_rgba(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255]  # 0 red, 1 green, 2 blue
    index = np.random.default_rng(3).integers(0, 3, (H, W)).astype(np.uint8)
    img = Image.fromarray(index, "P")
    img.putpalette(palette)
    img.save(tmp_path / "p_trns.png", transparency=2)  # blue is transparent
    img.save(tmp_path / "p.png")
    rgba = load_image_file(tmp_path / "p_trns.png")
    colours = np.array(palette, dtype=np.float32).reshape(3, 3) / 255
    assert rgba.shape == (H, W, 4)
    np.testing.assert_array_equal(rgba[..., :3], colours[index])
    np.testing.assert_array_equal(rgba[..., 3], (index != 2).astype(np.float32))
    rgb = load_image_file(tmp_path / "p.png")
    assert rgb.shape == (H, W, 3)
    np.testing.assert_array_equal(rgb, colours[index])


def test_cmyk_jpeg_loads_with_the_colours_it_was_made_from(tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 200, 40
    rgb[:, W // 2:, 2] = 120  # two flat halves: JPEG keeps flat colours within a few levels
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as check:
        assert check.mode == "CMYK"  # the fixture really is a CMYK JPEG
    img = load_image_file(tmp_path / "cmyk.jpg")
    assert img.shape == (H, W, 3)  # not 4 channels with K taken for alpha
    np.testing.assert_allclose(img, rgb / 255.0, atol=0.04)


def test_mask_file_with_an_opaque_alpha_uses_its_grey_values(tmp_path):
    mask = np.zeros((H, W), np.uint8)
    mask[3:9, 4:12] = 255
    Image.fromarray(np.stack([mask, np.full_like(mask, 255)], -1), "LA").save(tmp_path / "m.png")
    np.testing.assert_array_equal(mask_from_image(load_image_file(tmp_path / "m.png")), mask > 0)
    cut_out = np.stack([np.full_like(mask, 90)] * 3 + [mask], -1)  # RGBA cut-out: the alpha is the mask
    Image.fromarray(cut_out, "RGBA").save(tmp_path / "cut.png")
    np.testing.assert_array_equal(mask_from_image(load_image_file(tmp_path / "cut.png")), mask > 0)


# ---------------------------------------------------------------------------------------------
# nerfstudio / Blender fixtures


def write_transforms(root, frames, sizes=None, name="transforms.json", fmt="png", **header):
    """A transforms file with one image per frame dict (``file_path`` filled in); ``sizes`` gives
    each image's (width, height) (default 16x12); poses from a ring unless a frame has one."""
    root.mkdir(parents=True, exist_ok=True)
    poses = ring_poses(len(frames))
    out = []
    for i, frame in enumerate(frames):
        w, h = sizes[i] if sizes else (W, H)
        file_path = f"img{i}.{fmt}"
        Image.fromarray(_rgb(i, w, h)).save(root / file_path)
        out.append({"file_path": file_path, "transform_matrix": opencv_to_opengl(poses[i]).tolist(), **frame})
    header.setdefault("camera_angle_x", 0.8)
    (root / name).write_text(json.dumps({**header, "frames": out}))  # json writes NaN as NaN
    return root / name


def test_check_images_passes_a_good_scene_and_names_undecodable_images(tmp_path):
    path = write_transforms(tmp_path, [{}, {}, {}, {}])
    check_images(read_nerfstudio(path))  # a good scene passes
    png = (tmp_path / "img1.png").read_bytes()
    (tmp_path / "img1.png").write_bytes(png[:len(png) // 2])  # header intact, pixel data cut
    Image.fromarray(_rgb(3)).save(tmp_path / "img3.jpg", quality=90)
    jpg = (tmp_path / "img3.jpg").read_bytes()
    start_of_scan = jpg.index(b"\xff\xda")  # keep every header, cut the entropy-coded data in half
    (tmp_path / "img3.jpg").write_bytes(jpg[:start_of_scan + (len(jpg) - start_of_scan) // 2])
    data = json.loads(path.read_text())
    data["frames"][3]["file_path"] = "img3.jpg"
    path.write_text(json.dumps(data))
    scene = read_nerfstudio(path)  # headers are fine: the readers accept the scene
    with pytest.raises(SceneError) as err:
        check_images(scene)
    message = str(err.value)
    assert "img1.png" in message and "img3.jpg" in message and "img0.png" not in message and "img2.png" not in message
    assert "\n" not in message
    with pytest.raises(SceneError, match="img1.png"):
        load_image_file(tmp_path / "img1.png")


def test_check_images_names_an_image_whose_size_is_not_its_cameras(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.png")
    Image.fromarray(_rgb(1)).save(tmp_path / "b.png")
    frames = [Frame(tmp_path / "a.png", Intrinsics("pinhole", W, H, 20, 20, 8, 6), np.eye(4)),
              Frame(tmp_path / "b.png", Intrinsics("pinhole", 2 * W, 2 * H, 40, 40, 16, 12), np.eye(4))]
    with pytest.raises(SceneError, match=r"b\.png \(the image is 16x12 but its camera is 32x24"):
        check_images(Scene(frames))
    check_images(Scene(frames[:1]))


def test_check_images_decodes_hundreds_of_photos_quickly(tmp_path):
    import time

    rng = np.random.default_rng(0)
    for i in range(200):
        Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(tmp_path / f"{i:03d}.jpg")
    scene = read_scene(tmp_path, "photos")
    t0 = time.perf_counter()
    check_images(scene)
    assert time.perf_counter() - t0 < 5.0  # ~0.1 s here; generous for a loaded CI machine


# ---------------------------------------------------------------------------------------------
# poses and intrinsics


def _rotation(axis_angle):
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(axis_angle).as_matrix()


def _bad_pose(kind):
    m = np.eye(4)
    m[:3, :3] = _rotation([0.3, -0.2, 0.5])
    m[:3, 3] = [1.0, 2.0, 3.0]
    if kind == "nan":
        m[1, 3] = np.nan
    elif kind == "inf":
        m[0, 0] = np.inf
    elif kind == "scaled":
        m[:3, :3] *= 2.0
    elif kind == "shear":
        m[:3, :3] = m[:3, :3] @ np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    elif kind == "reflection":
        m[:3, 0] *= -1
    elif kind == "bottom-row":
        m[3] = [0.0, 0.0, 1.0, 1.0]
    return m


@pytest.mark.parametrize("kind", ["nan", "inf", "scaled", "shear", "reflection", "bottom-row"])
def test_nerfstudio_rejects_a_bad_pose_naming_file_and_frame(tmp_path, kind):
    path = write_transforms(tmp_path, [{}, {"transform_matrix": _bad_pose(kind).tolist()}, {}])
    with pytest.raises(SceneError) as err:
        read_nerfstudio(path)
    message = str(err.value)
    assert str(path) in message and "frame 1 (img1.png)" in message, message
    assert "\n" not in message


def test_pose_check_tolerates_float_noise(tmp_path):
    noisy = np.round(_bad_pose("none"), 4)  # four decimals, as some tools write them
    path = write_transforms(tmp_path, [{"transform_matrix": noisy.tolist()}, {}])
    np.testing.assert_allclose(opencv_to_opengl(read_nerfstudio(path).frames[0].c2w), noisy)


@pytest.mark.parametrize("change, words", [
    ({"fl_x": float("nan")}, "fl_x is nan"),
    ({"fl_x": float("inf")}, "fl_x is inf"),
    ({"fl_x": -20.0}, "must be positive"),
    ({"fl_x": 20.0, "cx": float("nan")}, "cx is nan"),
    ({"fl_x": 20.0, "k1": float("nan")}, "k1 is nan"),
    ({"w": 0, "h": 12}, "w=0"),
    ({"w": float("nan"), "h": 12}, "w is nan"),
    ({"camera_angle_x": 0.0}, "camera_angle_x=0.0"),
    ({"camera_angle_x": "wide"}, "camera_angle_x='wide' is not a number"),
])
def test_nerfstudio_rejects_bad_intrinsics_naming_file_and_frame(tmp_path, change, words):
    path = write_transforms(tmp_path, [{}, change])
    with pytest.raises(SceneError) as err:
        read_nerfstudio(path)
    assert str(path) in str(err.value) and "frame 1 (img1.png)" in str(err.value) and words in str(err.value)


def test_llff_rejects_a_nan_pose(tmp_path):
    from tests.datasets.test_readers import opencv_to_llff

    poses = ring_poses(3)
    rows = [np.concatenate([opencv_to_llff(c, H, W, 20.0).ravel(), [0.5, 10.0]]) for c in poses]
    rows[2][3] = np.nan  # the centre's x
    np.save(tmp_path / "poses_bounds.npy", np.stack(rows))
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(_rgb(i)).save(tmp_path / "images" / f"{i:03d}.png")
    with pytest.raises(SceneError, match=r"poses_bounds.npy: frame 2 \(002.png\): the pose holds NaN"):
        read_scene(tmp_path)


def test_idr_rejects_a_nan_camera(tmp_path):
    K = np.array([[20.0, 0, 8], [0, 20.0, 6], [0, 0, 1]])
    cams = {}
    for i, c2w in enumerate(ring_poses(3)):
        w2c = np.linalg.inv(c2w)
        cams[f"world_mat_{i}"] = K @ w2c[:3, :4]
        cams[f"scale_mat_{i}"] = np.eye(4)
    cams["world_mat_1"][0, 0] = np.nan
    np.savez(tmp_path / "cameras.npz", **cams)
    (tmp_path / "image").mkdir()
    for i in range(3):
        Image.fromarray(_rgb(i)).save(tmp_path / "image" / f"{i:03d}.png")
    with pytest.raises(SceneError, match=r"cameras.npz: frame 1 \(001.png\): world_mat_1 holds NaN"):
        read_scene(tmp_path)


def test_middlebury_rejects_a_scaled_rotation(tmp_path):
    lines = ["2"]
    for i, c2w in enumerate(ring_poses(2)):
        w2c = np.linalg.inv(c2w)
        R = w2c[:3, :3] * (2.0 if i == 1 else 1.0)
        K = [20, 0, 8, 0, 20, 6, 0, 0, 1]
        lines.append(" ".join([f"v{i}.png"] + [repr(float(v)) for v in [*K, *R.ravel(), *w2c[:3, 3]]]))
        Image.fromarray(_rgb(i)).save(tmp_path / f"v{i}.png")
    (tmp_path / "x_par.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(SceneError, match=r"x_par.txt: frame v1.png: the pose's 3x3 part is not a rotation"):
        read_scene(tmp_path)


def test_zind_panoramas_reject_a_nan_yaw(tmp_path):
    for i in range(2):
        Image.fromarray(_rgb(i, 32, 16)).save(tmp_path / f"p{i}.png")
    entries = [{"image": f"p{i}.png", "center_xy_m": [i, 0], "camera_height_m": 1.5, "yaw_deg": 0.0} for i in range(2)]
    entries[1]["yaw_deg"] = float("nan")
    (tmp_path / "poses.json").write_text(json.dumps({"panoramas": entries}))
    with pytest.raises(SceneError, match=r"poses.json: frame 1 \(p1.png\): the pose holds NaN"):
        read_scene(tmp_path, "panoramas")


def test_colmap_rejects_a_nan_pose(tmp_path):
    import pycolmap
    from tests.datasets.test_colmap import _colmap_camera

    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(_colmap_camera("PINHOLE", 1, [20.0, 20.0, 8.0, 6.0]))
    for i, c2w in enumerate(ring_poses(2), start=1):
        w2c = np.linalg.inv(c2w)[:3, :4]
        w2c[0, 3] = np.nan if i == 2 else w2c[0, 3]  # pycolmap writes and reads it back as it is
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"img{i}.png", camera_id=1, image_id=i),
                                         pycolmap.Rigid3d(w2c))
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.fromarray(_rgb(i, 32, 24)).save(tmp_path / "images" / f"img{i}.png")
    (tmp_path / "sparse" / "0").mkdir(parents=True)
    rec.write_binary(str(tmp_path / "sparse" / "0"))
    with pytest.raises(SceneError, match=r"sparse/0: frame img2.png: the pose holds NaN"):
        read_scene(tmp_path)


# ---------------------------------------------------------------------------------------------
# mixed image sizes


def test_blender_frames_of_mixed_sizes_get_their_own_intrinsics(tmp_path):
    from pipeline.training.nerf_data import PixelData

    angle = 0.8
    sizes = [(16, 12), (8, 6), (12, 16)]  # a full, a half-size and a portrait frame
    write_transforms(tmp_path, [{}, {}, {}], sizes=sizes, name="transforms_train.json", camera_angle_x=angle)
    scene = read_blender(tmp_path)
    for frame, (w, h) in zip(scene.frames, sizes):
        fx = 0.5 * w / math.tan(angle / 2)
        assert frame.intrinsics == Intrinsics("pinhole", w, h, fx, fx, w / 2, h / 2)
    check_images(scene)
    data = PixelData(scene, [0, 1, 2], "cpu", use_alpha=False)  # NeRF's loader takes per-frame sizes
    assert data.sizes == [(12, 16), (6, 8), (16, 12)] and data.num_pixels == 16 * 12 * 2 + 8 * 6


def test_nerfstudio_rescales_intrinsics_of_a_resized_image_and_refuses_another_aspect(tmp_path, recon_log):
    header = dict(w=W, h=H, fl_x=20.0, fl_y=21.0, cx=8.5, cy=6.5, camera_model="PINHOLE")
    path = write_transforms(tmp_path, [{}, {}], sizes=[(W, H), (W // 2, H // 2)], **header)
    scene = read_nerfstudio(path)
    assert scene.frames[0].intrinsics == Intrinsics("pinhole", W, H, 20.0, 21.0, 8.5, 6.5)
    assert scene.frames[1].intrinsics == Intrinsics("pinhole", W // 2, H // 2, 10.0, 10.5, 4.25, 3.25)
    assert "img1.png (8x6)" in recon_log.text
    path = write_transforms(tmp_path / "other", [{}, {}], sizes=[(W, H), (12, 12)], **header)
    with pytest.raises(SceneError, match=r"frame 1 \(img1.png\): the image is 12x12 but the file declares 16x12"):
        read_nerfstudio(path)


def test_per_frame_intrinsics_in_the_file_are_used(tmp_path):
    frames = [{}, {"w": 8, "h": 6, "fl_x": 11.0, "fl_y": 12.0, "cx": 4.0, "cy": 3.0}]
    path = write_transforms(tmp_path, frames, sizes=[(W, H), (8, 6)], w=W, h=H, fl_x=20.0, camera_model="PINHOLE")
    scene = read_nerfstudio(path)
    assert scene.frames[0].intrinsics == Intrinsics("pinhole", W, H, 20.0, 20.0, W / 2, H / 2)
    assert scene.frames[1].intrinsics == Intrinsics("pinhole", 8, 6, 11.0, 12.0, 4.0, 3.0)


def test_folders_without_poses_skip_an_undecodable_image_and_check_images_passes(tmp_path, recon_log):
    for kind, size in (("photos", (W, H)), ("panoramas", (32, 16))):
        folder = tmp_path / kind
        folder.mkdir()
        for i in range(3):
            Image.fromarray(_rgb(i, *size)).save(folder / f"{i}.jpg", quality=90)
        jpg = (folder / "1.jpg").read_bytes()
        start_of_scan = jpg.index(b"\xff\xda")
        (folder / "1.jpg").write_bytes(jpg[:start_of_scan + (len(jpg) - start_of_scan) // 2])
        scene = read_scene(folder, kind)
        assert [f.name for f in scene.frames] == ["0", "2"], kind
        assert "1.jpg" in recon_log.text
        check_images(scene)
