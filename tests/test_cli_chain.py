"""The command line end to end, as a user types it, on a really trained tiny model: ``synthetic``,
``poses``, ``nerf``, then ``export`` and ``eval`` of that model (one workspace, trained once for
the module), and the demo chain on a budget of a few seconds. Every command runs in its own
process (``python run.py ...``); the outputs are checked against the scene's ground truth and
against what a model that learnt nothing would score."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import imageio.v2 as iio2
import imageio.v3 as iio
import numpy as np
import pytest

from pipeline.geometry.mesh import read_ply
from stages import DEMO_CHAINS
from tests.stages.test_eval import check_lpips

ROOT = Path(__file__).resolve().parent.parent
VIEWS, SIZE = 8, 32  # the synthetic scene: 6 training views, 2 test views (r_0, r_5) of 32x32
# the tiny NeRF of tests/tiny_configs.py as key=value overrides (hash grid on the default
# backend), one torch thread (faster than two on a shared 2-core machine)
TINY_NERF = ["model.grid.levels=6", "model.grid.features_per_level=2", "model.grid.log2_table_size=12",
             "model.grid.base_resolution=4", "model.grid.finest_resolution=64", "model.width=16",
             "model.occupancy_resolution=8", "model.march_steps=32", "samples_per_batch=2048",
             "initial_rays=128", "occupancy_warmup_steps=4", "occupancy_update_every=2", "cpu_threads=1"]
# export and eval sized for seconds: a 4-frame orbit, a 32^3 mesh, few surface samples
TINY_EXPORT = ["frames=4", "width=32", "height=24", "mesh_resolution=32"]
TINY_EVAL = ["mesh_resolution=32", "mesh_samples=5000"]


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` in ``cwd``; fails the test with its output unless it exits 0."""
    env = dict(os.environ, RECON_QUIET="1")
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"run.py {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def manifest(workspace: Path, stage: str) -> dict:
    return json.loads((workspace / stage / "manifest.json").read_text())


