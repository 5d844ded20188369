"""The centres stage on a fake poses workspace (analytic room, random similarity, pycolmap model with
noisy observations): every scale source gives metres, none gives relative units said in words, a
floor that cannot be fitted falls back with the reason, a bad known_distance fails clearly without
losing the previous output, and centres.json keeps its fixed schema."""
import json

import numpy as np
import pytest

from pipeline.runner.stage import run_stage
from pipeline.runner.workspace import Workspace
from stages.centres import STAGE
from stages.poses import STAGE as POSES
from tests.panorama_room import (CAMERA_HEIGHT, floor_points_removed, write_estimated_workspace,
                                 write_metric_dataset)

pytest.importorskip("pycolmap")


def run_centres(workspace, *overrides, force=True):
    return run_stage(STAGE, Workspace(workspace), STAGE.load_config(None, list(overrides)), force=force)


def read_centres(workspace):
    return json.loads((workspace / "centres" / "centres.json").read_text())


def centres_array(data, names):
    return np.array([data["panoramas"][n]["centre"] for n in names])


def true_distance(truth, a, b):
    names = truth["names"]
    return float(np.linalg.norm(truth["centres"][names.index(a)] - truth["centres"][names.index(b)]))


def rigid_plan_error(est, ref):
    """Largest plan distance (m) after the best rotation + translation (no scale) in the plan."""
    ms, md = est[:, :2].mean(0), ref[:, :2].mean(0)
    u, _, vt = np.linalg.svd((ref[:, :2] - md).T @ (est[:, :2] - ms))
    rot = u @ np.diag([1.0, np.sign(np.linalg.det(u @ vt))]) @ vt
    return float(np.linalg.norm((est[:, :2] - ms) @ rot.T + md - ref[:, :2], axis=1).max())


@pytest.fixture(scope="module")
def estimated(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("centres") / "W"
    truth = write_estimated_workspace(workspace, noise_px=0.5)
    return workspace, truth


def test_camera_height_gives_metres_with_the_floor_at_zero(estimated):
    workspace, truth = estimated
    result = run_centres(workspace, f"camera_height_m={CAMERA_HEIGHT}")
    data = read_centres(workspace)
    assert data["units"] == "m" and data["scale_source"]["name"] == "camera_height"
    floor = data["scale_source"]["floor"]
    assert floor["fitted"] and floor["inliers"] >= 100 and floor["residual_rms"] < 0.02  # metres
    est = centres_array(data, truth["names"])
    assert np.allclose(est[:, 2], CAMERA_HEIGHT, atol=0.01)  # z = 0 on the floor, cameras at H
    assert rigid_plan_error(est, truth["centres"]) < 0.01  # metres, with no scale fitted
    assert result.manifest["metrics"]["distance_error_max_pct"] < 0.5
    # yaw: the same headings up to the plan's rotation (a common offset)
    offsets = np.array([data["panoramas"][n]["yaw_deg"] for n in truth["names"]]) - truth["yaws"]
    offsets = (offsets - offsets[0] + 180) % 360 - 180
    assert np.abs(offsets).max() < 0.5


def test_known_distance_gives_metres(estimated):
    workspace, truth = estimated
    a, b = "pano_000", "pano_003"
    run_centres(workspace, f"known_distance={a},{b},{true_distance(truth, a, b):.4f}")
    data = read_centres(workspace)
    assert data["units"] == "m" and data["scale_source"]["name"] == "known_distance"
    names = data["distances"]["names"]
    matrix = np.array(data["distances"]["matrix"])
    truth_matrix = np.linalg.norm(truth["centres"][:, None] - truth["centres"][None], axis=-1)
    order = [truth["names"].index(n) for n in names]
    off = ~np.eye(len(names), dtype=bool)
    rel_err = np.abs(matrix[off] - truth_matrix[np.ix_(order, order)][off]) / truth_matrix[np.ix_(order, order)][off]
    assert rel_err.max() < 0.005


def test_no_scale_is_relative_and_says_so(estimated):
    workspace, truth = estimated
    run_centres(workspace)
    data = read_centres(workspace)
    assert data["units"] == "relative" and data["scale_source"]["name"] == "none"
    assert "relative units" in data["scale_source"]["text"] and "metric scale" in data["scale_source"]["text"]
    matrix = np.array(data["distances"]["matrix"])
    ratio = matrix[0, 1] / true_distance(truth, data["distances"]["names"][0], data["distances"]["names"][1])
    assert abs(ratio - 1) > 0.05  # the random similarity is not undone: these are not metres


def test_floor_that_cannot_be_fitted_falls_back_with_the_reason(tmp_path):
    workspace = tmp_path / "W"
    write_estimated_workspace(workspace, count=6, keep_points=floor_points_removed)
    run_centres(workspace, "camera_height_m=1.5")
    data = read_centres(workspace)
    assert data["units"] == "relative"
    assert "no floor could be fitted" in data["scale_source"]["fallback"]
    assert not data["scale_source"]["floor"]["fitted"] and data["scale_source"]["floor"]["reason"]


def test_imported_metric_poses_use_the_dataset_units_and_have_no_sigma(tmp_path):
    data_dir = write_metric_dataset(tmp_path / "data")
    workspace = tmp_path / "W"
    run_stage(POSES, Workspace(workspace), POSES.load_config(None, [f"data={data_dir}"]))
    run_centres(workspace, "camera_height_m=1.5")  # no points.ply: no floor -> the dataset's metres
    data = read_centres(workspace)
    assert data["units"] == "m" and data["scale_source"]["name"] == "dataset poses"
    assert "no floor could be fitted" in data["scale_source"]["fallback"]
    truth = json.loads((data_dir / "centers.json").read_text())["panoramas"]
    for entry in truth:
        got = data["panoramas"][entry["file"][:-4]]
        assert np.allclose(got["centre"], entry["center"], atol=1e-9)
        assert got["yaw_deg"] == pytest.approx(entry["yaw_deg"], abs=1e-6)
        assert got["sigma"] is None
    assert data["distances"]["sigma"] is None and "imported" in data["uncertainty"]["reason"]


def test_bad_known_distance_name_is_a_clear_error_and_loses_nothing(estimated):
    workspace, _ = estimated
    run_centres(workspace)
    before = (workspace / "centres" / "centres.json").read_text()
    with pytest.raises(ValueError, match="no posed panorama named 'kitchen'.*pano_000, pano_001"):
        run_centres(workspace, "known_distance=kitchen,pano_001,3.2")
    assert (workspace / "centres" / "centres.json").read_text() == before


def test_centres_json_schema_and_plan(estimated):
    workspace, truth = estimated
    result = run_centres(workspace, f"camera_height_m={CAMERA_HEIGHT}")
    data = read_centres(workspace)
    assert {"units", "scale_source", "panoramas", "distances", "frame", "uncertainty"} <= set(data)
    assert set(data["panoramas"]) == set(truth["names"])
    for entry in data["panoramas"].values():
        assert len(entry["centre"]) == 3 and isinstance(entry["yaw_deg"], float)
        assert entry["sigma"] > 0
    n = len(truth["names"])
    matrix, sigma = np.array(data["distances"]["matrix"]), np.array(data["distances"]["sigma"])
    assert matrix.shape == sigma.shape == (n, n)
    assert np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 0) and (sigma[~np.eye(n, dtype=bool)] > 0).all()
    assert "bundle adjustment" in data["uncertainty"]["method"]
    assert (workspace / "centres" / "plan.png").stat().st_size > 10000
    metrics = result.manifest["metrics"]
    assert metrics["units"] == "m" and metrics["panoramas"] == n and metrics["median_centre_sigma"] > 0
