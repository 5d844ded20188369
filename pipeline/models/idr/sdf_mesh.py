"""Coarse-to-fine sampling of a signed distance field on a grid, for marching cubes.

A dense R^3 grid costs R^3 network evaluations (17 M at R = 256: minutes on a CPU). A signed
distance cannot change sign within |f| / L of a point (L bounds |grad f|), so the grid is built by
doubling the resolution level by level and re-evaluating only the points whose interpolated value
is within ``L * sqrt(3) * spacing`` of zero; elsewhere the trilinear interpolation of the coarser
level (with the right sign) is kept. The zero level set is then exact to the finest evaluation.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.geometry.mesh import sample_grid


def fine_resolution(resolution: int, coarse: int = 64) -> tuple[int, int]:
    """(levels of doubling, final resolution >= ``resolution``) from a coarse grid of ``coarse + 1``."""
    levels, res = 0, coarse + 1
    while res < resolution:
        res, levels = 2 * res - 1, levels + 1
    return levels, res


@torch.no_grad()
def sample_sdf_grid(fn: Callable[[torch.Tensor], torch.Tensor], bounds: np.ndarray, resolution: int,
                    coarse: int = 64, lipschitz: float = 1.5, chunk: int = 65536) -> np.ndarray:
    """SDF values (R, R, R) indexed [x, y, z] over ``bounds`` (2, 3); R is the smallest
    ``coarse * 2^k + 1`` >= ``resolution`` (same layout as :func:`pipeline.geometry.mesh.sample_grid`)."""
    bounds = np.asarray(bounds, dtype=np.float64)
    levels, _ = fine_resolution(resolution, coarse)
    res = min(coarse + 1, resolution) if levels == 0 else coarse + 1
    values = torch.from_numpy(sample_grid(fn, bounds, res, chunk=chunk))
    for _ in range(levels):
        spacing = float(np.max(bounds[1] - bounds[0])) / (res - 1)
        res = 2 * res - 1
        values = F.interpolate(values[None, None], size=(res, res, res), mode="trilinear",
                               align_corners=True)[0, 0]
        flat = values.reshape(-1)
        near = (flat.abs() < lipschitz * math.sqrt(3) * spacing).nonzero().squeeze(1)
        axes = [torch.linspace(float(bounds[0, i]), float(bounds[1, i]), res) for i in range(3)]
        for start in range(0, len(near), chunk):
            idx = near[start:start + chunk]
            ix, iy, iz = idx // (res * res), (idx // res) % res, idx % res
            pts = torch.stack([axes[0][ix], axes[1][iy], axes[2][iz]], -1)
            flat[idx] = fn(pts).reshape(-1).float().cpu()
        values = flat.reshape(res, res, res)
    return values.numpy()


__all__ = ["sample_sdf_grid", "fine_resolution"]
