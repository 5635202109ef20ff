"""The C exact kernels (exact_kernels.c) against the torch kernels of exact.py, bit for bit."""
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mresnet_core import MomentumNet, exact, exact_native

from helpers import fresh_python
from test_exact import random_velocity

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def native():
    if not exact_native.INSTALLED_LIBRARY.exists() and exact_native.find_compiler() is None:
        pytest.skip("not installed and no C compiler: the C kernels cannot be had here")
    assert exact_native.available(), exact_native.build_error()
    return exact_native


def narrow_state(size, n, g):
    """Buffer states as a forward step can meet them: below the spill limit n 2**15, and
    at least a spilled state's n 2**7."""
    return torch.randint(n << 7, n << 15, (size,), generator=g, dtype=torch.int32)


def bound_at(x0, n, dtype, backend="native"):
    """(x, v, buffer, bound kernels) of a fresh exact state at x0 (int64) with v = 0."""
    x, v = x0.clone(), torch.zeros_like(x0)
    buf = exact.InformationBuffer.empty(x.shape, x.device, n)
    return x, v, buf, exact.ExactKernels(x, n, backend=backend).bind(x, v, buf, dtype)


NS = [256, 257, 655, 6554, 32768, 58982, 65535, 65536]  # every n of the 31-bit layout's edges


