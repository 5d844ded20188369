"""The training loop of the volume-rendered SDF (NeuS / occupancy): one step (render a batch of
random pixels, colour L1, eikonal on every foreground sample and on uniform points in the sphere,
optional mask, sky and curvature terms), the optimiser with its schedule, the training curve
(``metrics.jsonl``, :mod:`pipeline.training.progress_log`), checkpoints in the stage's
resume folder (every ``checkpoint_every`` steps / ``checkpoint_every_s`` trained seconds, on an
interruption and at the end; resumed only when made with the same training config, see
``pipeline.training.common``), and the step/time budget."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from pipeline.geometry.cameras import Cameras
from pipeline.models.components.batch_rows import normal_rows
from pipeline.models.idr.losses import smoothness_loss
from pipeline.models.idr.model import uniform_ball_points
from pipeline.models.sdf.model import VolumeSDFModel
from pipeline.training.common import (SURFACE_NOT_RESUME_KEYS, Budget, TrainingSession, adam, decay_factor,
                                      load_resumable, restore_or_start_afresh, save_checkpoint)
from pipeline.training import distributed
from pipeline.training.sdf_data import PixelRays, SurfaceAnchors

CHECKPOINT_NAME = "checkpoint.pt"
NOT_RESUME_KEYS = SURFACE_NOT_RESUME_KEYS + ("sampling.render_chunk", "mesh_visibility", "mesh_visibility_views",
                                             "mesh_visibility_size", "mesh_clip")


@dataclass
class SDFTrainSettings:
    """What the loop needs of the sdf stage's config (see ``stages.sdf.SDFConfig`` for each)."""

    max_steps: int
    max_time_s: float  # trained seconds, counted across resumes; 0 = no time budget
    batch_rays: int
    eikonal_points: int
    eikonal_ray_points: int  # with constant sample gradients: ray samples that get the eikonal loss
    eikonal_weight: float
    mask_weight: float  # 0 = masks not used
    curvature_weight: float
    curvature_std: float
    curvature_fade: float  # the curvature weight falls linearly to 0 at this share of training (0 = constant)
    error_sampling: float  # share of each batch drawn in proportion to the pixels' last errors
    points_weight: float  # |f| at the sparse points of pose estimation (Geo-NeuS); 0 = off
    points_per_step: int
    depth_weight: float  # relative depth error along the rays that saw the sparse points; 0 = off
    depth_rays: int  # of those rays per step
    opacity_weight: float  # cost of the foreground's opacity (what the background explains as well goes there)
    pixel_jitter: bool  # each pixel's ray through a random point of its area, not its centre
    sky_weight: float  # no foreground opacity on the sky (the pixels whose mask is false); 0 = no sky masks
    lr: float
    lr_grid: float
    lr_final_factor: float
    warmup_steps: int
    checkpoint_every: int
    checkpoint_every_s: float
    seed: int
    resume_config: Optional[dict]  # what a checkpoint must have been made with (None: not checked)


