"""The recompute path of a momentum stack: keep only its float input, re-run it in backward.

`plain_steps` is the momentum update in floating point (Eq. 2), the one loop that the
ordinary path, the recompute path and ``MomentumNet.trajectory`` share, so that the
recomputation gives the forward pass's values bit for bit. `RecomputeMomentum` runs it
without a graph, keeping each layer's replay record (RNG state, module buffers); its
backward re-runs it with a graph under those records and backpropagates through it.
Gradients are those of ordinary autograd; the stack's activations exist only during its
own backward. A recomputation that does not give the forward's x_L and v_L bit for bit
(a non-deterministic residual function, parameters changed in between) is an error,
never silently different gradients.

`RecomputeBlock` does the same for one block outside any stack (the first block of a
converted stage, which changes shape): it keeps only the block's input and re-runs the
block in backward, bit for bit (``convert.MomentumStage``).
"""
from __future__ import annotations

import dataclasses

import torch

from . import exact
from ._torch_private import free_storage, tree_unflatten
from .exact_walk import fingerprint
from .replay import ForwardRecord, Replaying, Stack, call_recording, slow_attention


def plain_steps(stack: Stack, x, v, call, visit=None):
    """x_L, v_L of the stack in floating point; ``call(i, module, x)`` returns f_i(x).

        v_{i+1} = gamma v_i + (1 - gamma) f_i(x_i),    x_{i+1} = x_i + v_{i+1}

    ``v`` None is v_0 = 0 without a tensor of zeros (v_1 = (1 - gamma) f_0(x_0)). The
    sum is accumulated in place into gamma v (which no backward needs): the same bits
    as ``v * gamma + f * (1 - gamma)`` with two fewer full-size temporaries.
    """
    gamma = stack.gamma
    for i, module in enumerate(stack.functions):
        f = call(i, module, x)
        if v is None:
            v = f * (1.0 - gamma)
        else:
            v = v * gamma
            v += f * (1.0 - gamma)
        x = x + v
        if visit is not None:
            visit(x)
    return x, (torch.zeros_like(x) if v is None else v)


class RecomputeMomentum(torch.autograd.Function):
    """autograd.Function: inputs (x0, v0 or None, *params, *arg tensors) -> (x_L, v_L).

    ``v0`` None stands for zeros (not kept). Saved: x0 (usually alive anyway as the
    previous layer's output or the data), v0 when given, tensor arguments and one replay
    record per layer.
    """

    @staticmethod
    def forward(ctx, stack: Stack, n_params: int, x0, v0, *inputs):
        arg_leaves = inputs[n_params:]
        args, kwargs = tree_unflatten(list(arg_leaves), stack.args_spec)
        replays = []

        def call(i, module, x):
            f, replay = call_recording(stack, i, x, args, kwargs)
            replays.append(replay)
            return f

        with slow_attention():
            xL, vL = plain_steps(stack, x0, v0, call)
        ctx.stack, ctx.replays, ctx.n_params, ctx.v0_given = stack, replays, n_params, v0 is not None
        ctx.record = ForwardRecord.capture(stack)
        ctx.outputs = _bits(xL, vL)
        ctx.leaf_is_tensor = [isinstance(a, torch.Tensor) for a in arg_leaves]
        ctx.other_leaves = [None if t else a for a, t in zip(arg_leaves, ctx.leaf_is_tensor)]
        ctx.save_for_backward(x0, *([v0] if v0 is not None else []),
                              *[a for a in arg_leaves if isinstance(a, torch.Tensor)])
        return xL, vL

    @staticmethod
    def backward(ctx, grad_x, grad_v):
        with ctx.record.recomputing(ctx.stack):
            return RecomputeMomentum._backward(ctx, grad_x, grad_v)

    @staticmethod
    def _backward(ctx, grad_x, grad_v):
        saved = list(ctx.saved_tensors)
        x0 = saved.pop(0)
        v0 = saved.pop(0) if ctx.v0_given else None
        stack: Stack = ctx.stack
        it = iter(saved)
        arg_leaves = [next(it) if t else o for t, o in zip(ctx.leaf_is_tensor, ctx.other_leaves)]
        needs = ctx.needs_input_grad  # (stack, n_params, x0, v0, *params, *arg leaves)
        stack = dataclasses.replace(stack)  # parameters as they are now (see reversible.py)
        params = stack.params
        param_needs = needs[4:4 + ctx.n_params]
        arg_needs = needs[4 + ctx.n_params:]
        leaves = [a.detach().requires_grad_(True) if (need and isinstance(a, torch.Tensor)) else a
                  for a, need in zip(arg_leaves, arg_needs)]
        args, kwargs = tree_unflatten(list(leaves), stack.args_spec)
        x = x0.detach().requires_grad_(needs[2])
        v = None if v0 is None else v0.detach().requires_grad_(needs[3])

        def call(i, module, xi):
            with Replaying(module, ctx.replays[i], xi.device, untracked=True):
                return stack.residual_of(module, xi, args, kwargs)

        with torch.enable_grad(), slow_attention():
            xL, vL = plain_steps(stack, x, v, call)
        if _bits(xL, vL) != ctx.outputs:
            raise exact.ReconstructionError(exact.NOT_REPLAYABLE)
        wrt = ([x] if needs[2] else []) + ([v] if needs[3] and v is not None else [])
        wrt += [p for p, need in zip(params, param_needs) if need]
        wrt += [a for a, need in zip(leaves, arg_needs) if need]
        outs, grads_out = [], []
        for out, g in ((xL, grad_x), (vL, grad_v)):
            if g is not None and out.requires_grad:
                outs.append(out)
                grads_out.append(g)
        # x_L and v_L come from the update's own additions, whose backward needs no
        # values: free their data (two full-size tensors the ordinary path does not hold
        # at this point); autograd.grad only needs their shapes and graph
        for out in (xL, vL):
            free_storage(out)
        if outs and wrt:
            grads = list(torch.autograd.grad(outs, wrt, grads_out, allow_unused=True))
        else:
            grads = [None] * len(wrt)
        del outs, xL, vL
        it = iter(grads)
        gx = next(it) if needs[2] else None
        gv = next(it) if needs[3] and v0 is not None else None  # v0 None: no gradient
        out_params = [next(it) if need else None for need in param_needs]
        out_args = [next(it) if need else None for need in arg_needs]
        return (None, None, gx, gv, *out_params, *out_args)


