"""CPU kernels of the hash grid (backend ``cpu``): ``hashgrid_cpu.cpp``, built and loaded by
:mod:`pipeline.kernels.cpu_kernels`.

Why a kernel: the eager reference materialises every corner's row and weight, ``(8, L, N)`` tensors,
and spends most of a training step gathering and scattering them; the kernel keeps a block of
points' corners in small arrays in L1. Same layout, hash and results as the reference (to float rounding;
``tests/kernels/test_hashgrid.py``). The table gradient splits the levels between threads, so it needs no
atomics and does not depend on the thread count. Where the kernels are unavailable (no compiler,
``RECON_CPU_KERNELS=0``) ``auto`` runs the PyTorch reference.
"""
from __future__ import annotations

import ctypes

import torch

from pipeline.kernels import cpu_kernels
from pipeline.kernels.cpu_kernels import available, unavailable_reason
from pipeline.kernels.hashgrid_torch import backward_create_graph, corner_indices_and_weights

_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_SUPPORTED_F = (1, 2, 4, 8)
COMPACT_BELOW = 0.9  # the backward gathers the points with a gradient when fewer than this share has one
_ptr = cpu_kernels.ptr


def supports(x: torch.Tensor, table: torch.Tensor) -> bool:
    """Whether these inputs can run on the kernels (CPU, float32/64 of one dtype, F in 1/2/4/8)."""
    return (x.device.type == "cpu" and table.device.type == "cpu" and x.dtype == table.dtype
            and x.dtype in _DTYPES and table.shape[1] in _SUPPORTED_F and available())


class _LevelArgs:
    """The per-level constants as the C functions take them (kept alive for the call)."""

    def __init__(self, scale, stride, offset, dense, table_mask: int):
        self.scale = scale.detach().to("cpu", torch.float32).to(torch.float64).contiguous()
        self.stride = stride.detach().to("cpu", torch.int32).contiguous()
        self.offset = offset.detach().to("cpu", torch.int32).contiguous()
        self.num_dense = int(dense.sum())
        self.levels = int(scale.shape[0])
        self.mask = int(table_mask)

    def tail(self, threads: int) -> tuple:
        return (_ptr(self.scale), _ptr(self.stride), _ptr(self.offset), ctypes.c_int32(self.num_dense),
                ctypes.c_int32(self.levels), ctypes.c_uint32(self.mask), ctypes.c_int32(threads))


def _call(name: str, dtype: torch.dtype, *args) -> None:
    fn = getattr(cpu_kernels.load(), f"hashgrid_{name}_{_DTYPES[dtype]}")
    if fn(*args) != 0:
        raise ValueError(f"hash grid CPU kernel {name}: unsupported features per level")


class _HashGridCPUFunction(torch.autograd.Function):
    """x (N, 3), table (R, F) -> (N, L * F). Saves only x and the table: the backward recomputes
    the corners (cheaper than storing 8 rows and weights per level and point)."""

    @staticmethod
    def forward(ctx, x, table, scale, stride, dense, offset, table_mask):
        lv = _LevelArgs(scale, stride, offset, dense, table_mask)
        x_c, table_c = x.detach().contiguous(), table.detach().contiguous()
        n, F = x_c.shape[0], table_c.shape[1]
        out = torch.empty(n, lv.levels * F, dtype=table_c.dtype)
        _call("forward", x_c.dtype, _ptr(x_c), _ptr(table_c), _ptr(out), ctypes.c_int64(n), ctypes.c_int32(F),
              *lv.tail(torch.get_num_threads()))
        ctx.levels = lv
        ctx.save_for_backward(x, table, scale, stride, dense, offset)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, table, scale, stride, dense, offset = ctx.saved_tensors
        lv = ctx.levels
        if torch.is_grad_enabled():  # create_graph: the reference's differentiable path
            idx = corner_indices_and_weights(x.detach(), scale, stride, dense, offset, lv.mask)[0]
            return backward_create_graph(ctx, grad_out, x, table, idx, scale)
        x_c, table_c = x.detach().contiguous(), table.detach().contiguous()
        grad = grad_out.to(table_c.dtype).contiguous()
        # points whose features get no gradient (samples hidden behind opaque ones, see
        # volume_rendering.gate_gradients) add nothing: when they are many, only the others run
        live = cpu_kernels.live_rows(grad)
        full_n = x_c.shape[0]
        if live.numel() < COMPACT_BELOW * full_n:
            x_c, grad = x_c.index_select(0, live), grad.index_select(0, live)
        n, F = x_c.shape[0], table_c.shape[1]
        threads = torch.get_num_threads()
        grad_x = grad_table = None
        if ctx.needs_input_grad[1]:
            grad_table = torch.empty_like(table_c)  # the kernel zeroes each level's rows in its own thread
            _call("table_grad", x_c.dtype, _ptr(x_c), _ptr(grad), _ptr(grad_table), ctypes.c_int64(table_c.shape[0]),
                  ctypes.c_int64(n), ctypes.c_int32(F), *lv.tail(threads))
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty_like(x_c)
            _call("input_grad", x_c.dtype, _ptr(x_c), _ptr(table_c), _ptr(grad), _ptr(grad_x), ctypes.c_int64(n),
                  ctypes.c_int32(F), *lv.tail(threads))
            if n < full_n:
                grad_x = torch.zeros(full_n, 3, dtype=grad_x.dtype).index_copy_(0, live, grad_x)
        return grad_x, grad_table, None, None, None, None, None


def hashgrid_cpu_input_grad(x, table, scale, stride, dense, offset, table_mask: int,
                            grad_out: torch.Tensor) -> torch.Tensor:
    """d<grad_out, features(x)>/dx (N, 3) for x (N, 3) in [0, 1], grad_out (N, L * F): the input
    gradient alone (first derivatives of a field's value at x, with no table gradient)."""
    lv = _LevelArgs(scale, stride, offset, dense, table_mask)
    x_c, table_c = x.detach().contiguous(), table.detach().contiguous()
    grad = grad_out.detach().to(table_c.dtype).contiguous()
    grad_x = torch.empty_like(x_c)
    _call("input_grad", x_c.dtype, _ptr(x_c), _ptr(table_c), _ptr(grad), _ptr(grad_x), ctypes.c_int64(x_c.shape[0]),
          ctypes.c_int32(table_c.shape[1]), *lv.tail(torch.get_num_threads()))
    return grad_x


def hashgrid_cpu(x, table, scale, stride, dense, offset, table_mask: int) -> torch.Tensor:
    """The ``cpu`` backend: x (N, 3) in [0, 1] -> (N, L * F); call :func:`supports` first."""
    return _HashGridCPUFunction.apply(x, table, scale, stride, dense, offset, table_mask)


__all__ = ["available", "supports", "hashgrid_cpu", "hashgrid_cpu_input_grad", "unavailable_reason"]
