"""The rotation bound of bench/pose_limits.py agrees with the spread of real pose fits (a second)."""
import numpy as np

from bench.pose_limits import project, refit_rotation_error_deg, rotation_bound_deg


def _camera(seed: int = 0):
    rng = np.random.default_rng(seed)
    K = np.array([[280.0, 0.0, 100.0], [0.0, 280.0, 100.0], [0.0, 0.0, 1.0]])
    w2c = np.eye(4)
    w2c[:3, 3] = [0.1, -0.2, 4.0]  # a small object 4 m in front, as the built-in scene's views
    xyz = rng.uniform(-0.8, 0.8, size=(60, 3))
    return K, w2c, xyz


def test_exact_keypoints_give_the_true_pose():
    K, w2c, xyz = _camera()
    assert refit_rotation_error_deg(K, w2c, xyz, project(K, w2c, xyz)) < 1e-6


def test_the_bound_is_the_spread_of_fits_to_noisy_keypoints():
    K, w2c, xyz = _camera()
    sigma = 0.3
    bound = rotation_bound_deg(K, w2c, xyz, sigma)
    rng = np.random.default_rng(1)
    uv = project(K, w2c, xyz)
    errors = np.array([refit_rotation_error_deg(K, w2c, xyz, uv + rng.normal(0.0, sigma, uv.shape))
                       for _ in range(200)])
    rms = float(np.sqrt(np.mean(errors ** 2)))  # the bound is the root of the rotation covariance's trace
    assert 0.85 * bound < rms < 1.15 * bound
    assert abs(rotation_bound_deg(K, w2c, np.tile(xyz, (4, 1)), sigma) - bound / 2) < 1e-9  # 4x the points: half
