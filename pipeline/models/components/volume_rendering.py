"""Volume rendering and ray sampling.

Two sample layouts:
- dense ``(N, S)`` samples per ray (classic NeRF: stratified + hierarchical sampling),
  composited by :func:`composite_dense`;
- packed samples (instant-ngp: only the samples in occupied space, sorted by ray, each with its ray
  index), composited by :func:`composite_packed` with a per-ray (segmented) cumulative sum.

Quadrature (Max 1995, NeRF): ``alpha_i = 1 - exp(-sigma_i delta_i)``,
``T_i = exp(-sum_{j<i} sigma_j delta_j)``, ``w_i = T_i alpha_i``; colour ``sum w_i c_i``,
opacity ``acc = sum w_i``, expected distance ``sum w_i t_i``.
"""
from __future__ import annotations

from typing import Optional

import torch

from pipeline.models.components.batch_rows import Rows, uniform_rows

BACKGROUND_MODES = ("white", "black", "random", "learned")


def ray_aabb(rays_o: torch.Tensor, rays_d: torch.Tensor, aabb: torch.Tensor, min_near: float = 0.0):
    """Entry and exit distances of rays in a box. rays_o, rays_d: (N, 3); aabb: (2, 3).

    Returns near, far (N,) with ``near >= min_near``; rays that miss have ``far <= near``.
    """
    inv_d = 1.0 / torch.where(rays_d.abs() < 1e-9, torch.full_like(rays_d, 1e-9), rays_d)
    t0 = (aabb[0] - rays_o) * inv_d
    t1 = (aabb[1] - rays_o) * inv_d
    near = torch.minimum(t0, t1).amax(-1).clamp_min(min_near)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def stratified_samples(near: torch.Tensor, far: torch.Tensor, num: int, perturb: bool,
                       generator: torch.Generator | None = None, rows: Optional[Rows] = None,
                       uniforms: Optional[torch.Tensor] = None) -> torch.Tensor:
    """num samples per ray in [near, far], one per equal bin (jittered in training). -> (N, num).
    ``rows``: the N rays are these rows of a global batch (their jitter is drawn for all of it);
    ``uniforms``: the jitter (N, num) in [0, 1), drawn by the caller."""
    steps = torch.linspace(0.0, 1.0, num + 1, device=near.device, dtype=near.dtype)
    lower, upper = steps[:-1], steps[1:]
    if perturb and uniforms is not None:
        u = uniforms.to(near.dtype)
    elif perturb:
        u = uniform_rows(rows, near.shape[0], num, generator, near.device, near.dtype)
    else:
        u = torch.full((near.shape[0], num), 0.5, device=near.device, dtype=near.dtype)
    frac = lower + (upper - lower) * u
    return near[:, None] + (far - near)[:, None] * frac


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, num: int, deterministic: bool,
               generator: torch.Generator | None = None, rows: Optional[Rows] = None) -> torch.Tensor:
    """Hierarchical sampling: num samples from the piecewise-constant pdf given by ``weights``
    (N, B) over bin edges ``bins`` (N, B + 1) -> (N, num), sorted. No gradient flows back.
    ``rows``: as :func:`stratified_samples`."""
    weights = weights.detach() + 1e-5  # keeps the pdf defined on empty rays
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)  # (N, B+1)
    if deterministic:
        u = torch.linspace(0.0, 1.0, num, device=bins.device, dtype=bins.dtype).expand(cdf.shape[0], num)
    else:
        u = uniform_rows(rows, cdf.shape[0], num, generator, bins.device, bins.dtype)
    u = u.contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below = (idx - 1).clamp(0, cdf.shape[1] - 1)
    above = idx.clamp(0, cdf.shape[1] - 1)
    cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)
    bin_lo, bin_hi = bins.gather(1, below), bins.gather(1, above)
    denom = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_lo), cdf_hi - cdf_lo)
    return (bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)).detach()


def composite_dense(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, deltas: torch.Tensor):
    """sigma (N, S), rgb (N, S, 3), t (N, S), deltas (N, S) -> dict of rgb (N, 3), acc (N,),
    t (N,) = sum w t (unnormalised expected distance), weights (N, S)."""
    sd = sigma * deltas
    alpha = 1.0 - torch.exp(-sd)
    excl = torch.cumsum(sd, -1) - sd
    weights = alpha * torch.exp(-excl)
    return {"rgb": (weights[..., None] * rgb).sum(-2), "acc": weights.sum(-1), "t": (weights * t).sum(-1),
            "weights": weights}


def composite_packed(sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor, deltas: torch.Tensor,
                     ray_index: torch.Tensor, num_rays: int):
    """Packed samples sorted by ray: sigma, t, deltas, ray_index (M,), rgb (M, 3) ->
    rgb (R, 3), acc (R,), t (R,) = sum w t, weights (M,). Rays without samples get zeros."""
    sd = sigma * deltas
    if sd.numel() == 0:
        zeros = sigma.new_zeros(num_rays)
        return {"rgb": rgb.new_zeros(num_rays, 3), "acc": zeros, "t": zeros, "weights": sd}
    excl = exclusive_cumsum_per_ray(sd, ray_index)
    alpha = 1.0 - torch.exp(-sd)
    weights = alpha * torch.exp(-excl)
    # per-ray sums as 1-D index_adds: the CPU kernel for 2-D (M, 3) rows pays an iterator per sample
    weighted_rgb = weights[:, None] * rgb
    out_rgb = torch.stack([rgb.new_zeros(num_rays).index_add(0, ray_index, weighted_rgb[:, j]) for j in range(3)], -1)
    acc = sigma.new_zeros(num_rays).index_add(0, ray_index, weights)
    depth = sigma.new_zeros(num_rays).index_add(0, ray_index, weights * t)
    return {"rgb": out_rgb, "acc": acc, "t": depth, "weights": weights}


