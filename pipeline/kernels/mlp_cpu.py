"""The fused CPU kernel of a ReLU MLP (``mlp_cpu.cpp``, built and loaded by
:mod:`pipeline.kernels.cpu_kernels`): forward and backward of every layer in one call.

:func:`fused_relu_mlp` computes exactly what ``Linear -> ReLU -> ... -> Linear`` computes, skip
connections included (to float rounding: sums run in another order), and is differentiable in the
input, weights and biases. The input may come in parts (``[x_0, x_1]`` standing for their
concatenation, which is never built; only the parts that require grad get a gradient). A row term
``(values (R, width), index (N,))`` adds ``values[index]`` to the first layer's output before its
ReLU (the colour MLP's directions, one product per ray instead of per sample). A backward with
``create_graph=True`` re-runs the layers as torch ops, so higher derivatives work too.
"""
from __future__ import annotations

import ctypes
from typing import Sequence

import torch

from pipeline.kernels import cpu_kernels


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


def _pointer(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else cpu_kernels.ptr(t)


def _pointers(tensors) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() if t is not None else None for t in tensors])


def _torch_mlp(parts: Sequence[torch.Tensor], params: tuple, skips: tuple, term=None) -> torch.Tensor:
    x = torch.cat(list(parts), -1) if len(parts) > 1 else parts[0]
    layers = len(params) // 2
    h = x
    for i in range(layers):
        if i in skips:
            h = torch.cat([h, x], -1)
        h = torch.nn.functional.linear(h, params[2 * i], params[2 * i + 1])
        if i == 0 and term is not None:
            h = h + term[0][term[1]]
        if i < layers - 1:
            h = torch.relu(h)
    return h


class _Call:
    """The C arguments that describe one network and its input (kept alive for the calls)."""

    def __init__(self, parts, params, skips: tuple, term=None):
        self.params, self.skips = params, skips
        self.parts = [x.detach().contiguous() for x in parts]
        # the row term: values (R, width) and index (N,) int64, or None
        self.term = None if term is None else (term[0].detach().contiguous(), term[1].contiguous())
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
        values, index = self.term if self.term is not None else (None, None)
        status = cpu_kernels.load().mlp_forward_f32(
            *self.head, _pointers(self.biases), _pointers(hidden) if hidden else None, cpu_kernels.ptr(out),
            ctypes.c_int32(torch.get_num_threads()), _pointer(values), _pointer(index))
        if status != 0:
            raise RuntimeError(f"fused MLP kernel: forward failed (status {status})")
        return out, hidden

    def backward(self, hidden, grad_out, wanted: list[bool]):
        """-> gradients of the parts (None where not wanted), of the weights, of the biases and of the
        row term's values (None without one).

        Rows whose output gradient is all zero add nothing to any gradient (a renderer zeroes the
        samples hidden behind opaque ones, :func:`pipeline.models.components.volume_rendering.gate_gradients`):
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
        index, grad_term = (None, None) if self.term is None else (self.term[1], torch.empty_like(self.term[0]))
        status = cpu_kernels.load().mlp_backward_f32(
            *self.head, _pointers(hidden) if hidden else None, cpu_kernels.ptr(grad),
            _pointers(grad_parts) if any(wanted) else None, _pointers(grad_w), _pointers(grad_b),
            ctypes.c_int32(torch.get_num_threads()), _pointer(index),
            ctypes.c_int64(0 if grad_term is None else grad_term.shape[0]), _pointer(grad_term))
        if status != 0:
            raise RuntimeError(f"fused MLP kernel: backward failed (status {status})")
        return grad_parts, grad_w, grad_b, grad_term

    def _backward_rows(self, rows: torch.Tensor, hidden, grad: torch.Tensor, wanted: list[bool]):
        """The backward of the rows ``rows`` (M,) alone; the other rows' input gradients are zero."""
        if rows.numel() == 0:
            return ([torch.zeros_like(x) if want else None for x, want in zip(self.parts, wanted)],
                    [torch.zeros_like(w) for w in self.weights], [torch.zeros(w.shape[0]) for w in self.weights],
                    None if self.term is None else torch.zeros_like(self.term[0]))
        term = None if self.term is None else (self.term[0], self.term[1].index_select(0, rows))
        sub = _Call([x.index_select(0, rows) for x in self.parts], self.params, self.skips, term)
        sub_parts, grad_w, grad_b, grad_term = sub._backward_all([h.index_select(0, rows) for h in hidden],
                                                                 grad.index_select(0, rows), wanted)
        grad_parts = [torch.zeros_like(x).index_copy_(0, rows, g) if g is not None else None
                      for x, g in zip(self.parts, sub_parts)]
        return grad_parts, grad_w, grad_b, grad_term


