"""The C exact kernels (exact_kernels.c) against the torch kernels of exact.py, bit for bit."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from mresnet_core import MomentumNet, exact, exact_native

from test_exact import random_velocity


@pytest.fixture(scope="module")
def native():
    if exact_native._compiler() is None:
        pytest.skip("no C compiler: the C kernels cannot be built here")
    assert exact_native.available(), exact_native.build_error()
    return exact_native


def narrow_state(size, n, g):
    """Buffer states as a forward step can meet them: below the spill limit n 2**15, and
    at least a spilled state's n 2**7."""
    return torch.randint(n << 7, n << 15, (size,), generator=g, dtype=torch.int32)


NS = [256, 257, 655, 6554, 32768, 58982, 65535, 65536]  # every n of the 31-bit layout's edges


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", NS)
def test_each_kernel_gives_the_bits_of_the_torch_kernel(native, n, dtype):
    """Random x, v over every magnitude and sign, residuals from 1e-8 to 1e6."""
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
        ref = getattr(exact, "_" + name)(*theirs, *((n,) if name != "undo_position" else ()))
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
    net = MomentumNet([nn.Linear(8, 8) for _ in range(3)], 0.9)
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
    net = MomentumNet(blocks, 0.7, init_velocity=nn.Linear(16, 16)).to(dtype)
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
    out_torch = exact._forward_step(*b, f, n)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert torch.equal(out_native[0], out_torch[0])
    # and stacks the C kernels do not take run on the torch kernels: half precision,
    # channels-last inputs (whose exact state keeps their layout)
    net = MomentumNet([nn.Linear(8, 8) for _ in range(3)], 0.9).to(torch.bfloat16)
    net(torch.randn(2, 8, dtype=torch.bfloat16, requires_grad=True)).sum().backward()
    torch.manual_seed(0)
    convs = MomentumNet([nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)], 0.9)
    image = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    convs(image).sum().backward()
    plain = MomentumNet(list(convs.functions), 0.9, memory_efficient=False)
    image2 = image.detach().clone().requires_grad_(True)
    plain(image2).sum().backward()
    assert torch.allclose(image.grad, image2.grad, atol=1e-5)


def test_the_library_is_built_once_and_shares_torch_openmp_runtime(native):
    lib = native.library()
    assert lib.exact_kernels_version() == native.VERSION
    assert native.library() is lib
    built = list(native.cache_dir().glob("exact_kernels_*.so"))
    assert built, "the built library is cached"
    if not os.path.exists("/proc/self/maps"):
        return
    # in a fresh process, with scikit-learn's own OpenMP runtime loaded first: loading
    # the kernels adds no runtime (they use torch's thread pool)
    probe = ("import sklearn.ensemble, torch\n"
             "from mresnet_core import exact_native as e\n"
             "before = e.loaded_openmp_runtimes()\n"
             "lib = e.library()\n"
             "assert lib is not None, e.build_error()\n"
             "import os; ours = e._openmp_runtime()\n"
             "print(lib.exact_kernels_openmp(), before == e.loaded_openmp_runtimes(),\n"
             "      os.path.dirname(ours) == os.path.join(os.path.dirname(torch.__file__), 'lib'), before)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    openmp, same, torchs, before = done.stdout.split(maxsplit=3)
    assert openmp == "1", "the kernels were built without OpenMP"
    assert same == "True", f"loading the kernels added an OpenMP runtime to {before}"
    assert torchs == "True", f"the kernels link an OpenMP runtime other than torch's: {before}"


def test_without_a_compiler_the_torch_kernels_are_used(monkeypatch, tmp_path):
    monkeypatch.setattr(exact_native, "_compiler", lambda: None)
    exact_native.library.cache_clear()
    try:
        assert exact_native.library() is None
        assert "no C compiler" in exact_native.build_error()
        x = torch.zeros(10, dtype=torch.int64)
        assert exact.ExactKernels(x, 58982, backend="auto").native is None
        exact._native_unavailable_warning.cache_clear()
        with pytest.warns(UserWarning, match="MRESNET_EXACT_BACKEND=native, but no C compiler"):
            assert exact.ExactKernels(x, 58982, backend="native").native is None
    finally:
        exact_native.library.cache_clear()
