"""Guided 2D-3D matching of pipeline/sfm/tracks.py: which keypoints join which tracks."""
import numpy as np

from pipeline.sfm.tracks import guided_matches


def _unit(rng, n):
    d = rng.normal(size=(n, 128)).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def _noisy(rng, d, scale):
    d = d + rng.normal(0.0, scale, d.shape).astype(np.float32)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def test_a_keypoint_joins_the_nearby_point_with_its_descriptor():
    rng = np.random.default_rng(0)
    points_uv = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 20.0]])
    points_desc = _unit(rng, 3)
    keypoints = np.array([[10.6, 9.5], [50.0, 52.5], [90.3, 20.2], [30.0, 30.0]])
    keypoint_desc = np.concatenate([_noisy(rng, points_desc[[0]], 0.01),  # near and alike: joins
                                    _noisy(rng, points_desc[[1]], 0.01),  # alike but 2.5 px away: too far
                                    _unit(rng, 1),  # near but another feature: rejected by its descriptor
                                    _noisy(rng, points_desc[[2]], 0.01)])  # alike but nowhere near point 2
    assert guided_matches(points_uv, points_desc, keypoints, keypoint_desc, radius_px=1.5, max_distance=0.5,
                          ratio=0.8) == [(0, 0)]


def test_two_alike_points_under_one_keypoint_are_ambiguous():
    rng = np.random.default_rng(1)
    shared = _unit(rng, 1)
    points_uv = np.array([[20.0, 20.0], [20.8, 20.4]])
    points_desc = np.concatenate([_noisy(rng, shared, 0.01), _noisy(rng, shared, 0.01)])
    keypoints = np.array([[20.4, 20.2]])
    assert guided_matches(points_uv, points_desc, keypoints, _noisy(rng, shared, 0.01), 1.5, 0.5, 0.8) == []


def test_a_point_takes_only_its_closest_keypoint():
    rng = np.random.default_rng(2)
    points_desc = _unit(rng, 1)
    keypoints = np.array([[40.5, 40.0], [39.6, 40.2]])
    keypoint_desc = np.concatenate([_noisy(rng, points_desc, 0.05), _noisy(rng, points_desc, 0.005)])
    assert guided_matches(np.array([[40.0, 40.0]]), points_desc, keypoints, keypoint_desc, 1.5, 0.5, 0.8) == [(0, 1)]


def test_nothing_to_match_is_no_match():
    empty = np.zeros((0, 2))
    assert guided_matches(empty, np.zeros((0, 128)), np.array([[1.0, 1.0]]), np.ones((1, 128)), 1.5, 0.5, 0.8) == []
