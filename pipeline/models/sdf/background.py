"""The background of an implicit-surface model: a small NeRF outside the object's sphere (NeRF++,
Zhang et al. 2020), so that sky, walls and floor are explained by it and not by the surface.

A point ``x`` outside the sphere of radius ``r`` is given to the network as the inverted-sphere
coordinates ``(x / |x|, r / |x|)`` (4-d, bounded: infinity maps to ``r / |x| = 0``). Each ray is
sampled from where it leaves the sphere (or from its closest approach when it misses) to
infinity, uniformly in inverse distance ``u = t_start / t`` in (0, 1]; the last sample's interval
reaches infinity, so the background is opaque wherever it has any density and foreground plus
background weights sum to at most 1 (:func:`composite_behind`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.components.batch_rows import Rows, uniform_rows
from pipeline.models.components.encodings import FourierEncoding
from pipeline.models.components.mlp import MLP
from pipeline.models.sdf.rendering import weights_from_alpha

BACKGROUND_MODELS = ("nerf++", "none")
_FAR_U = 1e-3  # samples span u in (0.001, 1]: up to 1000 x the distance where the background begins


@dataclass
class BackgroundConfig:
    model: str = "nerf++"  # nerf++ (inverted-sphere NeRF) | none (a constant colour behind the object)
    samples: int = 16  # samples per ray outside the sphere
    num_freqs: int = 6  # Fourier bands of the 4-d inverted-sphere coordinates
    dir_freqs: int = 4  # Fourier bands of the view direction
    width: int = 64
    layers: int = 2  # hidden layers of the density MLP


def background_samples(t_start: torch.Tensor, num: int, perturb: bool, generator: torch.Generator | None = None,
                       rows: Rows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances t (N, num) from ``t_start`` (N,) towards infinity, uniform in u = t_start / t, and
    the intervals' lengths in u, du (N, num), the last one 1e10 (it reaches infinity). ``rows``:
    the N rays are these rows of a global batch (their jitter is drawn for all of it)."""
    steps = torch.linspace(1.0, _FAR_U, num + 1, device=t_start.device, dtype=t_start.dtype)
    lo, hi = steps[:-1], steps[1:]  # u decreases away from the sphere
    if perturb:
        r = uniform_rows(rows, t_start.shape[0], num, generator, t_start.device, t_start.dtype)
    else:
        r = torch.full((t_start.shape[0], num), 0.5, device=t_start.device, dtype=t_start.dtype)
    u = lo + (hi - lo) * r
    du = torch.cat([u[:, :-1] - u[:, 1:], torch.full_like(u[:, :1], 1e10)], -1)
    return t_start.clamp_min(1e-6)[:, None] / u, du


def inverted_sphere(points: torch.Tensor, radius: float) -> torch.Tensor:
    """points (M, 3) outside the sphere -> (M, 4): the unit direction and ``radius / |x|`` in (0, 1]."""
    norm = points.norm(dim=-1, keepdim=True).clamp_min(radius)
    return torch.cat([points / norm, radius / norm], -1)


class BackgroundField(nn.Module):
    """NeRF outside the sphere: (points (M, 3), dirs (M, 3)) -> sigma (M,) per unit of u, rgb (M, 3)."""

    def __init__(self, config: BackgroundConfig = BackgroundConfig(), radius: float = 1.0):
        super().__init__()
        self.config, self.radius = config, radius
        self.encoding = FourierEncoding(4, config.num_freqs, include_input=True)
        self.dir_encoding = FourierEncoding(3, config.dir_freqs, include_input=True)
        self.density_mlp = MLP(self.encoding.out_dim, 1 + config.width, config.width, config.layers)
        self.color_mlp = MLP(config.width + self.dir_encoding.out_dim, 3, config.width, 1)

    def forward(self, points: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.density_mlp(self.encoding(inverted_sphere(points, self.radius)))
        sigma = torch.nn.functional.softplus(h[:, 0] - 1.0)
        rgb = torch.sigmoid(self.color_mlp(torch.cat([torch.relu(h[:, 1:]), self.dir_encoding(dirs)], -1)))
        return sigma, rgb

    def render(self, rays_o: torch.Tensor, rays_d: torch.Tensor, t_start: torch.Tensor, perturb: bool = False,
               generator: torch.Generator | None = None, rows: Rows | None = None) -> dict[str, torch.Tensor]:
        """rays_o, rays_d (N, 3), t_start (N,) -> rgb (N, 3), acc (N,), weights (N, S), t (N, S).
        ``rows``: as :func:`background_samples`."""
        n, s = rays_o.shape[0], self.config.samples
        t, du = background_samples(t_start, s, perturb, generator, rows)
        points = rays_o[:, None] + rays_d[:, None] * t[..., None]
        sigma, rgb = self(points.reshape(-1, 3), rays_d[:, None].expand(n, s, 3).reshape(-1, 3))
        alpha = 1.0 - torch.exp(-sigma.reshape(n, s) * du)
        weights = weights_from_alpha(alpha)
        return {"rgb": (weights[..., None] * rgb.reshape(n, s, 3)).sum(1), "acc": weights.sum(-1), "weights": weights,
                "t": t}


def composite_behind(fg_rgb: torch.Tensor, fg_acc: torch.Tensor, bg_rgb: torch.Tensor, bg_acc: torch.Tensor,
                     constant: torch.Tensor) -> torch.Tensor:
    """The foreground (N, 3)/(N,) over the background field's colour (N, 3)/(N,) over a constant
    colour (3,): what the foreground lets through (1 - fg_acc) sees the background."""
    behind = bg_rgb + (1.0 - bg_acc)[:, None] * constant
    return fg_rgb + (1.0 - fg_acc)[:, None] * behind


__all__ = ["BACKGROUND_MODELS", "BackgroundConfig", "BackgroundField", "background_samples", "inverted_sphere",
           "composite_behind"]
