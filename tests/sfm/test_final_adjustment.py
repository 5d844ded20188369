"""The last bundle adjustment of pose estimation (pipeline/sfm/refine.py, step 4d): poses moved by
tracks of three or more views only, on small hand-made reconstructions (a second)."""
import numpy as np
import pytest

from datasets.scene import SceneError
from pipeline.geometry.alignment import rotation_angle_deg
from pipeline.geometry.cameras import look_at
from pipeline.sfm.config import EstimationConfig, check_config
from pipeline.sfm.refine import ITERATIVE_MAX_DIAMETER, ITERATIVE_MIN_IMAGES, adjust_on_long_tracks, use_iterative_solver

pycolmap = pytest.importorskip("pycolmap")

W, H, F = 400, 400, 500.0


def model_with_camera():
    """An empty model with camera 1: W x H px, pinhole, focal F px, principal point at the centre."""
    rec = pycolmap.Reconstruction()
    rec.add_camera_with_trivial_rig(pycolmap.Camera(camera_id=1, model="SIMPLE_PINHOLE", width=W, height=H,
                                                    params=[F, W / 2, H / 2]))
    return rec


def make_reconstruction(weak_view_points: int = 40, false_points: int = 80, seed: int = 0):
    """(model, true world-to-camera rotations (V, 3, 3)): 8 cameras on an arc around 300 points that
    every view sees (0.2 px noise), except view 0 which sees only ``weak_view_points`` of them. Views
    0 and 1 also share ``false_points`` two-view tracks whose feature is not one fixed point: the
    observation in view 1 is of a point 20 cm beside the one in view 0 (a blob on an occluding
    contour). The model is bundle-adjusted as the mapper leaves it: with every track."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-1.0, 1.0, size=(300, 3))
    false_xyz = rng.uniform(-1.0, 1.0, size=(false_points, 3))
    shift = np.array([0.2, 0.0, 0.0])
    rec = model_with_camera()
    rotations, tracks = [], {}
    for k in range(8):
        angle = np.deg2rad(-60 + 120 * k / 7)
        centre = np.array([6 * np.sin(angle), -6 * np.cos(angle), 1.5])
        rot = look_at(centre, (0.0, 0.0, 0.0))[:3, :3].T  # world-to-camera
        rotations.append(rot)
        seen = np.arange(weak_view_points) if k == 0 else np.arange(len(xyz))
        points = xyz[seen]
        if k in (0, 1):
            points = np.concatenate([points, false_xyz + (shift if k == 1 else 0.0)])
        cam = (points - centre) @ rot.T
        uv = F * cam[:, :2] / cam[:, 2:3] + [W / 2, H / 2] + rng.normal(0.0, 0.2, size=(len(points), 2))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{k:02d}.png", keypoints=uv, camera_id=1, image_id=k + 1),
                                         pycolmap.Rigid3d(pycolmap.Rotation3d(rot), -rot @ centre))
        keys = [("true", int(i)) for i in seen] + ([("false", i) for i in range(false_points)] if k in (0, 1) else [])
        for j, key in enumerate(keys):
            tracks.setdefault(key, []).append((k + 1, j))
    for (kind, i), obs in tracks.items():
        rec.add_point3D(xyz[i] if kind == "true" else false_xyz[i],
                        pycolmap.Track([pycolmap.TrackElement(a, b) for a, b in obs]))
    options = pycolmap.BundleAdjustmentOptions()
    options.print_summary = False
    options.refine_focal_length = False
    pycolmap.bundle_adjustment(rec, options)
    return rec, np.stack(rotations)


def weak_view_error_deg(rec, true_rotations: np.ndarray) -> float:
    """Median over the other views of the error of view 0's rotation relative to each (no gauge)."""
    est = [rec.images[k + 1].cam_from_world().rotation.matrix() for k in range(len(true_rotations))]
    diffs = [(est[0] @ est[k].T) @ (true_rotations[0] @ true_rotations[k].T).T for k in range(1, len(est))]
    return float(np.median(rotation_angle_deg(np.stack(diffs))))


