"""Input encodings for neural fields: Fourier features and spherical harmonics.

- :class:`FourierEncoding`: the NeRF positional encoding, ``[x, sin(2^k x), cos(2^k x)]`` for
  ``k = 0 .. num_freqs - 1`` (Mildenhall et al. 2020).
- :class:`GaussianFourierEncoding`: random Fourier features ``[sin(2 pi x B), cos(2 pi x B)]`` with
  ``B ~ N(0, sigma^2)`` (Tancik et al. 2020); ``sigma`` sets the bandwidth.
- :class:`SphericalHarmonics`: real spherical harmonics of unit directions up to degree 4 (16
  coefficients), the view-direction encoding of instant-ngp.

The multiresolution hash grid lives in :mod:`pipeline.models.components.hashgrid`. Every encoding has ``out_dim``
and maps ``(N, in_dim) -> (N, out_dim)``; all are differentiable with respect to their input.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.kernels import sh_cpu


class FourierEncoding(nn.Module):
    """NeRF positional encoding.

    in_dim: input dimensions; num_freqs: L frequency bands; include_input: prepend x itself;
    log_sampling: frequencies ``2^0 .. 2^(L-1)`` (else linearly spaced between them).
    forward: x (N, in_dim) -> (N, out_dim) with ``out_dim = in_dim * (include_input + 2 L)``,
    laid out as ``[x, sin(f0 x), cos(f0 x), sin(f1 x), ...]``.
    """

    def __init__(self, in_dim: int = 3, num_freqs: int = 6, include_input: bool = True, log_sampling: bool = True):
        super().__init__()
        self.in_dim, self.num_freqs, self.include_input = in_dim, num_freqs, include_input
        if num_freqs > 0:
            if log_sampling:
                freqs = 2.0 ** torch.arange(num_freqs, dtype=torch.float32)
            else:
                freqs = torch.linspace(1.0, 2.0 ** (num_freqs - 1), num_freqs)
        else:
            freqs = torch.zeros(0)
        self.register_buffer("freqs", freqs, persistent=False)
        self.out_dim = in_dim * (int(include_input) + 2 * num_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 1, D) * (L, 1) -> (N, L, D): one broadcast product for all bands
        scaled = x[..., None, :] * self.freqs.to(x.dtype)[:, None]
        parts = torch.stack([torch.sin(scaled), torch.cos(scaled)], -2)  # (N, L, 2, D)
        encoded = parts.reshape(*x.shape[:-1], -1)
        return torch.cat([x, encoded], -1) if self.include_input else encoded

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_freqs={self.num_freqs}, out_dim={self.out_dim}"


class GaussianFourierEncoding(nn.Module):
    """Random Fourier features (Tancik et al.): ``[sin(2 pi x B), cos(2 pi x B)]``.

    B: (in_dim, num_features) drawn once from ``N(0, sigma^2)`` with a fixed ``seed`` and stored in
    the state dict (so a saved model reloads the same features). forward: (N, in_dim) ->
    (N, 2 * num_features [+ in_dim when include_input]).
    """

    def __init__(self, in_dim: int = 3, num_features: int = 128, sigma: float = 10.0, seed: int = 0,
                 include_input: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("B", torch.randn(in_dim, num_features, generator=generator) * sigma)
        self.in_dim, self.num_features, self.sigma, self.include_input = in_dim, num_features, sigma, include_input
        self.out_dim = 2 * num_features + (in_dim if include_input else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        proj = (2.0 * math.pi) * (x @ self.B.to(x.dtype))
        encoded = torch.cat([torch.sin(proj), torch.cos(proj)], -1)
        return torch.cat([x, encoded], -1) if self.include_input else encoded

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, num_features={self.num_features}, sigma={self.sigma}"


# Real spherical harmonics constants (the same basis as instant-ngp / tiny-cuda-nn).
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
       1.445305721320277, -0.5900435899266435)


class SphericalHarmonics(nn.Module):
    """Real spherical harmonics of unit directions: degree d gives d^2 coefficients (1 <= d <= 4).

    forward: dirs (N, 3), unit length -> (N, degree^2).
    """

    def __init__(self, degree: int = 4):
        super().__init__()
        if not 1 <= degree <= 4:
            raise ValueError(f"SphericalHarmonics supports degree 1..4, got {degree}")
        self.degree = degree
        self.in_dim = 3
        self.out_dim = degree * degree

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        if sh_cpu.supports(dirs):  # directions of rays: data, never differentiated in training
            return sh_cpu.sh_encode(dirs, self.degree)
        x, y, z = dirs.unbind(-1)
        out = [torch.full_like(x, _C0)]
        if self.degree > 1:
            out += [-_C1 * y, _C1 * z, -_C1 * x]
        if self.degree > 2:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            out += [_C2[0] * xy, _C2[1] * yz, _C2[2] * (2.0 * zz - xx - yy), _C2[3] * xz, _C2[4] * (xx - yy)]
        if self.degree > 3:
            out += [_C3[0] * y * (3 * xx - yy), _C3[1] * xy * z, _C3[2] * y * (4 * zz - xx - yy),
                    _C3[3] * z * (2 * zz - 3 * xx - 3 * yy), _C3[4] * x * (4 * zz - xx - yy),
                    _C3[5] * z * (xx - yy), _C3[6] * x * (xx - 3 * yy)]
        return torch.stack(out, -1)

    def extra_repr(self) -> str:
        return f"degree={self.degree}, out_dim={self.out_dim}"


__all__ = ["FourierEncoding", "GaussianFourierEncoding", "SphericalHarmonics"]
