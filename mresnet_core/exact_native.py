"""The exact kernels in C (``exact_kernels.c``), built on first use and called via ctypes.

``exact.ExactKernels`` uses them on the CPU where they apply (float32/float64 residuals,
the 31-bit buffer state, contiguous tensors): the same bits as the torch kernels in
``exact.py``, several times faster than torch.compile's code on CPUs without AVX-512,
no per-shape compilation and no per-call guards. The library is compiled once per
machine with the C compiler torch.compile uses too (``$CC``, else ``cc``/``gcc``/
``clang``), ``-O3 -march=native``, and OpenMP linked against the runtime torch has
already loaded (one thread pool, ``torch.get_num_threads()`` threads); it is cached in
``$MRESNET_KERNEL_CACHE`` (default: ``<tmp>/mresnet_core_<user>``) under a name that
hashes the source, the compiler, its flags and the CPU. Without a compiler,
``library()`` is None and the torch kernels are used (``build_error()`` says why).
"""
from __future__ import annotations

import ctypes
import functools
import getpass
import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("exact_kernels.c")
VERSION = 3  # exact_kernels_version() of a library built from SOURCE
CFLAGS = ["-O3", "-march=native", "-std=c11", "-fPIC", "-fno-trapping-math", "-ffp-contract=off"]
_TYPES = {torch.float32: "f32", torch.float64: "f64"}
_errors: list = []


def build_error() -> str | None:
    """Why the C kernels are not available (None when they are, or were never asked for)."""
    return _errors[-1] if _errors else None


def cache_dir() -> Path:
    """Where built libraries are kept: $MRESNET_KERNEL_CACHE, else a per-user temp folder."""
    env = os.environ.get("MRESNET_KERNEL_CACHE")
    if env:
        return Path(env)
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (containers): the uid will do
        user = str(os.getuid()) if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"mresnet_core_{user}"


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


OPENMP_LIBRARY = re.compile(r"/lib(gomp|iomp5|omp)[-\w]*\.so[.\d]*$")


def loaded_openmp_runtimes() -> list:
    """Paths of the OpenMP runtimes loaded in this process (Linux; else empty)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {line.split()[-1] for line in maps.splitlines() if line.split()}
    return sorted(p for p in paths if OPENMP_LIBRARY.search(p) and os.path.exists(p))


def _openmp_runtime() -> str | None:
    """The OpenMP runtime torch uses (one in its own lib folder first: other packages,
    scikit-learn for one, may have loaded theirs too): linking to that file keeps one
    thread pool for our kernels and torch's operators."""
    runtimes = loaded_openmp_runtimes()
    torch_lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
    own = [p for p in runtimes if os.path.realpath(os.path.dirname(p)) == torch_lib]
    return (own or runtimes or [None])[0]