class _FusedReluMLP(torch.autograd.Function):
    """skips (layer indices whose input is [h, x]), the number of input parts, whether a row term
    comes, the parts (N, w_p), the row term's values (R, width) and index (N,) when it comes, then
    weight (out, in) and bias (out,) per layer -> (N, out_last)."""

    @staticmethod
    def forward(ctx, skips, num_parts, has_term, *tensors):
        parts = tensors[:num_parts]
        term = tuple(tensors[num_parts:num_parts + 2]) if has_term else None
        params = tensors[num_parts + (2 if has_term else 0):]
        call = _Call(parts, params, skips, term)
        out, hidden = call.forward(keep_hidden=True)
        ctx.call, ctx.skips, ctx.num_parts, ctx.has_term = call, skips, num_parts, has_term
        ctx.save_for_backward(*parts, *(term or ()), *params, *hidden)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        k, layers = ctx.num_parts, ctx.call.layers
        t = 2 if ctx.has_term else 0
        parts, term = saved[:k], tuple(saved[k:k + t]) or None
        params, hidden = saved[k + t:k + t + 2 * layers], list(saved[k + t + 2 * layers:])
        needs = ctx.needs_input_grad[3:]  # the parts, the term's values and index, then the parameters
        if torch.is_grad_enabled():  # create_graph: differentiate the same layers as torch ops
            inputs = [x for x, need in zip((*parts, *(term or ()), *params), needs) if need]
            with torch.enable_grad():
                out = _torch_mlp(parts, params, ctx.skips, term)
            grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True))
            return (None, None, None, *(next(grads) if need else None for need in needs))
        grad_parts, grad_w, grad_b, grad_term = ctx.call.backward(hidden, grad_out, list(needs[:k]))
        grads = list(grad_parts) + ([grad_term, None] if term is not None else [])
        for w, b in zip(grad_w, grad_b):
            grads += [w, b]
        return (None, None, None, *(g if need else None for g, need in zip(grads, needs)))


def fused_relu_mlp(x: torch.Tensor | Sequence[torch.Tensor], weights: list[torch.Tensor],
                   biases: list[torch.Tensor], skips: tuple[int, ...] = (),
                   row_term: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """x (N, in), or parts (N, w_p) whose concatenation is the input -> (N, out):
    ``Linear(weights[i], biases[i])`` with ReLU between the layers (not after the last); layer
    ``i in skips`` (not 0) takes ``[h, x]``, as :class:`pipeline.models.components.mlp.MLP` does. row_term:
    ``(values (R, width), index (N,) int64)``, ``values[index]`` added to the first layer's output
    before its ReLU; width (the first layer's) a multiple of 8. Call :func:`supports` first."""
    if 0 in skips:
        raise ValueError("the first layer cannot take a skip connection (its input is x already)")
    parts = [x] if isinstance(x, torch.Tensor) else list(x)
    term = ()
    if row_term is not None:
        values, index = row_term
        width = weights[0].shape[0]
        if values.dim() != 2 or values.shape[1] != width or width % 8 or values.dtype != torch.float32:
            raise ValueError(f"fused MLP: the row term must be float32 (R, {width}) with {width} a multiple of 8, "
                             f"got {values.dtype} {tuple(values.shape)}")
        index = index.to(torch.int64)
        bounds = torch.aminmax(index) if index.numel() else None  # one pass over the samples
        if index.shape != (parts[0].shape[0],) or (bounds is not None and not (
                0 <= int(bounds.min) and int(bounds.max) < values.shape[0])):
            raise ValueError(f"fused MLP: the row term's index must be ({parts[0].shape[0]},) with values in "
                             f"[0, {values.shape[0]})")
        term = (values, index)
    params = []
    for w, b in zip(weights, biases):
        params += [w, b]
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in (*parts, *term[:1], *params))):
        # rendering: nothing to keep
        return _Call(parts, params, tuple(skips), term or None).forward(keep_hidden=False)[0]
    return _FusedReluMLP.apply(tuple(skips), len(parts), bool(term), *parts, *term, *params)


__all__ = ["supports", "fused_relu_mlp"]
