"""The IDR training loop: one step (trace, sample network, renderer, losses), the optimiser with
its schedules, checkpoints in the stage's resume folder (every ``checkpoint_every`` steps /
``checkpoint_every_s`` trained seconds and at the end; resumed only when made with the same
training config, see ``pipeline.training.common``), and the step/time budget."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from pipeline.geometry.cameras import Cameras
from pipeline.models.idr.cameras import PoseCorrections, corrected_cameras
from pipeline.models.components.batch_rows import normal_rows
from pipeline.models.idr.losses import LossConfig, mask_alpha, mask_loss, rgb_loss, smoothness_loss
from pipeline.models.idr.model import IDRModel, RendererConfig, uniform_ball_points
from pipeline.training import distributed
from pipeline.training.averaging import TailAverage
from pipeline.training.common import (SURFACE_NOT_RESUME_KEYS, Budget, TrainingSession, adam, decay_factor,
                                      load_resumable, restore_or_start_afresh, save_checkpoint)

CHECKPOINT_NAME = "checkpoint.pt"
NOT_RESUME_KEYS = SURFACE_NOT_RESUME_KEYS + ("render_chunk",)


@dataclass
class TrainSettings:
    """What the loop needs of the idr stage's config (see ``stages.idr.IDRConfig`` for each)."""

    max_steps: int
    max_time_s: float  # trained seconds, counted across resumes; 0 = no time budget
    batch_rays: int
    eikonal_points: int
    lr: float
    lr_grid: float
    lr_cameras: float
    lr_final_factor: float
    average_tail: float  # the saved weights are their mean over this last share of the budget (0 = last step's)
    checkpoint_every: int  # steps; 0 = off
    checkpoint_every_s: float  # seconds; 0 = off
    seed: int
    # what a checkpoint must have been made with to be resumed (pipeline.training.common.resume_config;
    # None: not checked)
    resume_config: Optional[dict]
    camera_gauge: bool  # trainable cameras: remove the common similarity drift after each step


def training_renderer(renderer: RendererConfig, train_cameras: bool, camera_coarse_to_fine: float) -> RendererConfig:
    """The renderer config to train with: with trainable cameras the appearance grid's levels fade
    in over ``camera_coarse_to_fine`` of training (0 keeps ``renderer.coarse_to_fine``)."""
    if train_cameras and camera_coarse_to_fine > 0:
        return dataclasses.replace(renderer, coarse_to_fine=camera_coarse_to_fine)
    return renderer