@pytest.fixture
def instruction_sets(native):
    """Every kernel variant this CPU runs (AVX-512, AVX2, SSE4.1, baseline on x86-64);
    the best one again afterwards."""
    names = native.instruction_sets()
    assert names, "the library runs no variant"
    yield names
    assert native.use_instruction_set(names[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", NS)
def test_each_kernel_gives_the_bits_of_the_torch_kernel(native, instruction_sets, n, dtype):
    """Random x, v over every magnitude and sign, residuals from 1e-8 to 1e6; with each
    instruction set's variant of the kernels (they differ in vector width only)."""
    for isa in instruction_sets:
        assert native.use_instruction_set(isa) and native.library_info().isa == isa
        check_each_kernel(native, n, dtype)


def check_each_kernel(native, n, dtype):
    g = torch.Generator().manual_seed(n)
    size = 20011  # not a multiple of the kernels' blocks or vector widths
    x, v = random_velocity(size, 1, bits=61), random_velocity(size, 2, bits=61)
    state = narrow_state(size, n, g)
    scale = 10.0 ** torch.randint(-8, 7, (size,), generator=g)
    f = (torch.randn(size, generator=g, dtype=torch.float64) * scale).to(dtype)
    f[:4] = torch.tensor([0.0, -0.0, 1e-30, -3.5])
    k = native.NativeKernels(n)
    for name, args in (("forward_step", (x, v, state, f)), ("undo_position", (x, v, dtype)),
                       ("undo_velocity", (v, state, f))):
        theirs = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        mine = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
        ref = getattr(exact, "torch_" + name)(*theirs, *((n,) if name != "undo_position" else ()))
        out = getattr(k, name)(*mine)
        for a, b in zip(theirs, mine, strict=True):  # the tensors updated in place
            if isinstance(a, torch.Tensor):
                assert torch.equal(a, b), name
        if name == "forward_step":
            assert torch.equal(ref[0], out[0]) and float(ref[1]) == out[1]
            assert out[2] == int(mine[2].max())  # the largest buffer state, reported
        elif name == "undo_position":
            assert torch.equal(ref, out) and out.dtype == dtype
        else:
            assert out == int(mine[1].min())  # the smallest buffer state, reported


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_block_output_and_its_input_give_the_bits_of_their_difference(native, instruction_sets, dtype):
    """push/pop given (out, base), the output and input of a block that adds its own skip
    connection: the kernels take f = out - base as they go, with the bits of pushing and
    popping torch's out - base, with every variant; with ``reuse`` the new float x is
    written over out, and undo_position writes into the spare it is given."""
    n = exact.gamma_numerator(0.9)
    g = torch.Generator().manual_seed(11)
    size = 20011
    base = (torch.randn(size, generator=g, dtype=torch.float64) * 3).to(dtype)
    outs = [(base.to(torch.float64) + torch.randn(size, generator=g, dtype=torch.float64)
             * 10.0 ** torch.randint(-9, 3, (size,), generator=g)).to(dtype) for _ in range(3)]
    x0 = exact.to_fixed(torch.randn(size, generator=g, dtype=dtype))
    for isa in instruction_sets:
        assert native.use_instruction_set(isa)
        runs = []
        for split in (False, True):
            x, v, buf, bound = bound_at(x0, n, dtype)
            trail = []
            for out in outs:
                if split:
                    mine = out.clone()
                    xf, peak = bound.push(mine, base, reuse=True)
                    assert xf.data_ptr() == mine.data_ptr()  # written over the block output
                else:
                    xf, peak = bound.push(out - base)
                trail.append((xf, peak, x.clone(), v.clone(), buf.state.clone()))
            spare = torch.empty(size, dtype=dtype)
            for out in reversed(outs):
                xf = bound.undo_position(spare if split else None)
                assert (xf.data_ptr() == spare.data_ptr()) == split
                trail.append((xf.clone(), 0.0, x.clone(), v.clone(), buf.state.clone()))
                bound.pop(out, base) if split else bound.pop(out - base)
            assert torch.equal(x, x0) and not v.any() and buf.is_empty(), (isa, split)
            runs.append(trail)
        for a, b in zip(*runs, strict=True):
            assert a[1] == b[1] and all(torch.equal(ta, tb) for ta, tb in (zip(a[:1] + a[2:], b[:1] + b[2:]))), isa


def test_the_torch_kernels_take_a_block_output_and_its_input_too():
    """The fallback (BoundKernels) takes the same (out, base) arguments: the same states
    as pushing and popping out - base."""
    n = exact.gamma_numerator(0.5)
    g = torch.Generator().manual_seed(12)
    base, out = torch.randn(999, generator=g), torch.randn(999, generator=g)
    x0 = exact.to_fixed(torch.randn(999, generator=g))
    states = []
    for split in (False, True):
        x, v, buf, bound = bound_at(x0, n, torch.float32, backend="eager")
        assert isinstance(bound, exact.BoundKernels)
        xf, _ = bound.push(out.clone(), base, reuse=True) if split else bound.push(out - base)
        states.append((xf, x.clone(), v.clone()))
        bound.undo_position()
        bound.pop(out, base) if split else bound.pop(out - base)
        assert torch.equal(x, x0) and not v.any() and buf.is_empty()
    assert all(torch.equal(a, b) for a, b in zip(*states, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_conversions_and_fingerprint_give_the_bits_of_the_torch_path(native, instruction_sets, dtype):
    """to_fixed (with its range peak, NaN included), to_float and the fingerprint: the
    same values as the torch and numpy code they replace, with every variant."""
    g = torch.Generator().manual_seed(3)
    size = 20011
    t = (torch.randn(size, generator=g, dtype=torch.float64)
         * 10.0 ** torch.randint(-14, 6, (size,), generator=g)).to(dtype)
    t[:3] = torch.tensor([-0.0, 2.0 ** -41, -(2.0 ** -40)])
    for isa in instruction_sets:
        assert native.use_instruction_set(isa)
        x, peak = native.to_fixed(t)
        assert torch.equal(x, (t.to(torch.float64) * exact.SCALE).to(torch.int64))
        assert peak == float(t.abs().amax())
        assert torch.equal(native.to_float(x, dtype), (x.to(torch.float64) * exact.INV_SCALE).to(dtype))
        bad = t.clone()
        bad[7] = float("nan")
        assert math.isnan(native.to_fixed(bad)[1])  # so the range check refuses it
        a = random_velocity(size, 4, bits=63).numpy()
        assert native.fingerprint(torch.from_numpy(a)) == [int(np.add.reduce(a, dtype=np.int64)),
                                                           int(np.bitwise_xor.reduce(a))]
    assert native.to_float(x[::2], dtype) is None and native.fingerprint(x[::2]) is None  # not contiguous


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [257, 58982, 65536])
def test_a_stack_start_from_the_float_input_gives_the_bits_of_the_separate_steps(native, instruction_sets,
                                                                                 n, dtype):
    """ExactKernels.start and the first push that takes x0 (x, v and the buffer state
    written, never read): the float x_0 and fingerprint of to_float(to_fixed(x0)) and
    fingerprint(to_fixed(x0)), then the x, v, state, float x, peak and largest state of a
    push from to_fixed(x0), zeros and an empty buffer, with every variant; with and
    without a block's input as base. x, v and the state start as garbage, so a kernel
    that read them would fail."""
    g = torch.Generator().manual_seed(n)
    size = 20011
    x0 = (torch.randn(size, generator=g, dtype=torch.float64)
          * 10.0 ** torch.randint(-14, 6, (size,), generator=g)).to(dtype)
    x0[:3] = torch.tensor([-0.0, 2.0 ** -41, -(2.0 ** -40)])
    out = (torch.randn(size, generator=g, dtype=torch.float64) * 5).to(dtype)
    for isa in instruction_sets:
        assert native.use_instruction_set(isa)
        for with_base in (False, True):
            x, v = exact.to_fixed(x0), torch.zeros(size, dtype=torch.int64)
            buf = exact.InformationBuffer.empty(x.shape, x.device, n)
            ref_xf0, ref_digest = exact.to_float(x, dtype), exact_native.fingerprint(x)
            bound = exact.ExactKernels(x, n, backend="native").bind(x, v, buf, dtype)
            ref = bound.push(out, ref_xf0 if with_base else None)
            started = exact.ExactKernels(x0, n, backend="native").start(x0)
            k, x2, v2, buf2, xf0, digest = started
            for t in (x2, v2, buf2.state):
                t.fill_(-12345)  # whatever the memory held: never read
            assert torch.equal(xf0, ref_xf0) and digest == ref_digest, isa
            got = k.push(out, xf0 if with_base else None)
            assert torch.equal(got[0], ref[0]) and got[1] == ref[1], isa
            assert torch.equal(x2, x) and torch.equal(v2, v) and torch.equal(buf2.state, buf.state), isa
            assert buf2.upper == buf.upper == int(buf.state.max()) and buf2.lower == -1
            assert k.start is None  # only the first push starts from x0


def test_a_stack_start_refuses_what_to_fixed_refuses(native):
    """The range check of ExactKernels.start is to_fixed's: inf, NaN and values beyond
    the fixed-point range are refused before anything is written; dtypes and layouts the
    C kernels do not take get None (the separate steps)."""
    n = exact.gamma_numerator(0.9)
    k = exact.ExactKernels(torch.zeros(8), n, backend="native")
    for bad in (float("inf"), float("nan"), 2 * exact.VALUE_LIMIT):
        x0 = torch.zeros(8)
        x0[3] = bad
        with pytest.raises(exact.FixedPointRangeError):
            k.start(x0)
    assert k.start(torch.zeros(8, dtype=torch.float16)) is None
    assert exact.ExactKernels(torch.zeros(8), 100, backend="native").start(torch.zeros(8)) is None  # 62-bit state
    # gamma = 2**-8: an empty buffer's state is at the spill limit, the first push spills
    assert exact.ExactKernels(torch.zeros(8), 256, backend="native").start(torch.zeros(8)) is None
    assert exact.ExactKernels(torch.zeros(8), n, backend="eager").start(torch.zeros(8)) is None


@pytest.mark.parametrize("with_base", [False, True])
def test_the_inverse_kernels_take_the_fingerprints_and_state_bounds_as_they_go(native, instruction_sets,
                                                                              with_base):
    """undo_position and pop asked for digests: the fingerprints (exact_walk's) of the x
    and v they leave, and the exact smallest and largest buffer state (the buffer then
    knows it is empty from its bounds alone); digests() is None unless both were asked
    in a row."""
    n = exact.gamma_numerator(0.9)
    g = torch.Generator().manual_seed(5)
    size = 20011
    base = torch.randn(size, generator=g)
    outs = [torch.randn(size, generator=g) * 3 for _ in range(4)]
    x0 = exact.to_fixed(torch.randn(size, generator=g))
    for isa in instruction_sets:
        assert native.use_instruction_set(isa)
        x, v, buf, bound = bound_at(x0, n, torch.float32)
        for out in outs:
            bound.push(out, base if with_base else None)
        for i, out in reversed(list(enumerate(outs))):
            bound.undo_position(digest=True)
            assert bound.digests() is None  # v's not taken yet
            bound.pop(out, base if with_base else None, digest=i % 2 == 0)
            if i % 2 == 0:
                assert bound.digests() == [exact_native.fingerprint(x), exact_native.fingerprint(v)], isa
            else:
                assert bound.digests() is None
            assert buf.lower == int(buf.state.min()) and buf.upper == int(buf.state.max()), isa
            assert buf.is_empty() == (i == 0)
        assert torch.equal(x, x0) and not v.any() and bound.digests() == [exact_native.fingerprint(x0), [0, 0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_base", [False, True])
@pytest.mark.parametrize("into", ["new", "spare", "out"])
def test_a_pop_that_goes_on_to_the_layer_below_gives_the_bits_of_the_two_kernels(native, instruction_sets,
                                                                                dtype, with_base, into):
    """pop(then_position=True) (one pass over v) against pop then undo_position: the same
    x, v, buffer states and bounds, float x and fingerprints, on every variant; the float
    x may be written over the residual the pop reads (out itself as the spare)."""
    n = exact.gamma_numerator(0.9)
    g = torch.Generator().manual_seed(7)
    size = 20011
    base = torch.randn(size, generator=g, dtype=dtype)
    outs = [torch.randn(size, generator=g, dtype=dtype) * 3 for _ in range(5)]
    x0 = exact.to_fixed(torch.randn(size, generator=g, dtype=dtype))
    for isa in instruction_sets:
        assert native.use_instruction_set(isa)
        states = []
        for fused in (False, True):
            x, v, buf, bound = bound_at(x0, n, dtype)
            for out in outs:
                bound.push(out, base if with_base else None)
            seen = []
            xf = bound.undo_position()
            for i in range(len(outs) - 1, -1, -1):
                out = outs[i].clone()
                b = base if with_base else None
                if fused and i > 0:
                    spare = {"new": None, "spare": torch.full_like(out, float("nan")), "out": out}[into]
                    xf = bound.pop(out, b, digest=i == 1, then_position=True, spare=spare)
                    assert (xf is spare) == (spare is not None), isa
                else:
                    bound.pop(out, b, digest=i == 0)
                    if i > 0:
                        xf = bound.undo_position(digest=i == 1)
                seen.append((xf.clone(), x.clone(), v.clone(), buf.state.clone(), buf.lower, buf.upper,
                             list(buf.words)))
            states.append((seen, bound.digests()))
        (plain, plain_digests), (fused_seen, fused_digests) = states
        assert plain_digests == fused_digests == [exact_native.fingerprint(x0), [0, 0]], isa
        for a, b in zip(plain, fused_seen):
            assert all(torch.equal(s, t) for s, t in zip(a[:4], b[:4])), isa
            assert a[4:6] == b[4:6] and len(a[6]) == len(b[6]), isa


def _adjoint_reference(a, g, c, alpha, w, lerp):
    """adjoint_update in torch operations, in float64."""
    a64 = torch.zeros_like(c, dtype=torch.float64)
    for t in (a, g):
        if t is not None:
            a64 += t.double()
    if alpha is not None:
        a64 += alpha * c.double()
    c64 = c.double() + w * (a64 - c.double()) if lerp else c.double()
    return a64, c64


def _torch_steps(a, g, c, alpha, w, skip):
    """MomentumAdjoint's torch operations for (a + g - c if skip), or g + alpha c for a
    None, then c's lerp: (a, c) as new tensors."""
    if a is None:
        a = g.clone().add_(c, alpha=alpha)
    else:
        a = a.clone().add_(g)
        if skip:
            a.sub_(c)
    return a, c.clone().lerp_(a, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_adjoint_update_is_the_sum_and_lerp_in_one_pass(native, instruction_sets, dtype):
    """adjoint_update for every combination of its terms (a, g, the multiple of c, the
    lerp from either end), with the result written over a, over g or elsewhere: the
    values of the torch operations it replaces, to the rounding of a few operations;
    and their bits in the variants with fused multiply-adds where torch's own vector
    code has them too (AVX2, AVX-512), as MomentumAdjoint uses it."""
    gen = torch.Generator().manual_seed(9)
    size = 20011
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch_fma = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    for isa in instruction_sets:
        assert native.use_instruction_set(isa)
        if torch_fma and isa in ("avx512", "avx2"):
            for w in (0.1, 0.9, 1.0):
                a, g, c = (torch.randn(size, generator=gen, dtype=dtype) for _ in range(3))
                for a_in, alpha, skip in ((a, -1.0, True), (a, None, False), (None, 9.0, False)):
                    want_a, want_c = _torch_steps(a_in, g, c, alpha, w, skip)
                    got_a, got_c = (a.clone() if a_in is not None else torch.empty_like(c)), c.clone()
                    assert exact_native.adjoint_update(got_a, None if a_in is None else got_a, g, got_c, alpha, w,
                                                       True)
                    assert torch.equal(got_a, want_a) and torch.equal(got_c, want_c), (isa, w, alpha)
        for has_a in (False, True):
            for has_g in (False, True):
                for alpha in (None, -1.0, 9.0):
                    for w, lerp in ((0.1, True), (0.9, True), (1.0, True), (0.1, False)):
                        a, g, c = (torch.randn(size, generator=gen, dtype=dtype) for _ in range(3))
                        a_in, g_in = (a if has_a else None), (g if has_g else None)
                        want_a, want_c = _adjoint_reference(a_in, g_in, c, alpha, w, lerp)
                        out = a if has_a else (g if has_g else torch.empty_like(c))
                        assert exact_native.adjoint_update(out, a_in, g_in, c, alpha, w, lerp)
                        assert torch.allclose(out.double(), want_a, **tol), (isa, has_a, has_g, alpha)
                        assert torch.allclose(c.double(), want_c, **tol), (isa, has_a, has_g, alpha, w)
                        if lerp and w == 1.0:
                            assert torch.equal(c, out)  # lerp's far end exactly, as torch's
    c = torch.randn(8, dtype=dtype)
    assert not exact_native.adjoint_update(c.clone(), None, c[::1].expand(2, 8)[0], torch.randn(16)[::2], None,
                                           0.1, True)  # a strided c: not taken
    assert not exact_native.adjoint_update(torch.empty(8, dtype=torch.float16), None, None,
                                           torch.zeros(8, dtype=torch.float16), 1.0, 0.1, True)


@pytest.mark.parametrize("gamma", [256 / 65536, 0.3, 0.9, 0.95, 1.0])
def test_a_deep_stack_of_steps_matches_the_torch_path_word_for_word(native, gamma):
    """push/pop with spills and refills: the same x, v, buffer state and words after
    every layer as the torch kernels, and back to the empty buffer at the end."""
    n = exact.gamma_numerator(gamma)
    depth, size = 300, 3001
    g = torch.Generator().manual_seed(7)
    fs = [torch.randn(size, generator=g) for _ in range(depth)]
    x0 = exact.to_fixed(torch.randn(size, generator=g))
    runs = {}
    for backend in ("eager", "native"):
        k = exact.ExactKernels(x0, n, backend=backend)
        assert (k.native is not None) == (backend == "native")
        x, v = x0.clone(), torch.zeros_like(x0)
        buf = exact.InformationBuffer.empty(x.shape, x.device, n)
        bound = k.bind(x, v, buf, torch.float32)
        assert isinstance(bound, exact_native.NativeBound) == (backend == "native")
        trail = []
        for f in fs:
            xf, peak = bound.push(f)
            trail.append((xf, float(peak), x.clone(), v.clone(), buf.state.clone(), len(buf.words)))
        words = [w.clone() for w in buf.words]
        for f in reversed(fs):
            bound.undo_position()
            bound.pop(f)
        assert torch.equal(x, x0) and not v.any() and buf.is_empty(), backend
        runs[backend] = trail, words
    (t_eager, w_eager), (t_native, w_native) = runs["eager"], runs["native"]
    assert len(w_eager) == len(w_native) and (gamma == 1.0 or w_eager)
    for a, b in zip(w_eager, w_native, strict=True):
        assert a.dtype == b.dtype == torch.uint8 and torch.equal(a, b)
    for layer, (a, b) in enumerate(zip(t_eager, t_native, strict=True)):
        assert a[1] == b[1] and a[5] == b[5], layer
        for ta, tb in zip(a[:1] + a[2:5], b[:1] + b[2:5], strict=True):
            assert torch.equal(ta, tb), layer


def test_a_refill_out_of_step_is_a_reconstruction_error(native):
    n = exact.gamma_numerator(0.5)
    x0 = exact.to_fixed(torch.randn(1000))
    k = exact.ExactKernels(x0, n, backend="native")
    x, v = x0.clone(), torch.zeros_like(x0)
    buf = exact.InformationBuffer.empty(x.shape, x.device, n)
    bound = k.bind(x, v, buf, torch.float32)
    assert isinstance(bound, exact_native.NativeBound)
    fs = [torch.randn(1000) for _ in range(40)]
    for f in fs:
        bound.push(f)
    assert buf.words
    buf.words[-1] = buf.words[-1][:-1]  # one byte lost
    with pytest.raises(exact.ReconstructionError, match="out of step"):
        for f in reversed(fs):
            bound.undo_position()
            bound.pop(f)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 5e6])
def test_values_out_of_range_are_a_clear_error_with_the_c_kernels(native, monkeypatch, bad):
    monkeypatch.setenv("MRESNET_EXACT_BACKEND", "native")
    torch.manual_seed(0)
    net = MomentumNet([nn.Linear(8, 8) for _ in range(3)], 0.9, memory_efficient=True)  # exact inversion
    x = torch.randn(4, 8)
    x[1, 2] = bad
    with pytest.raises(exact.FixedPointRangeError):
        net(x)


def _step(net, x):
    net.zero_grad(set_to_none=True)
    out = net(x)
    out.pow(2).mean().backward()
    return [out.detach(), *[p.grad.clone() for p in net.parameters()]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_training_step_is_bit_identical_with_either_kernels(native, monkeypatch, dtype):
    """BatchNorm, dropout and a learned v0: outputs and every gradient equal (torch.equal),
    with one thread and with several (the kernels' parallel loops change no bit)."""
    torch.manual_seed(0)
    blocks = [nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Dropout(0.2), nn.Tanh())
              for _ in range(24)]
    net = MomentumNet(blocks, 0.7, init_velocity=nn.Linear(16, 16), memory_efficient=True).to(dtype)
    x = torch.randn(64, 16, dtype=dtype)
    threads = torch.get_num_threads()  # the unit tests' one thread (tests/conftest.py)
    for nthreads in (1, 2, 3):  # matrix products may round differently with the thread count
        results = []
        for backend in ("eager", "native"):
            monkeypatch.setenv("MRESNET_EXACT_BACKEND", backend)
            torch.manual_seed(1)
            torch.set_num_threads(nthreads)
            try:
                results.append(_step(net, x))
            finally:
                torch.set_num_threads(threads)
        assert all(torch.equal(a, b) for a, b in zip(*results, strict=True)), nthreads


def test_layouts_and_dtypes_the_c_kernels_do_not_take_go_to_the_torch_kernels(native):
    n = exact.gamma_numerator(0.9)
    k = exact.ExactKernels(torch.zeros(4, 3, 8, 8, dtype=torch.int64), n, backend="native")
    x = exact.to_fixed(torch.randn(4, 3, 8, 8))
    v = torch.zeros_like(x)
    state = exact.InformationBuffer.empty(x.shape, x.device, n).state
    assert k.native.handles(torch.float32, x, v, state)
    assert not k.native.handles(torch.float16, x, v, state)  # half residuals
    assert not k.native.handles(torch.float32, x.transpose(0, 1), v.transpose(0, 1))  # strided
    last = x.contiguous(memory_format=torch.channels_last)
    assert not k.native.handles(torch.float32, last, v, state)
    assert not k.native.handles(torch.float32, x, v[:2], state[:2])  # another shape
    # a residual in another layout is read element for element
    f = torch.randn(4, 3, 8, 8)
    a, b = [t.clone() for t in (x, v, state)], [t.clone() for t in (x, v, state)]
    out_native = k.forward_step(*a, f.contiguous(memory_format=torch.channels_last))
    out_torch = exact.torch_forward_step(*b, f, n)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert torch.equal(out_native[0], out_torch[0])
    # and stacks the C kernels do not take run on the torch kernels: half precision,
    # channels-last inputs (whose exact state keeps their layout)
    net = MomentumNet([nn.Linear(8, 8) for _ in range(3)], 0.9, memory_efficient=True).to(torch.bfloat16)
    net(torch.randn(2, 8, dtype=torch.bfloat16, requires_grad=True)).sum().backward()
    torch.manual_seed(0)
    convs = MomentumNet([nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)], 0.9, memory_efficient=True)
    image = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    convs(image).sum().backward()
    plain = MomentumNet(list(convs.functions), 0.9, memory_efficient=False)
    image2 = image.detach().clone().requires_grad_(True)
    plain(image2).sum().backward()
    assert torch.allclose(image.grad, image2.grad, atol=1e-5)


def test_the_installed_library_is_used_without_any_cache(native, tmp_path):
    """After `pip install .` or `pip install -e .` (setup.py): the library next to the
    package, on torch's OpenMP runtime; no cache folder is made."""
    if not native.INSTALLED_LIBRARY.exists():
        pytest.skip("the package was not installed (no mresnet_core/libexact_kernels.so)")
    assert native.library() is not None
    info = native.library_info()
    assert info.origin == "installed" and info.path == str(native.INSTALLED_LIBRARY)
    assert info.openmp and not info.built and native.build_error() is None
    assert native.library().exact_kernels_version() == native.VERSION
    assert native.library() is native.library()
    assert any(name.startswith("libgomp") for name in native.needed_libraries(native.INSTALLED_LIBRARY))
    cache = tmp_path / "cache"
    probe = ("from mresnet_core import exact_native as e\n"
             "assert e.library() is not None, e.build_error()\n"
             "print(e.library_info().origin)\n")
    env = {**os.environ, "MRESNET_KERNEL_CACHE": str(cache), "XDG_CACHE_HOME": str(tmp_path / "xdg"),
           "HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["installed"]
    assert not os.path.exists(cache) and not list(tmp_path.iterdir())


def test_the_kernels_share_torch_openmp_runtime(native):
    """In a fresh process, with scikit-learn's own OpenMP runtime loaded first: loading
    the kernels adds no runtime (they use torch's thread pool)."""
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc/self/maps")
    probe = ("import sklearn.ensemble, torch\n"
             "from mresnet_core import exact_native as e\n"
             "before = e.loaded_openmp_runtimes()\n"
             "lib = e.library()\n"
             "assert lib is not None, e.build_error()\n"
             "import os; ours = e.torch_openmp_runtime()\n"
             "print(lib.exact_kernels_openmp(), before == e.loaded_openmp_runtimes(),\n"
             "      os.path.dirname(ours) == os.path.join(os.path.dirname(torch.__file__), 'lib'), before)\n")
    openmp, same, torchs, before = fresh_python(probe).split(maxsplit=3)
    assert openmp == "1", "the kernels were built without OpenMP"
    assert same == "True", f"loading the kernels added an OpenMP runtime to {before}"
    assert torchs == "True", f"the kernels link an OpenMP runtime other than torch's: {before}"


def test_setup_py_builds_what_the_loader_expects(load_script):
    """setup.py (which cannot import torch) has the loader's flags and key."""
    setup_py = load_script("setup.py")  # defines; setup() runs only as __main__
    assert setup_py.CFLAGS == exact_native.CFLAGS
    source = exact_native.SOURCE.read_bytes()
    assert setup_py.source_key(source, setup_py.CFLAGS) == exact_native.source_key(source, exact_native.CFLAGS)
    assert not {"-march=native", "-ffast-math", "-Ofast"} & set(setup_py.CFLAGS)


@pytest.fixture
def fresh_library(monkeypatch):
    """library() and the warnings start afresh, and again after the test."""
    exact_native.library.cache_clear()
    exact.warn_native_unavailable.cache_clear()
    yield exact_native
    monkeypatch.undo()
    exact_native.library.cache_clear()
    exact.warn_native_unavailable.cache_clear()


def test_without_any_library_the_torch_kernels_are_used_with_one_warning(fresh_library, monkeypatch, tmp_path):
    """Not installed and no compiler: library() is None, build_error() says why, and a
    float32 stack on the 'auto' backend warns once (per reason and process)."""
    monkeypatch.setattr(exact_native, "INSTALLED_LIBRARY", tmp_path / "libexact_kernels.so")
    monkeypatch.setattr(exact_native, "find_compiler", lambda: None)
    assert exact_native.library() is None
    assert "no installed library" in exact_native.build_error()
    assert "no C compiler" in exact_native.build_error()
    x = exact.to_fixed(torch.randn(10))
    n = 58982
    for walk in range(2):  # a second stack, or a second walk: no second warning
        k = exact.ExactKernels(x, n, backend="auto")
        assert k.native is None
        buf = exact.InformationBuffer.empty(x.shape, x.device, n)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            bound = k.bind(x.clone(), torch.zeros_like(x), buf, torch.float32)
        assert isinstance(bound, exact.BoundKernels)
        expected = ["the C exact kernels are not used: " + exact_native.build_error()
                    + "; using the torch kernels (same results, slower)"]
        assert [str(w.message) for w in caught] == (expected if walk == 0 else [])
    with warnings.catch_warnings(record=True) as caught:  # a stack they would not take: no warning
        warnings.simplefilter("always")
        k.bind(x.clone(), torch.zeros_like(x), buf, torch.bfloat16)
    assert not caught
    with pytest.warns(UserWarning, match="MRESNET_EXACT_BACKEND=native, but no installed library"):
        assert exact.ExactKernels(x, n, backend="native").native is None


def test_build_error_is_the_current_reason(fresh_library, monkeypatch, tmp_path):
    """Not a stale one: None once the kernels load, the new reason when it changes."""
    if not exact_native.INSTALLED_LIBRARY.exists():
        pytest.skip("needs the installed library")
    installed = exact_native.INSTALLED_LIBRARY
    monkeypatch.setattr(exact_native, "INSTALLED_LIBRARY", tmp_path / "libexact_kernels.so")
    monkeypatch.setattr(exact_native, "find_compiler", lambda: None)
    assert exact_native.library() is None and "no C compiler" in exact_native.build_error()
    exact_native.library.cache_clear()
    monkeypatch.setattr(exact_native, "INSTALLED_LIBRARY", installed)
    assert exact_native.library() is not None
    assert exact_native.build_error() is None and exact_native.library_info().origin == "installed"
    exact_native.library.cache_clear()
    monkeypatch.setattr(exact_native, "INSTALLED_LIBRARY", tmp_path / "libexact_kernels.so")
    monkeypatch.setenv("MRESNET_KERNEL_CACHE", str(tmp_path / "link"))
    os.symlink(tmp_path, tmp_path / "link")
    monkeypatch.setattr(exact_native, "find_compiler", lambda: "/bin/false")
    assert exact_native.library() is None
    assert "symlink" in exact_native.build_error() and "no C compiler" not in exact_native.build_error()
    assert exact_native.library_info() is None
