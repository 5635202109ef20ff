"""The vocabulary every way of training a momentum stack shares.

A :class:`Stack` is the static description of one call (functions, gamma, argument
layout). A stack whose backward recomputes its residual functions must get the forward
pass's values bit for bit, so each call records what would make it differ
(:func:`call_recording`: RNG states and module buffers; :class:`AutocastState`: mixed
precision) and :class:`Replaying` puts that back. What cannot be put back is detected:
parameters changed in place between forward and backward (:meth:`Stack.check_unchanged`).
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import exact
from ._torch_private import parameters_and_buffers, sole_owner, version_of

DOUBLE_BACKWARD = (
    "double backward (create_graph=True, e.g. a gradient penalty) through a momentum stack "
    "trained with memory_efficient='exact', 'recompute' or 'auto' is not supported: its "
    "backward rebuilds activations outside the graph, so second-order gradients would be "
    "wrong. Use memory_efficient='backprop' (False) for such a model."
)


def refuse_double_backward() -> None:
    """In a backward that rebuilds activations outside the graph: a clear error when
    autograd asks for a differentiable result (create_graph=True)."""
    if torch.is_grad_enabled():
        raise RuntimeError(DOUBLE_BACKWARD)


@dataclass
class LayerReplay:
    """What layer n needs to recompute f bit for bit: RNG states and module buffers."""

    cpu_rng: torch.Tensor | None = None
    cuda_rng: torch.Tensor | None = None
    buffers: list | None = None  # values of the function's buffers before its call


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
    def members(self) -> tuple:
        """(each function's parameters, each function's buffers): lists of lists."""
        walks = [parameters_and_buffers(m) for m in self.functions]
        return [w[0] for w in walks], [w[1] for w in walks]

    @property
    def layer_params(self) -> list:
        """Each function's parameters (lists, in the order of ``module.parameters()``)."""
        return self.members[0]

    @property
    def layer_buffers(self) -> list:
        """Each function's buffers (lists, in the order of ``module.buffers()``)."""
        return self.members[1]

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

    def split_residual(self, module, x, args, kwargs) -> tuple:
        """(out, base) with f(x) = out - base, or (f(x), None): for a block that adds its
        own skip connection the difference is left to the exact kernels, which take it as
        they go (no full-size tensor for f, and in the backward pass no node for it)."""
        if self.residual_of is residual_of_block:
            return check_residual_output(module(x, *args, **kwargs), x, module), x
        return self.residual_of(module, x, args, kwargs), None

    def versions(self) -> list:
        """The version counters of :attr:`params` now (see :meth:`check_unchanged`)."""
        return [version_of(p) for p in self.params]

    def check_unchanged(self, versions: list) -> None:
        """Raise ReconstructionError if a parameter was changed in place since
        ``versions`` were taken (an optimizer step between forward and backward): the
        recomputation would use other weights than the forward pass. Buffers need no
        check: each layer's are put back from its replay record."""
        for p, before in zip(self.params, versions):
            if version_of(p) != before:
                layer = next(i for i, ps in enumerate(self.layer_params) if any(q is p for q in ps))
                raise exact.ReconstructionError(
                    f"a parameter of layer {layer} of the momentum stack ({type(self.functions[layer]).__name__}, "
                    f"shape {tuple(p.shape)}) was changed in place between the forward and the backward "
                    "pass (e.g. optimizer.step() before backward()); its gradients would be computed "
                    "with other weights than the forward pass used. Call backward() first, or use "
                    "memory_efficient='backprop'.")