def test_two_view_tracks_no_longer_pull_a_weak_view():
    rec, truth = make_reconstruction()
    before = weak_view_error_deg(rec, truth)
    points = rec.num_points3D()
    done = adjust_on_long_tracks(pycolmap, rec, min_track_length=3, refine_intrinsics=False)
    after = weak_view_error_deg(rec, truth)
    assert before > 0.4  # the mapper's adjustment: the false two-view points pull view 0
    assert after < 0.15
    assert rec.num_points3D() == points  # the short tracks' points stay, re-fitted to the poses
    assert done["points_used"] == 300 and done["held_images"] == []


def test_a_view_with_too_few_long_tracks_keeps_its_pose():
    rec, truth = make_reconstruction(weak_view_points=5)
    pose_before = rec.images[1].cam_from_world().matrix()
    done = adjust_on_long_tracks(pycolmap, rec, min_track_length=3, refine_intrinsics=False, min_observations=10)
    assert done["held_images"] == ["00.png"]
    np.testing.assert_allclose(rec.images[1].cam_from_world().matrix(), pose_before, atol=1e-12)


def test_every_track_is_the_mappers_adjustment_and_below_two_is_refused():
    check_config(EstimationConfig(final_min_track_length=2))
    with pytest.raises(SceneError, match="final_min_track_length"):
        check_config(EstimationConfig(final_min_track_length=1))


def test_a_function_tolerance_stops_the_adjustment_where_the_poses_have_settled():
    # step 4d stops when an iteration lowers the cost by less than 1e-6 of it: the poses must be
    # those of the adjustment run until the gradient vanishes (COLMAP's tolerance 0)
    rotations = {}
    for tolerance in (0.0, EstimationConfig().ba_function_tolerance):
        rec, truth = make_reconstruction()
        adjust_on_long_tracks(pycolmap, rec, min_track_length=3, refine_intrinsics=False, function_tolerance=tolerance)
        rotations[tolerance] = np.stack([rec.images[k + 1].cam_from_world().rotation.matrix() for k in range(8)])
    settled, stopped = rotations.values()
    assert rotation_angle_deg(np.einsum("kij,klj->kil", settled, stopped)).max() < 1e-3
    with pytest.raises(SceneError, match="ba_function_tolerance"):
        check_config(EstimationConfig(ba_function_tolerance=1.0))


