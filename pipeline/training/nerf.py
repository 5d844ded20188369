"""The NeRF training loop: random pixels of the training views per step, the occupancy grid's
updates, the ray count steered to a sample budget, the optimiser and its schedule, checkpoints
(step, weights, optimiser, RNG states, error map, trained seconds and the config they were made
with) in the stage's resume folder: every ``checkpoint_every`` steps / ``checkpoint_every_s``
trained seconds, on an interruption and at the end of training. Under ``torchrun`` the same loop
runs data-parallel (DDP; :mod:`pipeline.training.distributed`): see :func:`train`."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.models.components.batch_rows import BatchRows
from pipeline.models.nerf.model import NeRFModel
from pipeline.runner.log import TrainingProgress, get_logger
from pipeline.runner.runtime import autocast
from pipeline.training import distributed
from pipeline.training.common import (Budget, CheckpointSchedule, adam, build_kernels_before_timing,
                                      decay_factor, load_resumable, restore_or_start_afresh, save_checkpoint)
from pipeline.training.nerf_data import PixelData
from pipeline.training.progress_log import ProgressLog

CHECKPOINT_NAME = "checkpoint.pt"
BACKGROUNDS = ("white", "black", "random", "learned", "scene")


@dataclass
class NeRFTrainSettings:
    """What the loop needs of the nerf stage's config (see ``stages.nerf.NerfConfig`` for each)."""

    background: str  # random | white | black | learned | scene
    max_steps: int
    max_time_s: float  # 0 = no time budget
    samples_per_batch: int
    initial_rays: int
    max_rays: int
    lr: float
    lr_final_factor: float
    warmup_steps: int
    weight_decay: float
    distortion_weight: float
    occupancy_update_every: int
    occupancy_warmup_steps: int
    occupancy_fraction: float
    error_fraction: float
    seed: int
    mixed_precision: bool
    cpu_mixed_precision: bool
    checkpoint_every: int
    checkpoint_every_s: float

    def __post_init__(self):
        if self.background not in BACKGROUNDS:
            raise ValueError(f"nerf background must be one of {BACKGROUNDS}, got {self.background!r}")


def uses_mixed_precision(device: torch.device, mixed_precision: bool, cpu_mixed_precision: bool) -> bool:
    """Whether the networks run under bf16 autocast on ``device`` (separate switches for CUDA and CPU)."""
    return mixed_precision if device.type != "cpu" else cpu_mixed_precision


