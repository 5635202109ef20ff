"""The memory-free path against ordinary autograd (an independent computation)."""
import copy

import pytest
import torch
from torch import nn

from mresnet_core import MomentumNet
from helpers import Scaled, grads, mlp_stack, rel_err

GAMMAS = [0.01, 0.1, 0.5, 0.9, 0.99]
TOL = {torch.float64: 1e-6, torch.float32: 1e-4}


def pair(functions, gamma, **kw):
    plain = MomentumNet(functions, gamma, memory_efficient=False, **kw)
    free = MomentumNet(functions, gamma, memory_efficient=True, **kw)
    return plain, free


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("depth", [1, 12, 120])
def test_output_and_gradients_match_autograd(gamma, depth, dtype):
    plain, free = pair(mlp_stack(depth, dtype=dtype), gamma)
    x = torch.randn(5, 6, dtype=dtype, requires_grad=True)
    y0, g0 = grads(plain, x)
    y1, g1 = grads(free, x)
    assert rel_err(y1, y0) < TOL[dtype]
    for a, b in zip(g1, g0, strict=True):
        assert rel_err(a, b) < TOL[dtype]


@pytest.mark.parametrize("gamma", [0.01, 0.9])
def test_extra_positional_and_keyword_arguments_get_gradients(gamma):
    d, dtype = 6, torch.float64
    torch.manual_seed(1)
    fns = [Scaled(d, dtype) for _ in range(15)]
    plain, free = pair(fns, gamma)
    x = torch.randn(4, d, dtype=dtype, requires_grad=True)
    scale = torch.rand(d, dtype=dtype, requires_grad=True)
    shift = torch.randn(4, d, dtype=dtype, requires_grad=True)
    y0, g0 = grads(plain, x, scale, shift=shift)
    y1, g1 = grads(free, x, scale, shift=shift)
    assert rel_err(y1, y0) < 1e-6
    assert len(g1) == 1 + 2 * 15 + 2  # x, weights and biases, scale and shift
    for a, b in zip(g1, g0, strict=True):
        assert rel_err(a, b) < 1e-6
    # the keyword argument really reaches the functions
    assert rel_err(free(x, scale), y1) > 1e-3


def test_v_L_gradient_flows_through_forward_state():
    plain, free = pair(mlp_stack(20), 0.7)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    loss = lambda s: (s.x ** 2).sum() + (s.v ** 3).sum()  # noqa: E731
    g0 = torch.autograd.grad(loss(plain.forward_state(x)), [x, *plain.parameters()])
    g1 = torch.autograd.grad(loss(free.forward_state(x)), [x, *free.parameters()])
    for a, b in zip(g1, g0, strict=True):
        assert rel_err(a, b) < 1e-6


def test_init_velocity_module_gets_gradients():
    torch.manual_seed(2)
    init = torch.nn.Linear(6, 6).double()
    plain, free = pair(mlp_stack(10), 0.9, init_velocity=init)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    y0, g0 = grads(plain, x)
    y1, g1 = grads(free, x)
    assert len(g1) == 1 + 2 + 40
    assert rel_err(y1, y0) < 1e-6
    for a, b in zip(g1, g0, strict=True):
        assert rel_err(a, b) < 1e-6


def test_shared_module_accumulates_over_layers():
    block = mlp_stack(1)[0]
    plain, free = pair([block] * 30, 0.5)
    assert len(list(free.parameters())) == 4
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    y0, g0 = grads(plain, x)
    y1, g1 = grads(free, x)
    for a, b in zip((y1, *g1), (y0, *g0), strict=True):
        assert rel_err(a, b) < 1e-6