def training_step(model: VolumeSDFModel, cameras: Cameras, batch, settings: SDFTrainSettings,
                  generator: torch.Generator, render_generator: torch.Generator,
                  anchors: Optional[SurfaceAnchors] = None) -> tuple[torch.Tensor, dict]:
    """Losses of one batch. batch: (view (N,), uv (N, 2), rgb (N, 3), mask (N,)) on the model's device.
    anchors: what pose estimation says about the surface (model frame, the model's device) or None.

    Under DDP (run through :func:`pipeline.training.distributed.ddp_step`) ``batch`` is the global
    batch, every rank draws every random number of the whole step (the same generators on every
    rank) and computes its rows only: its pixels, depth rays, eikonal and anchor points. Each loss
    is its rows' sum over the global count times the world size, so that the ranks' averaged
    gradient is one process's. The returned ``ray_error`` is this rank's rows'."""
    pixel_rows = distributed.batch_rows(len(batch[0]))
    view, uv, rgb_gt, mask_gt = batch if pixel_rows is None else (pixel_rows.take(t) for t in batch)
    rays_o, rays_d, _ = cameras[view].generate_rays(uv)
    n, n_all = len(rays_o), len(batch[0])
    render_rows = pixel_rows
    depth_rays = anchors is not None and anchors.num_rays > 0 and settings.depth_weight > 0 and settings.depth_rays > 0
    if depth_rays:  # rendered with the batch, in one pass
        pick = torch.randint(0, anchors.num_rays, (settings.depth_rays,), generator=generator).to(rays_o.device)
        depth_rows = distributed.batch_rows(len(pick))
        if depth_rows is not None:
            pick, render_rows = depth_rows.take(pick), pixel_rows.then(depth_rows)
        rays_o = torch.cat([rays_o, anchors.ray_origins[pick]])
        rays_d = torch.cat([rays_d, anchors.ray_dirs[pick]])
    out = model.render_rays(rays_o, rays_d, perturb=True, generator=render_generator, training=True, rows=render_rows)
    n_samples = samples_of(model, out)
    surface = out["acc"][:n].detach() > 0.5  # the pixels' rays that end on a surface (curvature term)
    hit = out["hit"]
    # what the global batch holds: per rank [pixel rays that hit, depth rays that hit, samples per
    # hit ray, surface rays] (one all-gather; in one process its own counts)
    counts = distributed.all_gather_ints([int(hit[:n].sum()), int(hit[n:].sum()),
                                          out["weights"].shape[1] if len(out["weights"]) else 0, int(surface.sum())])
    samples_per_ray = max(c[2] for c in counts)
    global_mean = distributed.global_mean_of_sum

    l_depth = out["rgb"].new_zeros(())
    if depth_rays:
        # the ray that saw a sparse point ends there: nothing in front of it, something at it
        depth = anchors.ray_depths[pick]
        l_depth = global_mean(((out["t"][n:] - depth).abs() / depth).sum() + (1.0 - out["acc"][n:]).sum(),
                              settings.depth_rays)
        out = dict(out, rgb=out["rgb"][:n], acc=out["acc"][:n], t=out["t"][:n])
        rays_o, rays_d = rays_o[:n], rays_d[:n]
    l_rgb = global_mean((out["rgb"] - rgb_gt).abs().sum(), 3 * n_all)
    l_opacity = global_mean(out["acc"].sum(), n_all)  # the batch's pixels only (the depth rays must end on a surface)
    radius = model.sampling.radius
    grads, points = [], []
    n_eikonal = 0
    if model.config.sample_gradients == "differentiable":
        grads.append(out["gradients"])
        n_eikonal += sum(c[0] + c[1] for c in counts) * samples_per_ray
    elif settings.eikonal_ray_points > 0 and samples_per_ray > 0:
        # the samples' gradients are constants: a random share of the batch's samples gets
        # differentiable ones (drawn over the global batch's samples, in one process's order)
        total = sum(c[0] + c[1] for c in counts) * samples_per_ray
        pick_samples = torch.randint(0, total, (min(settings.eikonal_ray_points, total),), generator=generator)
        n_eikonal += len(pick_samples)
        points.append(out["points"][_own_samples(pick_samples, counts, samples_per_ray).to(out["points"].device)])
    if settings.eikonal_points > 0:  # the samples cover what the cameras see; these, the rest of the sphere
        ball = uniform_ball_points(settings.eikonal_points, radius, generator=generator, device=rays_o.device)
        ball_rows = distributed.batch_rows(len(ball))
        points.append(ball if ball_rows is None else ball_rows.take(ball))
        n_eikonal += settings.eikonal_points
    if points and model.config.sample_gradients == "differentiable":
        grads.append(model.sdf_network.sdf_and_gradient(torch.cat(points), create_graph=True)[2])
    elif points:  # central differences: first derivatives only, 3-6x cheaper than the analytic second ones
        grads.append(model.sdf_network.numerical_gradient(torch.cat(points)))
    grad = torch.cat(grads) if grads else rays_o.new_zeros(0, 3)
    l_eik = global_mean(((grad.norm(dim=-1) - 1.0) ** 2).sum(), n_eikonal)
    loss = l_rgb + settings.eikonal_weight * l_eik + settings.depth_weight * l_depth
    if settings.opacity_weight > 0:
        loss = loss + settings.opacity_weight * l_opacity
    l_mask = l_curv = l_points = l_sky = loss.new_zeros(())
    if settings.sky_weight > 0:
        # the sky is the background field's: nothing in the foreground along its rays (a street's
        # surface field would otherwise paint it on a ceiling over the roofs, URF / StreetSurf)
        sky = ~mask_gt.bool()
        l_sky = global_mean((-torch.log1p(-out["acc"].clamp(max=1.0 - 1e-3)) * sky).sum(), n_all)
        loss = loss + settings.sky_weight * l_sky
    if anchors is not None and len(anchors.points) and settings.points_weight > 0:
        # Geo-NeuS's explicit SDF supervision: pose estimation triangulated these points on the
        # surface, so f = 0 there; where photos alone are ambiguous (a street seen walking down
        # it, little parallax) they pin the surface down
        picked = torch.randint(0, len(anchors.points), (min(settings.points_per_step, len(anchors.points)),),
                               generator=generator)
        anchor_rows = distributed.batch_rows(len(picked))
        own = picked if anchor_rows is None else anchor_rows.take(picked)
        l_points = global_mean(model.sdf_network.sdf(anchors.points[own.to(anchors.points.device)]).abs().sum(),
                               len(picked))
        loss = loss + settings.points_weight * l_points
    if settings.mask_weight > 0:
        acc = out["acc"].clamp(1e-3, 1.0 - 1e-3)
        l_mask = global_mean(F.binary_cross_entropy(acc, mask_gt.to(acc.dtype), reduction="sum"), n_all)
        loss = loss + settings.mask_weight * l_mask
    if settings.curvature_weight > 0:
        # normals at the rays' expected surface points and at points jittered around them should
        # agree (the jitter is drawn for every pixel of the batch, surface or not)
        jitter = settings.curvature_std * normal_rows(pixel_rows, n, 3, generator, "cpu").to(rays_o.device)
        n_surface = sum(c[3] for c in counts)
        if n_surface:
            x = (rays_o + out["t"].detach()[:, None] * rays_d)[surface]
            both = torch.cat([x, x + jitter[surface]])
            g = (model.sdf_network.sdf_and_gradient(both, create_graph=True)[2]
                 if model.config.sample_gradients == "differentiable"
                 else model.sdf_network.numerical_gradient(both))  # first derivatives only, as the eikonal
            l_curv = global_mean(smoothness_loss(g[:len(x)], g[len(x):]) * len(x), n_surface)
            loss = loss + settings.curvature_weight * l_curv
    with torch.no_grad():
        psnr = -10 * torch.log10(((out["rgb"] - rgb_gt) ** 2).mean().clamp_min(1e-10))
    stats = {"ray_error": (out["rgb"].detach() - rgb_gt).abs().mean(-1),  # (N,) for the error map
             "loss": float(loss.detach()), "rgb": float(l_rgb.detach()), "eikonal": float(l_eik.detach()),
             "mask": float(l_mask.detach()), "curvature": float(l_curv.detach()), "points": float(l_points.detach()),
             "depth": float(l_depth.detach()), "opacity": float(l_opacity.detach()), "sky": float(l_sky.detach()),
             "psnr": float(psnr),
             "inv_s": float(model.inv_s().detach()), "samples": n_samples}
    return loss, stats