def plain_call(module, x, args, kwargs):
    """The block's own output (``Stack.residual_of`` for a block recomputed on its own,
    which may change its input's shape)."""
    return module(x, *args, **kwargs)


class RecomputeBlock(torch.autograd.Function):
    """autograd.Function: (block as a depth-1 ``Stack`` with ``plain_call``, x, *params) ->
    block(x), without a graph; saved: x and the block's replay record. Backward re-runs
    the block on x with a graph under that record (RNG, buffers, autocast), checks that
    it gave the forward's output bit for bit, and backpropagates through it."""

    @staticmethod
    def forward(ctx, stack: Stack, x, *params):
        out, replay = call_recording(stack, 0, x, (), {})
        ctx.stack, ctx.replay, ctx.record = stack, replay, ForwardRecord.capture(stack)
        ctx.output = _bits(out)
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad):
        with ctx.record.recomputing(ctx.stack):
            (x,) = ctx.saved_tensors
            stack = dataclasses.replace(ctx.stack)  # the parameters as they are now
            block = stack.functions[0]
            xd = x.detach().requires_grad_(ctx.needs_input_grad[1])
            with Replaying(block, ctx.replay, x.device, untracked=True), torch.enable_grad():
                out = stack.residual_of(block, xd, (), {})
            if _bits(out) != ctx.output:
                raise exact.ReconstructionError(exact.NOT_REPLAYABLE)
            needs = ctx.needs_input_grad[2:]
            wrt = ([xd] if ctx.needs_input_grad[1] else []) + [p for p, n in zip(stack.params, needs) if n]
            grads = iter(torch.autograd.grad(out, wrt, grad, allow_unused=True) if wrt and out.requires_grad
                         else [None] * len(wrt))
            gx = next(grads) if ctx.needs_input_grad[1] else None
            return (None, gx, *[next(grads) if n else None for n in needs])


@torch.compiler.disable
def recompute_block(block: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """block(x) keeping only x for backward (`RecomputeBlock`); the same values and
    gradients as calling the block. torch.compile runs it as it is (eagerly): its
    backward re-runs the block eagerly, which must give the forward's bits."""
    stack = Stack(functions=[block], residual_of=plain_call, n=0)
    return RecomputeBlock.apply(stack, x, *stack.params)


def _bits(*tensors: torch.Tensor) -> list:
    """Fingerprint of float tensors' bits (``exact_walk.fingerprint`` of their integer view):
    a recomputation must reproduce the forward's outputs exactly. The view is int64 where
    the bytes allow (the C kernels' one threaded pass on the CPU: digests of int32 views,
    reduced by torch on slices, cost ResNet-18 a tenth of its step)."""
    return fingerprint(*[_as_integers(t.detach().contiguous().reshape(-1)) for t in tensors], freed_later=True)


def _as_integers(t: torch.Tensor) -> torch.Tensor:
    """The bits of flat contiguous ``t`` as int64, or as the integer type of its own
    width where its bytes are not whole 8-byte words."""
    if (t.numel() * t.element_size()) % 8 == 0 and (t.storage_offset() * t.element_size()) % 8 == 0:
        return t.view(torch.int64)
    return t.view(_INT_OF[t.element_size()])


_INT_OF = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}
