"""mresnet_core.memory: saved-tensor accounting and peak step memory (small, CPU)."""
import sys

import pytest
import torch
from torch import nn

from mresnet_core import MomentumNet
from mresnet_core.memory import (measure_step_memory, peak_rss_in_forked_processes, peak_rss_in_fresh_process,
                                 peak_step_memory, saved_tensor_bytes, saved_tensors, training_step_memory)

# Below exact.COMPILE_MIN_NUMEL elements, so the memory-free path runs eagerly (no compile).
B, D, H = 128, 32, 8
F32 = 4


def mlp_blocks(depth, seed=0):
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(D, H), nn.Tanh(), nn.Linear(H, D)) for _ in range(depth)]


def per_block_bytes():
    # Linear(D, H) saves its input (B x D), tanh saves its output (B x H), which the
    # second Linear saves again (same storage, counted once); weights are parameters.
    return (B * D + B * H) * F32



@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(B, D)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_plain_stack_saves_hand_counted_bytes(x, depth):
    model = nn.Sequential(*mlp_blocks(depth))
    assert saved_tensor_bytes(model, x) == depth * per_block_bytes()


@pytest.mark.parametrize("depth", [1, 3, 8])
def test_ordinary_momentumnet_grows_linearly(x, depth):
    # the momentum update (scalar multiplications, additions) saves nothing more
    net = MomentumNet(mlp_blocks(depth), gamma=0.9, memory_efficient=False)
    assert saved_tensor_bytes(net, x) == depth * per_block_bytes()


def test_parameters_are_excluded_and_reported(x):
    model = nn.Sequential(*mlp_blocks(2))
    report = saved_tensors(model, x)
    # first Linear's weight is not saved (x needs no grad); the other three are (as views)
    assert report.parameter_nbytes == 3 * H * D * F32
    # a lambda does not tell which tensors are parameters unless exclude= says so
    counted = saved_tensor_bytes(lambda t: model(t), x)
    assert counted == report.nbytes + report.parameter_nbytes
    assert saved_tensor_bytes(lambda t: model(t), x, exclude=model) == report.nbytes
    assert saved_tensor_bytes(model, x, exclude=()) == counted


def test_saved_bytes_are_deterministic_and_inputs_count(x):
    model = nn.Sequential(*mlp_blocks(3))
    assert saved_tensor_bytes(model, x) == saved_tensor_bytes(model, x)
    with torch.no_grad():
        assert saved_tensor_bytes(model, x) == 3 * per_block_bytes()  # runs with grad on
    frozen = nn.Sequential(*mlp_blocks(3)).requires_grad_(False)
    assert saved_tensor_bytes(frozen, x) == 0
    assert saved_tensor_bytes(frozen, x.requires_grad_()) > 0


