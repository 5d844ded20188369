"""The Strecha ``.camera`` reader (fixtures written here from known cameras, and the real
Herz-Jesu-P8 when ``../shared/data`` is present) and known intrinsics from a file
(``datasets.intrinsics``: .camera, COLMAP cameras.txt / .bin, transforms.json)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datasets import detect_format, read_scene
from datasets.colmap import write_colmap_text, scene_to_reconstruction
from datasets.intrinsics import intrinsics_for_image, read_intrinsics_file
from datasets.scene import Frame, Scene, SceneError
from datasets.strecha import read_strecha
from pipeline.geometry.cameras import Cameras, Intrinsics
from tests.scenes import H, W, ring_poses, write_images

K = np.array([[40.0, 0.0, 15.3], [0.0, 41.0, 11.8], [0.0, 0.0, 1.0]])


def camera_text(K, R, C, size=(W, H), dist=(0.0, 0.0, 0.0)) -> str:
    """A .camera file as the benchmark writes it (trailing spaces included)."""
    rows = [*K, dist, *R, C]
    return "".join(" ".join(np.format_float_positional(float(v), trim="-") for v in row) + " \n" for row in rows) + f"{size[0]} {size[1]}\n"


def write_strecha(root, poses, names, K=K, size=(W, H), folder="cameras", dist=(0.0, 0.0, 0.0)):
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name, c2w in zip(names, poses):
        (root / folder / f"{name}.camera").write_text(camera_text(K, c2w[:3, :3], c2w[:3, 3], size, dist))


def test_strecha_reader_round_trip_and_skips_unmatched_files(tmp_path, recon_log):
    poses = ring_poses(4, seed=2)
    write_images(tmp_path, ["0000.png", "0001.png", "0002.png", "0003.png"])
    write_strecha(tmp_path, poses[:3], ["0000.png", "0001.png", "0002.png"])  # 0003.png has no camera
    write_strecha(tmp_path, poses[3:], ["0009.png"])  # a camera without image
    assert detect_format(tmp_path) == "strecha"
    scene = read_scene(tmp_path)
    assert [f.name for f in scene.frames] == ["0000", "0001", "0002"]
    for frame, c2w in zip(scene.frames, poses):
        np.testing.assert_allclose(frame.c2w, c2w, atol=1e-14)
        assert frame.intrinsics == Intrinsics("pinhole", W, H, 40.0, 41.0, 15.3, 11.8)
    messages = [r.getMessage() for r in recon_log.records]
    assert sum("0003.png" in m for m in messages) == 1 and sum("0009.png.camera" in m for m in messages) == 1


def test_strecha_convention_projects_a_point_where_the_format_says(tmp_path):
    # camera at C looking along world +y: its x axis is world +x, its y axis (down) world -z
    R = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # columns: x, y, z axes in world
    C = np.array([0.5, -5.0, 0.25])
    write_images(tmp_path, ["a.png"])
    (tmp_path / "a.png.camera").write_text(camera_text(K, R, C))  # the original layout: beside the image
    scene = read_strecha(tmp_path)
    X = np.array([1.5, 5.0, 2.25])  # 10 in front, 1 right, 2 up of the camera
    expected = [40.0 * 1.0 / 10.0 + 15.3, 41.0 * -2.0 / 10.0 + 11.8]  # x = K R^T (X - C)
    cams = Cameras.from_intrinsics([scene.frames[0].intrinsics], scene.frames[0].c2w[None], dtype=torch.float64)
    uv, depth = cams.project_world(torch.tensor(X[None, None]))
    np.testing.assert_allclose(uv.reshape(2).numpy(), expected, atol=1e-9)
    assert float(depth.reshape(-1)[0]) == pytest.approx(10.0)


def test_strecha_stem_named_cameras_distortion_and_downscaled_images(tmp_path):
    poses = ring_poses(2, seed=5)
    write_images(tmp_path / "images", ["x.jpg", "y.jpg"], width=W // 2, height=H // 2)
    write_strecha(tmp_path, poses, ["x", "y"], size=(W, H), folder="gt_dense_cameras", dist=(-0.1, 0.02, 0.0))
    assert detect_format(tmp_path) == "strecha"
    scene = read_strecha(tmp_path)
    intr = scene.frames[1].intrinsics
    assert (intr.model, intr.width, intr.height) == ("opencv", W // 2, H // 2)
    assert intr.dist == (-0.1, 0.02, 0.0, 0.0, 0.0)
    assert (intr.fx, intr.cx) == pytest.approx((20.0, 7.65))


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("\n", "\n0 0 0\n", 1), r"expected 9 lines"),
    (lambda t: t.replace("40 0 15.3", "40 0 nan", 1), r"NaN or infinite"),
    (lambda t: "\n".join(" ".join(str(2 * float(v)) for v in ln.split()) if 4 <= i <= 6 else ln
                         for i, ln in enumerate(t.splitlines())), r"not a rotation"),
    (lambda t: t.replace("40 0 15.3", "40 abc 15.3", 1), r":1: non-numeric"),
])
def test_strecha_rejects_a_bad_camera_file_naming_it(tmp_path, edit, message):
    write_images(tmp_path, ["a.png"])
    write_strecha(tmp_path, ring_poses(1, seed=1), ["a.png"])
    path = tmp_path / "cameras" / "a.png.camera"
    path.write_text(edit(path.read_text()))
    with pytest.raises(SceneError, match=r"a\.png\.camera.*" + message):
        read_strecha(tmp_path)


# ---------------------------------------------------------------------------------------------
# Known intrinsics from a file


def test_intrinsics_from_camera_files(tmp_path):
    poses = ring_poses(2, seed=4)
    write_strecha(tmp_path, poses, ["a.jpg", "b"], size=(3072, 2048))
    single = read_intrinsics_file(tmp_path / "cameras" / "a.jpg.camera")
    assert single == Intrinsics("pinhole", 3072, 2048, 40.0, 41.0, 15.3, 11.8)
    per_image = read_intrinsics_file(tmp_path)  # the dataset folder: its cameras/
    assert per_image == {"a.jpg": single, "b": single}
    # looked up by file name, then stem; rescaled to the image's size on disk
    half = intrinsics_for_image(per_image, tmp_path / "b.jpg", (1536, 1024))
    assert (half.width, half.fx, half.cy) == (1536, 20.0, 5.9)
    assert intrinsics_for_image(per_image, tmp_path / "c.jpg", (3072, 2048)) is None
    with pytest.raises(SceneError, match=r"a different aspect ratio"):
        intrinsics_for_image(single, tmp_path / "a.jpg", (3072, 3072))


def test_intrinsics_from_colmap_cameras_txt_every_model(tmp_path):
    lines = ["# Camera list with one line of data per camera:",
             "1 SIMPLE_PINHOLE 640 480 500 320 240",
             "2 PINHOLE 640 480 500 510 321 241",
             "3 SIMPLE_RADIAL 640 480 500 320 240 -0.05",
             "4 RADIAL 640 480 500 320 240 -0.05 0.01",
             "5 OPENCV 640 480 500 510 320 240 -0.05 0.01 0.001 -0.002"]
    expected = [Intrinsics("pinhole", 640, 480, 500, 500, 320, 240),
                Intrinsics("pinhole", 640, 480, 500, 510, 321, 241),
                Intrinsics("opencv", 640, 480, 500, 500, 320, 240, (-0.05,)),
                Intrinsics("opencv", 640, 480, 500, 500, 320, 240, (-0.05, 0.01)),
                Intrinsics("opencv", 640, 480, 500, 510, 320, 240, (-0.05, 0.01, 0.001, -0.002))]
    for line, want in zip(lines[1:], expected):
        (tmp_path / "cameras.txt").write_text(lines[0] + "\n" + line + "\n")
        assert read_intrinsics_file(tmp_path / "cameras.txt") == want
    (tmp_path / "cameras.txt").write_text("\n".join(lines) + "\n")  # several cameras, no images.txt
    with pytest.raises(SceneError, match=r"cameras\.txt: 5 different cameras but no images"):
        read_intrinsics_file(tmp_path / "cameras.txt")
    (tmp_path / "cameras.txt").write_text("1 OPENCV_FISHEYE 640 480 500 500 320 240 0 0 0 0\n")
    with pytest.raises(SceneError, match=r"cameras\.txt: camera 1 uses COLMAP model OPENCV_FISHEYE"):
        read_intrinsics_file(tmp_path / "cameras.txt")
    (tmp_path / "cameras.txt").write_text("1 PINHOLE 640 480 500 320 240\n")
    with pytest.raises(SceneError, match=r"needs 4 parameters"):
        read_intrinsics_file(tmp_path / "cameras.txt")


@pytest.mark.parametrize("binary", [False, True])
def test_intrinsics_from_a_colmap_model_per_image(tmp_path, binary):
    a = Intrinsics("pinhole", W, H, 40.0, 41.0, 15.3, 11.8)
    b = Intrinsics("opencv", W, H, 30.0, 30.0, 16.0, 12.0, (-0.1, 0.0, 0.0, 0.0, 0.0))
    paths = write_images(tmp_path / "images", ["0.png", "1.png", "2.png"])
    scene = Scene([Frame(p, intr, c) for p, intr, c in zip(paths, (a, b, a), ring_poses(3, seed=7))])
    model = tmp_path / "sparse" / "0"
    if binary:
        model.mkdir(parents=True)
        scene_to_reconstruction(scene).write_binary(str(model))
    else:
        write_colmap_text(scene, model)
    assert read_intrinsics_file(tmp_path) == {"0.png": a, "1.png": b, "2.png": a}
    one = Scene([Frame(p, a, c) for p, c in zip(paths, ring_poses(3, seed=7))])
    write_colmap_text(one, tmp_path / "one")
    assert read_intrinsics_file(tmp_path / "one" / "cameras.txt") == a


def test_intrinsics_from_transforms_json(tmp_path):
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"fl_x": 2759.48, "fl_y": 2764.16, "cx": 1520.69, "cy": 1006.81, "w": 3072,
                                "h": 2048, "k1": 0.0, "frames": []}))
    assert read_intrinsics_file(path) == Intrinsics("pinhole", 3072, 2048, 2759.48, 2764.16, 1520.69, 1006.81)
    path.write_text(json.dumps({"fl_x": 500, "cx": 320, "cy": 240, "w": 640, "h": 480, "k1": -0.1, "p2": 0.01}))
    assert read_intrinsics_file(tmp_path) == Intrinsics("opencv", 640, 480, 500, 500, 320, 240,
                                                        (-0.1, 0.0, 0.0, 0.01, 0.0))
    path.write_text(json.dumps({"w": 640, "h": 480, "frames": [
        {"file_path": "images/a.png", "fl_x": 500, "cx": 320, "cy": 240}]}))
    assert read_intrinsics_file(path) == {"images/a.png": Intrinsics("pinhole", 640, 480, 500, 500, 320, 240)}
    path.write_text(json.dumps({"fl_x": 500, "cx": 320, "cy": 240, "w": 640}))
    with pytest.raises(SceneError, match=r"transforms\.json: top level: h is missing"):
        read_intrinsics_file(path)
    path.write_text(json.dumps({"camera_angle_x": 0.8}))
    with pytest.raises(SceneError, match=r"transforms\.json: no fl_x"):
        read_intrinsics_file(path)


def test_intrinsics_file_of_an_unknown_kind_is_named(tmp_path):
    (tmp_path / "calib.yaml").write_text("fx: 500\n")
    with pytest.raises(SceneError, match=r"calib\.yaml: not a known intrinsics file"):
        read_intrinsics_file(tmp_path / "calib.yaml")
    with pytest.raises(SceneError, match=r"no intrinsics file in this folder"):
        read_intrinsics_file(tmp_path)
    with pytest.raises(SceneError, match=r"missing\.txt: intrinsics file not found"):
        read_intrinsics_file(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------
# The real Herz-Jesu-P8


def _epipolar_distances(scene, i, j, rotations, scale):
    """Symmetric epipolar distances (px at ``scale``) of SIFT matches between frames i and j
    under the given camera-to-world rotations and the scene's centres and K."""
    import cv2

    sift = cv2.SIFT_create(4000)
    pts, descs = [], []
    for k in (i, j):
        img = cv2.imread(str(scene.frames[k].image_path), cv2.IMREAD_GRAYSCALE)
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        kp, d = sift.detectAndCompute(img, None)
        pts.append(np.array([p.pt for p in kp]) + 0.5)
        descs.append(d)
    matches = [m for m, n in cv2.BFMatcher().knnMatch(descs[0], descs[1], k=2) if m.distance < 0.7 * n.distance]
    xi = np.c_[pts[0][[m.queryIdx for m in matches]], np.ones(len(matches))]
    xj = np.c_[pts[1][[m.trainIdx for m in matches]], np.ones(len(matches))]
    Ki_inv = [np.linalg.inv(scene.frames[k].intrinsics.scaled(scale).K()) for k in (i, j)]
    Ci, Cj = scene.frames[i].c2w[:3, 3], scene.frames[j].c2w[:3, 3]
    Rij, t = rotations[j].T @ rotations[i], rotations[j].T @ (Ci - Cj)  # x_j = Rij x_i + t
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ Rij
    F = Ki_inv[1].T @ E @ Ki_inv[0]
    lj, li = xi @ F.T, xj @ F
    d = np.abs(np.sum(lj * xj, 1)) * (1 / np.linalg.norm(lj[:, :2], axis=1) + 1 / np.linalg.norm(li[:, :2], axis=1))
    return 0.5 * d


