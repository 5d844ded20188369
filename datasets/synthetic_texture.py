"""Procedural 3-D textures for the synthetic scenes: colours are a function of the world position
(and a material id), so every view sees the same colour at the same surface point.

The patterns are chosen for feature matching: random colours per cell (corners), dots (blobs) and
multi-scale value noise (texture inside the cells). Everything is seeded; integer hashing keeps it
deterministic on any device.
"""
from __future__ import annotations

import torch

_MASK31 = 0x7FFFFFFF


def hash_ints(ix: torch.Tensor, iy: torch.Tensor, iz: torch.Tensor, seed: int) -> torch.Tensor:
    """Integer lattice coordinates (any shape, int64) -> pseudo-random values in [0, 1) (float32)."""
    h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791) ^ (seed * 2654435761 + 12345)
    h = h & _MASK31
    for mult in (1274126177, 668265263):  # two rounds of xor-shift-multiply mixing
        h = ((h ^ (h >> 13)) * mult) & _MASK31
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).float() / float(1 << 24)


def _cells(points: torch.Tensor, cell_size: float) -> torch.Tensor:
    return torch.floor(points / cell_size).long()


def cell_values(points: torch.Tensor, cell_size: float, seed: int, channels: int = 1) -> torch.Tensor:
    """A random value per cubic cell of side ``cell_size``: points (N, 3) -> (N, channels) in [0, 1)."""
    c = _cells(points, cell_size)
    return torch.stack([hash_ints(c[:, 0], c[:, 1], c[:, 2], seed + 7919 * k) for k in range(channels)], -1)


def value_noise(points: torch.Tensor, cell_size: float, seed: int) -> torch.Tensor:
    """Smooth 3-D value noise (trilinear with smoothstep): points (N, 3) -> (N,) in [0, 1)."""
    x = points / cell_size
    base = torch.floor(x)
    f = x - base
    f = f * f * (3 - 2 * f)
    b = base.long()
    out = torch.zeros_like(points[:, 0])
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1 - f[:, 0]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1 - f[:, 1]
            for dz in (0, 1):
                wz = f[:, 2] if dz else 1 - f[:, 2]
                out = out + wx * wy * wz * hash_ints(b[:, 0] + dx, b[:, 1] + dy, b[:, 2] + dz, seed)
    return out


def fbm(points: torch.Tensor, cell_size: float, seed: int, octaves: int = 3) -> torch.Tensor:
    """Fractal sum of value noise over ``octaves`` halving cell sizes: (N, 3) -> (N,) in [0, 1)."""
    total, weight, norm = torch.zeros_like(points[:, 0]), 1.0, 0.0
    for k in range(octaves):
        total = total + weight * value_noise(points, cell_size / 2 ** k, seed + 101 * k)
        norm += weight
        weight *= 0.5
    return total / norm


def dots(points: torch.Tensor, cell_size: float, radius: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One dot per cell at a random position: (inside (N,) bool, dot colour (N, 3))."""
    c = _cells(points, cell_size)
    offset = torch.stack([hash_ints(c[:, 0], c[:, 1], c[:, 2], seed + 31 * k) for k in range(3)], -1)
    centre = (c.to(points.dtype) + 0.2 + 0.6 * offset) * cell_size
    inside = (points - centre).norm(dim=-1) < radius
    colour = cell_values(points, cell_size, seed + 555, channels=3)
    dark = hash_ints(c[:, 0], c[:, 1], c[:, 2], seed + 999) < 0.5
    colour = torch.where(dark[:, None], 0.05 + 0.25 * colour, 0.7 + 0.3 * colour)
    return inside, colour


# per material: (big cell size, small cell size, dot cell size) in metres; varied so that each
# primitive looks different and the patterns are not aligned between parts
_MATERIAL_SCALES = [(0.22, 0.07, 0.16), (0.18, 0.06, 0.13), (0.25, 0.08, 0.15), (0.15, 0.05, 0.12),
                    (0.20, 0.065, 0.14)]


def albedo(points: torch.Tensor, material: torch.Tensor, seed: int, scale: float = 1.0) -> torch.Tensor:
    """Surface colour in [0.03, 0.97]: points (N, 3), material (N,) int64 -> (N, 3).

    ``scale`` multiplies every pattern size (the room uses larger patterns than the object).
    """
    out = torch.empty(points.shape[0], 3, dtype=points.dtype, device=points.device)
    for m in range(int(material.max()) + 1 if len(material) else 0):
        sel = material == m
        if not bool(sel.any()):
            continue
        p = points[sel]
        big, small, dot = (s * scale for s in _MATERIAL_SCALES[m % len(_MATERIAL_SCALES)])
        ms = seed * 1000 + 97 * m
        # shift each material's lattice so cell borders of touching parts do not line up
        p = p + torch.tensor([0.37, 0.11, 0.53], dtype=p.dtype, device=p.device) * (m + 1) * scale
        # a dominant colour per material, varied per cell: parts stay distinguishable, cells give corners
        material_colour = 0.3 + 0.6 * hash_ints(torch.tensor([m]), torch.tensor([3]), torch.tensor([5]),
                                                 seed + 17 * torch.arange(3)).to(p)
        colour = 0.55 * material_colour + 0.45 * (0.2 + 0.8 * cell_values(p, big, ms, channels=3))
        brightness = 0.7 + 0.3 * fbm(p, small * 2, ms + 1)
        checker = ((_cells(p, small).sum(-1) % 2) == 0).to(p.dtype)
        colour = colour * (brightness * (0.82 + 0.18 * checker))[:, None] * 1.15
        inside, dot_colour = dots(p, dot, 0.3 * dot, ms + 2)
        colour = torch.where(inside[:, None], dot_colour, colour)
        out[sel] = colour
    return out.clamp(0.03, 0.97)
