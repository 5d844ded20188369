"""``run.py report``: the page of a tiny trained NeRF workspace holds every section with the data
the stages wrote, a poses-only workspace gets a page of its poses, an empty or missing workspace
one clear line; the page needs nothing outside its folder; the report re-runs when a stage does."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipeline.geometry.mesh import read_ply
from pipeline.report.surface import simplify
from pipeline.training.progress_log import read_progress_log
from tests.report.conftest import FACE_BUDGET, NERF_STEPS
from tests.test_cli_chain import ROOT, TINY_EVAL, run_cli


def page(workspace: Path) -> str:
    return (workspace / "report" / "index.html").read_text()


def referenced_files(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"#][^"]*)"', html)


def test_the_trained_workspace_report_shows_every_stage_and_its_data(trained):
    html = page(trained)
    for anchor in ("overview", "poses", "nerf", "surface", "eval"):
        assert f'<section id="{anchor}">' in html, anchor
    nerf = json.loads((trained / "nerf" / "manifest.json").read_text())
    # the manifest: its metrics shown, versions and config collapsed
    assert f"{nerf['metrics']['psnr']:.4g}" in html and "<summary>nerf config</summary>" in html
    assert f'&quot;samples_per_batch&quot;: {nerf["config"]["samples_per_batch"]}' in html
    assert "<summary>nerf versions</summary>" in html and nerf["versions"]["torch"] in html
    # the training curve, from the metrics.jsonl the stage kept
    assert "loss against steps" in html and "batch PSNR against trained time" in html
    assert f"to step {NERF_STEPS} (" in html
    # test views: render, ground truth, error map and depth for each of the 2 test views; the video
    assets = trained / "report" / "assets"
    for name in ("r_0", "r_5"):
        for kind in ("render", "gt", "error", "depth"):
            assert (assets / f"nerf-{name}-{kind}.png").exists(), (name, kind)
    assert '<video src="assets/nerf-orbit.mp4"' in html and (assets / "nerf-orbit.mp4").exists()
    # the mesh, simplified below the face budget, and the Chamfer / F-score of eval
    _, faces, _ = read_ply(trained / "export" / "mesh.ply")
    assert len(faces) > FACE_BUDGET and f"of {len(faces)} faces shown (simplified)" in html
    geometry = json.loads((trained / "eval" / "metrics.json").read_text())["geometry"]
    assert f"{geometry['chamfer_l1']:.4g}" in html and f"{geometry['fscore']:.4g}" in html
    assert "Per view (2)" in html  # eval's per-view table
    assert 'class="section-error"' not in html
    report = json.loads((trained / "report" / "manifest.json").read_text())
    assert report["metrics"]["stages"] == "poses, nerf, export, eval"
    assert report["metrics"]["failed_sections"] == "none"


def test_the_page_needs_nothing_outside_its_folder(trained):
    """plotly.js is the bundle beside the page (no CDN); every file the page names is in the folder."""
    html = page(trained)
    bundle = trained / "report" / "plotly.min.js"
    assert bundle.stat().st_size > 1_000_000 and "plotly.js" in bundle.read_text()[:2000]
    assert '<script src="plotly.min.js"></script>' in html
    assert re.findall(r"<script[^>]*src=\"([^\"]*)\"", html) == ["plotly.min.js"]
    assert "cdn.plot.ly" not in html and "<link" not in html
    refs = referenced_files(html)
    assert len(refs) >= 10
    for ref in refs:
        assert not ref.startswith(("/", "http:", "https:", "file:")), ref
        assert (trained / "report" / ref).is_file(), ref


def test_the_training_curve_is_logged_as_training_goes(trained):
    rows = read_progress_log(trained / "nerf" / "metrics.jsonl")
    steps = [r["step"] for r in rows]
    assert steps[0] == 1 and steps[-1] == NERF_STEPS and steps == sorted(set(steps))
    elapsed = [r["elapsed_s"] for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["psnr"]) and r["lr"] > 0 for r in rows)
    # the model learnt: the batch PSNR of the last lines is above the first's (measured 17 -> 27 dB)
    assert rows[-1]["psnr"] > rows[0]["psnr"] + 3
    assert not (trained / ".resume" / "nerf").exists()


def test_a_poses_only_workspace_gets_a_report_of_its_poses(poses_only):
    html = page(poses_only)
    assert '<section id="poses">' in html
    for absent in ("nerf", "surface", "eval"):
        assert f'<section id="{absent}">' not in html
    assert "Mean reprojection error per registered image (8 images, median 0.75 px)" in html
    per_image = json.loads((poses_only / "poses" / "report.json").read_text())["per_image"]
    assert f"largest: {max(per_image, key=lambda n: per_image[n]['reprojection_error_px'])} 1.2 px" in html
    assert "r_extra" in html and "too few matches: 12 inliers" in html  # unregistered, and why
    assert "8 cameras, 2000 sparse points" in html
    assert 'class="section-error"' not in html


def test_the_point_budget_subsamples_the_sparse_points(poses_only, copy_of):
    ws = copy_of(poses_only)
    run_cli("report", "--workspace", str(ws), "point_budget=500", cwd=ws.parent)
    assert "8 cameras, 500 sparse points" in page(ws)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, RECON_QUIET="1"), timeout=120)


def test_an_empty_or_missing_workspace_is_one_clear_line(tmp_path):
    (tmp_path / "E").mkdir()
    proc = cli("report", "--workspace", "E", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: nothing to report in ") and "run `python run.py poses" in proc.stderr
    assert not (tmp_path / "E" / "report").exists()
    proc = cli("report", "--workspace", "missing", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no workspace at ")
    assert not (tmp_path / "missing").exists()


def test_the_report_reruns_when_a_stage_changed(trained, copy_of):
    ws = copy_of(trained)
    args = ("report", "--workspace", str(ws), f"mesh_face_budget={FACE_BUDGET}")
    assert "report: up to date" in run_cli(*args, cwd=ws.parent).stderr
    run_cli("eval", "--workspace", str(ws), "--force", *TINY_EVAL, cwd=ws.parent)
    assert "report: re-running because eval/manifest.json changed" in run_cli(*args, cwd=ws.parent).stderr


def test_simplify_keeps_the_shape_under_the_face_budget():
    from skimage.measure import marching_cubes

    grid = np.linspace(-1, 1, 64)
    x, y, z = np.meshgrid(grid, grid, grid, indexing="ij")
    verts, faces, _, _ = marching_cubes(np.sqrt(x ** 2 + y ** 2 + z ** 2) - 0.8, 0.0, spacing=(2 / 63,) * 3)
    verts = verts - 1
    colors = np.clip((verts + 1) * 127, 0, 255).astype(np.uint8)
    v, f, c = simplify(verts, faces.astype(np.int64), colors, 2000)
    assert len(faces) > 10000 and 1000 < len(f) <= 2000 and f.max() < len(v) and c.shape == (len(v), 3)
    radius = np.linalg.norm(v[np.unique(f)], axis=1)
    assert np.abs(radius - 0.8).max() < 0.1  # still the sphere
    # colours follow their vertices (a vertex's colour is the mean of those it merged)
    assert np.abs(c.astype(float) - (v + 1) * 127).max() < 20
