"""NeRF stage: train a radiance field on the posed, normalised scene and evaluate it on held-out views.

Reads ``W/poses/transforms.json``; writes ``W/nerf/``: ``model.pt`` (config + weights), ``renders/``
(test-view PNGs), ``depth/`` (z-depth ``.npy`` in the ORIGINAL scene units) and ``metrics.json``
(PSNR, SSIM, LPIPS or null with the reason, training time, steps, samples/s).

Training samples random pixels of the training views (options: a share near the alpha
silhouettes, ``edge_fraction``, or drawn by each pixel's last error, ``error_fraction``). With the
occupancy sampler the ray batch is sized so that the samples per step stay near
``samples_per_batch`` (the occupancy grid makes samples per ray vary). It stops at ``max_steps``
or ``max_time_s`` (0 = no time budget), whichever comes first, with the learning rate decayed over
that progress. Checkpoints go to the stage's resume folder every ``checkpoint_every_s`` seconds of
training (30 by default, so a kill loses at most that) and/or every ``checkpoint_every`` steps,
and when training is interrupted; re-running resumes from the last one (step, weights, optimiser,
occupancy grid, RNG states, error map and trained seconds, which count against ``max_time_s``).
A checkpoint made with another training config or on other views is set aside with a warning
(``checkpoint.stale.pt``) and training starts afresh; an unreadable one likewise
(``checkpoint.corrupt.pt``). ``metrics.json``'s ``eval_on`` says which views were scored.

Panoramas (equirect frames): rows are drawn by cos(latitude) (``latitude_weighting``), the
held-out views are scored with WS-PSNR too, and ``holdout=a,b`` leaves those frames (stems) out
of training and evaluates on them instead (leave-one-out; ``configs/nerf-panorama.yaml``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipeline.evaluation.nerf_views import evaluate
from pipeline.models.nerf.io import save_model
from pipeline.models.nerf.model import NeRFModelConfig
from pipeline.panoramas.holdout import frame_names, split_holdout
from pipeline.runner.config import config_to_dict
from pipeline.runner.io import write_json
from pipeline.runner.runtime import pick_device, torch_threads
from pipeline.runner.stage import Stage, StageContext
from pipeline.training import distributed
from pipeline.training.common import DEFAULT_CHECKPOINT_EVERY_S, check_budget
from pipeline.training.nerf import uses_mixed_precision
from pipeline.training.nerf_fit import fit_nerf


@dataclass
class NerfConfig:
    """The default is an instant-ngp style model sized for CPUs: hash grid, small MLPs, occupancy
    grid; configs/nerf-*.yaml hold the variants."""

    model: NeRFModelConfig = field(default_factory=NeRFModelConfig)
    # --- scene
    scene_radius: float = 1.0  # the box [-r, r]^3 when the scene has no bounds (normalised frame)
    background: str = "random"  # training background: random (needs alpha) | white | black | learned | scene
    holdout: str = ""  # comma-separated frame stems left out of training and evaluated instead (leave-one-out)
    # cameras inside the scene (panoramas): rays start this fraction of the median distance between
    # neighbouring training cameras away from each camera (sets model.near_plane; 0 = keep it)
    camera_near_fraction: float = 0.0
    # --- optimisation
    max_steps: int = 60000  # an upper bound (>= 1): the time budget usually ends training first
    # training budget in seconds, counted across resumes (0 = no time budget, train to max_steps;
    # negative is an error); evaluation is not counted
    max_time_s: float = 600.0
    # occupancy sampler: target samples per step (hierarchical: rays x (coarse + fine)); smaller,
    # more frequent steps learn faster in a fixed budget, down to about this size (bench/RESULTS.md)
    samples_per_batch: int = 8192
    initial_rays: int = 2048  # occupancy sampler: first ray batch before it adapts to the sample budget
    max_rays: int = 16384
    lr: float = 0.01
    lr_final_factor: float = 0.05  # lr decays exponentially to lr * this at the end of the budget
    warmup_steps: int = 50
    weight_decay: float = 1e-6  # on MLP weights only
    # occupancy sampler: mip-NeRF 360 distortion loss, keeps the weights along each ray compact
    # (against few-view floaters); 0.01 is the best of 0..0.1 on lego-200 (bench/RESULTS.md)
    distortion_weight: float = 0.01
    occupancy_update_every: int = 16
    occupancy_warmup_steps: int = 128  # update every cell during these steps
    occupancy_fraction: float = 0.125  # cells re-sampled per update after warm-up
    occupancy_min_views: int = 2  # occupancy sampler: cells fewer training views see stay empty (floaters; 0 = off)
    # share of each batch's rays drawn near the alpha silhouettes (needs alpha); off: no gain on lego-200
    edge_fraction: float = 0.0
    edge_width: int = 2  # pixels on either side of a silhouette edge
    # share of each batch's rays drawn in proportion to each pixel's last error (instant-ngp's error
    # map); off: no gain on lego-200
    error_fraction: float = 0.0
    # panoramas: draw rows in proportion to cos(latitude) (uniform on the sphere; no effect on
    # perspective views), so the stretched poles do not dominate
    latitude_weighting: bool = True
    # RAM the training pixels may take, stored uint8 (4 B per RGBA pixel); beyond it they are decoded
    # once into a file in the resume folder and memory-mapped (0 = half of the available RAM)
    data_memory_gb: float = 0.0
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int = 0  # torch threads during this stage on CPU (0 = torch's default); 1 is faster
    # than 2 when other processes keep the cores busy (threads then wait on each other)
    # bfloat16 autocast of the networks on CUDA: off, the hash model's small MLPs lose accuracy in
    # bf16 and gain no speed (bench/RESULTS.md)
    mixed_precision: bool = False
    # the same on CPUs with AMX bf16 units (a no-op on other CPUs): off for the hash model, which
    # loses accuracy in bf16; nerf-fourier turns it on (its 8x256 MLP trains much faster)
    cpu_mixed_precision: bool = False
    checkpoint_every: int = 0  # steps between checkpoints (0 = off: the time-based ones below suffice)
    # seconds of training between checkpoints (0 = off): a kill loses at most this much training;
    # a save of the default model (40 MiB with the optimiser state) takes ~45 ms on a CPU
    checkpoint_every_s: float = DEFAULT_CHECKPOINT_EVERY_S
    # --- evaluation
    eval_chunk: int = 8192
    eval_max_views: int = 0  # 0 = all views of the eval split
    lpips: bool = True


def run(ctx: StageContext) -> dict:
    cfg: NerfConfig = ctx.config
    check_budget(cfg)  # before any work
    with torch_threads(cfg.cpu_threads):
        return _run(ctx, cfg)


def _run(ctx: StageContext, cfg: NerfConfig) -> dict:
    device = pick_device(cfg.device)
    scene = ctx.workspace.load_scene()
    train_idx = scene.split("train")
    eval_idx = scene.eval_split()
    eval_note = "test split"
    if cfg.holdout:
        train_idx, eval_idx = split_holdout(scene, cfg.holdout)
        eval_note = f"held out of training: {', '.join(frame_names(scene)[i] for i in eval_idx)}"
    if not eval_idx:
        eval_idx = train_idx[:: max(1, len(train_idx) // 5)]
        eval_note = "training views (no held-out split)"
    if cfg.eval_max_views:
        eval_idx = eval_idx[:cfg.eval_max_views]
    scored = views_scored(len(eval_idx), eval_note)
    model, stats = fit_nerf(scene, train_idx, cfg, device, ctx.resume_dir, ctx.log)
    if not distributed.is_main():  # under torchrun rank 0 alone saves and evaluates
        return {}
    save_model(ctx.out_dir / "model.pt", model, cfg.background, scene.background, config_to_dict(cfg))
    scale = ctx.workspace.normalization().scale
    metrics = evaluate(model, scene, eval_idx, ctx.out_dir, scale, cfg.eval_chunk, cfg.lpips,
                       uses_mixed_precision(device, cfg.mixed_precision, cfg.cpu_mixed_precision), device)
    metrics.update(stats, eval_on=eval_note, eval_description=scored, device=str(device), model=cfg.model.kind,
                   sampler=model.sampler, torch_threads=torch.get_num_threads())
    if model.occupancy is not None:
        metrics["occupancy_fraction"] = model.occupancy.occupancy_fraction()
    write_json(ctx.out_dir / "metrics.json", metrics)
    ws = f", WS-PSNR {metrics['ws_psnr']:.2f} dB" if metrics.get("ws_psnr") is not None else ""
    ctx.log.info(f"nerf: {stats['steps']} steps in {stats['train_time_s']:.0f}s "
                 f"({stats['samples_per_s']:.3g} samples/s); PSNR {metrics['psnr']:.2f} dB{ws}, "
                 f"SSIM {metrics['ssim']:.3f} on {scored}")
    keys = ("psnr", "ws_psnr", "ssim", "lpips", "steps", "train_time_s", "samples_per_s")
    return {k: metrics[k] for k in keys if k in metrics}


def views_scored(n: int, eval_on: str) -> str:
    """What the reported PSNR was measured on, for the log and ``metrics.json``: "4 views of the
    test split", "5 training views (no held-out split)", "1 view held out of training: a"."""
    views = f"{n} view{'s' if n != 1 else ''}"
    if eval_on == "test split":
        return f"{views} of the test split"
    if eval_on.startswith("training views"):
        return f"{n} training view{'s' if n != 1 else ''} (no held-out split)"
    return f"{views} {eval_on}"


STAGE = Stage(name="nerf", config_cls=NerfConfig, run=run, inputs=("poses/transforms.json",),
              produced_by={"poses/transforms.json": "python run.py poses --data DATA --workspace W"},
              description="train a NeRF (hash grid or Fourier features) and render the test views", distributed=True)
