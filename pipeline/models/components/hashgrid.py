"""Multiresolution hash-grid encoding (Mueller et al. 2022, instant-ngp).

L levels with resolutions growing geometrically from ``base_resolution`` to ``finest_resolution``;
each level stores F features per grid vertex in a table of at most ``2^T`` entries. Coarse levels
whose ``(res + 2)^3`` vertices fit the table are indexed densely (no collisions); finer levels hash
the vertex coordinates (``x * 1 ^ y * 2654435761 ^ z * 805459861 mod 2^T``). A point's feature is
the trilinear interpolation of its cell's 8 corners; the output concatenates the levels.

All levels share ONE flat parameter table ``(sum of level sizes, F)`` with per-level offsets, so the
backends read and write the same layout and a model trained with one loads with another:

- ``torch``: the vectorised PyTorch reference. Corner indices and weights of all levels are
  computed together (int32, broadcasting over the 2x2x2 corners), features come from ONE
  ``index_select`` on the flat table, and a custom autograd function scatters gradients back with
  ``index_add_`` (no per-corner copies of the table). It also gives gradients w.r.t. the input.
  Large batches on the CPU go a group of levels at a time, so that no temporary passes 16 MiB.
- ``cpu``: C++ kernels (``pipeline/kernels/csrc/hashgrid_cpu.cpp``, built with the system compiler on first
  use and cached), chosen by ``auto`` on the CPU: nothing per corner is materialised (blocks of
  32 points are located in small arrays, 8 points per vector instruction); they go level by level
  and run on torch's OpenMP threads. On the 2-core development CPU: grid forward + backward
  3-6x the reference and 20-30x the naive backend (bench/RESULTS.md).
  Falls back to ``torch`` without a compiler.
- ``compiled``: the reference with its CPU work compiled by ``torch.compile``
  (``pipeline/nn/hashgrid_compiled.py``: corners, gathers and interpolation fused in one loop;
  needs a C++ compiler, falls back to ``torch`` without one). Forward ~2x faster on the 2-core
  development CPU, the NeRF training loop no faster (bench/RESULTS.md), 60-130 s first compile: opt-in.
- ``naive``: the textbook version (a Python loop over levels and corners with ``table[idx]`` and
  autograd); kept as the baseline of the speed comparison and as a cross-check in tests.
- ``triton``: fused CUDA kernels (``pipeline/nn/hashgrid_triton.py``), chosen by ``auto`` on CUDA.
- ``tcnn``: tiny-cuda-nn's ``HashGrid`` when the package imports (own parameter layout).

Inputs are in ``[0, 1]^3`` (callers map their scene box there); values outside are clamped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

BACKENDS = ("auto", "torch", "cpu", "compiled", "triton", "tcnn", "naive")
# instant-ngp's spatial hash primes; the first is 1 so that x stays coherent in memory. As int32 they
# wrap, which keeps the low bits (all the hash uses) identical to the uint32 products.
PRIMES = (1, 2654435761, 805459861)


def _as_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


PRIMES_I32 = tuple(_as_int32(p) for p in PRIMES)


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


def corner_indices_and_weights(x: torch.Tensor, scale: torch.Tensor, stride: torch.Tensor, dense: torch.Tensor,
                               offset: torch.Tensor, table_mask: int, with_frac: bool = False):
    """Rows of the flat table and trilinear weights of the 8 corners of every point at every level.

    x: (N, 3) in [0, 1]; scale (L,) float; stride, offset (L,) int32; dense (L,) bool (the dense
    levels are the coarse ones, a prefix). Returns idx (8, L, N) int32, weights (8, L, N) in x's
    dtype and (with_frac) frac (3, L, N). Corner c = 4 * bx + 2 * by + bz, b = 1 for the upper
    vertex on that axis.

    Planar layout on purpose: with N innermost every step is a contiguous elementwise op over
    L * N values (broadcasting over tiny inner dimensions of size 2 or 8 is ~10x slower on CPU).
    """
    n, L = x.shape[0], scale.shape[0]
    pos = x.t().contiguous()[:, None, :] * scale.to(x.dtype)[None, :, None]  # (3, L, N)
    pos_floor = torch.floor(pos)
    frac = pos - pos_floor
    base = pos_floor.to(torch.int32)
    bx, by, bz = base[0], base[1], base[2]  # (L, N)
    idx = torch.empty(8, L, n, dtype=torch.int32, device=x.device)
    num_dense = int(dense.sum())
    if num_dense:
        # dense: row = bx + s * by + s^2 * bz (+ level offset); each corner adds a per-level constant
        s = stride[:num_dense, None]
        linear = bx[:num_dense] + by[:num_dense] * s + bz[:num_dense] * (s * s) + offset[:num_dense, None]
        axis_steps = torch.stack([torch.ones_like(stride[:num_dense]), stride[:num_dense],
                                  stride[:num_dense] ** 2], -1)  # (Ld, 3)
        # (8, Ld); elementwise, not a matmul: CUDA has no integer matrix product
        corner_offsets = (_corner_bits(x.device)[:, None, :] * axis_steps[None]).sum(-1, dtype=torch.int32)
        torch.add(linear[None], corner_offsets[:, :, None], out=idx[:, :num_dense])
    if num_dense < L:
        h = slice(num_dense, L)
        hx = (bx[h], bx[h] + 1)
        hy0 = by[h] * PRIMES_I32[1]
        hz0 = bz[h] * PRIMES_I32[2]
        hy = (hy0, hy0 + PRIMES_I32[1])  # int32 arithmetic wraps, like the uint32 products
        hz = (hz0, hz0 + PRIMES_I32[2])
        level_offset = offset[h, None]
        for c in range(8):
            out = idx[c, h]
            torch.bitwise_xor(hx[(c >> 2) & 1], hy[(c >> 1) & 1], out=out)
            out.bitwise_xor_(hz[c & 1]).bitwise_and_(table_mask).add_(level_offset)
    wx, wy, wz = (1.0 - frac[0], frac[0]), (1.0 - frac[1], frac[1]), (1.0 - frac[2], frac[2])
    weights = torch.empty(8, L, n, dtype=x.dtype, device=x.device)
    for i in range(2):
        for j in range(2):
            wxy = wx[i] * wy[j]
            for k in range(2):
                torch.mul(wxy, wz[k], out=weights[4 * i + 2 * j + k])
    return (idx, weights, frac) if with_frac else (idx, weights)


def _corner_bits(device) -> torch.Tensor:
    """(8, 3) int32: corner c = 4 * bx + 2 * by + bz."""
    c = torch.arange(8, dtype=torch.int32, device=device)
    return torch.stack([(c >> 2) & 1, (c >> 1) & 1, c & 1], -1)


# Rows are gathered as single wide elements (a float32 row of F = 2 is one int64, F = 4 one
# complex128; the copy is bit-exact) and scattered as complex numbers (two floats per add): 1-D index
# ops on 8- or 16-byte elements are several times faster on CPU than row-wise ops on (rows, F).
_WIDE = {4: torch.int32, 8: torch.int64, 16: torch.complex128}
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _gather_rows(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table (R, F), idx (...) int -> (..., F) rows of table."""
    flat_idx = idx.reshape(-1)
    F = table.shape[1]
    wide = _WIDE.get(F * table.element_size())
    if wide is not None and table.is_contiguous() and table.device.type == "cpu":
        rows = table.view(wide).view(-1).index_select(0, flat_idx)
        return rows.view(table.dtype).view(*idx.shape, F)
    return table.index_select(0, flat_idx).view(*idx.shape, F)


