"""The fixed-point kernels and the information buffer, checked against exact rationals."""
import math
from fractions import Fraction

import pytest
import torch

from mresnet_core import exact

from helpers import fresh_python


def random_velocity(n_elem, seed, bits=60):
    g = torch.Generator().manual_seed(seed)
    mags = torch.randint(0, bits, (n_elem,), generator=g)
    v = torch.randint(-(2**62), 2**62, (n_elem,), generator=g, dtype=torch.int64)
    return v >> (62 - mags)  # values spread over every magnitude, both signs


@pytest.mark.parametrize("gamma", [0.01, 0.1, 0.5, 0.9, 0.99, 1.0])
def test_forward_step_is_within_one_unit_of_the_exact_product(gamma):
    n = exact.gamma_numerator(gamma)
    v = random_velocity(2000, seed=int(gamma * 100))
    x = torch.zeros_like(v)
    f = torch.randn(2000, dtype=torch.float64)
    c = (exact.GAMMA_DENOMINATOR - n) / exact.GAMMA_DENOMINATOR * exact.SCALE
    buf = exact.InformationBuffer.empty(v.shape, v.device)
    buf.before_push(n)
    v1 = v.clone()
    exact.torch_forward_step(x, v1, buf.state, f, n)
    inc = (f * c).to(torch.int64)
    for vi, v1i, ii in zip(v.tolist()[:400], v1.tolist()[:400], inc.tolist()[:400], strict=True):
        exact_value = Fraction(vi * n, exact.GAMMA_DENOMINATOR) + ii
        assert abs(v1i - exact_value) < 1


@pytest.mark.parametrize("gamma", [1 / 65536, 2 / 65536, 255 / 65536, 256 / 65536, 0.01, 0.3, 0.9, 0.999])
def test_many_steps_unwind_bit_for_bit_and_buffer_costs_log2_one_over_gamma(gamma):
    # both layouts: the wide one (62-bit state, 32-bit words) for n < 256, the narrow one
    # (31-bit state, 8-bit words) from n = 256 on
    n = exact.gamma_numerator(gamma)
    assert exact.buffer_layout(n) == (exact.WIDE_LAYOUT if n < 256 else (31, 8))
    depth, n_elem = 600, 64
    g = torch.Generator().manual_seed(0)
    fs = [torch.randn(n_elem, dtype=torch.float64, generator=g) for _ in range(depth)]
    x0 = torch.randint(-(2**45), 2**45, (n_elem,), generator=g)
    v0 = torch.randint(-(2**45), 2**45, (n_elem,), generator=g)
    x, v = x0.clone(), v0.clone()
    buf = exact.InformationBuffer.empty(x.shape, x.device, n)
    for f in fs:
        buf.before_push(n)
        exact.torch_forward_step(x, v, buf.state, f, n)
    bits = (buf.word_bits * sum(w.numel() for w in buf.words)
            + float(torch.log2(buf.state.double()).sum()))
    empty_bits = math.log2(buf.low)  # what the empty state holds
    per_layer = (bits - empty_bits * n_elem) / (n_elem * depth)
    expected = math.log2(exact.GAMMA_DENOMINATOR / n)
    assert abs(per_layer - expected) < 0.02 + 0.02 * expected
    state_before, words_before = buf.state.clone(), [w.clone() for w in buf.words]
    back = buf.copy()
    for f in reversed(fs):
        exact.torch_undo_position(x, v, torch.float64)
        exact.torch_undo_velocity(v, back.state, f, n)
        back.after_pop(n)
    assert torch.equal(x, x0) and torch.equal(v, v0)
    assert back.is_empty()
    # unwinding the copy left the original buffer as it was
    assert torch.equal(buf.state, state_before) and len(buf.words) == len(words_before)
    assert all(torch.equal(a, b) for a, b in zip(buf.words, words_before, strict=True))


