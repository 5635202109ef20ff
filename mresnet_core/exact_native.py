"""The exact kernels in C (``exact_kernels.c``), called via ctypes.

``exact.ExactKernels`` uses them on the CPU where they apply (float32/float64 residuals,
the 31-bit buffer state, contiguous tensors): the same bits as the torch kernels in
``exact.py``, several times faster than torch.compile's code on CPUs without AVX-512,
no per-shape compilation and no per-call guards.

Where the library comes from (``library_info()`` says which was loaded):

* installed: ``pip install .`` or ``pip install -e .`` builds ``libexact_kernels.so``
  next to this file (``setup.py``). One build serves every CPU: the kernels are compiled
  for several instruction sets and the library picks the best the CPU has when it is
  loaded. It links the OpenMP runtime by name (``libgomp.so.1``), which is torch's own
  once torch is imported, so torch and the kernels share one thread pool; it is used only
  if that holds and it was built from this ``exact_kernels.c``;
* else it is built here, once, into a per-user cache (``cache_dir()``) that is checked
  before anything in it is loaded (``private_dir``: a folder of the current user that no
  one else can write, all the way up), under a file lock, linked against the OpenMP
  runtime torch has loaded. A cached library that does not load or is not this build is
  rebuilt once.

Otherwise ``library()`` is None, ``build_error()`` says why, and ``exact`` uses the torch
kernels (with one warning per reason).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import re
import shutil
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import NOT_REPLAYABLE, ReconstructionError

try:
    import fcntl
except ImportError:  # Windows: no run-time builds (library() is for Linux)
    fcntl = None

SOURCE = Path(__file__).with_name("exact_kernels.c")
#: The library ``setup.py`` builds into the package.
INSTALLED_LIBRARY = Path(__file__).with_name("libexact_kernels.so")
VERSION = 8  # exact_kernels_version() of a library built from SOURCE
#: Compiler flags of every build (setup.py has the same list; a test checks it). Never
#: -ffast-math; -ffp-contract=off: a fused multiply-add would round differently.
CFLAGS = ["-O3", "-std=c11", "-fPIC", "-fno-trapping-math", "-ffp-contract=off"]
_TYPES = {torch.float32: "f32", torch.float64: "f64"}


def source_key(source: bytes, flags: list) -> str:
    """What a build is made of (source and flags), as the library reports it
    (``exact_kernels_key()``); setup.py computes it the same way."""
    return hashlib.sha256(source + b"\0" + " ".join(flags).encode()).hexdigest()[:16]


@dataclass
class LibraryInfo:
    """The loaded library: its file, 'installed' or 'cache', whether this process built
    it, the instruction set its kernels use and whether they run on OpenMP threads."""

    path: str
    origin: str
    built: bool
    isa: str
    openmp: bool


class _State:
    reason: str | None = None  # why library() is None (None: it is not, or was not asked)
    info: LibraryInfo | None = None


def build_error() -> str | None:
    """Why the C kernels are not available, as of the last ``library()`` call (None when
    they are, or were never asked for)."""
    return _State.reason


def library_info() -> LibraryInfo | None:
    """Which library ``library()`` loaded (None if none)."""
    return _State.info


class UnsafeCacheError(RuntimeError):
    """The kernel cache (or a folder above it, or a file in it) could be changed by
    another user: nothing in it is loaded."""


def cache_dir() -> Path:
    """Where run-time builds go: $MRESNET_KERNEL_CACHE, else $XDG_CACHE_HOME/mresnet_core,
    else ~/.cache/mresnet_core (checked by ``private_dir`` before use)."""
    env = os.environ.get("MRESNET_KERNEL_CACHE")
    if env:
        return Path(env).absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"  # relative: ignored (XDG spec)
    return base / "mresnet_core"


def _unsafe(path: str, st: os.stat_result, what: str) -> str | None:
    """Why another user could change ``path`` (None if no one but us, or root, can)."""
    uid = os.getuid()
    if st.st_uid not in (uid, 0):
        return f"{what} {path} is owned by uid {st.st_uid}, not by you (uid {uid})"
    if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        return f"{what} {path} is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing folders above it) 0700 if needed, and check that only
    the current user can change it: the folder is not a symlink, is ours and not group/
    world-writable, and every folder above it (as written and as resolved) is ours or
    root's and not writable by others (unless sticky, as /tmp). Raises UnsafeCacheError."""
    path = Path(os.path.abspath(path))
    for folder in [*reversed(path.parents), path]:
        if not os.path.lexists(folder):
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
                os.chmod(folder, 0o700)  # whatever the umask
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeCacheError(f"the kernel cache {path} is a symlink or not a folder")
    if st.st_uid != os.getuid():
        raise UnsafeCacheError(f"the kernel cache {path} is owned by uid {st.st_uid}, not by you "
                               f"(uid {os.getuid()})")
    if st.st_mode & 0o022:
        raise UnsafeCacheError(f"the kernel cache {path} is writable by others "
                               f"(mode {stat.S_IMODE(st.st_mode):o}); remove it or use another "
                               "$MRESNET_KERNEL_CACHE")
    real = Path(os.path.realpath(path))
    for folder in {*path.parents, *real.parents}:
        why = _unsafe(str(folder), os.stat(folder), "the folder")
        if why:
            raise UnsafeCacheError(f"{why}, above the kernel cache {path}")
    return path


def _check_library_file(path: Path) -> None:
    """A cached library may be loaded: a regular file (not a symlink) of ours that no one
    else can write. Raises UnsafeCacheError."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeCacheError(f"the cached library {path} is a symlink or not a file")
    if st.st_uid != os.getuid():
        raise UnsafeCacheError(f"the cached library {path} is owned by uid {st.st_uid}, not by you")
    if st.st_mode & 0o022:
        raise UnsafeCacheError(f"the cached library {path} is writable by others "
                               f"(mode {stat.S_IMODE(st.st_mode):o})")


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on ``folder`` (a lock file in it), so that processes started
    together build once: the others wait, then load what the first one built."""
    if fcntl is None:
        raise RuntimeError("no file locks (fcntl) on this system")
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def find_compiler() -> str | None:
    """The C compiler for run-time builds: $CC, else cc, gcc or clang on the PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


OPENMP_LIBRARY = re.compile(r"(^|/)lib(gomp|iomp5|omp)[-\w]*\.so[.\d]*$")


def loaded_openmp_runtimes() -> list:
    """Paths of the OpenMP runtimes loaded in this process (Linux; else empty)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    paths = {line.split()[-1] for line in maps.splitlines() if line.split()}
    return sorted(p for p in paths if OPENMP_LIBRARY.search(p) and os.path.exists(p))


def torch_openmp_runtime() -> str | None:
    """The OpenMP runtime torch uses (one in its own lib folder first: other packages,
    scikit-learn for one, may have loaded theirs too)."""
    runtimes = loaded_openmp_runtimes()
    torch_lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
    own = [p for p in runtimes if os.path.realpath(os.path.dirname(p)) == torch_lib]
    return (own or runtimes or [None])[0]


