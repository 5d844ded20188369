"""The NeRF stage on a tiny ball workspace: it trains, evaluates and reloads; its config files load."""
import json

import numpy as np
import torch

from pipeline.models.nerf import io as nerf_io
from pipeline.models.render import DensityModel
from tests.scenes import write_ball_workspace
from tests.tiny_configs import tiny_nerf_config


def test_the_stage_trains_evaluates_and_reloads(tmp_path, one_thread):
    from pipeline.runner.stage import run_stage
    from stages.nerf import STAGE

    ws = write_ball_workspace(tmp_path)
    result = run_stage(STAGE, ws, tiny_nerf_config(max_steps=30))
    out = ws.stage_dir("nerf")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["psnr"] > 10 and metrics["samples_per_s"] > 0
    assert metrics["lpips"] is not None or metrics["lpips_reason"]
    assert (out / "renders" / "v0.png").exists()
    depth = np.load(out / "depth" / "v0.npy")
    assert depth.shape == (16, 16)
    assert result.manifest["metrics"]["psnr"] == metrics["psnr"]
    model = nerf_io.load_trained(ws)
    assert isinstance(model, DensityModel)
    sigma = model.query_density(torch.zeros(4, 3))
    assert sigma.shape == (4,)
    assert not (ws.root / ".resume" / "nerf").exists()  # cleared on success


def test_config_files_load():
    from stages.nerf import STAGE

    for name in (None, "nerf-hash", "nerf-fourier", "nerf-siren", "nerf-hash-gpu"):
        cfg = STAGE.load_config(name)
        assert cfg.model.kind in ("hash", "fourier")
    assert STAGE.load_config("nerf-siren").model.activation == "siren"
    assert STAGE.load_config("nerf-hash") == STAGE.load_config()  # the named default adds nothing