def test_frozen_parameters_get_no_gradient_and_others_are_right():
    fns = mlp_stack(8)
    for f in fns[::2]:
        f.requires_grad_(False)
    plain, free = pair(fns, 0.9)
    x = torch.randn(3, 6, dtype=torch.float64)  # input needs no grad either
    loss0 = (plain(x) ** 2).sum()
    loss1 = (free(x) ** 2).sum()
    trainable = [p for p in free.parameters() if p.requires_grad]
    g0 = torch.autograd.grad(loss0, trainable)
    g1 = torch.autograd.grad(loss1, trainable)
    for a, b in zip(g1, g0, strict=True):
        assert rel_err(a, b) < 1e-6
    (free(x) ** 2).sum().backward()
    assert all(p.grad is None for f in fns[::2] for p in f.parameters())


def test_dropout_masks_are_replayed():
    fns = mlp_stack(12, dtype=torch.float32, extra=(torch.nn.Dropout(0.5),))
    plain, free = pair(fns, 0.9)
    x = torch.randn(8, 6, requires_grad=True)
    torch.manual_seed(123)
    y0, g0 = grads(plain, x)
    after0 = torch.get_rng_state()
    torch.manual_seed(123)
    y1, g1 = grads(free, x)
    after1 = torch.get_rng_state()
    assert rel_err(y1, y0) < 1e-5
    for a, b in zip(g1, g0, strict=True):
        assert rel_err(a, b) < 1e-4
    # backward's recomputation leaves the global random stream where ordinary training does
    assert torch.equal(after0, after1)


def test_batchnorm_statistics_updated_once():
    torch.manual_seed(0)
    fns = [torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh()).double()
           for _ in range(6)]
    plain = MomentumNet(copy.deepcopy(fns), 0.8, memory_efficient=False)
    free = MomentumNet(copy.deepcopy(fns), 0.8, memory_efficient=True)
    x = torch.randn(16, 6, dtype=torch.float64, requires_grad=True)
    y0, g0 = grads(plain, x)
    y1, g1 = grads(free, x)
    for a, b in zip((y1, *g1), (y0, *g0), strict=True):
        # biases in front of BatchNorm have zero gradient: compare them absolutely
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-10)
    for b0, b1 in zip(plain.buffers(), free.buffers(), strict=True):
        assert torch.allclose(b0, b1, rtol=1e-9, atol=1e-12), "running statistics differ"
    # and they did change (one step), exactly once: num_batches_tracked == 1
    assert all(int(m.num_batches_tracked) == 1 for m in free.modules() if isinstance(m, torch.nn.BatchNorm1d))


def test_inputs_without_grad_and_no_grad_mode():
    plain, free = pair(mlp_stack(5), 0.9)
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        assert rel_err(free(x), plain(x)) < 1e-6
        assert free(x).grad_fn is None


