"""Per-stack training modes (exact / recompute / backprop / auto) against ordinary autograd,
and the "never worse than ordinary backprop" promise of the converter's default."""
import copy

import pytest
import torch
import torchvision
from torch import nn

from mresnet_core import MomentumNet, to_momentumnet
from mresnet_core.memory import describe, training_step_memory
from mresnet_core.modes import MemoryMode, memory_mode
from mresnet_core.plan import StackPlan
from helpers import Scaled, grads, mlp_stack, rel_err

MODES = [True, "recompute", False, "auto"]


def toy(depth, d=32, hidden=8, seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, d)) for _ in range(depth)]


# ------------------------------------------------------------------ the choice
def test_auto_keeps_a_one_block_stack_plain_and_inverts_a_long_one():
    x = torch.randn(128, 32)
    short = MomentumNet(toy(1), 0.9, memory_efficient="auto")
    long = MomentumNet(toy(64), 0.9, memory_efficient="auto")
    assert short.training_mode is None and short.memory_plan() is None  # not decided yet
    for net in (short, long):
        net(x).pow(2).mean().backward()
    assert short.training_mode in ("backprop", "recompute")
    assert long.training_mode == "exact"
    plan = long.memory_plan()
    assert isinstance(plan, StackPlan) and plan.requested == "auto" and plan.depth == 64
    assert plan.estimates["exact"] < plan.estimates["backprop"]
    assert plan.layer_bytes == (128 * 32 + 128 * 8) * 4  # Linear input + tanh output
    assert "exact (chosen" in str(plan)
    # a medium stack: on its own, ordinary backprop (recomputing would hold the same
    # activations in its backward); inside a network, recomputed (nothing held meanwhile)
    mid = MomentumNet(toy(4), 0.9, memory_efficient="auto")
    mid(x).sum().backward()
    assert mid.training_mode == "backprop"
    mid.within_network = True
    mid(x).sum().backward()
    assert mid.training_mode == "recompute"


@pytest.mark.parametrize("d, hidden, batch", [(32, 8, 128), (200, 40, 256)])
def test_a_lone_stack_under_auto_never_needs_more_than_ordinary_backprop(d, hidden, batch):
    """Measured whole steps: eager kernels (small tensors) and compiled ones (large)."""
    x = torch.randn(batch, d)
    modes = {}
    for depth in (2, 8, 16, 32):
        torch.manual_seed(depth)
        fns = [nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, d)) for _ in range(depth)]
        auto = MomentumNet(fns, 0.9, memory_efficient="auto")
        ordinary = MomentumNet(fns, 0.9, memory_efficient=False)
        peak = training_step_memory(auto, x).whole_step
        assert peak <= training_step_memory(ordinary, x).whole_step
        modes[depth] = auto.training_mode
    assert modes[2] == "backprop" and modes[32] == "exact"


def test_auto_never_inverts_gamma_0_and_no_grad_runs_plain():
    net = MomentumNet(toy(64), 0.0, memory_efficient="auto")  # no error: auto never inverts
    x = torch.randn(128, 32)
    net(x).sum().backward()
    assert net.training_mode != "exact" and net.memory_plan().estimates["exact"] is None
    with pytest.raises(ValueError, match="cannot be inverted"):
        MomentumNet(toy(2), 0.0, memory_efficient=True)
    fresh = MomentumNet(toy(64), 0.9, memory_efficient="auto")
    with torch.no_grad():
        fresh(x)
    assert fresh.training_mode is None  # nothing to save without a graph: no plan needed


def test_forcing_and_the_memory_efficient_values():
    assert [memory_mode(v) for v in (True, False, "auto", "recompute", MemoryMode.EXACT)] == [
        "exact", "backprop", "auto", "recompute", "exact"]
    with pytest.raises(ValueError, match="memory_efficient must be"):
        MomentumNet(toy(2), 0.9, memory_efficient="fast")
    x = torch.randn(128, 32)
    for value, mode in ((True, "exact"), (False, "backprop"), ("recompute", "recompute")):
        net = MomentumNet(toy(64), 0.9, memory_efficient=value)
        assert net.memory_efficient == mode and net.training_mode == mode
        net(x).sum().backward()
        assert net.training_mode == mode
        assert net.memory_plan(x).mode == mode  # estimates on request, forced mode kept
    net = MomentumNet(toy(64), 0.9, memory_efficient=False)
    net.memory_efficient = "auto"  # can be switched after construction
    net(x).sum().backward()
    assert net.training_mode == "exact"


def test_planning_changes_nothing_observable():
    """The probe call restores BatchNorm statistics and the RNG stream."""
    torch.manual_seed(0)
    fns = [nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Dropout(0.3)).double() for _ in range(3)]
    net = MomentumNet(fns, 0.9, memory_efficient="auto")
    x = torch.randn(8, 6, dtype=torch.float64)
    before = [b.clone() for b in net.buffers()]
    rng = torch.get_rng_state()
    net.memory_plan(x)
    assert all(torch.equal(a, b) for a, b in zip(before, net.buffers(), strict=True))
    assert torch.equal(rng, torch.get_rng_state())


def test_describe_lists_every_stack():
    torch.manual_seed(0)
    model = to_momentumnet(torchvision.models.resnet18(num_classes=3), 0.9)
    rows = describe(model)
    assert [r["path"] for r in rows] == [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)]
    assert all(r["requested"] == "auto" and r["mode"] is None for r in rows)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    rows = describe(model)
    assert all(r["mode"] in ("recompute", "backprop") and r["depth"] == 1 for r in rows)
    stacks, firsts = rows[1::2], rows[::2]
    assert all(r["backprop_bytes"] > 0 and r["exact_bytes"] > r["backprop_bytes"] for r in stacks)
    assert all(r["backprop_bytes"] > 0 and r["exact_bytes"] is None for r in firsts)