def training_step(model: IDRModel, cameras: Cameras, corrections: Optional[PoseCorrections], batch,
                  loss_cfg: LossConfig, alpha: float, eikonal_points: int,
                  generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict]:
    """Losses of one batch of rays. batch: (view (N,), uv (N, 2), rgb (N, 3), mask (N,)).

    Under DDP ``batch`` is the global batch: every rank draws every random number of the step (the
    same generator on every rank) and computes its rows only (its rays, its share of the eikonal
    points); each term is its rows' sum over the global count times the world size, so that DDP's
    average of the gradients is one process's."""
    rows = distributed.batch_rows(len(batch[0]))
    view, uv, rgb_gt, mask_gt = batch if rows is None else (rows.take(t) for t in batch)
    n_all = len(batch[0])
    cams = corrected_cameras(cameras, view, corrections)
    rays_o, rays_d, _ = cams.generate_rays(uv)
    hits = model.trace(rays_o, rays_d)
    surface = hits.hit & mask_gt
    others = ~surface & hits.in_sphere
    idx_s = surface.nonzero().squeeze(1)
    idx_m = others.nonzero().squeeze(1)
    n_surface = int(distributed.all_reduce_sum([len(idx_s)])[0])  # the global batch's

    rgb_pred, grad_surface, surface_points = model.shade_surface(rays_o[idx_s], rays_d[idx_s], hits.t[idx_s])
    # mask loss at the smallest-SDF point of missed rays (the hit point for hits outside the mask);
    # the point moves with the rays, so trainable cameras also learn from silhouettes
    x_mask = rays_o[idx_m] + hits.t[idx_m].unsqueeze(-1) * rays_d[idx_m]
    sdf_mask = model.sdf_network.sdf(x_mask)
    radius = model.tracing.radius
    eik = uniform_ball_points(eikonal_points, radius, generator=generator, device=rays_o.device)
    ball_rows = distributed.batch_rows(len(eik))
    eik = eik if ball_rows is None else ball_rows.take(eik)
    n_ball = len(eik)
    smooth = loss_cfg.smoothness_weight > 0
    if smooth:  # displaced surface points share the eikonal batch (their gradients serve both terms)
        # drawn for every ray of the batch, surface or not: the draws do not depend on the hits
        jitter = normal_rows(rows, len(view), 3, generator, "cpu").to(rays_o.device)
        eik = torch.cat([eik, surface_points.detach() + loss_cfg.smoothness_std * jitter[idx_s]])
    _, _, grad_eik = model.sdf_network.sdf_and_gradient(eik, create_graph=True)
    global_mean = distributed.global_mean_of_sum
    l_smooth = (global_mean(smoothness_loss(grad_surface, grad_eik[n_ball:]) * len(idx_s), n_surface) if smooth
                else grad_eik.sum() * 0.0)

    # rgb_loss and mask_loss divide by the ray count they are given: the global batch's
    l_rgb = rgb_loss(rgb_pred, rgb_gt[idx_s], n_all) * distributed.world_size()
    l_mask = mask_loss(sdf_mask, mask_gt[idx_m], alpha, n_all) * distributed.world_size()
    grads = torch.cat([grad_surface, grad_eik])
    l_eik = global_mean(((grads.norm(dim=-1) - 1.0) ** 2).sum(), n_surface * (2 if smooth else 1) + eikonal_points)
    loss = (loss_cfg.rgb_weight * l_rgb + loss_cfg.mask_weight * l_mask + loss_cfg.eikonal_weight * l_eik
            + loss_cfg.smoothness_weight * l_smooth)
    with torch.no_grad():
        hit_in_mask = float(surface.sum()) / max(1, int(mask_gt.sum()))
        psnr = -10 * torch.log10(((rgb_pred - rgb_gt[idx_s]) ** 2).mean().clamp_min(1e-10)) if len(idx_s) else None
    stats = {"loss": float(loss.detach()), "rgb": float(l_rgb.detach()), "mask": float(l_mask.detach()),
             "eikonal": float(l_eik.detach()), "smoothness": float(l_smooth.detach()),
             "hit_in_mask": hit_in_mask, "psnr": float(psnr) if psnr is not None else float("nan")}
    return loss, stats


def distributed_step(model: IDRModel, cameras: Cameras, corrections: Optional[PoseCorrections], batch,
                     loss_cfg: LossConfig, alpha: float, eikonal_points: int,
                     generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, dict]:
    """:func:`training_step` as the forward of DDP: every parameter in the loss (an empty batch
    included)."""
    loss, stats = training_step(model, cameras, corrections, batch, loss_cfg, alpha, eikonal_points, generator)
    return distributed.touch_all(loss, [model, corrections]), stats


def make_optimizer(model: IDRModel, corrections: Optional[PoseCorrections], settings: TrainSettings):
    grid, other = [], []
    for name, p in model.named_parameters():
        # hash-grid tables (geometry and appearance) learn at the grid rate, as in instant-ngp
        (grid if name.endswith("encoding.table") else other).append(p)
    groups = [{"params": other, "lr": settings.lr, "base_lr": settings.lr}]
    if grid:
        groups.append({"params": grid, "lr": settings.lr_grid, "base_lr": settings.lr_grid})
    if corrections is not None:
        groups.append({"params": list(corrections.parameters()), "lr": settings.lr_cameras,
                       "base_lr": settings.lr_cameras})
    return adam(groups, fused=False, betas=(0.9, 0.99), eps=1e-15)


def _checkpoint_state(model, corrections, optimizer, tail, iteration, elapsed, generator_state, settings) -> dict:
    return {"iteration": iteration, "elapsed_s": elapsed, "model": model.state_dict(), "average": tail.state_dict(),
            "corrections": corrections.state_dict() if corrections is not None else None,
            "optimizer": optimizer.state_dict(), "generator": generator_state,
            "config": settings.resume_config}


