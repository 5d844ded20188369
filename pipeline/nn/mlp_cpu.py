"""The fused CPU kernel of a ReLU MLP (``mlp_cpu.cpp``, built and loaded by
:mod:`pipeline.nn.cpu_kernels`): forward and backward of every layer in one call.

:func:`fused_relu_mlp` computes exactly what ``Linear -> ReLU -> ... -> Linear`` computes, skip
connections included (to float rounding: sums run in another order), and is differentiable in the
input, weights and biases. The input may come in parts (``[x_0, x_1]`` standing for their
concatenation, which is never built; only the parts that require grad get a gradient). A backward
with ``create_graph=True`` re-runs the layers as torch ops, so higher derivatives work too.
"""
from __future__ import annotations

import ctypes
from typing import Sequence

import torch

from pipeline.nn import cpu_kernels


# the backward gathers the rows with a gradient when fewer than this share of them has one (the
# gathering copies every saved activation once; it pays off well before half the rows drop out)
COMPACT_BELOW = 0.9


def supports(x: torch.Tensor | Sequence[torch.Tensor], weights: list[torch.Tensor]) -> bool:
    """Whether this input (or these input parts) and layers can run on the kernel: 2-d float32 CPU
    tensors with the same number of rows, no autocast."""
    parts = [x] if isinstance(x, torch.Tensor) else list(x)
    return (all(x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 2 for x in parts)
            and len({x.shape[0] for x in parts}) == 1
            and all(w.device.type == "cpu" and w.dtype == torch.float32 for w in weights)
            and not torch.is_autocast_enabled("cpu") and cpu_kernels.available())


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() if t is not None else None for t in tensors])


def _torch_mlp(parts: Sequence[torch.Tensor], params: tuple, skips: tuple) -> torch.Tensor:
    x = torch.cat(list(parts), -1) if len(parts) > 1 else parts[0]
    layers = len(params) // 2
    h = x
    for i in range(layers):
        if i in skips:
            h = torch.cat([h, x], -1)
        h = torch.nn.functional.linear(h, params[2 * i], params[2 * i + 1])
        if i < layers - 1:
            h = torch.relu(h)
    return h


