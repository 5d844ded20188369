"""SDF stage training speed against the NeRF stage's, per field sample (issue #27: <= 2x).

Trains the NeRF stage (default config) and the sdf stage (default config and the variants given
by ``--variant NAME:key=value,key=value``) for a fixed number of steps on the same scene, in
alternating rounds (the machine may be shared: the ratio of neighbouring runs is what counts), and
prints ms/step, samples/step, microseconds per sample and the ratio to NeRF's per-sample cost.

    python bench/sdf_speed.py                                     # built-in scene, 2 rounds
    python bench/sdf_speed.py --workspace W --steps 60 --rounds 3 --threads 1
    python bench/sdf_speed.py --variant second-order:sample_gradients=differentiable,sdf.hash_backend=torch

The workspace needs poses (``run.py poses``); without ``--workspace`` the built-in scene is made in
``--out``. Nothing is written to the repository.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.models.sdf.io import build_model  # noqa: E402
from pipeline.models.sdf.model import SDFModelConfig  # noqa: E402
from pipeline.runner.config import load_config  # noqa: E402
from pipeline.runner.workspace import Workspace  # noqa: E402
from pipeline.training import sdf as sdf_training  # noqa: E402
from pipeline.training.common import settings_from  # noqa: E402
from pipeline.training.idr_data import background_color, load_views, train_test_split  # noqa: E402
from pipeline.training.nerf_fit import fit_nerf  # noqa: E402
from pipeline.training.sdf_data import PixelRays, full_masks  # noqa: E402
from stages.nerf import NerfConfig  # noqa: E402
from stages.sdf import SDFStageConfig  # noqa: E402

QUIET = logging.getLogger("bench.sdf_speed")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


def nerf_round(ws: Workspace, steps: int, warmup: int) -> dict:
    """ms/step and samples/step of the NeRF stage's loop, past ``warmup`` steps."""
    scene = ws.load_scene()
    train_idx = scene.split("train")
    times = {}
    for n in (warmup, warmup + steps):
        cfg = load_config(NerfConfig, None, [f"max_steps={n}", "max_time_s=0"])
        with tempfile.TemporaryDirectory() as resume:
            _, stats = fit_nerf(scene, train_idx, cfg, torch.device("cpu"), Path(resume), QUIET)
        times[n] = (stats["train_time_s"], stats["samples"])
    dt = times[warmup + steps][0] - times[warmup][0]
    ds = times[warmup + steps][1] - times[warmup][1]
    return {"ms_step": 1000 * dt / steps, "samples_step": ds / steps}


def sdf_round(ws: Workspace, overrides: list[str], steps: int, warmup: int) -> dict:
    """ms/step and samples/step of the sdf stage's loop with ``overrides``, past ``warmup`` steps."""
    scene = ws.load_scene()
    times = {}
    for n in (warmup, warmup + steps):
        cfg = load_config(SDFStageConfig, None, [f"max_steps={n}", "max_time_s=0", *overrides])
        torch.manual_seed(cfg.seed)
        train_idx, _ = train_test_split(scene, cfg.holdout_every, cfg.eval_max_views, ws.transforms_path)
        views = load_views(scene, train_idx, full_masks(scene, train_idx), cfg.downscale)
        model_cfg = SDFModelConfig(cfg.field, cfg.sampling, cfg.sdf, cfg.renderer, cfg.background_field,
                                   cfg.sample_gradients)
        model = build_model(model_cfg, background_color(cfg.background, views))
        settings = settings_from(sdf_training.SDFTrainSettings, cfg, resume_config=None, mask_weight=0.0)
        with tempfile.TemporaryDirectory() as resume:
            summary = sdf_training.train(model, views.cameras, PixelRays(views), settings, Path(resume), QUIET)
        times[n] = (summary["train_time_s"], summary["samples"])
    dt = times[warmup + steps][0] - times[warmup][0]
    ds = times[warmup + steps][1] - times[warmup][1]
    return {"ms_step": 1000 * dt / steps, "samples_step": ds / steps}


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, keys = text.partition(":")
    return name, [k for k in keys.split(",") if k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path, help="a workspace with poses (default: the built-in scene)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/recon-bench-sdf-speed"))
    ap.add_argument("--steps", type=int, default=40, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=10, help="steps before timing (kernels, allocator)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the stages' default: 1)")
    ap.add_argument("--variant", action="append", default=[], help="NAME:key=value,... sdf config overrides")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ws_path = args.workspace
    if ws_path is None:
        scene_dir, ws_path = args.out / "scene", args.out / "workspace"
        if not (ws_path / "poses" / "transforms.json").exists():
            run = [sys.executable, str(ROOT / "run.py")]
            subprocess.run([*run, "synthetic", "--out", str(scene_dir)], check=True, stdout=subprocess.DEVNULL)
            subprocess.run([*run, "poses", "--data", str(scene_dir), "--workspace", str(ws_path)], check=True,
                           stdout=subprocess.DEVNULL)
    ws = Workspace(ws_path, create=False)
    variants = [("sdf default", [])] + [parse_variant(v) for v in args.variant]
    results: dict[str, list[dict]] = {"nerf": []}
    results.update({name: [] for name, _ in variants})
    for r in range(args.rounds):
        t = time.time()
        results["nerf"].append(nerf_round(ws, args.steps, args.warmup))
        for name, overrides in variants:
            results[name].append(sdf_round(ws, overrides, args.steps, args.warmup))
        print(f"round {r + 1}/{args.rounds} done in {time.time() - t:.0f} s", file=sys.stderr)

    print(f"\n{args.steps} timed steps after {args.warmup}, {args.rounds} alternating rounds, "
          f"{args.threads} thread(s); per-round ratios to the same round's NeRF\n")
    print("| method | ms/step | samples/step | us/sample | per-sample cost / NeRF's (each round) |")
    print("|---|---|---|---|---|")
    nerf_us = [1000 * r["ms_step"] / r["samples_step"] for r in results["nerf"]]
    for name, rows in results.items():
        us = [1000 * r["ms_step"] / r["samples_step"] for r in rows]
        ratios = ", ".join(f"{u / n:.2f}x" for u, n in zip(us, nerf_us))
        print(f"| {name} | {statistics.median(r['ms_step'] for r in rows):.1f} | "
              f"{statistics.median(r['samples_step'] for r in rows):.0f} | {statistics.median(us):.2f} | "
              f"{'-' if name == 'nerf' else ratios} |")


if __name__ == "__main__":
    main()
