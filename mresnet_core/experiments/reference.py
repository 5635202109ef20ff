"""Driving the authors' reference package ``momentumnet`` (0.10), when it is installed.

The package is optional (``pip install momentumnet==0.10 --no-deps``); every function
here raises :class:`ReferenceUnavailable` without it, and :func:`load` returns None.

What the reference does ([ref], ``momentumnet/momentum_net.py`` and
``exact_rep_pytorch.py``): with ``use_backprop=False`` its forward keeps v in int64
fixed point with 52 fractional bits (``TorchExactRep``), multiplies it by gamma as the
fraction n/d with d = 2**16 and n = int(gamma d + 1), pushing remainders into one int64
per element (``BitStore``), and keeps x in floating point (``x = x + v.val``). It
reconstructs the activations only inside ``backward`` (``x = x - v.val``, then
``v -= (1 - gamma) f(x)``, ``v /= gamma``): there is no public inverse. So

* :func:`reconstruction_error` reads the x_0 its backward pass rebuilds (the input the
  first residual function sees during backward) and compares it with the true x_0;
* :func:`gradient_relative_error` compares its memory-free gradients with its own
  ``use_backprop=True`` model (ordinary autograd through the same functions);
* :func:`buffer_overflow_depth` and :func:`fixed_point_value` drive its ``TorchExactRep``
  directly to show where its int64 buffer and its int64 value overflow.
"""
from __future__ import annotations

import importlib
import math

import torch

from .common import relative_error

INT64_MAX = 2**63 - 1


class ReferenceUnavailable(ImportError):
    """The reference package ``momentumnet`` is not installed."""


def load():
    """The ``momentumnet`` module, or None when it is not installed."""
    try:
        return importlib.import_module("momentumnet")
    except ImportError:
        return None


def version() -> str | None:
    mod = load()
    return None if mod is None else getattr(mod, "__version__", "unknown")


def _require():
    mod = load()
    if mod is None:
        raise ReferenceUnavailable("the reference package momentumnet is not installed: "
                                   "pip install momentumnet==0.10 --no-deps")
    return mod


def _exact_rep():
    _require()
    return importlib.import_module("momentumnet.exact_rep_pytorch")


def reference_fraction(gamma: float) -> tuple:
    """(n, d) of the fraction the reference multiplies v by (its float_to_rational)."""
    d = 2**16 // int(gamma + 1)
    return int(gamma * d + 1), d


def reconstruction_error(functions, gamma: float, x0: torch.Tensor) -> float:
    """Relative error of the x_0 that the reference's backward pass rebuilds.

    Runs ``MomentumNet(functions, gamma, use_backprop=False)`` forward and backward
    (loss: sum of the output); the input of ``functions[0]`` during backward is its
    reconstruction of x_0. ``functions[0]`` must not be used again later in the stack.
    Returns inf when the reconstruction is not finite.
    """
    mod = _require()
    functions = list(functions)
    if any(f is functions[0] for f in functions[1:]):
        raise ValueError("functions[0] is shared with a later layer: its input during "
                         "backward would not be the reconstructed x_0 alone")
    net = mod.MomentumNet(functions, gamma, use_backprop=False)
    seen = []
    handle = functions[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    try:
        x = x0.detach().clone().requires_grad_(True)
        out = net(x)
        torch.autograd.grad(out.sum(), x)
    finally:
        handle.remove()
    if len(seen) != 2:
        raise RuntimeError(f"expected functions[0] to run once forward and once backward, got {len(seen)}")
    return relative_error(seen[1], x0)


def _grads(net, x0, loss):
    x = x0.detach().clone().requires_grad_(True)
    g = torch.autograd.grad(loss(net(x)), [x, *net.parameters()])
    return torch.cat([t.reshape(-1) for t in g])


def gradient_relative_error(functions, gamma: float, x0: torch.Tensor,
                            loss=lambda y: y.pow(2).mean()) -> float:
    """Relative error of the reference's memory-free gradients (input and all parameters,
    concatenated) against its ``use_backprop=True`` model on the same functions."""
    mod = _require()
    free = _grads(mod.MomentumNet(list(functions), gamma, use_backprop=False), x0, loss)
    plain = _grads(mod.MomentumNet(list(functions), gamma, use_backprop=True), x0, loss)
    return relative_error(free, plain)


def buffer_overflow_depth(gamma: float, max_depth: int = 10_000, elements: int = 1000,
                          seed: int = 0) -> int | None:
    """First layer whose velocity update overflows the reference's int64 buffer.

    Runs the reference's own forward arithmetic on v (``v *= gamma; v += (1 - gamma) f``
    with f ~ N(0, 1)) and, before each multiplication, checks whether its push
    (``store = store * d + r``) would exceed the int64 range for some element: the
    reference does not check, the value wraps silently. None if no overflow by max_depth.
    """
    er = _exact_rep()
    n, d = reference_fraction(gamma)
    gen = torch.Generator().manual_seed(seed)
    v = er.TorchExactRep(torch.zeros(elements, dtype=torch.float32))
    limit = (INT64_MAX - (d - 1)) // d
    for layer in range(1, max_depth + 1):
        if int(v.aux.store.max()) > limit:
            return layer
        v *= gamma
        v += (1 - gamma) * torch.randn(elements, generator=gen)
    return None


def predicted_overflow_depth(gamma: float) -> float:
    """The same depth from the bit count: each layer adds log2(d/n) bits to a buffer that
    must still take 16 more bits (log2 d) within 63."""
    n, d = reference_fraction(gamma)
    return (63 - math.log2(d)) / math.log2(d / n) + 1


def fixed_point_value(value: float) -> float:
    """What the reference's fixed point (int64, 52 fractional bits) holds for ``value``."""
    er = _exact_rep()
    return float(er.TorchExactRep(torch.tensor([float(value)], dtype=torch.float64)).val)
