"""mresnet_core.reversibility: the measurements behind the exact-reversibility notebook."""
import math

import pytest
import torch

from mresnet_core import exact
from mresnet_core.experiments import common
from mresnet_core.experiments import exactness as rv


def test_toy_functions_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = common.toy_functions(3, d=4, hidden=5, seed=7), common.toy_functions(3, d=4, hidden=5, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    for fa, fb in zip(a, b, strict=True):
        for pa, pb in zip(fa.parameters(), fb.parameters(), strict=True):
            assert torch.equal(pa, pb)
    assert not torch.equal(a[0][0].weight, a[1][0].weight)  # independent layers


def test_grid_input_is_exact_in_float32_and_fixed_point():
    x = common.grid_input((16, 8), seed=3)
    assert x.dtype == torch.float32
    assert torch.equal(exact.to_float(exact.to_fixed(x), torch.float32), x)
    assert torch.equal(x.double(), (x.double() * 2**20).round() / 2**20)


def test_relative_error_flags_non_finite_results():
    t = torch.ones(3)
    assert common.relative_error(t, t) == 0.0
    assert common.relative_error(torch.tensor([1.0, float("nan"), 1.0]), t) == math.inf
    assert common.relative_error(torch.tensor([1.0, float("inf"), 1.0]), t) == math.inf
    assert common.relative_error(2 * t, t) == pytest.approx(1.0)


def test_naive_inversion_is_fine_when_shallow_and_useless_when_deep():
    fs = common.toy_functions(64, d=8, hidden=8)
    x0 = common.grid_input((4, 8))
    assert rv.naive_inversion_error(rv.functions_in(fs[:2], torch.float64), 0.9, x0, torch.float64) < 1e-12
    assert rv.naive_inversion_error(fs, 0.5, x0, torch.float32) >= 1.0  # 2**64 amplification


@pytest.mark.parametrize("gamma", [0.99, 0.5, 0.01])
def test_exact_inversion_is_bit_exact_and_costs_log2_inverse_gamma_bits(gamma):
    depth = 200
    fs = common.toy_functions(depth, d=8, hidden=8)
    x0 = common.grid_input((4, 8))
    out = rv.exact_inversion(fs, gamma, x0)
    assert out.bit_exact and out.max_abs_error == 0.0
    assert out.elements == 32 and out.depth == depth
    assert out.bits_per_element_per_layer == pytest.approx(rv.paper_bits(gamma), rel=1e-3)
    if gamma <= 0.5:
        assert out.buffer.words, "200 layers at gamma <= 0.5 must spill 32-bit words"


def test_information_bits_of_an_empty_and_a_handmade_buffer():
    buf = exact.InformationBuffer.empty((5,), "cpu")
    assert rv.information_bits(buf) == 0.0
    buf.state[0] = 2**31  # one more bit in one element
    buf.words.append(torch.zeros(3, dtype=torch.int32))  # three 32-bit words
    assert rv.information_bits(buf) == pytest.approx(1 + 96)


def test_paper_bits_uses_the_rounded_gamma():
    assert rv.paper_bits(0.5) == 1.0
    assert rv.paper_bits(0.1) == pytest.approx(math.log2(1 / exact.rounded_gamma(0.1)))


def test_memory_free_gradients_match_autograd():
    fs = common.toy_functions(8, d=8, hidden=8)
    assert rv.gradient_relative_error(fs, 0.01, common.grid_input((4, 8))) < 1e-5


def test_inversion_sweep_rows():
    fs = common.toy_functions(8, d=4, hidden=4)
    rows = rv.inversion_sweep(fs, [0.9, 0.1], [1, 8], common.grid_input((2, 4)), exact_depths=[8])
    assert [(r["gamma"], r["depth"]) for r in rows] == [(0.9, 1), (0.9, 8), (0.1, 1), (0.1, 8)]
    assert "exact bit for bit" not in rows[0] and rows[1]["exact bit for bit"] is True
    assert rows[3]["naive float64"] < rows[3]["naive float32"]
