"""The memory-free momentum stack: forward without a graph, backward by exact inversion.

`run_forward` and `run_inverse` walk the stack in fixed point (see `exact.py`);
`MemoryFreeMomentum` is the autograd.Function that keeps only the final (x, v), the
information buffer and the per-layer replay records, and rebuilds each layer's input
during backward to recompute its residual function with a graph, one layer at a time
(`adjoint.MomentumAdjoint`). Parameter gradients are accumulated as it goes; no
per-layer gradient list is held.

A stack may keep the graphs of its last ``Stack.kept`` layers from the forward pass
(``"auto"`` sizes this so that they fit in memory the step's parameter gradients take
later anyway, ``plan.py``): those layers are neither inverted nor recomputed, and the
exact state at the first of them is kept for the rest. Same bits either way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import contextvars
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import exact
from .adjoint import MomentumAdjoint
from ._torch_private import node_saves_its_output, tree_unflatten

_HELD_OBSERVERS: contextvars.ContextVar = contextvars.ContextVar("mresnet_held_observers", default=())


@contextlib.contextmanager
def observe_held_tensors(callback: Callable[[list], None]):
    """Within the block, ``callback(tensors)`` sees the tensors each memory-free forward
    keeps for its backward pass outside ``save_for_backward`` (the exact tape), so that
    memory accounting (``mresnet_core.memory.saved_tensors``) can count them."""
    token = _HELD_OBSERVERS.set(_HELD_OBSERVERS.get() + (callback,))
    try:
        yield
    finally:
        _HELD_OBSERVERS.reset(token)


@dataclass
class LayerReplay:
    """What layer n needs to recompute f bit for bit: RNG states and module buffers."""

    cpu_rng: torch.Tensor | None = None
    cuda_rng: torch.Tensor | None = None
    buffers: list | None = None  # values of the function's buffers before its call


@dataclass
class Tape:
    """Exact state of a momentum stack at one depth, plus what is needed to run back."""

    x: torch.Tensor | None  # int64 fixed point (None: released, see run_inverse)
    v: torch.Tensor | None  # int64 fixed point
    buffer: exact.InformationBuffer | None
    replays: list = field(default_factory=list)
    dtype: torch.dtype = torch.float32
    consumed: bool = False  # unwound in place by a backward pass

    def tensors(self) -> list:
        """Every tensor the tape holds (for saving and for memory accounting)."""
        out = [t for t in (self.x, self.v) if t is not None]
        out += self.buffer.tensors() if self.buffer is not None else []
        for r in filter(None, self.replays):  # None: nothing to replay for that layer
            out += [t for t in (r.cpu_rng, r.cuda_rng) if t is not None]
            out += list(r.buffers or [])
        return out


@dataclass
class Stack:
    """The static description of a momentum stack: functions, gamma, argument layout."""

    functions: Sequence[torch.nn.Module]
    residual_of: Callable  # (module, x, args, kwargs) -> f(x)
    n: int  # gamma = n / 2**16
    args_spec: object = None  # pytree spec of (args, kwargs)
    kept: int = 0  # the last `kept` layers keep their graphs from the forward pass

    @property
    def gamma(self) -> float:
        return self.n / exact.GAMMA_DENOMINATOR

    # Walking a module's parameters or buffers costs microseconds per layer; a stack is
    # made per forward call, so these are gathered once for its forward and backward,
    # both in one walk of each function's modules.
    @functools.cached_property
    def _members(self) -> tuple:
        walks = [_parameters_and_buffers(m) for m in self.functions]
        return [w[0] for w in walks], [w[1] for w in walks]

    @property
    def layer_params(self) -> list:
        """Each function's parameters (lists, in the order of ``module.parameters()``)."""
        return self._members[0]

    @property
    def layer_buffers(self) -> list:
        """Each function's buffers (lists, in the order of ``module.buffers()``)."""
        return self._members[1]

    @functools.cached_property
    def params(self) -> list:
        """The unique parameters of all functions, in a fixed order."""
        seen, out = set(), []
        for ps in self.layer_params:
            for p in ps:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out


def _parameters_and_buffers(module: torch.nn.Module) -> tuple:
    """(list(module.parameters()), list(module.buffers())) in one walk of its modules."""
    params, buffers, seen_params, seen_buffers = [], [], set(), set()
    for m in module.modules():
        for members, out, seen in ((m._parameters, params, seen_params), (m._buffers, buffers, seen_buffers)):
            for t in members.values():
                if t is not None and id(t) not in seen:
                    seen.add(id(t))
                    out.append(t)
    return params, buffers


