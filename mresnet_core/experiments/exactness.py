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

    ``buffer.word_bits`` per spilled word (8; 32 for gamma < 2**-8), plus log2 of each
    element's live state minus log2 of the empty state (``buffer.low``, 2**23).
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


def plot_inversion_errors(sweep, gammas, ref_sweep=None, floor: float = 1e-19, ceiling: float = 1e6):
    """Relative error on x_0 against depth: naive float32 and float64 (Eq. 3), and the
    reference package when ``ref_sweep`` is given; our exact inverse (error 0) drawn as
    squares at the floor, errors beyond ``ceiling`` or non-finite as crosses at the top."""
    import matplotlib.pyplot as plt
    import numpy as np

    panels = [("naive float32 (Eq. 3)", sweep, "naive float32"), ("naive float64 (Eq. 3)", sweep, "naive float64")]
    if ref_sweep is not None:
        panels.append(("reference momentumnet 0.10 (float32)", ref_sweep, "reference"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.2), sharey=True)
    colors = dict(zip(gammas, plt.cm.viridis(np.linspace(0, 0.9, len(gammas)))))
    for ax, (title, data, col) in zip(axes, panels):
        for g in gammas:
            s = data[data.gamma == g]
            err = s[col].to_numpy(dtype=float)
            shown = np.clip(np.where(np.isfinite(err), err, ceiling), floor, ceiling)
            ax.plot(s.depth, shown, "o-", ms=3, color=colors[g], label=f"$\\gamma$ = {g}")
            over = err >= ceiling
            ax.plot(s.depth[over], shown[over], "x", ms=7, color=colors[g])
        ex = sweep[sweep["exact bit for bit"]]
        ax.plot(ex.depth.unique(), np.full(ex.depth.nunique(), 3 * floor), "s", ms=5, color="black",
                label="ours, exact: error 0\n(bit for bit, every $\\gamma$)")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="100 %: useless")
        ax.set(xscale="log", yscale="log", ylim=(floor, ceiling * 10), xlabel="depth $L$", title=title)
    axes[0].set_ylabel("relative error on $x_0$ after inverting $L$ layers")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.text(0.5, -0.03, f"x: error >= {ceiling:.0e} or inf (drawn at the top); squares: our exact inverse, "
             "error exactly 0 (drawn at the floor)", ha="center", fontsize=8)
    fig.tight_layout()
    return fig


def plot_buffer_cost(sweep, bits, gammas, elements: int):
    """(left) buffer bits per element per layer against log2(1/gamma); (right) buffer bytes
    per element against depth, next to float32 activations (4 bytes per layer)."""
    import matplotlib.pyplot as plt
    import numpy as np

    colors = dict(zip(gammas, plt.cm.viridis(np.linspace(0, 0.9, len(gammas)))))
    depths = sorted(sweep.depth.unique())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    lg = np.array([paper_bits(g) for g in gammas])
    measured = bits["this run: bits/element/layer"].to_numpy()
    ax1.plot([0.01, 10], [0.01, 10], color="grey", lw=1, label="paper: $\\log_2(1/\\gamma)$")
    ax1.plot(lg, measured, "o", color="C1", label=f"this run, depth {max(depths)}")
    for g, x_, y_ in zip(gammas, lg, measured):
        ax1.annotate(f"$\\gamma$ = {g}", (x_, y_), textcoords="offset points", xytext=(8, -12), fontsize=8)
    ax1.set(xscale="log", yscale="log", xlabel="$\\log_2(1/\\gamma)$", ylabel="buffer bits per element per layer",
            title="information buffer cost")
    ax1.legend()
    for g in gammas:
        s = sweep[sweep.gamma == g]
        ax2.plot(s.depth, s["buffer bytes"] / elements, "o-", ms=3, color=colors[g], label=f"$\\gamma$ = {g}")
    ax2.plot(depths, [4 * L for L in depths], "k--", lw=1, label="float32 activations\n(4 bytes x depth)")
    ax2.set(xscale="log", yscale="log", xlabel="depth $L$", ylabel="bytes per element",
            title="buffer size (words + live state) vs depth")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig
