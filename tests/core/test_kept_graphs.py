"""An exact stack that keeps its last layers' graphs from the forward pass ("auto"):
the same bits as inverting every layer, a whole-step peak no higher, and accounting
that sees the kept graphs."""
import copy

import pytest
import torch
from torch import nn

import mresnet_core.plan as plan_module
from mresnet_core import MomentumNet, exact
from mresnet_core.memory import describe, measure_step_memory, saved_tensor_bytes, training_step_memory
from mresnet_core.plan import exact_state_bytes, kept_layers
from helpers import Scaled, grads, mlp_stack


@pytest.fixture
def keep(monkeypatch):
    """Make "auto" choose exact inversion and keep the given number of graphs."""
    def set_kept(k):
        monkeypatch.setattr(plan_module, "choose_mode", lambda *a: "exact")
        monkeypatch.setattr(plan_module, "kept_layers", lambda *a: k)
    return set_kept


def noisy_stack(depth, seed=0):
    """Functions with BatchNorm statistics and dropout: both need replay records."""
    return mlp_stack(depth, seed=seed, extra=(nn.BatchNorm1d(5), nn.Dropout(0.2)))


def run(net, x, seed=3):
    torch.manual_seed(seed)
    return grads(net, x)


@pytest.mark.parametrize("kept", [1, 5, 11])
def test_same_bits_as_inverting_every_layer(keep, kept):
    keep(kept)
    fns = noisy_stack(12)  # one BatchNorm shared by every layer: its statistics move per call
    init = nn.Linear(6, 6).double()
    forced = MomentumNet(fns, 0.9, memory_efficient=True, init_velocity=init)
    auto = MomentumNet(copy.deepcopy(fns), 0.9, memory_efficient="auto",
                       init_velocity=copy.deepcopy(init))
    x = torch.randn(7, 6, dtype=torch.float64, requires_grad=True)
    y0, g0 = run(forced, x)
    y1, g1 = run(auto, x)
    assert auto.training_mode == "exact" and auto.memory_plan().kept == kept
    assert torch.equal(y0, y1)
    assert len(g1) == len(g0) == 1 + 4 * 12 + 2 + 2  # x, 12 x two Linear, the BatchNorm, v0's
    for a, b in zip(g1, g0, strict=True):
        assert torch.equal(a, b)
    # the kept layers updated the statistics once each, as the inverted ones did
    for a, b in zip(auto.buffers(), forced.buffers(), strict=True):
        assert torch.equal(a, b)


def test_second_backward_and_exact_inverse_after_keeping(keep):
    keep(4)
    fns = noisy_stack(9, seed=1)
    net = MomentumNet(fns, 0.8, memory_efficient="auto")
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    state = net.forward_state(x)
    assert net.memory_plan().kept == 4
    loss = (state.x ** 2).sum() + (state.v ** 3).sum()
    params = list(net.parameters())
    first = torch.autograd.grad(loss, [x, *params], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *params])  # replays every layer from x
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    # the tape at the top was not unwound by the backward passes: still exact
    x0, _ = net.inverse(state)
    assert torch.equal(exact.to_fixed(x0), exact.to_fixed(x))