def needed_libraries(path: Path) -> list:
    """The libraries a 64-bit ELF file links by name (DT_NEEDED); empty for anything else."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return []
    e = "<" if data[5] == 1 else ">"
    (shoff,), (shentsize, shnum) = struct.unpack_from(e + "Q", data, 0x28), struct.unpack_from(e + "HH", data, 0x3A)
    sections = [struct.unpack_from(e + "IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for _, kind, _, _, offset, size, link, *_ in sections:
        if kind != 6:  # SHT_DYNAMIC
            continue
        strings = sections[link][4]
        for entry in range(offset, offset + size, 16):
            tag, value = struct.unpack_from(e + "qQ", data, entry)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                start = strings + value
                names.append(data[start:data.index(b"\0", start)].decode())
    return names


def _symbol_address(path_or_name: str, symbol: str) -> int | None:
    """Where ``symbol`` of an already loaded library is (None if it is not loaded)."""
    try:
        return ctypes.cast(getattr(ctypes.CDLL(path_or_name, mode=os.RTLD_NOLOAD), symbol), ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


def foreign_openmp_runtime(path: Path) -> str | None:
    """Why loading ``path`` would bring an OpenMP runtime other than torch's (a second
    thread pool), or None: every runtime it links by name is torch's, already loaded."""
    ours = torch_openmp_runtime()
    if ours is None:
        return None  # torch has no OpenMP runtime: nothing to share
    for name in needed_libraries(path):
        if OPENMP_LIBRARY.search(name):
            theirs = _symbol_address(name, "omp_get_max_threads")
            if theirs is None or theirs != _symbol_address(ours, "omp_get_max_threads"):
                return f"{path} links {name}, which is not torch's OpenMP runtime ({ours})"
    return None


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    for t in _TYPES.values():
        fs = getattr(lib, f"forward_step_{t}")
        fs.argtypes, fs.restype = [p, p, p, p, p, p, i64, i64, i32, p, p], ctypes.c_double
        getattr(lib, f"undo_position_{t}").argtypes = [p, p, p, i64, i32, p]
        uv = getattr(lib, f"undo_velocity_{t}")
        uv.argtypes, uv.restype = [p, p, p, p, p, p, i64, i64, i32, p, p], i32
        st = getattr(lib, f"stack_start_{t}")
        st.argtypes, st.restype = [p, p, i64, i32, p], ctypes.c_double
        getattr(lib, f"adjoint_update_{t}").argtypes = [p, p, p, p, i64, ctypes.c_double, ctypes.c_double,
                                                         i32, i32, i32]
        tf = getattr(lib, f"to_fixed_{t}")
        tf.argtypes, tf.restype = [p, p, i64, i32], ctypes.c_double
        getattr(lib, f"to_float_{t}").argtypes = [p, p, i64, i32]
    lib.fingerprint_i64.argtypes = [p, i64, i32, p]
    lib.count_below.argtypes, lib.count_below.restype = [p, i64, i32, i32], i64
    for name in ("spill_words", "refill_words"):
        getattr(lib, name).argtypes, getattr(lib, name).restype = [p, i64, i32, p], i32
    for name in ("exact_kernels_key", "exact_kernels_isa", "exact_kernels_isas"):
        getattr(lib, name).restype = ctypes.c_char_p
    lib.exact_kernels_use_isa.argtypes = [ctypes.c_char_p]


def _unload(lib: ctypes.CDLL) -> None:
    """dlclose a library that failed its checks, so that a rebuilt file of the same path
    is really loaded (dlopen would return the old one by its name)."""
    dlclose = ctypes.CDLL(None).dlclose
    dlclose.argtypes = [ctypes.c_void_p]
    dlclose(lib._handle)


def _open(path: Path, key: str) -> ctypes.CDLL:
    """Load ``path`` and check it is a build of SOURCE (interface and key); raises OSError
    (does not load) or RuntimeError (another build)."""
    lib = ctypes.CDLL(str(path))
    try:
        version = lib.exact_kernels_version()
        if version != VERSION:
            raise RuntimeError(f"{path} is version {version}, expected {VERSION}")
        _declare(lib)
        built_from = lib.exact_kernels_key().decode()
        if built_from != key:
            raise RuntimeError(f"{path} was built from another exact_kernels.c or other flags "
                               f"(key {built_from or 'none'}, expected {key})")
    except AttributeError as err:  # a symbol missing: not a build of exact_kernels.c
        _unload(lib)
        raise RuntimeError(f"{path} is not a build of exact_kernels.c: {err}") from None
    except RuntimeError:
        _unload(lib)
        raise
    return lib


