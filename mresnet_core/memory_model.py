"""Activation memory of a momentum stack computed from shapes alone (Figure 2's theory).

What one forward pass keeps for backward, in bytes, for the toy stack of the paper's
Figure 2: every layer applies the same kind of residual function
``f = Linear(dim, hidden) - Tanh - Linear(hidden, dim)`` to a ``(batch, dim)`` input.
These are the numbers :func:`mresnet_core.memory.saved_tensor_bytes` measures
(parameters excluded); ``tests/test_memory_model.py`` checks them against it exactly.

Ordinary backprop (``MomentumNet(..., memory_efficient=False)``), per layer:

* the first ``Linear`` saves its input x_n (needed for the weight gradient):
  ``batch * dim`` values;
* ``Tanh`` saves its output (its derivative is ``1 - tanh**2``), which the second
  ``Linear`` saves again as its input: one storage, ``batch * hidden`` values;
* the momentum update ``v = gamma v + (1 - gamma) f``, ``x = x + v`` multiplies by
  Python scalars and adds: it saves nothing. Weights are parameters, not activations.

So ``depth * batch * (dim + hidden) * itemsize`` bytes, whatever gamma (a ResNet,
gamma = 0, saves the same).

Memory-free backward (``memory_efficient=True``, ``exact.py``), independent of depth
apart from the information buffer:

* x_L and v_L in int64 fixed point: ``2 * 8`` bytes per element;
* the information buffer: one int64 state per element, plus the 32-bit words it spills.
  Each exact multiplication by gamma = n / 2**16 pushes log2(2**16 / n) bits per element
  into the state; the state starts at 2**30 and spills its low 32 bits once it would pass
  about gamma * 2**62, so after ``depth`` layers each element has spilled
  ``floor(depth * log2(1 / gamma) / 32)`` words. That count is exact except within about
  a bit of a word boundary, where rounding inside the state decides, element by element,
  whether the spill happens at this layer or the next.

The paper's asymptotic cost, ``depth * log2(1 / gamma)`` bits per element, is
:func:`information_bits`. With Figure 2's schedule gamma = 1 - 1/(50 depth) it is
``depth * log2(1 / gamma) ~ 1 / (50 ln 2) ~ 0.03`` bits per element at every depth, so
no word ever spills: the buffer is the 64-bit state alone.
"""
from __future__ import annotations

import math

from . import exact

__all__ = [
    "INT64_BYTES",
    "WORD_BYTES",
    "figure2_gamma",
    "toy_ordinary_saved_bytes",
    "information_bits",
    "buffer_words_per_element",
    "information_buffer_bytes",
    "memory_free_saved_bytes",
    "crossover_depth",
]

INT64_BYTES = 8
WORD_BYTES = exact.WORD_BITS // 8


def figure2_gamma(depth: int, scale: float = 50.0) -> float:
    """Figure 2's momentum at ``depth`` layers: gamma = 1 - 1 / (scale * depth).

    Depth 0 (no layer) uses depth 1's value, where the formula is undefined.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return 1.0 - 1.0 / (scale * max(depth, 1))


def toy_ordinary_saved_bytes(depth: int, batch: int, dim: int, hidden: int,
                             itemsize: int = 4) -> int:
    """Bytes ordinary backprop saves for the toy stack: ``depth * batch * (dim + hidden) * itemsize``.

    Per layer: the first Linear's input (batch x dim) and the Tanh output that the second
    Linear saves again (batch x hidden, one storage). Independent of gamma.
    """
    return depth * batch * (dim + hidden) * itemsize


def _bits_per_layer(gamma: float) -> float:
    n = exact.gamma_numerator(gamma)
    exact.check_invertible(n)
    return math.log2(exact.GAMMA_DENOMINATOR / n)


def information_bits(depth: int, gamma: float) -> float:
    """Bits per element the exact arithmetic must remember after ``depth`` layers.

    ``depth * log2(1 / gamma)`` with gamma rounded as the network rounds it (n / 2**16).
    """
    return depth * _bits_per_layer(gamma)


def buffer_words_per_element(depth: int, gamma: float) -> int:
    """32-bit words each element has spilled after ``depth`` layers: floor(bits / 32).

    Exact unless ``information_bits(depth, gamma)`` lies within about a bit of a multiple
    of 32 (see the module docstring).
    """
    return int(math.floor(information_bits(depth, gamma) / exact.WORD_BITS))


def information_buffer_bytes(depth: int, numel: int, gamma: float) -> int:
    """Bytes of the information buffer: the int64 state plus the spilled 32-bit words."""
    return numel * (INT64_BYTES + WORD_BYTES * buffer_words_per_element(depth, gamma))


def memory_free_saved_bytes(depth: int, numel: int, gamma: float) -> int:
    """Bytes the memory-free path keeps for backward: int64 x_L and v_L, and the buffer.

    ``numel`` is the number of elements of the stack's input (batch * dim for the toy).
    """
    return 2 * INT64_BYTES * numel + information_buffer_bytes(depth, numel, gamma)


def crossover_depth(batch: int, dim: int, hidden: int, itemsize: int = 4,
                    gamma_of_depth=figure2_gamma, max_depth: int = 1_000_000) -> int:
    """First depth at which the memory-free path saves fewer bytes than ordinary backprop
    for the toy stack (``gamma_of_depth(depth)`` gives gamma; Figure 2's schedule by default).

    Beyond it ordinary backprop grows by ``batch * (dim + hidden) * itemsize`` bytes per
    layer and the memory-free path by at most one 32-bit word per element every
    32 / log2(1 / gamma) layers, so for float32 it stays below.
    """
    numel = batch * dim
    for depth in range(1, max_depth + 1):
        if (memory_free_saved_bytes(depth, numel, gamma_of_depth(depth))
                < toy_ordinary_saved_bytes(depth, batch, dim, hidden, itemsize)):
            return depth
    raise ValueError(f"the memory-free path does not save less than ordinary backprop "
                     f"up to depth {max_depth}")
