"""A vectorised sphere tracer and view-independent shading for the synthetic scenes.

All rays of a view are traced at once; rays that converged or left the scene are dropped from the
active set each step, so the cost follows the rays still marching.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from datasets.synthetic_sdf import SDFScene
from datasets.synthetic_texture import albedo
from pipeline.geometry.cameras import Cameras, pixel_grid

LIGHT_DIR = (0.45, 0.3, 0.84)  # towards the light (world, up = +z); fixed so colours agree across views
AMBIENT = 0.4
SUPERSAMPLE_OFFSETS = ((-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25))  # 2x2 per pixel


def sphere_trace(sdf: Callable[[torch.Tensor], torch.Tensor], rays_o: torch.Tensor, rays_d: torch.Tensor,
                 t_near: torch.Tensor, t_far: torch.Tensor, max_steps: int = 200,
                 eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """March unit rays rays_o + t rays_d (N, 3) from t_near to t_far (N,).

    Returns (t (N,), hit (N,) bool). A ray hits when |sdf| < eps * max(1, t); rays still marching
    after ``max_steps`` (grazing rays) count as hits when |sdf| < 20 eps. (Over-relaxed steps were
    tried: most rays converge in ~10 steps here, and they saved nothing.)
    """
    t = t_near.clone()
    hit = torch.zeros_like(t, dtype=torch.bool)
    idx = torch.nonzero(t_near < t_far).squeeze(-1)
    o, d, ta, tf = rays_o[idx], rays_d[idx], t[idx], t_far[idx]  # the marching rays, compacted each step
    r = torch.zeros_like(ta)
    for _ in range(max_steps):
        if idx.numel() == 0:
            break
        r = sdf(o + ta[:, None] * d)
        converged = r.abs() < eps * ta.clamp_min(1.0)
        hit[idx[converged]] = True
        t[idx[converged]] = ta[converged]
        ta = ta + r
        keep = ~converged & (ta < tf)
        idx, o, d, ta, tf, r = idx[keep], o[keep], d[keep], ta[keep], tf[keep], r[keep]
    if idx.numel():  # grazing rays out of steps: hits when already very near the surface
        near = r.abs() < 20 * eps
        hit[idx[near]] = True
        t[idx[near]] = ta[near] - r[near]
    return t, hit


def sphere_interval(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit t (N,) of unit rays through the sphere of ``radius`` at the origin
    (t_near > t_far for rays that miss)."""
    b = -(rays_o * rays_d).sum(-1)
    disc = b * b - (rays_o * rays_o).sum(-1) + radius * radius
    root = disc.clamp_min(0).sqrt()
    t_near = (b - root).clamp_min(0)
    t_far = torch.where(disc > 0, b + root, torch.full_like(b, -1.0))
    return t_near, t_far


def shade(points: torch.Tensor, normals: torch.Tensor, material: torch.Tensor, seed: int,
          texture_scale: float = 1.0) -> torch.Tensor:
    """Lambert + ambient under a fixed directional light: (N, 3) colours in [0, 1]."""
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIR, dtype=points.dtype, device=points.device), dim=0)
    lambert = (normals @ light).clamp_min(0)
    return (albedo(points, material, seed, texture_scale) * (AMBIENT + (1 - AMBIENT) * lambert)[:, None]).clamp(0, 1)


@dataclass
class RenderedView:
    """One rendered view: rgba (H, W, 4) float in [0, 1] (straight alpha, 2x2 supersampled);
    depth (H, W) (z-depth for pinhole, range for equirect, 0 on background), normals (H, W, 3)
    world-space unit (0 on background) and mask (H, W) bool, all at pixel centres."""

    rgba: torch.Tensor
    depth: torch.Tensor
    normals: torch.Tensor
    mask: torch.Tensor


