"""Scene normalisation: similarities, and the scene moved into the unit sphere and back."""
import numpy as np

from pipeline.geometry.cameras import look_at
from pipeline.geometry.normalize import Similarity, focus_point, normalizing_similarity


def random_rotation(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def ring_of_cameras(center, radius, n=12):
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    eyes = center + radius * np.stack([np.cos(angles), np.sin(angles), 0.3 * np.ones(n)], -1)
    return np.stack([look_at(e, center, up=(0, 0, 1)) for e in eyes])


def test_similarity_inverse_and_compose():
    rng = np.random.default_rng(0)
    sim = Similarity(2.5, random_rotation(rng), rng.normal(size=3))
    pts = rng.normal(size=(20, 3))
    np.testing.assert_allclose(sim.inverse().apply_points(sim.apply_points(pts)), pts, atol=1e-12)
    other = Similarity(0.3, random_rotation(rng), rng.normal(size=3))
    np.testing.assert_allclose(other.compose(sim).apply_points(pts), other.apply_points(sim.apply_points(pts)),
                               atol=1e-12)
    np.testing.assert_allclose(sim.matrix() @ np.r_[pts[0], 1], np.r_[sim.apply_points(pts[:1])[0], 1], atol=1e-12)


def test_apply_c2w_keeps_projections():
    rng = np.random.default_rng(1)
    c2w = look_at([3, 1, 2], [0, 0, 0])
    sim = Similarity(0.4, random_rotation(rng), rng.normal(size=3))
    point = rng.normal(size=3) * 0.3

    def camera_xy(c2w, p):
        pc = np.linalg.inv(c2w) @ np.r_[p, 1]
        return pc[:2] / pc[2]

    new_c2w = sim.apply_c2w(c2w)
    np.testing.assert_allclose(new_c2w[:3, :3] @ new_c2w[:3, :3].T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(camera_xy(new_c2w, sim.apply_points(point[None])[0]), camera_xy(c2w, point), atol=1e-12)


def test_object_centric_cameras_are_centred_and_scaled():
    center = np.array([5.0, -2.0, 1.0])
    c2w = ring_of_cameras(center, radius=8.0)
    np.testing.assert_allclose(focus_point(c2w), center, atol=1e-6)
    sim = normalizing_similarity(c2w, target_radius=1.0)
    np.testing.assert_allclose(sim.apply_points(center[None])[0], 0, atol=1e-6)
    cams = sim.apply_c2w(c2w)
    # cameras end at twice the region-of-interest radius; the mean camera up becomes +z
    np.testing.assert_allclose(np.linalg.norm(cams[:, :3, 3], axis=1).mean(), 2.0, rtol=0.05)
    mean_up = -cams[:, :3, 1].mean(0)
    assert mean_up[2] / np.linalg.norm(mean_up) > 0.999