# ------------------------------------------------------------------ exact in every mode
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("depth", [1, 12])
def test_every_mode_matches_autograd(mode, depth):
    fns = mlp_stack(depth)
    plain = MomentumNet(fns, 0.9, memory_efficient=False)
    net = MomentumNet(fns, 0.9, memory_efficient=mode)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    y0, g0 = grads(plain, x)
    y1, g1 = grads(net, x)
    assert rel_err(y1, y0) < 1e-6
    for a, b in zip(g1, g0, strict=True):
        assert rel_err(a, b) < 1e-6


def test_recompute_is_bit_for_bit_autograd_with_arguments_and_velocity():
    d, dtype = 6, torch.float64
    torch.manual_seed(1)
    fns = [Scaled(d, dtype) for _ in range(7)]
    init = nn.Linear(d, d).to(dtype)
    plain = MomentumNet(fns, 0.7, memory_efficient=False, init_velocity=init)
    net = MomentumNet(fns, 0.7, memory_efficient="recompute", init_velocity=init)
    x = torch.randn(4, d, dtype=dtype, requires_grad=True)
    scale = torch.rand(d, dtype=dtype, requires_grad=True)
    shift = torch.randn(4, d, dtype=dtype, requires_grad=True)
    y0, g0 = grads(plain, x, scale, shift=shift)
    y1, g1 = grads(net, x, scale, shift=shift)
    assert torch.equal(y0, y1)
    assert len(g1) == 1 + 2 * 7 + 2 + 2
    for a, b in zip(g1, g0, strict=True):
        assert torch.equal(a, b)
    # v_L gets its gradient too (forward_state), and a second backward works
    state = net.forward_state(x, scale)
    loss = (state.x ** 2).sum() + (state.v ** 3).sum()
    ref = plain.forward_state(x, scale)
    want = torch.autograd.grad((ref.x ** 2).sum() + (ref.v ** 3).sum(), [x, scale])
    got = torch.autograd.grad(loss, [x, scale], retain_graph=True)
    again = torch.autograd.grad(loss, [x, scale])
    for a, b, c in zip(got, again, want, strict=True):
        assert torch.equal(a, c) and torch.equal(b, c)


def test_recompute_replays_dropout_and_updates_batchnorm_once():
    torch.manual_seed(0)
    fns = [nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Dropout(0.4), nn.Tanh()).double()
           for _ in range(5)]
    shared = fns[1]
    fns[3] = shared  # a module used twice: its statistics are updated twice, as in autograd
    plain = MomentumNet(copy.deepcopy(fns), 0.8, memory_efficient=False)
    net = MomentumNet(copy.deepcopy(fns), 0.8, memory_efficient="recompute")
    x = torch.randn(16, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(5)
    y0, g0 = grads(plain, x)
    after0 = torch.get_rng_state()
    torch.manual_seed(5)
    y1, g1 = grads(net, x)
    assert torch.equal(after0, torch.get_rng_state())
    for a, b in zip((y1, *g1), (y0, *g0), strict=True):
        assert torch.equal(a, b)
    for b0, b1 in zip(plain.buffers(), net.buffers(), strict=True):
        assert torch.equal(b0, b1), "running statistics differ"


def test_gradcheck_recompute():
    torch.manual_seed(0)
    net = MomentumNet(mlp_stack(4), 0.6, memory_efficient="recompute")
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: net(t), (x,))


# ------------------------------------------------------------------ never worse than backprop
def cifar_resnet(arch):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _whole_step(model, x, y):
    return training_step_memory(model, x, loss=lambda out: nn.functional.cross_entropy(out, y)).whole_step


@pytest.mark.parametrize("arch", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])
def test_converted_resnet_with_defaults_trains_within_ordinary_backprop(arch):
    model = cifar_resnet(arch)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    ordinary = _whole_step(to_momentumnet(model, 0.9, memory_efficient=False), x, y)
    default = to_momentumnet(model, 0.9)
    assert _whole_step(default, x, y) <= ordinary
    assert all(r["mode"] is not None for r in describe(default))


def test_planning_in_the_first_step_of_a_shape_costs_no_memory_of_its_own():
    """The plan is made inside the first step at each input shape; sizing a layer keeps
    nothing of what it saves, so that step peaks where the later ones do (5 % slack;
    it took 1.47x the later steps' peak when the probe kept its graph)."""
    from mresnet_core import to_momentumnet
    from mresnet_core.models import build_resnet

    torch.manual_seed(0)
    model = to_momentumnet(build_resnet(18, 10, stem="cifar", width=32), 0.9)
    loss = lambda out: out.logsumexp(1).mean()  # noqa: E731
    training_step_memory(model, torch.randn(2, 3, 32, 32), loss=loss, warmup=1)  # planned at batch 2
    x = torch.randn(32, 3, 32, 32)
    first = training_step_memory(model, x, loss=loss, warmup=0).whole_step  # plans batch 32
    later = training_step_memory(model, x, loss=loss, warmup=0).whole_step
    assert first <= 1.05 * later, (first, later)


def test_a_layer_sized_without_holding_counts_what_holding_counts():
    from mresnet_core.accounting import saved_tensors

    fn = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    x = torch.randn(16, 32, requires_grad=True)
    held, unheld = (saved_tensors(fn, x, hold=hold) for hold in (True, False))
    assert unheld.nbytes == held.nbytes > 0 and unheld.count == held.count and unheld.output is None
