"""Exact reversibility: how exactly a momentum stack runs backwards, and what it costs.

Three things are measured on one toy problem (a stack of independent residual functions
f_n = Linear(d, hidden) - Tanh - Linear(hidden, d)):

* :func:`naive_inversion_error`: the closed form of Eq. 3 (``net.inverse(x_L, v_L)``) in
  float32 or float64, whose rounding errors are amplified by about 1/gamma per layer;
* :func:`exact_inversion`: our fixed-point path (``net.inverse(state)``), which must give
  back the input bit for bit at any depth;
* :func:`information_bits`: what that exactness costs, the information buffer's content
  in bits, to compare with the paper's log2(1/gamma) bits per element per layer.

:func:`gradient_relative_error` compares the memory-free gradients with ordinary autograd.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from .. import exact
from ..momentum import MomentumNet
from .common import relative_error

#: bits of the empty (default, wide) buffer's live state per element: it starts at 2**30
EMPTY_STATE_BITS = float(exact.WIDE_LAYOUT[0] - exact.WIDE_LAYOUT[1])


def naive_inversion_error(functions, gamma: float, x0: torch.Tensor,
                          dtype: torch.dtype = torch.float32) -> float:
    """Relative error on x_0 after a plain forward and the closed-form inverse (Eq. 3),
    ``net.inverse(x_L, v_L)``, both in ``dtype`` with the same (rounded) gamma.

    ``functions`` must already be in ``dtype`` (see :func:`functions_in`).
    """
    net = MomentumNet(list(functions), gamma, memory_efficient=False)
    x = x0.to(dtype)
    with torch.no_grad():
        x_L, v_L = net.forward_state(x)
        x_back, _ = net.inverse(x_L, v_L)
    return relative_error(x_back, x)


def functions_in(functions, dtype: torch.dtype) -> list:
    """Copies of ``functions`` in ``dtype`` (the originals are left as they are)."""
    return [copy.deepcopy(f).to(dtype) for f in functions]


@dataclass
class ExactInversion:
    """Outcome of one exact forward + inverse."""

    bit_exact: bool  # x_0 and v_0 = 0 came back bit for bit
    max_abs_error: float
    buffer: exact.InformationBuffer  # the information buffer after the forward pass
    elements: int
    depth: int

    @property
    def bits(self) -> float:
        return information_bits(self.buffer)

    @property
    def bits_per_element_per_layer(self) -> float:
        return self.bits / (self.elements * self.depth)


def exact_inversion(functions, gamma: float, x0: torch.Tensor) -> ExactInversion:
    """Forward through the memory-free stack, then ``net.inverse(state)``; compare with x_0."""
    net = MomentumNet(list(functions), gamma, memory_efficient=True)
    with torch.no_grad():
        state = net.forward_state(x0)
        x_back, v_back = net.inverse(state)
    err = float((x_back.to(torch.float64) - x0.to(torch.float64)).abs().max())
    ok = torch.equal(x_back, x0) and torch.equal(v_back, torch.zeros_like(x0))
    return ExactInversion(bit_exact=bool(ok), max_abs_error=err, buffer=state.tape.buffer,
                          elements=x0.numel(), depth=len(functions))


def information_bits(buffer: exact.InformationBuffer) -> float:
    """Information held by the buffer, in bits, above the empty buffer's.

    ``buffer.word_bits`` (15, or 32 for gamma < 2.3e-5) per spilled word, plus log2 of
    each element's live state minus the bits of the empty state (``buffer.low``).
    """
    words = sum(int(w.numel()) for w in buffer.words)
    live = float(torch.log2(buffer.state.to(torch.float64)).sum())
    return buffer.word_bits * words + live - math.log2(buffer.low) * buffer.state.numel()


def paper_bits(gamma: float) -> float:
    """log2(1/gamma) for the gamma the stack actually uses (rounded to n / 2**16)."""
    return math.log2(1.0 / exact.rounded_gamma(gamma))


def gradient_relative_error(functions, gamma: float, x0: torch.Tensor) -> float:
    """Relative error of the memory-free gradients (input and every parameter, all
    concatenated) against ordinary autograd through the same stack; loss mean(x_L**2)."""
    grads = []
    for memory_efficient in (True, False):
        net = MomentumNet(list(functions), gamma, memory_efficient=memory_efficient)
        x = x0.detach().clone().requires_grad_(True)
        loss = net(x).pow(2).mean()
        g = torch.autograd.grad(loss, [x, *net.parameters()])
        grads.append(torch.cat([t.reshape(-1) for t in g]))
    return relative_error(grads[0], grads[1])


def inversion_sweep(functions, gammas, depths, x0: torch.Tensor, exact_depths=None) -> list:
    """Rows (dicts) of reconstruction errors for every gamma and depth.

    Each row: gamma, depth, ``naive float32`` and ``naive float64`` (relative error on
    x_0 of the closed-form inverse), and, at the depths in ``exact_depths`` (default: all),
    ``exact bit for bit`` (bool), ``exact max abs error`` and the information buffer's
    ``bits/element/layer`` and ``buffer bytes``. The stack of depth L is the first L of
    ``functions`` (float32), so every depth shares its first layers.
    """
    f32, f64 = functions_in(functions, torch.float32), functions_in(functions, torch.float64)
    exact_depths = set(depths if exact_depths is None else exact_depths)
    rows = []
    for gamma in gammas:
        for depth in depths:
            row = {"gamma": gamma, "depth": depth,
                   "naive float32": naive_inversion_error(f32[:depth], gamma, x0, torch.float32),
                   "naive float64": naive_inversion_error(f64[:depth], gamma, x0, torch.float64)}
            if depth in exact_depths:
                ex = exact_inversion(f32[:depth], gamma, x0.to(torch.float32))
                row.update({"exact bit for bit": ex.bit_exact, "exact max abs error": ex.max_abs_error,
                            "bits/element/layer": ex.bits_per_element_per_layer,
                            "buffer bytes": ex.buffer.nbytes()})
            rows.append(row)
    return rows