def _own_samples(picks: torch.Tensor, counts: list[list[int]], per_ray: int) -> torch.Tensor:
    """Indices into this rank's samples (its hit rays' ``per_ray`` samples each, its pixel rays'
    then its depth rays') of the ``picks`` into the global batch's samples, whose order is one
    process's: every rank's pixel rays that hit, then every rank's depth rays that hit.
    counts: per rank [pixel rays that hit, depth rays that hit, ...]."""
    me = distributed.rank()
    pixel_hits = [c[0] for c in counts]
    pixel_start = sum(pixel_hits[:me])
    depth_start = sum(pixel_hits) + sum(c[1] for c in counts[:me])
    ray, within = picks // per_ray, picks % per_ray
    in_pixels = (ray >= pixel_start) & (ray < pixel_start + counts[me][0])
    in_depth = (ray >= depth_start) & (ray < depth_start + counts[me][1])
    local_ray = torch.where(in_pixels, ray - pixel_start, ray - depth_start + counts[me][0])
    return (local_ray * per_ray + within)[in_pixels | in_depth]


def samples_of(model: VolumeSDFModel, out: dict) -> int:
    """Field samples of a training render: the foreground sections with gradients, plus the
    background field's samples (the no-gradient queries of hierarchical sampling not counted)."""
    background = model.background_field.config.samples * len(out["rgb"]) if model.background_field else 0
    return int(out["weights"].numel()) + background