def _scatter_add_rows(table: torch.Tensor, idx: torch.Tensor, values: torch.Tensor,
                      into: torch.Tensor | None = None) -> torch.Tensor:
    """``into`` (a zero tensor like table (R, F) when None) with values (..., F) (same leading shape
    as idx) added at idx.

    One 1-D ``index_add_`` per column (pair of columns as a complex number): the 1-D CPU kernel is a
    tight loop and takes the int32 indices as they are (no int64 copy of the index)."""
    R, F = table.shape
    flat_idx = idx.reshape(-1)
    values = values.reshape(-1, F)
    out = torch.zeros_like(table) if into is None else into
    if table.device.type != "cpu":  # one row-wise kernel on GPUs (the 1-D tricks are for CPU loops)
        return out.index_add_(0, flat_idx, values.to(table.dtype))
    if F % 2 == 0 and table.dtype in _COMPLEX:
        pairs = torch.view_as_complex(out.view(R, F // 2, 2))
        src = torch.view_as_complex(values.contiguous().view(-1, F // 2, 2))
        for j in range(F // 2):
            pairs[:, j].index_add_(0, flat_idx, src[:, j])
        return out
    for j in range(F):
        out[:, j].index_add_(0, flat_idx, values[:, j])
    return out


# The reference's temporaries (8, levels, N[, F]) are kept under this size by taking the levels a
# group at a time on the CPU: larger blocks fault in afresh on every call (see
# pipeline.runner.runtime.keep_freed_memory). Measured on the 2-core VM, 65536 samples (the speed bench's
# step): 57-81k page faults and 0.2-0.56 s of system time per step with all 16 levels at once.
_GROUP_BYTES = 16 << 20


def _level_groups(n: int, levels: int, features: int, element_size: int, device: torch.device) -> list[slice]:
    """Consecutive groups of levels whose per-corner temporaries stay under ``_GROUP_BYTES`` on the
    CPU (one group on GPUs, whose caching allocator reuses its blocks)."""
    if device.type != "cpu":
        return [slice(0, levels)]
    per_level = 8 * n * max(features, 1) * element_size  # the gathered rows (8, 1, N, F)
    size = max(1, min(levels, _GROUP_BYTES // max(per_level, 1)))
    return [slice(start, min(start + size, levels)) for start in range(0, levels, size)]


class _HashGridFunction(torch.autograd.Function):
    """Gather + interpolate in forward; a scatter-add into the flat table in backward.

    Output (N, L * F) is returned as the transpose of a planar (L * F, N) tensor: the MLP's matmul
    reads it without a copy. Levels go a group at a time (:func:`_level_groups`); each group's
    corner rows and weights are kept for the backward.
    """

    @staticmethod
    def forward(ctx, x, table, scale, stride, dense, offset, table_mask):
        n, L, F = x.shape[0], scale.shape[0], table.shape[1]
        groups = _level_groups(n, L, F, table.element_size(), x.device)
        out = torch.empty(L, F, n, dtype=table.dtype, device=x.device)
        saved = []
        for g in groups:
            idx, weights, frac = corner_indices_and_weights(x.detach(), scale[g], stride[g], dense[g], offset[g],
                                                            table_mask, True)
            feats = _gather_rows(table.detach(), idx)  # (8, Lg, N, F)
            for f in range(F):
                acc = out[g, f]
                torch.mul(feats[0, ..., f], weights[0], out=acc)
                for c in range(1, 8):
                    acc.addcmul_(feats[c, ..., f], weights[c])
            saved += [idx, weights, frac if ctx.needs_input_grad[0] else None]
        ctx.groups = groups
        ctx.save_for_backward(scale, table, x, *saved)
        return out.view(L * F, n).t()

    @staticmethod
    def backward(ctx, grad_out):
        scale, table, x, *saved = ctx.saved_tensors
        groups = ctx.groups
        parts = [saved[3 * i:3 * i + 3] for i in range(len(groups))]  # (idx, weights, frac) per group
        if torch.is_grad_enabled():
            idx = torch.cat([p[0] for p in parts], 1)
            return _backward_create_graph(ctx, grad_out, x, table, idx, scale)
        L, F, n = scale.shape[0], table.shape[1], x.shape[0]
        grad_planar = grad_out.t().contiguous().view(L, F, n).to(table.dtype)  # (L, F, N)
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        grad_x = None
        for g, (idx, weights, frac) in zip(groups, parts):
            if grad_table is not None:
                _table_grad(table, idx, weights, grad_planar[g], into=grad_table)
            if ctx.needs_input_grad[0]:
                part = _input_grad(table, idx, frac, scale[g], grad_planar[g])
                grad_x = part if grad_x is None else grad_x.add_(part)
        return grad_x, grad_table, None, None, None, None, None


def _backward_create_graph(ctx, grad_out, x, table, idx, scale):
    """create_graph=True (e.g. IDR's eikonal loss differentiates grad_x f): redo the interpolation
    with differentiable ops so the gradients themselves have gradients."""
    with torch.enable_grad():  # x and table keep their history: d(grad)/dx and d(grad)/dtable exist
        out = _interpolate_differentiable(x, table, idx, scale)
        wanted = [t for t, need in ((x, ctx.needs_input_grad[0]), (table, ctx.needs_input_grad[1])) if need]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
        grad_x = next(grads) if ctx.needs_input_grad[0] else None
        grad_table = next(grads) if ctx.needs_input_grad[1] else None
    return grad_x, grad_table, None, None, None, None, None


def _table_grad(table, idx, weights, grad_planar, into=None):
    """dLoss/dtable (R, F) from corner rows idx and weights (8, L, N), grad_planar (L, F, N); added
    to ``into`` when given."""
    L, n, F = weights.shape[1], weights.shape[2], table.shape[1]
    if F % 2 == 0 and table.dtype in _COMPLEX and table.device.type == "cpu":
        # feature pairs as complex numbers: one contiguous real x complex product per pair writes
        # the interleaved values the scatter reads (a strided write per feature is ~3x slower)
        pairs = torch.view_as_complex(grad_planar.view(L, F // 2, 2, n).transpose(2, 3).contiguous())
        per_corner = torch.empty(8, L, n, F // 2, dtype=pairs.dtype, device=table.device)
        for j in range(F // 2):
            torch.mul(weights, pairs[None, :, j], out=per_corner[..., j])
        return _scatter_add_rows(table, idx, torch.view_as_real(per_corner).view(8, L, n, F), into)
    per_corner = torch.empty(8, L, n, F, dtype=table.dtype, device=table.device)
    for f in range(F):
        torch.mul(weights, grad_planar[None, :, f], out=per_corner[..., f])
    return _scatter_add_rows(table, idx, per_corner, into)


def _input_grad(table, idx, frac, scale, grad_planar):
    """dLoss/dx (N, 3) from corner rows idx (8, L, N), frac (3, L, N), grad_planar (L, F, N)."""
    L, n, F = idx.shape[1], idx.shape[2], table.shape[1]
    feats = _gather_rows(table.detach(), idx)  # (8, L, N, F)
    g_corner = feats[..., 0] * grad_planar[None, :, 0]  # dLoss/dweight (8, L, N)
    for f in range(1, F):
        g_corner.addcmul_(feats[..., f], grad_planar[None, :, f])
    w = [(1.0 - frac[d], frac[d]) for d in range(3)]
    grad_pos = torch.zeros(3, L, n, dtype=frac.dtype, device=frac.device)
    for c in range(8):
        bits = ((c >> 2) & 1, (c >> 1) & 1, c & 1)
        for d in range(3):
            # d weight_c / d pos_d = (+1 or -1) * product of the other two axis weights
            others = w[(d + 1) % 3][bits[(d + 1) % 3]] * w[(d + 2) % 3][bits[(d + 2) % 3]]
            term = g_corner[c] * others
            grad_pos[d] += term if bits[d] else -term
    return (grad_pos * scale.to(grad_pos.dtype)[None, :, None]).sum(1).t()


class _FusedHashGridFunction(torch.autograd.Function):
    """The same function with the compiled CPU kernels of :mod:`pipeline.kernels.hashgrid_compiled`:
    nothing per corner is kept between forward and backward (the backward recomputes the rows)."""

    @staticmethod
    def forward(ctx, x, table, scale, stride, dense, offset, table_mask):
        from pipeline.kernels import hashgrid_compiled

        out = hashgrid_compiled.interpolate(x.detach(), table.detach(), scale, stride, offset, dense, table_mask)
        if out is None:
            raise _CompiledPathUnavailable
        ctx.table_mask = table_mask
        ctx.save_for_backward(x, table, scale, stride, dense, offset)
        L, F, n = out.shape
        return out.view(L * F, n).t()

    @staticmethod
    def backward(ctx, grad_out):
        from pipeline.kernels import hashgrid_compiled

        x, table, scale, stride, dense, offset = ctx.saved_tensors
        mask = ctx.table_mask
        eager = None  # corner rows, weights, frac: computed only when a compiled kernel is unavailable

        def corners():
            nonlocal eager
            if eager is None:
                eager = corner_indices_and_weights(x.detach(), scale, stride, dense, offset, mask, True)
            return eager

        if torch.is_grad_enabled():
            return _backward_create_graph(ctx, grad_out, x, table, corners()[0], scale)
        L, F, n = scale.shape[0], table.shape[1], x.shape[0]
        grad_planar = grad_out.t().contiguous().view(L, F, n).to(table.dtype)
        grad_x = grad_table = None
        xd, td = x.detach(), table.detach()
        if ctx.needs_input_grad[1]:
            parts = hashgrid_compiled.table_grad_parts(xd, grad_planar, scale, stride, offset, dense, mask)
            if parts is not None:
                grad_table = _scatter_add_rows(td, parts[0], parts[1])
            else:
                grad_table = _table_grad(td, corners()[0], corners()[1], grad_planar)
        if ctx.needs_input_grad[0]:
            grad_x = hashgrid_compiled.input_grad(xd, td, grad_planar, scale, stride, offset, dense, mask)
            if grad_x is None:
                grad_x = _input_grad(td, corners()[0], corners()[2], scale, grad_planar)
        return grad_x, grad_table, None, None, None, None, None


class _CompiledPathUnavailable(Exception):
    pass


def _interpolate_differentiable(x: torch.Tensor, table: torch.Tensor, idx: torch.Tensor, scale: torch.Tensor):
    """The forward of the reference backend in plain autograd ops (any order of derivatives):
    x (N, 3), table (R, F), idx (8, L, N) corner rows -> (N, L * F). Only used for create_graph."""
    n, L, F = x.shape[0], scale.shape[0], table.shape[1]
    pos = x.t()[:, None, :] * scale.to(x.dtype)[None, :, None]  # (3, L, N)
    frac = pos - torch.floor(pos).detach()
    w = [(1.0 - frac[d], frac[d]) for d in range(3)]
    feats = table.index_select(0, idx.reshape(-1).long()).view(8, L, n, F)
    out = 0
    for c in range(8):
        weight = w[0][(c >> 2) & 1] * w[1][(c >> 1) & 1] * w[2][c & 1]  # (L, N)
        out = out + weight[..., None] * feats[c]
    return out.permute(1, 0, 2).reshape(n, L * F)  # (N, L * F), level-major like the forward


def hashgrid_torch(x, table, scale, stride, dense, offset, table_mask: int, fused: bool = False) -> torch.Tensor:
    """The reference backend: x (N, 3) in [0, 1] -> (N, L * F). ``fused``: on the CPU, batches of
    at least ``hashgrid_compiled.MIN_POINTS`` points use the compiled kernels when available."""
    if fused and x.device.type == "cpu":
        from pipeline.kernels import hashgrid_compiled

        if x.shape[0] >= hashgrid_compiled.MIN_POINTS and hashgrid_compiled.fused_available():
            try:
                return _FusedHashGridFunction.apply(x, table, scale, stride, dense, offset, table_mask)
            except _CompiledPathUnavailable:
                pass
    return _HashGridFunction.apply(x, table, scale, stride, dense, offset, table_mask)


def hashgrid_naive(x, table, scale, stride, dense, offset, table_mask: int) -> torch.Tensor:
    """Per level and per corner ``table[idx]`` with autograd: the slow baseline (same results)."""
    outputs = []
    for level in range(scale.shape[0]):
        pos = x * scale[level].to(x.dtype)
        base = torch.floor(pos)
        frac = pos - base
        base = base.long()
        level_out = 0
        for corner in range(8):
            bits = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
            c = [base[:, d] + bits[d] for d in range(3)]
            if bool(dense[level]):
                s = int(stride[level])
                index = c[0] + c[1] * s + c[2] * s * s
            else:
                index = (c[0] * PRIMES[0] ^ c[1] * PRIMES[1] ^ c[2] * PRIMES[2]) & int(table_mask)
            index = index + int(offset[level])
            w = 1.0
            for d in range(3):
                w = w * (frac[:, d] if bits[d] else 1.0 - frac[:, d])
            level_out = level_out + w[:, None] * table[index]
        outputs.append(level_out)
    return torch.cat(outputs, -1)


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
        from pipeline.kernels import hashgrid_cpu

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
            from pipeline.kernels import hashgrid_cpu

            if hashgrid_cpu.supports(x, self.table):
                return hashgrid_cpu.hashgrid_cpu(*args).reshape(*lead, self.out_dim)
            backend = "torch"  # CUDA tensors, another dtype or F, or no compiler: the reference
        if backend in ("torch", "compiled"):
            out = hashgrid_torch(*args, fused=backend == "compiled")
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

    def extra_repr(self) -> str:
        c = self.config
        return (f"levels={c.levels}, F={c.features_per_level}, T=2^{c.log2_table_size}, "
                f"res={c.base_resolution}..{c.finest_resolution}, backend={c.backend}, "
                f"dense_levels={int(self.dense.sum())}")


__all__ = ["HashGridConfig", "HashGridEncoding", "level_layout", "corner_indices_and_weights", "hashgrid_torch",
           "hashgrid_naive", "BACKENDS"]
