"""CPU fast path of the reference hash grid: ``torch.compile`` (inductor, C++) fuses the corner
hashing, the gathers and the trilinear interpolation into one loop per output.

The eager reference (:mod:`pipeline.models.components.hashgrid`) runs ~40 separate elementwise passes over
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
from pipeline.models.components.hashgrid import PRIMES

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


__all__ = ["fused_available", "interpolate", "table_grad_parts", "input_grad", "MIN_POINTS"]
