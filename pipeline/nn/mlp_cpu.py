"""The fused CPU kernel of a ReLU MLP (``mlp_cpu.cpp``, built and loaded by
:mod:`pipeline.nn.cpu_kernels`): forward and backward of every layer in one call.

:func:`fused_relu_mlp` computes exactly what ``Linear -> ReLU -> ... -> Linear`` computes, skip
connections included (to float rounding: sums run in another order) and is differentiable in the input, weights and biases. A
backward with ``create_graph=True`` re-runs the layers as torch ops, so higher derivatives work too.
"""
from __future__ import annotations

import ctypes

import torch

from pipeline.nn import cpu_kernels


def supports(x: torch.Tensor, weights: list[torch.Tensor]) -> bool:
    """Whether this input and these layers can run on the kernel: float32 on the CPU, no autocast."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2
            and all(w.device.type == "cpu" and w.dtype == torch.float32 for w in weights)
            and not torch.is_autocast_enabled("cpu") and cpu_kernels.available())


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() if t is not None else None for t in tensors])


def _torch_mlp(x: torch.Tensor, params: tuple, skips: tuple) -> torch.Tensor:
    layers = len(params) // 2
    h = x
    for i in range(layers):
        if i in skips:
            h = torch.cat([h, x], -1)
        h = torch.nn.functional.linear(h, params[2 * i], params[2 * i + 1])
        if i < layers - 1:
            h = torch.relu(h)
    return h


def _forward(x: torch.Tensor, params, skips: tuple, keep_hidden: bool):
    """The kernel's forward: (out, hidden activations or [], dims, skip flags)."""
    weights = [p.detach().contiguous() for p in params[0::2]]
    biases = [p.detach().contiguous() for p in params[1::2]]
    x_c = x.detach().contiguous()
    n = x_c.shape[0]
    dims = [weights[0].shape[1]] + [w.shape[0] for w in weights]
    dims_c = (ctypes.c_int32 * len(dims))(*dims)
    skip_flags = (ctypes.c_int32 * len(weights))(*[int(i in skips) for i in range(len(weights))])
    hidden = [torch.empty(n, d) for d in dims[1:-1]] if keep_hidden else []
    out = torch.empty(n, dims[-1])
    status = cpu_kernels.load().mlp_forward_f32(
        cpu_kernels.ptr(x_c), ctypes.c_int64(n), ctypes.c_int32(len(weights)), dims_c, skip_flags, _pointers(weights),
        _pointers(biases), _pointers(hidden) if hidden else None, cpu_kernels.ptr(out),
        ctypes.c_int32(torch.get_num_threads()))
    if status != 0:
        raise RuntimeError(f"fused MLP kernel: forward failed (status {status})")
    return out, hidden, dims, skip_flags


class _FusedReluMLP(torch.autograd.Function):
    """skips (layer indices whose input is [h, x]), x (N, in), then weight (out, in) and bias (out,)
    per layer -> (N, out_last)."""

    @staticmethod
    def forward(ctx, skips, x, *params):
        out, hidden, ctx.dims, ctx.skip_flags = _forward(x, params, skips, keep_hidden=True)
        ctx.skips = skips
        ctx.save_for_backward(x, *params, *hidden)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        layers = len(ctx.dims) - 1
        x, params, hidden = saved[0], saved[1:1 + 2 * layers], list(saved[1 + 2 * layers:])
        needs = ctx.needs_input_grad[1:]  # x, then the parameters
        if torch.is_grad_enabled():  # create_graph: differentiate the same layers as torch ops
            inputs = [t for t, need in zip((x, *params), needs) if need]
            with torch.enable_grad():
                out = _torch_mlp(x, params, ctx.skips)
            grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True))
            return (None, *(next(grads) if need else None for need in needs))
        weights = [p.detach().contiguous() for p in params[0::2]]
        x_c, grad = x.detach().contiguous(), grad_out.float().contiguous()
        n = x_c.shape[0]
        grad_x = torch.empty_like(x_c) if needs[0] else None
        grad_w = [torch.empty_like(w) for w in weights]
        grad_b = [torch.empty(w.shape[0]) for w in weights]
        dims_c = (ctypes.c_int32 * len(ctx.dims))(*ctx.dims)
        status = cpu_kernels.load().mlp_backward_f32(
            cpu_kernels.ptr(x_c), ctypes.c_int64(n), ctypes.c_int32(layers), dims_c, ctx.skip_flags, _pointers(weights),
            _pointers(hidden) if hidden else None, cpu_kernels.ptr(grad),
            cpu_kernels.ptr(grad_x) if grad_x is not None else None, _pointers(grad_w), _pointers(grad_b),
            ctypes.c_int32(torch.get_num_threads()))
        if status != 0:
            raise RuntimeError(f"fused MLP kernel: backward failed (status {status})")
        grads = [grad_x]
        for w, b in zip(grad_w, grad_b):
            grads += [w, b]
        return (None, *(g if need else None for g, need in zip(grads, needs)))


def fused_relu_mlp(x: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor],
                   skips: tuple[int, ...] = ()) -> torch.Tensor:
    """x (N, in) -> (N, out): ``Linear(weights[i], biases[i])`` with ReLU between the layers (not after
    the last); layer ``i in skips`` (not 0) takes ``[h, x]``, as :class:`pipeline.nn.mlp.MLP` does.
    Call :func:`supports` first."""
    if 0 in skips:
        raise ValueError("the first layer cannot take a skip connection (its input is x already)")
    params = []
    for w, b in zip(weights, biases):
        params += [w, b]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))):
        return _forward(x, params, tuple(skips), keep_hidden=False)[0]  # rendering: nothing to keep
    return _FusedReluMLP.apply(tuple(skips), x, *params)


__all__ = ["supports", "fused_relu_mlp"]
