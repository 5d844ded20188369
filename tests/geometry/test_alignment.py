"""The evaluation helper: align estimated cameras to reference cameras, then measure pose errors."""
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from pipeline.geometry.alignment import align_cameras, pose_errors, ring_radius, umeyama
from pipeline.geometry.cameras import look_at
from pipeline.geometry.normalize import Similarity


def ring_cameras(n=12, radius=3.0):
    """(n, 4, 4) cameras on a ring looking at the origin."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    eyes = np.stack([radius * np.cos(angles), radius * np.sin(angles), 0.5 * np.ones(n)], 1)
    return np.stack([np.asarray(look_at(e, np.zeros(3), np.array([0, 0, 1.0])), dtype=np.float64) for e in eyes])


def random_similarity(seed=0):
    rng = np.random.default_rng(seed)
    return Similarity(rng.uniform(0.2, 5.0), Rotation.random(random_state=seed).as_matrix(), rng.normal(size=3) * 4)


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(20, 3))
    truth = random_similarity(1)
    found = umeyama(points, truth.apply_points(points))
    assert found.scale == pytest.approx(truth.scale, rel=1e-9)
    np.testing.assert_allclose(found.rotation, truth.rotation, atol=1e-9)
    np.testing.assert_allclose(found.translation, truth.translation, atol=1e-9)


def test_umeyama_agrees_with_pycolmap():
    pycolmap = pytest.importorskip("pycolmap")
    rng = np.random.default_rng(2)
    src = rng.normal(size=(15, 3))
    dst = random_similarity(2).apply_points(src) + rng.normal(scale=0.01, size=(15, 3))
    ours = umeyama(src, dst)
    theirs = pycolmap.estimate_sim3d(src, dst)
    np.testing.assert_allclose(ours.apply_points(src), (theirs.matrix() @ np.c_[src, np.ones(15)].T).T, atol=1e-6)


def test_cameras_moved_by_a_similarity_have_zero_error():
    ref = ring_cameras()
    est = random_similarity(3).inverse().apply_c2w(ref)  # the same cameras in another frame and scale
    errors = pose_errors(est, ref)
    assert errors["rotation_deg_max"] < 1e-6
    assert errors["center_rel_max"] < 1e-9
    assert errors["ring_radius"] == pytest.approx(ring_radius(ref))


def test_errors_measure_a_known_perturbation():
    ref = ring_cameras()
    est = ref.copy()
    est[4, :3, :3] = Rotation.from_euler("x", 2.0, degrees=True).as_matrix() @ est[4, :3, :3]
    est[7, :3, 3] += np.array([0.0, 0.0, 0.03 * 3.0])  # 3% of the ring radius
    errors = pose_errors(est, ref)
    assert errors["rotation_deg_max"] == pytest.approx(2.0, abs=1e-6)
    assert errors["rotation_deg_median"] < 1e-6
    assert 0.02 < errors["center_rel_max"] < 0.035
    assert errors["center_rel_median"] < 0.005


def test_one_lost_camera_does_not_drag_the_alignment():
    ref = ring_cameras(16)
    est = ref.copy()
    est[0, :3, 3] += np.array([5.0, -4.0, 3.0])  # badly registered camera
    errors = pose_errors(est, ref)
    assert errors["center_rel_median"] < 1e-6  # the other 15 stay exact
    assert errors["center_rel_max"] > 1.0  # and the lost one is reported, not hidden
    plain = pose_errors(est, ref, sim=align_cameras(est, ref, robust=False))
    assert plain["center_rel_median"] > 0.01


def test_two_cameras_align_with_orientations():
    ref = ring_cameras(2)
    est = random_similarity(4).apply_c2w(ref)
    assert pose_errors(est, ref)["rotation_deg_max"] < 1e-6


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="same N"):
        pose_errors(ring_cameras(3), ring_cameras(4))


def test_orientation_errors_ignore_a_poorly_fixed_centre_rotation():
    """Cameras in a row: a small centre error tilts the similarity about the row; the orientations' own
    alignment and the pairwise errors do not see that tilt, the centre-fitted one does."""
    from pipeline.geometry.alignment import orientation_errors_deg, relative_rotation_errors_deg

    rng = np.random.default_rng(0)
    ref = np.stack([np.eye(4) for _ in range(8)])
    ref[:, 0, 3] = np.arange(8.0)  # centres on the x axis, all looking along +z
    est = ref.copy()
    est[:, 1, 3] += rng.normal(0, 0.02, 8)  # centres off the line: the roll about x is guessed from noise
    est[:, 2, 3] += rng.normal(0, 0.02, 8)
    errors = pose_errors(est, ref)
    assert errors["orientation_deg_max"] < 1e-6 and errors["relative_rotation_deg_max"] < 1e-6
    assert errors["rotation_deg_median"] > 0.05  # the centre fit's tilt shows in the old measure
    # a real orientation error of one camera is seen by both
    est[3, :3, :3] = _rotation_about_z(2.0)
    assert orientation_errors_deg(est, ref)[3] == pytest.approx(2.0, abs=1e-6)
    assert np.sort(relative_rotation_errors_deg(est, ref))[-7:] == pytest.approx([2.0] * 7, abs=1e-6)


def _rotation_about_z(deg):
    a = np.radians(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