@contextlib.contextmanager
def slow_attention():
    """Turn off PyTorch's fused attention fast path for the duration.

    The fast path runs only without autograd, so the memory-free forward (no graph) would
    take it while the backward's recomputation (with a graph) would not: they would differ
    by rounding, and the exact inversion needs f recomputed bit for bit.
    """
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def _rng_snapshot(device: torch.device):
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return cpu, cuda


def _call_recording(stack: Stack, i: int, xf, args, kwargs):
    """Evaluate f_i(x) and return what replaying it bit for bit needs (None: nothing)."""
    module = stack.functions[i]
    bufs = [b.detach().clone() for b in stack.layer_buffers[i]] or None
    cpu, cuda = _rng_snapshot(xf.device)
    f = stack.residual_of(module, xf, args, kwargs)
    cpu_after, cuda_after = _rng_snapshot(xf.device)
    replay = LayerReplay(
        cpu_rng=None if torch.equal(cpu, cpu_after) else cpu,
        cuda_rng=None if cuda is None or torch.equal(cuda, cuda_after) else cuda,
        buffers=bufs,
    )
    if replay.cpu_rng is None and replay.cuda_rng is None and bufs is None:
        return f, None
    return f, replay


class _Replaying:
    """Context manager: put layer n's RNG and buffers back as they were, then restore.

    ``untracked=True`` writes the buffers through ``.data`` (no version-counter bump), for
    a graph that is differentiated after the block has exited (``recompute.py``); the
    default bumps it, and the gradient must then be taken inside the block.
    """

    def __init__(self, module, replay: LayerReplay | None, device, untracked: bool = False):
        self.module, self.replay, self.device = module, replay, device
        self.untracked = untracked

    def _write(self, buffers, values):
        with torch.no_grad():
            for b, value in zip(buffers, values):
                (b.data if self.untracked else b).copy_(value)

    def __enter__(self):
        r = self.replay
        if r is None:
            return self
        self.saved_cpu = torch.get_rng_state() if r.cpu_rng is not None else None
        self.saved_cuda = torch.cuda.get_rng_state(self.device) if r.cuda_rng is not None else None
        if r.cpu_rng is not None:
            torch.set_rng_state(r.cpu_rng)
        if r.cuda_rng is not None:
            torch.cuda.set_rng_state(r.cuda_rng, self.device)
        if r.buffers:
            bufs = list(self.module.buffers())
            self.saved_buffers = [b.detach().clone() for b in bufs]
            self._write(bufs, r.buffers)
        return self

    def __exit__(self, *exc):
        r = self.replay
        if r is None:
            return False
        if r.cpu_rng is not None:
            torch.set_rng_state(self.saved_cpu)
        if r.cuda_rng is not None:
            torch.cuda.set_rng_state(self.saved_cuda, self.device)
        if r.buffers:
            self._write(list(self.module.buffers()), self.saved_buffers)
        return False


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
    # (observe_held_tensors), then let go; not gathered when nobody observes
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


@slow_attention()
def run_forward(stack: Stack, x0: torch.Tensor, v0: torch.Tensor, args, kwargs):
    """Exact forward pass, keeping each layer's replay record: returns (tape, kept).

    Without a graph, except for the last ``stack.kept`` layers, whose graphs are kept
    (``kept``, a :class:`KeptGraphs`; None when ``stack.kept`` is 0). The state at the
    first of them is set aside for the backward pass and the forward goes on with a
    copy, so the tape at the top stays whole (``MomentumNet.inverse`` can use it).
    """
    dtype = x0.dtype
    depth = len(stack.functions)
    x, v, buffer = initial_state(stack, x0, v0)
    kernels = exact.ExactKernels(x, stack.n)
    k = kernels.bind(x, v, buffer, dtype)
    replays = []
    kept = None
    start = depth - min(stack.kept, depth)
    # the largest magnitude of each layer: Python floats from the C kernels, 0-dim
    # tensors (no device sync) from the torch kernels, in one preallocated slot per
    # layer (a list of small tensors would pin freed memory)
    peak_per_layer = torch.zeros(depth, dtype=torch.float64, device=x.device)
    float_peaks = [0.0] * depth
    xf = exact.to_float(x, dtype)
    with torch.no_grad():
        for i in range(depth):
            if i < start:
                f, replay = _call_recording(stack, i, xf, args, kwargs)
            else:
                if kept is None:
                    kept = KeptGraphs(start, Tape(x=x, v=v, buffer=buffer, replays=replays, dtype=dtype))
                    x, v, buffer = x.clone(), v.clone(), buffer.copy()
                    k = kernels.bind(x, v, buffer, dtype)
                f, replay = _call_keeping(stack, i, xf, args, kwargs, kept)
            xf, peak = k.push(f.detach())
            if i >= start:
                _release_unsaved_root(f, kept.xs[-1])
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
    return Tape(x=x, v=v, buffer=buffer, replays=replays, dtype=dtype), kept