def test_buffer_never_overflows_where_a_single_word_would():
    # gamma = 0.5 costs one bit per layer: a single int64 buffer overflows near layer 60
    n = exact.gamma_numerator(0.5)
    x = torch.zeros(8, dtype=torch.int64)
    v = torch.full((8,), 2**40, dtype=torch.int64)
    buf = exact.InformationBuffer.empty(x.shape, x.device)
    f = torch.full((8,), 0.25, dtype=torch.float64)
    history = []
    for _ in range(3000):
        buf.before_push(n)
        history.append(v.clone())
        exact.torch_forward_step(x, v, buf.state, f, n)
        assert bool((buf.state >= buf.low).all() and (buf.state.long() < 2**buf.state_bits).all())
    assert buf.nbytes() >= 3000 * 8 / 8  # at least one bit per element per layer
    back = buf.copy()
    for _ in range(3000):
        exact.torch_undo_position(x, v, torch.float64)
        exact.torch_undo_velocity(v, back.state, f, n)
        back.after_pop(n)
        assert torch.equal(v, history.pop())
    assert back.is_empty()


def test_gamma_rounding_and_validation():
    assert exact.rounded_gamma(0.9) == round(0.9 * 65536) / 65536
    assert exact.rounded_gamma(1) == 1.0 and exact.rounded_gamma(0) == 0.0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="gamma must be a number in"):
            exact.gamma_numerator(bad)
    with pytest.raises(TypeError, match="gamma must be a number"):
        exact.gamma_numerator("0.9")
    with pytest.raises(ValueError, match="cannot be inverted"):
        exact.check_invertible(exact.gamma_numerator(1e-7))


@pytest.mark.slow
def test_compiled_kernels_give_the_same_bits_as_eager():
    """The fused (torch.compile) kernels used for large tensors are bit-identical."""
    n = exact.gamma_numerator(0.9)
    example = torch.zeros(5000, dtype=torch.int64)
    eager = exact.ExactKernels(example, n, backend="eager")
    compiled = exact.ExactKernels(example, n, backend="compile")
    assert compiled.compiled and not eager.compiled
    g = torch.Generator().manual_seed(0)
    size = 5000
    x = random_velocity(size, 1, bits=50)
    v = random_velocity(size, 2, bits=50)
    wide = torch.randint(2**30, 2**46 * n, (size,), generator=g)  # the n = 1 layout
    narrow = torch.randint(exact.STATE_LOW, n << 15, (size,), generator=g, dtype=torch.int32)
    for dtype, state in ((torch.float32, wide), (torch.float64, wide), (torch.float32, narrow)):
        f = torch.randn(size, generator=g, dtype=torch.float64).to(dtype) * 10
        for name, args in (("forward_step", (x, v, state, f)), ("undo_position", (x, v, dtype)),
                           ("undo_velocity", (v, state, f))):
            mine = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
            theirs = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
            out_e, out_c = getattr(eager, name)(*mine), getattr(compiled, name)(*theirs)
            as_list = lambda out: list(out) if isinstance(out, tuple) else [] if out is None else [out]  # noqa: E731
            left, right = mine + as_list(out_e), theirs + as_list(out_c)
            assert len(left) == len(right), name
            for a, b in zip(left, right, strict=True):
                if isinstance(a, torch.Tensor):
                    assert torch.equal(a, b), name
    assert compiled.compiled, "the compiled kernels fell back to eager"


def multiples_and_neighbours(n, limit, g):
    """Random multiples of n within +-limit (both ends included) and each one's two
    neighbours, all of magnitude below ``limit``: where a rounded quotient would be off."""
    top = (limit - 2) // n
    multiples = torch.cat([torch.randint(-top, top, (20000,), generator=g), torch.tensor([top, -top])]) * n
    return torch.cat([multiples, multiples - 1, multiples + 1])


