"""Volume rendering of an implicit surface: the SDF-to-opacity rules and the sampling that follows
the surface.

- NeuS (Wang et al. 2021): with ``Phi_s(x) = sigmoid(s x)`` and ``s`` the learned inverse
  deviation, the opacity of the section between samples ``p_i`` and ``p_{i+1}`` is
  ``alpha_i = max((Phi_s(f(p_i)) - Phi_s(f(p_{i+1}))) / Phi_s(f(p_i)), 0)``. Along a ray through a
  plane the weights ``w_i = T_i alpha_i`` are then exactly the logistic density of the surface
  crossing: they peak at the surface and the expected depth is unbiased (the naive density
  ``sigma = phi_s(f)`` puts the peak in front of the surface).
  :func:`neus_alpha` gives it from the SDF at the section endpoints; :func:`neus_section_alpha` is
  the form NeuS trains with: one SDF value and gradient per section midpoint, the endpoint values
  extrapolated along ``cos = <ray, grad f>``, with the cos annealing of the paper (early in
  training the slope is relaxed towards ``(cos - 1) / 2`` so that rays leaving a surface still get
  gradients).
- Occupancy (UNISURF, Oechsle et al. 2021): ``alpha_i = o(p_i)`` with the occupancy
  ``o = sigmoid(-s f)`` in (0, 1); the surface is ``o = 0.5``, i.e. ``f = 0``.
- :func:`neus_upsample`: NeuS's hierarchical sampling; new samples are drawn from the weights of the
  current ones, computed with an ``s`` that doubles each round, so they gather at the first zero
  crossing whatever the learned ``s`` is.

Shapes: ``N`` rays, ``S`` samples per ray, dense layout ``(N, S)``; distances ``t`` along unit rays.
"""
from __future__ import annotations

from typing import Callable

import torch

from pipeline.models.components.volume_rendering import sample_pdf
from pipeline.models.idr.sphere_tracing import ray_sphere_intersection



def _cdf_ratio_alpha(prev_sdf: torch.Tensor, next_sdf: torch.Tensor, inv_s) -> torch.Tensor:
    """``max(1 - Phi_s(f_next) / Phi_s(f_prev), 0)`` computed in log space. NeuS's code adds 1e-5
    to numerator and denominator against 0/0 deep inside the object; that also gives every section
    in front of the surface an opacity of ~1e-5, which over hundreds of samples biases the depth
    (measured: -2.6e-3 on a plane with 1024 sections). In log space the ratio is exact, and deep
    inside it tends to ``1 - exp(-s |df|)``: an opaque solid, as the guard intended."""
    log_ratio = torch.nn.functional.logsigmoid(next_sdf * inv_s) - torch.nn.functional.logsigmoid(prev_sdf * inv_s)
    return (-torch.expm1(log_ratio)).clamp(0.0, 1.0)


def weights_from_alpha(alpha: torch.Tensor) -> torch.Tensor:
    """alpha (N, S) -> weights (N, S): ``w_i = alpha_i prod_{j<i} (1 - alpha_j)``."""
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha], -1), -1)[:, :-1]
    return alpha * transmittance


def neus_alpha(sdf: torch.Tensor, inv_s: torch.Tensor | float) -> torch.Tensor:
    """NeuS's discrete opacity from the SDF at the section endpoints: sdf (N, S + 1) -> alpha (N, S)
    in [0, 1]; ``inv_s`` the inverse deviation (a scalar tensor or a float)."""
    return _cdf_ratio_alpha(sdf[:, :-1], sdf[:, 1:], inv_s)


def annealed_cos(true_cos: torch.Tensor, anneal: float) -> torch.Tensor:
    """NeuS's slope along the ray used to extrapolate the SDF, <= 0: ``-relu(-cos)`` at
    ``anneal = 1``; early in training (``anneal`` near 0) ``-relu((1 - cos) / 2)``, which is
    negative even where the ray leaves the surface (cos > 0), so those sections still learn."""
    return -(torch.relu(-true_cos * 0.5 + 0.5) * (1.0 - anneal) + torch.relu(-true_cos) * anneal)


def neus_section_alpha(sdf_mid: torch.Tensor, true_cos: torch.Tensor, dists: torch.Tensor,
                       inv_s: torch.Tensor | float, anneal: float = 1.0) -> torch.Tensor:
    """NeuS's training form: sdf_mid (N, S) at the section midpoints, true_cos (N, S) =
    <ray direction, grad f> there, dists (N, S) the section lengths -> alpha (N, S). The endpoint
    values are ``f_mid -/+ cos dist / 2`` (exact for a plane when ``anneal = 1``)."""
    cos = annealed_cos(true_cos, anneal)
    prev_sdf = sdf_mid - cos * dists * 0.5
    next_sdf = sdf_mid + cos * dists * 0.5
    return _cdf_ratio_alpha(prev_sdf, next_sdf, inv_s)