def _cpu_signature() -> str:
    """What -march=native depends on: the CPU's flags (Linux) or its name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _run(cmd: list) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {(done.stderr or done.stdout).strip()[-500:]}")


def _build(cc: str, openmp: str | None, target: Path) -> None:
    """Compile SOURCE once per float type and link both into ``target`` (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        omp = ["-fopenmp"] if openmp else []
        objects = []
        for defs, name in (([], "f32.o"), (["-DEXACT_FLOAT=double", "-DEXACT_F64"], "f64.o")):
            obj = os.path.join(tmp, name)
            _run([cc, *CFLAGS, *omp, *defs, "-c", str(SOURCE), "-o", obj])
            objects.append(obj)
        lib = os.path.join(tmp, target.name)
        _run([cc, "-shared", *objects, *([openmp] if openmp else []), "-o", lib])
        os.replace(lib, target)


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The loaded kernels, building them first if needed; None if that is impossible."""
    if platform.system() != "Linux" and not os.environ.get("MRESNET_KERNEL_ANY_OS"):
        _errors.append("the C kernels are built on Linux only (set MRESNET_KERNEL_ANY_OS=1 to try)")
        return None
    cc = _compiler()
    if cc is None:
        _errors.append("no C compiler found ($CC, cc, gcc or clang)")
        return None
    openmp = _openmp_runtime()
    for omp in ([openmp, None] if openmp else [None]):  # without OpenMP if linking it fails
        try:
            version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
            key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, version, " ".join(CFLAGS), str(omp),
                                            _cpu_signature()]).encode()).hexdigest()[:16]
            target = cache_dir() / f"exact_kernels_{key}.so"
            if not target.exists():
                _build(cc, omp, target)
            lib = ctypes.CDLL(str(target))
            if lib.exact_kernels_version() != VERSION:
                raise RuntimeError(f"{target} is version {lib.exact_kernels_version()}, expected {VERSION}")
            _declare(lib)
            return lib
        except Exception as err:  # noqa: BLE001 - reported by build_error(), torch kernels used
            _errors.append(f"building the C kernels failed: {type(err).__name__}: {err}")
    return None


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    for t in _TYPES.values():
        fs = getattr(lib, f"forward_step_{t}")
        fs.argtypes, fs.restype = [p, p, p, p, p, i64, i64, i32, p], ctypes.c_double
        getattr(lib, f"undo_position_{t}").argtypes = [p, p, p, i64, i32]
        uv = getattr(lib, f"undo_velocity_{t}")
        uv.argtypes, uv.restype = [p, p, p, i64, i64, i32], i32
    lib.count_below.argtypes, lib.count_below.restype = [p, i64, i32, i32], i64
    for name in ("spill_words", "refill_words"):
        getattr(lib, name).argtypes, getattr(lib, name).restype = [p, i64, i32, p], i32


def available() -> bool:
    """Whether the C kernels can be used in this process."""
    return library() is not None


class NativeKernels:
    """The three exact steps of ``exact.ExactKernels`` for gamma = n / 2**16, in C.

    Callers check ``handles(...)`` first (CPU; int64 x and v and an int32 buffer state,
    contiguous, of one shape; float32/float64 residuals); everything else goes to the
    torch kernels. A residual that is not contiguous is copied first.
    """

    DTYPES = tuple(_TYPES)

    def __init__(self, n: int):
        self.n = n
        self.lib = library()
        self._max = ctypes.c_int32(0)  # forward_step's largest state

    @staticmethod
    def handles(dtype: torch.dtype, x: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None = None) -> bool:
        """Whether these kernels take residuals of ``dtype`` and these x, v (and state).
        Called for every layer: the cheapest checks that keep it exact."""
        return (dtype in _TYPES and x.dtype is torch.int64 and v.dtype is torch.int64
                and x.device.type == "cpu" and x.is_contiguous() and v.is_contiguous()
                and v.shape == x.shape and v.device == x.device
                and (state is None or (state.dtype is torch.int32 and state.is_contiguous()
                                       and state.shape == x.shape and state.device == x.device)))

    @staticmethod
    def _like(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if f.shape != x.shape or f.device != x.device:
            raise ValueError(f"f has shape {tuple(f.shape)} on {f.device}, the exact state "
                             f"{tuple(x.shape)} on {x.device}")
        return f.contiguous()

    def forward_step(self, x, v, state, f):
        """In place: v <- gamma v + (1 - gamma) f, x <- x + v; returns (float x, peak,
        the largest buffer state), the peak (max |x|, |f|) a Python float."""
        f = self._like(f, x)
        xf = torch.empty(x.shape, dtype=f.dtype)
        peak = getattr(self.lib, f"forward_step_{_TYPES[f.dtype]}")(
            x.data_ptr(), v.data_ptr(), state.data_ptr(), f.data_ptr(), xf.data_ptr(), x.numel(),
            self.n, torch.get_num_threads(), ctypes.addressof(self._max))
        return xf, peak, self._max.value

    def undo_position(self, x, v, dtype):
        """In place: x <- x - v; returns float x."""
        xf = torch.empty(x.shape, dtype=dtype)
        getattr(self.lib, f"undo_position_{_TYPES[dtype]}")(
            x.data_ptr(), v.data_ptr(), xf.data_ptr(), x.numel(), torch.get_num_threads())
        return xf

    def undo_velocity(self, v, state, f) -> int:
        """In place: the inverse of forward_step's velocity update, given f(x_n); returns
        the smallest buffer state."""
        f = self._like(f, v)
        return getattr(self.lib, f"undo_velocity_{_TYPES[f.dtype]}")(
            v.data_ptr(), state.data_ptr(), f.data_ptr(), v.numel(), self.n, torch.get_num_threads())

    def spill(self, state: torch.Tensor, limit: int):
        """Move the low byte of every state >= limit into a new word (uint8, element
        order, as ``InformationBuffer.before_push``); returns (word or None, largest state)."""
        count = state.numel() - self.lib.count_below(state.data_ptr(), state.numel(), limit,
                                                     torch.get_num_threads())
        if not count:
            return None, int(state.max()) if state.numel() else 0
        word = torch.empty(count, dtype=torch.uint8)
        return word, self.lib.spill_words(state.data_ptr(), state.numel(), limit, word.data_ptr())

    def refill_count(self, state: torch.Tensor, low: int) -> int:
        """How many states are below ``low`` (each takes back one byte)."""
        return self.lib.count_below(state.data_ptr(), state.numel(), low, torch.get_num_threads())

    def refill(self, state: torch.Tensor, low: int, word: torch.Tensor) -> int:
        """Give every state < low its byte back from ``word``, in element order (as
        ``InformationBuffer.after_pop``); returns the smallest state."""
        return self.lib.refill_words(state.data_ptr(), state.numel(), low, word.contiguous().data_ptr())


class NativeBound:
    """The C kernels bound to one exact state (x, v, buffer; updated in place) and one
    residual dtype, checked once by ``exact.ExactKernels.bind``: each layer is then one
    C call. The kernels return the largest (forward) or smallest (inverse) buffer state
    as they go, so the buffer's bounds are exact and spilling or refilling reads the
    state only when a word moves (what ``exact.BoundKernels`` leaves to the buffer)."""

    def __init__(self, kernels: NativeKernels, x, v, buffer, dtype: torch.dtype):
        from . import exact

        self.kernels, self.x, self.v, self.buffer, self.dtype = kernels, x, v, buffer, dtype
        self.shape, self.count, self.n = x.shape, x.numel(), kernels.n
        self.pointers = (x.data_ptr(), v.data_ptr(), buffer.state.data_ptr())
        name = _TYPES[dtype]
        lib = kernels.lib
        self._forward = getattr(lib, f"forward_step_{name}")
        self._position = getattr(lib, f"undo_position_{name}")
        self._velocity = getattr(lib, f"undo_velocity_{name}")
        self.limit = self.n << (buffer.state_bits - exact.GAMMA_BITS)
        self._max = ctypes.c_int32(0)
        self._max_address = ctypes.addressof(self._max)

    def _residual(self, f: torch.Tensor) -> torch.Tensor:
        if f.dtype is not self.dtype or f.shape != self.shape or f.device.type != "cpu":
            raise ValueError(f"a residual of {f.dtype} {tuple(f.shape)} on {f.device} for an exact "
                             f"state of {tuple(self.shape)} and {self.dtype}")
        return f.contiguous()

    def push(self, f):
        """Spill a word if a state may overflow, then one layer forward: returns (float x, peak)."""
        f = self._residual(f)
        buffer = self.buffer
        if buffer._upper >= self.limit:
            word, buffer._upper = self.kernels.spill(buffer.state, self.limit)
            if word is not None:
                buffer.words.append(word)
        xf = torch.empty(self.shape, dtype=self.dtype)
        x, v, state = self.pointers
        peak = self._forward(x, v, state, f.data_ptr(), xf.data_ptr(), self.count, self.n,
                             torch.get_num_threads(), self._max_address)
        buffer._upper, buffer._lower = self._max.value, -1  # the smallest unknown, as after before_push
        return xf, peak

    def undo_position(self):
        """x <- x - v; returns float x."""
        xf = torch.empty(self.shape, dtype=self.dtype)
        self._position(self.pointers[0], self.pointers[1], xf.data_ptr(), self.count, torch.get_num_threads())
        return xf

    def pop(self, f, release=None) -> None:
        """The velocity back, given f(x_n), then a word refilled if a state fell below
        the buffer's low bound; ``release`` as in ``exact.BoundKernels.pop``."""
        f = self._residual(f)
        buffer = self.buffer
        smallest = self._velocity(self.pointers[1], self.pointers[2], f.data_ptr(), self.count, self.n,
                                  torch.get_num_threads())
        f = release() if release is not None else None
        low = buffer.low
        if smallest < low:
            total = self.kernels.refill_count(buffer.state, low)
            if not buffer.words or buffer.words[-1].numel() != total:
                from .exact import NOT_REPLAYABLE, ReconstructionError

                raise ReconstructionError("information buffer out of step: " + NOT_REPLAYABLE)
            smallest = self.kernels.refill(buffer.state, low, buffer.words.pop())
        buffer._lower, buffer._upper = smallest, 1 << 62  # as after after_pop
