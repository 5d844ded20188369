"""The eval stage on a workspace around the analytic sphere (``tests/analytic_sphere.py``): near
perfect metrics for an exact model, the exported mesh measured (and a wrong one caught), pose
errors when the poses were estimated; LPIPS computed, or its true reason for being unavailable
recorded and printed."""
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pipeline.runner.workspace import WorkspaceError
import torch

from pipeline.evaluation import metrics as metrics_module
from pipeline.evaluation.table import format_table
from pipeline.runner.stage import run_stage
from stages import eval as evaluate, export
from tests.analytic_sphere import RADIUS, make_sphere_workspace, sphere_mesh


def expected_lpips_reason(net: str = "alex"):
    """None when LPIPS must be computed on this machine, else a phrase its recorded reason must
    contain. Probed here, apart from ``pipeline.evaluation.metrics``: is the lpips package
    importable, and are torchvision's backbone weights in torch hub's checkpoints folder."""
    if importlib.util.find_spec("lpips") is None:
        return "the lpips package is not installed"
    try:
        import lpips  # noqa: F401
    except ModuleNotFoundError as exc:
        return f"the lpips package needs {exc.name}"
    except Exception as exc:  # installed but broken (e.g. a torchvision built for another torch)
        return f"{type(exc).__name__}: "
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(p.name.startswith(net[:4]) for p in folder.glob("*")):
        return f"no {net} backbone weights"
    return None


def check_lpips(value, reason, net: str = "alex"):
    """LPIPS is a number in [0, 1] with no reason exactly when this machine can compute it, else
    None with the reason that matches the machine (never a made-up value)."""
    expected = expected_lpips_reason(net)
    if expected is None:
        assert value is not None and math.isfinite(value) and 0.0 <= value <= 1.0 and not reason, (value, reason)
    else:
        assert value is None and reason.startswith("LPIPS unavailable: ") and expected in reason, (value, reason)


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
    check_lpips(views.get("lpips"), views.get("lpips_unavailable"))
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
    lpips_row = [line for line in table.splitlines() if line.split()[:1] == ["LPIPS"]]
    assert len(lpips_row) == 1
    if "lpips_unavailable" in views:  # the table gives the recorded reason, not a guess
        assert views["lpips_unavailable"].removeprefix("LPIPS unavailable: ") in lpips_row[0]


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
    # pretend the poses stage estimated the cameras (they are exact, so errors are ~0)
    report = ws.stage_dir("poses") / "report.json"
    report.write_text(json.dumps(dict(json.loads(report.read_text()), mode="estimate")))
    metrics = run_eval(ws, mesh=False).manifest["metrics"]
    assert metrics["poses"]["rotation_deg_median"] < 1e-4
    assert metrics["poses"]["center_rel_median"] < 1e-6
    assert "pose rotation err" in format_table({"poses": metrics["poses"]})


def test_estimated_poses_without_a_model_get_their_pose_errors(tmp_path, monkeypatch, capsys):
    """Right after `poses --estimate`, `eval` scores the cameras alone."""
    import shutil

    ws, _ = make_sphere_workspace(tmp_path, monkeypatch, "idr", n_views=8, size=24)
    shutil.rmtree(ws.stage_dir("idr"))
    with pytest.raises(WorkspaceError, match="run.py nerf"):  # imported poses: nothing to score
        run_eval(ws)
    report = ws.stage_dir("poses") / "report.json"
    report.write_text(json.dumps(dict(json.loads(report.read_text()), mode="estimate")))
    metrics = run_eval(ws).manifest["metrics"]
    assert metrics["method"] is None and "no trained model" in metrics["skipped"]["views"]
    assert metrics["poses"]["orientation_deg_median"] < 1e-4 and metrics["poses"]["center_rel_median"] < 1e-6
    assert "pose orientation err" in capsys.readouterr().out


@pytest.fixture
def lpips_loader(monkeypatch, tmp_path):
    """An empty torch hub (TORCH_HOME=tmp) and no cached LPIPS model; returns the checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(metrics_module, "_LPIPS_CACHE", {})
    return tmp_path / "torch" / "hub" / "checkpoints"


def _fake_lpips_package(monkeypatch, value=0.25):
    """An importable ``lpips`` whose LPIPS model returns ``value`` per image."""
    class FakeLPIPS(torch.nn.Module):
        def __init__(self, net, verbose):
            super().__init__()

        def forward(self, a, b):
            assert a.shape == b.shape and a.min() >= -1 and a.max() <= 1  # images scaled to [-1, 1]
            return torch.full((a.shape[0], 1, 1, 1), value)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))


def test_lpips_reason_says_which_part_is_missing(lpips_loader, monkeypatch):
    img = np.full((8, 8, 3), 0.5)
    monkeypatch.setitem(sys.modules, "lpips", None)  # not installed: import raises ModuleNotFoundError
    value, reason = metrics_module.lpips_or_reason(img, img)
    assert value is None and reason == "LPIPS unavailable: the lpips package is not installed"
    _fake_lpips_package(monkeypatch)  # installed, but no weights in the (empty) hub
    value, reason = metrics_module.lpips_or_reason(img, img)
    assert value is None and "no alex backbone weights" in reason and str(lpips_loader) in reason
    assert "not installed" not in reason
    lpips_loader.mkdir(parents=True)
    (lpips_loader / "alexnet-owt-7be5be79.pth").write_bytes(b"")  # the file torchvision would load
    value, reason = metrics_module.lpips_or_reason(img, img)
    assert value == pytest.approx(0.25) and reason is None


def test_eval_table_prints_the_recorded_lpips_reason():
    for reason in ("LPIPS unavailable: the lpips package is not installed",
                   "LPIPS unavailable: no alex backbone weights in /x/hub/checkpoints (recon never downloads them)"):
        table = format_table({"method": "nerf", "views": {"psnr": 30.0, "views": 2, "split": "eval",
                                                          "lpips_unavailable": reason}})
        row = [line for line in table.splitlines() if line.split()[:1] == ["LPIPS"]]
        assert row == [f"  {'LPIPS'.ljust(9)}  unavailable: {reason.removeprefix('LPIPS unavailable: ')}"]
    table = format_table({"method": "nerf", "views": {"psnr": 30.0, "lpips": 0.125, "views": 2, "split": "eval"}})
    assert [line.split() for line in table.splitlines() if line.split()[:1] == ["LPIPS"]] == [["LPIPS", "0.125"]]