def make_optimizer(model: NeRFModel, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    grid_params, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if name.startswith("field.encoding"):
            grid_params.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if grid_params:
        groups.append({"params": grid_params, "weight_decay": 0.0})
    hash_model = model.config.kind == "hash"
    lr = lr if hash_model else min(lr, 5e-3)  # the 8x256 MLP diverges at hash-grid learning rates
    # instant-ngp's Adam settings: beta2 0.99 and a tiny eps (sparse grid gradients)
    return adam(groups, lr=lr, betas=(0.9, 0.99), eps=1e-15 if hash_model else 1e-8)


def lr_factor(progress_fraction: float, step: int, settings: NeRFTrainSettings) -> float:
    """Linear warm-up over ``warmup_steps``, then exponential decay over the budget."""
    warm = min(1.0, (step + 1) / max(1, settings.warmup_steps))
    return warm * decay_factor(settings.lr_final_factor, progress_fraction)


def step_loss(model: NeRFModel, rays_o: torch.Tensor, rays_d: torch.Tensor, target: torch.Tensor,
              bg: Optional[torch.Tensor], settings: NeRFTrainSettings, generator: torch.Generator,
              max_samples: int, mixed: bool, device: torch.device, perturb: bool = True,
              rows: Optional[BatchRows] = None) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """The loss of one batch of rays (N, 3) against target (N, 3) -> (loss, the render, the target
    rows rendered). ``rows``: the batch is a global one, of which this process renders these rows
    (``NeRFModel.render_rays``). Under DDP (run through :func:`pipeline.training.distributed.ddp_step`)
    the ray-mean is rescaled so that the ranks' averaged gradient is that of the mean over all ranks'
    rays, even when the sample budget cut some rank's batch short."""
    with autocast(device, mixed):
        out = model.render_rays(rays_o, rays_d, perturb=perturb, background=bg, generator=generator,
                                max_samples=max_samples, distortion=settings.distortion_weight > 0, rows=rows,
                                samples_before=distributed.samples_before if rows is not None else None)
    if rows is not None:
        target = target[rows.slice]
    target = target[:out["rgb"].shape[0]]
    if target.shape[0] == 0:  # the batch's sample cap fell in an earlier rank's rows: no ray here
        loss = out["rgb"].sum() * 0.0
    else:
        loss = torch.mean((out["rgb"] - target) ** 2)
        if "distortion" in out:
            loss = loss + settings.distortion_weight * out["distortion"].mean()
        if "rgb_coarse" in out:
            loss = loss + torch.mean((out["rgb_coarse"] - target) ** 2)
    if distributed.is_distributed():
        # no sample on this rank: the field's parameters are out of the graph, put them back
        loss = distributed.touch_all(loss * distributed.global_mean_scale(target.shape[0]), [model],
                                     force=int(out["num_samples"]) == 0)
    return loss, out, target


def train(model: NeRFModel, data: PixelData, settings: NeRFTrainSettings, device: torch.device,
          resume_dir: Optional[Path], log=None, resume_config: Optional[dict] = None) -> dict:
    """Train in place; returns training statistics. Resumes from ``resume_dir/checkpoint.pt`` when
    it was made with the same ``resume_config`` (``pipeline.training.common.resume_config``; None:
    not checked), otherwise sets it aside with a warning and starts afresh.

    Under torchrun (:mod:`pipeline.training.distributed`) every rank draws each step's whole batch
    with the same generator (seed ``seed``, as one process) and renders its share of the rows
    (:mod:`pipeline.models.components.batch_rows`), so the ranks together draw and render what one
    process would; the ranks' errors are gathered into every rank's error map; every rank updates
    the occupancy grid alike (then rank 0's is broadcast); rank 0 keeps the clock, writes
    checkpoints and the curve; the ray count follows the samples summed over ranks."""
    log = log or get_logger("nerf")
    world, main = distributed.world_size(), distributed.is_main()
    budget = Budget(settings.max_steps, settings.max_time_s)
    mixed = uses_mixed_precision(device, settings.mixed_precision, settings.cpu_mixed_precision)
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator(device=device).manual_seed(settings.seed)  # one stream, on every rank
    step, elapsed, total_samples = 0, 0.0, 0
    marched = model.sampler == "occupancy"
    n_rays = settings.initial_rays if marched else max(
        64, settings.samples_per_batch // (model.config.num_coarse + model.config.num_fine))
    if settings.error_fraction > 0:
        data.enable_error_map(settings.error_fraction)
    ckpt_path = resume_dir / CHECKPOINT_NAME if resume_dir is not None else None
    # rank 0 reads (and sets aside a stale or unreadable) checkpoint; the others get its contents
    state = load_resumable(ckpt_path, resume_config, log, "nerf") if main else None
    state = distributed.broadcast_object(state)

    def restore(state: dict) -> None:
        nonlocal step, elapsed, total_samples, n_rays
        counters = int(state["step"]), float(state["elapsed"]), int(state["samples"]), int(state["n_rays"])
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])  # rank 0's, broadcast: every rank's stream is the same
        torch.set_rng_state(state["torch_rng"])
        if data.pixel_error is not None and state.get("pixel_error") is not None:
            data.pixel_error.copy_(state["pixel_error"])
        step, elapsed, total_samples, n_rays = counters

    if state is not None and restore_or_start_afresh(state, ckpt_path, restore, log, "nerf", [model, optimizer],
                                                     [generator]):
        log.info(f"nerf: resuming from step {step} ({elapsed:.1f}s trained) of {ckpt_path}")
    schedule = CheckpointSchedule(settings.checkpoint_every, settings.checkpoint_every_s, elapsed)
    curve = ProgressLog(resume_dir if main else None, step, elapsed)  # the training curve, beside the checkpoint
    # DDP broadcasts rank 0's parameters here (all ranks start alike) and averages gradients
    forward = distributed.ddp_step(step_loss, [model])
    if world > 1:
        log.info(f"nerf: DistributedDataParallel on {world} processes ({distributed.dist.get_backend()}), "
                 f"{n_rays} rays per step in all, {distributed.shard(n_rays)} per process")

    rng_at_step_start = (generator.get_state(), torch.get_rng_state())

    def checkpoint_state():
        # RNG states from the start of the step being run: an interrupted step is redone exactly
        return {"step": step, "elapsed": elapsed, "samples": total_samples, "n_rays": n_rays,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": rng_at_step_start[0], "torch_rng": rng_at_step_start[1],
                "pixel_error": data.pixel_error, "config": resume_config, "world_size": world}

    build_kernels_before_timing(device)
    bar = TrainingProgress("nerf", budget.max_steps, budget.max_time_s, step, elapsed)
    last_psnr, last_loss = float("nan"), float("nan")
    applied = False
    model.train()
    try:
        while not budget.done(step, elapsed):
            t_start = time.perf_counter()
            frac = budget.progress(step, elapsed)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * lr_factor(frac, step, settings)
            if model.occupancy is not None and step % settings.occupancy_update_every == 0:
                # every rank alike (the same weights and draws keep the streams in step); rank 0's wins
                with autocast(device, mixed):
                    model.update_occupancy(all_cells=step < settings.occupancy_warmup_steps,
                                           generator=generator, fraction=settings.occupancy_fraction)
                grid = model.occupancy
                distributed.broadcast_tensors_([grid.density, grid.occupied, grid.updates])
            rows = distributed.batch_rows(n_rays)  # this rank's rows of the batch (None: one process)
            rays_o, rays_d, target, pixels = data.sample(n_rays, generator)
            bg = None
            if target.shape[1] == 4:  # alpha: composite the target onto the training background
                if settings.background == "random":
                    bg = torch.rand(n_rays, 3, device=device, generator=generator)
                else:
                    bg = model.background().detach().expand(n_rays, 3)
                target = target[:, :3] * target[:, 3:] + bg * (1.0 - target[:, 3:])
                if settings.background == "learned":
                    bg = None  # the model composites onto its learned colour
            # the sample cap is the whole batch's: the ranks cut it where one process would
            loss, out, target = forward(model, rays_o, rays_d, target, bg, settings, generator,
                                        2 * settings.samples_per_batch, mixed, device, rows=rows)
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                optimizer.step()
            applied = True  # the step's update is in the weights (an interruption from here counts it)
            num_samples = int(out["num_samples"])
            step_s = time.perf_counter() - t_start
            if world > 1:
                # one small collective: the samples of all ranks, and rank 0's clock (so that all
                # ranks agree on the budget, the schedules and when to checkpoint)
                num_samples, step_s = (int(v) if i == 0 else v for i, v in enumerate(
                    distributed.all_reduce_sum([num_samples, step_s if main else 0.0])))
            total_samples += num_samples
            if marched and num_samples > 0:
                # steer the ray count so the next step evaluates about samples_per_batch samples
                wanted = n_rays * settings.samples_per_batch / num_samples
                n_rays = int(min(settings.max_rays, max(256, 0.7 * n_rays + 0.3 * wanted)))
            if data.pixel_error is not None:  # last in the step: an interrupted step leaves the map as it was
                error = ((out["rgb"].detach() - target) ** 2).mean(-1)
                if rows is None:
                    data.record_error(pixels[:target.shape[0]], error)
                else:  # every rank records every rank's rays: the maps stay alike
                    error = distributed.gather_rows(error, rows)
                    rendered = torch.isfinite(error)
                    data.record_error(pixels[rendered], error[rendered])
            step += 1
            elapsed += step_s
            rng_at_step_start = (generator.get_state(), torch.get_rng_state())  # what the next step starts from
            applied = False
            if not main:
                continue
            if step % 10 == 0 or step == 1:
                mse = float(torch.mean((out["rgb"].detach() - target) ** 2))
                last_loss, last_psnr = float(loss.detach()), -10 * np.log10(max(mse, 1e-10))
                bar.postfix.update(loss=f"{last_loss:.4f}", psnr=f"{last_psnr:.2f}",
                                   samples_s=f"{total_samples / max(elapsed, 1e-9):.3g}")
            bar.update(step, elapsed)
            if curve.due(step, elapsed, last=budget.done(step, elapsed)):
                mse = float(torch.mean((out["rgb"].detach() - target) ** 2))
                curve.write(step, elapsed, loss=float(loss.detach()), psnr=-10 * np.log10(max(mse, 1e-10)),
                            lr=optimizer.param_groups[0]["lr"], rays=n_rays)
            if ckpt_path is not None and schedule.due(step, elapsed):
                save_checkpoint(ckpt_path, checkpoint_state())
                schedule.saved(elapsed)
    except BaseException:
        if applied:  # interrupted after the update (a peer failing in the step's last collective)
            step += 1
            rng_at_step_start = (generator.get_state(), torch.get_rng_state())
        if ckpt_path is not None and step > 0 and main:
            save_checkpoint(ckpt_path, checkpoint_state())
            log.warning(f"nerf: interrupted at step {step}; checkpoint saved to {ckpt_path} (re-run to resume)")
        raise
    finally:
        bar.close()
        curve.close()
    if ckpt_path is not None and main:
        save_checkpoint(ckpt_path, checkpoint_state())
    return {"steps": step, "train_time_s": elapsed, "samples": total_samples,
            "samples_per_s": total_samples / max(elapsed, 1e-9), "final_train_psnr": last_psnr,
            "final_loss": last_loss, "final_rays_per_batch": n_rays, "processes": world}
