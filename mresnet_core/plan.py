"""How to train a momentum stack: the cheapest exact way for its shapes (``"auto"``).

Three ways give the same gradients as ordinary autograd:

* ``"backprop"``: ordinary autograd; every layer's activations are kept until backward.
* ``"recompute"``: the forward pass keeps nothing but each layer's replay record (RNG
  state, module buffers); backward re-runs the stack from its float input with a graph
  (``recompute.py``), bit for bit, then backpropagates through it. One extra forward of
  the stack; the activations exist only while the stack's own backward runs.
* ``"exact"``: the memory-free path (``reversible.py``); the int64 (x, v), the
  information buffer and one layer's graph at a time.

``memory_efficient="auto"`` measures, at the stack's first forward with gradients for a
given input shape, the bytes one layer saves for backward (one extra call of the first
function, with its RNG and buffers restored), and estimates each mode's contribution to
the peak of a whole training step (gradients included):

* backprop, recompute: ``depth x layer bytes`` (recompute holds them only during its own
  backward, and nothing from the forward pass);
* exact: the exact state (20 bytes per element, 24 for gamma < 2**-8, + the buffer's
  log2(1/gamma) bits per element per layer + replay records) + one layer's activations
  + the backward's full-size temporaries (+ the eager kernels' scratch, where they are
  not compiled) + the stack's parameter gradients but the first layer's, which the
  exact backward allocates while that state is still held (its peak is at the end of
  its backward; the state is dropped once depth 0 is reached).

How they compare depends on where the stack sits (``choose_mode``). A stack inside a
larger network (``within_network``, set by ``to_momentumnet``) shares the step's peak
with the other layers' activations, which typically peaks at the end of the forward
pass: what the stack holds through the rest of the forward pass counts, so it picks
exact inversion when its estimate is below ``EXACT_MARGIN`` times the activations, else
recompute (nothing held in the forward) when that frees at least two input-sized
tensors, else backprop. A stack on its own (a ``MomentumNet`` built directly) is the
whole step: its own peaks count, the end of its forward pass for backprop (the
activations) and the end of its backward for exact inversion, so it picks exact
inversion when its estimate is below the activations plus the backward's full-size
temporaries, else backprop (recomputing would hold the same activations during its
backward, and more). ``MomentumNet.memory_plan()`` and
``mresnet_core.memory.describe(model)`` show the choice and the estimates.

An exact stack chosen by "auto" also keeps the graphs of its last ``kept`` layers from
the forward pass (``reversible.KeptGraphs``): they are neither inverted nor recomputed
in backward, the same bits, less time. Its step peaks at the end of its backward, when
its parameter gradients exist; the kept graphs and a copy of the exact state (taken at
the first kept layer) are held only until backward reaches them, when few gradients
exist yet, so ``kept`` is the largest number whose graphs, with that copy, fit in the
gradients the backward allocates afterwards (``kept_layers``): the whole-step peak
stays that of inverting every layer, and the gradient-free activation peak grows.
With no parameter gradients to make room, or forced exact inversion
(``memory_efficient=True``), nothing is kept. The room is there also when ``.grad``
tensors stay allocated between steps (``zero_grad(set_to_none=False)``, accumulation):
the stack's backward returns new gradient tensors for all its parameters either way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import exact
from .accounting import saved_tensors
from .modes import MemoryMode
from .replay import LayerReplay, Replaying, Stack, rng_snapshot


def exact_state_bytes(n: int) -> int:
    """Bytes per element of the exact state: int64 x and v, and the information buffer's
    live state (an int32 for n >= 256, an int64 below; ``exact.buffer_layout``)."""
    state_bits, _ = exact.buffer_layout(n)
    return 16 + (4 if state_bits < 32 else 8)


#: full-size tensors of the stack's dtype alive during one exact backward step besides
#: the layer's own graph (dL/dx, the scaled dL/dv, autograd's input gradient; the
#: incoming gradient is handed over and freed after the last layer), measured on the
#: toy stack (Linear-Tanh-Linear, d=500)
EXACT_BACKWARD_TEMPORARIES = 3
#: scratch of the eager exact kernels per element of a slice (their int64 and float64
#: temporaries; measured 62.8-63.9 on the toy stack); the C and compiled kernels need none
EAGER_KERNEL_BYTES = 64
#: exact inversion must save at least 10% over keeping the activations
EXACT_MARGIN = 0.9


@dataclass(frozen=True)
class StackPlan:
    """The mode of one momentum stack and the estimates behind it (bytes).

    ``estimates[mode]`` is the estimated contribution of the stack to the peak of a
    whole training step in that mode ('exact' is None when gamma is 0).
    """

    mode: str
    requested: str
    depth: int
    shape: tuple
    layer_bytes: int  # saved for backward by one layer (measured on the first)
    gradient_bytes: int  # the stack's parameter gradients
    estimates: dict = field(default_factory=dict)
    kept: int = 0  # exact: the last layers whose graphs are kept from the forward pass

    def __str__(self) -> str:
        est = ", ".join(f"{m} {b / 2**20:.2f} MiB" if b is not None else f"{m} -"
                        for m, b in self.estimates.items())
        kept = f", last {self.kept} layers' graphs kept" if self.kept else ""
        return (f"{self.mode} ({'chosen' if self.requested == 'auto' else 'forced'}; depth "
                f"{self.depth}{kept}, input {list(self.shape)}; estimated peak share: {est})")


def layer_saved_bytes(stack: Stack, module, x: torch.Tensor, args, kwargs) -> int:
    """Bytes one call of ``module`` saves for backward on input ``x`` (parameters excluded).

    The call runs with a graph on a detached copy of ``x`` that keeps none of what it
    saves (``accounting.saved_tensors(hold=False)``), so planning in the first step of an
    input shape costs no more memory than a forward without a graph; the module's buffers
    (BatchNorm statistics) and the RNG state are put back afterwards, so nothing
    observable changes.
    """
    probe = x.detach().requires_grad_(True)
    cpu, cuda = rng_snapshot(x.device)
    bufs = [b.detach().clone() for b in module.buffers()] or None
    with Replaying(module, LayerReplay(cpu_rng=cpu, cuda_rng=cuda, buffers=bufs), x.device):
        report = saved_tensors(lambda: stack.residual_of(module, probe, args, kwargs),
                               exclude=module, hold=False)
    return report.nbytes


def eager_kernel_bytes(x: torch.Tensor, n: int) -> int:
    """Scratch the exact kernels take for tensors like ``x``: none for the C kernels or
    the compiled ones (``ExactKernels.scratch_free``), else the eager kernels'
    temporaries on slices of up to EAGER_CHUNK."""
    if exact.ExactKernels(x, n).scratch_free(x.dtype):
        return 0
    return EAGER_KERNEL_BYTES * min(x.numel(), exact.EAGER_CHUNK.get(x.device.type, 1 << 20))


def make_plan(stack: Stack, x: torch.Tensor, args, kwargs, requested: str,
              invertible: bool, within_network: bool = False) -> StackPlan:
    """Measure one layer and estimate every mode (see the module docstring)."""
    functions = list(stack.functions)
    depth = len(functions)
    numel, item = x.numel(), x.element_size()
    layer = layer_saved_bytes(stack, functions[0], x, args, kwargs) if depth else 0
    grads = sum(p.numel() * p.element_size() for p in stack.params if p.requires_grad)
    first_grads = sum(p.numel() * p.element_size() for p in (stack.layer_params[0] if depth else ())
                      if p.requires_grad)
    activations = depth * layer
    estimates = {"exact": None, "recompute": activations, "backprop": activations}
    if invertible:
        bits = math.log2(exact.GAMMA_DENOMINATOR / stack.n)
        replay = sum(b.numel() * b.element_size() for bs in stack.layer_buffers for b in bs)
        held = numel * exact_state_bytes(stack.n) + int(depth * numel * bits / 8) + replay
        # the state goes when backward reaches depth 0, before the first layer's gradients
        estimates["exact"] = (held + layer + EXACT_BACKWARD_TEMPORARIES * numel * item + grads - first_grads
                              + eager_kernel_bytes(x, stack.n))
    kept = 0
    mode = MemoryMode(requested if requested != "auto" else choose_mode(estimates, numel * item, within_network))
    if requested == "auto" and mode == "exact":
        # besides the graphs: the copy of the exact state, and a margin of full-size
        # temporaries (measured: without it, 0.4% above the all-inverted peak at depth 256)
        extra = numel * exact_state_bytes(stack.n) + EXACT_BACKWARD_TEMPORARIES * numel * item
        kept = kept_layers(depth, layer, extra, grads, first_grads)
    return StackPlan(mode=mode, requested=requested, depth=depth, shape=tuple(x.shape),
                     layer_bytes=layer, gradient_bytes=grads, estimates=estimates, kept=kept)


def choose_mode(estimates: dict, input_bytes: int, within_network: bool) -> str:
    """The mode "auto" picks from a plan's estimates (module docstring); ``input_bytes``:
    one tensor of the stack's input size."""
    exact_bytes, activations = estimates["exact"], estimates["backprop"]
    if within_network:
        if exact_bytes is not None and exact_bytes < EXACT_MARGIN * activations:
            return "exact"
        return "recompute" if activations >= 2 * input_bytes else "backprop"
    temporaries = EXACT_BACKWARD_TEMPORARIES * input_bytes
    return "exact" if exact_bytes is not None and exact_bytes < activations + temporaries else "backprop"


def kept_layers(depth: int, layer: int, extra: int, grads: int, layer_grads: int) -> int:
    """How many of an exact stack's last layers may keep their graphs (module docstring).

    Held from the forward pass until backward reaches them: ``kept * layer`` bytes of
    graphs and ``extra`` (a copy of the exact state, a margin). At the start of backward,
    the first kept layer's gradients (``layer_grads``, taken as the first layer's) are the only ones
    allocated, and at the end of an all-inverted backward all but the first layer's
    are; so the kept bytes must fit in ``grads - 2 * layer_grads``. At least one layer
    is inverted (else ordinary backprop would do).
    """
    room = grads - 2 * layer_grads - extra
    if depth < 2 or room <= 0:
        return 0
    return depth - 1 if layer == 0 else min(depth - 1, room // layer)
