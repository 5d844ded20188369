"""The ray marcher's candidate loop on the CPU (``occupancy_cpu.cpp``, built and loaded by
:mod:`pipeline.kernels.cpu_kernels`).

:func:`pipeline.models.components.occupancy.march_rays` builds (rays, steps) tensors of every
candidate sample, its point and its cell, then drops the empty ones; the kernel visits the same
candidates in the same order and writes only the kept samples. The caller computes each ray's
first schedule step and step count and draws the jitter, so both versions consume the same random
numbers and keep the same samples.
"""
from __future__ import annotations

import ctypes

import torch

from pipeline.kernels import cpu_kernels
from pipeline.kernels.cpu_kernels import ptr


def supports(rays_o: torch.Tensor, rays_d: torch.Tensor) -> bool:
    """Whether these rays can be marched by the kernel: float32 CPU tensors, and the kernels are built."""
    return (rays_o.device.type == "cpu" and rays_o.dtype == rays_d.dtype == torch.float32
            and cpu_kernels.available())


def march_occupied(occupied: torch.Tensor, aabb: torch.Tensor, resolution: int, schedule: torch.Tensor,
                   rays_o: torch.Tensor, rays_d: torch.Tensor, far: torch.Tensor, first: torch.Tensor,
                   count: torch.Tensor, jitter: torch.Tensor | None, width: int):
    """The kept samples of the candidates, in ray order.

    occupied (C, R^3) bool: the grid's cells per cascade (R = ``resolution``); aabb (2, 3): the base
    box (cascade c is it scaled by 2^c about its centre); schedule (K,) distances; rays_o, rays_d
    (N, 3) float32; far (N,); first, count (N,) int64: each ray's first schedule interval and number
    of candidates; jitter (N, width) in [0, 1) or None (the interval midpoints). Returns ray_index
    (M,) int64, t (M,), delta (M,) (the step length at each sample).
    """
    n = rays_o.shape[0]
    capacity = int(count.sum())
    ray_index = torch.empty(capacity, dtype=torch.long)
    t = torch.empty(capacity)
    delta = torch.empty(capacity)
    center = ((aabb[0] + aabb[1]) / 2).float().contiguous()
    half = ((aabb[1] - aabb[0]) / 2).float().contiguous()
    cells = occupied.contiguous().view(torch.uint8)
    o, d, far_c = rays_o.contiguous(), rays_d.contiguous(), far.float().contiguous()
    first_c, count_c, sched = first.contiguous(), count.contiguous(), schedule.float().contiguous()
    jitter_ptr = None
    if jitter is not None:
        jitter = jitter.contiguous()  # a name holds it: the buffer must outlive the call
        jitter_ptr = ptr(jitter)
    written = cpu_kernels.load().march_occupied_f32(
        ptr(o), ptr(d), ptr(far_c), ptr(first_c), ptr(count_c), jitter_ptr, ctypes.c_int64(n), ctypes.c_int64(width),
        ptr(sched), ctypes.c_int64(sched.numel()), ptr(cells), ctypes.c_int32(resolution),
        ctypes.c_int32(occupied.shape[0]), ptr(center), ptr(half), ptr(ray_index), ptr(t), ptr(delta),
        ctypes.c_int32(torch.get_num_threads()))
    return ray_index[:written], t[:written], delta[:written]


__all__ = ["supports", "march_occupied"]
