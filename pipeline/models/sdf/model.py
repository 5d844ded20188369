"""A volume-rendered implicit surface (NeuS, or UNISURF's occupancy with ``field=occupancy``) inside
the object's sphere, in front of a NeRF++ background outside it.

Geometry is IDR's SDF network (:class:`pipeline.models.idr.sdf_network.SDFNetwork`: Fourier or
hash-grid encoding, geometric init, coarse-to-fine levels), colour IDR's renderer
``M(x, n, v, z)``, the sharpness the learned inverse deviation ``s = exp(10 variance)`` (NeuS).
Each ray inside the sphere gets uniform samples plus NeuS's hierarchical samples near the first
zero crossing (:func:`pipeline.models.sdf.rendering.neus_upsample`); the sections between them are
evaluated at their midpoints (value, feature, gradient) and turned into opacities by
:func:`pipeline.models.sdf.rendering.neus_section_alpha` (or the occupancy). What the foreground
lets through sees the background field (:mod:`pipeline.models.sdf.background`).

:class:`VolumeSDFModel` is a :class:`pipeline.models.render.SDFModel`: ``render_rays`` (rgb, t =
expected distance of the foreground, acc = foreground opacity, normal), ``query_sdf`` (the field,
cut at the sphere: nothing outside it is trained) and ``query_color``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.models.components.batch_rows import Rows, uniform_rows
from pipeline.models.components.volume_rendering import ray_aabb, stratified_samples
from pipeline.models.idr.model import NeuralRenderer, RendererConfig
from pipeline.models.idr.sdf_network import SDFNetwork, SDFNetworkConfig
from pipeline.models.sdf.background import BACKGROUND_MODELS, BackgroundConfig, BackgroundField, composite_behind
from pipeline.models.sdf.surface_grid import SurfaceGrid
from pipeline.models.sdf.rendering import (neus_section_alpha, neus_upsample, occupancy_alpha, sphere_segments,
                                           weights_from_alpha)

FIELDS = ("sdf", "occupancy")
SPACINGS = ("linear", "log")
SAMPLE_GRADIENTS = ("constant", "differentiable")


@dataclass
class SamplingConfig:
    radius: float = 1.0  # the object's sphere (normalised frame); the background begins outside it
    # uniform samples per ray over its span (the sphere's chord, or the skipping grid's stretch)
    samples: int = 16
    # how the uniform samples are spread: linear (equal steps in t, an object seen from outside) |
    # log (equal steps in log t from log_near x radius: a scene seen from inside, where a wall a
    # step away and the far end of a street share one ray, as mip-NeRF 360's near-dense spacing)
    spacing: str = "linear"
    log_near: float = 0.002  # with spacing=log: the first sample's distance, a share of the radius
    # the foreground's own box inside the sphere ([xmin, ymin, zmin, xmax, ymax, zmax], this frame;
    # empty = the whole sphere): rays leave the surface field where they leave it and see the
    # background (a street seen from inside: the sky over the roofs is not the foreground's)
    box: list[float] = dataclasses.field(default_factory=list)
    importance: int = 16  # NeuS hierarchical samples per ray near the first zero crossing
    upsample_steps: int = 2  # rounds of hierarchical sampling (importance // steps samples each)
    upsample_inv_s: float = 64.0  # s of the first round, doubled each round (NeuS)
    init_variance: float = 0.3  # s = exp(10 variance) starts at ~20 (NeuS)
    # cos annealing (NeuS): the relaxed slope fades out over this share of training (0 = off)
    anneal_end: float = 0.1
    render_chunk: int = 2048  # rays per internal batch when rendering without gradients
    # empty-space skipping (field=sdf): each ray's samples span only the cells of a grid^3 grid that
    # the surface may cross (pipeline.models.sdf.surface_grid), recomputed every grid_update_every
    # steps from grid_start of training on (grid_resolution=0: off)
    grid_resolution: int = 32
    grid_margin: float = 2.0  # a cell is kept when |f(centre)| <= margin x half its diagonal
    grid_start: float = 0.2  # share of training before the grid is used (the surface moves most early)
    grid_update_every: int = 16


@dataclass
class SDFModelConfig:
    # the attribute shadows dataclasses.field inside this class body, hence dataclasses.field below
    field: str = "sdf"  # sdf (NeuS weights) | occupancy (UNISURF: alpha = sigmoid(-s f), surface at 0.5)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    sdf: SDFNetworkConfig = dataclasses.field(default_factory=SDFNetworkConfig)
    renderer: RendererConfig = dataclasses.field(default_factory=RendererConfig)
    background_field: BackgroundConfig = dataclasses.field(default_factory=BackgroundConfig)
    # grad f at the ray samples (NeuS's cos, the renderer's normal input): "differentiable" (NeuS:
    # the colour loss reaches the geometry through them too; second derivatives through the hash
    # grid) or "constant" (first derivatives only, which the C++ kernels compute; the eikonal loss
    # then takes its own differentiable points, see the sdf stage's eikonal_ray_points)
    sample_gradients: str = "differentiable"


def log_spaced_samples(near: torch.Tensor, far: torch.Tensor, closest: float, num: int, perturb: bool,
                       generator: torch.Generator | None = None, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """num stratified samples per ray, equal steps in log t over [max(near, closest), far]:
    near (N,), far (N,) -> (N, num). Each step is the same share of the distance travelled, so a
    wall close to the camera and a facade far down the street get samples alike. ``uniforms``: the
    jitter (N, num), drawn by the caller."""
    start = near.clamp_min(closest)
    unit = stratified_samples(torch.zeros_like(near), torch.ones_like(near), num, perturb, generator,
                              uniforms=uniforms)
    ratio = (far.clamp_min(start * (1 + 1e-6)) / start).log()
    return start[:, None] * torch.exp(unit * ratio[:, None])


class VolumeSDFModel(nn.Module):
    """background: (3,) constant colour behind everything (behind the background field, if any)."""

    def __init__(self, config: SDFModelConfig, background=(1.0, 1.0, 1.0)):
        super().__init__()
        if config.field not in FIELDS:
            raise ValueError(f"field must be one of {FIELDS}, got {config.field!r}")
        if config.background_field.model not in BACKGROUND_MODELS:
            raise ValueError(f"background_field.model must be nerf++ or none, got {config.background_field.model!r}")
        if config.sample_gradients not in SAMPLE_GRADIENTS:
            raise ValueError(f"sample_gradients must be one of {SAMPLE_GRADIENTS}, got {config.sample_gradients!r}")
        if config.sampling.spacing not in SPACINGS:
            raise ValueError(f"sampling.spacing must be one of {SPACINGS}, got {config.sampling.spacing!r}")
        self.config = config
        self.sampling = config.sampling
        self.sdf_network = SDFNetwork(config.sdf)
        self.renderer = NeuralRenderer(config.sdf.feature_dim, config.renderer)
        self.variance = nn.Parameter(torch.tensor(float(config.sampling.init_variance)))
        self.background_field = (BackgroundField(config.background_field, config.sampling.radius)
                                 if config.background_field.model == "nerf++" else None)
        self.register_buffer("background", torch.as_tensor(background, dtype=torch.float32).reshape(3))
        r = config.sampling.radius
        self.bounds = np.array([[-r] * 3, [r] * 3])  # the meshing box when the scene has none
        self.anneal = 1.0  # cos annealing ratio (training progress); 1 = inference
        s = config.sampling
        self.grid = (SurfaceGrid(r, s.grid_resolution, s.grid_margin)
                     if s.grid_resolution > 0 and config.field == "sdf" else None)

    def inv_s(self) -> torch.Tensor:
        """The inverse deviation s (a scalar tensor, differentiable)."""
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1]: coarse-to-fine levels and the cos annealing; 1 = inference."""
        self.sdf_network.set_progress(progress)
        self.renderer.set_progress(progress)
        end = self.sampling.anneal_end
        self.anneal = 1.0 if end <= 0 else min(1.0, progress / end)

    def update_grid(self, step: int, progress: float) -> bool:
        """In training: recompute the skipping grid every ``grid_update_every`` steps once
        ``grid_start`` of training has passed (and at once after a resume). Returns whether it ran."""
        s = self.sampling
        if self.grid is None or progress < s.grid_start:
            return False
        if self.grid.updated and step % max(1, s.grid_update_every) != 0:
            return False
        self.grid.update(self.sdf_network.sdf)
        return True

    @torch.no_grad()
    def prepare_for_rendering(self) -> None:
        """After loading or training: the skipping grid from the field as it is now."""
        if self.grid is not None:
            self.grid.update(self.sdf_network.sdf)

    # --- rendering -----------------------------------------------------------------------------

    def _foreground(self, rays_o, rays_d, near, far, jitter, create_graph):
        """Rays that cross the sphere: (M, 3), near/far (M,), jitter (M, samples) in [0, 1) or None
        (the bins' middles) -> rgb (M, 3), acc, t (M,), normal (M, 3), and for the losses the
        section gradients (M * S, 3) and weights (M, S)."""
        s = self.sampling
        perturb = jitter is not None
        if s.spacing == "log":
            z = log_spaced_samples(near, far, s.log_near * s.radius, s.samples, perturb, uniforms=jitter)
        else:
            z = stratified_samples(near, far, s.samples, perturb, uniforms=jitter)
        z = neus_upsample(rays_o, rays_d, z, self.sdf_network.sdf, s.importance, s.upsample_steps,
                          s.upsample_inv_s, s.radius, occupancy=self.config.field == "occupancy")
        edges = torch.cat([z, far[:, None].expand(-1, 1).maximum(z[:, -1:])], -1)
        dists = edges[:, 1:] - edges[:, :-1]
        mids = z + 0.5 * dists
        m, n_s = mids.shape
        points = (rays_o[:, None] + rays_d[:, None] * mids[..., None]).reshape(-1, 3)
        constant = self.config.sample_gradients == "constant"
        sdf, feature, grad = self.sdf_network.sdf_and_gradient(points, create_graph=create_graph and not constant,
                                                               keep_values_graph=create_graph)
        dirs = rays_d[:, None].expand(m, n_s, 3).reshape(-1, 3)
        inv_s = self.inv_s()
        if self.config.field == "occupancy":
            alpha = occupancy_alpha(sdf.reshape(m, n_s), inv_s)
        else:
            cos = (dirs * grad).sum(-1).reshape(m, n_s)
            alpha = neus_section_alpha(sdf.reshape(m, n_s), cos, dists, inv_s, self.anneal)
        weights = weights_from_alpha(alpha)
        rgb = self.renderer(points, grad, -dirs, feature).reshape(m, n_s, 3)
        acc = weights.sum(-1)
        unit = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        normal = (weights[..., None] * unit.reshape(m, n_s, 3)).sum(1)
        return {"rgb": (weights[..., None] * rgb).sum(1), "acc": acc,
                "t": (weights * mids).sum(-1) / acc.clamp_min(1e-6),
                "normal": normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12),
                "gradients": grad, "weights": weights, "points": points.detach()}

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor, perturb: bool = False,
                    generator: torch.Generator | None = None, training: bool = False,
                    rows: Rows | None = None) -> dict[str, torch.Tensor]:
        """rays_o, rays_d: (N, 3) unit rays -> rgb (N, 3), t (N,), acc (N,) the foreground's opacity,
        normal (N, 3), acc_background (N,); with ``training`` also gradients (P, 3) at every
        foreground section midpoint (for the eikonal loss, differentiable), weights (M, S), hit
        (N,) bool (the M rays that cross the sphere). Without ``training`` rays go through in
        chunks of ``sampling.render_chunk`` without gradients to the parameters. ``rows``: the N
        rays are these rows of a global batch (under DDP: each rank renders its rows), and every
        random number is drawn for the whole batch, so the ranks draw what one process draws."""
        chunk = self.sampling.render_chunk
        if not training and rays_o.shape[0] > chunk:
            parts = [self.render_rays(rays_o[i:i + chunk], rays_d[i:i + chunk]) for i in range(0, rays_o.shape[0], chunk)]
            return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        n = rays_o.shape[0]
        # drawn for every ray, hit or not: the draws do not depend on the rays (nor on the rank)
        jitter = uniform_rows(rows, n, self.sampling.samples, generator, rays_o.device, rays_o.dtype) if perturb else None
        near, sphere_far, hit = sphere_segments(rays_o, rays_d, self.sampling.radius)
        far = sphere_far
        if self.sampling.box:  # the stretch inside the foreground's box
            box = torch.as_tensor(self.sampling.box, dtype=rays_o.dtype, device=rays_o.device).reshape(2, 3)
            box_near, box_far = ray_aabb(rays_o, rays_d, box)
            near, far = torch.maximum(near, box_near), torch.minimum(far, box_far)
            hit = hit & (far > near)
            far = torch.maximum(far, near)
        if self.grid is not None:  # only the stretch of each ray where the surface may be
            near, far, crosses = self.grid.ray_span(rays_o, rays_d, near, far)
            hit = hit & crosses
        idx = hit.nonzero().squeeze(1)
        fg_rgb, acc = rays_o.new_zeros(n, 3), rays_o.new_zeros(n)
        t, normal = sphere_far.clone(), rays_o.new_zeros(n, 3)
        fg = None
        if len(idx):
            fg = self._foreground(rays_o[idx], rays_d[idx], near[idx], far[idx],
                                  None if jitter is None else jitter[idx], training)
            if not training:
                fg = {k: v.detach() for k, v in fg.items()}
            # index_put keeps the scatter differentiable for the rays that cross the sphere
            fg_rgb = fg_rgb.index_put((idx,), fg["rgb"])
            acc = acc.index_put((idx,), fg["acc"])
            t = t.index_put((idx,), torch.where(fg["acc"] > 1e-4, fg["t"], sphere_far[idx]))
            normal = normal.index_put((idx,), fg["normal"])
        if self.background_field is not None:
            bg = self.background_field.render(rays_o, rays_d, sphere_far, perturb, generator, rows)
            bg_rgb, bg_acc = bg["rgb"], bg["acc"]
        else:
            bg_rgb, bg_acc = rays_o.new_zeros(n, 3), rays_o.new_zeros(n)
        rgb = composite_behind(fg_rgb, acc, bg_rgb, bg_acc, self.background.to(rays_o.dtype))
        out = {"rgb": rgb, "t": t, "acc": acc, "normal": normal, "acc_background": bg_acc}
        if not training:
            return {k: v.detach() for k, v in out.items()}
        empty = rays_o.new_zeros(0, 3)
        out.update(hit=hit, gradients=fg["gradients"] if fg else empty, points=fg["points"] if fg else empty,
                   weights=fg["weights"] if fg else rays_o.new_zeros(0, 1))
        return out

    # --- SDFModel ------------------------------------------------------------------------------

    def query_sdf(self, points: torch.Tensor) -> torch.Tensor:
        """points (N, 3) -> the field (N,), negative inside, cut at the sphere: ``max(f, |x| - r)``
        (outside the sphere no sample ever trained f, and stray zero crossings there are not
        the object's)."""
        with torch.no_grad():
            return torch.maximum(self.sdf_network.sdf(points), points.norm(dim=-1) - self.sampling.radius)

    def query_color(self, points: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """points, dirs: (N, 3) (dirs = viewing directions, camera -> point) -> rgb (N, 3)."""
        _, feature, grad = self.sdf_network.sdf_and_gradient(points.detach(), create_graph=False)
        with torch.no_grad():
            dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return self.renderer(points, grad, -dirs, feature)


__all__ = ["FIELDS", "SAMPLE_GRADIENTS", "SPACINGS", "log_spaced_samples", "SamplingConfig", "SDFModelConfig", "VolumeSDFModel"]