def _call_keeping(stack: Stack, i: int, xf, args, kwargs, kept: KeptGraphs):
    """`_call_recording` with a graph from a leaf copy of x to f, kept in ``kept``."""
    xf = xf.detach().requires_grad_(True)
    observed = (torch.autograd.graph.saved_tensors_hooks(kept.note_saved, _unpack) if _HELD_OBSERVERS.get()
                else contextlib.nullcontext())
    with torch.enable_grad(), observed:
        f, replay = _call_recording(stack, i, xf, args, kwargs)
    kept.xs.append(xf)
    kept.fs.append(f)
    return f, replay


def initial_state(stack: Stack, x0: torch.Tensor, v0: torch.Tensor | None):
    """The exact (x, v, buffer) at depth 0: x0 and v0 (None: zeros) in fixed point."""
    x = exact.to_fixed(x0, "the input x0")
    v = torch.zeros_like(x) if v0 is None else exact.to_fixed(v0, "the initial velocity v0")
    return x, v, exact.InformationBuffer.empty(x.shape, x.device, stack.n)


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
            with _Replaying(module, replay, x.device):
                f = stack.residual_of(module, xf, args, kwargs)
            xf, _ = k.push(f)
    tape.consumed = False


def check_residual_output(f, x: torch.Tensor, module) -> None:
    """A residual function must return a tensor of its input's shape and dtype."""
    if not isinstance(f, torch.Tensor) or f.shape != x.shape:
        got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(
            f"residual function {type(module).__name__} must return a tensor shaped like its "
            f"input {tuple(x.shape)}, got {got}; a block that changes shape cannot be part of a "
            "momentum stack (keep it outside, e.g. keep_first=True in to_momentumnet)."
        )
    if f.dtype != x.dtype:
        raise TypeError(f"residual function {type(module).__name__} returned {f.dtype} for a "
                        f"{x.dtype} input; the momentum stack needs one dtype throughout")


