"""Radiance fields: points and view directions -> volume density and colour.

- :class:`HashNeRFField` (instant-ngp): hash grid -> small density MLP (one hidden layer of 64)
  giving sigma and a 15-d geometry feature; [SH(dir), feature] -> colour MLP (two layers of 64).
- :class:`FourierNeRFField` (Mildenhall et al.): positional encoding -> 8 x 256 MLP with a skip at
  layer 4 -> sigma and a feature; [feature, encoded dir] -> 128 -> colour.

Both take points in the scene frame and map the scene box ``aabb`` to the encodings' domain. The
MLPs can use SIREN (sine) activations instead of ReLU (``activation="siren"``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.models.components.encodings import FourierEncoding, SphericalHarmonics
from pipeline.models.components.hashgrid import HashGridConfig, HashGridEncoding
from pipeline.models.components.mlp import MLP


_EXP_MIN, _EXP_MAX = math.exp(-15.0), math.exp(15.0)


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient is clamped at x = 15 (instant-ngp's density activation)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.exp(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        # exp(clamp(x, -15, 15)) is exp(x) clamped to [e^-15, e^15]: the saved output, not a second exp
        (y,) = ctx.saved_tensors
        return grad * y.clamp(_EXP_MIN, _EXP_MAX)


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    return _TruncExp.apply(x)


class HashNeRFField(nn.Module):
    """instant-ngp field. aabb: (2, 3) box that the hash grid covers."""

    def __init__(self, aabb: torch.Tensor, grid: HashGridConfig = HashGridConfig(), width: int = 64,
                 density_layers: int = 1, color_layers: int = 2, geo_feat_dim: int = 15, activation: str = "relu",
                 mlp_backend: str = "auto"):
        super().__init__()
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3))
        self.encoding = HashGridEncoding(grid)
        self.dir_encoding = SphericalHarmonics(4)
        self.geo_feat_dim = geo_feat_dim
        self.density_mlp = MLP(self.encoding.out_dim, 1 + geo_feat_dim, width, density_layers, activation=activation,
                               backend=mlp_backend)
        self.color_mlp = MLP(self.dir_encoding.out_dim + geo_feat_dim, 3, width, color_layers, activation=activation,
                             backend=mlp_backend)

    def normalize(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.aabb[0]) / (self.aabb[1] - self.aabb[0])

    def density(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points (N, 3) -> sigma (N,), geometry features (N, geo_feat_dim)."""
        h = self.density_mlp(self.encoding(self.normalize(points)))
        # one split, not an index and a slice: its backward is one concatenation, not two zero-filled
        # (N, 16) gradients added up
        sigma_logit, geo_feat = h.split([1, self.geo_feat_dim], dim=-1)
        return trunc_exp(sigma_logit.squeeze(-1) - 1.0), geo_feat

    def color(self, dirs: torch.Tensor, geo_feat: torch.Tensor, ray_index: torch.Tensor | None = None) -> torch.Tensor:
        """dirs (N, 3) unit, geo_feat (N, F) -> rgb (N, 3) in [0, 1]. With ray_index (N,), dirs are
        per ray, (R, 3): sample i looks along ``dirs[ray_index[i]]``, and the directions are encoded
        (and, on the fused kernel, multiplied by the first layer) once per ray."""
        d = self.dir_encoding(dirs).to(geo_feat.dtype)
        if ray_index is not None:
            return torch.sigmoid(self.color_mlp([geo_feat], per_ray=(d, ray_index)))
        # the MLP takes [d, geo_feat] as two parts: the fused kernel never builds the concatenation
        return torch.sigmoid(self.color_mlp([d, geo_feat]))

    def forward(self, points: torch.Tensor, dirs: torch.Tensor,
                ray_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """points (N, 3), dirs (N, 3), or (R, 3) per ray with ray_index (N,) -> sigma (N,), rgb (N, 3)."""
        sigma, feat = self.density(points)
        return sigma, self.color(dirs, feat, ray_index)


class FourierNeRFField(nn.Module):
    """Classic NeRF MLP on positional encodings (points mapped to [-1, 1]^3 by the aabb)."""

    def __init__(self, aabb: torch.Tensor, pos_freqs: int = 10, dir_freqs: int = 4, width: int = 256,
                 depth: int = 8, skips=(4,), activation: str = "relu", siren_omega: float = 30.0,
                 mlp_backend: str = "auto"):
        super().__init__()
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3))
        siren = activation == "siren"
        # SIREN represents high frequencies itself: it takes the raw coordinates
        self.pos_encoding = FourierEncoding(3, 0 if siren else pos_freqs)
        self.dir_encoding = FourierEncoding(3, dir_freqs)
        self.trunk = MLP(self.pos_encoding.out_dim, width + 1, width, depth, skips=skips, activation=activation,
                         siren_omega=siren_omega, backend=mlp_backend)
        self.color_mlp = MLP(width + self.dir_encoding.out_dim, 3, width // 2, 1, activation="relu", backend=mlp_backend)

    def normalize(self, points: torch.Tensor) -> torch.Tensor:
        return (points - self.aabb[0]) / (self.aabb[1] - self.aabb[0]) * 2.0 - 1.0

    def density(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(self.pos_encoding(self.normalize(points)))
        sigma, feat = h.split([1, h.shape[-1] - 1], dim=-1)  # as HashNeRFField.density: one split
        return torch.relu(sigma.squeeze(-1)), feat

    def color(self, dirs: torch.Tensor, feat: torch.Tensor, ray_index: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`HashNeRFField.color`; per-ray directions are encoded once per ray and the
        encodings gathered (the direction is a small part of this field's colour MLP)."""
        d = self.dir_encoding(dirs).to(feat.dtype)
        # two parts, as HashNeRFField.color: the fused kernel never builds the concatenation
        return torch.sigmoid(self.color_mlp([feat, d if ray_index is None else d[ray_index]]))

    def forward(self, points: torch.Tensor, dirs: torch.Tensor,
                ray_index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`HashNeRFField.forward`."""
        sigma, feat = self.density(points)
        return sigma, self.color(dirs, feat, ray_index)


__all__ = ["HashNeRFField", "FourierNeRFField", "trunc_exp"]
