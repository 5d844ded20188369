"""CPU fast path of the reference hash grid: ``torch.compile`` (inductor, C++) fuses the corner
hashing, the gathers and the trilinear interpolation into one loop per output.

The eager reference (:mod:`pipeline.kernels.hashgrid_torch`) runs ~40 separate elementwise passes over
``(8, L, N)`` tensors and materialises the corner rows and weights; compiled, each output value
computes its 8 corners in registers and reads the table directly. Same layout, same hash, same
results as the eager reference (to float rounding); the table gradient is still scattered by the
eager 1-D ``index_add_`` (inductor's scatter with atomics is slower on CPU).

Compiling needs a C++ compiler (inductor) and takes ~30-60 s the first time in a process (cached
on disk afterwards). Where it is unavailable or fails, :func:`fused_available` turns false with a
warning and the eager reference runs instead. ``RECON_HASHGRID_COMPILE=0`` turns it off.
"""
from __future__ import annotations

import logging
import os
import shutil

import torch

# the hash uses instant-ngp's primes as the reference does; products are taken in int64 and masked,
# so the low bits equal those of the uint32 products
from pipeline.kernels.hashgrid_torch import (PRIMES, backward_create_graph, corner_indices_and_weights,
                                             corner_input_grad, corner_table_grad, hashgrid_torch, scatter_add_rows)

MIN_POINTS = 4096  # below this the compiled call's overhead is not worth it

_state: dict = {"ok": None, "fns": {}}
_log = logging.getLogger("recon.hashgrid")


def _corners(x, scale, stride, offset, dense, table_mask: int):
    """Yields (rows (L, N) int64, weight (L, N), bits) for the 8 corners; x (N, 3) in [0, 1]."""
    pos = x.t()[:, None, :] * scale.to(x.dtype)[None, :, None]  # (3, L, N)
    base_f = torch.floor(pos)
    frac = pos - base_f
    base = base_f.to(torch.int64)
    s = stride.to(torch.int64)[:, None]
    level_offset = offset.to(torch.int64)[:, None]
    is_dense = dense[:, None]
    for c in range(8):
        bits = ((c >> 2) & 1, (c >> 1) & 1, c & 1)
        ix, iy, iz = base[0] + bits[0], base[1] + bits[1], base[2] + bits[2]
        dense_row = ix + iy * s + iz * (s * s)
        hashed_row = (ix ^ (iy * PRIMES[1]) ^ (iz * PRIMES[2])) & table_mask
        rows = torch.where(is_dense, dense_row, hashed_row) + level_offset
        axis_w = [frac[d] if bits[d] else 1.0 - frac[d] for d in range(3)]
        yield rows, axis_w, bits


def _interpolate(x, table, scale, stride, offset, dense, table_mask: int):
    """x (N, 3), table (R, F) -> planar features (L, F, N)."""
    F = table.shape[1]
    flat = table.reshape(-1)
    acc = [None] * F
    for rows, (wx, wy, wz), _ in _corners(x, scale, stride, offset, dense, table_mask):
        w = wx * wy * wz
        for f in range(F):
            term = w * flat[rows * F + f]
            acc[f] = term if acc[f] is None else acc[f] + term
    return torch.stack(acc, 1)


def _table_grad_parts(x, grad, scale, stride, offset, dense, table_mask: int):
    """x (N, 3), grad (L, F, N) -> corner rows (8, L, N) int32 and their gradients (8, L, N, F)."""
    rows_all, values = [], []
    for rows, (wx, wy, wz), _ in _corners(x, scale, stride, offset, dense, table_mask):
        w = wx * wy * wz
        rows_all.append(rows.to(torch.int32))
        values.append(torch.stack([w * grad[:, f] for f in range(grad.shape[1])], -1))
    return torch.stack(rows_all), torch.stack(values)


def _input_grad(x, table, grad, scale, stride, offset, dense, table_mask: int):
    """x (N, 3), table (R, F), grad (L, F, N) -> dLoss/dx (N, 3)."""
    F = table.shape[1]
    flat = table.reshape(-1)
    grad_pos = [None, None, None]
    for rows, w, bits in _corners(x, scale, stride, offset, dense, table_mask):
        g = None  # dLoss / d(corner weight), (L, N)
        for f in range(F):
            term = flat[rows * F + f] * grad[:, f]
            g = term if g is None else g + term
        for d in range(3):
            # d weight / d pos_d = (+1 or -1) * the other two axis weights
            term = g * w[(d + 1) % 3] * w[(d + 2) % 3]
            term = term if bits[d] else -term
            grad_pos[d] = term if grad_pos[d] is None else grad_pos[d] + term
    scale_col = scale.to(x.dtype)[:, None]
    return torch.stack([(gp * scale_col).sum(0) for gp in grad_pos], -1)