def _installed(key: str, reasons: list) -> ctypes.CDLL | None:
    """The library setup.py built, if it is there, is this build and shares torch's
    OpenMP runtime."""
    path = INSTALLED_LIBRARY
    if not path.exists():
        reasons.append(f"no installed library {path} (`pip install .` or `pip install -e .` builds it)")
        return None
    foreign = foreign_openmp_runtime(path)
    if foreign:
        reasons.append(f"the installed library is not used: {foreign}")
        return None
    try:
        lib = _open(path, key)
    except (OSError, RuntimeError) as err:
        reasons.append(f"the installed library is not used: {err}")
        return None
    _State.info = LibraryInfo(str(path), "installed", False, lib.exact_kernels_isa().decode(),
                              bool(lib.exact_kernels_openmp()))
    return lib


def _run(cmd: list) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {(done.stderr or done.stdout).strip()[-500:]}")


def build(cc: str, runtime: str | None, key: str, target: Path) -> None:
    """Compile SOURCE into ``target`` (0700, atomically), with OpenMP linked against
    ``runtime`` (torch's: one thread pool) or, if None, without OpenMP."""
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:  # 0700
        obj, lib = os.path.join(tmp, "exact_kernels.o"), os.path.join(tmp, target.name)
        omp = ["-fopenmp"] if runtime else []
        _run([cc, *CFLAGS, *omp, f'-DEXACT_KERNELS_KEY="{key}"', "-c", str(SOURCE), "-o", obj])
        _run([cc, "-shared", obj, *([runtime] if runtime else []), "-o", lib])
        os.chmod(lib, 0o700)  # whatever the umask
        os.replace(lib, target)


def _cached(key: str, reasons: list) -> ctypes.CDLL | None:
    """The library built in ``cache_dir()`` (building it now if needed; once more if
    the cached file does not load or is another build)."""
    cc = find_compiler()
    if cc is None:
        reasons.append("no C compiler found to build them ($CC, cc, gcc or clang)")
        return None
    runtime = torch_openmp_runtime()
    try:
        folder = private_dir(cache_dir())
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
        name = hashlib.sha256("\0".join([key, cc, version, str(runtime)]).encode()).hexdigest()[:16]
        target = folder / f"exact_kernels_{name}.so"
        built = False
        with _locked(folder):
            lib = None
            if os.path.lexists(target):
                _check_library_file(target)
                try:
                    lib = _open(target, key)
                except (OSError, RuntimeError):
                    lib = None  # corrupt or another build: rebuilt below
            if lib is None:
                build(cc, runtime, key, target)
                built = True
                _check_library_file(target)
                lib = _open(target, key)
    except UnsafeCacheError as err:
        reasons.append(f"the kernel cache is not used: {err}")
        return None
    except Exception as err:  # noqa: BLE001 - reported by build_error(), torch kernels used
        reasons.append(f"building the C kernels in the cache failed: {type(err).__name__}: {err}")
        return None
    _State.info = LibraryInfo(str(target), "cache", built, lib.exact_kernels_isa().decode(),
                              bool(lib.exact_kernels_openmp()))
    return lib


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL | None:
    """The loaded kernels: the installed library, else one built in the cache; None if
    neither can be had (``build_error()`` says why)."""
    _State.reason = _State.info = None
    if platform.system() != "Linux" and not os.environ.get("MRESNET_KERNEL_ANY_OS"):
        _State.reason = "the C kernels are built on Linux only (set MRESNET_KERNEL_ANY_OS=1 to try)"
        return None
    reasons: list = []
    try:
        key = source_key(SOURCE.read_bytes(), CFLAGS)
    except OSError as err:
        _State.reason = f"the kernels' source is missing: {err}"
        return None
    lib = _installed(key, reasons)
    if lib is None:
        lib = _cached(key, reasons)
    if lib is None:
        _State.reason = "; ".join(reasons)
    return lib


def available() -> bool:
    """Whether the C kernels can be used in this process."""
    return library() is not None


