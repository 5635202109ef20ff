"""experiments.depth_memory: Figure 2's shape theory against measured saved bytes, exactly,
and its toy problem and measurements on small sizes."""
import math

import pytest
import torch

from mresnet_core.experiments import depth_memory as dm
from mresnet_core.memory import saved_tensor_bytes, saved_tensors

# small enough for the eager exact kernels (below exact.COMPILE_MIN_NUMEL elements)
SMALL = dm.ToyProblem(dim=32, batch=64, hidden=8, seed=3)



def test_figure2_gamma():
    assert dm.figure2_gamma(1) == pytest.approx(0.98)
    assert dm.figure2_gamma(900) == pytest.approx(1 - 1 / 45000)
    assert dm.figure2_gamma(0) == dm.figure2_gamma(1)
    assert SMALL.gamma(10) == pytest.approx(0.998)
    with pytest.raises(ValueError):
        dm.figure2_gamma(-1)


def test_toy_stack_is_tied_and_seeded():
    net, x = dm.build(5, False, SMALL)
    assert len({id(m) for m in net.functions}) == 1  # one module shared by every layer
    assert x.shape == (SMALL.batch, SMALL.dim) and 0 <= float(x.min()) and float(x.max()) < 1
    net2, x2 = dm.build(5, True, SMALL)
    assert torch.equal(x, x2)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), net2.parameters(), strict=True))
    assert net.gamma == net2.gamma == pytest.approx(SMALL.gamma(5), abs=2 ** -16)


@pytest.mark.parametrize("depth", [1, 4, 25])
@pytest.mark.parametrize("gamma", [None, 0.0, 0.9])
def test_ordinary_theory_equals_saved_bytes(depth, gamma):
    net, x = dm.build(depth, False, SMALL, gamma=gamma)
    expected = dm.toy_ordinary_saved_bytes(depth, SMALL.batch, SMALL.dim, SMALL.hidden)
    assert saved_tensor_bytes(net, x) == expected
    assert expected == depth * SMALL.batch * (SMALL.dim + SMALL.hidden) * 4


def test_ordinary_theory_float64():
    net, x = dm.build(3, False, SMALL)
    net, x = net.double(), x.double()
    assert saved_tensor_bytes(net, x) == dm.toy_ordinary_saved_bytes(3, SMALL.batch, SMALL.dim,
                                                                      SMALL.hidden, itemsize=8)


@pytest.mark.parametrize("depth", [1, 10, 60])
def test_memory_free_theory_equals_saved_bytes_figure2_schedule(depth):
    net, x = dm.build(depth, True, SMALL)
    report = saved_tensors(net.forward_state, x)
    numel = SMALL.numel
    assert report.nbytes == dm.memory_free_saved_bytes(depth, numel, net.gamma)
    assert report.output.tape.buffer.nbytes() == dm.information_buffer_bytes(depth, numel, net.gamma)
    # Figure 2's schedule: ~0.03 bits per element whatever the depth, no word spilled
    assert dm.buffer_words_per_element(depth, net.gamma) == 0
    assert report.nbytes == 20 * numel  # int64 x and v, int32 buffer state


@pytest.mark.parametrize("depth, words", [(4, 0), (12, 1), (20, 2)])
def test_memory_free_theory_counts_spilled_words(depth, words):
    # gamma = 1/2: one bit per element per layer, an 8-bit word every 8 layers; these
    # depths sit half a word away from a boundary, where the count is exact
    net, x = dm.build(depth, True, SMALL, gamma=0.5)
    assert dm.information_bits(depth, 0.5) == depth
    assert dm.buffer_words_per_element(depth, 0.5) == words
    report = saved_tensors(net.forward_state, x)
    assert report.output.tape.buffer.nbytes() == SMALL.numel * (4 + words)
    assert report.nbytes == dm.memory_free_saved_bytes(depth, SMALL.numel, 0.5)


def test_information_bits_use_the_rounded_gamma():
    gamma = 1 - 1 / 45000  # rounds to 65535 / 65536
    assert dm.information_bits(900, gamma) == pytest.approx(900 * math.log2(65536 / 65535))
    with pytest.raises(ValueError):
        dm.information_bits(3, 0.0)  # gamma = 0 cannot be inverted


def test_crossover_depth():
    # paper sizes: 5 000 000 bytes memory-free vs L x 1 016 000 ordinary
    assert dm.crossover_depth(500, 500, 8) == 5
    d = dm.crossover_depth(SMALL.batch, SMALL.dim, SMALL.hidden)
    numel = SMALL.numel
    assert dm.memory_free_saved_bytes(d, numel, dm.figure2_gamma(d)) < \
        dm.toy_ordinary_saved_bytes(d, SMALL.batch, SMALL.dim, SMALL.hidden)
    assert dm.memory_free_saved_bytes(d - 1, numel, dm.figure2_gamma(d - 1)) >= \
        dm.toy_ordinary_saved_bytes(d - 1, SMALL.batch, SMALL.dim, SMALL.hidden)


def test_resnet_gamma0_saves_what_the_momentum_stack_saves():
    net, x = dm.build(7, False, SMALL)
    assert dm.resnet_saved_bytes(7, SMALL) == saved_tensor_bytes(net, x)


def test_measure_depths_small(capfd):
    frame = dm.measure_depths([1, 12], SMALL)
    assert list(frame["depth"]) == [1, 1, 12, 12]
    assert (frame["saved"] == frame["theory"]).all()
    free = frame[frame["path"] == "memory-free"]
    assert free["saved"].nunique() == 1 and (free["buffer"] == SMALL.numel * 4).all()  # int32 state
    assert (frame["peak"] > 0).all() and set(frame["peak_method"]) == {"cpu-profiler"}
    out, err = capfd.readouterr()
    assert "profiler_start" not in err and "SyncActivityProfilerHandler" not in err


@pytest.mark.slow
def test_fresh_process_rss_grows_with_depth_for_ordinary_backprop_only():
    """Peak RSS of one step (128 KiB mmap threshold, so freed blocks are returned): from
    depth 1 to 40, ordinary backprop's step grows by about its saved activations, the
    memory-free step by far less."""
    problem = dm.ToyProblem(dim=500, batch=500, hidden=8, seed=1)
    rss = dm.measure_rss([1, 40], problem, settings={"mmap": dm.MALLOC_SETTINGS["mmap threshold 128 KiB"]})
    step = rss.set_index(["path", "depth"])["step"]
    grown = {path: step[(path, 40)] - step[(path, 1)] for path in dm.PATHS}
    theory = dm.toy_ordinary_saved_bytes(39, problem.batch, problem.dim, problem.hidden)
    assert grown["ordinary"] >= 0.8 * theory, (grown, theory)
    assert grown["memory-free"] < 0.2 * grown["ordinary"], grown