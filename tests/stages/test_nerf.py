"""The NeRF stage on a tiny ball workspace: it trains, evaluates and reloads; its config files load."""
import json

import numpy as np
import pytest
import torch

from pipeline.evaluation.metrics import psnr, ssim
from pipeline.models.nerf import io as nerf_io
from pipeline.models.render import DensityModel
from tests.scenes import write_ball_workspace
from tests.stages.test_eval import check_lpips
from tests.tiny_configs import tiny_nerf_config


def test_the_stage_trains_evaluates_and_reloads(tmp_path, one_thread):
    """250 tiny steps (~2 s) learn the ball: the held-out view beats the best constant image by
    far (measured: 19.2-19.5 dB against 10.0 dB, SSIM 0.88 against 0.13; 150 steps reach only
    14.9 dB, an untrained model 10.3 dB), and its depth lands on the ball."""
    from pipeline.runner.stage import run_stage
    from stages.nerf import STAGE

    ws = write_ball_workspace(tmp_path)
    result = run_stage(STAGE, ws, tiny_nerf_config(max_steps=250, checkpoint_every=50))
    out = ws.stage_dir("nerf")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 250 and metrics["samples_per_s"] > 0
    assert metrics["eval_on"] == "test split"  # the ball workspace holds out v0
    gt = ws.load_scene().load_image(0)
    constant = np.broadcast_to(gt.reshape(-1, 3).mean(0), gt.shape).copy()  # the best constant image
    assert metrics["psnr"] > psnr(constant, gt) + 6.0, metrics["psnr"]
    assert metrics["ssim"] > ssim(constant, gt) + 0.5, metrics["ssim"]
    check_lpips(metrics["lpips"], metrics["lpips_reason"])
    assert (out / "renders" / "v0.png").exists()
    depth = np.load(out / "depth" / "v0.npy")
    assert depth.shape == (16, 16) and np.isfinite(depth).all()
    # the camera is 2.55 from the ball's centre and the ball's silhouette spans a 0.72 radius
    # there: the centre pixel's surface lies in between, in the workspace's (unit) scale
    assert ws.normalization().scale == pytest.approx(1.0)
    assert 2.55 - 1.0 < depth[8, 8] < 2.55, depth[8, 8]
    assert result.manifest["metrics"]["psnr"] == metrics["psnr"]
    model = nerf_io.load_trained(ws)
    assert isinstance(model, DensityModel)
    sigma = model.query_density(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.95]]))
    assert sigma.shape == (2,) and sigma[0] > 10 * sigma[1]  # dense inside the ball, empty above it
    assert not (ws.root / ".resume" / "nerf").exists()  # cleared on success


def test_config_files_load():
    from stages.nerf import STAGE

    for name in (None, "nerf-hash", "nerf-fourier", "nerf-siren", "nerf-hash-gpu"):
        cfg = STAGE.load_config(name)
        assert cfg.model.kind in ("hash", "fourier")
    assert STAGE.load_config("nerf-siren").model.activation == "siren"
    assert STAGE.load_config("nerf-hash") == STAGE.load_config()  # the named default adds nothing


def test_a_first_use_kernel_build_does_not_eat_the_training_budget(tmp_path, one_thread, monkeypatch):
    from pipeline.kernels import cpu_kernels
    from pipeline.runner.stage import run_stage
    from stages.nerf import STAGE

    if not cpu_kernels.available():
        pytest.skip(f"no CPU kernels here: {cpu_kernels.unavailable_reason()}")
    build = cpu_kernels._build

    def slow_build(compiler):  # a first build on a fresh machine, cut to 2 s (the library is cached)
        import time

        time.sleep(2.0)
        return build(compiler)

    monkeypatch.setattr(cpu_kernels, "_state", {"lib": None, "error": None})  # not loaded yet
    monkeypatch.setattr(cpu_kernels, "_build", slow_build)
    ws = write_ball_workspace(tmp_path)
    run_stage(STAGE, ws, tiny_nerf_config(max_steps=10 ** 5, max_time_s=1.0, checkpoint_every=0))
    metrics = json.loads((ws.stage_dir("nerf") / "metrics.json").read_text())
    assert cpu_kernels._state["lib"] is not None  # the build did run in this stage
    # a tiny step takes ~10 ms: the budget is for training, not for the build
    assert metrics["steps"] > 20 and metrics["train_time_s"] < 1.5, metrics