def check_residual_output(f, x: torch.Tensor, module) -> torch.Tensor:
    """f as the stack uses it: a tensor of its input's shape and dtype (under autocast a
    residual in another precision is cast to the stack's dtype)."""
    if not isinstance(f, torch.Tensor) or f.shape != x.shape:
        got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
        raise ValueError(
            f"residual function {type(module).__name__} must return a tensor shaped like its "
            f"input {tuple(x.shape)}, got {got}; a block that changes shape cannot be part of a "
            "momentum stack (keep it outside, e.g. keep_first=True in to_momentumnet)."
        )
    if f.dtype != x.dtype:
        if f.is_floating_point() and autocast_enabled(x.device.type):
            return f.to(x.dtype)
        raise TypeError(f"residual function {type(module).__name__} returned {f.dtype} for a "
                        f"{x.dtype} input; the momentum stack needs one dtype throughout")
    return f


def residual_of_block(module, x, args, kwargs):
    """f(x) for a module that adds its own skip connection (torchvision blocks). Without
    a graph, a block output that nothing else holds becomes f in place (the same bits,
    one full-size allocation fewer per layer in the memory-free forward pass)."""
    out = check_residual_output(module(x, *args, **kwargs), x, module)
    # sole_owner also refuses x itself, a view and a tensor sharing x's storage
    if not torch.is_grad_enabled() and sole_owner(out):
        return out.sub_(x)
    return out - x


def residual_of_function(module, x, args, kwargs):
    """f(x) for a module that is the residual function itself."""
    return check_residual_output(module(x, *args, **kwargs), x, module)


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


def rng_snapshot(device: torch.device):
    """(CPU RNG state, CUDA RNG state of ``device`` or None)."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return cpu, cuda


def call_recording(stack: Stack, i: int, xf, args, kwargs, split: bool = False):
    """Evaluate f_i(x) and return what replaying it bit for bit needs (None: nothing);
    ``split``: return ``stack.split_residual``'s (out, base) rather than f."""
    module = stack.functions[i]
    bufs = [b.detach().clone() for b in stack.layer_buffers[i]] or None
    cpu, cuda = rng_snapshot(xf.device)
    f = (stack.split_residual if split else stack.residual_of)(module, xf, args, kwargs)
    cpu_after, cuda_after = rng_snapshot(xf.device)
    replay = LayerReplay(
        cpu_rng=None if torch.equal(cpu, cpu_after) else cpu,
        cuda_rng=None if cuda is None or torch.equal(cuda, cuda_after) else cuda,
        buffers=bufs,
    )
    if replay.cpu_rng is None and replay.cuda_rng is None and bufs is None:
        return f, None
    return f, replay


class Replaying:
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


def _autocast_devices() -> tuple:
    return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` here (torch >= 2.2)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def _autocast_dtype(device_type: str) -> torch.dtype:
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if device_type == "cpu" else torch.get_autocast_gpu_dtype()


@dataclass(frozen=True)
class AutocastState:
    """The mixed-precision settings a forward pass ran under, to recompute under them:
    autograd runs backward outside the user's ``torch.autocast`` block."""

    dtypes: tuple  # ((device type, dtype or None when off), ...)

    @classmethod
    def capture(cls) -> "AutocastState":
        return cls(tuple((d, _autocast_dtype(d) if autocast_enabled(d) else None) for d in _autocast_devices()))

    @contextlib.contextmanager
    def restored(self):
        with contextlib.ExitStack() as stack:
            for device, dtype in self.dtypes:
                if dtype is None:
                    if autocast_enabled(device):
                        stack.enter_context(torch.autocast(device, enabled=False))
                else:
                    stack.enter_context(torch.autocast(device, dtype=dtype))
            yield


@dataclass(frozen=True)
class ForwardRecord:
    """What a stack's backward must find as its forward left it, to recompute it: the
    parameters' version counters and the autocast settings."""

    versions: list
    autocast: AutocastState

    @classmethod
    def capture(cls, stack: Stack) -> "ForwardRecord":
        return cls(stack.versions(), AutocastState.capture())

    @contextlib.contextmanager
    def recomputing(self, stack: Stack):
        """The backward of ``stack``: refuses double backward and edited parameters
        (clear errors), then recomputes under the forward's autocast settings."""
        refuse_double_backward()
        stack.check_unchanged(self.versions)
        with self.autocast.restored():
            yield
