"""The exact walks of a momentum stack: forward in fixed point, and back to depth 0.

`run_forward` runs the stack without a graph in the fixed point of ``exact.py``,
keeping each layer's replay record, and returns the :class:`Tape` (x_L, v_L, the
information buffer). `run_inverse` runs it back layer by layer, recomputing each f
(with a graph when the backward pass asks for one), and checks that it landed on the
forward pass's start: the buffer empty and (x_0, v_0) equal to the forward's, by a
fingerprint taken there. A stack may keep the graphs of its last ``Stack.kept`` layers
from the forward pass (:class:`KeptGraphs`); the exact state at the first of them is
set aside for the backward pass.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field

import numpy as np
import torch

from . import exact, exact_native
from ._torch_private import free_storage, node_saves_its_output, sole_owner
from .accounting import observing
from .replay import Replaying, Stack, call_recording, slow_attention

#: fingerprint slices off the CPU: at least this many elements, else 1/64 of the tensor, so
#: that the temporaries stay below 1/16 of a float32 tensor of the state's size (it runs
#: at depth 0 of the backward pass, where the step's memory peaks)
FINGERPRINT_MIN_CHUNK = 1 << 12


def fingerprint(*tensors: torch.Tensor, freed_later: bool = False) -> list:
    """Integer digests of integer tensors: equal tensors give equal digests; a rebuilt
    state that is off anywhere almost surely not. Two order-independent reductions each
    (a wrapping sum, and an xor on the CPU / a sum of the values mixed with their high
    bits elsewhere), exact in any order. On the CPU the C kernels reduce an int64 tensor
    in one threaded pass, and numpy any other without a temporary, except for tensors
    whose storage is to be freed in place afterwards (``freed_later``: a numpy view makes
    a storage fixed-size for good); the others are reduced by torch on slices."""
    out = []
    for t in tensors:
        native = exact_native.fingerprint(t)  # reads the memory, holds nothing
        if native is not None:  # int64 on the CPU: one threaded pass for both reductions
            out.append(native)
            continue
        if t.device.type == "cpu" and not freed_later:
            a = t.detach().reshape(-1).numpy()
            out.append([int(np.add.reduce(a, dtype=np.int64)), int(np.bitwise_xor.reduce(a)) if a.size else 0])
            continue
        acc = torch.zeros(2, dtype=torch.int64, device=t.device)
        for chunk in t.reshape(-1).split(max(FINGERPRINT_MIN_CHUNK, t.numel() // 64)):
            acc[0] += chunk.sum()
            acc[1] += (chunk ^ (chunk >> 29)).sum()
        out.append(acc.tolist())
    return out


@dataclass
class Tape:
    """Exact state of a momentum stack at one depth, plus what is needed to run back."""

    x: torch.Tensor | None  # int64 fixed point (None: released, see run_inverse)
    v: torch.Tensor | None  # int64 fixed point
    buffer: exact.InformationBuffer | None
    replays: list = field(default_factory=list)
    dtype: torch.dtype = torch.float32
    consumed: bool = False  # unwound in place by a backward pass
    origin: list | None = None  # fingerprint of the exact (x_0, v_0) the forward started from

    def tensors(self) -> list:
        """Every tensor the tape holds (for saving and for memory accounting)."""
        out = [t for t in (self.x, self.v) if t is not None]
        out += self.buffer.tensors() if self.buffer is not None else []
        for r in filter(None, self.replays):  # None: nothing to replay for that layer
            out += [t for t in (r.cpu_rng, r.cuda_rng) if t is not None]
            out += list(r.buffers or [])
        return out


@dataclass
class KeptGraphs:
    """The last layers' graphs from the forward pass, and the exact state below them.

    ``xs[j]``, ``fs[j]``: the float input (a leaf) and the output of layer ``start + j``,
    with the graph between them (f's data is freed when no node of the graph saved it);
    ``bottom``: the exact state at depth ``start``, for inverting the layers below.
    """

    start: int
    bottom: Tape
    xs: list = field(default_factory=list)
    fs: list = field(default_factory=list)
    # what the graphs saved, gathered during the forward pass for memory accounting
    # (accounting.observe_held_tensors), then let go; not gathered when nobody observes
    saved_tensors: list = field(default_factory=list)

    def note_saved(self, t: torch.Tensor) -> torch.Tensor:
        """saved_tensors_hooks pack for the kept layers' calls."""
        self.saved_tensors.append(t)
        return t

    def forward_done(self) -> list:
        """End of the forward pass: the tensors the kept graphs hold (for accounting)."""
        held = self.saved_tensors + [t for pair in zip(self.xs, self.fs) for t in pair]
        self.saved_tensors = []
        return held


def initial_state(stack: Stack, x0: torch.Tensor, v0: torch.Tensor | None):
    """The exact (x, v, buffer) at depth 0: x0 and v0 (None: zeros) in fixed point."""
    x = exact.to_fixed(x0, "the input x0")
    v = torch.zeros_like(x) if v0 is None else exact.to_fixed(v0, "the initial velocity v0")
    return x, v, exact.InformationBuffer.empty(x.shape, x.device, stack.n)


@slow_attention()
def run_forward(stack: Stack, x0: torch.Tensor, v0: torch.Tensor, args, kwargs):
    """Exact forward pass, keeping each layer's replay record: returns (tape, kept, x_L as
    a float tensor of x0's dtype).

    Without a graph, except for the last ``stack.kept`` layers, whose graphs are kept
    (``kept``, a :class:`KeptGraphs`; None when ``stack.kept`` is 0). The state at the
    first of them is set aside for the backward pass and the forward goes on with a
    copy, so the tape at the top stays whole (``MomentumNet.inverse`` can use it).
    """
    dtype = x0.dtype
    depth = len(stack.functions)
    kernels = exact.ExactKernels(x0, stack.n)
    # from v0 = 0, the C kernels take the start and the first layer's step in two passes
    # (x, v and the buffer are first written by that step)
    started = kernels.start(x0) if depth > stack.kept and v0 is None else None
    if started is not None:
        k, x, v, buffer, xf, digest = started
        origin = [digest, [0, 0]]  # v0 = 0: [0, 0] in every branch of fingerprint
    else:
        x, v, buffer = initial_state(stack, x0, v0)
        origin = fingerprint(x, v) if v0 is not None else fingerprint(x) + [[0, 0]]
        k = kernels.bind(x, v, buffer, dtype)
        xf = exact.to_float(x, dtype)
    replays = []
    kept = None
    start = depth - min(stack.kept, depth)
    # the largest magnitude of each layer: Python floats from the C kernels, 0-dim
    # tensors (no device sync) from the torch kernels, in one preallocated slot per
    # layer (a list of small tensors would pin freed memory)
    peak_per_layer = torch.zeros(depth, dtype=torch.float64, device=x.device)
    float_peaks = [0.0] * depth
    with torch.no_grad():
        for i in range(depth):
            if i < start:
                (out, base), replay = call_recording(stack, i, xf, args, kwargs, split=True)
                # the new float x goes into the block output's memory when nothing else holds
                # it (asked before the call, whose own argument would count as a holder)
                reuse = sole_owner(out)
                xf, peak = k.push(out, base, reuse=reuse)
                out = base = None
            else:
                if kept is None:
                    kept = KeptGraphs(start, Tape(x=x, v=v, buffer=buffer, replays=replays, dtype=dtype,
                                                  origin=origin))
                    x, v, buffer = x.clone(), v.clone(), buffer.copy()
                    k = kernels.bind(x, v, buffer, dtype)
                f, replay = _call_keeping(stack, i, xf, args, kwargs, kept)
                freeable = _freeable(f, kept.xs[-1], held=2)  # f here and in kept.fs
                xf, peak = k.push(f.detach())
                if freeable:
                    free_storage(f)
            if isinstance(peak, float):
                float_peaks[i] = peak
            else:
                peak_per_layer[i] = peak
            replays.append(replay)
    if depth:
        peak_per_layer = torch.maximum(peak_per_layer, torch.tensor(float_peaks, dtype=torch.float64,
                                                                    device=x.device))
        worst = float(peak_per_layer.max())
        if not worst < exact.VALUE_LIMIT:
            layer = int(torch.nan_to_num(peak_per_layer, nan=float("inf")).argmax())
            exact.check_range(worst, f"the activation after layer {layer + 1} of the momentum stack")
    return Tape(x=x, v=v, buffer=buffer, replays=replays, dtype=dtype, origin=origin), kept, xf


def _unpack(t):
    return t


def _call_keeping(stack: Stack, i: int, xf, args, kwargs, kept: KeptGraphs):
    """`call_recording` with a graph from a leaf copy of x to f, kept in ``kept``."""
    xf = xf.detach().requires_grad_(True)
    observed = (torch.autograd.graph.saved_tensors_hooks(kept.note_saved, _unpack) if observing()
                else contextlib.nullcontext())
    with torch.enable_grad(), observed:
        f, replay = call_recording(stack, i, xf, args, kwargs)
    kept.xs.append(xf)
    kept.fs.append(f)
    return f, replay


@slow_attention()
def replay_forward(stack: Stack, tape: Tape, args, kwargs, inputs=None) -> None:
    """Rebuild an unwound tape in place: from its exact (x0, v0), replay every layer.

    A tape whose state was released at the end of its backward pass (``run_inverse``'s
    ``release``) starts again from ``inputs`` = (x0, v0 or None), the float inputs of
    the forward pass. Each layer sees the RNG state and module buffers it saw the first
    time, and they are put back afterwards, so the replay changes nothing but the tape.
    """
    if tape.x is None:
        if inputs is None:
            raise ValueError("this tape's state was released; replaying it needs the stack's inputs")
        tape.x, tape.v, tape.buffer = initial_state(stack, *inputs)
    x, v, buffer = tape.x, tape.v, tape.buffer
    k = exact.ExactKernels(x, stack.n).bind(x, v, buffer, tape.dtype)
    xf = exact.to_float(x, tape.dtype)
    with torch.no_grad():
        for module, replay in zip(stack.functions, tape.replays):
            with Replaying(module, replay, x.device):
                out, base = stack.split_residual(module, xf, args, kwargs)
            reuse = sole_owner(out)
            xf, _ = k.push(out, base, reuse=reuse)
            out = base = None
    tape.consumed = False


@slow_attention()
def run_inverse(stack: Stack, tape: Tape, args, kwargs, on_layer=None, consume=False,
                release=None) -> Tape | None:
    """Walk the tape back to depth 0 exactly. ``on_layer(i, xf, out, skip)`` sees each
    recompute: f(xf) = out - xf if ``skip`` (a block that adds its own skip connection),
    else out; ``out`` is what to differentiate (`gradient_root`: a GradientEdge where
    torch takes one, so that nothing of ours holds its memory).

    With ``on_layer`` the residual function is recomputed with autograd enabled (for the
    backward pass), and from `lowest_fused_layer` up a layer's velocity undo also rebuilds
    the next layer's float x in the same pass; otherwise without. ``consume`` unwinds the
    tape's own tensors in place (no copy: what the backward pass does); otherwise the tape
    stays reusable.
    At depth 0 the buffer must be empty and (x_0, v_0) equal to the forward's start
    (``Tape.origin``), else ReconstructionError. ``release`` (with ``consume``): asked
    once depth 0 is reached and checked, before the first layer's ``on_layer``; if it
    returns True the exact state (int64 x0 and v0, the empty buffer: 20 bytes per
    element) is dropped there rather than held through the first layer's backward,
    where the step's gradients are all allocated and its memory peaks, and nothing is
    returned.
    """
    if tape.consumed:
        raise ValueError("this tape was already unwound by a backward pass; run forward_state again")
    if consume:
        buffer, x, v = tape.buffer, tape.x, tape.v
        tape.consumed = True
    else:
        buffer, x, v = tape.buffer.copy(), tape.x.clone(), tape.v.clone()
    k = exact.ExactKernels(x, stack.n).bind(x, v, buffer, tape.dtype)
    replays = tape.replays or [None] * len(stack.functions)
    fuse_from = lowest_fused_layer(stack, x.numel() * tape.dtype.itemsize) if on_layer is not None else None
    spare = None  # the last layer's float x, once nothing else holds it: the next one's memory
    below = None  # this layer's float x, rebuilt by the layer above's pop in the same pass
    for i in range(len(stack.functions) - 1, -1, -1):
        module = stack.functions[i]
        if spare is not None and not sole_owner(spare):
            spare = None  # held elsewhere: let it go before the next one is allocated
        if below is not None:
            xf, below = below, None  # the spare stays for this layer's pop
        else:
            xf = k.undo_position(spare, digest=i == 0)
            if xf is spare:  # a new tensor on that memory: no hook of the old one carries over
                xf = xf.detach()
            spare = None
        # the gradient is taken inside the replay too: autograd may check saved buffers
        with Replaying(module, replays[i], x.device):
            if on_layer is None:
                with torch.no_grad():
                    out, base = stack.split_residual(module, xf, args, kwargs)
                freeable = False
            else:
                xf = xf.requires_grad_(True)
                with torch.enable_grad():
                    out, base = stack.split_residual(module, xf, args, kwargs)
                freeable = _freeable(out, xf)
            fused = fuse_from is not None and i >= fuse_from
            # depth 0's fingerprints: of x where the pop rebuilding it is layer 1's, fused
            depth_0_digest = i == 1 if fused else i == 0
            if fused and spare is None and freeable:
                spare, freeable = out.detach(), False  # out's memory takes x_{i-1}: not freed
            # out's data may go once the velocity is undone, before anything else is allocated;
            # from fuse_from up the same pass rebuilds x_{i-1} too (v read once for both)
            below = k.pop(out.detach(), None if base is None else base.detach(),
                          release=functools.partial(free_storage, out) if freeable else None,
                          digest=depth_0_digest, then_position=fused, spare=spare)
            if below is not None and below is spare:
                below = below.detach()  # a new tensor on that memory, as above
            spare = None
            if on_layer is not None:
                # from here on only the graph needs out, and it lets out's data go as soon
                # as the node that saved it has run (a block's last ReLU saves its output)
                out = gradient_root(out)
            if i == 0:
                if not buffer.is_empty() or (tape.origin is not None
                                             and (k.digests() or fingerprint(x, v)) != tape.origin):
                    raise exact.ReconstructionError(exact.NOT_REPLAYABLE)
                if consume and release is not None and release():
                    tape.x = tape.v = tape.buffer = x = v = buffer = k = None
            if on_layer is not None:
                on_layer(i, xf, out, base is not None)
        # out's graph holds x_n (its leaf): let both go before the next layer's are made
        out = base = None
        spare, xf = xf, None
    if buffer is None:
        return None
    return Tape(x=x, v=v, buffer=buffer, replays=[], dtype=tape.dtype, origin=tape.origin)


def lowest_fused_layer(stack: Stack, x_bytes: int) -> int:
    """The lowest layer whose backward pop may also rebuild the float x of the layer
    below (v streamed once for both: the kernels' ``pop(then_position=True)``). That
    float x is then held through the layer's backward, one tensor of ``x_bytes`` more
    than otherwise; the backward's peak is at its bottom (layer 1, before the exact
    state is let go), where the gradients of every layer's parameters exist, so fusing
    starts where the gradients the layers below (down to layer 1) have yet to allocate
    outweigh it."""
    depth = len(stack.functions)
    seen, new_bytes = set(), [0] * depth
    for i in range(depth - 1, -1, -1):  # a gradient is allocated at the highest layer using it
        for p in stack.layer_params[i]:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                new_bytes[i] += p.numel() * p.element_size()
    below = 0
    for i in range(1, depth):
        if below >= x_bytes:
            return i
        below += new_bytes[i]
    return depth


@functools.lru_cache(maxsize=None)
def _edges_as_roots() -> bool:
    """Whether torch.autograd.grad takes a GradientEdge as its output (recent torch),
    checked once on a small graph."""
    try:
        from torch.autograd.graph import get_gradient_edge
        with torch.enable_grad():
            x = torch.ones(2, requires_grad=True)
            (g,) = torch.autograd.grad([get_gradient_edge(x * 3)], [x], [torch.ones(2)])
        return bool(torch.equal(g, torch.full((2,), 3.0)))
    except Exception:  # noqa: BLE001 - an older torch: differentiate from the tensor itself
        return False


def gradient_root(t: torch.Tensor):
    """What to hand torch.autograd.grad as the output ``t``: its GradientEdge where torch
    takes one, so that the caller's reference does not keep t's memory alive through the
    backward pass of the graph that made it; else ``t``."""
    if t.grad_fn is None or not _edges_as_roots():
        return t
    from torch.autograd.graph import get_gradient_edge
    return get_gradient_edge(t)


def _freeable(f: torch.Tensor, xf: torch.Tensor, held: int = 1) -> bool:
    """Whether the data of f(x_n) may be freed once the exact inverse has used it.

    Backpropagating from f needs its graph and its shape, not its values, unless a node of
    its graph saved it. Only f's own node can have: the nodes before it were made before
    f existed, and a node that saved a tensor f was then written over in place would fail
    its own version check. So f is freed when its node is a generated one that does not
    save its output (a Linear's does not; a ReLU's does), and nothing but the caller's
    ``held`` names holds f or its memory (not a forward hook that kept it, not a view):
    only memory this package alone holds is freed. This drops one full-size tensor from
    every backward step.
    """
    node = f.grad_fn
    if node is None or f.device.type == "meta" or node_saves_its_output(node, f.output_nr):
        return False
    if (f.untyped_storage().data_ptr() == xf.untyped_storage().data_ptr()
            or f.untyped_storage().nbytes() != f.nbytes):
        return False
    return sole_owner(f, held=held + 1)  # + the name here