@pytest.mark.parametrize("gamma", [0.9, 0.5])
def test_memory_free_saved_bytes_constant_apart_from_buffer(x, gamma):
    fixed = []
    buffers = {}
    for depth in (1, 4, 40, 100):
        net = MomentumNet(mlp_blocks(depth), gamma=gamma, memory_efficient=True)
        report = saved_tensors(net.forward_state, x)
        tape = report.output.tape
        buffer = tape.buffer.nbytes()
        # int64 fixed-point x_L and v_L, plus the information buffer (state and words)
        assert report.nbytes == tape.x.nbytes + tape.v.nbytes + buffer
        assert tape.x.dtype == torch.int64 and tape.x.nbytes == 2 * x.nbytes
        fixed.append(report.nbytes - buffer)
        buffers[depth] = buffer
    assert len(set(fixed)) == 1
    assert buffers[1] == x.numel() * 4  # only the 32-bit state per element
    if gamma == 0.5:  # one bit per element per layer: words spill, about depth / 8 bytes each
        assert buffers[100] > buffers[40] > buffers[4] == buffers[1]
        assert buffers[100] - buffers[1] <= x.numel() * (100 // 8 + 8)


def test_memory_free_saves_less_than_ordinary_when_deep(x):
    blocks = mlp_blocks(32)  # ordinary: 32 x 5 bytes per element; memory-free: 3 x 8
    plain = saved_tensor_bytes(MomentumNet(blocks, 0.9, memory_efficient=False), x)
    free = saved_tensor_bytes(MomentumNet(blocks, 0.9, memory_efficient=True), x)
    assert 4 * free < plain


# ----------------------------------------------------------------------- peak memory

def test_peak_of_a_known_allocation():
    n = 1_000_000

    def step():
        a = torch.ones(n)           # 4 MB
        b = torch.ones(n // 2)      # 2 MB, live together with a: 6 MB
        del a
        c = torch.ones(n // 4)      # 1 MB: 3 MB live
        return (b.sum() + c.sum()).item()

    m = measure_step_memory(step, "cpu")
    assert 6 * n <= m.peak <= 6 * n + 4096
    assert m.retained == 0 and m.events >= 6
    assert peak_step_memory(lambda: torch.ones(n).sum(), "cpu") >= 4 * n


def test_peak_excludes_memory_held_before_the_step():
    big = torch.ones(2_000_000)
    peak = peak_step_memory(lambda: big.mul_(2), "cpu")  # in place: no new memory
    assert peak < 4096


def _train_step(net, x):
    def step():
        net(x).pow(2).mean().backward()
    return step


def _peak(net, x, **kw):
    net.zero_grad(set_to_none=True)
    _train_step(net, x)()  # warm-up
    net.zero_grad(set_to_none=True)
    return measure_step_memory(_train_step(net, x), "cpu", **kw)


def test_peak_step_memory_deep_ordinary_vs_memory_free(x):
    blocks = mlp_blocks(64)
    plain = MomentumNet(blocks, 0.9, memory_efficient=False)
    free = MomentumNet(blocks, 0.9, memory_efficient=True)
    param_bytes = sum(p.nbytes for p in plain.parameters())
    m_plain, m_free = _peak(plain, x), _peak(free, x)
    # the step leaves the new gradients allocated, nothing else
    assert m_plain.retained == m_free.retained == param_bytes
    # ordinary backprop holds every layer's activations at the end of the forward pass
    assert m_plain.peak >= saved_tensor_bytes(plain, x) > 0
    assert m_free.peak > 0
    assert m_plain.peak > 1.5 * m_free.peak
    # without the gradients it creates, the memory-free peak does not grow with depth
    g_free = _peak(free, x, exclude_grads_of=free)
    assert g_free.excluded == param_bytes and g_free.retained == 0
    # (depth 16 fuses its upper pops too, as the deep stack does: exact_walk.lowest_fused_layer)
    short = MomentumNet(blocks[:16], 0.9, memory_efficient=True)
    assert g_free.peak <= _peak(short, x, exclude_grads_of=short).peak + 4096


def test_unsupported_device_is_a_clear_error():
    with pytest.raises(ValueError, match="cpu"):
        measure_step_memory(lambda: None, "meta")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_of_a_known_allocation():
    n = 1 << 20
    peak = peak_step_memory(lambda: torch.ones(n, device="cuda").sum(), "cuda")
    assert 4 * n <= peak <= 4 * n + (1 << 20)


@pytest.mark.slow
def test_peak_rss_in_fresh_process():
    size = 256 << 20
    rss = peak_rss_in_fresh_process("mresnet_core.memory:allocation_step", {"nbytes": size},
                                    env={"OMP_NUM_THREADS": "1"})
    assert rss["peak"] >= rss["before"] > 0
    assert 0.9 * size <= rss["step"] <= 1.2 * size


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc: Linux")
def test_peak_rss_in_forked_processes_sees_each_step_alone():
    """Each forked child sees its own step (the larger one first: a child never inherits
    what another child allocated), and the order of the results is the order of the calls."""
    sizes = [192 << 20, 64 << 20]
    rows = peak_rss_in_forked_processes("mresnet_core.memory:allocation_step", [{"nbytes": n} for n in sizes],
                                        env={"OMP_NUM_THREADS": "1"})
    assert [r["method"] for r in rows] == ["VmHWM (forked)"] * 2
    for size, rss in zip(sizes, rows):
        assert rss["peak"] >= rss["before"] > 0
        assert 0.9 * size <= rss["step"] <= 1.2 * size


def test_a_failing_forked_step_is_a_clear_error():
    with pytest.raises(RuntimeError, match="failed"):
        peak_rss_in_forked_processes("mresnet_core.memory:allocation_step", [{"nbytes": 1024}, {"wrong": 1}])


# ----------------------------------------------------------------------- whole training step

def test_training_step_memory_counts_the_gradients(x):
    net = MomentumNet(mlp_blocks(6), 0.9, memory_efficient=False)
    param_bytes = sum(p.nbytes for p in net.parameters())
    m = training_step_memory(net, x)
    assert m.method == "cpu-profiler"
    assert m.gradients == param_bytes
    # the headline figure includes the gradients, the second column leaves them out;
    # ordinary backprop peaks at the end of the forward pass, before any gradient exists
    assert m.activations <= m.whole_step <= m.activations + param_bytes
    # ordinary backprop holds every activation at the end of the forward pass
    assert m.activations >= saved_tensor_bytes(net, x)
    # what measure_step_memory reports for the same step, without gradients
    assert m.activations == _peak(net, x, exclude_grads_of=net).peak
    # the step leaves the gradients allocated
    assert all(p.grad is not None for p in net.parameters())
    # a deep memory-free stack peaks at the end of its backward pass, with every
    # gradient (a shallow one, whose gradients are small beside its exact state, may
    # peak at the end of its forward pass instead)
    free = MomentumNet(mlp_blocks(64), 0.9, memory_efficient=True)
    deep_param_bytes = sum(p.nbytes for p in free.parameters())
    f = training_step_memory(free, x)
    assert f.gradients == deep_param_bytes
    assert f.whole_step >= f.activations + deep_param_bytes // 2


def test_training_step_memory_with_a_loss_and_several_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D, 3)

        def forward(self, a, b):
            return self.lin(a + b)

    torch.manual_seed(0)
    a, b, y = torch.randn(B, D), torch.randn(B, D), torch.randint(0, 3, (B,))
    model = Two()
    m = training_step_memory(model, a, b, loss=lambda out: nn.functional.cross_entropy(out, y))
    assert m.gradients == sum(p.nbytes for p in model.parameters())
    assert m.whole_step >= m.gradients + B * D * F32  # a + b is saved by the Linear


def test_memory_free_whole_step_is_close_to_ordinary_when_short_and_below_it_from_depth_16():
    """The toy stack of Figure 2 (d=500, h=100, batch 256, gamma 0.9): the whole step,
    gradients included. The exact state is dropped when the backward reaches depth 0 and
    the incoming gradient is handed over, so depth 8 stays within 1.15x of ordinary
    backprop (it was 1.21x before) and depth 16 is below it."""
    torch.manual_seed(0)
    fns = [nn.Sequential(nn.Linear(500, 100), nn.Tanh(), nn.Linear(100, 500)) for _ in range(16)]
    xb = torch.randn(256, 500)
    for depth, bound in ((8, 1.15), (16, 1.0)):
        plain = training_step_memory(MomentumNet(fns[:depth], 0.9, memory_efficient=False), xb)
        free = training_step_memory(MomentumNet(fns[:depth], 0.9, memory_efficient=True), xb)
        assert free.whole_step < bound * plain.whole_step, (depth, free.whole_step / plain.whole_step)


def _no_fused_pops(monkeypatch):
    from mresnet_core import exact_walk
    monkeypatch.setattr(exact_walk, "lowest_fused_layer", lambda stack, x_bytes: len(stack.functions))


def test_fused_pops_keep_the_whole_step_peak_and_the_gradients_bits(x, monkeypatch):
    """From ``exact_walk.lowest_fused_layer`` up, a layer's pop also rebuilds the float x
    of the layer below in the same pass, which is then held through that layer's backward:
    the whole step's peak stays what it is with separate passes (the gradients still to
    come outweigh it), and the gradients are the same bits."""
    from mresnet_core import exact_native, exact_walk
    blocks = mlp_blocks(16)
    net = MomentumNet(blocks, 0.9, memory_efficient=True)
    assert 1 < exact_walk.lowest_fused_layer(net._stack(), x.nbytes) < 16  # some pops fuse, not all

    def run():
        net.zero_grad(set_to_none=True)
        net(x).pow(2).mean().backward()
        return [p.grad.clone() for p in net.parameters()]

    fused_calls = []
    real_pop = exact_native.NativeBound.pop
    monkeypatch.setattr(exact_native.NativeBound, "pop", lambda self, *a, **k: (
        fused_calls.append(k.get("then_position", False)), real_pop(self, *a, **k))[1])
    fused_grads, fused_step = run(), training_step_memory(net, x).whole_step
    if exact_native.available():
        assert any(fused_calls)
    _no_fused_pops(monkeypatch)
    fused_calls.clear()
    plain_grads, plain_step = run(), training_step_memory(net, x).whole_step
    assert not any(fused_calls)
    assert all(torch.equal(a, b) for a, b in zip(fused_grads, plain_grads))
    assert fused_step <= plain_step


def test_the_lowest_fused_layer_counts_the_gradients_still_to_come():
    """It starts where the layers below (down to layer 1) have at least one float x's
    bytes of parameter gradients left to allocate; a parameter shared with a layer above
    is allocated there already, a frozen one never."""
    from mresnet_core import exact_walk
    from mresnet_core.replay import Stack, residual_of_function

    def stack(fns):
        return Stack(functions=fns, residual_of=residual_of_function, n=58982)

    lin = [nn.Linear(10, 10) for _ in range(8)]  # 110 floats: 440 bytes each
    assert exact_walk.lowest_fused_layer(stack(lin), 440) == 2
    assert exact_walk.lowest_fused_layer(stack(lin), 441) == 3
    assert exact_walk.lowest_fused_layer(stack(lin), 440 * 7) == 8  # = depth: never
    shared = [lin[0]] * 8
    assert exact_walk.lowest_fused_layer(stack(shared), 1) == 8
    frozen = [nn.Linear(10, 10).requires_grad_(False) for _ in range(8)]
    assert exact_walk.lowest_fused_layer(stack(frozen), 1) == 8


@pytest.mark.parametrize("peak_of", [lambda b: 100 + 7 * b,                       # affine, as a step's peak
                                     lambda b: 100 + 7 * b + (40 if b > 20 else 0),  # a jump the line misses
                                     lambda b: 100 + b * b])                      # convex
def test_largest_fitting_batch_is_measured_not_extrapolated(peak_of):
    from mresnet_core.memory import largest_fitting_batch

    budget = 300
    fits, seen = largest_fitting_batch(peak_of, budget)
    truth = max(b for b in range(1, 200) if peak_of(b) <= budget)
    assert fits == truth
    assert seen[fits] == peak_of(fits) <= budget < seen[fits + 1]  # both neighbours were measured
    assert len(seen) <= (4 if peak_of(50) == 450 else 10)  # the line's guess first, then a bisection
    fits, seen = largest_fitting_batch(lambda b: 1000 * b, 500)
    assert fits == 0 and seen[1] == 1000


class AddsItsSkipThenReLU(nn.Module):
    """A block like torchvision's: relu(x + body(x)), the ReLU in place (it saves its output)."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return torch.relu_(x + self.body(x))


def test_a_block_adding_its_own_skip_costs_no_more_than_its_residual(x, monkeypatch):
    """The memory-free walks take f = block(x) - x inside the kernels, and differentiate
    the block's output itself: that must not hold the output's memory longer than the
    graph does (a block's last ReLU saves it, and frees it once it has run). The whole
    step is measured against the same stack walked with f = block(x) - x made as a tensor."""
    from mresnet_core import replay

    def step_peak():
        net = MomentumNet([AddsItsSkipThenReLU(b) for b in mlp_blocks(12)], 0.9, residual=False,
                          memory_efficient=True)
        return training_step_memory(net, x).whole_step

    split = step_peak()
    monkeypatch.setattr(replay.Stack, "split_residual",
                        lambda self, module, xi, args, kwargs: (self.residual_of(module, xi, args, kwargs), None))
    assert split <= step_peak()
