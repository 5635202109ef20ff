"""What users do that could make a momentum stack silently wrong or crash: edited
weights, non-deterministic functions, double backward, forward hooks, mixed precision,
torch.compile. Each is either correct (compared with ordinary backprop) or a clear error."""
import random
import textwrap

import pytest
import torch
from torch import nn

from mresnet_core import MomentumNet, ReconstructionError, to_momentumnet

from helpers import fresh_python, mlp_stack

FREE_MODES = ["exact", "recompute", "auto"]


def deep(gamma, mode, depth=24):
    torch.manual_seed(0)
    return MomentumNet(mlp_stack(depth, d=6, hidden=5), gamma, memory_efficient=mode)


@pytest.mark.parametrize("gamma", [0.5, 0.25, 0.9])
@pytest.mark.parametrize("mode", FREE_MODES)
def test_parameters_edited_between_forward_and_backward_raise(gamma, mode):
    net = deep(gamma, mode)
    x = torch.randn(16, 6, dtype=torch.float64, requires_grad=True)
    loss = net(x).pow(2).sum()
    with torch.no_grad():  # what optimizer.step() does to a parameter
        net.functions[3][0].weight.add_(1e-3)
    with pytest.raises(ReconstructionError, match="layer 3 .*changed in place between the forward"):
        loss.backward()


@pytest.mark.parametrize("gamma", [0.5, 0.25, 0.9])
def test_an_untracked_edit_is_caught_by_the_rebuilt_input(gamma):
    """``.data`` edits bump no version counter; at gamma = 2**-k the information buffer
    ends empty whatever v was: the fingerprint of the rebuilt (x0, v0) catches it."""
    net = deep(gamma, "exact")
    x = torch.randn(16, 6, dtype=torch.float64, requires_grad=True)
    loss = net(x).pow(2).sum()
    net.functions[5][2].bias.data.add_(1e-3)
    with pytest.raises(ReconstructionError, match="could not rebuild"):
        loss.backward()


class Counting(nn.Module):
    """A residual function that changes with every call (a call counter)."""

    def __init__(self):
        super().__init__()
        self.lin, self.calls = nn.Linear(6, 6), 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x) * (1 + 1e-3 * self.calls)


class PythonRandom(nn.Module):
    """A residual function drawing from Python's random module (no torch RNG to replay)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        return self.lin(x) * random.uniform(0.9, 1.1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: digests of int64 views
@pytest.mark.parametrize("make", [Counting, PythonRandom])
@pytest.mark.parametrize("mode", FREE_MODES)
def test_non_deterministic_residual_functions_raise_in_every_mode(make, mode, dtype):
    torch.manual_seed(0)
    net = MomentumNet([nn.Sequential(nn.Linear(6, 6), nn.Tanh()), make(),
                       nn.Linear(6, 6)] * 4, 0.9, memory_efficient=mode).to(dtype)
    x = torch.randn(64, 6, dtype=dtype, requires_grad=True)
    loss = net(x).pow(2).sum()
    assert net.training_mode in ("exact", "recompute")
    with pytest.raises(ReconstructionError, match="not deterministic"):
        loss.backward()


@pytest.mark.parametrize("mode", FREE_MODES)
def test_double_backward_is_a_clear_error(mode):
    net = deep(0.9, mode)
    x = torch.randn(16, 6, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(net(x).pow(2).sum(), x)  # first order still works
    assert gx.shape == x.shape
    with pytest.raises(RuntimeError, match="double backward .* memory_efficient='backprop'"):
        torch.autograd.grad(net(x).pow(2).sum(), x, create_graph=True)
    plain = deep(0.9, "backprop")
    (g,) = torch.autograd.grad(plain(x).pow(2).sum(), x, create_graph=True)
    g.pow(2).sum().backward()  # ordinary backprop gives second order gradients


HOOKED = textwrap.dedent("""
    import torch
    from torch import nn
    from mresnet_core import MomentumNet
    torch.manual_seed(0)
    seen = []
    def keep(module, inputs, output):
        seen.append((module, inputs[0].detach().clone(), output))
    fns = [nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 32)) for _ in range(6)]
    for f in fns:
        f.register_forward_hook(keep)
    net = MomentumNet(fns, 0.9, memory_efficient=MODE)
    net(torch.randn(64, 32)).pow(2).sum().backward()
    snapshot = list(seen)  # the checks below call the functions (and the hook) again
    with torch.no_grad():
        bad = [i for i, (module, inp, out) in enumerate(snapshot)
               if out.untyped_storage().nbytes() != out.nbytes or not torch.equal(module(inp), out)]
    assert len(seen) > 6 and not bad, bad
    print("intact", len(seen))