def _ray_starts(ray_index: torch.Tensor) -> torch.Tensor:
    """(M,) bool: where each ray's packed samples begin (ray_index sorted)."""
    first = torch.ones_like(ray_index, dtype=torch.bool)
    first[1:] = ray_index[1:] != ray_index[:-1]
    return first


def position_in_ray(ray_index: torch.Tensor) -> torch.Tensor:
    """ray_index (M,) packed and sorted -> (M,) int64: each sample's position along its ray (0, 1, ...)."""
    return torch.arange(ray_index.shape[0], device=ray_index.device) - _first_index_per_sample(_ray_starts(ray_index))


def exclusive_cumsum_per_ray(values: torch.Tensor, ray_index: torch.Tensor) -> torch.Tensor:
    """values, ray_index (M,) packed and sorted by ray -> (M,): the sum of the values of the same
    ray's earlier samples. A global cumsum (float64: it runs over all samples) minus the running
    total where the ray starts; the subtracted total keeps its gradient, so d out_i / d v_j = 1
    exactly for the samples j of the same ray before i."""
    cs = torch.cumsum(values.double(), 0)
    excl_global = cs - values.double()
    start_value = excl_global.gather(0, _first_index_per_sample(_ray_starts(ray_index)))
    return (excl_global - start_value).to(values.dtype)


def transmittance_packed(sigma: torch.Tensor, deltas: torch.Tensor, ray_index: torch.Tensor) -> torch.Tensor:
    """The transmittance in front of each packed sample (no gradient): sigma, deltas, ray_index (M,)
    sorted by ray -> T (M,) = exp(-sum of sigma delta over the ray's earlier samples)."""
    with torch.no_grad():
        return torch.exp(-exclusive_cumsum_per_ray(sigma.detach().float() * deltas, ray_index))


class _GateGradients(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keep, *tensors):
        ctx.save_for_backward(keep)
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        (keep,) = ctx.saved_tensors
        return (None, *(None if g is None else g * keep.view(-1, *([1] * (g.dim() - 1))).to(g.dtype)
                        for g in grads))


def gate_gradients(keep: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors unchanged, but their backward passes zero where ``keep`` (M,) bool is False.

    tensors: (M, ...) per-sample outputs of a field. Used for samples hidden behind opaque ones
    (transmittance below ~1e-4): their gradients are that much smaller than the visible samples',
    and rows of exact zeros let the fused MLP skip them in its backward (nerfacc drops such
    samples altogether, forward included; here the rendered values stay exact)."""
    return _GateGradients.apply(keep, *tensors)


def distortion_loss_packed(weights: torch.Tensor, t: torch.Tensor, deltas: torch.Tensor, ray_index: torch.Tensor,
                           num_rays: int) -> torch.Tensor:
    """mip-NeRF 360's distortion loss per ray (R,) for packed samples: weights, t (interval
    midpoints), deltas (interval lengths), ray_index (M,) sorted by ray.

    ``sum_ij w_i w_j |t_i - t_j| + 1/3 sum_i w_i^2 delta_i``: small when each ray's weight sits in
    one compact interval, so semi-transparent clouds spread along rays (floaters) cost. The double
    sum is computed in O(M) from per-ray exclusive cumulative sums of w and w t (samples sorted by t)."""
    if weights.numel() == 0:
        return weights.new_zeros(num_rays)
    w_before = exclusive_cumsum_per_ray(weights, ray_index)
    wt_before = exclusive_cumsum_per_ray(weights * t, ray_index)
    per_sample = 2.0 * weights * (t * w_before - wt_before) + weights * weights * deltas / 3.0
    return weights.new_zeros(num_rays).index_add(0, ray_index, per_sample)


def _first_index_per_sample(first: torch.Tensor) -> torch.Tensor:
    """For each packed sample, the position of the first sample of its ray. first: (M,) bool."""
    positions = torch.arange(first.shape[0], device=first.device)
    marked = torch.where(first, positions, torch.zeros_like(positions))
    return torch.cummax(marked, 0).values


def add_background(rgb: torch.Tensor, acc: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """Composite rendered colour over a background: rgb (N, 3), acc (N,), background (3,) or (N, 3)."""
    return rgb + (1.0 - acc)[:, None] * background


__all__ = ["ray_aabb", "stratified_samples", "sample_pdf", "composite_dense", "composite_packed", "add_background",
           "exclusive_cumsum_per_ray", "position_in_ray", "distortion_loss_packed", "transmittance_packed",
           "gate_gradients", "BACKGROUND_MODES"]