def test_empty_stack_is_identity():
    net = MomentumNet([], 0.9, memory_efficient="exact")
    x = torch.randn(2, 3)
    assert torch.equal(net(x), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_works_and_matches_float32(dtype):
    fns32 = mlp_stack(10, dtype=torch.float32)
    fns_lp = [copy.deepcopy(f).to(dtype) for f in fns32]
    ref = MomentumNet(fns32, 0.9, memory_efficient=False)
    free = MomentumNet(fns_lp, 0.9, memory_efficient=True)
    plain_lp = MomentumNet(fns_lp, 0.9, memory_efficient=False)
    x = torch.randn(4, 6)
    xl = x.to(dtype).requires_grad_(True)
    y1, g1 = grads(free, xl)
    y2, g2 = grads(plain_lp, xl)
    assert y1.dtype == dtype and all(g.dtype == dtype for g in g1)
    tol = 2e-2 if dtype == torch.float16 else 8e-2
    assert rel_err(y1.float(), ref(x)) < tol
    for a, b in zip(g1, g2, strict=True):
        assert torch.isfinite(a).all()
        assert rel_err(a.float(), b.float()) < 4 * tol


def test_gradcheck_float64_inputs_params_and_extra_args():
    torch.manual_seed(3)
    fns = [Scaled(3, torch.float64) for _ in range(4)]
    net = MomentumNet(fns, 0.6, memory_efficient="exact")
    names = [n for n, _ in net.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(3, dtype=torch.float64, requires_grad=True)

    def fn(x, scale, *ps):
        return torch.func.functional_call(net, dict(zip(names, ps)), (x, scale))

    # the memory-free forward rounds to multiples of 2**-40 (~1e-12), so finite differences
    # need a step well above that: eps = 1e-3 keeps their noise near 1e-9
    assert torch.autograd.gradcheck(fn, (x, scale, *params), eps=1e-3, atol=1e-6, rtol=1e-4)


def test_second_backward_with_retain_graph_replays_the_forward():
    """backward unwinds the tape in place; a second backward rebuilds it exactly."""
    torch.manual_seed(0)
    fns = [torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.BatchNorm1d(6), torch.nn.Dropout(0.3),
                               torch.nn.Tanh()).double() for _ in range(5)]
    free = MomentumNet(fns, 0.8, memory_efficient="exact")
    x = torch.randn(16, 6, dtype=torch.float64, requires_grad=True)
    loss = (free(x) ** 2).sum()
    stats = [b.clone() for b in free.buffers()]
    rng = torch.get_rng_state()
    first = torch.autograd.grad(loss, [x, *free.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *free.parameters()])
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(stats, free.buffers(), strict=True))  # no extra BatchNorm update
    assert torch.equal(rng, torch.get_rng_state())


def test_tape_of_a_state_is_consumed_by_backward():
    free = MomentumNet(mlp_stack(4), 0.9, memory_efficient="exact")
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    state = free.forward_state(x)
    with torch.no_grad():
        x0, _ = free.inverse(state)  # the exact inverse leaves the tape reusable
        assert torch.equal(free.inverse(state).x, x0)
    state.x.sum().backward()
    with pytest.raises(ValueError, match="already unwound by a backward pass"):
        free.inverse(state)


