"""The floor fit: the level plane under the cameras, not the table top beside them, robust to points
below the floor; no floor among the points -> FloorFitError with the reason."""
import numpy as np
import pytest

from pipeline.panoramas.floor import FloorConfig, FloorFitError, fit_floor
from tests.panorama_room import room_cameras, room_points


def test_floor_is_found_under_a_bigger_table_and_outliers():
    _, centres, _ = room_cameras(8, 0)
    rng = np.random.default_rng(5)
    floor = np.c_[rng.uniform([-3, -2.5], [3, 2.5], (150, 2)), rng.normal(0, 0.005, 150)]
    table = np.c_[rng.uniform([0.8, 0.5], [1.8, 1.3], (400, 2)), np.full(400, 0.75)]  # more points than the floor
    below = np.c_[rng.uniform([-3, -2.5], [3, 2.5], (10, 2)), rng.uniform(-1.0, -0.2, 10)]  # bad triangulations
    fit = fit_floor(np.concatenate([floor, table, below]), centres)
    assert fit.tilt_deg() < 1.0
    assert abs(fit.offset) < 0.005 and fit.residual_rms < 0.01
    assert 130 <= fit.inliers <= 160  # the floor's points, not the table's


def test_only_a_table_below_the_cameras_is_no_floor():
    _, centres, _ = room_cameras(8, 0)
    points = room_points(0)
    table_or_high = (np.abs(points[:, 2] - 0.75) < 1e-9) | (points[:, 2] > 1.0)
    with pytest.raises(FloorFitError, match="spans"):
        fit_floor(points[table_or_high], centres)


def test_no_points_and_too_few_points_say_why():
    _, centres, _ = room_cameras(4, 0)
    with pytest.raises(FloorFitError, match="no sparse points"):
        fit_floor(None, centres)
    with pytest.raises(FloorFitError, match="below the cameras"):
        fit_floor(np.array([[0.0, 0.0, 0.0]] * 5), centres, FloorConfig(min_points=20))
