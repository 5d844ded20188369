"""Empty-space skipping for a signed-distance field: a grid of the cells the surface may cross.

A cell is kept when ``|f(centre)| <= margin x half its diagonal``: with the eikonal loss keeping
``|grad f|`` near 1, the zero level set cannot enter a cell whose centre is farther from it than
half the diagonal (``margin`` > 1 allows for ``|grad f|`` < 1 and for the surface moving between
updates). Each ray's samples then span only its kept cells (:meth:`SurfaceGrid.ray_span`), so
the same number of samples lands closer to the surface (NeuS2 and instant-nsr march an
occupancy grid the same way). The grid is recomputed from the field every few training steps and
is not saved with the model: a loaded model starts with every cell kept (the full span, the same
image, only slower) until :meth:`SurfaceGrid.update` runs.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


class SurfaceGrid(nn.Module):
    """R^3 cells over the cube [-radius, radius]^3."""

    def __init__(self, radius: float, resolution: int = 32, margin: float = 2.0):
        super().__init__()
        self.radius, self.resolution, self.margin = float(radius), int(resolution), float(margin)
        self.register_buffer("kept", torch.ones(resolution ** 3, dtype=torch.bool), persistent=False)
        # cells wholly inside the solid (f(centre) < -reach): a ray that reaches one has met the surface
        self.register_buffer("solid", torch.zeros(resolution ** 3, dtype=torch.bool), persistent=False)
        self.updated = False  # False until update(): every cell kept

    @property
    def cell_size(self) -> float:
        return 2.0 * self.radius / self.resolution

    def centres(self) -> torch.Tensor:
        """(R^3, 3) cell centres in the order of ``kept``."""
        R = self.resolution
        axis = (torch.arange(R, device=self.kept.device, dtype=torch.float32) + 0.5) * self.cell_size - self.radius
        return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)

    @torch.no_grad()
    def update(self, sdf_fn: Callable[[torch.Tensor], torch.Tensor], chunk: int = 65536) -> None:
        """Keep the cells whose centre's |f| is within ``margin`` half-diagonals; sdf_fn: (M, 3) -> (M,)."""
        centres = self.centres()
        values = torch.cat([sdf_fn(centres[i:i + chunk]) for i in range(0, len(centres), chunk)])
        reach = self.margin * 0.5 * math.sqrt(3.0) * self.cell_size
        self.kept.copy_(values.abs() <= reach)
        self.solid.copy_(values < -reach)
        self.updated = True

    def kept_fraction(self) -> float:
        return float(self.kept.float().mean())

    def _cells(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (..., 3) -> flat cell index (...), inside the cube (...)."""
        R = self.resolution
        cell = torch.floor((points + self.radius) / self.cell_size).long()
        inside = ((cell >= 0) & (cell < R)).all(-1)
        cell = cell.clamp(0, R - 1)
        return (cell[..., 0] * R + cell[..., 1]) * R + cell[..., 2], inside

    def is_kept(self, points: torch.Tensor) -> torch.Tensor:
        """points (..., 3) -> bool (...): inside the cube and in a kept cell."""
        flat, inside = self._cells(points)
        return self.kept[flat] & inside

    @torch.no_grad()
    def ray_span(self, rays_o: torch.Tensor, rays_d: torch.Tensor, near: torch.Tensor, far: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """rays_o, rays_d (N, 3), near, far (N,) -> the part of [near, far] from the first kept cell
        to the last one, or to the first solid cell (the ray is inside the object: nothing behind
        is seen), widened by a cell each side and clipped to [near, far]: near, far (N,), and any
        (N,) bool (False: no kept cell on the ray; the foreground is empty there)."""
        if not self.updated:
            return near, far, torch.ones_like(near, dtype=torch.bool)
        # probes at half a cell apart cannot step over a cell's whole chord... except near its
        # corners, which the margin covers
        steps = int(math.ceil(2.0 * 2.0 * self.radius / self.cell_size)) + 1
        frac = torch.linspace(0.0, 1.0, steps, device=near.device)
        t = near[:, None] + (far - near)[:, None] * frac  # (N, K)
        flat, inside = self._cells(rays_o[:, None] + rays_d[:, None] * t[..., None])
        kept, solid = self.kept[flat] & inside, self.solid[flat] & inside
        any_kept = kept.any(-1)
        big = torch.full_like(t, float("inf"))
        first = torch.where(kept, t, big).amin(-1)
        last = torch.where(kept, t, -big).amax(-1).minimum(torch.where(solid, t, big).amin(-1))
        pad = self.cell_size
        new_near = torch.where(any_kept, (first - pad).maximum(near), near)
        new_far = torch.where(any_kept, (last + pad).minimum(far), far)
        return new_near, new_far, any_kept


__all__ = ["SurfaceGrid"]
