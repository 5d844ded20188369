"""Multiresolution hash-grid encoding (Mueller et al. 2022, instant-ngp): its config, module and
choice of backend; the backends themselves live in :mod:`pipeline.kernels`.

L levels with resolutions growing geometrically from ``base_resolution`` to ``finest_resolution``;
each level stores F features per grid vertex in a table of at most ``2^T`` entries. Coarse levels
whose ``(res + 2)^3`` vertices fit the table are indexed densely (no collisions); finer levels hash
the vertex coordinates (``x * 1 ^ y * 2654435761 ^ z * 805459861 mod 2^T``). A point's feature is
the trilinear interpolation of its cell's 8 corners; the output concatenates the levels.

All levels share ONE flat parameter table ``(sum of level sizes, F)`` with per-level offsets, so the
backends read and write the same layout and a model trained with one loads with another:

- ``torch``: the vectorised PyTorch reference (:mod:`pipeline.kernels.hashgrid_torch`); gives
  gradients w.r.t. the input and gradients of gradients.
- ``cpu``: C++ kernels (:mod:`pipeline.kernels.hashgrid_cpu`, built with the system compiler on
  first use and cached), chosen by ``auto`` on the CPU: nothing per corner is materialised, and
  they run on torch's OpenMP threads. Falls back to ``torch`` without a compiler.
- ``compiled``: the reference with its CPU work compiled by ``torch.compile``
  (:mod:`pipeline.kernels.hashgrid_compiled`; needs a C++ compiler, falls back to ``torch``
  without one). Opt-in: the first compile in a process takes a minute or two.
- ``naive``: the textbook version (a Python loop over levels and corners with ``table[idx]`` and
  autograd); kept as the baseline of the speed comparison and as a cross-check in tests.
- ``triton``: fused CUDA kernels (:mod:`pipeline.kernels.hashgrid_triton`), chosen by ``auto`` on CUDA.
- ``tcnn``: tiny-cuda-nn's ``HashGrid`` when the package imports (own parameter layout).

Speed of each backend: bench/RESULTS.md. Inputs are in ``[0, 1]^3`` (callers map their scene box
there); values outside are clamped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.kernels import hashgrid_cpu
from pipeline.kernels.hashgrid_compiled import hashgrid_compiled
from pipeline.kernels.hashgrid_torch import hashgrid_naive, hashgrid_torch

BACKENDS = ("auto", "torch", "cpu", "compiled", "triton", "tcnn", "naive")


@dataclass
class HashGridConfig:
    """levels: L; features_per_level: F; log2_table_size: T (entries per level <= 2^T);
    base_resolution / finest_resolution: grid cells along an axis at the coarsest / finest level;
    backend: auto (triton on CUDA, cpu on CPU, else torch) | torch | cpu (C++ kernels) | compiled
    (torch.compile'd reference, CPU) | triton | tcnn | naive."""

    levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048
    backend: str = "auto"


def level_layout(config: HashGridConfig) -> dict[str, torch.Tensor]:
    """Per level: ``scale`` (float, cells per unit), ``stride`` (vertices per axis), ``dense``
    (bool: direct indexing), ``offset`` (first row in the flat table), ``size`` (rows)."""
    L = config.levels
    growth = 1.0 if L == 1 else math.exp(
        (math.log(config.finest_resolution) - math.log(config.base_resolution)) / (L - 1))
    table = 1 << config.log2_table_size
    scales, strides, dense, offsets, sizes = [], [], [], [], []
    offset = 0
    for level in range(L):
        scale = config.base_resolution * growth ** level
        stride = int(math.floor(scale)) + 2  # vertices 0 .. floor(scale) + 1 along each axis
        is_dense = stride ** 3 <= table
        size = stride ** 3 if is_dense else table
        scales.append(scale)
        strides.append(stride)
        dense.append(is_dense)
        offsets.append(offset)
        sizes.append(size)
        offset += size
    return {"scale": torch.tensor(scales, dtype=torch.float64), "stride": torch.tensor(strides, dtype=torch.int32),
            "dense": torch.tensor(dense), "offset": torch.tensor(offsets, dtype=torch.int32),
            "size": torch.tensor(sizes, dtype=torch.int64), "table_mask": torch.tensor(table - 1, dtype=torch.int32)}


def coarse_to_fine_weights(levels: int, progress: float, span: float) -> torch.Tensor | None:
    """(levels,) weights that fade a grid's levels in, coarsest first, over the first ``span`` of
    training (BARF, Lin et al. 2021; Neuralangelo's progressive levels). None when every level is
    fully on (``span`` <= 0 or ``progress`` >= ``span``)."""
    if span <= 0 or progress >= span:
        return None
    alpha = progress / span * levels
    ramp = (alpha - torch.arange(levels, dtype=torch.float32)).clamp(0.0, 1.0)
    return (1.0 - torch.cos(ramp * torch.pi)) / 2.0


def weight_levels(features: torch.Tensor, weights: torch.Tensor | None, levels: int) -> torch.Tensor:
    """features (N, levels * F) with each level's F features scaled by weights (levels,)."""
    if weights is None:
        return features
    per_level = features.reshape(*features.shape[:-1], levels, -1)
    return (per_level * weights.to(features)[:, None]).reshape(features.shape)


def _tcnn_available() -> bool:
    try:
        import tinycudann  # noqa: F401
        return True
    except Exception:  # ImportError, or a build for another CUDA version
        return False


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
        return True
    except Exception:
        return False


class HashGridEncoding(nn.Module):
    """Multiresolution hash grid: x (N, 3) in [0, 1]^3 -> features (N, levels * features_per_level).

    One flat table ``self.table`` (rows, F) for every backend except ``tcnn`` (which keeps its own
    parameters in ``self.tcnn``). ``backend="auto"`` picks the Triton kernels for CUDA inputs when
    Triton imports (tiny-cuda-nn when only it imports), the C++ kernels for CPU inputs when a
    compiler builds them, and the PyTorch reference otherwise.
    """

    def __init__(self, config: HashGridConfig = HashGridConfig()):
        super().__init__()
        if config.backend not in BACKENDS:
            raise ValueError(f"hash grid backend must be one of {BACKENDS}, got {config.backend!r}")
        if config.log2_table_size > 30:
            raise ValueError(f"log2_table_size {config.log2_table_size} is too large (int32 indices); use <= 30")
        self.config = config
        self.in_dim = 3
        self.out_dim = config.levels * config.features_per_level
        layout = level_layout(config)
        for key in ("scale", "stride", "dense", "offset"):
            self.register_buffer(key, layout[key] if key != "scale" else layout[key].float(), persistent=False)
        self.table_mask = int(layout["table_mask"])
        self.level_sizes = layout["size"].tolist()
        rows = int(layout["size"].sum())
        self.tcnn = None
        if config.backend == "tcnn":
            self.tcnn = self._make_tcnn()
            self.table = None
        else:
            # instant-ngp's initialisation: tiny uniform values, so the field starts near zero
            self.table = nn.Parameter(torch.empty(rows, config.features_per_level).uniform_(-1e-4, 1e-4))

    def _make_tcnn(self):
        if not _tcnn_available():
            raise RuntimeError("hash grid backend 'tcnn' needs the tinycudann package (pip install "
                               "git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch); "
                               "use backend=auto or torch instead")
        import tinycudann as tcnn

        c = self.config
        growth = 1.0 if c.levels == 1 else math.exp(
            (math.log(c.finest_resolution) - math.log(c.base_resolution)) / (c.levels - 1))
        return tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": c.levels, "n_features_per_level": c.features_per_level,
                                 "log2_hashmap_size": c.log2_table_size, "base_resolution": c.base_resolution,
                                 "per_level_scale": growth})

    def resolve_backend(self, device: torch.device) -> str:
        """The backend that will run for inputs on ``device``."""
        backend = self.config.backend
        if backend != "auto":
            return backend
        if device.type == "cuda":
            if _triton_available():
                return "triton"
            if _tcnn_available():
                return "tcnn"
            return "torch"
        return "cpu" if device.type == "cpu" and hashgrid_cpu.available() else "torch"

    def forward(self, x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
        lead = x.shape[:-1]
        x = x.reshape(-1, 3).clamp(0.0, 1.0)
        backend = backend or self.resolve_backend(x.device)
        if backend == "tcnn":
            if self.tcnn is None:
                raise RuntimeError("this hash grid was built without tiny-cuda-nn parameters; "
                                   "construct it with backend='tcnn'")
            out = self.tcnn(x).to(x.dtype)
            return out.reshape(*lead, self.out_dim)
        if x.dtype != self.table.dtype:
            x = x.to(self.table.dtype)
        args = (x, self.table, self.scale, self.stride, self.dense, self.offset, self.table_mask)
        if backend == "cpu":
            if hashgrid_cpu.supports(x, self.table):
                return hashgrid_cpu.hashgrid_cpu(*args).reshape(*lead, self.out_dim)
            backend = "torch"  # CUDA tensors, another dtype or F, or no compiler: the reference
        if backend == "torch":
            out = hashgrid_torch(*args)
        elif backend == "compiled":
            out = hashgrid_compiled(*args)
        elif backend == "naive":
            out = hashgrid_naive(*args)
        elif backend == "triton":
            if x.device.type != "cuda":
                raise RuntimeError("the triton hash grid backend needs CUDA tensors; use backend=torch on CPU")
            from pipeline.kernels.hashgrid_triton import hashgrid_triton

            out = hashgrid_triton(*args)
        else:
            raise ValueError(f"unknown hash grid backend {backend!r}; valid: {BACKENDS}")
        return out.reshape(*lead, self.out_dim)

    def input_gradient(self, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        """x (N, 3) in [0, 1], grad_out (N, out_dim) -> d<grad_out, features(x)>/dx (N, 3), a
        constant (no graph): the C++ kernel where it runs, else autograd of the reference with the
        table held fixed."""
        x = x.detach().reshape(-1, 3).clamp(0.0, 1.0)
        if self.table is not None and x.dtype != self.table.dtype:
            x = x.to(self.table.dtype)
        if (self.table is not None and self.resolve_backend(x.device) == "cpu"
                and hashgrid_cpu.supports(x, self.table)):
            return hashgrid_cpu.hashgrid_cpu_input_grad(x, self.table, self.scale, self.stride, self.dense,
                                                        self.offset, self.table_mask, grad_out)
        with torch.enable_grad():
            x = x.requires_grad_(True)
            if self.table is None:
                out = self.forward(x)
            else:  # the reference with a detached table: autograd computes no table gradient
                out = hashgrid_torch(x, self.table.detach(), self.scale, self.stride, self.dense, self.offset,
                                     self.table_mask)
            (grad,) = torch.autograd.grad(out, x, grad_out.to(out.dtype))
        return grad

    def extra_repr(self) -> str:
        c = self.config
        return (f"levels={c.levels}, F={c.features_per_level}, T=2^{c.log2_table_size}, "
                f"res={c.base_resolution}..{c.finest_resolution}, backend={c.backend}, "
                f"dense_levels={int(self.dense.sum())}")


__all__ = ["HashGridConfig", "HashGridEncoding", "level_layout", "coarse_to_fine_weights", "weight_levels", "BACKENDS"]