def make_optimizer(model: VolumeSDFModel, settings: SDFTrainSettings):
    grid, other = [], []
    for name, p in model.named_parameters():
        # hash-grid tables learn at the grid rate, as in instant-ngp
        (grid if name.endswith("encoding.table") else other).append(p)
    groups = [{"params": other, "lr": settings.lr, "base_lr": settings.lr}]
    if grid:
        groups.append({"params": grid, "lr": settings.lr_grid, "base_lr": settings.lr_grid})
    return adam(groups, betas=(0.9, 0.99), eps=1e-15)


def curvature_weight_at(settings: SDFTrainSettings, progress: float) -> float:
    """The curvature term's weight at ``progress`` in [0, 1] of training: constant, or fading
    linearly to 0 at ``curvature_fade`` (smooth while the coarse shape forms, free for fine detail
    later: Neuralangelo lowers it as the finer levels come in)."""
    if settings.curvature_fade <= 0:
        return settings.curvature_weight
    return settings.curvature_weight * max(0.0, 1.0 - progress / settings.curvature_fade)


def train(model: VolumeSDFModel, cameras: Cameras, rays: PixelRays, settings: SDFTrainSettings, resume_dir: Path,
          log, anchors: Optional[SurfaceAnchors] = None) -> dict:
    """Train until ``max_steps`` or ``max_time_s`` (counted across resumes). Returns a summary.
    anchors: the sparse points and the rays that saw them (``points_weight``, ``depth_weight``; model
    frame, the model's device) or None.

    Under torchrun (:mod:`pipeline.training.distributed`) every rank draws each step's whole batch
    and every random number of the step with one process's generators, and computes its rows of
    it (:func:`training_step`); the ranks gather their rays' errors into every rank's error map, DDP
    averages the gradients, rank 0's checkpoint is broadcast on resume and rank 0 alone saves. So
    N ranks train as one process does, up to the order of float sums."""
    budget = Budget(settings.max_steps, settings.max_time_s)
    device = model.background.device
    main, world = distributed.is_main(), distributed.world_size()
    generator = torch.Generator().manual_seed(settings.seed)  # the same on every rank
    render_generator = torch.Generator(device=device).manual_seed(settings.seed + 1)
    optimizer = make_optimizer(model, settings)
    ckpt_path = Path(resume_dir) / CHECKPOINT_NAME
    start, elapsed, samples = 0, 0.0, 0
    state = distributed.broadcast_object(load_resumable(ckpt_path, settings.resume_config, log, "sdf")
                                         if main else None)

    def restore(state: dict) -> None:
        nonlocal start, elapsed, samples
        counters = int(state["iteration"]), float(state["elapsed_s"]), int(state.get("samples", 0))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])  # every rank: rank 0's, the one stream they all draw
        render_generator.set_state(state["render_generator"])
        start, elapsed, samples = counters

    if state is not None and restore_or_start_afresh(state, ckpt_path, restore, log, "sdf", [model, optimizer],
                                                     [generator, render_generator]):
        log.info(f"sdf: resuming from step {start} ({elapsed:.1f}s trained) of {ckpt_path}")
    stats: dict = {}
    rng_at_step_start = (generator.get_state(), render_generator.get_state())  # an interrupted step is redone

    def save(iteration: int, spent: float) -> None:
        save_checkpoint(ckpt_path, {"iteration": iteration, "elapsed_s": spent, "samples": samples,
                                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "generator": rng_at_step_start[0], "render_generator": rng_at_step_start[1],
                                    "config": settings.resume_config})

    if settings.error_sampling > 0:
        rays.enable_error_map(settings.error_sampling)
    step_settings = settings
    if world > 1:
        log.info(f"sdf: DistributedDataParallel on {world} processes ({distributed.dist.get_backend()}), "
                 f"{settings.batch_rays} rays per step in all, {distributed.shard(settings.batch_rays)} per process")

    def ddp_forward(*args):  # every parameter in the loss on every rank (DDP reduces them all)
        loss, stats = training_step(*args)
        return distributed.touch_all(loss, [model]), stats

    forward = distributed.ddp_step(ddp_forward, [model], find_unused_parameters=True)
    with TrainingSession("sdf", budget, settings.checkpoint_every, settings.checkpoint_every_s, resume_dir, start,
                         elapsed, save, log, device, clock=lambda: time.time()) as session:
        while session.iteration < budget.max_steps and not session.time_up():
            iteration = session.iteration
            frac = budget.progress(iteration, session.spent())
            warm = min(1.0, (iteration + 1) / max(1, settings.warmup_steps))
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * warm * decay_factor(settings.lr_final_factor, frac)
            model.set_progress(frac)
            curvature = curvature_weight_at(settings, frac)
            if curvature != step_settings.curvature_weight:
                step_settings = dataclasses.replace(step_settings, curvature_weight=curvature)
            model.update_grid(iteration, frac)  # empty-space skipping (identical on every rank)
            # pixels are drawn on the CPU (one generator: the same batches on any device), then moved
            # (the whole batch on every rank: each renders its rows of it)
            rows = rays.draw(settings.batch_rays, generator)
            batch = tuple(t.to(device) for t in rays.batch(rows, generator if settings.pixel_jitter else None))
            loss, stats = forward(model, cameras, batch, step_settings, generator, render_generator, anchors)
            ray_error = stats.pop("ray_error")
            if rays.pixel_error is not None:
                if world > 1:  # every rank's error map is the one process's
                    ray_error = distributed.gather_rows(ray_error, distributed.batch_rows(len(rows)))
                rays.record_error(rows, ray_error)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if world > 1:  # every rank's samples
                stats["samples"] = int(distributed.all_reduce_sum([stats["samples"]])[0])
            samples += stats["samples"]
            rng_at_step_start = (generator.get_state(), render_generator.get_state())
            session.step_done(stats, optimizer.param_groups[0]["lr"],
                              postfix={"loss": f"{stats['loss']:.4f}", "psnr": f"{stats['psnr']:.1f}",
                                       "s": f"{stats['inv_s']:.0f}"},
                              curve_keys=("loss", "psnr", "rgb", "eikonal", "mask", "curvature", "points", "depth",
                                          "opacity", "sky", "inv_s"),
                              log_line=", ".join(f"{k} {stats[k]:.4f}" for k in ("loss", "rgb", "eikonal", "psnr",
                                                                                  "inv_s") if k in stats))
    model.set_progress(1.0)
    model.prepare_for_rendering()
    total = session.finish()
    return {"steps": session.iteration, "train_time_s": total, "stopped_by_time": session.stopped_by_time,
            "samples": samples, "samples_per_s": samples / max(total, 1e-9), "last_step": stats}


__all__ = ["SDFTrainSettings", "NOT_RESUME_KEYS", "training_step", "make_optimizer", "train"]
