"""The IDR model (Yariv et al. 2020): geometry f(x; theta), the sample network that makes the
traced surface point differentiable, and the neural renderer M(x, n, v, z).

:class:`IDRModel` is a :class:`pipeline.models.render.SDFModel`: ``render_rays`` traces rays to the zero
level set and shades hits with the renderer (misses get the background colour, ``acc`` = 0), and
``query_sdf`` / ``query_color`` serve meshing and exports.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.models.components.encodings import FourierEncoding
from pipeline.models.components.hashgrid import HashGridConfig, HashGridEncoding, coarse_to_fine_weights, weight_levels
from pipeline.models.idr.sdf_network import SDFNetwork, SDFNetworkConfig
from pipeline.models.idr.sphere_tracing import SurfaceHits, TracingConfig, trace_surface


@dataclass
class RendererConfig:
    hidden_dim: int = 256  # IDR: 512
    num_layers: int = 4  # linear layers including the output layer (IDR: 5)
    view_freqs: int = 4  # Fourier bands of the view direction (IDR: 4)
    weight_norm: bool = True
    # position input: "none" = x itself (IDR), "hashgrid" = x plus a hash-grid encoding of x (an
    # appearance grid, separate from the geometry), so fine texture need not be carved into the SDF
    position_encoding: str = "none"
    hash_levels: int = 12
    hash_features_per_level: int = 2
    hash_log2_size: int = 17
    hash_base_resolution: int = 16
    hash_max_resolution: int = 512
    bound: float = 1.0  # the appearance grid covers [-bound, bound]^3
    # coarse-to-fine (BARF, Lin et al. 2021): the appearance grid's levels fade in, coarsest first,
    # over this fraction of training (0 = all levels from the start); meant for trainable cameras
    coarse_to_fine: float = 0.0


# the least |n0 . v| the sample network divides by (n0 ~ unit by the eikonal term: 0.1 = 84 deg from
# the normal). A grazing ray's point slides 1/|n0 . v| along the ray per unit of f: one ray at
# |n0 . v| = 5e-4 gave a gradient 100x the usual, and Adam turned it into a jump of the whole surface
# (hits in the masks 0.98 -> 0.69, 1-3 dB lost; bench/RESULTS.md). Bounded, its gradient is at most
# 10x a frontal ray's.
MIN_INCIDENCE = 0.1


def sample_network(x0: torch.Tensor, rays_d: torch.Tensor, sdf_theta: torch.Tensor, grad_x0: torch.Tensor) -> torch.Tensor:
    """The differentiable surface point of IDR (eq. 3): x(theta) = x0 - v / (n0 . v) * f(x0; theta).

    x0: (N, 3) the traced point (its t is detached; it may still depend on trainable cameras through
    the ray); rays_d: (N, 3) v; sdf_theta: (N,) f(x0; theta) with gradients; grad_x0: (N, 3) the
    SDF gradient at x0 (detached inside). At the current parameters the value equals x0 (the value
    of f is subtracted back out), only the gradients change. |n0 . v| is bounded below by
    ``MIN_INCIDENCE`` (its sign kept; 0 counts as a ray entering the surface, n0 . v < 0).
    """
    n0 = grad_x0.detach()
    dot = (n0 * rays_d).sum(-1, keepdim=True)
    dot = torch.where(dot > 0, dot.clamp_min(MIN_INCIDENCE), dot.clamp_max(-MIN_INCIDENCE))
    return x0 - rays_d / dot * (sdf_theta - sdf_theta.detach()).unsqueeze(-1)


POSITION_ENCODINGS = ("none", "hashgrid")


class NeuralRenderer(nn.Module):
    """M(x, n, v, z) -> rgb in [0, 1] (IDR's rendering network, mode "idr").

    points, normals, view_dirs: (N, 3); feature: (N, F) -> (N, 3).
    """

    def __init__(self, feature_dim: int, config: RendererConfig = RendererConfig()):
        super().__init__()
        if config.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"renderer.position_encoding must be one of {POSITION_ENCODINGS}, "
                             f"got {config.position_encoding!r}")
        self.config = config
        self.view_encoding = FourierEncoding(3, config.view_freqs, include_input=True)
        self.encoding = None
        position_dim = 3
        if config.position_encoding == "hashgrid":
            self.encoding = HashGridEncoding(HashGridConfig(
                levels=config.hash_levels, features_per_level=config.hash_features_per_level,
                log2_table_size=config.hash_log2_size, base_resolution=config.hash_base_resolution,
                finest_resolution=config.hash_max_resolution, backend="auto"))
            position_dim += self.encoding.out_dim
        dims = [position_dim + 3 + self.view_encoding.out_dim + feature_dim] + [config.hidden_dim] * (config.num_layers - 1) + [3]
        layers = []
        for i in range(config.num_layers):
            layer = nn.Linear(dims[i], dims[i + 1])
            if config.weight_norm:
                layer = nn.utils.parametrizations.weight_norm(layer)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.progress = 1.0  # not a buffer: a loaded model renders with every level

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (the coarse-to-fine schedule); 1 = every level (inference)."""
        self.progress = float(progress)

    def level_weights(self) -> torch.Tensor | None:
        """(levels,) BARF weights of the appearance grid's levels at the current progress."""
        if self.encoding is None:
            return None
        return coarse_to_fine_weights(self.config.hash_levels, self.progress, self.config.coarse_to_fine)

    def encode_points(self, points: torch.Tensor) -> torch.Tensor:
        if self.encoding is None:
            return points
        unit = ((points / self.config.bound + 1.0) * 0.5).clamp(0.0, 1.0)
        features = weight_levels(self.encoding(unit), self.level_weights(), self.config.hash_levels)
        return torch.cat([points, features], -1)

    def forward(self, points, normals, view_dirs, feature):
        x = torch.cat([self.encode_points(points), normals, self.view_encoding(view_dirs), feature], -1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return torch.sigmoid(x)


class IDRModel(nn.Module):
    """Geometry + renderer + tracing settings; renders in the normalised scene frame."""

    def __init__(self, sdf: SDFNetworkConfig = SDFNetworkConfig(), renderer: RendererConfig = RendererConfig(),
                 tracing: TracingConfig = TracingConfig(), background=(1.0, 1.0, 1.0)):
        super().__init__()
        self.sdf_network = SDFNetwork(sdf)
        self.renderer = NeuralRenderer(sdf.feature_dim, renderer)
        self.tracing = tracing
        self.register_buffer("background", torch.as_tensor(background, dtype=torch.float32).reshape(3))

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] for the coarse-to-fine schedules; 1 = inference."""
        self.sdf_network.set_progress(progress)
        self.renderer.set_progress(progress)

    # --- the pieces of one training step -------------------------------------------------

    def trace(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> SurfaceHits:
        """Ray-surface intersection, no gradients. rays_o, rays_d: (N, 3)."""
        return trace_surface(self.sdf_network.sdf, rays_o.detach(), rays_d.detach(), self.tracing)

    def shade_surface(self, rays_o: torch.Tensor, rays_d: torch.Tensor, t: torch.Tensor):
        """Colour of traced surface points with gradients to geometry, renderer and rays.

        rays_o, rays_d: (M, 3) (may require grad: trainable cameras); t: (M,) detached distances.
        Returns rgb (M, 3), grad (M, 3) = grad_x f (differentiable, for the eikonal loss) and the
        differentiable surface points (M, 3).
        """
        x0 = rays_o + t.detach().unsqueeze(-1) * rays_d
        # one SDF evaluation per point: value, feature and gradient at x0 (IDR evaluates the
        # network again at x(theta); at the current parameters x(theta) = x0, and gradients
        # through x reach the renderer's position input either way)
        sdf, feature, grad = self.sdf_network.sdf_and_gradient(x0, create_graph=True)
        points = sample_network(x0, rays_d, sdf, grad)
        rgb = self.renderer(points, grad, -rays_d, feature)
        return rgb, grad, points

    # --- RenderableModel / SDFModel --------------------------------------------------------

    def query_sdf(self, points: torch.Tensor) -> torch.Tensor:
        """points: (N, 3) -> sdf (N,)."""
        with torch.no_grad():
            return self.sdf_network.sdf(points)

    def query_color(self, points: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
        """points, dirs: (N, 3) (dirs = viewing ray directions, camera -> point) -> rgb (N, 3)."""
        _, feature, grad = self.sdf_network.sdf_and_gradient(points.detach(), create_graph=False)
        with torch.no_grad():
            dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return self.renderer(points, grad, -dirs, feature)

    def render_rays(self, rays_o: torch.Tensor, rays_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """rays_o, rays_d: (N, 3) unit rays -> rgb (N, 3), t (N,), acc (N,) 1 on hit / 0 on miss,
        normal (N, 3) unit world-space normals (zero on misses)."""
        hits = self.trace(rays_o, rays_d)
        n = rays_o.shape[0]
        rgb = self.background.to(rays_o.dtype).expand(n, 3).clone()
        normal = torch.zeros_like(rays_o)
        idx = hits.hit.nonzero().squeeze(1)
        if len(idx) > 0:
            points = rays_o[idx] + hits.t[idx, None] * rays_d[idx]
            _, feature, grad = self.sdf_network.sdf_and_gradient(points.detach(), create_graph=False)
            with torch.no_grad():
                rgb[idx] = self.renderer(points, grad, -rays_d[idx], feature)
                normal[idx] = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        t = torch.where(hits.hit, hits.t, hits.far)
        return {"rgb": rgb, "t": t, "acc": hits.hit.to(rays_o.dtype), "normal": normal}


def uniform_ball_points(count: int, radius: float, generator=None, device="cpu") -> torch.Tensor:
    """``count`` points uniform in the ball of ``radius``: (count, 3) on ``device``, drawn on the
    generator's device (a CPU generator gives the same points for every device)."""
    source = generator.device if generator is not None else device
    dirs = torch.randn(count, 3, generator=generator, device=source)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r = radius * torch.rand(count, 1, generator=generator, device=source) ** (1.0 / 3.0)
    return (dirs * r).to(device)


__all__ = ["RendererConfig", "NeuralRenderer", "IDRModel", "sample_network", "uniform_ball_points"]