def instruction_sets() -> list:
    """The kernel variants this CPU can run, best first (``use_instruction_set``)."""
    lib = library()
    return lib.exact_kernels_isas().decode().split() if lib is not None else []


def use_instruction_set(name: str) -> bool:
    """Run the kernels' ``name`` variant from now on (for tests and benchmarks: every
    variant gives the same bits); False, and nothing changes, if the CPU cannot."""
    lib = library()
    if lib is None or not lib.exact_kernels_use_isa(name.encode()):
        return False
    if _State.info is not None:
        _State.info.isa = name
    return True


def to_fixed(t: torch.Tensor):
    """(int64 fixed point of float ``t``, max |t|) by the C kernel in one pass, or None
    where it does not apply (another device or dtype, no library): ``exact.to_fixed``."""
    lib = library() if t.device.type == "cpu" and t.dtype in _TYPES else None
    if lib is None:
        return None
    t = t.detach().contiguous()
    x = torch.empty(t.shape, dtype=torch.int64)
    peak = getattr(lib, f"to_fixed_{_TYPES[t.dtype]}")(t.data_ptr(), x.data_ptr(), t.numel(),
                                                        torch.get_num_threads())
    return x, peak


def to_float(x: torch.Tensor, dtype: torch.dtype):
    """Float ``dtype`` of int64 fixed point ``x`` by the C kernel, or None where it does not
    apply: ``exact.to_float``."""
    lib = (library() if x.device.type == "cpu" and dtype in _TYPES and x.dtype is torch.int64
           and x.is_contiguous() else None)
    if lib is None:
        return None
    out = torch.empty(x.shape, dtype=dtype)
    getattr(lib, f"to_float_{_TYPES[dtype]}")(x.data_ptr(), out.data_ptr(), x.numel(), torch.get_num_threads())
    return out


def fingerprint(x: torch.Tensor):
    """[wrapping sum, xor] of a contiguous int64 CPU tensor in one threaded pass, or None
    where the C kernels do not apply (``exact_walk.fingerprint``)."""
    lib = (library() if x.device.type == "cpu" and x.dtype is torch.int64 and x.is_contiguous()
           else None)
    if lib is None:
        return None
    out = (ctypes.c_int64 * 2)()
    lib.fingerprint_i64(x.data_ptr(), x.numel(), torch.get_num_threads(), ctypes.addressof(out))
    return [out[0], out[1]]


def stack_start(t: torch.Tensor):
    """(float(to_fixed(t)), max |t|, fingerprint of to_fixed(t), t contiguous) in one pass
    by the C kernel, for a stack starting from v0 = 0 whose first layer's forward step
    takes t itself as x0 (``NativeBound.push``: the int64 x is never stored on its own);
    None where it does not apply (another device or dtype, no library)."""
    lib = library() if t.device.type == "cpu" and t.dtype in _TYPES else None
    if lib is None:
        return None
    t = t.detach().contiguous()
    xf = torch.empty(t.shape, dtype=t.dtype)
    digest = (ctypes.c_int64 * 2)()
    peak = getattr(lib, f"stack_start_{_TYPES[t.dtype]}")(t.data_ptr(), xf.data_ptr(), t.numel(),
                                                           torch.get_num_threads(), ctypes.addressof(digest))
    return xf, peak, [digest[0], digest[1]], t


def _plain(t: torch.Tensor | None, like: torch.Tensor) -> bool:
    """Whether ``t`` is None or a contiguous CPU tensor of ``like``'s dtype and size."""
    return t is None or (t.device.type == "cpu" and t.dtype is like.dtype and t.is_contiguous()
                         and t.numel() == like.numel())