def train(model: IDRModel, cameras: Cameras, corrections: Optional[PoseCorrections], bank, loss_cfg: LossConfig,
          settings: TrainSettings, resume_dir: Path, log) -> dict:
    """Train until ``max_steps`` or ``max_time_s`` (counted across resumes). Returns a summary.

    Under torchrun (:mod:`pipeline.training.distributed`) every rank draws each step's whole batch
    and eikonal points with one process's generator and computes its rows (:func:`training_step`),
    DDP averages the gradients, rank 0's checkpoint is broadcast on resume and rank 0 alone saves:
    N ranks train as one process does, up to the order of float sums."""
    budget = Budget(settings.max_steps, settings.max_time_s)
    main = distributed.is_main()
    generator = torch.Generator().manual_seed(settings.seed)  # the same on every rank
    device = model.background.device
    optimizer = make_optimizer(model, corrections, settings)
    tail = TailAverage(model, settings.average_tail)
    ckpt_path = Path(resume_dir) / CHECKPOINT_NAME
    start, elapsed = 0, 0.0
    state = distributed.broadcast_object(load_resumable(ckpt_path, settings.resume_config, log, "idr")
                                         if main else None)

    def restore(state: dict) -> None:
        nonlocal start, elapsed
        counters = int(state["iteration"]), float(state["elapsed_s"])
        model.load_state_dict(state["model"])
        if corrections is not None and state["corrections"] is not None:
            corrections.load_state_dict(state["corrections"])
        elif (corrections is None) != (state["corrections"] is None):
            raise ValueError("trainable cameras (train_cameras) differ")
        optimizer.load_state_dict(state["optimizer"])
        tail.load_state_dict(state["average"])
        generator.set_state(state["generator"])  # every rank: rank 0's, the one stream they all draw
        start, elapsed = counters

    modules = [model, optimizer, tail] + ([corrections] if corrections is not None else [])
    if state is not None and restore_or_start_afresh(state, ckpt_path, restore, log, "idr", modules, [generator]):
        log.info(f"idr: resuming from step {start} ({elapsed:.1f}s trained) of {ckpt_path}")
    stats: dict = {}
    rng_at_step_start = generator.get_state()  # an interrupted step is redone from here

    def save(iteration: int, spent: float) -> None:
        save_checkpoint(ckpt_path, _checkpoint_state(model, corrections, optimizer, tail, iteration, spent,
                                                     rng_at_step_start, settings))

    forward = distributed.ddp_step(distributed_step, [model, corrections], find_unused_parameters=True)
    rays, eikonal_points = settings.batch_rays, settings.eikonal_points  # the global batch's, drawn on every rank
    if distributed.world_size() > 1:
        log.info(f"idr: DistributedDataParallel on {distributed.world_size()} processes "
                 f"({distributed.dist.get_backend()}), {rays} rays per step in all, "
                 f"{distributed.shard(rays)} per process")
    with TrainingSession("idr", budget, settings.checkpoint_every, settings.checkpoint_every_s, resume_dir, start,
                         elapsed, save, log, device, clock=lambda: time.time()) as session:
        while session.iteration < budget.max_steps and not session.time_up():
            frac = budget.progress(session.iteration, session.spent())
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * decay_factor(settings.lr_final_factor, frac)
            alpha = mask_alpha(loss_cfg, frac)
            model.set_progress(frac)
            # rays are drawn on the CPU (one generator: the same batches on any device), then moved
            batch = tuple(t.to(device) for t in bank.sample(rays, generator))
            loss, stats = forward(model, cameras, corrections, batch, loss_cfg, alpha, eikonal_points, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if corrections is not None and settings.camera_gauge:
                corrections.remove_gauge(cameras.c2w)
            tail.update(model, frac)
            rng_at_step_start = generator.get_state()
            session.step_done(stats, optimizer.param_groups[0]["lr"],
                              postfix={"loss": f"{stats['loss']:.4f}", "psnr": f"{stats['psnr']:.1f}",
                                       "hit": f"{stats['hit_in_mask']:.2f}"},
                              curve_keys=("loss", "psnr", "rgb", "mask", "eikonal", "hit_in_mask"),
                              log_line=", ".join(f"{k} {stats[k]:.4f}" for k in ("loss", "rgb", "mask", "eikonal",
                                                                                  "psnr", "hit_in_mask") if k in stats))
    model.set_progress(1.0)
    total = session.finish()  # its checkpoint keeps the last step's weights (and the mean) to resume from
    tail.apply_to(model)  # the mean, when any step was averaged
    return {"steps": session.iteration, "train_time_s": total, "stopped_by_time": session.stopped_by_time,
            "averaged_steps": tail.count, "last_step": stats}
