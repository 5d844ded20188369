"""NeRF stage: train a radiance field on the posed, normalised scene and evaluate it on held-out views.

Reads ``W/poses/transforms.json``; writes ``W/nerf/``: ``model.pt`` (config + weights), ``renders/``
(test-view PNGs), ``depth/`` (z-depth ``.npy`` in the ORIGINAL scene units) and ``metrics.json``
(PSNR, SSIM, LPIPS or null with the reason, training time, steps, samples/s).

Training samples random pixels of the training views (options: a share near the alpha
silhouettes, ``edge_fraction``, or drawn by each pixel's last error, ``error_fraction``). With the
occupancy sampler the ray batch is sized so that the samples per step stay near
``samples_per_batch`` (the occupancy grid makes samples per ray vary). It stops at ``max_steps``
or ``max_time_s``, whichever comes first, with the learning rate decayed over that progress.
Checkpoints go to the stage's resume folder every ``checkpoint_every`` steps and when training is
interrupted; re-running resumes from the last one (step, weights, optimiser, occupancy grid, RNG
states, error map and elapsed time).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipeline.runner.config import load_config
from pipeline.runner.log import TrainingProgress, get_logger
from pipeline.evaluation.nerf_views import evaluate
from pipeline.geometry.masks import mask_edges
from pipeline.models.components.hashgrid import HashGridConfig
from pipeline.models.nerf.model import NeRFModel, NeRFModelConfig, default_aabb
from pipeline.runner.runtime import autocast, pick_device, torch_threads
from pipeline.runner.stage import Stage, StageContext
from pipeline.runner.io import write_json
from pipeline.runner.workspace import Workspace, WorkspaceError

CHECKPOINT_NAME = "checkpoint.pt"
BACKGROUNDS = ("white", "black", "random", "learned", "scene")


@dataclass
class NerfConfig:
    model: NeRFModelConfig = field(default_factory=NeRFModelConfig)
    # --- scene
    scene_radius: float = 1.0  # the box [-r, r]^3 when the scene has no bounds (normalised frame)
    background: str = "random"  # training background: random (needs alpha) | white | black | learned | scene
    # --- optimisation
    max_steps: int = 60000
    max_time_s: float = 600.0  # wall-clock training budget (0 = none); evaluation is not counted
    samples_per_batch: int = 8192  # occupancy sampler: target samples per step (hierarchical: rays x (coarse + fine))
    initial_rays: int = 2048  # occupancy sampler: first ray batch before it adapts to the sample budget
    max_rays: int = 16384
    lr: float = 0.01
    lr_final_factor: float = 0.05  # lr decays exponentially to lr * this at the end of the budget
    warmup_steps: int = 50
    weight_decay: float = 1e-6  # on MLP weights only
    distortion_weight: float = 0.0  # occupancy sampler: mip-NeRF 360 distortion loss (compact weights along rays)
    occupancy_update_every: int = 16
    occupancy_warmup_steps: int = 128  # update every cell during these steps
    occupancy_fraction: float = 0.125  # cells re-sampled per update after warm-up
    occupancy_min_views: int = 2  # occupancy sampler: cells fewer training views see stay empty (floaters; 0 = off)
    edge_fraction: float = 0.0  # share of each batch's rays drawn near the alpha silhouettes (needs alpha)
    edge_width: int = 2  # pixels on either side of a silhouette edge
    error_fraction: float = 0.0  # share of each batch's rays drawn in proportion to each pixel's last error
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    cpu_threads: int = 0  # torch threads during this stage on CPU (0 = torch's default); 1 is faster
    # than 2 when other processes keep the cores busy (threads then wait on each other)
    mixed_precision: bool = True  # bfloat16 autocast of the networks on CUDA
    # the same on CPUs with AMX bf16 units (a no-op on other CPUs). lego-200, 600 s, 1 thread: the
    # hash model lost 2 dB in bf16 (24.66 vs 26.66); the 8x256 Fourier MLP trains 2.4x faster
    cpu_mixed_precision: bool = False
    checkpoint_every: int = 2000
    # --- evaluation
    eval_chunk: int = 8192
    eval_max_views: int = 0  # 0 = all views of the eval split
    lpips: bool = True


# ---------------------------------------------------------------------------------------------
# Training data: every training pixel, as a flat table (rays are generated per batch).


class PixelData:
    """The training pixels of a scene: colours (P, 3 or 4) and, per pixel, its view and (u, v)."""

    def __init__(self, scene, indices: list[int], device, use_alpha: bool, edge_fraction: float = 0.0,
                 edge_width: int = 2):
        colors, offsets, edges = [], [0], []
        self.sizes = []
        for i in indices:
            img = scene.load_rgba(i) if use_alpha else scene.load_image(i)
            if use_alpha and img.shape[-1] == 3:
                img = np.concatenate([img, np.ones_like(img[..., :1])], -1)
            h, w = img.shape[:2]
            colors.append(torch.from_numpy(np.ascontiguousarray(img.reshape(-1, img.shape[-1]))))
            if use_alpha and edge_fraction > 0:
                edge = mask_edges(torch.from_numpy(img[..., 3] > 0.5), edge_width).reshape(-1)
                edges.append(torch.nonzero(edge)[:, 0] + offsets[-1])
            self.sizes.append((h, w))
            offsets.append(offsets[-1] + h * w)
        self.colors = torch.cat(colors).to(device)
        self.edge_pixels = torch.cat(edges).to(device) if edges else None
        self.edge_fraction = edge_fraction if self.edge_pixels is not None and len(self.edge_pixels) else 0.0
        self.error_fraction = 0.0
        self.pixel_error: Optional[torch.Tensor] = None  # (P,) each pixel's last squared error
        self.offsets = torch.tensor(offsets, device=device)
        self.widths = torch.tensor([w for _, w in self.sizes], device=device)
        self.cameras = scene.cameras(indices, device=device)
        self.num_pixels = offsets[-1]

    def enable_error_map(self, fraction: float) -> None:
        """Draw ``fraction`` of each batch in proportion to the pixels' last errors (instant-ngp's
        error-map sampling). Unseen pixels start at the largest error so that every one is drawn."""
        self.error_fraction = fraction
        self.pixel_error = torch.ones(self.num_pixels, device=self.colors.device)

    def record_error(self, pixels: torch.Tensor, error: torch.Tensor) -> None:
        """pixels (n,) int64 from :meth:`sample`, error (n,) their squared errors (error map enabled)."""
        self.pixel_error[pixels] = error.detach().float()

    def sample(self, n: int, generator: torch.Generator):
        """n random pixels -> rays_o, rays_d (n, 3), colours (n, C), pixels (n,) (rows of ``colors``)."""
        device = self.colors.device
        pix = torch.randint(0, self.num_pixels, (n,), generator=generator, device=device)
        n_edge = int(round(n * self.edge_fraction))
        if n_edge:
            pick = torch.randint(0, len(self.edge_pixels), (n_edge,), generator=generator, device=device)
            pix[:n_edge] = self.edge_pixels[pick]
        n_error = int(round(n * self.error_fraction))
        if n_error:
            cdf = torch.cumsum(self.pixel_error, 0, dtype=torch.float64)
            u = torch.rand(n_error, generator=generator, device=device, dtype=torch.float64) * cdf[-1]
            pix[n_edge:n_edge + n_error] = torch.searchsorted(cdf, u).clamp_max(self.num_pixels - 1)
        view = torch.searchsorted(self.offsets, pix, right=True) - 1
        local = pix - self.offsets[view]
        w = self.widths[view]
        uv = torch.stack([(local % w).float(), (local // w).float()], -1) + 0.5
        rays_o, rays_d, _ = self.cameras[view].generate_rays(uv)
        return rays_o, rays_d, self.colors[pix], pix


# ---------------------------------------------------------------------------------------------


def build_model(cfg: NerfConfig, aabb, scene_background: str) -> NeRFModel:
    bg = (0.0, 0.0, 0.0) if scene_background == "black" else (1.0, 1.0, 1.0)
    return NeRFModel(cfg.model, aabb, background=bg, learn_background=cfg.background == "learned")


def make_optimizer(model: NeRFModel, cfg: NerfConfig, device: torch.device) -> torch.optim.Optimizer:
    grid_params, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if name.startswith("field.encoding"):
            grid_params.append(p)
        elif p.ndim >= 2:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if grid_params:
        groups.append({"params": grid_params, "weight_decay": 0.0})
    hash_model = cfg.model.kind == "hash"
    lr = cfg.lr if hash_model else min(cfg.lr, 5e-3)  # the 8x256 MLP diverges at hash-grid learning rates
    # instant-ngp's Adam settings: beta2 0.99 and a tiny eps (sparse grid gradients)
    kwargs = dict(lr=lr, betas=(0.9, 0.99), eps=1e-15 if hash_model else 1e-8)
    try:
        return torch.optim.Adam(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # fused Adam is missing for this device / torch build
        return torch.optim.Adam(groups, foreach=True, **kwargs)


def lr_factor(progress_fraction: float, step: int, cfg: NerfConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    return warm * cfg.lr_final_factor ** min(1.0, max(0.0, progress_fraction))


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _autocast(device: torch.device, cfg: NerfConfig):
    return autocast(device, cfg.mixed_precision if device.type != "cpu" else cfg.cpu_mixed_precision)


def train(model: NeRFModel, data: PixelData, cfg: NerfConfig, device: torch.device, resume_dir: Optional[Path],
          log=None) -> dict:
    """Train in place; returns training statistics. Resumes from ``resume_dir/checkpoint.pt``."""
    log = log or get_logger("nerf")
    optimizer = make_optimizer(model, cfg, device)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    step, elapsed, total_samples = 0, 0.0, 0
    marched = model.sampler == "occupancy"
    n_rays = cfg.initial_rays if marched else max(
        64, cfg.samples_per_batch // (cfg.model.num_coarse + cfg.model.num_fine))
    if cfg.error_fraction > 0:
        data.enable_error_map(cfg.error_fraction)
    ckpt_path = resume_dir / CHECKPOINT_NAME if resume_dir is not None else None
    if ckpt_path is not None and ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu() if device.type == "cpu" else state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, elapsed, total_samples, n_rays = state["step"], state["elapsed"], state["samples"], state["n_rays"]
        if data.pixel_error is not None and state.get("pixel_error") is not None:
            data.pixel_error.copy_(state["pixel_error"])
        log.info(f"nerf: resumed from {ckpt_path} at step {step} ({elapsed:.0f}s trained)")

    rng_at_step_start = (generator.get_state(), torch.get_rng_state())

    def checkpoint_state():
        # RNG states from the start of the step being run: an interrupted step is redone exactly
        return {"step": step, "elapsed": elapsed, "samples": total_samples, "n_rays": n_rays,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "generator": rng_at_step_start[0], "torch_rng": rng_at_step_start[1],
                "pixel_error": data.pixel_error}

    use_alpha = data.colors.shape[1] == 4
    has_time_budget = cfg.max_time_s and cfg.max_time_s > 0
    bar = TrainingProgress("nerf", cfg.max_steps, cfg.max_time_s if has_time_budget else 0.0, step, elapsed)
    last_psnr, last_loss = float("nan"), float("nan")
    model.train()
    try:
        while step < cfg.max_steps and not (has_time_budget and elapsed >= cfg.max_time_s):
            t_start = time.perf_counter()
            frac = step / cfg.max_steps
            if has_time_budget:
                frac = max(frac, elapsed / cfg.max_time_s)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * lr_factor(frac, step, cfg)
            if model.occupancy is not None and step % cfg.occupancy_update_every == 0:
                with _autocast(device, cfg):
                    model.update_occupancy(all_cells=step < cfg.occupancy_warmup_steps, generator=generator,
                                           fraction=cfg.occupancy_fraction)
            rays_o, rays_d, target, pixels = data.sample(n_rays, generator)
            bg = None
            if use_alpha:
                if cfg.background == "random":
                    bg = torch.rand(n_rays, 3, device=device, generator=generator)
                else:
                    bg = model.background().detach().expand(n_rays, 3)
                target = target[:, :3] * target[:, 3:] + bg * (1.0 - target[:, 3:])
                if cfg.background == "learned":
                    bg = None  # the model composites onto its learned colour
            with _autocast(device, cfg):
                out = model.render_rays(rays_o, rays_d, perturb=True, background=bg, generator=generator,
                                        max_samples=2 * cfg.samples_per_batch,
                                        distortion=cfg.distortion_weight > 0)
            target = target[:out["rgb"].shape[0]]
            loss = torch.mean((out["rgb"] - target) ** 2)
            if "distortion" in out:
                loss = loss + cfg.distortion_weight * out["distortion"].mean()
            if "rgb_coarse" in out:
                loss = loss + torch.mean((out["rgb_coarse"] - target) ** 2)
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
                optimizer.step()
            num_samples = int(out["num_samples"])
            total_samples += num_samples
            if marched and num_samples > 0:
                # steer the ray count so the next step evaluates about samples_per_batch samples
                wanted = n_rays * cfg.samples_per_batch / num_samples
                n_rays = int(min(cfg.max_rays, max(256, 0.7 * n_rays + 0.3 * wanted)))
            if data.pixel_error is not None:  # last in the step: an interrupted step leaves the map as it was
                data.record_error(pixels[:target.shape[0]], ((out["rgb"].detach() - target) ** 2).mean(-1))
            step += 1
            elapsed += time.perf_counter() - t_start
            rng_at_step_start = (generator.get_state(), torch.get_rng_state())  # what the next step starts from
            if step % 10 == 0 or step == 1:
                mse = float(torch.mean((out["rgb"].detach() - target) ** 2))
                last_loss, last_psnr = float(loss.detach()), -10 * np.log10(max(mse, 1e-10))
                bar.postfix.update(loss=f"{last_loss:.4f}", psnr=f"{last_psnr:.2f}",
                                   samples_s=f"{total_samples / max(elapsed, 1e-9):.3g}")
            bar.update(step, elapsed)
            if ckpt_path is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                save_checkpoint(ckpt_path, checkpoint_state())
    except BaseException:
        if ckpt_path is not None and step > 0:
            save_checkpoint(ckpt_path, checkpoint_state())
            log.warning(f"nerf: interrupted at step {step}; checkpoint saved to {ckpt_path} (re-run to resume)")
        raise
    finally:
        bar.close()
    if ckpt_path is not None:
        save_checkpoint(ckpt_path, checkpoint_state())
    return {"steps": step, "train_time_s": elapsed, "samples": total_samples,
            "samples_per_s": total_samples / max(elapsed, 1e-9), "final_train_psnr": last_psnr,
            "final_loss": last_loss, "final_rays_per_batch": n_rays}


# ---------------------------------------------------------------------------------------------
# Evaluation


# ---------------------------------------------------------------------------------------------
# The stage


def scene_aabb(scene, cfg: NerfConfig):
    return default_aabb(scene.bounds, cfg.scene_radius)


def run(ctx: StageContext) -> dict:
    cfg: NerfConfig = ctx.config
    with torch_threads(cfg.cpu_threads):
        return _run(ctx, cfg)


def _run(ctx: StageContext, cfg: NerfConfig) -> dict:
    if cfg.background not in BACKGROUNDS:
        raise ValueError(f"nerf background must be one of {BACKGROUNDS}, got {cfg.background!r}")
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    scene = ctx.workspace.load_scene()
    train_idx = scene.split("train")
    eval_idx = scene.eval_split()
    eval_note = "test split"
    if not eval_idx:
        eval_idx = train_idx[:: max(1, len(train_idx) // 5)]
        eval_note = "training views (the scene has no held-out split)"
    if cfg.eval_max_views:
        eval_idx = eval_idx[:cfg.eval_max_views]
    use_alpha = cfg.background != "scene" and scene.has_masks and all(
        scene.frames[i].image_path.suffix.lower() == ".png" for i in train_idx)
    data = PixelData(scene, train_idx, device, use_alpha, cfg.edge_fraction, cfg.edge_width)
    if not use_alpha and cfg.background in ("random", "learned"):
        ctx.log.info("nerf: images have no alpha; training against their own background")
    aabb = scene_aabb(scene, cfg)
    model = build_model(cfg, aabb, scene.background).to(device)
    if model.occupancy is not None:
        model.occupancy.restrict_to_views(data.cameras, cfg.occupancy_min_views)
    ctx.log.info(f"nerf: {cfg.model.kind} model ({model.sampler} sampler), {len(train_idx)} training views "
                 f"({data.num_pixels} pixels), box {aabb.tolist()}, device {device}")
    stats = train(model, data, cfg, device, ctx.resume_dir, ctx.log)
    save_model(ctx.out_dir / "model.pt", model, cfg, scene.background)
    scale = ctx.workspace.normalization().scale
    metrics = evaluate(model, scene, eval_idx, ctx.out_dir, scale, cfg.eval_chunk, cfg.lpips,
                       cfg.mixed_precision if device.type != "cpu" else cfg.cpu_mixed_precision, device)
    metrics.update(stats, eval_on=eval_note, device=str(device), model=cfg.model.kind,
                   sampler=model.sampler, torch_threads=torch.get_num_threads())
    if model.occupancy is not None:
        metrics["occupancy_fraction"] = model.occupancy.occupancy_fraction()
    write_json(ctx.out_dir / "metrics.json", metrics)
    ctx.log.info(f"nerf: {stats['steps']} steps in {stats['train_time_s']:.0f}s "
                 f"({stats['samples_per_s']:.3g} samples/s); test PSNR {metrics['psnr']:.2f} dB, "
                 f"SSIM {metrics['ssim']:.3f}")
    return {k: metrics[k] for k in ("psnr", "ssim", "lpips", "steps", "train_time_s", "samples_per_s")}


def save_model(path: Path, model: NeRFModel, cfg: NerfConfig, scene_background: str) -> None:
    torch.save({"config": asdict(cfg), "aabb": model.aabb.cpu(), "scene_background": scene_background,
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}, path)


def _config_from_dict(d: dict) -> NerfConfig:
    model = dict(d.get("model", {}))
    grid = HashGridConfig(**model.pop("grid", {}))
    return NerfConfig(**{**{k: v for k, v in d.items() if k != "model"},
                         "model": NeRFModelConfig(**model, grid=grid)})


def load_model_file(path: Path, device="cpu") -> NeRFModel:
    """A saved model.pt -> NeRFModel on ``device`` in eval mode."""
    path = Path(path)
    if not path.exists():
        raise WorkspaceError(f"{path} is missing; run `python run.py nerf --workspace W` first")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    cfg = _config_from_dict(saved["config"])
    model = build_model(cfg, saved["aabb"], saved.get("scene_background", "white"))
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval()


def load_trained(workspace: Workspace, device="cpu") -> NeRFModel:
    """The trained NeRF of a workspace (a :class:`pipeline.models.render.DensityModel`), in eval mode."""
    return load_model_file(Workspace(workspace.root if isinstance(workspace, Workspace) else workspace)
                           .stage_dir("nerf") / "model.pt", device)


STAGE = Stage(name="nerf", config_cls=NerfConfig, run=run, inputs=("poses/transforms.json",),
              default_config="nerf-hash.yaml",
              produced_by={"poses/transforms.json": "python run.py poses --workspace W"},
              description="train a NeRF (hash grid or Fourier features) and render the test views")


def default_config(name: str = "nerf-hash", overrides=()) -> NerfConfig:
    return load_config(NerfConfig, name, overrides)