def adjoint_update(a_out, a, g, c, alpha: float | None, w: float, lerp: bool) -> bool:
    """One layer of ``adjoint.MomentumAdjoint`` in one pass: a_out = a + g + alpha c (a, g
    or alpha None: left out), then c <- lerp(c, a_out, w) in place if ``lerp``, rounded
    as torch's add and lerp round them (the same bits where both use fused multiply-adds:
    the AVX2 and AVX-512 variants). a_out may be a or g, not c; g may not share c's
    memory. False (nothing done) where the C kernel does not apply: another device or
    dtype, a layout, no library."""
    lib = library() if c.device.type == "cpu" and c.dtype in _TYPES else None
    if lib is None or not all(_plain(t, c) for t in (a_out, a, g, c)):
        return False
    fn = getattr(lib, f"adjoint_update_{_TYPES[c.dtype]}")
    fn(a_out.data_ptr(), None if a is None else a.data_ptr(), None if g is None else g.data_ptr(), c.data_ptr(),
       c.numel(), 0.0 if alpha is None else float(alpha), float(w), alpha is not None,
       0 if not lerp else (1 if abs(w) < 0.5 else 2), torch.get_num_threads())
    return True


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
            x.data_ptr(), v.data_ptr(), state.data_ptr(), f.data_ptr(), None, xf.data_ptr(), x.numel(),
            self.n, torch.get_num_threads(), ctypes.addressof(self._max), None)
        return xf, peak, self._max.value

    def undo_position(self, x, v, dtype):
        """In place: x <- x - v; returns float x."""
        xf = torch.empty(x.shape, dtype=dtype)
        getattr(self.lib, f"undo_position_{_TYPES[dtype]}")(
            x.data_ptr(), v.data_ptr(), xf.data_ptr(), x.numel(), torch.get_num_threads(), None)
        return xf

    def undo_velocity(self, v, state, f) -> int:
        """In place: the inverse of forward_step's velocity update, given f(x_n); returns
        the smallest buffer state."""
        f = self._like(f, v)
        return getattr(self.lib, f"undo_velocity_{_TYPES[f.dtype]}")(
            v.data_ptr(), state.data_ptr(), f.data_ptr(), None, None, None, v.numel(), self.n,
            torch.get_num_threads(), None, None)

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
    C call. The kernels return the largest (forward) or smallest and largest (inverse)
    buffer state as they go, so the buffer's bounds are exact and spilling or refilling
    reads the state only when a word moves (what ``exact.BoundKernels`` leaves to the
    buffer). ``start``: the float x0 of a stack that starts from v0 = 0 and an empty
    buffer whose x, v and state are not written yet (``exact.ExactKernels.start``): the
    first push takes them from it.
    """

    def __init__(self, kernels: NativeKernels, x, v, buffer, dtype: torch.dtype, start=None):
        self.kernels, self.x, self.v, self.buffer, self.dtype = kernels, x, v, buffer, dtype
        self.shape, self.count, self.n = x.shape, x.numel(), kernels.n
        self.pointers = (x.data_ptr(), v.data_ptr(), buffer.state.data_ptr())
        name = _TYPES[dtype]
        lib = kernels.lib
        self._forward = getattr(lib, f"forward_step_{name}")
        self._position = getattr(lib, f"undo_position_{name}")
        self._velocity = getattr(lib, f"undo_velocity_{name}")
        self.limit = buffer.spill_limit(self.n)
        self._max = ctypes.c_int32(0)
        self._max_address = ctypes.addressof(self._max)
        self.start = start
        # fingerprints of x and v taken by the last undo_position and pop that asked
        self._digest_x, self._digest_v = (ctypes.c_int64 * 2)(), (ctypes.c_int64 * 2)()
        self._digested = [False, False]

    def _operand(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype is not self.dtype or t.shape != self.shape or t.device.type != "cpu":
            raise ValueError(f"a residual of {t.dtype} {tuple(t.shape)} on {t.device} for an exact "
                             f"state of {tuple(self.shape)} and {self.dtype}")
        return t.contiguous()

    def push(self, out, base=None, reuse=False):
        """Spill a word if a state may overflow, then one layer forward with f = out - base
        (``base`` None: f = out): returns (float x, peak). ``reuse``: out is the caller's
        alone and not needed afterwards, so float x is written over it (no allocation)."""
        contiguous = self._operand(out)
        base_ptr = self._operand(base).data_ptr() if base is not None else None
        buffer = self.buffer
        start, self.start = self.start, None
        if start is None and buffer.upper >= self.limit:
            word, buffer.upper = self.kernels.spill(buffer.state, self.limit)
            if word is not None:
                buffer.words.append(word)
        xf = contiguous if reuse or contiguous is not out else torch.empty(self.shape, dtype=self.dtype)
        x, v, state = self.pointers
        peak = self._forward(x, v, state, contiguous.data_ptr(), base_ptr, xf.data_ptr(), self.count, self.n,
                             torch.get_num_threads(), self._max_address,
                             None if start is None else start.data_ptr())
        buffer.upper, buffer.lower = self._max.value, -1  # the smallest unknown, as after before_push
        self._digested = [False, False]
        return xf, peak

    def _float_x(self, spare):
        """``spare`` (a tensor of the caller's that nothing else holds) where it can take
        float x, else a new tensor."""
        if (spare is not None and spare.dtype is self.dtype and spare.shape == self.shape
                and spare.device.type == "cpu" and spare.is_contiguous()):
            return spare
        return torch.empty(self.shape, dtype=self.dtype)

    def undo_position(self, spare=None, digest=False):
        """x <- x - v; returns float x, written into ``spare`` (a tensor of the caller's
        that nothing else holds) where given and of the right kind. ``digest``: also
        take the fingerprint of the new x (``digests``)."""
        xf = self._float_x(spare)
        self._position(self.pointers[0], self.pointers[1], xf.data_ptr(), self.count, torch.get_num_threads(),
                       ctypes.addressof(self._digest_x) if digest else None)
        self._digested = [digest, False]
        return xf

    def pop(self, out, base=None, release=None, digest=False, then_position=False, spare=None):
        """The velocity back, given f(x_n) = out - base (``base`` None: out), then a word
        refilled if a state fell below the buffer's low bound; ``release`` as in
        ``exact.BoundKernels.pop``. ``digest``: also take the fingerprint of the new v.
        ``then_position``: the same pass goes on to the layer below's ``undo_position``
        (v is read once for both) and returns its float x, written into ``spare`` as
        there (out itself may be the spare); ``digest`` then fingerprints that x."""
        out = self._operand(out)
        base_ptr = self._operand(base).data_ptr() if base is not None else None
        xf = self._float_x(spare) if then_position else None
        buffer = self.buffer
        smallest = self._velocity(self.pointers[1], self.pointers[2], out.data_ptr(), base_ptr,
                                  self.pointers[0] if then_position else None,
                                  xf.data_ptr() if then_position else None, self.count, self.n,
                                  torch.get_num_threads(), self._max_address,
                                  ctypes.addressof(self._digest_x if then_position else self._digest_v)
                                  if digest else None)
        self._digested = [digest, False] if then_position else [self._digested[0], digest]
        out = release() if release is not None else None
        low, largest = buffer.low, self._max.value
        if smallest < low:
            total = self.kernels.refill_count(buffer.state, low)
            if not buffer.words or buffer.words[-1].numel() != total:
                raise ReconstructionError("information buffer out of step: " + NOT_REPLAYABLE)
            smallest = self.kernels.refill(buffer.state, low, buffer.words.pop())
            largest = 1 << 62  # unknown: refilled states grew
        buffer.lower, buffer.upper = smallest, largest
        return xf

    def digests(self):
        """[fingerprint of x, fingerprint of v] (``exact_walk.fingerprint``'s) as the last
        ``undo_position`` and ``pop`` left them, if both were asked for in a row; else None."""
        if not all(self._digested):
            return None
        return [[self._digest_x[0], self._digest_x[1]], [self._digest_v[0], self._digest_v[1]]]