def occupancy_alpha(sdf: torch.Tensor, inv_s: torch.Tensor | float) -> torch.Tensor:
    """UNISURF's opacity: the occupancy itself, ``o = sigmoid(-s f)``: sdf (N, S) -> alpha (N, S)."""
    return torch.sigmoid(-sdf * inv_s)


def sphere_segments(rays_o: torch.Tensor, rays_d: torch.Tensor, radius: float):
    """Where unit rays (N, 3) cross the origin-centred sphere of ``radius``: near, far (N,) and
    hit (N,) bool. Rays that miss (or whose sphere lies behind them) get ``near = far`` = the
    distance of their closest approach to the origin (>= 0), where their background begins."""
    near, far, hit = ray_sphere_intersection(rays_o, rays_d, radius)
    closest = (-(rays_o * rays_d).sum(-1)).clamp_min(0.0)
    return torch.where(hit, near, closest), torch.where(hit, far, closest), hit


def section_weights_for_sampling(z: torch.Tensor, sdf: torch.Tensor, inside: torch.Tensor, inv_s: float,
                                 occupancy: bool) -> torch.Tensor:
    """Weights (N, S - 1) of the sections between samples z (N, S) with SDF values sdf (N, S) at a
    fixed ``inv_s``, as NeuS's ``up_sample`` computes them: the slope of each section is the
    smaller (steeper descent) of its own and the previous section's finite difference, clipped to
    [-1e3, 0] and zero where neither end is ``inside`` (N, S) the sphere. ``occupancy``: the
    UNISURF opacity at the section midpoints instead."""
    mid = 0.5 * (sdf[:, :-1] + sdf[:, 1:])
    if occupancy:
        return weights_from_alpha(occupancy_alpha(mid, inv_s))
    dist = z[:, 1:] - z[:, :-1]
    cos = (sdf[:, 1:] - sdf[:, :-1]) / (dist + 1e-5)
    prev_cos = torch.cat([torch.zeros_like(cos[:, :1]), cos[:, :-1]], -1)
    either_inside = inside[:, :-1] | inside[:, 1:]
    cos = torch.minimum(prev_cos, cos).clamp(-1e3, 0.0) * either_inside
    prev_sdf, next_sdf = mid - cos * dist * 0.5, mid + cos * dist * 0.5
    return weights_from_alpha(_cdf_ratio_alpha(prev_sdf, next_sdf, inv_s))


@torch.no_grad()
def neus_upsample(rays_o: torch.Tensor, rays_d: torch.Tensor, z: torch.Tensor, sdf_fn: Callable,
                  num_importance: int, steps: int, base_inv_s: float = 64.0, radius: float = 1.0,
                  occupancy: bool = False) -> torch.Tensor:
    """NeuS's hierarchical sampling: ``steps`` rounds of ``num_importance // steps`` samples each,
    drawn (deterministically) from the section weights at ``inv_s = base_inv_s * 2^round``.

    rays_o, rays_d: (N, 3); z: (N, S) sorted coarse distances; sdf_fn: points (M, 3) -> sdf (M,).
    Returns the sorted union (N, S + num_importance). No gradients."""
    n = z.shape[0]
    if steps <= 0 or num_importance <= 0:
        return z
    per_step = max(1, num_importance // steps)
    points = rays_o[:, None] + rays_d[:, None] * z[..., None]
    sdf = sdf_fn(points.reshape(-1, 3)).reshape(n, -1)
    for i in range(steps):
        inside = points.norm(dim=-1) < radius
        weights = section_weights_for_sampling(z, sdf, inside, base_inv_s * 2 ** i, occupancy)
        new_z = sample_pdf(z, weights, per_step, deterministic=True)
        new_points = rays_o[:, None] + rays_d[:, None] * new_z[..., None]
        new_sdf = sdf_fn(new_points.reshape(-1, 3)).reshape(n, -1)
        z, order = torch.sort(torch.cat([z, new_z], -1), -1)
        sdf = torch.cat([sdf, new_sdf], -1).gather(1, order)
        points = torch.cat([points, new_points], 1).gather(1, order[..., None].expand(-1, -1, 3))
    return z


__all__ = ["weights_from_alpha", "neus_alpha", "annealed_cos", "neus_section_alpha", "occupancy_alpha",
           "sphere_segments", "section_weights_for_sampling", "neus_upsample"]
