"""Triton kernels for the hash grid (CUDA): fused index + interpolation forward, atomic-add backward.

Same table layout, level layout and hash as the PyTorch reference in :mod:`pipeline.kernels.hashgrid_torch`
(flat table (rows, F), per-level row offsets, dense coarse levels, ``x ^ y * 2654435761 ^
z * 805459861`` on uint32), so the backends are interchangeable on one set of weights.

One program handles ``BLOCK`` points of one level: it computes the 8 corner rows and trilinear
weights in registers, gathers the F features of each corner and writes the level's F outputs; the
backward recomputes the same rows and weights and ``atomic_add``s ``weight * grad`` into the table
gradient. Gradients w.r.t. the input points are not implemented in the kernel: when the input
requires grad, the reference implementation runs instead (it gives both).

Imported lazily (only when the triton backend is used), so CPU-only installs never import triton.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pipeline.kernels.hashgrid_torch import hashgrid_torch

BLOCK = 128


@triton.jit
def _corner(px, py, pz, c: tl.constexpr, stride, is_dense, level_offset, table_mask):
    """Row and weight of corner c of the cells containing (px, py, pz) (already scaled)."""
    bx: tl.constexpr = (c >> 2) & 1
    by: tl.constexpr = (c >> 1) & 1
    bz: tl.constexpr = c & 1
    fx0 = tl.floor(px)
    fy0 = tl.floor(py)
    fz0 = tl.floor(pz)
    fx = px - fx0
    fy = py - fy0
    fz = pz - fz0
    cx = fx0.to(tl.int32) + bx
    cy = fy0.to(tl.int32) + by
    cz = fz0.to(tl.int32) + bz
    wx = fx if bx == 1 else 1.0 - fx
    wy = fy if by == 1 else 1.0 - fy
    wz = fz if bz == 1 else 1.0 - fz
    w = wx * wy * wz
    dense_row = cx + cy * stride + cz * stride * stride
    ux = cx.to(tl.uint32)
    uy = cy.to(tl.uint32) * 2654435761
    uz = cz.to(tl.uint32) * 805459861
    hashed_row = ((ux ^ uy ^ uz) & table_mask.to(tl.uint32)).to(tl.int32)
    row = tl.where(is_dense != 0, dense_row, hashed_row) + level_offset
    return row, w


@triton.jit
def _level_points(x_ptr, scale_ptr, stride_ptr, offset_ptr, dense_ptr, n_points, BLOCK_N: tl.constexpr):
    """This program's points (offsets, mask) scaled to its level's grid, and the level's layout."""
    level = tl.program_id(1)
    offs = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = offs < n_points
    scale = tl.load(scale_ptr + level)
    px = tl.load(x_ptr + offs * 3 + 0, mask=mask, other=0.0) * scale
    py = tl.load(x_ptr + offs * 3 + 1, mask=mask, other=0.0) * scale
    pz = tl.load(x_ptr + offs * 3 + 2, mask=mask, other=0.0) * scale
    return (level, offs, mask, px, py, pz, tl.load(stride_ptr + level), tl.load(offset_ptr + level),
            tl.load(dense_ptr + level))


@triton.jit
def _hashgrid_fwd_kernel(x_ptr, table_ptr, out_ptr, scale_ptr, stride_ptr, offset_ptr, dense_ptr, n_points,
                         table_mask, L: tl.constexpr, F: tl.constexpr, BLOCK_N: tl.constexpr):
    level, offs, mask, px, py, pz, stride, level_offset, is_dense = _level_points(
        x_ptr, scale_ptr, stride_ptr, offset_ptr, dense_ptr, n_points, BLOCK_N)
    feat = tl.arange(0, F)
    acc = tl.zeros((BLOCK_N, F), dtype=tl.float32)
    for c in tl.static_range(8):
        row, w = _corner(px, py, pz, c, stride, is_dense, level_offset, table_mask)
        values = tl.load(table_ptr + row[:, None].to(tl.int64) * F + feat[None, :], mask=mask[:, None], other=0.0)
        acc += w[:, None] * values
    out_offsets = offs[:, None].to(tl.int64) * (L * F) + level * F + feat[None, :]
    tl.store(out_ptr + out_offsets, acc, mask=mask[:, None])


@triton.jit
def _hashgrid_bwd_kernel(x_ptr, grad_out_ptr, grad_table_ptr, scale_ptr, stride_ptr, offset_ptr, dense_ptr,
                         n_points, table_mask, L: tl.constexpr, F: tl.constexpr, BLOCK_N: tl.constexpr):
    level, offs, mask, px, py, pz, stride, level_offset, is_dense = _level_points(
        x_ptr, scale_ptr, stride_ptr, offset_ptr, dense_ptr, n_points, BLOCK_N)
    feat = tl.arange(0, F)
    grad = tl.load(grad_out_ptr + offs[:, None].to(tl.int64) * (L * F) + level * F + feat[None, :],
                   mask=mask[:, None], other=0.0)
    for c in tl.static_range(8):
        row, w = _corner(px, py, pz, c, stride, is_dense, level_offset, table_mask)
        tl.atomic_add(grad_table_ptr + row[:, None].to(tl.int64) * F + feat[None, :], w[:, None] * grad,
                      mask=mask[:, None])


def _level_args(scale, stride, dense, offset):
    return (scale.float().contiguous(), stride.to(torch.int32).contiguous(), offset.to(torch.int32).contiguous(),
            dense.to(torch.int32).contiguous())


class _TritonHashGrid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, scale, stride, dense, offset, table_mask):
        x = x.float().contiguous()
        n, L, F = x.shape[0], scale.shape[0], table.shape[1]
        if F & (F - 1):
            raise ValueError(f"the triton hash grid needs a power-of-two features_per_level, got {F}")
        levels = _level_args(scale, stride, dense, offset)
        out = torch.empty(n, L * F, device=x.device, dtype=torch.float32)
        grid = (triton.cdiv(n, BLOCK), L)
        _hashgrid_fwd_kernel[grid](x, table.contiguous(), out, levels[0], levels[1], levels[2], levels[3], n,
                                   table_mask, L=L, F=F, BLOCK_N=BLOCK)
        ctx.save_for_backward(x, scale, stride, dense, offset)
        ctx.table_shape, ctx.table_mask = table.shape, table_mask
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, stride, dense, offset = ctx.saved_tensors
        n, L = x.shape[0], scale.shape[0]
        F = ctx.table_shape[1]
        grad_table = torch.zeros(ctx.table_shape, device=x.device, dtype=torch.float32)
        levels = _level_args(scale, stride, dense, offset)
        grid = (triton.cdiv(n, BLOCK), L)
        _hashgrid_bwd_kernel[grid](x, grad_out.float().contiguous(), grad_table, levels[0], levels[1], levels[2],
                                   levels[3], n, ctx.table_mask, L=L, F=F, BLOCK_N=BLOCK)
        return None, grad_table, None, None, None, None, None


def hashgrid_triton(x, table, scale, stride, dense, offset, table_mask: int) -> torch.Tensor:
    """x (N, 3) in [0, 1] on CUDA -> (N, L * F). Falls back to the reference when x needs gradients."""
    if x.requires_grad:
        return hashgrid_torch(x, table, scale, stride, dense, offset, table_mask)
    return _TritonHashGrid.apply(x, table, scale, stride, dense, offset, table_mask)


__all__ = ["hashgrid_triton"]