@slow_attention()
def run_inverse(stack: Stack, tape: Tape, args, kwargs, on_layer=None, consume=False,
                release=None) -> Tape | None:
    """Walk the tape back to depth 0 exactly. ``on_layer(i, xf, f)`` sees each recompute.

    With ``on_layer`` the residual function is recomputed with autograd enabled (for the
    backward pass); otherwise without. ``consume`` unwinds the tape's own tensors in
    place (no copy: what the backward pass does); otherwise the tape stays reusable.
    ``release`` (with ``consume``): asked once depth 0 is reached and checked, before
    the first layer's ``on_layer``; if it returns True the exact state (int64 x0 and v0,
    the empty buffer: 20 bytes per element) is dropped there rather than held through
    the first layer's backward, where the step's gradients are all allocated and its
    memory peaks, and nothing is returned.
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
    for i in range(len(stack.functions) - 1, -1, -1):
        module = stack.functions[i]
        xf = k.undo_position()
        # the gradient is taken inside the replay too: autograd may check saved buffers
        with _Replaying(module, replays[i], x.device):
            if on_layer is None:
                with torch.no_grad():
                    f = stack.residual_of(module, xf, args, kwargs)
            else:
                xf = xf.requires_grad_(True)
                with torch.enable_grad():
                    f = stack.residual_of(module, xf, args, kwargs)
            # f's data may go once the velocity is undone, before anything else is allocated
            k.pop(f.detach(), release=None if on_layer is None else
                  functools.partial(_release_unsaved_root, f, xf))
            if i == 0:
                if not buffer.is_empty():
                    raise exact.ReconstructionError(exact.NOT_REPLAYABLE)
                if consume and release is not None and release():
                    tape.x = tape.v = tape.buffer = x = v = buffer = k = None
            if on_layer is not None:
                on_layer(i, xf, f)
        # f's graph holds x_n (its leaf): let both go before the next layer's are made
        f = xf = None
    if buffer is None:
        return None
    return Tape(x=x, v=v, buffer=buffer, replays=[], dtype=tape.dtype)


def _unpack(t):
    return t


def _release_unsaved_root(f: torch.Tensor, xf: torch.Tensor) -> None:
    """Free the data of f(x_n) once the exact inverse has used it, when nothing needs it.

    Backpropagating from f needs its graph and its shape, not its values, unless a node of
    its graph saved it. Only f's own node can have: the nodes before it were made before
    f existed, and a node that saved a tensor f was then written over in place would fail
    its own version check. So f (a plain tensor, not a view, owning its whole storage) is
    freed when its node is a generated one that does not save its output (a Linear's
    does not; a ReLU's does); this drops one full-size tensor from every backward step.
    """
    node = f.grad_fn
    if (node is None or f._base is not None or type(f) is not torch.Tensor or f.device.type == "meta"
            or node_saves_its_output(node, f.output_nr)):
        return
    storage = f.untyped_storage()
    if storage.data_ptr() == xf.untyped_storage().data_ptr() or storage.nbytes() != f.nbytes:
        return
    storage.resize_(0)


class MemoryFreeMomentum(torch.autograd.Function):
    """autograd.Function: inputs (x0, v0, *params, *arg tensors) -> (x_L, v_L)."""

    @staticmethod
    def forward(ctx, stack: Stack, holder: dict, n_params: int, x0, v0, *inputs):
        arg_leaves = inputs[n_params:]  # the parameters are inputs only for autograd
        args, kwargs = tree_unflatten(list(arg_leaves), stack.args_spec)
        if stack.kept and any(isinstance(a, torch.Tensor) and a.requires_grad for a in arg_leaves):
            # kept graphs would have to reach the arguments' own leaves: invert all layers
            stack = dataclasses.replace(stack, kept=0)
        tape, kept = run_forward(stack, x0, v0, args, kwargs)
        holder["tape"] = tape
        # The tape is kept on ctx, not through save_for_backward: backward unwinds it in
        # place (no second copy of x, v and the buffer), and a second backward
        # (retain_graph) rebuilds it by replaying the forward from the exact (x0, v0)
        # that unwinding leaves behind, or from the float inputs once it has dropped
        # them (_keep_inputs). Memory accounting sees it through observe_held_tensors.
        ctx.stack, ctx.tape, ctx.n_params, ctx.holder = stack, tape, n_params, holder
        ctx.kept = kept
        # weak references to the float inputs: if they are still alive when backward
        # reaches depth 0, the exact state can go there (a second backward rebuilds it
        # from them); keeping them alive ourselves would cost memory in the forward pass
        ctx.inputs = [(weakref.ref(t), t._version) if t is not None else None for t in (x0, v0)]
        held = tape.tensors() if kept is None else [*tape.tensors(), *kept.bottom.tensors(),
                                                    *kept.forward_done()]
        for observe in _HELD_OBSERVERS.get():
            observe(held)
        held = None
        ctx.leaf_is_tensor = [isinstance(a, torch.Tensor) for a in arg_leaves]
        ctx.other_leaves = [None if t else a for a, t in zip(arg_leaves, ctx.leaf_is_tensor)]
        ctx.save_for_backward(*[a for a in arg_leaves if isinstance(a, torch.Tensor)])
        ctx.set_materialize_grads(False)  # an unused v_L gets no tensor of zeros
        return exact.to_float(tape.x, tape.dtype), exact.to_float(tape.v, tape.dtype)

    @staticmethod
    def backward(ctx, grad_x, grad_v):
        saved_args = iter(ctx.saved_tensors)
        arg_leaves = [next(saved_args) if t else o for t, o in zip(ctx.leaf_is_tensor, ctx.other_leaves)]
        stack: Stack = ctx.stack
        kept, ctx.kept = ctx.kept, None  # a kept graph can be backpropagated once
        if kept is not None:
            # the layers from kept.start up are not inverted: the top tape is not needed
            # here (it stays whole for a caller holding the MomentumState)
            tape = ctx.tape = kept.bottom
            ctx.holder.pop("tape", None)
        else:
            tape = ctx.tape
            if tape.consumed:  # second backward through the same graph (retain_graph=True)
                replay_forward(stack, tape, *tree_unflatten(list(arg_leaves), stack.args_spec),
                               inputs=_kept_inputs(ctx))
        # the parameters as they are now (the recomputation uses them; under
        # torch.func.functional_call the forward's were swapped-in stand-ins)
        stack = dataclasses.replace(stack, kept=0)
        params = stack.params
        needs = ctx.needs_input_grad[5:]
        param_needs, arg_needs = needs[: ctx.n_params], needs[ctx.n_params:]
        # arguments that need gradients are recomputed through detached leaves
        leaves = [a.detach().requires_grad_(True) if (need and isinstance(a, torch.Tensor)) else a
                  for a, need in zip(arg_leaves, arg_needs)]
        args, kwargs = tree_unflatten(list(leaves), stack.args_spec)
        wrt_args = [a for a, need in zip(leaves, arg_needs) if need]
        position = {id(p): j for j, p in enumerate(params)}
        # each layer asks autograd only for its own parameters
        layer_params = [[position[id(p)] for p in ps if param_needs[position[id(p)]]]
                        for ps in stack.layer_params]
        grad_params: list = [None] * len(params)
        grad_args: list = [None] * len(wrt_args)
        handed = ctx.holder.pop("grad_x", None)  # see GradientHandoff
        if handed is not None:
            grad_x = handed[0]
        adjoint = MomentumAdjoint(grad_x, grad_v, stack.gamma, tape.x.shape, tape.dtype, tape.x.device)
        # from here on only the adjoint holds the incoming gradient, and it lets it go at
        # the first layer (a name in this frame would keep it alive to the end)
        handed = grad_x = grad_v = None

        def on_layer(i, xf, f, source=params):
            """Layer i's backward; ``source``: the parameters its graph was built with."""
            mine = layer_params[i]
            grads = adjoint.step(xf, f, [*(source[j] for j in mine), *wrt_args], last=i == 0)
            for j, gp in zip(mine, grads[:len(mine)]):
                if gp is not None:
                    grad_params[j] = gp if grad_params[j] is None else grad_params[j].add_(gp)
            for j, ga in enumerate(grads[len(mine):]):
                if ga is not None:
                    grad_args[j] = ga if grad_args[j] is None else grad_args[j].add_(ga)

        bottom = stack
        if kept is not None:
            for i in range(len(stack.functions) - 1, kept.start - 1, -1):
                j = i - kept.start
                # the kept graphs hold the forward's parameters, in the same order
                on_layer(i, kept.xs[j], kept.fs[j], ctx.stack.params)
                kept.xs[j] = kept.fs[j] = None  # the graph is spent: let its leaf go too
            bottom = dataclasses.replace(stack, functions=stack.functions[:kept.start])
        run_inverse(bottom, tape, args, kwargs, on_layer=on_layer, consume=True,
                    release=functools.partial(_keep_inputs, ctx))
        it_a = iter(grad_args)
        out_params = [g if need else None for g, need in zip(grad_params, param_needs)]
        out_args = [next(it_a) if need else None for need in arg_needs]
        # v0 = 0 (or a constant) gets no gradient
        dx, dv = adjoint.result(want_v=ctx.needs_input_grad[4])
        return (None, None, None, dx, dv, *out_params, *out_args)


class GradientHandoff(torch.autograd.Function):
    """Identity on x_L whose backward hands the incoming gradient to the memory-free
    stack's backward through ``holder`` and gives autograd a zero-stride stand-in.

    Autograd keeps a node's incoming gradients alive until its backward returns; the
    stack's backward runs through every layer, and the gradient it received (a full-size
    tensor) would be held beside the adjoint's own two the whole time. Handed over, it
    is freed as soon as the first layer's adjoint has replaced it.
    """

    @staticmethod
    def forward(ctx, x, holder: dict):
        ctx.holder = holder
        return x.detach()  # an alias autograd does not track as a view: in-place use stays allowed

    @staticmethod
    def backward(ctx, grad):
        ctx.holder["grad_x"] = (grad,)
        return grad.new_zeros(()).expand(grad.shape), None


def _keep_inputs(ctx) -> bool:
    """Hold the forward's float inputs (x0, v0) on ``ctx`` if they are still alive and
    unmodified, so that the exact state at depth 0 may be dropped (True); else False.

    They are alive elsewhere (the caller's tensor, or a tensor an earlier layer saved for
    its own backward), so holding them costs nothing now; afterwards, until the graph is
    freed, 4 bytes per element instead of the 20 of the exact state.
    """
    kept = []
    for entry in ctx.inputs:
        if entry is None:  # v0 = 0: nothing to keep
            kept.append(None)
            continue
        t = entry[0]()
        if t is None or t._version != entry[1]:
            return False
        kept.append(t.detach())
    ctx.kept_inputs = tuple(kept)
    return True


def _kept_inputs(ctx):
    """(x0, v0) held by `_keep_inputs`, checked unmodified; None if the state was kept."""
    kept = getattr(ctx, "kept_inputs", None)
    if kept is None:
        return None
    for t, entry in zip(kept, ctx.inputs):
        if t is not None and t._version != entry[1]:  # a detached alias shares the version
            raise RuntimeError("the input of a memory-free momentum stack was modified in place "
                               "after the first backward pass; a second backward through the same "
                               "graph (retain_graph=True) needs it unchanged")
    return kept



