"""The PyTorch hash-grid backends: ``torch`` (the vectorised reference) and ``naive`` (the textbook loop).

Layout shared by every backend (:mod:`pipeline.models.components.hashgrid` builds it): ONE flat
table ``(sum of level sizes, F)`` with per-level row offsets; coarse "dense" levels index
``row = x + s * y + s^2 * z``, finer levels hash ``(x * 1 ^ y * 2654435761 ^ z * 805459861) & mask``
in uint32 arithmetic; corner ``c = 4 * bx + 2 * by + bz``. The other backends
(:mod:`pipeline.kernels.hashgrid_cpu`, ``hashgrid_compiled``, ``hashgrid_triton``) give the same
results and use this module's pieces for what they do not implement themselves (second derivatives).

- ``torch``: corner indices and weights of all levels are computed together (int32, broadcasting
  over the 2x2x2 corners), features come from ONE ``index_select`` on the flat table, and a custom
  autograd function scatters gradients back with ``index_add_`` (no per-corner copies of the
  table). It also gives gradients w.r.t. the input, and gradients of gradients (``create_graph``).
  Large batches on the CPU go a group of levels at a time, so that no temporary passes 16 MiB.
- ``naive``: a Python loop over levels and corners with ``table[idx]`` and autograd; the baseline
  of the speed comparison and a cross-check in tests.
"""
from __future__ import annotations

import torch

# instant-ngp's spatial hash primes; the first is 1 so that x stays coherent in memory. As int32 they
# wrap, which keeps the low bits (all the hash uses) identical to the uint32 products.
PRIMES = (1, 2654435761, 805459861)


def _as_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= (1 << 31) else value


PRIMES_I32 = tuple(_as_int32(p) for p in PRIMES)


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


def scatter_add_rows(table: torch.Tensor, idx: torch.Tensor, values: torch.Tensor,
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
# pipeline.runner.runtime.keep_freed_memory).
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
            return backward_create_graph(ctx, grad_out, x, table, idx, scale)
        L, F, n = scale.shape[0], table.shape[1], x.shape[0]
        grad_planar = grad_out.t().contiguous().view(L, F, n).to(table.dtype)  # (L, F, N)
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        grad_x = None
        for g, (idx, weights, frac) in zip(groups, parts):
            if grad_table is not None:
                corner_table_grad(table, idx, weights, grad_planar[g], into=grad_table)
            if ctx.needs_input_grad[0]:
                part = corner_input_grad(table, idx, frac, scale[g], grad_planar[g])
                grad_x = part if grad_x is None else grad_x.add_(part)
        return grad_x, grad_table, None, None, None, None, None


def backward_create_graph(ctx, grad_out, x, table, idx, scale):
    """create_graph=True (e.g. IDR's eikonal loss differentiates grad_x f): redo the interpolation
    with differentiable ops so the gradients themselves have gradients."""
    with torch.enable_grad():  # x and table keep their history: d(grad)/dx and d(grad)/dtable exist
        out = _interpolate_differentiable(x, table, idx, scale)
        wanted = [t for t, need in ((x, ctx.needs_input_grad[0]), (table, ctx.needs_input_grad[1])) if need]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
        grad_x = next(grads) if ctx.needs_input_grad[0] else None
        grad_table = next(grads) if ctx.needs_input_grad[1] else None
    return grad_x, grad_table, None, None, None, None, None


def corner_table_grad(table, idx, weights, grad_planar, into=None):
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
        return scatter_add_rows(table, idx, torch.view_as_real(per_corner).view(8, L, n, F), into)
    per_corner = torch.empty(8, L, n, F, dtype=table.dtype, device=table.device)
    for f in range(F):
        torch.mul(weights, grad_planar[None, :, f], out=per_corner[..., f])
    return scatter_add_rows(table, idx, per_corner, into)


def corner_input_grad(table, idx, frac, scale, grad_planar):
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


def hashgrid_torch(x, table, scale, stride, dense, offset, table_mask: int) -> torch.Tensor:
    """The reference backend: x (N, 3) in [0, 1] -> (N, L * F)."""
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


__all__ = ["PRIMES", "corner_indices_and_weights", "hashgrid_torch", "hashgrid_naive", "backward_create_graph",
           "scatter_add_rows", "corner_table_grad", "corner_input_grad"]
