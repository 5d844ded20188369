"""A trained (or training) NeRF: a field plus its sampler, rendering rays in the normalised scene frame.

Implements :class:`pipeline.models.render.DensityModel` (``render_rays``, ``query_density``,
``query_color``), so evaluation and exports render it without knowing which field it holds.

Fields (``kind``): :class:`HashNeRFField` (``hash``) or :class:`FourierNeRFField` (``fourier``).
Samplers (``sampler``), either with either field:

- ``occupancy`` (the hash model's default, instant-ngp / nerfacc): an :class:`OccupancyGrid`; rays
  are marched with a fixed step (optionally growing with distance) and only samples in occupied
  cells are evaluated.
- ``hierarchical`` (the fourier model's default, Mildenhall et al.): stratified coarse samples and
  importance (fine) samples from the coarse weights, both evaluated by the same network.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from pipeline.models.components.batch_rows import BatchRows
from pipeline.models.components.hashgrid import HashGridConfig
from pipeline.models.nerf.field import FourierNeRFField, HashNeRFField
from pipeline.models.components.occupancy import OccupancyGrid, march_rays, march_schedule
from pipeline.models.components.volume_rendering import (add_background, composite_dense, composite_packed, distortion_loss_packed,
                                          gate_gradients, position_in_ray, ray_aabb, sample_pdf, stratified_samples,
                                          transmittance_packed)


@dataclass
class NeRFModelConfig:
    """What defines the network and its sampler (saved with the weights in model.pt)."""

    kind: str = "hash"  # hash | fourier
    sampler: str = "auto"  # occupancy | hierarchical | auto (occupancy for hash, hierarchical for fourier)
    activation: str = "relu"  # relu | siren (MLP activations)
    # hash model: 2^17 entries per level and finest resolution 1024, plenty for CPU-sized scenes
    # (instant-ngp's 2^19 and 2048 pay off on a GPU: configs/nerf-hash-gpu.yaml)
    grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(log2_table_size=17, finest_resolution=1024))
    width: int = 64  # hash model MLP width
    mlp_backend: str = "auto"  # auto (the fused C++ kernel for float32 CPU ReLU MLPs) | torch | cpu (mlp.py)
    pos_freqs: int = 10  # fourier model
    dir_freqs: int = 4
    fourier_width: int = 256
    fourier_depth: int = 8
    siren_omega: float = 30.0
    num_coarse: int = 64  # hierarchical sampler: stratified samples per ray
    num_fine: int = 64  # hierarchical sampler: importance samples per ray
    occupancy_resolution: int = 64  # occupancy sampler: cells per axis per cascade
    cascades: int = 1  # occupancy sampler: 1 for bounded scenes, more for unbounded
    occupancy_threshold: float = 0.01  # opacity of one step below which a cell counts as empty
    march_steps: int = 384  # occupancy sampler: steps across the box diagonal (sets the step size)
    cone_angle: float = 0.0  # occupancy sampler: step grows as t * cone_angle (0: uniform; 1/256 unbounded)
    max_samples_per_ray: int = 1024
    # rays start this far from the camera (normalised units). Cameras inside the scene (panoramas)
    # otherwise grow density right around themselves that explains their own view and that no
    # other view can see past; 0 for cameras outside the scene
    near_plane: float = 0.0
    # occupancy sampler, training: samples whose transmittance is below this get no gradient (0 =
    # off); the CPU kernels then skip them in their backward passes (nerfacc's early_stop_eps)
    grad_min_transmittance: float = 1e-4
    # occupancy sampler, training: evaluate this front share of each ray's samples first, and the
    # rest only on rays still visible behind it (transmittance >= grad_min_transmittance); 0 = one
    # pass over all samples. The samples left out would get weights below grad_min_transmittance.
    hidden_split: float = 0.0

    def resolved_sampler(self) -> str:
        if self.sampler == "auto":
            return "occupancy" if self.kind == "hash" else "hierarchical"
        if self.sampler not in ("occupancy", "hierarchical"):
            raise ValueError(f"NeRF sampler must be occupancy, hierarchical or auto, got {self.sampler!r}")
        return self.sampler


class NeRFModel(nn.Module):
    """aabb: (2, 3) scene box in the normalised frame; background: (3,) colour used where rays
    end up transparent (``learned`` makes it a parameter)."""

    def __init__(self, config: NeRFModelConfig, aabb, background=(1.0, 1.0, 1.0), learn_background: bool = False):
        super().__init__()
        if not 0.0 <= config.hidden_split < 1.0:
            raise ValueError(f"model.hidden_split must be in [0, 1) (0: off; 0.5 evaluates each ray's front half "
                             f"first), got {config.hidden_split}")
        self.config = config
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        self.register_buffer("aabb", aabb)
        if learn_background:
            self.background_logit = nn.Parameter(torch.logit(torch.tensor(background, dtype=torch.float32)
                                                             .clamp(0.02, 0.98)))
        else:
            self.register_buffer("background_color", torch.tensor(background, dtype=torch.float32))
        self.learn_background = learn_background
        if config.kind not in ("hash", "fourier"):
            raise ValueError(f"NeRF model kind must be 'hash' or 'fourier', got {config.kind!r}")
        self.sampler = config.resolved_sampler()
        self.occupancy = None
        field_box = aabb
        if self.sampler == "occupancy":
            self.occupancy = OccupancyGrid(aabb, config.occupancy_resolution, config.cascades,
                                           config.occupancy_threshold)
            field_box = self.occupancy.outer_box()
            diagonal = float((aabb[1] - aabb[0]).norm())
            self.step_size = diagonal / config.march_steps
            self.schedule = march_schedule(float((field_box[1] - field_box[0]).norm()) + 1e-3 + 10 * diagonal,
                                           self.step_size, config.cone_angle)
        if config.kind == "hash":
            self.field = HashNeRFField(field_box, config.grid, config.width, activation=config.activation,
                                       mlp_backend=config.mlp_backend)
        else:
            self.field = FourierNeRFField(field_box, config.pos_freqs, config.dir_freqs, config.fourier_width,
                                          config.fourier_depth, activation=config.activation,
                                          siren_omega=config.siren_omega, mlp_backend=config.mlp_backend)

    # --- DensityModel interface ---------------------------------------------------------------

    def background(self) -> torch.Tensor:
        return torch.sigmoid(self.background_logit) if self.learn_background else self.background_color

    def query_density(self, points: torch.Tensor) -> torch.Tensor:
        """points (N, 3) -> sigma (N,); zero outside the scene box."""
        sigma = self.field.density(points)[0].float()
        box = self.occupancy.outer_box() if self.occupancy is not None else self.aabb
        inside = ((points >= box[0]) & (points <= box[1])).all(-1)
        return torch.where(inside, sigma, torch.zeros_like(sigma))

    def query_color(self, points: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """points, dirs (N, 3) -> rgb (N, 3)."""
        return self.field(points, dirs)[1].float()

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, perturb: bool = False,
                    background: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                    max_samples: Optional[int] = None, distortion: bool = False,
                    rows: Optional[BatchRows] = None,
                    samples_before: Optional[Callable[[int], int]] = None) -> dict[str, torch.Tensor]:
        """rays_o, rays_d (N, 3), rays_d unit -> rgb (N, 3), t (N,), acc (N,), plus ``num_samples``
        (a 0-d tensor) and for the hierarchical sampler ``rgb_coarse``. ``background`` (3,) or (N, 3)
        overrides the model's background colour (training with random backgrounds).

        ``max_samples`` (occupancy sampler, training): when the rays need more samples, only the first
        ``num_rays`` rays are rendered and the outputs have ``num_rays`` rows. Without gradients
        and jitter (inference), rays stop early once opaque (transmittance < 1e-3). ``distortion``
        (occupancy sampler, training) adds ``distortion`` (rays,): mip-NeRF 360's distortion loss per ray.
        With gradients (occupancy sampler), samples whose transmittance is below
        ``config.grad_min_transmittance`` get none (``gate_gradients``; the values are unchanged).
        ``rows`` (training under DDP): rays_o, rays_d (and a (N, 3) ``background``) are a global
        batch of which only these rows are rendered, with the random numbers the whole batch would
        draw (:mod:`pipeline.models.components.batch_rows`); the outputs have the rows' count (fewer
        when cut by ``max_samples``, which then caps the whole batch: ``samples_before(n)`` takes
        this process's sample count and returns the count of the rows before its rows, a collective
        under DDP, so that each process cuts where one process rendering the batch would)."""
        bg = self.background() if background is None else background
        if rows is not None and bg.ndim == 2:
            bg = bg[rows.slice]
        if self.sampler == "occupancy":
            out = self._render_marched(rays_o, rays_d, perturb, generator, max_samples, distortion, rows,
                                       samples_before)
            if bg.ndim == 2:
                bg = bg[:out["rgb"].shape[0]]
        else:
            if rows is not None:
                rays_o, rays_d = rays_o[rows.slice], rays_d[rows.slice]
            out = self._render_hierarchical(rays_o, rays_d, perturb, generator, bg, rows)
        acc = out["acc"]
        out["t"] = out["t"] / acc.clamp_min(1e-6)
        out["rgb"] = add_background(out["rgb"], acc, bg)
        return out

    # --- samplers ---------------------------------------------------------------------------

    def _render_marched(self, rays_o, rays_d, perturb, generator, max_samples=None, distortion=False, rows=None,
                        samples_before=None):
        # march only through the box around the occupied cells (samples elsewhere would be dropped)
        box = self.occupancy.occupied_box().to(rays_o.device)
        near, far = ray_aabb(rays_o, rays_d, box, min_near=self.config.near_plane)
        far_max = float(far.max()) if far.numel() else 0.0
        if far_max > float(self.schedule[-1]):  # cameras further out than the schedule reaches
            self.schedule = march_schedule(1.5 * far_max, self.step_size, self.config.cone_angle)
        if not torch.is_grad_enabled() and not perturb:  # inference: no random numbers to share
            if rows is not None:
                rays_o, rays_d, near, far = (x[rows.slice] for x in (rays_o, rays_d, near, far))
            return self._render_marched_early_stop(rays_o, rays_d, near, far)
        ray_index, t, deltas = march_rays(self.occupancy, self.schedule, rays_o, rays_d, near, far, perturb,
                                          self.config.max_samples_per_ray, generator, rows=rows)
        if rows is not None:
            rays_o, rays_d = rays_o[rows.slice], rays_d[rows.slice]
        num_rays = rays_o.shape[0]
        budget = max_samples
        if max_samples is not None and rows is not None and samples_before is not None:
            budget = max_samples - samples_before(ray_index.numel())  # what the rows before left
        if budget is not None and ray_index.numel() > budget:
            # a hard sample budget: keep the first rays (a random subset: rays come in random order)
            # whose samples fit, at least one of the batch; the caller reads how many from "num_rays"
            num_rays = int(ray_index[budget]) if budget >= 0 else 0
            if rows is None or rows.start == 0:
                num_rays = max(1, num_rays)
            keep = ray_index < num_rays
            ray_index, t, deltas = ray_index[keep], t[keep], deltas[keep]
        points = rays_o[ray_index] + rays_d[ray_index] * t[:, None]
        if ray_index.numel():
            eps = self.config.grad_min_transmittance
            if self.config.hidden_split > 0 and eps > 0 and torch.is_grad_enabled():
                kept, sigma, rgb = _eval_front_first(self.field, points, rays_d, ray_index, deltas,
                                                     self.config.hidden_split, eps)
                ray_index, t, deltas = ray_index[kept], t[kept], deltas[kept]
            else:
                sigma, rgb = _field_in_buckets(self.field, points, rays_d, ray_index)
            if eps > 0 and sigma.requires_grad:
                visible = transmittance_packed(sigma, deltas, ray_index) >= eps
                sigma, rgb = gate_gradients(visible, sigma, rgb)
        else:
            sigma, rgb = points.new_zeros(0), points.new_zeros(0, 3)
        out = composite_packed(sigma.float(), rgb.float(), t, deltas, ray_index, num_rays)
        out["num_samples"] = torch.tensor(ray_index.numel())
        out["num_rays"] = torch.tensor(num_rays)
        weights = out.pop("weights")
        if distortion:
            out["distortion"] = distortion_loss_packed(weights, t, deltas, ray_index, num_rays)
        return out

    def _render_marched_early_stop(self, rays_o, rays_d, near, far, window: int = 48, min_transmittance: float = 1e-3):
        """Inference: march ``window`` schedule steps at a time and drop rays once opaque."""
        n = rays_o.shape[0]
        rgb, depth = rays_o.new_zeros(n, 3), rays_o.new_zeros(n)
        transmittance = rays_o.new_ones(n)
        schedule = self.schedule.to(rays_o.device)
        k = torch.searchsorted(schedule, near.contiguous())
        alive = torch.nonzero(far > near)[:, 0]
        total = 0
        while alive.numel():
            k_end = (k[alive] + window).clamp_max(schedule.numel() - 1)
            lo, hi = schedule[k[alive].clamp_max(schedule.numel() - 1)], torch.minimum(schedule[k_end], far[alive])
            lo = torch.maximum(lo, near[alive])
            ray_index, t, deltas = march_rays(self.occupancy, schedule, rays_o[alive], rays_d[alive], lo, hi, False,
                                              window + 1)
            if ray_index.numel():
                points = rays_o[alive][ray_index] + rays_d[alive][ray_index] * t[:, None]
                sigma, col = _field_in_buckets(self.field, points, rays_d[alive], ray_index)
                part = composite_packed(sigma.float(), col.float(), t, deltas, ray_index, alive.numel())
                T = transmittance[alive]
                rgb[alive] += T[:, None] * part["rgb"]
                depth[alive] += T * part["t"]
                transmittance[alive] = T * (1.0 - part["acc"])
                total += ray_index.numel()
            k[alive] = k_end
            still = (transmittance[alive] > min_transmittance) & (schedule[k_end] < far[alive]) & \
                (k_end < schedule.numel() - 1)
            alive = alive[still]
        return {"rgb": rgb, "acc": 1.0 - transmittance, "t": depth, "num_samples": torch.tensor(total),
                "num_rays": torch.tensor(n)}

    def _render_hierarchical(self, rays_o, rays_d, perturb, generator, bg, rows=None):
        n = rays_o.shape[0]
        near, far = ray_aabb(rays_o, rays_d, self.aabb, min_near=self.config.near_plane)
        hit = far > near + 1e-6
        near = torch.where(hit, near, torch.zeros_like(near))
        far = torch.where(hit, far, near + 1e-3)
        c = self.config
        t_coarse = stratified_samples(near, far, c.num_coarse, perturb, generator, rows)
        coarse = self._eval_dense(rays_o, rays_d, t_coarse, far)
        coarse["weights"] = coarse["weights"] * hit[:, None]
        out = coarse
        if c.num_fine > 0:
            mids = 0.5 * (t_coarse[:, 1:] + t_coarse[:, :-1])
            bins = torch.cat([near[:, None], mids, far[:, None]], -1)
            t_fine = sample_pdf(bins, coarse["weights"], c.num_fine, deterministic=not perturb, generator=generator,
                                rows=rows)
            t_all = torch.sort(torch.cat([t_coarse, t_fine], -1), -1).values
            out = self._eval_dense(rays_o, rays_d, t_all, far)
            out["rgb_coarse"] = add_background(coarse["rgb"] * hit[:, None], coarse["acc"] * hit, bg)
        for key in ("rgb", "acc", "t"):
            out[key] = out[key] * (hit[:, None] if key == "rgb" else hit)
        out["num_samples"] = torch.tensor(n * (c.num_coarse + c.num_fine))
        out.pop("weights")
        return out

    def _eval_dense(self, rays_o, rays_d, t, far):
        n, s = t.shape
        points = rays_o[:, None] + rays_d[:, None] * t[..., None]
        dirs = rays_d[:, None].expand(n, s, 3)
        sigma, rgb = self.field(points.reshape(-1, 3), dirs.reshape(-1, 3))
        deltas = torch.cat([t[:, 1:] - t[:, :-1], (far[:, None] - t[:, -1:]).clamp_min(1e-4)], -1)
        return composite_dense(sigma.view(n, s).float(), rgb.view(n, s, 3).float(), t, deltas)

    # --- occupancy ----------------------------------------------------------------------------

    @torch.no_grad()
    def update_occupancy(self, all_cells: bool, generator=None, fraction: float = 0.25) -> None:
        if self.occupancy is not None:
            self.occupancy.update(lambda p: self.field.density(p)[0], self.step_size, all_cells, fraction,
                                  generator)


def _field_in_buckets(field: nn.Module, points: torch.Tensor, dirs: torch.Tensor, ray_index: torch.Tensor | None = None,
                      bucket: int = 1024):
    """field(points, dirs[, ray_index]) with the row count padded up to a multiple of ``bucket`` under
    CPU autocast.

    oneDNN compiles a bf16 matrix-product kernel per shape; marched batches have a new sample count
    every step, and compiling for each one slows the training step down. Rounding the count up keeps
    a few dozen shapes, each compiled once. points: (N, 3); dirs: (N, 3),
    or (R, 3) per ray with ray_index (N,) (the field encodes each ray's direction once)."""
    n = points.shape[0]
    per_ray = () if ray_index is None else (ray_index,)
    if points.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or n % bucket == 0:
        return field(points, dirs, *per_ray)
    pad = bucket - n % bucket
    if ray_index is None:
        dirs = torch.cat([dirs, dirs[-1:].expand(pad, 3)])
    else:
        per_ray = (torch.cat([ray_index, ray_index[-1:].expand(pad)]),)
    sigma, rgb = field(torch.cat([points, points[-1:].expand(pad, 3)]), dirs, *per_ray)
    return sigma[:n], rgb[:n]


def _eval_front_first(field: nn.Module, points, rays_d, ray_index, deltas, split: float, min_transmittance: float):
    """field on packed samples in two passes: the first ``split`` of each ray's samples, then the
    rest of the rays whose transmittance after that front is still >= ``min_transmittance``.

    Behind an opaque front every sample's weight is below ``min_transmittance``: leaving them out
    changes the rendered colour and opacity by less than that, and saves their forward (about a
    fifth of the samples of a trained lego). points: (N, 3); rays_d: (R, 3); ray_index: (N,) sorted;
    deltas: (N,). Returns ``kept`` (M,) the evaluated samples' indices in packed order, sigma (M,), rgb (M, 3)."""
    samples_per_ray = torch.bincount(ray_index)
    front = position_in_ray(ray_index) < torch.ceil(samples_per_ray[ray_index] * split)
    front_idx = torch.nonzero(front)[:, 0]
    sigma_f, rgb_f = _field_in_buckets(field, points[front_idx], rays_d, ray_index[front_idx])
    with torch.no_grad():
        optical = torch.zeros(samples_per_ray.numel(), device=deltas.device).index_add_(
            0, ray_index[front_idx], sigma_f.float() * deltas[front_idx])
        visible = torch.exp(-optical) >= min_transmittance
    back_idx = torch.nonzero(~front & visible[ray_index])[:, 0]
    if back_idx.numel() == 0:
        return front_idx, sigma_f, rgb_f
    sigma_b, rgb_b = _field_in_buckets(field, points[back_idx], rays_d, ray_index[back_idx])
    kept, order = torch.sort(torch.cat([front_idx, back_idx]))
    return kept, torch.cat([sigma_f, sigma_b])[order], torch.cat([rgb_f, rgb_b])[order]


def default_aabb(bounds, radius: float = 1.0, padding: float = 0.05):
    """The scene box: ``bounds`` (2, 3) grown by ``padding`` of its size, else the cube [-r, r]^3."""
    if bounds is None:
        return torch.tensor([[-radius] * 3, [radius] * 3], dtype=torch.float32)
    b = torch.as_tensor(bounds, dtype=torch.float32).reshape(2, 3)
    pad = (b[1] - b[0]) * padding
    return torch.stack([b[0] - pad, b[1] + pad])


__all__ = ["NeRFModel", "NeRFModelConfig", "default_aabb"]