def fused_available() -> bool:
    """Whether the compiled path may be used (CPU, a C++ compiler, not switched off, not failed)."""
    if _state["ok"] is None:
        _state["ok"] = (os.environ.get("RECON_HASHGRID_COMPILE", "1") != "0"
                        and any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))
                        and hasattr(torch, "compile"))
    return bool(_state["ok"])


def _compiled(name: str, fn):
    if name not in _state["fns"]:
        _state["fns"][name] = torch.compile(fn, dynamic=True)
    return _state["fns"][name]


def _call(name: str, fn, *args):
    """The compiled ``fn(*args)``; on a compile failure, warn once, disable the path and return None."""
    try:
        return _compiled(name, fn)(*args)
    except Exception as exc:  # no working compiler, an inductor bug on this platform: use eager
        _state["ok"] = False
        _log.warning(f"hash grid: torch.compile fast path disabled ({type(exc).__name__}: {str(exc)[:200]}); "
                     "using the eager PyTorch reference")
        return None


def interpolate(x, table, scale, stride, offset, dense, table_mask: int):
    """(L, F, N) features, or None when the compiled path is unavailable."""
    return _call("interpolate", _interpolate, x, table, scale, stride, offset, dense, table_mask)


def table_grad_parts(x, grad, scale, stride, offset, dense, table_mask: int):
    return _call("table_grad", _table_grad_parts, x, grad, scale, stride, offset, dense, table_mask)


def input_grad(x, table, grad, scale, stride, offset, dense, table_mask: int):
    return _call("input_grad", _input_grad, x, table, grad, scale, stride, offset, dense, table_mask)


class _FusedHashGridFunction(torch.autograd.Function):
    """The reference's function with the compiled CPU kernels above: nothing per corner is kept
    between forward and backward (the backward recomputes the rows)."""

    @staticmethod
    def forward(ctx, x, table, scale, stride, dense, offset, table_mask):
        out = interpolate(x.detach(), table.detach(), scale, stride, offset, dense, table_mask)
        if out is None:
            raise _CompiledPathUnavailable
        ctx.table_mask = table_mask
        ctx.save_for_backward(x, table, scale, stride, dense, offset)
        L, F, n = out.shape
        return out.view(L * F, n).t()

    @staticmethod
    def backward(ctx, grad_out):
        x, table, scale, stride, dense, offset = ctx.saved_tensors
        mask = ctx.table_mask
        eager = None  # corner rows, weights, frac: computed only when a compiled kernel is unavailable

        def corners():
            nonlocal eager
            if eager is None:
                eager = corner_indices_and_weights(x.detach(), scale, stride, dense, offset, mask, True)
            return eager

        if torch.is_grad_enabled():
            return backward_create_graph(ctx, grad_out, x, table, corners()[0], scale)
        L, F, n = scale.shape[0], table.shape[1], x.shape[0]
        grad_planar = grad_out.t().contiguous().view(L, F, n).to(table.dtype)
        grad_x = grad_table = None
        xd, td = x.detach(), table.detach()
        if ctx.needs_input_grad[1]:
            parts = table_grad_parts(xd, grad_planar, scale, stride, offset, dense, mask)
            if parts is not None:
                grad_table = scatter_add_rows(td, parts[0], parts[1])
            else:
                grad_table = corner_table_grad(td, corners()[0], corners()[1], grad_planar)
        if ctx.needs_input_grad[0]:
            grad_x = input_grad(xd, td, grad_planar, scale, stride, offset, dense, mask)
            if grad_x is None:
                grad_x = corner_input_grad(td, corners()[0], corners()[2], scale, grad_planar)
        return grad_x, grad_table, None, None, None, None, None


class _CompiledPathUnavailable(Exception):
    pass


def hashgrid_compiled(x, table, scale, stride, dense, offset, table_mask: int) -> torch.Tensor:
    """The ``compiled`` backend: x (N, 3) in [0, 1] -> (N, L * F). CPU batches of at least
    ``MIN_POINTS`` points use the compiled kernels when available, the rest the eager reference."""
    if x.device.type == "cpu" and x.shape[0] >= MIN_POINTS and fused_available():
        try:
            return _FusedHashGridFunction.apply(x, table, scale, stride, dense, offset, table_mask)
        except _CompiledPathUnavailable:
            pass
    return hashgrid_torch(x, table, scale, stride, dense, offset, table_mask)


__all__ = ["fused_available", "interpolate", "table_grad_parts", "input_grad", "hashgrid_compiled", "MIN_POINTS"]