def test_an_argument_needing_its_gradient_turns_keeping_off(keep):
    keep(3)
    torch.manual_seed(2)
    fns = [Scaled(6, torch.float64) for _ in range(6)]
    plain = MomentumNet(fns, 0.9, memory_efficient=False)
    auto = MomentumNet(fns, 0.9, memory_efficient="auto")
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(6, dtype=torch.float64, requires_grad=True)
    _, g0 = grads(plain, x, scale)
    _, g1 = grads(auto, x, scale)
    for a, b in zip(g1, g0, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    fixed = torch.rand(6, dtype=torch.float64)  # no gradient wanted: graphs are kept
    _, g0 = grads(plain, x, fixed)
    _, g1 = grads(auto, x, fixed)
    for a, b in zip(g1, g0, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def toy(depth, seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(32, 8), nn.Tanh(), nn.Linear(8, 32)) for _ in range(depth)]


def test_the_plan_keeps_what_fits_in_the_gradients_and_the_peak_holds(keep):
    fns = toy(128)
    x = torch.randn(128, 32)
    auto = MomentumNet(fns, 0.9, memory_efficient="auto")
    forced = MomentumNet(fns, 0.9, memory_efficient=True)
    auto(x).sum().backward()
    plan = auto.memory_plan()
    layer_grads = (32 * 8 + 8 + 8 * 32 + 32) * 4
    extra = x.numel() * (exact_state_bytes(auto._n) + 3 * 4)  # state copy, 3 temporaries
    want = kept_layers(128, plan.layer_bytes, extra, 128 * layer_grads, layer_grads)
    assert plan.mode == "exact" and plan.kept == want > 0
    assert f"last {want} layers' graphs kept" in str(plan) and describe(auto)[0]["kept"] == want
    m_auto = training_step_memory(auto, x)
    m_forced = training_step_memory(forced, x)
    assert m_auto.whole_step <= m_forced.whole_step * 1.01
    # the budget matters: keeping every layer's graph but one's would raise the peak
    keep(127)
    greedy = MomentumNet(fns, 0.9, memory_efficient="auto")
    assert training_step_memory(greedy, x).whole_step > m_forced.whole_step * 1.5
    assert greedy.memory_plan().kept == 127
    held_auto = saved_tensor_bytes(lambda: auto(x), exclude=auto)
    held_forced = saved_tensor_bytes(lambda: forced(x), exclude=forced)
    assert held_auto >= held_forced + want * plan.layer_bytes


def test_nothing_is_kept_without_parameter_gradients_to_make_room():
    fns = toy(256)  # frozen: a layer saves only its tanh output, so exact wins only deep
    for f in fns:
        f.requires_grad_(False)
    net = MomentumNet(fns, 0.9, memory_efficient="auto")
    net(torch.randn(128, 32, requires_grad=True)).sum().backward()
    assert net.training_mode == "exact" and net.memory_plan().kept == 0


def test_freezing_the_parameters_after_a_step_plans_again():
    fns = toy(256)
    net = MomentumNet(fns, 0.9, memory_efficient="auto")
    x = torch.randn(128, 32, requires_grad=True)
    net(x).sum().backward()
    assert net.memory_plan().kept > 0
    for f in fns:
        f.requires_grad_(False)
    net(x).sum().backward()
    assert net.training_mode == "exact" and net.memory_plan().kept == 0


def test_kept_graphs_fit_also_while_gradients_stay_allocated():
    """zero_grad(set_to_none=False): the stack's backward still returns new gradient
    tensors for all its parameters, so the kept graphs still fit in that room."""
    fns = toy(256)
    x = torch.randn(128, 32)
    peaks = {}
    for mode in (True, "auto"):
        net = MomentumNet(fns, 0.9, memory_efficient=mode)
        net(x).sum().backward()
        net.zero_grad(set_to_none=False)
        peaks[mode] = measure_step_memory(lambda: net(x).sum().backward()).peak
    assert net.memory_plan().kept > 0
    assert peaks["auto"] <= peaks[True] * 1.01


def test_kept_layers_budget():
    # room = grads - 2 * layer grads - extra (here 1100 bytes: 11 layers of 100)
    assert kept_layers(100, layer=100, extra=500, grads=2000, layer_grads=200) == 11
    assert kept_layers(10, layer=100, extra=500, grads=2000, layer_grads=200) == 9  # one inverted
    assert kept_layers(10, layer=100, extra=1600, grads=2000, layer_grads=200) == 0  # no room
    assert kept_layers(10, layer=0, extra=500, grads=2000, layer_grads=200) == 9
    assert kept_layers(1, layer=1, extra=0, grads=2000, layer_grads=0) == 0


def test_gradcheck_through_functional_call_with_kept_graphs(keep):
    """Kept graphs use the parameters the forward pass saw (here functional_call's)."""
    keep(2)
    torch.manual_seed(3)
    net = MomentumNet([Scaled(3, torch.float64) for _ in range(4)], 0.6, memory_efficient="auto")
    names = [n for n, _ in net.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(3, dtype=torch.float64)

    def fn(x, *ps):
        return torch.func.functional_call(net, dict(zip(names, ps)), (x, scale))

    fn(x, *params).sum().backward()
    assert net.memory_plan().kept == 2 and all(p.grad is not None for p in params)
    assert all(p.grad is None for p in net.parameters())  # not the module's own
    # eps well above the fixed point's 2**-40 (see test_momentum's gradcheck)
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-3, atol=1e-6, rtol=1e-4)