def ring_reconstruction(views: int, seed: int = 0):
    """(model, true world-to-camera rotations (V, 3, 3)): ``views`` cameras on a ring around 300
    points that all of them see (0.2 px noise), their rotations and the points started off the truth."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(-1.0, 1.0, size=(300, 3))
    rec = model_with_camera()
    rotations = []
    for k in range(views):
        angle = 2 * np.pi * k / views
        centre = np.array([6 * np.cos(angle), 6 * np.sin(angle), 1.5 + np.sin(3 * angle)])
        rot = look_at(centre, (0.0, 0.0, 0.0))[:3, :3].T
        rotations.append(rot)
        cam = (xyz - centre) @ rot.T
        uv = F * cam[:, :2] / cam[:, 2:3] + [W / 2, H / 2] + rng.normal(0.0, 0.2, size=(len(xyz), 2))
        start = pycolmap.Rotation3d(rot).matrix() @ _small_rotation(rng, np.deg2rad(0.3))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{k:03d}.png", keypoints=uv, camera_id=1, image_id=k + 1),
                                         pycolmap.Rigid3d(pycolmap.Rotation3d(start), -start @ centre))
    for i in range(len(xyz)):
        rec.add_point3D(xyz[i] + rng.normal(0.0, 0.01, 3),
                        pycolmap.Track([pycolmap.TrackElement(k + 1, i) for k in range(views)]))
    return rec, np.stack(rotations)


def _small_rotation(rng, angle: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis *= angle / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + k + k @ k / 2  # near enough a rotation for a start; the adjustment re-orthogonalises


def walk_reconstruction(views: int, seed: int = 0):
    """A model of ``views`` cameras 0.5 m apart looking along a corridor, each seeing its walls up to
    12 m ahead (the covisibility graph of a walk: a long chain)."""
    rng = np.random.default_rng(seed)
    xyz = np.c_[rng.uniform(0.0, 0.5 * views + 12, 40 * views), rng.choice([-2.0, 2.0], 40 * views),
                rng.uniform(-1.5, 1.5, 40 * views)]
    rec = model_with_camera()
    tracks = {}
    for k in range(views):
        centre = np.array([0.5 * k, 0.0, 0.0])
        rot = look_at(centre, centre + [1.0, 0.0, 0.0])[:3, :3].T
        cam = (xyz - centre) @ rot.T
        uv = F * cam[:, :2] / cam[:, 2:3] + [W / 2, H / 2]
        seen = np.flatnonzero((cam[:, 2] > 0.5) & (cam[:, 2] < 12) & np.all((uv > 0) & (uv < [W, H]), axis=1))
        rec.add_image_with_trivial_frame(pycolmap.Image(name=f"{k:03d}.png", keypoints=uv[seen], camera_id=1,
                                                        image_id=k + 1), pycolmap.Rigid3d(pycolmap.Rotation3d(rot), -rot @ centre))
        for j, i in enumerate(seen):
            tracks.setdefault(int(i), []).append(pycolmap.TrackElement(k + 1, j))
    for i, elements in tracks.items():
        if len(elements) >= 2:
            rec.add_point3D(xyz[i], pycolmap.Track(elements))
    return rec


def test_the_iterative_solver_is_chosen_for_a_compact_capture_past_a_hundred_images_only():
    # around an object every view shares points with most others (a few hops across); along a walk
    # the views form a chain, whose reduced camera system conjugate gradients solve slowly
    assert use_iterative_solver(ring_reconstruction(views=ITERATIVE_MIN_IMAGES + 10)[0])[0]
    assert not use_iterative_solver(ring_reconstruction(views=ITERATIVE_MIN_IMAGES)[0])[0]  # a direct solve pays
    chosen, hops = use_iterative_solver(walk_reconstruction(views=ITERATIVE_MIN_IMAGES + 20))
    assert not chosen and hops > 2 * ITERATIVE_MAX_DIAMETER


def test_the_iterative_solver_reaches_the_poses_of_colmaps_sparse_one():
    # what the poses stage adjusts with, for a compact capture past a hundred images (here 60: the
    # option works past COLMAP's dense solver's 50)
    from pipeline.sfm.refine import _ba_options

    rotations, solvers = {}, {}
    for name, iterative in (("iterative", True), ("sparse direct", False)):
        rec, truth = ring_reconstruction(views=60)
        options = _ba_options(pycolmap, False, False, num_threads=1, iterative=iterative)
        config = pycolmap.BundleAdjustmentConfig()
        for image_id in rec.reg_image_ids():
            config.add_image(image_id)
        config.fix_gauge(pycolmap.BundleAdjustmentGauge.THREE_POINTS)
        summary = pycolmap.create_default_bundle_adjuster(options, config, rec).solve().ceres_summary
        solvers[name] = str(summary.linear_solver_type_used)
        rotations[name] = np.stack([rec.images[k + 1].cam_from_world().rotation.matrix() for k in range(60)])
    assert solvers["iterative"].endswith("ITERATIVE_SCHUR") and solvers["sparse direct"].endswith("SPARSE_SCHUR")
    iterative, direct = rotations.values()
    assert rotation_angle_deg(np.einsum("kij,klj->kil", iterative, direct)).max() < 1e-3
    # and both undid the 0.3 deg start: the poses agree with each other up to the gauge
    relative = np.einsum("kij,lj->kil", iterative, iterative[0])  # R_k R_0^T: free of the gauge
    true_relative = np.einsum("kij,lj->kil", truth, truth[0])
    assert rotation_angle_deg(np.einsum("kij,klj->kil", relative, true_relative)).max() < 0.15  # from up to 0.6