@pytest.mark.parametrize("n", [1, 3, 655, 6554, 58982, 65535, 65536])
def test_divmod_by_float_reciprocal_is_exact(n):
    g = torch.Generator().manual_seed(n)
    a = torch.cat([random_velocity(20000, n, bits=62),
                   torch.tensor([0, 1, -1, n, -n, n - 1, 1 - n, 2**62 - 1, -(2**62)]),
                   torch.arange(-5, 6) * n + torch.randint(-2, 3, (11,), generator=g)])
    a = torch.cat([a, multiples_and_neighbours(n, 2**62, g)])  # over the whole range
    q, r = exact.floor_divmod(a, n)
    assert torch.equal(q, torch.div(a, n, rounding_mode="floor"))
    assert torch.equal(r, torch.remainder(a, n))


@pytest.mark.parametrize("n", [1, 2, 3, 655, 58982, 65521, 65535, 65536])
def test_divmod_single_pass_is_exact_below_2_to_50(n):
    """One float pass, no correction: exact up to |a| < 2**50, including the multiples of
    n (and their neighbours) next to that limit, where a rounding error would show."""
    g = torch.Generator().manual_seed(n)
    a = torch.cat([torch.randint(-(2**50) + 1, 2**50, (20000,), generator=g),
                   torch.randint(0, 2**31, (20000,), generator=g),
                   multiples_and_neighbours(n, 2**50, g),
                   torch.tensor([0, 1, -1, n - 1, n, n + 1, 2**31 - 1, 2**50 - 1, -(2**50) + 1])])
    q, r = exact.floor_divmod_near(a, n)
    assert torch.equal(q, torch.div(a, n, rounding_mode="floor"))
    assert torch.equal(r, torch.remainder(a, n))
    nonneg = a.abs()
    q, r = exact.floor_divmod_near(nonneg, n, nonnegative=True)
    assert torch.equal(q, torch.div(nonneg, n, rounding_mode="floor"))
    assert torch.equal(r, torch.remainder(nonneg, n))


def test_eager_kernels_in_chunks_give_the_same_bits(monkeypatch):
    """Eager kernels run on slices (bounded temporaries) change no bit of x, v, the buffer
    state or the results, including a last slice shorter than the others."""
    n = exact.gamma_numerator(0.9)
    size = 5000
    g = torch.Generator().manual_seed(3)
    x, v = random_velocity(size, 4, bits=50), random_velocity(size, 5, bits=50)
    buf = exact.InformationBuffer.empty((size,), "cpu", n)
    f = torch.randn(size, generator=g, dtype=torch.float64).float()
    whole = exact.ExactKernels(x, n, backend="eager")
    results = {}
    for chunk in (None, 1024):
        if chunk is not None:
            monkeypatch.setitem(exact.EAGER_CHUNK, "cpu", chunk)
        xs, vs, state = x.clone(), v.clone(), buf.state.clone()
        fwd = whole.forward_step(xs, vs, state, f)
        back = whole.undo_position(xs.clone(), vs, torch.float32)
        vv, ss = vs.clone(), state.clone()
        whole.undo_velocity(vv, ss, f)
        results[chunk] = [xs, vs, state, fwd[0], fwd[1], back, vv, ss]
    assert len(results[None]) == len(results[1024])
    for a, b in zip(results[None], results[1024], strict=True):
        assert a.shape == b.shape and torch.equal(a, b)


def test_the_compiled_backend_leaves_torch_loggers_as_they_were():
    """Quieting torch's C++ builder while it is imported changes no logger for good (a
    fresh process: the compiled kernels are set up once per process)."""
    probe = ("import logging, torch\n"
             "from mresnet_core import exact\n"
             "logger = logging.getLogger('torch.utils.cpp_extension')\n"
             "before = logger.level\n"
             "k = exact.ExactKernels(torch.zeros(1 << 16, dtype=torch.int64), 58982, backend='compile')\n"
             "assert k.compiled\n"
             "print(before, logger.level)\n")
    before, after = fresh_python(probe).split()
    assert before == after
