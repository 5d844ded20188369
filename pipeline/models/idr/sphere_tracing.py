"""Ray-surface intersection of a signed distance field (IDR, Yariv et al. 2020, section 3.2).

Rays are marched inside a bounding sphere from both ends (sphere tracing), rays whose front march
stepped through the surface or did not converge get a sampling fallback that looks for the first
sign change between the two march fronts, and every bracketed crossing is refined by the secant
method. Nothing here is differentiated: the surface point is made differentiable afterwards by
the sample network (:func:`pipeline.models.idr.model.sample_network`).

For rays that miss, the point of smallest SDF seen along the ray is returned as well: the IDR mask
loss pushes that value below zero for rays inside the object's silhouette and above it outside.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

SDFFunction = Callable[[torch.Tensor], torch.Tensor]  # points (N, 3) -> sdf (N,)


@dataclass
class TracingConfig:
    """Sphere-tracing settings (all in the normalised frame, object inside the unit sphere)."""

    radius: float = 1.0  # bounding sphere of the scene
    steps: int = 16  # sphere-tracing iterations from each end
    threshold: float = 5e-5  # |f| below which a march has converged (IDR: 5e-5)
    samples: int = 48  # fallback samples between the two march fronts
    secant_steps: int = 8  # secant refinement iterations on a bracketed crossing
    # assumed bound on |grad f|: when the two fronts pass each other with f(a) + f(b) >= lipschitz *
    # (b - a), no surface can lie between them and the ray is a miss without fallback sampling
    lipschitz: float = 1.5
    chunk: int = 65536  # points per network call


@dataclass
class SurfaceHits:
    """Result of :func:`trace_surface` for N rays (all tensors detached).

    t: (N,) distance along the unit ray of the surface point (hits), or of the smallest-SDF point
    seen (misses inside the bounding sphere); hit: (N,) bool; in_sphere: (N,) bool the ray meets the
    bounding sphere; near, far: (N,) the ray's entry and exit distances of the sphere.
    """

    t: torch.Tensor
    hit: torch.Tensor
    in_sphere: torch.Tensor
    near: torch.Tensor
    far: torch.Tensor


def ray_sphere_intersection(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float):
    """Entry/exit distances of unit rays with the origin-centred sphere.

    rays_o, rays_d: (N, 3) -> near (N,) clamped at 0, far (N,), valid (N,) bool.
    """
    b = (rays_o * rays_d).sum(-1)
    c = (rays_o * rays_o).sum(-1) - radius * radius
    disc = b * b - c
    valid = disc > 0
    root = torch.sqrt(disc.clamp_min(0))
    near = (-b - root).clamp_min(0.0)
    far = -b + root
    valid = valid & (far > 0)
    return near, far, valid


def _evaluate(sdf_fn: SDFFunction, points: torch.Tensor, chunk: int) -> torch.Tensor:
    if len(points) == 0:
        return points.new_zeros(0)
    return torch.cat([sdf_fn(points[i:i + chunk]).reshape(-1) for i in range(0, len(points), chunk)])


def _secant(sdf_fn, rays_o, rays_d, t_out, s_out, t_in, s_in, steps, chunk):
    """Refine crossings bracketed by t_out (f > 0) and t_in (f < 0). All (M,) except rays (M, 3)."""
    t_mid = t_out
    for _ in range(steps):
        denom = s_in - s_out
        frac = torch.where(denom.abs() > 1e-12, -s_out / denom, torch.full_like(denom, 0.5))
        t_mid = t_out + frac.clamp(0, 1) * (t_in - t_out)
        s_mid = _evaluate(sdf_fn, rays_o + t_mid[:, None] * rays_d, chunk)
        outside = s_mid > 0
        t_out = torch.where(outside, t_mid, t_out)
        s_out = torch.where(outside, s_mid, s_out)
        t_in = torch.where(outside, t_in, t_mid)
        s_in = torch.where(outside, s_in, s_mid)
    return t_mid


@torch.no_grad()
def trace_surface(sdf_fn: SDFFunction, rays_o: torch.Tensor, rays_d: torch.Tensor,
                  config: TracingConfig = TracingConfig()) -> SurfaceHits:
    """First intersection of each unit ray with the zero level set of ``sdf_fn``.

    rays_o, rays_d: (N, 3), rays_d unit length. Returns :class:`SurfaceHits`.
    """
    near, far, in_sphere = ray_sphere_intersection(rays_o, rays_d, config.radius)
    t_front, t_back = near.clone(), far.clone()
    s_front = torch.full_like(near, float("inf"))
    t_prev, s_prev = near.clone(), torch.full_like(near, float("inf"))
    t_back_prev, s_back_prev = far.clone(), torch.zeros_like(far)
    empty = torch.zeros_like(in_sphere)  # rays proven to miss
    # smallest SDF seen along each ray (for the mask loss of rays that miss)
    t_min, s_min = 0.5 * (near + far), torch.full_like(near, float("inf"))
    march_front, march_back = in_sphere.clone(), in_sphere.clone()

    for _ in range(config.steps):
        idx_f = march_front.nonzero().squeeze(1)
        idx_b = march_back.nonzero().squeeze(1)
        if len(idx_f) == 0 and len(idx_b) == 0:
            break
        points = torch.cat([rays_o[idx_f] + t_front[idx_f, None] * rays_d[idx_f],
                            rays_o[idx_b] + t_back[idx_b, None] * rays_d[idx_b]])
        values = _evaluate(sdf_fn, points, config.chunk)
        v_f, v_b = values[:len(idx_f)], values[len(idx_f):]
        for idx, v, t in ((idx_f, v_f, t_front), (idx_b, v_b, t_back)):
            better = v < s_min[idx]
            s_min[idx[better]] = v[better]
            t_min[idx[better]] = t[idx[better]]
        s_front[idx_f] = v_f
        # front: converged or stepped through the surface (f < 0): stop; else step forward
        stop_f = v_f < config.threshold
        go_f = idx_f[~stop_f]
        t_prev[go_f], s_prev[go_f] = t_front[go_f], v_f[~stop_f]
        t_front[go_f] = t_front[go_f] + v_f[~stop_f]
        march_front[idx_f[stop_f]] = False
        # back: march backwards while outside; it only bounds the fallback search interval
        stop_b = v_b < config.threshold
        go_b = idx_b[~stop_b]
        t_back_prev[go_b], s_back_prev[go_b] = t_back[go_b], v_b[~stop_b]
        s_back_prev[idx_b[stop_b]] = 0.0  # the back march found a surface: no proof of emptiness
        t_back[go_b] = t_back[go_b] - v_b[~stop_b]
        march_back[idx_b[stop_b]] = False
        # the fronts passed each other: either the spheres of the last steps cover the gap (no
        # surface, for a field with |grad f| <= lipschitz) or a step was larger than the true
        # distance; then undo the last steps and leave the gap to the sampling fallback
        crossed = march_front & (t_front >= t_back)
        gap = (t_back_prev - t_prev).clamp_min(0)
        proven = crossed & (s_prev + s_back_prev >= config.lipschitz * gap)
        empty |= proven
        unsure = crossed & ~proven
        t_front[unsure], t_back[unsure] = t_prev[unsure], torch.maximum(t_back_prev[unsure], t_prev[unsure])
        t_front[proven] = float("inf")
        march_front &= ~crossed
        march_back &= ~crossed

    t_hit = t_front.clone()
    hit = in_sphere & (s_front.abs() < config.threshold) & (t_front <= far)

    # overshoot: the last step went through the surface; bracket [t_prev, t_front]
    over = in_sphere & (s_front <= -config.threshold) & torch.isfinite(s_prev)
    # no convergence: search [t_front, t_back] for the first sign change
    unconverged = in_sphere & ~empty & (s_front >= config.threshold) & (t_front < t_back)
    idx_u = unconverged.nonzero().squeeze(1)
    bracket_idx = [over.nonzero().squeeze(1)]
    bracket = [(t_prev[over], s_prev[over], t_front[over], s_front[over])]
    if len(idx_u) > 0:
        steps = torch.linspace(0, 1, config.samples, device=rays_o.device, dtype=rays_o.dtype)
        ts = t_front[idx_u, None] + steps[None] * (t_back[idx_u] - t_front[idx_u])[:, None]  # (M, S)
        pts = rays_o[idx_u, None] + ts[..., None] * rays_d[idx_u, None]
        vals = _evaluate(sdf_fn, pts.reshape(-1, 3), config.chunk).reshape(ts.shape)
        best = vals.argmin(1)
        v_best = vals.gather(1, best[:, None]).squeeze(1)
        better = v_best < s_min[idx_u]
        s_min[idx_u[better]] = v_best[better]
        t_min[idx_u[better]] = ts.gather(1, best[:, None]).squeeze(1)[better]
        negative = vals < 0
        has_cross = negative.any(1)
        # first negative sample (argmax of a bool picks the first True); the sample before is positive
        first = negative.float().argmax(1).clamp_min(1)
        sel = has_cross.nonzero().squeeze(1)
        if len(sel) > 0:
            f = first[sel]
            bracket_idx.append(idx_u[sel])
            bracket.append((ts[sel, f - 1], vals[sel, f - 1], ts[sel, f], vals[sel, f]))
    idx_br = torch.cat(bracket_idx)
    if len(idx_br) > 0:
        t_o, s_o, t_i, s_i = (torch.cat([b[k] for b in bracket]) for k in range(4))
        t_hit[idx_br] = _secant(sdf_fn, rays_o[idx_br], rays_d[idx_br], t_o, s_o, t_i, s_i,
                                config.secant_steps, config.chunk)
        hit[idx_br] = True
    t = torch.where(hit, t_hit, t_min)
    return SurfaceHits(t=t, hit=hit, in_sphere=in_sphere, near=near, far=far)


__all__ = ["TracingConfig", "SurfaceHits", "ray_sphere_intersection", "trace_surface"]
