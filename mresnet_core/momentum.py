"""MomentumNet: a stack of residual functions with momentum (Sander et al. 2021, Eq. 2).

    v_{n+1} = gamma * v_n + (1 - gamma) * f_n(x_n),    x_{n+1} = x_n + v_{n+1}

``memory_efficient`` (a ``modes.MemoryMode``): "backprop" (False) runs this with
ordinary autograd (every layer's activations stored); "exact" (True) stores none: the
backward pass rebuilds them by running the update backwards in exact fixed-point
arithmetic (``reversible.py``); "recompute" keeps the stack's input and re-runs it in
backward (``recompute.py``); "auto", the default, picks the cheapest of the three for
the input's shapes (``plan.py``). All give the gradients of ordinary autograd. Except
under "backprop", ``torch.compile`` does not trace into the stack: it runs eagerly
between the compiled parts of a model (its backward walks are not traceable).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn
from . import exact
from ._torch_private import tree_flatten
from .exact_walk import Tape, run_inverse
from .modes import DEFAULT_MEMORY_MODE, MemoryMode, memory_mode
from .plan import StackPlan, make_plan
from .recompute import RecomputeMomentum, plain_steps
from .replay import Stack, autocast_enabled, residual_of_block, residual_of_function
from .reversible import ExactCall, GradientHandoff, MemoryFreeMomentum


HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class MomentumState:
    """(x, v) at one depth of a MomentumNet; ``tape`` holds the exact state when known.

    Unpacks as ``x, v = state``. Pass the whole state to :meth:`MomentumNet.inverse` to
    run back exactly (bit for bit); plain tensors give the closed-form float inverse.
    """

    x: torch.Tensor
    v: torch.Tensor
    tape: Tape | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.x, self.v))


class MomentumNet(nn.Module):
    """Momentum residual stack; see the module docstring for the update rule.

    Args:
        functions: modules f_n, each mapping a tensor to one of the same shape. A module
            may appear several times (shared weights).
        gamma: momentum in [0, 1], rounded to the nearest n / 2**16 (``self.gamma``).
            0 is a ResNet, 1 keeps the initial velocity forever.
        memory_efficient: how backward gets the activations (``modes.MemoryMode``).
            "auto" (default): the cheapest of the others for the input's shapes, decided
            at the first forward with gradients for each input shape (``memory_plan()``,
            ``plan.py``). "exact" (or True): rebuilt by exact inversion (stores none).
            "backprop" (or False): stored (ordinary backprop). "recompute": the stack's
            input is kept and the stack re-run in backward.
        residual: True if each module *is* f; False if it already adds its input
            (a torchvision block), so that f(x) = module(x) - x.
        init_velocity: None for v0 = 0, or a module giving v0 = init_velocity(x0).
        within_network: for "auto": plan the stack as part of a larger network, whose
            other activations share the step's peak (``to_momentumnet`` sets it), rather
            than as the whole step (``plan.choose_mode``).

    Extra positional and keyword arguments of ``forward`` reach every function unchanged.
    """

    def __init__(self, functions: Sequence[nn.Module], gamma: float = 0.9, *,
                 memory_efficient: MemoryMode | bool | str = DEFAULT_MEMORY_MODE, residual: bool = True,
                 init_velocity: nn.Module | None = None, within_network: bool = False):
        super().__init__()
        if isinstance(functions, nn.Module) and not isinstance(functions, (nn.ModuleList, nn.Sequential)):
            raise TypeError("functions must be a sequence of nn.Module (e.g. a list or "
                            f"nn.ModuleList), got a single {type(functions).__name__}")
        functions = list(functions)
        bad = [i for i, m in enumerate(functions) if not isinstance(m, nn.Module)]
        if bad:
            raise TypeError(f"functions[{bad[0]}] is a {type(functions[bad[0]]).__name__}, "
                            "not an nn.Module; wrap plain callables in a module")
        if init_velocity is not None and not isinstance(init_velocity, nn.Module):
            raise TypeError("init_velocity must be None (v0 = 0) or an nn.Module computing v0 from x0")
        self.functions = nn.ModuleList(functions)
        self.init_velocity = init_velocity
        self.residual = bool(residual)
        self.within_network = bool(within_network)
        self._n = exact.gamma_numerator(gamma)
        self.memory_efficient = memory_efficient  # checked by the setter

    # ------------------------------------------------------------------ properties
    @property
    def memory_efficient(self) -> MemoryMode:
        """The requested mode: "auto", "exact", "recompute" or "backprop"."""
        return self._requested

    @memory_efficient.setter
    def memory_efficient(self, value) -> None:
        mode = memory_mode(value)
        if mode == "exact":
            exact.check_invertible(self._n)
        self._requested = mode
        self._plans: dict = {}
        self._last_plan: StackPlan | None = None

    @property
    def training_mode(self) -> str | None:
        """How the last forward pass with gradients trained the stack: "exact",
        "recompute" or "backprop" (None before any such pass in "auto" mode)."""
        if self._requested != "auto":
            return self._requested
        return None if self._last_plan is None else self._last_plan.mode

    def memory_plan(self, x: torch.Tensor | None = None, *args, **kwargs) -> StackPlan | None:
        """The mode and the estimates behind it (bytes; see ``mresnet_core.plan``).

        Without arguments: the plan of the last forward pass with gradients (None before
        one). With an input (and the extra arguments): the plan for that input, measured
        now without changing anything (one call of the first function, state restored).
        """
        if x is None:
            return self._last_plan
        self._check_input(x)
        return make_plan(self._stack(), x, args, kwargs, self._requested, self._n > 0,
                         self.within_network)

    def _mode_for(self, x, args, kwargs) -> tuple:
        """(mode, kept layers) of this call: the forced mode, or the plan for x's shape
        ("auto"; kept: the last layers whose graphs an exact stack keeps, ``plan.py``)."""
        if self._requested != "auto":
            return self._requested, 0
        if not torch.is_grad_enabled():
            return "backprop", 0  # nothing is saved without a graph
        # the trainable parameters are part of the key: freezing layers after a step
        # changes the gradients the plan counts on (and the graphs it may keep)
        trainable = sum(p.numel() for p in self.functions.parameters() if p.requires_grad)
        key = (tuple(x.shape), x.dtype, x.device, self.within_network, trainable)
        plan = self._plans.get(key)
        if plan is None:
            plan = make_plan(self._stack(), x, args, kwargs, "auto", self._n > 0, self.within_network)
            self._plans[key] = plan
        self._last_plan = plan
        return plan.mode, plan.kept

    @property
    def gamma(self) -> float:
        """The gamma both paths use: the requested value rounded to n / 2**16."""
        return self._n / exact.GAMMA_DENOMINATOR

    @gamma.setter
    def gamma(self, value: float) -> None:
        n = exact.gamma_numerator(value)
        if self._requested == "exact":
            exact.check_invertible(n)
        self._n = n
        self._plans = {}

    def extra_repr(self) -> str:
        return (f"depth={len(self.functions)}, gamma={self.gamma:.6g}, "
                f"memory_efficient={self.memory_efficient!r}, residual={self.residual}")

    def _stack(self, args_spec=None, kept: int = 0) -> Stack:
        residual_of = residual_of_function if self.residual else residual_of_block
        return Stack(functions=list(self.functions), residual_of=residual_of, n=self._n,
                     args_spec=args_spec, kept=kept)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """x_L of the stack; extra arguments reach every function."""
        return self._state(x, args, kwargs, want_v=False).x

    def forward_state(self, x: torch.Tensor, *args, **kwargs) -> MomentumState:
        """(x_L, v_L) of the stack; with exact inversion also the exact tape.

        Under ``torch.autocast`` a half-precision input is carried in float32 through
        the stack (the residual functions still run in autocast's precision): the
        momentum sums are accumulated as autocast accumulates its own, in every mode.
        """
        return self._state(x, args, kwargs, want_v=True)

    def _state(self, x, args, kwargs, want_v: bool) -> MomentumState:
        """forward_state; without ``want_v`` the exact modes may leave v_L out (None):
        it is a float tensor the size of x that `forward` would only throw away."""
        if isinstance(x, torch.Tensor) and x.dtype in HALF_DTYPES and autocast_enabled(x.device.type):
            x = x.float()
        if self._requested == "backprop":  # ordinary autograd: torch.compile may trace it
            self._check_input(x)
            return MomentumState(*self._plain(x, self._initial_velocity(x, none_for_zero=True), args, kwargs))
        return self._forward_state_untraced(x, args, kwargs, want_v)

    @torch.compiler.disable
    def _forward_state_untraced(self, x, args, kwargs, want_v: bool) -> MomentumState:
        """forward_state of the other modes, which torch.compile runs as it is: their
        walks hold Python state (tapes, replay records, C kernels) a graph cannot."""
        self._check_input(x)
        mode, kept = self._mode_for(x, args, kwargs)
        v0 = self._initial_velocity(x, none_for_zero=True)  # None: zeros, no tensor of them
        if mode == "backprop" or (mode == "recompute" and (not torch.is_grad_enabled()
                                                            or not len(self.functions))):
            return MomentumState(*self._plain(x, v0, args, kwargs))
        leaves, spec = tree_flatten((args, kwargs))
        stack = self._stack(spec, kept)
        params = stack.params
        if mode == "recompute":
            return MomentumState(*RecomputeMomentum.apply(stack, len(params), x, v0, *params, *leaves))
        call = ExactCall(want_v=want_v)
        xL, vL = MemoryFreeMomentum.apply(stack, call, len(params), x, v0, *params, *leaves)
        if xL.requires_grad:
            xL = GradientHandoff.apply(xL, call)
        return MomentumState(xL, vL, call.tape)

    def _plain(self, x, v, args, kwargs, visit=None):
        stack = self._stack()
        return plain_steps(stack, x, v, lambda i, module, xi: stack.residual_of(module, xi, args, kwargs),
                           visit)

    @torch.no_grad()
    def trajectory(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Positions x_0, ..., x_L of the inputs through the stack, shaped (L + 1, *x.shape)."""
        self._check_input(x)
        out = [x]
        self._plain(x, self._initial_velocity(x, none_for_zero=True), args, kwargs, visit=out.append)
        return torch.stack(out)

    def _initial_velocity(self, x, none_for_zero=False):
        if self.init_velocity is None:
            return None if none_for_zero else torch.zeros_like(x)
        v0 = self.init_velocity(x)
        if not isinstance(v0, torch.Tensor) or v0.shape != x.shape:
            raise ValueError(f"init_velocity must return a tensor shaped like x {tuple(x.shape)}, "
                             f"got {getattr(v0, 'shape', type(v0).__name__)}")
        return v0

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"MomentumNet expects a tensor input, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"MomentumNet expects a floating-point input, got {x.dtype}; "
                            "convert it with x.float()")

    # ------------------------------------------------------------------ inverse
    def inverse(self, x_L, *args, **kwargs):
        """Run the stack backwards: returns (x_0, v_0).

        ``inverse(state, *args, **kwargs)`` with a :class:`MomentumState` from
        :meth:`forward_state` (memory_efficient=True) is exact: it returns the fixed-point
        input the network saw, bit for bit. ``inverse(x_L, v_L, *args, **kwargs)`` with
        plain tensors applies the closed form of Eq. 3 in floating point, whose rounding
        error grows like gamma**-L (shown in the exact-reversibility notebook).
        """
        if isinstance(x_L, MomentumState):
            if x_L.tape is None:
                raise ValueError("this MomentumState has no exact tape (computed with ordinary "
                                 "backprop or recompute: memory_efficient=False, 'recompute', or "
                                 "'auto' choosing one of them; training_mode says which); use "
                                 "memory_efficient=True for an exact tape, or pass (state.x, "
                                 "state.v) for the floating-point inverse")
            with torch.no_grad():
                tape = run_inverse(self._stack(), x_L.tape, args, kwargs)
            x0 = exact.to_float(tape.x, tape.dtype)
            v0 = exact.to_float(tape.v, tape.dtype)
            return MomentumState(x0, v0, tape)
        if not args:
            raise TypeError("inverse needs (x_L, v_L, ...) or a MomentumState")
        v_L, args = args[0], args[1:]
        if self.gamma == 0:
            raise ValueError("gamma = 0 (a plain ResNet) cannot be inverted in closed form")
        stack = self._stack()
        x, v = x_L, v_L
        with torch.no_grad():
            for module in reversed(self.functions):
                x = x - v
                f = stack.residual_of(module, x, args, kwargs)
                v = (v - (1.0 - self.gamma) * f) / self.gamma
        return x, v


