"""The eval stage on a workspace around the analytic sphere (``tests/analytic_sphere.py``): near
perfect metrics for an exact model, the exported mesh measured (and a wrong one caught), pose
errors when the poses were estimated."""
import json

import pytest

from pipeline.evaluation.table import format_table
from pipeline.runner.stage import run_stage
from stages import eval as evaluate, export
from tests.analytic_sphere import RADIUS, make_sphere_workspace, sphere_mesh


def run_eval(ws, **overrides):
    cfg = evaluate.STAGE.load_config(overrides=[f"{k}={v}" for k, v in overrides.items()])
    return run_stage(evaluate.STAGE, ws, cfg, force=True)


def test_eval_of_an_exact_model_reports_near_perfect_metrics(tmp_path, monkeypatch, capsys):
    ws, _ = make_sphere_workspace(tmp_path, monkeypatch, "idr", n_views=8, size=40)
    result = run_eval(ws, mesh_resolution=64, mesh_samples=20000)
    metrics = json.loads((ws.stage_dir("eval") / "metrics.json").read_text())
    views = metrics["views"]
    assert views["views"] == 2 and views["split"] == "eval"  # the dataset's 2 test views
    assert views["psnr"] > 40  # GT images are 8-bit renders of the same sphere
    assert views["ssim"] > 0.99 and views["mask_iou"] > 0.99
    assert views["depth_abs_rel"] < 1e-4 and views["depth_region"] == "GT mask"
    assert "lpips" in views or "LPIPS unavailable" in views["lpips_unavailable"]  # never faked
    geo = metrics["geometry"]
    # the extracted 64^3 mesh against the 96^3 GT mesh of the same sphere
    assert geo["chamfer_l1_over_radius"] < 0.01 and geo["fscore"] > 0.95
    assert geo["threshold"] == pytest.approx(0.01 * RADIUS) and "0.01 x object radius" in geo["threshold_note"]
    assert geo["components_outside_frusta"] == 0
    assert "imported" in metrics["skipped"]["poses"]
    assert (ws.stage_dir("eval") / "renders").is_dir()
    assert result.manifest["metrics"]["views"]["psnr"] == pytest.approx(views["psnr"])
    table = capsys.readouterr().out
    assert "PSNR" in table and "Chamfer-L1" in table and "F-score" in table


def test_eval_measures_the_exported_mesh_and_catches_a_wrong_one(tmp_path, monkeypatch):
    ws, _ = make_sphere_workspace(tmp_path, monkeypatch, "nerf", n_views=8, size=24, n_samples=96)
    # culling off: it has its own test (tests/export/test_meshing.py); on these 24-pixel views of a
    # soft sphere it trims the grazing parts (the rendered depth lies a voxel in front of the
    # iso-surface and a pixel spans two voxels), which is the documented cost of cull_tolerance on
    # coarse images
    run_stage(export.STAGE, ws, export.STAGE.load_config(overrides=[
        "what=mesh", "mesh_resolution=48", "density_threshold=200.0", "cull_hidden=false"]), force=True)
    good = run_eval(ws, mesh_samples=20000).manifest["metrics"]["geometry"]
    assert good["mesh"].endswith("mesh.ply") and good["chamfer_l1_over_radius"] < 0.02
    # replace the exported mesh by a 10% larger sphere: eval must notice
    from pipeline.geometry.mesh import write_ply

    verts, faces = sphere_mesh(radius=1.1 * RADIUS, resolution=48)
    write_ply(ws.stage_dir("export") / "mesh.ply", verts, faces)
    bad = run_eval(ws, mesh_samples=20000).manifest["metrics"]["geometry"]
    assert bad["chamfer_l1_over_radius"] == pytest.approx(0.1, rel=0.1)
    assert bad["fscore"] < 0.05


def test_pose_errors_are_measured_when_poses_were_estimated(tmp_path, monkeypatch):
    ws, _ = make_sphere_workspace(tmp_path, monkeypatch, "idr", n_views=8, size=24)
    pytest.importorskip("pipeline.geometry.alignment")
    # pretend the poses stage estimated the cameras (they are exact, so errors are ~0)
    report = ws.stage_dir("poses") / "report.json"
    report.write_text(json.dumps(dict(json.loads(report.read_text()), mode="estimate")))
    metrics = run_eval(ws, mesh=False).manifest["metrics"]
    assert metrics["poses"]["rotation_deg_median"] < 1e-4
    assert metrics["poses"]["center_rel_median"] < 1e-6
    assert "pose rotation err" in format_table({"poses": metrics["poses"]})