""")


@pytest.mark.parametrize("mode", ["exact", "auto"])
def test_a_forward_hook_keeps_the_outputs_it_saw_intact(mode):
    """A hook keeping block outputs (to inspect features) must read them intact after
    backward: the library frees only memory that nothing else holds. In a fresh process:
    reading freed memory can kill it."""
    assert "intact" in fresh_python(HOOKED.replace("MODE", repr(mode)))


def test_recomputed_outputs_are_still_freed_when_nothing_else_holds_them(monkeypatch):
    """The other side of the hook test: without holders, f's memory goes early (the
    memory targets rest on it), so the ownership check is not simply always False.
    (Fused pops off: the top one writes the float x below over f instead.)"""
    from mresnet_core import _torch_private
    assert _torch_private.check_freeing()
    freed = []
    real = _torch_private.free_storage

    import mresnet_core.exact_walk as walk
    monkeypatch.setattr(walk, "lowest_fused_layer", lambda stack, x_bytes: len(stack.functions))
    try:
        walk.free_storage = lambda t: (freed.append(t.nbytes), real(t))
        net = MomentumNet(mlp_stack(6, d=32, hidden=16, dtype=torch.float32), 0.9, memory_efficient="exact")
        net(torch.randn(64, 32)).pow(2).sum().backward()
    finally:
        walk.free_storage = real
    assert len(freed) == 6


def tiny_resnet18():
    from mresnet_core.models import build_model
    torch.manual_seed(0)
    return build_model("resnet18", width=8)


def grads_of(model, x, autocast=None):
    """Parameter gradients of one step; the forward under ``torch.autocast`` to
    ``autocast`` if given, the backward outside it (as PyTorch recommends)."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss = model(x).float().pow(2).mean()
    loss.backward()
    return {k.removeprefix("_orig_mod."): p.grad.float().clone()
            for k, p in model.named_parameters() if p.grad is not None}


def worst_relative(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-30)) for k in a)


@pytest.mark.parametrize("mode", ["exact", "recompute", "auto", "backprop"])
def test_autocast_bfloat16_trains_in_every_mode_like_ordinary_backprop(mode):
    base = tiny_resnet18()
    x = torch.randn(8, 3, 16, 16)
    ref_model = to_momentumnet(base, 0.9, memory_efficient="backprop")
    model = to_momentumnet(base, 0.9, memory_efficient=mode)
    ref, got = (grads_of(m, x, autocast=torch.bfloat16) for m in (ref_model, model))
    assert worst_relative(got, ref) < 2e-2
    for a, b in zip(model.buffers(), ref_model.buffers()):  # BatchNorm statistics updated once
        assert torch.allclose(a.float(), b.float(), rtol=2e-2, atol=1e-3)


@pytest.mark.slow
def test_torch_compile_of_a_converted_resnet18_trains_with_the_eager_gradients():
    """Each mode compiled gives its eager gradients as closely as compiling the
    unconverted model does (criterion: within twice that model's own compile error,
    plus 1e-6 for float32 rounding)."""
    torch._dynamo.reset()
    x = torch.randn(4, 3, 16, 16)
    base = tiny_resnet18()
    plain_eager = grads_of(base, x)
    compiled_base = tiny_resnet18()
    own = worst_relative(grads_of(torch.compile(compiled_base), x), plain_eager)
    for mode in ["exact", "recompute", "auto", "backprop"]:
        eager = grads_of(to_momentumnet(tiny_resnet18(), 0.9, memory_efficient=mode), x)
        model = to_momentumnet(tiny_resnet18(), 0.9, memory_efficient=mode)
        compiled = grads_of(torch.compile(model), x)
        assert worst_relative(compiled, eager) <= 2 * own + 1e-6, mode


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exact", "recompute", "auto", "backprop"])
def test_torch_compile_of_a_momentum_net_gives_the_eager_gradients(mode):
    torch._dynamo.reset()
    x = torch.randn(32, 6)
    eager = deep(0.9, mode, depth=12).float()
    compiled = deep(0.9, mode, depth=12).float()
    ge = grads_of(eager, x)
    gc = grads_of(torch.compile(compiled), x)
    assert worst_relative(gc, ge) < 1e-5


class OneUlpLater(nn.Module):
    """Linear, whose output from the second call on is one float step off in one element."""

    def __init__(self, d):
        super().__init__()
        self.lin, self.calls = nn.Linear(d, d), 0

    def forward(self, x):
        self.calls += 1
        out = self.lin(x)
        if self.calls > 1:
            out = out.clone()
            out[-1, -1] = torch.nextafter(out[-1, -1], torch.tensor(float("inf")))
        return out


@pytest.mark.parametrize("rows, d", [(64, 6), (63, 5)])  # whole int64 words of float32, and not
def test_a_recomputation_one_float_step_off_is_caught(rows, d):
    torch.manual_seed(0)
    net = MomentumNet([nn.Sequential(nn.Linear(d, d), nn.Tanh()), OneUlpLater(d)], 0.9,
                      memory_efficient="recompute")
    loss = net(torch.randn(rows, d, requires_grad=True)).pow(2).sum()
    with pytest.raises(ReconstructionError, match="not deterministic"):
        loss.backward()
