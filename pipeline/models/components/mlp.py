"""Fully connected networks for neural fields: ReLU MLPs with skip connections, and SIREN.

SIREN (Sitzmann et al. 2020) uses ``sin(omega_0 * (W x + b))`` activations with its own
initialisation: the first layer ``U(-1/in, 1/in)``, later layers ``U(-sqrt(6/in)/omega_0, ...)``,
so activations stay distributed the same way through depth.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from pipeline.kernels import mlp_cpu

ACTIVATIONS = ("relu", "siren", "softplus")
MLP_BACKENDS = ("auto", "torch", "cpu")


class Sine(nn.Module):
    def __init__(self, omega: float):
        super().__init__()
        self.omega = omega

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega * x)

    def extra_repr(self) -> str:
        return f"omega={self.omega}"


class MLP(nn.Module):
    """x (N, in_dim) -> (N, out_dim) through ``num_hidden`` hidden layers of ``width``.

    skips: indices of hidden layers whose INPUT is concatenated with the network input (the NeRF MLP
    has ``skips=(4,)``: the 5th layer sees ``[h, x]``). activation: relu | softplus | siren (sine
    with ``omega_0 = siren_omega``). The output layer is linear; apply output activations outside.
    backend: ``torch`` (one op per layer) | ``cpu`` (the fused C++ kernel, :mod:`pipeline.kernels.mlp_cpu`:
    all layers in one call, which pays off for narrow MLPs such as the hash field's; ReLU, float32,
    no autocast; otherwise it falls back to torch) | ``auto`` (``cpu`` where it applies).
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 64, num_hidden: int = 2,
                 skips: Sequence[int] = (), activation: str = "relu", siren_omega: float = 30.0,
                 out_bias_init: float = 0.0, backend: str = "auto"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if backend not in MLP_BACKENDS:
            raise ValueError(f"MLP backend must be one of {MLP_BACKENDS}, got {backend!r}")
        self.backend = backend
        self.in_dim, self.out_dim, self.skips, self.activation = in_dim, out_dim, tuple(skips), activation
        self.hidden = nn.ModuleList()
        dim = in_dim
        for i in range(num_hidden):
            layer_in = dim + (in_dim if i in self.skips else 0)
            self.hidden.append(nn.Linear(layer_in, width))
            dim = width
        self.out = nn.Linear(dim, out_dim)
        if activation == "siren":
            self.act = Sine(siren_omega)
            self._siren_init(siren_omega)
        else:
            self.act = nn.ReLU(inplace=True) if activation == "relu" else nn.Softplus(beta=100)
        nn.init.constant_(self.out.bias, out_bias_init)

    @torch.no_grad()
    def _siren_init(self, omega: float) -> None:
        for i, layer in enumerate(self.hidden):
            fan_in = layer.weight.shape[1]
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / omega
            layer.weight.uniform_(-bound, bound)
        fan_in = self.out.weight.shape[1]
        bound = math.sqrt(6.0 / fan_in) / omega
        self.out.weight.uniform_(-bound, bound)

    def _layers(self) -> list[nn.Linear]:
        return [*self.hidden, self.out]

    def runs_fused(self, x: torch.Tensor | Sequence[torch.Tensor]) -> bool:
        """Whether this input goes through the fused CPU kernel."""
        if self.backend == "torch" or self.activation != "relu" or 0 in self.skips:
            return False
        return mlp_cpu.supports(x, [layer.weight for layer in self._layers()])

    def forward(self, x: torch.Tensor | Sequence[torch.Tensor],
                per_ray: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """x (N, in_dim), or parts (N, w_p) side by side (widths summing to in_dim): the fused kernel
        reads them where they lie and gives gradients only to those that require them; the torch
        layers concatenate them.

        per_ray: ``(features (R, k), ray_index (N,))``, the input's first k columns shared by the
        samples of a ray: row i's are ``features[ray_index[i]]`` (x then holds the other
        ``in_dim - k``). The fused kernel multiplies them by the first layer's weights once per ray."""
        if per_ray is not None:
            features, ray_index = per_ray
            k = features.shape[-1]
            layers = self._layers()
            first = layers[0]
            if (not self.skips and first.out_features % 8 == 0 and self.runs_fused(x)
                    and features.device.type == "cpu" and features.dtype == torch.float32):
                term = torch.nn.functional.linear(features, first.weight[:, :k])  # (R, width): once per ray
                return mlp_cpu.fused_relu_mlp(x, [first.weight[:, k:]] + [layer.weight for layer in layers[1:]],
                                              [layer.bias for layer in layers], (), row_term=(term, ray_index))
            x = [features[ray_index], *([x] if isinstance(x, torch.Tensor) else x)]
        if self.runs_fused(x):
            layers = self._layers()
            return mlp_cpu.fused_relu_mlp(x, [layer.weight for layer in layers], [layer.bias for layer in layers],
                                          self.skips)
        if not isinstance(x, torch.Tensor):
            parts = list(x)
            x = torch.cat([p.to(parts[-1].dtype) for p in parts], -1) if len(parts) > 1 else parts[0]
        h = x
        for i, layer in enumerate(self.hidden):
            if i in self.skips:  # x in h's dtype: under autocast h is bfloat16 and a float32 x
                h = torch.cat([h, x.to(h.dtype)], -1)  # would promote the whole concatenation
            h = self.act(layer(h))
        return self.out(h)


__all__ = ["MLP", "Sine", "ACTIVATIONS", "MLP_BACKENDS"]
