"""The IDR geometry network f(x; theta): a signed distance and a global feature vector z.

Two input encodings (shared with the NeRF fields, see :mod:`pipeline.models.components.encodings` and
:mod:`pipeline.models.components.hashgrid`):

- ``fourier``: the IDR/DeepSDF MLP on NeRF positional encoding (8 linear layers, a skip
  connection feeding the input back at the middle layer, softplus(beta=100), weight norm);
- ``hashgrid``: a multiresolution hash grid feeding a small MLP (much faster on a CPU).

Both use the *geometric initialisation* of Atzmon & Lipman (SAL, 2020): at initialisation the
network is close to the signed distance of a sphere of radius ``init_radius`` (negative inside),
with all encoded (high-frequency) inputs weighted zero so training starts from a smooth shape.
``inside_out`` flips it (``r - |x|``) for scenes seen from inside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.models.components.encodings import FourierEncoding
from pipeline.models.components.hashgrid import HashGridConfig, HashGridEncoding, coarse_to_fine_weights, weight_levels

ENCODINGS = ("fourier", "hashgrid")
GRADIENTS = ("analytic", "numerical")
_FOURIER_EPS = 1e-3


@dataclass
class SDFNetworkConfig:
    encoding: str = "fourier"  # fourier (IDR paper) | hashgrid (fast)
    num_freqs: int = 6  # Fourier bands of the position (IDR: 6)
    hidden_dim: int = 256  # width of the hidden layers (IDR: 512)
    num_layers: int = 8  # linear layers including the output layer (IDR: 8 hidden + output)
    skip_layers: list[int] = field(default_factory=lambda: [4])  # layers whose input gets x again
    feature_dim: int = 256  # size of the global feature z passed to the renderer (IDR: 256)
    init_radius: float = 0.6  # sphere of the geometric initialisation (IDR: 0.6)
    # start as r - |x| instead (Neuralangelo's inside_outside): the cameras stand inside the sphere
    # (a street, a room), free space is inside and the surfaces they see lie around them
    inside_out: bool = False
    softplus_beta: float = 100.0
    weight_norm: bool = True
    # hash grid (encoding=hashgrid); the grid covers the cube [-bound, bound]^3
    hash_levels: int = 12
    hash_features_per_level: int = 2
    hash_log2_size: int = 15
    hash_base_resolution: int = 16
    hash_max_resolution: int = 512
    # the eikonal loss and the renderer's normals need second derivatives through the grid: the
    # reference ("torch") and autograd ("naive") backends give them (and "cpu", through the
    # reference's differentiable path, so no faster here); triton and tcnn do not
    hash_backend: str = "torch"
    bound: float = 1.0
    # grad_x f by "analytic" differentiation (IDR) or "numerical" central differences (Neuralangelo,
    # Li et al. 2023): a difference over a grid cell couples neighbouring cells of a hash grid and
    # needs no second derivatives; off by default: on lego-200 it scored below "analytic" with no
    # smoother normals (bench/RESULTS.md)
    gradient: str = "analytic"
    # step of the central differences; 0 = the cell size of the finest grid level in use (hash grid,
    # shrinking as coarse_to_fine brings finer levels in) or 1e-3 (Fourier)
    numerical_eps: float = 0.0
    # the geometry grid's levels fade in, coarsest first, over this share of training (Neuralangelo)
    coarse_to_fine: float = 0.0


def _build_hashgrid(config: SDFNetworkConfig) -> nn.Module:
    return HashGridEncoding(HashGridConfig(levels=config.hash_levels,
                                           features_per_level=config.hash_features_per_level,
                                           log2_table_size=config.hash_log2_size,
                                           base_resolution=config.hash_base_resolution,
                                           finest_resolution=config.hash_max_resolution,
                                           backend=config.hash_backend))


class SDFNetwork(nn.Module):
    """f(x) -> (sdf, z).

    forward: points (N, 3) -> sdf (N,), feature (N, feature_dim).
    """

    def __init__(self, config: SDFNetworkConfig = SDFNetworkConfig()):
        super().__init__()
        if config.encoding not in ENCODINGS:
            raise ValueError(f"unknown SDF encoding {config.encoding!r}; choose one of {ENCODINGS}")
        if config.gradient not in GRADIENTS:
            raise ValueError(f"unknown sdf.gradient {config.gradient!r}; choose one of {GRADIENTS}")
        self.progress = 1.0  # training progress (coarse-to-fine); not saved: a loaded model uses every level
        self.config = config
        if config.encoding == "fourier":
            self.encoding = FourierEncoding(3, config.num_freqs, include_input=True)
            in_dim = self.encoding.out_dim
        else:
            self.encoding = _build_hashgrid(config)
            in_dim = 3 + self.encoding.out_dim
        self.in_dim = in_dim
        self.skip_layers = set(config.skip_layers)
        hidden = [config.hidden_dim] * (config.num_layers - 1) + [1 + config.feature_dim]
        layers = []
        layer_in = in_dim
        for i in range(config.num_layers):
            out_dim = hidden[i]
            next_in = out_dim
            if (i + 1) in self.skip_layers:
                # IDR keeps the width: this layer gives width - in_dim and the input is appended;
                # narrow networks (width <= in_dim) append the input on top of the full width
                if out_dim > in_dim:
                    out_dim -= in_dim
                else:
                    next_in = out_dim + in_dim
            layer = nn.Linear(layer_in, out_dim)
            self._geometric_init(layer, i, layer_in, out_dim)
            if config.weight_norm:
                layer = nn.utils.parametrizations.weight_norm(layer)
            layers.append(layer)
            layer_in = next_in
        self.layers = nn.ModuleList(layers)
        self.activation = nn.Softplus(beta=config.softplus_beta)
        self._calibrate_init()

    @torch.no_grad()
    def _calibrate_init(self, count: int = 4096) -> None:
        """Remove the constant offset of the geometric init. Softplus adds up to log(2)/beta per
        hidden unit, which shifts the SAL sphere inwards by ~0.1-0.2 at width 256; one fixed set of
        points in the ball measures the offset and the output bias absorbs it."""
        generator = torch.Generator().manual_seed(0)
        dirs = torch.randn(count, 3, generator=generator)
        radius = 2 * self.config.init_radius * torch.rand(count, 1, generator=generator).clamp_min(0.1)
        points = dirs / dirs.norm(dim=-1, keepdim=True) * radius
        last = self.layers[-1]
        points = points.to(last.bias.dtype)
        sign = -1.0 if self.config.inside_out else 1.0
        offset = (self.sdf(points) - sign * (points.norm(dim=-1) - self.config.init_radius)).mean()
        last.bias[0] -= offset

    def _geometric_init(self, layer: nn.Linear, index: int, in_dim: int, out_dim: int) -> None:
        """SAL initialisation: the output approximates |x| - r (IDR's implicit network init), or
        r - |x| with ``inside_out``."""
        extra = self.in_dim - 3  # encoded inputs beyond x itself, zero-weighted at the start
        sign = -1.0 if self.config.inside_out else 1.0
        with torch.no_grad():
            if index == self.config.num_layers - 1:
                nn.init.normal_(layer.weight, mean=sign * math.sqrt(math.pi) / math.sqrt(in_dim), std=1e-4)
                nn.init.constant_(layer.bias, -sign * self.config.init_radius)
                return
            nn.init.constant_(layer.bias, 0.0)
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2) / math.sqrt(out_dim))
            if index == 0 and extra > 0:
                layer.weight[:, 3:] = 0.0
            elif index in self.skip_layers and extra > 0:
                layer.weight[:, -extra:] = 0.0

    def encode(self, points: torch.Tensor) -> torch.Tensor:
        if self.config.encoding == "fourier":
            return self.encoding(points)
        unit = (points / self.config.bound + 1.0) * 0.5  # the grid takes [0, 1]^3
        features = weight_levels(self.encoding(unit.clamp(0.0, 1.0)), self.level_weights(), self.config.hash_levels)
        return torch.cat([points, features], -1)

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (coarse-to-fine levels and the numerical step); 1 = inference."""
        self.progress = float(progress)

    def level_weights(self) -> torch.Tensor | None:
        """(levels,) weights of the geometry grid's levels now; None = all on (or no grid)."""
        if self.config.encoding != "hashgrid":
            return None
        return coarse_to_fine_weights(self.config.hash_levels, self.progress, self.config.coarse_to_fine)

    def numerical_step(self) -> float:
        """Step of the central differences, in the units of x: ``numerical_eps`` when set, else the
        cell of the finest grid level in use (levels partly faded in count by their weight)."""
        c = self.config
        if c.numerical_eps > 0:
            return c.numerical_eps
        if c.encoding != "hashgrid":
            return _FOURIER_EPS
        weights = self.level_weights()
        finest = (c.hash_levels - 1) if weights is None else max(0.0, float(weights.sum()) - 1.0)
        scales = self.encoding.scale  # cells per unit of each level (the grid's own layout)
        growth = float(scales[1] / scales[0]) if len(scales) > 1 else 1.0
        return 2.0 * c.bound / (float(scales[0]) * growth ** finest)

    def forward(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mlp(self.encode(points))

    def _mlp(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoded points (N, in_dim) -> sdf (N,), feature (N, feature_dim)."""
        x = inputs
        for i, layer in enumerate(self.layers):
            if i in self.skip_layers:
                x = torch.cat([x, inputs], -1) / math.sqrt(2)
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x[:, 0], x[:, 1:]

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        """points (N, 3) -> sdf (N,)."""
        return self.forward(points)[0]

    def sdf_and_gradient(self, points: torch.Tensor, create_graph: bool = False, keep_values_graph: bool = False):
        """sdf (N,), feature (N, F) and grad_x f (N, 3); ``create_graph`` keeps the gradient
        differentiable (needed when a loss depends on it: eikonal, normals in the renderer).
        ``keep_values_graph``: the gradient is a constant (first derivatives only, which the C++
        hash-grid kernels compute) but sdf and feature stay differentiable to the parameters."""
        if self.config.gradient == "numerical":
            return self._numerical_sdf_and_gradient(points, create_graph)
        if keep_values_graph and not create_graph and self.config.encoding == "hashgrid":
            return self._values_and_constant_gradient(points)
        with torch.enable_grad():
            x = points if points.requires_grad else points.detach().requires_grad_(True)
            sdf, feature = self.forward(x)
            (grad,) = torch.autograd.grad(sdf.sum(), x, create_graph=create_graph,
                                          retain_graph=create_graph or keep_values_graph)
        return sdf, feature, grad

    def _values_and_constant_gradient(self, points: torch.Tensor):
        """sdf (N,) and feature (N, F) differentiable to the parameters, grad_x f (N, 3) a constant,
        by the chain rule by hand: autograd through the MLP down to the grid's features, then the
        grid's input gradient alone (one C++ kernel call on a CPU). Plain autograd would also
        compute a table gradient here and an input gradient in the loss's backward, both unused."""
        c = self.config
        with torch.enable_grad():
            x = points.detach().requires_grad_(True)  # the MLP's direct input (IDR concatenates x)
            unit = (x.detach() / c.bound + 1.0) * 0.5
            weights = self.level_weights()
            features = weight_levels(self.encoding(unit.clamp(0.0, 1.0)), weights, c.hash_levels)
            sdf, feature = self._mlp(torch.cat([x, features], -1))
            grad_direct, grad_features = torch.autograd.grad(sdf.sum(), [x, features], retain_graph=True)
        inside = ((unit >= 0.0) & (unit <= 1.0)).to(unit.dtype)  # the clamp passes no gradient outside
        grad_grid = self.encoding.input_gradient(unit, weight_levels(grad_features, weights, c.hash_levels))
        grad = grad_direct + grad_grid.to(grad_direct.dtype) * inside * (0.5 / c.bound)
        return sdf, feature, grad.detach()

    def _stencil(self, points: torch.Tensor) -> torch.Tensor:
        """(6N, 3): points (N, 3) moved by +/- the numerical step along x, y, z (+x, +y, +z, -x, -y, -z)."""
        axes = torch.eye(3, dtype=points.dtype, device=points.device) * self.numerical_step()
        return (points[None] + torch.cat([axes, -axes])[:, None]).reshape(-1, 3)

    def _central_differences(self, shifted_sdf: torch.Tensor) -> torch.Tensor:
        """f at :meth:`_stencil`'s points (6N,) -> grad_x f (N, 3)."""
        shifted = shifted_sdf.reshape(6, -1)
        return ((shifted[:3] - shifted[3:]) / (2.0 * self.numerical_step())).T

    def numerical_gradient(self, points: torch.Tensor) -> torch.Tensor:
        """grad_x f (N, 3) by central differences (6N field values), differentiable to the
        parameters with first derivatives only: an eikonal loss on it needs no second derivatives
        (Neuralangelo, Li et al. 2023), and on a CPU it runs on the C++ kernels."""
        with torch.enable_grad():
            return self._central_differences(self.sdf(self._stencil(points.detach())))

    def _numerical_sdf_and_gradient(self, points: torch.Tensor, create_graph: bool):
        """Central differences along the axes, one batched forward of 7N points. The result is
        differentiable to the parameters (and to ``points``) with first derivatives only."""
        n = points.shape[0]
        with torch.set_grad_enabled(create_graph or torch.is_grad_enabled()):
            sdf_all, feature_all = self.forward(torch.cat([points, self._stencil(points)]))
            grad = self._central_differences(sdf_all[n:])
        if not create_graph:
            grad = grad.detach()
        return sdf_all[:n], feature_all[:n], grad


__all__ = ["SDFNetworkConfig", "SDFNetwork", "ENCODINGS", "GRADIENTS"]
