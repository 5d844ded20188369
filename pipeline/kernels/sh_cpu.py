"""Spherical harmonics of unit directions on the CPU (``sh_cpu.cpp``, built and loaded by
:mod:`pipeline.kernels.cpu_kernels`): the values of
:class:`pipeline.models.components.encodings.SphericalHarmonics` in one pass over the directions
instead of ~45 tensor ops and a stack. No gradient: the kernel serves directions that are data
(the rays' directions), which training never differentiates.
"""
from __future__ import annotations

import ctypes

import torch

from pipeline.kernels import cpu_kernels


def supports(dirs: torch.Tensor) -> bool:
    """Whether these directions can run on the kernel: a (N, 3) float32 CPU tensor that needs no
    gradient, and the kernels are built."""
    return (dirs.device.type == "cpu" and dirs.dtype == torch.float32 and dirs.dim() == 2 and dirs.shape[1] == 3
            and not (dirs.requires_grad and torch.is_grad_enabled()) and cpu_kernels.available())


def sh_encode(dirs: torch.Tensor, degree: int) -> torch.Tensor:
    """dirs (N, 3) float32, unit length -> (N, degree^2) real spherical harmonics (1 <= degree <= 4);
    call :func:`supports` first."""
    dirs = dirs.detach().contiguous()
    out = torch.empty(dirs.shape[0], degree * degree)
    cpu_kernels.load().sh_encode_f32(cpu_kernels.ptr(dirs), ctypes.c_int64(dirs.shape[0]), ctypes.c_int32(degree),
                                     cpu_kernels.ptr(out), ctypes.c_int32(torch.get_num_threads()))
    return out


__all__ = ["supports", "sh_encode"]
