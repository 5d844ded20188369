"""Pose estimation on high-resolution photos (``pipeline.sfm``): the quality setting, and the
principal point refined only when held-out tracks confirm it (pipeline/sfm/refine.py), on small
hand-made reconstructions (a few seconds)."""
import numpy as np
import pytest

from datasets.scene import SceneError
from pipeline.geometry.cameras import look_at
from pipeline.sfm.config import EstimationConfig, check_config, effective_settings, quality_settings
from pipeline.sfm.refine import paired_gain, refine_principal_point

pycolmap = pytest.importorskip("pycolmap")

W, H, F = 960, 640, 800.0


def make_reconstruction(true_pp_offset=(0.0, 0.0), views: int = 10, points: int = 1500, noise_px: float = 0.3,
                        seed: int = 0, cameras: int = 1):
    """A reconstruction as the mapper leaves it: cameras on an arc around a box of points,
    observations made with the principal point ``true_pp_offset`` px off the centre (plus noise),
    and the model's camera with its principal point at the centre, bundle-adjusted that way."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([-1.5, -1.0, -1.0], [1.5, 1.0, 1.0], size=(points, 3))
    true_pp = np.array([W / 2 + true_pp_offset[0], H / 2 + true_pp_offset[1]])
    rec = pycolmap.Reconstruction()
    camera = pycolmap.Camera(camera_id=1, model="SIMPLE_RADIAL", width=W, height=H,
                             params=[F, W / 2, H / 2, 0.0])
    rec.add_camera_with_trivial_rig(camera)
    for c in range(2, cameras + 1):  # the same lens, one camera object each
        rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=c, model="SIMPLE_RADIAL", width=W, height=H,
                                                        params=[F, W / 2, H / 2, 0.0]))
    observations = {}  # point index -> [(image_id, point2D_idx)]
    for k in range(views):
        angle = np.deg2rad(-50 + 100 * k / max(views - 1, 1))
        centre = np.array([6 * np.sin(angle), -6 * np.cos(angle), 2.5 if k % 2 else -1.5])  # two heights
        rot = look_at(centre, (0.0, 0.0, 0.0))[:3, :3].T  # world-to-camera
        cam = (xyz - centre) @ rot.T
        uv = F * cam[:, :2] / cam[:, 2:3] + true_pp + rng.normal(0.0, noise_px, size=(points, 2))
        inside = (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0) & (uv[:, 1] < H) & (cam[:, 2] > 0)
        idx = np.flatnonzero(inside)
        image = pycolmap.Image(name=f"{k:03d}.jpg", keypoints=uv[idx], camera_id=1 + (k // 2) % cameras,
                               image_id=k + 1)
        pose = pycolmap.Rigid3d(pycolmap.Rotation3d(rot), -rot @ centre)
        rec.add_image_with_trivial_frame(image, pose)
        for j, i in enumerate(idx):
            observations.setdefault(int(i), []).append((k + 1, j))
    for i, obs in observations.items():
        if len(obs) >= 2:
            rec.add_point3D(xyz[i], pycolmap.Track([pycolmap.TrackElement(a, b) for a, b in obs]))
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    pycolmap.bundle_adjustment(rec, options)  # the mapper's result: principal point at the centre
    return rec


def test_quality_sets_image_size_and_principal_point_refinement():
    assert quality_settings(EstimationConfig(quality="fast")) == (1024, False, False)
    assert quality_settings(EstimationConfig()) == (1024, True, True)  # balanced is the default
    assert quality_settings(EstimationConfig(quality="max")) == (-1, True, True)
    # explicit settings win over the quality's
    assert quality_settings(EstimationConfig(quality="max", max_image_size=2048)) == (2048, True, True)
    assert quality_settings(EstimationConfig(refine_principal_point="no", refine_keypoints="no")) == (1024, False, False)
    eff = effective_settings(EstimationConfig(quality="max"), [(3072, 2048)])
    assert (eff.max_image_size, eff.refine_principal_point, eff.refine_keypoints) == (-1, True, False)
    # the keypoints are refined only where SIFT saw the images downscaled (here by 3)
    eff = effective_settings(EstimationConfig(), [(3072, 2048)])
    assert (eff.max_image_size, eff.refine_principal_point, eff.refine_keypoints) == (1024, True, True)
    assert not effective_settings(EstimationConfig(), [(1080, 1080)]).refine_keypoints
    assert not effective_settings(EstimationConfig(quality="fast"), [(3072, 2048)]).refine_keypoints


@pytest.mark.parametrize("key, value", [("quality", "best"), ("refine_principal_point", "yes"),
                                        ("refine_keypoints", "always")])
def test_bad_quality_settings_are_errors(key, value):
    with pytest.raises(SceneError, match=key):
        check_config(EstimationConfig(**{key: value}))


def test_paired_gain():
    fixed = np.array([1.0, 1.0, 1.0, 1.0])
    gain, z = paired_gain(fixed, np.array([0.9, 0.91, 0.89, 0.9]))
    assert gain == pytest.approx(0.1) and z > 10
    gain, z = paired_gain(fixed, fixed + np.array([0.1, -0.1, 0.1, -0.1]))
    assert gain == pytest.approx(0.0) and z == pytest.approx(0.0)


def test_principal_point_off_centre_is_found_and_kept():
    rec = make_reconstruction(true_pp_offset=(15.0, -10.0))
    checks = refine_principal_point(pycolmap, rec, min_views=5, min_z=3.0, max_shift=0.1)
    assert len(checks) == 1 and checks[0].accepted, checks
    assert checks[0].heldout_free_px < checks[0].heldout_fixed_px and checks[0].z >= 3.0
    camera = rec.cameras[1]
    found = np.array([camera.principal_point_x, camera.principal_point_y]) - [W / 2, H / 2]
    assert np.linalg.norm(found - [15.0, -10.0]) < 3.0, found


def test_principal_point_at_centre_is_left_alone():
    rec = make_reconstruction(true_pp_offset=(0.0, 0.0))
    checks = refine_principal_point(pycolmap, rec, min_views=5, min_z=3.0, max_shift=0.1)
    assert not checks[0].accepted and checks[0].z < 3.0, checks
    camera = rec.cameras[1]
    assert (camera.principal_point_x, camera.principal_point_y) == (W / 2, H / 2)  # the model is unchanged


def test_principal_point_needs_enough_views():
    rec = make_reconstruction(true_pp_offset=(15.0, -10.0), views=4)
    checks = refine_principal_point(pycolmap, rec, min_views=5, min_z=3.0, max_shift=0.1)
    assert not checks[0].accepted and "4 views" in checks[0].reason
    assert rec.cameras[1].principal_point_x == W / 2


def test_principal_point_checked_per_camera():
    """Two cameras (alternate views): each is checked and refined on its own, the other held constant."""
    rec = make_reconstruction(true_pp_offset=(15.0, -10.0), views=12, cameras=2)
    checks = refine_principal_point(pycolmap, rec, min_views=5, min_z=3.0, max_shift=0.1)
    assert [c.camera_id for c in checks] == [1, 2] and all(c.accepted and c.views == 6 for c in checks), checks
    for camera in rec.cameras.values():
        found = np.array([camera.principal_point_x, camera.principal_point_y]) - [W / 2, H / 2]
        assert np.linalg.norm(found - [15.0, -10.0]) < 4.0, found


def test_principal_point_moving_too_far_is_rejected():
    rec = make_reconstruction(true_pp_offset=(15.0, -10.0))
    checks = refine_principal_point(pycolmap, rec, min_views=5, min_z=3.0, max_shift=0.005)  # 4.8 px allowed
    assert not checks[0].accepted and "too far" in checks[0].reason


def _photo_scene(tmp_path, names=("a.jpg", "b.jpg")):
    from PIL import Image

    from datasets.scene import Frame, Scene
    from pipeline.geometry.cameras import Intrinsics

    frames = []
    for name in names:
        Image.fromarray(np.full((200, 300, 3), 128, np.uint8)).save(tmp_path / name)
        guess = Intrinsics("pinhole", 300, 200, 360.0, 360.0, 150.0, 100.0)  # a photo folder's EXIF-like guess
        frames.append(Frame(tmp_path / name, guess))
    return Scene(frames, meta={"intrinsics_guessed": True})


def test_intrinsics_file_replaces_the_guess_and_is_kept_fixed(tmp_path):
    from pipeline.sfm.features import apply_intrinsics_file, use_known_intrinsics

    scene = _photo_scene(tmp_path)
    # a Strecha .camera file declared at twice the images' size: rescaled to 300x200
    (tmp_path / "cam.camera").write_text("600 0 290\n0 602 210\n0 0 1\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n0 0 0\n600 400\n")
    cfg = EstimationConfig(intrinsics_file=str(tmp_path / "cam.camera"))
    assert not use_known_intrinsics(EstimationConfig(), scene)  # the guess alone is estimated
    known = apply_intrinsics_file(cfg, scene)
    assert use_known_intrinsics(cfg, known)
    intr = known.frames[1].intrinsics
    assert (intr.width, intr.height) == (300, 200)
    assert (intr.fx, intr.fy) == pytest.approx((300.0, 301.0)) and intr.cx == pytest.approx(145.0, abs=0.3)
    assert apply_intrinsics_file(EstimationConfig(), scene) is scene  # no file: untouched


def test_intrinsics_file_errors_name_the_file(tmp_path):
    from pipeline.sfm.features import apply_intrinsics_file, use_known_intrinsics

    scene = _photo_scene(tmp_path)
    with pytest.raises(SceneError, match="missing.camera.*not found"):
        apply_intrinsics_file(EstimationConfig(intrinsics_file=str(tmp_path / "missing.camera")), scene)
    (tmp_path / "cameras").mkdir()  # per-image files, one of the two images missing
    (tmp_path / "cameras" / "a.jpg.camera").write_text("300 0 150\n0 300 100\n0 0 1\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n"
                                                      "0 0 0\n300 200\n")
    with pytest.raises(SceneError, match="no camera for image b.jpg"):
        apply_intrinsics_file(EstimationConfig(intrinsics_file=str(tmp_path / "cameras")), scene)
    with pytest.raises(SceneError, match="intrinsics=estimate"):
        use_known_intrinsics(EstimationConfig(intrinsics_file="x.camera", intrinsics="estimate"), scene)


def test_track_keypoints_are_aligned_on_the_image_patches():
    """Two views of one texture, the second shifted by a known sub-pixel amount; its observations
    given 0.3-0.8 px off are moved back to the true positions (the reference view's stay put)."""
    from scipy.ndimage import gaussian_filter
    from scipy.ndimage import shift as shift_image

    from pipeline.sfm.keypoints import align_track_keypoints

    rng = np.random.default_rng(1)
    texture = gaussian_filter(rng.normal(size=(240, 240)), 2.0).astype(np.float32) * 50 + 128
    true_shift = np.array([3.3, -2.6])  # (x, y) px: image 2 = image 1 moved by this
    moved = shift_image(texture, (true_shift[1], true_shift[0]), order=3, mode="nearest").astype(np.float32)
    g = np.arange(40, 201, 20, dtype=np.float64)
    p1 = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    error = rng.uniform(0.3, 0.8, size=p1.shape) * rng.choice([-1, 1], size=p1.shape)
    p2 = p1 + true_shift + error
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model="SIMPLE_PINHOLE", width=240, height=240,
                                                    params=[200.0, 120.0, 120.0]))
    for image_id, kp in ((1, p1), (2, p2)):
        image = pycolmap.Image(name=f"{image_id}.png", keypoints=kp, camera_id=1, image_id=image_id)
        rec.add_image_with_trivial_frame(image, pycolmap.Rigid3d())
    for j in range(len(p1)):
        rec.add_point3D(np.zeros(3), pycolmap.Track([pycolmap.TrackElement(1, j), pycolmap.TrackElement(2, j)]))
    frames = np.tile(2.0 * np.eye(2), (len(p1), 1, 1))
    shapes = {1: frames * 1.01, 2: frames}  # image 1 has the larger SIFT scale: the reference

    info = align_track_keypoints(rec, shapes, {1: texture, 2: moved})

    assert info["observations"] == 2 * len(p1) and info["moved"] >= 0.9 * len(p1)
    after1 = np.array([p.xy for p in rec.images[1].points2D])
    after2 = np.array([p.xy for p in rec.images[2].points2D])
    np.testing.assert_array_equal(after1, p1)
    before = np.abs(p2 - p1 - true_shift).max()
    residual = np.abs(after2 - p1 - true_shift)
    assert np.median(residual) < 0.05 and residual.max() < 0.2 < before, (np.median(residual), residual.max())
