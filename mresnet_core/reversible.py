"""The memory-free momentum stack as autograd sees it: forward without a graph,
backward by exact inversion.

`MemoryFreeMomentum` runs the exact forward walk (``exact_walk.run_forward``) and keeps
only the final (x, v), the information buffer and the per-layer replay records; its
backward rebuilds each layer's input (``exact_walk.run_inverse``) to recompute its
residual function with a graph, one layer at a time, and backpropagates through it
(``adjoint.MomentumAdjoint``). Parameter gradients are accumulated as it goes; no
per-layer gradient list is held. `GradientHandoff` hands the incoming gradient over so
that autograd does not hold it through the whole backward. The two nodes and the caller
share one :class:`ExactCall`.
"""
from __future__ import annotations

import dataclasses
import functools
import weakref
from dataclasses import dataclass

import torch

from . import exact
from .adjoint import MomentumAdjoint
from ._torch_private import sole_owner, tree_unflatten, version_of
from .accounting import report_held
from .exact_walk import Tape, replay_forward, run_forward, run_inverse
from .replay import ForwardRecord, Stack, refuse_double_backward


@dataclass
class ExactCall:
    """What one call of the memory-free stack shares between its caller and its two
    autograd nodes: the exact ``tape`` its forward produced (for ``MomentumState``;
    dropped once backward has used it), and the ``incoming_grad`` dL/dx_L that
    `GradientHandoff` hands to `MemoryFreeMomentum`'s backward. ``want_v``: whether the
    caller uses v_L (else the forward returns None for it: no float tensor the size of
    the state is made only to be thrown away)."""

    tape: Tape | None = None
    want_v: bool = True
    incoming_grad: torch.Tensor | None = None


class MemoryFreeMomentum(torch.autograd.Function):
    """autograd.Function: inputs (x0, v0, *params, *arg tensors) -> (x_L, v_L)."""

    @staticmethod
    def forward(ctx, stack: Stack, call: ExactCall, n_params: int, x0, v0, *inputs):
        arg_leaves = inputs[n_params:]  # the parameters are inputs only for autograd
        args, kwargs = tree_unflatten(list(arg_leaves), stack.args_spec)
        if stack.kept and any(isinstance(a, torch.Tensor) and a.requires_grad for a in arg_leaves):
            # kept graphs would have to reach the arguments' own leaves: invert all layers
            stack = dataclasses.replace(stack, kept=0)
        tape, kept, x_top = run_forward(stack, x0, v0, args, kwargs)
        call.tape = tape
        # The tape is kept on ctx, not through save_for_backward: backward unwinds it in
        # place (no second copy of x, v and the buffer), and a second backward
        # (retain_graph) rebuilds it by replaying the forward from the exact (x0, v0)
        # that unwinding leaves behind, or from the float inputs once it has dropped
        # them (_keep_inputs). Memory accounting sees it through report_held.
        ctx.stack, ctx.tape, ctx.n_params, ctx.call = stack, tape, n_params, call
        ctx.kept, ctx.record = kept, ForwardRecord.capture(stack)
        # weak references to the float inputs: if they are still alive when backward
        # reaches depth 0, the exact state can go there (a second backward rebuilds it
        # from them); keeping them alive ourselves would cost memory in the forward pass
        ctx.inputs = [(weakref.ref(t), version_of(t)) if t is not None else None for t in (x0, v0)]
        report_held(tape.tensors() if kept is None else [*tape.tensors(), *kept.bottom.tensors(),
                                                         *kept.forward_done()])
        ctx.leaf_is_tensor = [isinstance(a, torch.Tensor) for a in arg_leaves]
        ctx.other_leaves = [None if t else a for a, t in zip(arg_leaves, ctx.leaf_is_tensor)]
        ctx.save_for_backward(*[a for a in arg_leaves if isinstance(a, torch.Tensor)])
        ctx.set_materialize_grads(False)  # an unused v_L gets no tensor of zeros
        return x_top, exact.to_float(tape.v, tape.dtype) if call.want_v else None

    @staticmethod
    def backward(ctx, grad_x, grad_v):
        with ctx.record.recomputing(ctx.stack):
            return MemoryFreeMomentum._backward(ctx, grad_x, grad_v)

    @staticmethod
    def _backward(ctx, grad_x, grad_v):
        saved_args = iter(ctx.saved_tensors)
        arg_leaves = [next(saved_args) if t else o for t, o in zip(ctx.leaf_is_tensor, ctx.other_leaves)]
        stack: Stack = ctx.stack
        kept, ctx.kept = ctx.kept, None  # a kept graph can be backpropagated once
        if kept is not None:
            # the layers from kept.start up are not inverted: the top tape is not needed
            # here (it stays whole for a caller holding the MomentumState)
            tape = ctx.tape = kept.bottom
            ctx.call.tape = None
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
        handed, ctx.call.incoming_grad = ctx.call.incoming_grad, None  # see GradientHandoff
        # a gradient no other node holds (not one an addition handed to two inputs) is ours
        owned = handed is not None and handed.dtype == tape.dtype and sole_owner(handed)
        if handed is not None:
            grad_x = handed
        adjoint = MomentumAdjoint(grad_x, grad_v, stack.gamma, tape.x.shape, tape.dtype, tape.x.device,
                                  grad_x_owned=owned)
        # from here on only the adjoint holds the incoming gradient, and it lets it go at
        # the first layer (a name in this frame would keep it alive to the end)
        handed = grad_x = grad_v = None

        def on_layer(i, xf, out, skip=False, source=params):
            """Layer i's backward, f(xf) = out - xf if ``skip`` else out; ``source``: the
            parameters its graph was built with."""
            mine = layer_params[i]
            grads = adjoint.step(xf, out, [*(source[j] for j in mine), *wrt_args], last=i == 0, skip=skip)
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
                on_layer(i, kept.xs[j], kept.fs[j], source=ctx.stack.params)
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
    stack's backward through its :class:`ExactCall` and gives autograd a zero-stride
    stand-in.

    Autograd keeps a node's incoming gradients alive until its backward returns; the
    stack's backward runs through every layer, and the gradient it received (a full-size
    tensor) would be held beside the adjoint's own two the whole time. Handed over, it
    is freed as soon as the first layer's adjoint has replaced it.
    """

    @staticmethod
    def forward(ctx, x, call: ExactCall):
        ctx.call = call
        return x.detach()  # an alias autograd does not track as a view: in-place use stays allowed

    @staticmethod
    def backward(ctx, grad):
        refuse_double_backward()
        ctx.call.incoming_grad = grad
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
        if t is None or version_of(t) != entry[1]:
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
        if t is not None and version_of(t) != entry[1]:  # a detached alias shares the version
            raise RuntimeError("the input of a memory-free momentum stack was modified in place "
                               "after the first backward pass; a second backward through the same "
                               "graph (retain_graph=True) needs it unchanged")
    return kept