def describe(model: nn.Module) -> list:
    """One dict per momentum stack in ``model``: how it is trained and why.

    Keys: ``path`` (dotted name), ``depth``, ``requested`` (the ``MemoryMode`` asked
    for), ``mode`` (what the last forward with gradients did: "exact", "recompute" or
    "backprop"; None for an "auto" stack before its first such forward), and the
    estimates of the plan behind it (bytes, None before the first forward):
    ``backprop_bytes``, ``recompute_bytes``, ``exact_bytes`` (each mode's estimated share
    of the step's peak), ``gradient_bytes`` and ``kept`` (the last layers whose graphs
    an exact stack keeps from the forward pass). See ``mresnet_core.plan``. The first
    block of each converted stage (``convert.MomentumStage``) is a row of depth 1, mode
    "recompute" or "backprop", ``backprop_bytes`` what it saves for backward.
    """
    rows = []
    for path, m in model.named_modules():
        if isinstance(m, MomentumNet):
            plan = m.memory_plan()
            est = plan.estimates if plan is not None else {}
            rows.append({"path": path, "depth": len(m.functions), "requested": m.memory_efficient,
                         "mode": m.training_mode, "backprop_bytes": est.get("backprop"),
                         "recompute_bytes": est.get("recompute"), "exact_bytes": est.get("exact"),
                         "gradient_bytes": plan.gradient_bytes if plan is not None else None,
                         "kept": plan.kept if plan is not None else None})
        elif hasattr(m, "first_block_row"):  # a converted stage's first block (convert.MomentumStage)
            rows.append(m.first_block_row(path))
    return rows