def rgb_on_white(path: Path) -> np.ndarray:
    """A scene image (H, W, 3) in [0, 1], RGBA composited on the scene's white background."""
    img = iio.imread(path).astype(np.float64) / 255
    return img[..., :3] * img[..., 3:] + (1 - img[..., 3:]) if img.shape[-1] == 4 else img[..., :3]


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def learnt_nothing_psnr(gt: np.ndarray) -> float:
    """The better of the two images a model that learnt nothing comes near: the best constant
    image (the mean colour) and the empty scene (all background, white)."""
    return max(psnr_db(np.broadcast_to(gt.reshape(-1, 3).mean(0), gt.shape), gt), psnr_db(np.ones_like(gt), gt))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(folder, scene, workspace) after ``synthetic``, ``poses`` and a tiny ``nerf`` run through the
    CLI. 500 steps (2-4 s of training) reach 20.3-21.1 dB on the test views against 13.8 dB for
    the empty scene (measured; 100 steps: 15.6 dB, mask IoU 0.53)."""
    root = tmp_path_factory.mktemp("cli chain")  # a space in the path, as users have
    run_cli("synthetic", "--out", "scene", "--views", str(VIEWS), "--size", str(SIZE), cwd=root)
    run_cli("poses", "--data", "scene", "--workspace", "W", cwd=root)
    # max_time_s only caps a very slow machine: the step count ends training, so the model is the same
    run_cli("nerf", "--workspace", "W", *TINY_NERF, "max_steps=500", "max_time_s=60", cwd=root)
    return root, root / "scene", root / "W"


def test_nerf_trained_through_the_cli_learnt_the_scene(trained):
    _, scene, ws = trained
    metrics = json.loads((ws / "nerf" / "metrics.json").read_text())
    assert metrics["steps"] == 500 and metrics["eval_on"] == "test split"
    baseline = np.mean([learnt_nothing_psnr(rgb_on_white(scene / "test" / f"{n}.png")) for n in ("r_0", "r_5")])
    assert metrics["psnr"] > baseline + 4.0, (metrics["psnr"], baseline)
    check_lpips(metrics["lpips"], metrics["lpips_reason"])
    assert manifest(ws, "nerf")["status"] == "done"
    assert not (ws / ".resume" / "nerf").exists()


def test_export_of_the_trained_model_writes_sane_depth_views_and_mesh(trained):
    root, scene, ws = trained
    run_cli("export", "--workspace", "W", *TINY_EXPORT, cwd=root)
    out = ws / "export"
    assert manifest(ws, "export")["status"] == "done" and manifest(ws, "export")["metrics"]["method"] == "nerf"
    for name in ("r_0", "r_5"):  # the eval split's views, in the scene's own units
        depth = np.load(out / "depth" / f"{name}.npy")
        assert depth.shape == (SIZE, SIZE) and depth.dtype == np.float32 and np.isfinite(depth).all()
        gt = np.load(scene / "depth" / f"{name}.npy")
        gt_mask = iio.imread(scene / "masks" / f"{name}.png") > 127
        both = gt_mask & (depth > 0) & (gt > 0)
        # the model covers the object (measured: all GT-mask pixels) and its depth lands on it
        # (median error 3%; a depth left in the normalised frame would be 29% off here)
        assert both.sum() > 0.7 * gt_mask.sum(), (both.sum(), gt_mask.sum())
        assert np.median(np.abs(depth[both] - gt[both]) / gt[both]) < 0.1
        png = iio.imread(out / "depth" / f"{name}_depth16.png")
        assert png.dtype == np.uint16 and png.shape == (SIZE, SIZE) and png.max() > 0
    frames = sorted((out / "views").glob("frame_*.png"))
    assert len(frames) == 4 and iio.imread(frames[0]).shape == (24, 32, 3)
    reader = iio2.get_reader(str(out / "views" / "video.mp4"))
    try:
        assert reader.count_frames() == 4 and reader.get_data(0).shape == (24, 32, 3)
    finally:
        reader.close()
    verts, faces, _ = read_ply(out / "mesh.ply")
    gt_verts, _, _ = read_ply(scene / "mesh_gt.ply")
    assert len(faces) > 100 and np.isfinite(verts).all()
    # the same object in the same place and units: per axis the extents agree within 20% (measured
    # 0.90-0.99; a mesh left in the normalised frame: 0.71) and the corners within 20% of its size
    # (measured 10%)
    extent_ratio = np.ptp(verts, axis=0) / np.ptp(gt_verts, axis=0)
    assert np.all((extent_ratio > 0.8) & (extent_ratio < 1.2)), extent_ratio
    size = np.ptp(gt_verts, axis=0).max()
    assert np.abs(verts.min(0) - gt_verts.min(0)).max() < 0.2 * size
    assert np.abs(verts.max(0) - gt_verts.max(0)).max() < 0.2 * size
    assert (out / "points.ply").exists() and (out / "mesh.obj").exists()


def test_eval_of_the_trained_model_beats_a_model_that_learnt_nothing(trained):
    root, scene, ws = trained
    proc = run_cli("eval", "--workspace", "W", *TINY_EVAL, cwd=root)
    metrics = json.loads((ws / "eval" / "metrics.json").read_text())
    views = metrics["views"]
    assert metrics["method"] == "nerf" and views["views"] == 2 and views["split"] == "eval"
    psnrs, baselines = [], []
    for row in views["per_view"]:
        gt = rgb_on_white(scene / "test" / f"{row['name']}.png")
        render = iio.imread(ws / "eval" / "renders" / f"{row['name']}.png").astype(np.float64) / 255
        assert render.shape == gt.shape
        psnrs.append(psnr_db(render, gt))  # from the saved 8-bit render: within quantisation of the metric
        assert row["psnr"] == pytest.approx(psnrs[-1], abs=0.1)
        baselines.append(learnt_nothing_psnr(gt))
    assert views["psnr"] == pytest.approx(np.mean([r["psnr"] for r in views["per_view"]]))
    assert views["psnr"] > np.mean(baselines) + 4.0, (views["psnr"], baselines)
    assert views["mask_iou"] > 0.75  # measured 0.88-0.90; 100 steps: 0.53, an empty model 0
    assert views["depth_abs_rel"] < 0.1 and views["depth_region"] == "GT mask"  # measured 0.037-0.038
    assert np.isfinite(metrics["geometry"]["chamfer_l1"])
    check_lpips(views.get("lpips"), views.get("lpips_unavailable"))
    table = proc.stdout
    assert "PSNR (dB)" in table and f"{views['psnr']:.4g}" in table and "mask IoU" in table
    if "lpips_unavailable" in views:  # the table gives metrics.json's reason
        assert views["lpips_unavailable"].removeprefix("LPIPS unavailable: ") in table


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(demo workspace, the command's stdout) of ``run.py demo`` with a 3-second NeRF."""
    from pipeline.kernels import cpu_kernels

    # build the C++ kernels' disk cache first: a first-use build still counts against max_time_s
    # (xfail in tests/stages/test_nerf.py) and would eat the whole 3 s
    cpu_kernels.load()
    root = tmp_path_factory.mktemp("demo")
    proc = run_cli("demo", "--out", "D", "--views", str(VIEWS), "--size", str(SIZE), "max_time_s=3",
                   *TINY_NERF, *TINY_EXPORT, *TINY_EVAL, cwd=root)
    assert (root / "D" / "scene" / "transforms_train.json").exists()
    return root / "D" / "workspace-nerf", proc.stdout


def test_demo_chain_end_to_end_on_a_tiny_budget(demo):
    """Every stage of the chain runs and finishes; demo-wide overrides reach exactly the stages
    that have those keys; the 3-second budget ends NeRF training."""
    ws, stdout = demo
    for stage in DEMO_CHAINS["nerf"]:
        m = manifest(ws, stage)
        assert m["stage"] == stage and m["status"] == "done", (stage, m.get("status"))
        assert f"{stage}: outputs in {ws / stage}" in stdout
    nerf = manifest(ws, "nerf")
    assert nerf["config"]["max_time_s"] == 3 and nerf["config"]["model"]["grid"]["levels"] == 6
    # the budget ended training (the default max_steps is far off); a step may run past it
    assert 0 < nerf["metrics"]["steps"] < nerf["config"]["max_steps"]
    assert nerf["metrics"]["train_time_s"] < 3 + 1.0
    assert manifest(ws, "export")["config"]["mesh_resolution"] == 32
    assert manifest(ws, "eval")["config"]["mesh_resolution"] == 32
    assert manifest(ws, "eval")["config"]["mesh_samples"] == 5000
    assert np.isfinite(json.loads((ws / "eval" / "metrics.json").read_text())["views"]["psnr"])
    assert "eval (nerf):" in stdout and "PSNR (dB)" in stdout  # the evaluation table
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("demo done in ") and "not available" not in last


def test_demo_final_line_names_the_workspace_folder(demo):
    ws, stdout = demo
    assert stdout.strip().splitlines()[-1].endswith(f": workspace {ws}")