def test_herzjesu_p8_cameras_face_the_facade_and_fit_sift_matches(shared_data):
    scene = read_scene(shared_data("herzjesu-p8"))
    assert len(scene) == 8 and scene.has_poses
    assert scene.frames[0].intrinsics == Intrinsics("pinhole", 3072, 2048, 2759.48, 2764.16, 1520.69, 1006.81)
    R = np.stack([f.c2w[:3, :3] for f in scene.frames])
    C = np.stack([f.c2w[:3, 3] for f in scene.frames])
    # the point nearest to all optical axes is in front of every camera and inside every image
    A = sum(np.eye(3) - np.outer(z, z) for z in R[:, :, 2])
    P = np.linalg.solve(A, sum((np.eye(3) - np.outer(z, z)) @ c for z, c in zip(R[:, :, 2], C)))
    for f, r, c in zip(scene.frames, R, C):
        x = f.intrinsics.K() @ (r.T @ (P - c))
        assert x[2] > 5 * np.ptp(C, axis=0).max() / 4  # ~20 scene units in front, baseline ~17
        assert 0 < x[0] / x[2] < 3072 and 0 < x[1] / x[2] < 2048
    # SIFT matches of a neighbouring pair at 1/4 size lie on the epipolar lines of the reference
    # cameras (median ~0.1 px here, 0.3 px at full size); read as world-to-camera they do not
    right = _epipolar_distances(scene, 3, 4, R, 0.25)
    wrong = _epipolar_distances(scene, 3, 4, R.transpose(0, 2, 1), 0.25)
    assert len(right) > 200
    assert np.median(right) < 0.25 and np.median(wrong) > 5.0