class _Call:
    """The C arguments that describe one network and its input (kept alive for the calls)."""

    def __init__(self, parts, params, skips: tuple):
        self.params, self.skips = params, skips
        self.parts = [x.detach().contiguous() for x in parts]
        self.weights = [p.detach().contiguous() for p in params[0::2]]
        self.biases = [p.detach().contiguous() for p in params[1::2]]
        self.n = self.parts[0].shape[0]
        widths = [x.shape[1] for x in self.parts]
        self.dims = [sum(widths)] + [w.shape[0] for w in self.weights]
        self.layers = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):  # the kernel trusts these shapes
            expected = (self.dims[i] if i else 0) + (self.dims[0] if i == 0 or i in skips else 0)
            if w.dim() != 2 or w.shape[1] != expected or b.shape != (w.shape[0],):
                raise ValueError(f"fused MLP: layer {i} has weight {tuple(w.shape)} and bias {tuple(b.shape)}, "
                                 f"but its input has {expected} columns (input parts {widths}, skips {skips})")
        self.head = (_pointers(self.parts), (ctypes.c_int32 * len(widths))(*widths), ctypes.c_int32(len(widths)),
                     ctypes.c_int64(self.n), ctypes.c_int32(self.layers),
                     (ctypes.c_int32 * len(self.dims))(*self.dims),
                     (ctypes.c_int32 * self.layers)(*[int(i in skips) for i in range(self.layers)]),
                     _pointers(self.weights))

    def forward(self, keep_hidden: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        hidden = [torch.empty(self.n, d) for d in self.dims[1:-1]] if keep_hidden else []
        out = torch.empty(self.n, self.dims[-1])
        status = cpu_kernels.load().mlp_forward_f32(
            *self.head, _pointers(self.biases), _pointers(hidden) if hidden else None, cpu_kernels.ptr(out),
            ctypes.c_int32(torch.get_num_threads()))
        if status != 0:
            raise RuntimeError(f"fused MLP kernel: forward failed (status {status})")
        return out, hidden

    def backward(self, hidden, grad_out, wanted: list[bool]):
        """-> gradients of the parts (None where not wanted), of the weights and of the biases.

        Rows whose output gradient is all zero add nothing to any gradient (a renderer zeroes the
        samples hidden behind opaque ones, :func:`pipeline.nn.volume_rendering.gate_gradients`):
        when they are many, the others are gathered and only they run backward."""
        grad = grad_out.float().contiguous()
        live = cpu_kernels.live_rows(grad)
        if live.numel() < COMPACT_BELOW * self.n:
            return self._backward_rows(live, hidden, grad, wanted)
        return self._backward_all(hidden, grad, wanted)

    def _backward_all(self, hidden, grad: torch.Tensor, wanted: list[bool]):
        """The kernel's backward over every row; grad (n, out) float32, contiguous."""
        grad_parts = [torch.empty_like(x) if want else None for x, want in zip(self.parts, wanted)]
        grad_w = [torch.empty_like(w) for w in self.weights]
        grad_b = [torch.empty(w.shape[0]) for w in self.weights]
        status = cpu_kernels.load().mlp_backward_f32(
            *self.head, _pointers(hidden) if hidden else None, cpu_kernels.ptr(grad),
            _pointers(grad_parts) if any(wanted) else None, _pointers(grad_w), _pointers(grad_b),
            ctypes.c_int32(torch.get_num_threads()))
        if status != 0:
            raise RuntimeError(f"fused MLP kernel: backward failed (status {status})")
        return grad_parts, grad_w, grad_b

    def _backward_rows(self, rows: torch.Tensor, hidden, grad: torch.Tensor, wanted: list[bool]):
        """The backward of the rows ``rows`` (M,) alone; the other rows' input gradients are zero."""
        if rows.numel() == 0:
            return ([torch.zeros_like(x) if want else None for x, want in zip(self.parts, wanted)],
                    [torch.zeros_like(w) for w in self.weights], [torch.zeros(w.shape[0]) for w in self.weights])
        sub = _Call([x.index_select(0, rows) for x in self.parts], self.params, self.skips)
        sub_parts, grad_w, grad_b = sub._backward_all([h.index_select(0, rows) for h in hidden],
                                                      grad.index_select(0, rows), wanted)
        grad_parts = [torch.zeros_like(x).index_copy_(0, rows, g) if g is not None else None
                      for x, g in zip(self.parts, sub_parts)]
        return grad_parts, grad_w, grad_b


class _FusedReluMLP(torch.autograd.Function):
    """skips (layer indices whose input is [h, x]), the number of input parts, the parts (N, w_p),
    then weight (out, in) and bias (out,) per layer -> (N, out_last)."""

    @staticmethod
    def forward(ctx, skips, num_parts, *tensors):
        parts, params = tensors[:num_parts], tensors[num_parts:]
        call = _Call(parts, params, skips)
        out, hidden = call.forward(keep_hidden=True)
        ctx.call, ctx.skips, ctx.num_parts = call, skips, num_parts
        ctx.save_for_backward(*parts, *params, *hidden)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        k, layers = ctx.num_parts, ctx.call.layers
        parts, params, hidden = saved[:k], saved[k:k + 2 * layers], list(saved[k + 2 * layers:])
        needs = ctx.needs_input_grad[2:]  # the parts, then the parameters
        if torch.is_grad_enabled():  # create_graph: differentiate the same layers as torch ops
            inputs = [t for t, need in zip((*parts, *params), needs) if need]
            with torch.enable_grad():
                out = _torch_mlp(parts, params, ctx.skips)
            grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True))
            return (None, None, *(next(grads) if need else None for need in needs))
        grad_parts, grad_w, grad_b = ctx.call.backward(hidden, grad_out, list(needs[:k]))
        grads = list(grad_parts)
        for w, b in zip(grad_w, grad_b):
            grads += [w, b]
        return (None, None, *(g if need else None for g, need in zip(grads, needs)))


def fused_relu_mlp(x: torch.Tensor | Sequence[torch.Tensor], weights: list[torch.Tensor],
                   biases: list[torch.Tensor], skips: tuple[int, ...] = ()) -> torch.Tensor:
    """x (N, in), or parts (N, w_p) whose concatenation is the input -> (N, out):
    ``Linear(weights[i], biases[i])`` with ReLU between the layers (not after the last); layer
    ``i in skips`` (not 0) takes ``[h, x]``, as :class:`pipeline.nn.mlp.MLP` does. Call
    :func:`supports` first."""
    if 0 in skips:
        raise ValueError("the first layer cannot take a skip connection (its input is x already)")
    parts = [x] if isinstance(x, torch.Tensor) else list(x)
    params = []
    for w, b in zip(weights, biases):
        params += [w, b]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (*parts, *params))):
        return _Call(parts, params, tuple(skips)).forward(keep_hidden=False)[0]  # rendering: nothing to keep
    return _FusedReluMLP.apply(tuple(skips), len(parts), *parts, *params)


__all__ = ["supports", "fused_relu_mlp"]