def _trace_rays(scene: SDFScene, rays_o, rays_d, t_far_default: float, max_steps: int):
    if scene.bound_radius is not None:
        t_near, t_far = sphere_interval(rays_o, rays_d, scene.bound_radius + 1e-3)
    else:
        t_near = torch.zeros_like(rays_o[:, 0])
        t_far = torch.full_like(t_near, t_far_default)
    return sphere_trace(scene, rays_o, rays_d, t_near, t_far, max_steps=max_steps)


def _render_rays(scene: SDFScene, rays_o: torch.Tensor, rays_d: torch.Tensor, seed: int, texture_scale: float,
                 t_far: float, max_steps: int,
                 with_colour: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trace and shade rays (N, 3): (t (N,), hit (N,) bool, colour (N, 3), normals (N, 3));
    colour stays 0 when ``with_colour`` is False (texturing is the costliest part)."""
    t, hit = _trace_rays(scene, rays_o, rays_d, t_far, max_steps)
    colour = torch.zeros_like(rays_o)
    normals = torch.zeros_like(rays_o)
    if hit.any():
        points = rays_o[hit] + t[hit, None] * rays_d[hit]
        normals[hit] = scene.normals(points)
        if with_colour:
            colour[hit] = shade(points, normals[hit], scene.material(points), seed, texture_scale)
    return t, hit, colour, normals


def render_view(scene: SDFScene, camera: Cameras, seed: int, texture_scale: float = 1.0,
                t_far: float = 20.0, max_steps: int = 200, chunk: int = 1 << 20) -> RenderedView:
    """Render camera 0 of ``camera`` (any model): supersampled colour, pixel-centre geometry.

    Rays go in chunks of ``chunk`` (memory bound only): every chunk pays the fixed per-step cost of
    the few slow grazing rays, so fewer, larger chunks are faster.
    """
    w, h = int(camera.width[0]), int(camera.height[0])
    centres = pixel_grid(w, h, dtype=camera.fx.dtype)
    offsets = torch.tensor(SUPERSAMPLE_OFFSETS, dtype=centres.dtype)
    # one batch: the pixel centres, then the 4 sub-pixel samples of every pixel
    uv = torch.cat([centres, (centres[None] + offsets[:, None]).reshape(-1, 2)])
    rays_o, rays_d, z_scale = camera.generate_rays(uv)
    n = w * h
    # pixel centres give geometry only; the sub-pixel samples give colour and coverage
    spans = ([(a, min(a + chunk, n)) for a in range(0, n, chunk)]
             + [(a, min(a + chunk, len(uv))) for a in range(n, len(uv), chunk)])
    parts = [_render_rays(scene, rays_o[a:b], rays_d[a:b], seed, texture_scale, t_far, max_steps, with_colour=a >= n)
             for a, b in spans]
    t, hit, colour, normals = (torch.cat(x) for x in zip(*parts))

    centre_hit = hit[:n]
    depth = torch.where(centre_hit, t[:n] * z_scale[:n], torch.zeros_like(t[:n]))
    normals = normals[:n]
    sub_hit = hit[n:].reshape(len(offsets), n).to(colour.dtype)
    sub_colour = colour[n:].reshape(len(offsets), n, 3)
    alpha = sub_hit.mean(0)
    rgb = (sub_colour * sub_hit[..., None]).sum(0) / sub_hit.sum(0).clamp_min(1)[:, None]
    rgba = torch.cat([rgb, alpha[:, None]], -1)
    return RenderedView(rgba.reshape(h, w, 4), depth.reshape(h, w), normals.reshape(h, w, 3),
                        centre_hit.reshape(h, w))


def fibonacci_directions(count: int, z_min: float = -0.5, z_max: float = 1.0) -> torch.Tensor:
    """``count`` unit vectors spread evenly (Fibonacci lattice) over the band z_min <= z <= z_max
    of the unit sphere: (count, 3) float64. Ordered from the top down."""
    golden = math.pi * (3.0 - math.sqrt(5.0))
    i = torch.arange(count, dtype=torch.float64)
    z = z_max - (i + 0.5) / count * (z_max - z_min)
    r = (1 - z * z).clamp_min(0).sqrt()
    phi = i * golden
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