def test_exact_state_is_dropped_at_depth_zero_and_rebuilt_from_the_inputs():
    """Backward drops the int64 state once depth 0 is reached (the input is alive), and a
    second backward rebuilds it from the input: same gradients, bit for bit."""
    free = MomentumNet(mlp_stack(6), 0.9, memory_efficient="exact")
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    state = free.forward_state(x)
    loss = (state.x ** 2).sum()
    first = torch.autograd.grad(loss, [x, *free.parameters()], retain_graph=True)
    assert state.tape.x is None and state.tape.v is None and state.tape.buffer is None
    second = torch.autograd.grad(loss, [x, *free.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_exact_state_is_kept_when_the_input_is_gone():
    """An input nobody holds any more cannot rebuild the state: it is kept (and reused)."""
    free = MomentumNet(mlp_stack(6), 0.9, memory_efficient="exact")
    state = free.forward_state(torch.randn(4, 6, dtype=torch.float64))  # the input dies here
    loss = (state.x ** 2).sum()
    first = torch.autograd.grad(loss, list(free.parameters()), retain_graph=True)
    assert state.tape.x is not None
    second = torch.autograd.grad(loss, list(free.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_input_modified_after_the_first_backward_is_a_clear_error():
    free = MomentumNet(mlp_stack(3), 0.9, memory_efficient="exact")
    x = torch.randn(4, 6, dtype=torch.float64)
    loss = (free(x) ** 2).sum()
    loss.backward(retain_graph=True)
    x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


@pytest.mark.parametrize("gamma,depth", [(0.9, 7), (1.0, 3), (0.9, 0)])
@pytest.mark.parametrize("loss", ["sum", "two_uses", "with_velocity", "in_place"])
def test_gradients_with_shared_and_expanded_incoming_gradients(loss, gamma, depth):
    """The incoming gradient is handed to the memory-free backward (GradientHandoff):
    a zero-stride gradient (sum), an output used twice, a loss on v_L as well and an
    output changed in place must give ordinary autograd's gradients; also for gamma = 1
    (the adjoint's own branch) and an empty stack."""
    if loss == "in_place" and depth == 0:
        pytest.skip("an empty ordinary stack returns its input, a leaf: nothing to change in place")
    plain, free = pair(mlp_stack(depth), gamma)
    w = torch.randn(6, dtype=torch.float64)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)

    def run(net):
        state = net.forward_state(x)
        out = {"sum": lambda: state.x.sum(),
               "two_uses": lambda: (state.x * w).pow(2).sum() + state.x.sum() + state.x.mean(),
               "with_velocity": lambda: (state.x * w).sum() + state.v.pow(2).sum(),
               "in_place": lambda: state.x.mul_(2).relu_().sum()}[loss]()
        return torch.autograd.grad(out, [x, *net.parameters()], allow_unused=True)

    for a, b in zip(run(free), run(plain), strict=True):
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_gradients_through_a_learned_initial_velocity(gamma):
    """v0 = init_velocity(x0): the memory-free backward hands dL/dv_0 back to it."""
    torch.manual_seed(2)
    init = torch.nn.Linear(6, 6).double()
    fns = mlp_stack(5)
    plain = MomentumNet(fns, gamma, memory_efficient=False, init_velocity=init)
    free = MomentumNet(fns, gamma, memory_efficient=True, init_velocity=init)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    for a, b in zip(grads(free, x)[1], grads(plain, x)[1], strict=True):
        assert rel_err(a, b) < 1e-6


class AddsItsSkip(nn.Module):
    """A block that adds its own skip connection, as torchvision's do: y = x + body(x)."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class SharedGradient(nn.Module):
    """body(x) = 2 (x + w), w shaped like x: autograd hands one gradient tensor to both."""

    def __init__(self, shape, seed):
        super().__init__()
        self.w = nn.Parameter(torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))

    def forward(self, x):
        return 2 * (x + self.w)


@pytest.mark.parametrize("gamma", [0.5, 0.9])
@pytest.mark.parametrize("via", ["forward", "forward_state"])
@pytest.mark.parametrize("residual", [False, True])
def test_blocks_that_add_their_own_skip_match_autograd(gamma, via, residual):
    """residual=False (converted torchvision blocks): the exact walks take f = y - x inside
    the kernels and the adjoint takes J_f^T c = J_y^T c - c; the same gradients as
    autograd through y - x. Also residual functions, among them f(x) = 2 (x + w), for
    which autograd hands one tensor to x and w (the adjoint must not write to it)."""
    bodies = [m for i, body in enumerate(mlp_stack(4)) for m in (body, SharedGradient((5, 6), i))]
    plain, free = pair(bodies if residual else [AddsItsSkip(b) for b in bodies], gamma, residual=residual)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)

    def run(net):
        out = net(x) if via == "forward" else net.forward_state(x).x
        return torch.autograd.grad((out ** 2).sum(), [x, *net.parameters()])

    for a, b in zip(run(free), run(plain), strict=True):
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("residual", [True, False])
def test_an_incoming_gradient_shared_with_another_input_is_left_alone(residual):
    """loss = ((net(x) + u) ** 2).sum(): autograd hands one gradient tensor to net(x) and
    to the leaf u (which may keep it as u.grad). The memory-free backward writes only to
    gradients it alone holds, so u's gradient is autograd's."""
    fns = mlp_stack(6) if residual else [AddsItsSkip(b) for b in mlp_stack(6)]
    plain, free = pair(fns, 0.9, residual=residual)
    x = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    results = []
    for net in (plain, free):
        u = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
        net.zero_grad(set_to_none=True)
        ((net(x) + u) ** 2).sum().backward()
        results.append([x.grad.clone(), u.grad.clone(), *[p.grad.clone() for p in net.parameters()]])
        x.grad = None
    for a, b in zip(*results, strict=True):
        assert rel_err(a, b) < 1e-6
