"""Exact fixed-point arithmetic for reversible momentum updates.

The memory-free backward pass rebuilds activations by running the momentum update
backwards. Dividing by gamma in floating point amplifies rounding error by 1/gamma per
layer, so instead (Maclaurin, Duvenaud & Adams 2015, Algorithm 1) we:

* hold x and v as int64 fixed-point numbers with ``FRACTION_BITS`` fractional bits, so
  ``x + v`` and ``x - v`` are exact;
* write gamma = n / 2**16 and multiply v by it exactly, pushing the information the
  rounding would destroy into a per-element *information buffer*;
* stream that buffer in bytes (the rANS construction): each element keeps a 31-bit state
  in ``[2**23, 2**31)`` (an int32); when the state would overflow, its low 8 bits are
  moved to a new word (uint8). The buffer never overflows and costs ``log2(1/gamma)``
  bits per element per layer, plus one 32-bit state per element. (For gamma < 2**-8,
  n < 256, it is a 62-bit state in an int64 and 32-bit words.)

Precision and range (the documented trade-off): values are multiples of 2**-40
(about 1e-12) and must stay below 2**22 (about 4.2e6) in magnitude; anything larger is a
:class:`FixedPointRangeError`, never a silent wrap. Each exact multiplication by gamma
is off from the real product by less than one unit of the last place (2**-40), far below
float32 rounding of values of order 1e-5 and larger.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from . import exact_native
from .errors import NOT_REPLAYABLE, FixedPointRangeError, ReconstructionError  # also exact.<name>

FRACTION_BITS = 40
SCALE = float(2**FRACTION_BITS)
INV_SCALE = float(2.0**-FRACTION_BITS)
GAMMA_BITS = 16
GAMMA_DENOMINATOR = 1 << GAMMA_BITS
LOW_MASK = GAMMA_DENOMINATOR - 1
#: Largest magnitude a value may reach; twice this still fits int64 with FRACTION_BITS.
VALUE_LIMIT = float(2 ** (62 - FRACTION_BITS))
# The information buffer's layout (see InformationBuffer): a state of STATE_BITS bits in
# [STATE_LOW, 2**STATE_BITS) per element, spilling WORD_BITS-bit words, STATE_LOW =
# 2**(STATE_BITS - WORD_BITS). Exactness needs STATE_BITS - WORD_BITS >= GAMMA_BITS and
# spilled states >= n (so the next push lands at or above STATE_LOW again) and below the
# spill limit n * 2**(STATE_BITS - 16) (one spill per layer): 31/8 bits (int32 state,
# uint8 words) meets this for every n >= 2**8. Its cost per push is log2(1/gamma) up to
# a relative (1 - gamma) n / state <= 2**-7: spilled states stay >= n 2**7 (a 15-bit
# word would leave states near n, a coding loss of several percent for gamma near 1).
# n < 2**8 (gamma < 0.0039) keeps 62/32 bits (WIDE_LAYOUT).
STATE_BITS = 31
WORD_BITS = 8
NARROW_MIN_N = 1 << (STATE_BITS - WORD_BITS - 15)  # 256: one spill of 8 bits per layer suffices
WORD_MASK = (1 << WORD_BITS) - 1
STATE_LOW = 1 << (STATE_BITS - WORD_BITS)  # buffer states live in [STATE_LOW, 2**31)
WIDE_LAYOUT = (62, 32)  # (state bits, word bits) for n < NARROW_MIN_N
_WORD_DTYPES = {WORD_BITS: torch.uint8, WIDE_LAYOUT[1]: torch.int32}


def buffer_layout(n: int) -> tuple:
    """(state bits, word bits) of the information buffer for gamma = n / 2**16."""
    return (STATE_BITS, WORD_BITS) if n >= NARROW_MIN_N else WIDE_LAYOUT


SPILL_CHUNK = 1 << 14  # elements spilled/refilled at a time (bounds the scratch memory)


def gamma_numerator(gamma: float) -> int:
    """Numerator n of the fraction n / 2**16 closest to ``gamma``: the one check of gamma
    that every entry point uses (TypeError for a non-number, ValueError outside [0, 1])."""
    if isinstance(gamma, torch.Tensor):
        gamma = float(gamma)
    if not isinstance(gamma, (int, float, Fraction)) or isinstance(gamma, bool):
        raise TypeError(f"gamma must be a number in [0, 1], got {type(gamma).__name__}")
    if not (0.0 <= float(gamma) <= 1.0) or math.isnan(float(gamma)):
        raise ValueError(f"gamma must be a number in [0, 1] (0: a plain ResNet, 1: no forgetting; "
                         f"the paper uses 0.9), got {gamma}")
    return int(round(float(gamma) * GAMMA_DENOMINATOR))


def rounded_gamma(gamma: float) -> float:
    """The value of gamma that both the plain and the exact paths actually use."""
    return gamma_numerator(gamma) / GAMMA_DENOMINATOR


def check_invertible(n: int) -> None:
    if n == 0:
        raise ValueError(
            "gamma rounds to 0 (a plain ResNet), which cannot be inverted: the memory-free "
            f"path needs gamma >= {1 / GAMMA_DENOMINATOR:.2e}. Use memory_efficient=False "
            "for a ResNet, or a positive gamma."
        )


# --------------------------------------------------------------------------------------
# Element-wise kernels, each written once in plain torch. `ExactKernels` runs them either
# as they are (eager) or through torch.compile (one fused loop each); both give the same
# bits, because only integer operations and correctly rounded conversions are involved.
# --------------------------------------------------------------------------------------

def _to_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (x.to(torch.float64) * INV_SCALE).to(dtype)


def floor_divmod_near(a, n: int, nonnegative: bool = False):
    """Exact floor division and remainder of int64 ``a`` by 0 < n <= 2**16, |a| < 2**50.

    Integer division does not vectorise; a float64 product does. (a + 1/2) / n lies at
    least 1/(2n) away from an integer, and for |a| < 2**50 the float64 product (a + 1/2)
    * fl(1/n) is within 2**50 / n * 2**-52 = 1/(4n) of it, so its floor is exact: no
    correction step. ``nonnegative``: a >= 0, where the conversion's truncation is the floor.
    """
    t = (a.to(torch.float64) + 0.5) * (1.0 / n)
    q = (t if nonnegative else torch.floor(t)).to(torch.int64)
    return q, a - q * n


def floor_divmod(a, n: int):
    """Exact floor division and remainder of int64 ``a`` (|a| < 2**62) by 0 < n <= 2**16.

    a = A 2**16 + B with A = a >> 16 (|A| < 2**46) and 0 <= B < 2**16; A = q1 n + r1,
    then r1 2**16 + B (< n 2**16 <= 2**32) = q2 n + r2: a = (q1 2**16 + q2) n + r2.
    Two passes of `floor_divmod_near`, both in its exact range.
    """
    q1, r1 = floor_divmod_near(a >> GAMMA_BITS, n)
    q2, r = floor_divmod_near((r1 << GAMMA_BITS) | (a & LOW_MASK), n, nonnegative=True)
    return (q1 << GAMMA_BITS) | q2, r


def _increment(f, n: int):
    """Fixed-point value of (1 - gamma) f, truncated toward 0: (1 - gamma) 2**40 is the
    integer (2**16 - n) 2**24, so the scale is exact."""
    return (f.to(torch.float64) * ((GAMMA_DENOMINATOR - n) << (FRACTION_BITS - GAMMA_BITS))).to(torch.int64)


# Exact multiplication of v by gamma = n / d, d = 2**16 (Maclaurin et al. 2015, Alg. 1).
#
# Split v = d * hi + lo with hi = v >> 16 (floor, also for negative v) and lo = v & (d - 1)
# in [0, d). The true product v * n / d = hi * n + lo * n / d has the fraction lo * n / d,
# which rounding would destroy. To keep the map a bijection of (v, buffer):
#
#   forward ("push"):  pop s = state mod n  (state <- state div n),
#                      z = lo * n + s       (0 <= z < n d),
#                      v' = hi * n + (z div d)        (= floor((v n + s) / d)),
#                      push z mod d:  state <- state * d + (z mod d).
#   inverse ("pop"):   hi, zh = divmod(v', n)          (zh = z div d < n),
#                      z = zh * d + (state mod d),  state <- state div d,
#                      lo, s = divmod(z, n),  push s back:  state <- state * n + s,
#                      v = hi * d + lo.
#
# Each step is exact integer arithmetic, so the inverse returns v and the state bit for
# bit. v' differs from the real product v n / d by less than one unit of the last place.
# The state grows by a factor d / n per layer: log2(1 / gamma) bits (InformationBuffer
# spills full 32-bit words out of it). The increment (1 - gamma) f(x_n) is added after the
# multiplication and subtracted before the inverse, with f recomputed bit for bit.

def torch_forward_step(x, v, state, f, n: int):
    """One layer forward, in place: v <- gamma v + (1-gamma) f, x <- x + v (see above).

    Returns the float value of the new x (the next layer's input) and the largest
    magnitude seen (for the range check).
    """
    popped_state, s = (floor_divmod_near(state, n, nonnegative=True) if state.dtype == torch.int32
                       else floor_divmod(state, n))  # int32: a 31-bit state
    z = (v & LOW_MASK) * n + s
    v.copy_((v >> GAMMA_BITS) * n + (z >> GAMMA_BITS) + _increment(f, n))
    state.copy_((popped_state << GAMMA_BITS) | (z & LOW_MASK))
    x.add_(v)
    xf = _to_float(x, f.dtype)
    peak = torch.maximum(xf.abs().amax(), f.abs().amax()).to(torch.float64)
    return xf, peak


def torch_undo_position(x, v, dtype: torch.dtype):
    """In place x_n = x_{n+1} - v_{n+1}, exactly; returns its float value for f."""
    x.sub_(v)
    return _to_float(x, dtype)


def torch_undo_velocity(v, state, f, n: int):
    """In place inverse of the velocity update of `torch_forward_step`, given f(x_n) (see above)."""
    hi, zh = floor_divmod(v - _increment(f, n), n)
    lo, s = floor_divmod_near((zh << GAMMA_BITS) | (state & LOW_MASK), n, nonnegative=True)  # 0 <= z < n 2**16
    state.copy_((state >> GAMMA_BITS) * n + s)
    v.copy_((hi << GAMMA_BITS) | lo)


_EAGER = {"forward_step": torch_forward_step, "undo_position": torch_undo_position,
          "undo_velocity": torch_undo_velocity}
#: Elements per eager kernel call (CPU, CUDA): eager torch makes several full-size int64 and
#: float64 temporaries per kernel; running it on slices of this size bounds them (same bits).
EAGER_CHUNK = {"cpu": 1 << 16, "cuda": 1 << 22}
_UPDATED_IN_PLACE = {"forward_step": 3, "undo_position": 2, "undo_velocity": 2}


def _eager_in_chunks(name: str, *args):
    """Run eager kernel ``name`` on flat slices of its tensors, EAGER_CHUNK elements at a
    time: the in-place updates of x, v and the buffer state land in the full tensors, the
    float results are concatenated, the peak is the largest of the slices' peaks."""
    updated = args[:_UPDATED_IN_PLACE[name]]  # x, v, buffer state: must be views of themselves
    first = updated[0]
    chunk = EAGER_CHUNK.get(first.device.type, 1 << 20)
    if first.numel() <= chunk or not all(t.is_contiguous() for t in updated):
        return _EAGER[name](*args)
    flat = [a.reshape(-1) if isinstance(a, torch.Tensor) else a for a in args]
    pieces = [_EAGER[name](*[a[start:start + chunk] if isinstance(a, torch.Tensor) else a for a in flat])
              for start in range(0, first.numel(), chunk)]
    if name == "forward_step":
        return (torch.cat([p[0] for p in pieces]).view(first.shape),
                torch.stack([p[1] for p in pieces]).amax())
    if name == "undo_position":
        return torch.cat(pieces).view(first.shape)
    return None
#: Below this many elements the fused kernels are not worth their compile time.
COMPILE_MIN_NUMEL = 1 << 15


def backend_setting() -> str:
    """'auto' (default), 'eager', 'compile' or 'native', from the MRESNET_EXACT_BACKEND variable."""
    value = os.environ.get("MRESNET_EXACT_BACKEND", "auto").strip().lower()
    if value not in BACKENDS:
        raise ValueError(f"MRESNET_EXACT_BACKEND must be one of {', '.join(BACKENDS)}, got {value!r}")
    return value


BACKENDS = ("auto", "eager", "compile", "native")


class _Compiled:
    """The three kernels compiled once for every gamma (n stays a runtime value: the
    division by n uses a float reciprocal, nothing is gained by baking it in).
    ``usable`` turns False, for the rest of the process, once compiling has failed."""

    def __init__(self):
        # torch's C++ builder, imported by the first compile, warns once on stderr that a
        # CUDA folder has no CUDA runtime (CPU-only machines): imported here, quietly
        with _logger_level("torch.utils.cpp_extension", logging.ERROR):
            importlib.import_module("torch.utils.cpp_extension")
        self.forward_step = torch.compile(torch_forward_step, dynamic=None)
        self.undo_position = torch.compile(torch_undo_position, dynamic=None)
        self.undo_velocity = torch.compile(torch_undo_velocity, dynamic=None)
        self.usable = True


@contextlib.contextmanager
def _logger_level(name: str, level: int):
    """``name``'s logger at ``level`` inside the block only."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


@functools.lru_cache(maxsize=None)
def _compiled() -> _Compiled:
    return _Compiled()


@functools.lru_cache(maxsize=None)
def warn_native_unavailable(why: str, asked: bool = False) -> None:
    """The one warning, per reason and process, that the C kernels are not used for a CPU
    stack they would take (``asked``: MRESNET_EXACT_BACKEND=native)."""
    first = "MRESNET_EXACT_BACKEND=native, but " if asked else "the C exact kernels are not used: "
    warnings.warn(f"{first}{why}; using the torch kernels (same results, slower)", stacklevel=3)


class ExactKernels:
    """The element-wise steps of the exact momentum update, for gamma = n / 2**16 and
    tensors like ``example``: `forward_step`, `undo_position`, `undo_velocity`.

    ``backend`` (default: the MRESNET_EXACT_BACKEND variable, else 'auto'):

    * 'native': the C kernels (``exact_native.py``) on the CPU, for float32/float64
      residuals and the 31-bit buffer state (gamma >= 2**-8); built at install;
    * 'compile': torch.compile (one fused loop per kernel; compiled per shape);
    * 'eager': plain torch on slices of EAGER_CHUNK elements;
    * 'auto': native where it applies, else compiled on the CPU for tensors of at least
      COMPILE_MIN_NUMEL elements, else eager (and on CUDA: memory-bound kernels already).

    A call the chosen backend cannot take (another dtype, a layout) goes to the next one;
    if compiling fails, eager torch takes over (with a warning). If the C kernels are not
    available, one warning per reason says why: for 'native' at once, for 'auto' when a
    float32/float64 stack they would take is bound (``bind``). Same bits in every case.
    """

    def __init__(self, example: torch.Tensor, n: int, backend: str | None = None):
        setting = backend_setting() if backend is None else backend
        if setting not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {setting!r}")
        cpu = example.device.type == "cpu"
        self.n = n
        self.native = None
        self.native_missing = None  # why the C kernels would apply but are not available
        if setting in ("auto", "native") and cpu and buffer_layout(n)[0] < 32:
            if exact_native.available():  # loads (or builds) the library on first use
                self.native = exact_native.NativeKernels(n)
            else:
                self.native_missing = exact_native.build_error() or "the C kernels are not available"
                if setting == "native":
                    warn_native_unavailable(self.native_missing, asked=True)
        want = setting == "compile" or (setting == "auto" and cpu and example.numel() >= COMPILE_MIN_NUMEL)
        self._compiled = None if want else False  # None: not asked yet (importing the compiler takes seconds)

    @property
    def compiled(self) -> bool:
        """Whether the torch.compile'd kernels run what the C kernels do not take; decided
        when first asked, so that a stack the C kernels take whole never loads the compiler."""
        if self._compiled is None:
            self._compiled = bool(_compiled().usable)
        return self._compiled

    def scratch_free(self, dtype: torch.dtype) -> bool:
        """Whether calls with residuals of ``dtype`` need no eager temporaries (native or compiled)."""
        return (self.native is not None and dtype in exact_native.NativeKernels.DTYPES) or self.compiled

    def _run(self, name: str, *args):
        if self.compiled:
            try:
                return getattr(_compiled(), name)(*args)
            except Exception as err:
                _compiled().usable = False
                self._compiled = False
                warnings.warn(f"compiling the exact kernels failed ({type(err).__name__}: {err}); "
                              "falling back to eager torch (slower, same results)")
        return _eager_in_chunks(name, *args)

    def forward_step(self, x, v, state, f):
        """In place: v <- gamma v + (1 - gamma) f, x <- x + v; returns (float x, peak)."""
        if self.native is not None and self.native.handles(f.dtype, x, v, state):
            return self.native.forward_step(x, v, state, f)[:2]
        return self._run("forward_step", x, v, state, f, self.n)

    def undo_position(self, x, v, dtype):
        """In place: x <- x - v; returns float x."""
        if self.native is not None and self.native.handles(dtype, x, v):
            return self.native.undo_position(x, v, dtype)
        return self._run("undo_position", x, v, dtype)

    def undo_velocity(self, v, state, f):
        """In place: the inverse of forward_step's velocity update, given f(x_n)."""
        if self.native is not None and self.native.handles(f.dtype, v, v, state):
            self.native.undo_velocity(v, state, f)
            return None
        return self._run("undo_velocity", v, state, f, self.n)

    def bind(self, x, v, buffer: "InformationBuffer", dtype: torch.dtype):
        """The three steps with the buffer's bookkeeping on one exact state, for a stack's
        walk over its layers: x, v and ``buffer`` are updated in place, residuals have
        ``dtype``. Which kernels apply is decided here once, not at every layer: the C
        kernels' ``exact_native.NativeBound`` where they take this state, else
        ``BoundKernels``."""
        if (self.native is not None and buffer.word_bits == WORD_BITS
                and self.native.handles(dtype, x, v, buffer.state)):
            return exact_native.NativeBound(self.native, x, v, buffer, dtype)
        if self.native_missing and dtype in exact_native.NativeKernels.DTYPES:
            warn_native_unavailable(self.native_missing)
        return BoundKernels(self, x, v, buffer, dtype)

    def start(self, x0: torch.Tensor):
        """A stack's start from float ``x0`` and v0 = 0 in one pass of the C kernels:
        (bound kernels, x, v, buffer, float x_0, fingerprint of the exact x_0), or None
        where they do not take it (then ``to_fixed``, a zero v, ``InformationBuffer.empty``
        and ``bind``). x, v and the buffer's state are allocated but not written: the
        first ``push`` of the bound kernels writes them, from x0 (so one must follow).
        Raises FixedPointRangeError as ``to_fixed`` does."""
        if (self.native is None or x0.device.type != "cpu" or x0.dtype not in exact_native.NativeKernels.DTYPES
                or buffer_layout(self.n) != (STATE_BITS, WORD_BITS)
                or self.n << (STATE_BITS - GAMMA_BITS) <= STATE_LOW):  # the first push would spill
            return None
        started = exact_native.stack_start(x0)
        if started is None:
            return None
        xf, peak, digest, x0 = started
        check_range(peak, "the input x0")
        x = torch.empty(x0.shape, dtype=torch.int64)
        v = torch.empty_like(x)
        buffer = InformationBuffer.empty(x.shape, x.device, self.n, filled=False)
        bound = exact_native.NativeBound(self.native, x, v, buffer, x0.dtype, start=x0)
        return bound, x, v, buffer, xf, digest


class BoundKernels:
    """One layer forward or back on one exact state (x, v, buffer), with the torch
    kernels of ``ExactKernels`` and the buffer's own bookkeeping (``InformationBuffer``)."""

    def __init__(self, kernels: ExactKernels, x, v, buffer: "InformationBuffer", dtype: torch.dtype):
        self.kernels, self.x, self.v, self.buffer, self.dtype = kernels, x, v, buffer, dtype

    def push(self, out, base=None, reuse=False):
        """``buffer.before_push`` then `forward_step` with f = out - base (``base`` None:
        f = out): returns (float x, peak). ``reuse``: out is the caller's alone (the
        difference is then taken in place)."""
        self.buffer.before_push(self.kernels.n)
        f = out if base is None else (out.sub_(base) if reuse else out - base)
        return self.kernels.forward_step(self.x, self.v, self.buffer.state, f)

    def undo_position(self, spare=None, digest=False):
        """x <- x - v; returns float x (``spare``: a tensor the C kernels may write it to;
        ``digest``: for the C kernels' fingerprint, see ``digests``)."""
        return self.kernels.undo_position(self.x, self.v, self.dtype)

    def digests(self):
        """The fingerprints the C kernels take as they go; None here (the caller takes them)."""
        return None

    def pop(self, out, base=None, release=None, digest=False, then_position=False, spare=None):
        """`undo_velocity` then ``buffer.after_pop``: the velocity back, given f(x_n) =
        out - base (``base`` None: out). ``release()``, if given, is called in between:
        out is no longer needed there, and nothing has been allocated yet. ``digest``:
        as in ``undo_position``. ``then_position``: then the layer below's
        ``undo_position(spare, digest)`` too, whose float x is returned (the C kernels
        take both in one pass)."""
        f = out if base is None else out - base
        self.kernels.undo_velocity(self.v, self.buffer.state, f)
        f = out = release() if release is not None else None
        self.buffer.after_pop(self.kernels.n)
        return self.undo_position(spare, digest) if then_position else None


# --------------------------------------------------------------------------------------
# Conversions and the information buffer
# --------------------------------------------------------------------------------------

def to_fixed(t: torch.Tensor, what: str = "input") -> torch.Tensor:
    """Float tensor -> int64 fixed point (truncating below 2**-40), with a range check."""
    if not t.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got {t.dtype}")
    native = exact_native.to_fixed(t) if backend_setting() in ("auto", "native") else None
    if native is not None:  # one pass, no float64 temporary
        x, peak = native
        check_range(peak, what)
        return x
    peak = float(t.detach().abs().amax()) if t.numel() else 0.0
    check_range(peak, what)
    return (t.detach().to(torch.float64) * SCALE).to(torch.int64)


def to_float(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """int64 fixed point -> float of ``dtype`` (correctly rounded through float64)."""
    native = exact_native.to_float(x, dtype) if backend_setting() in ("auto", "native") else None
    return native if native is not None else _to_float(x, dtype)


def check_range(peak: float, what: str) -> None:
    if not peak < VALUE_LIMIT:  # also catches NaN
        if math.isnan(peak) or math.isinf(peak):
            raise FixedPointRangeError(
                f"{what} contains NaN or inf; the exact memory-free path cannot hold it. "
                "Check the learning rate / inputs, or use memory_efficient=False to debug."
            )
        raise FixedPointRangeError(
            f"{what} reached magnitude {peak:.3g}, beyond the exact fixed-point range "
            f"+-{VALUE_LIMIT:.3g} (2**{62 - FRACTION_BITS}). Normalise the activations "
            "(e.g. BatchNorm/LayerNorm in the residual functions) or use memory_efficient=False."
        )


@dataclass
class InformationBuffer:
    """Per-element stack of the bits that exact multiplication by gamma must keep.

    ``state`` holds the live top of each element's stack (``state_bits`` = 31 bits in an
    int32, or 62 in an int64 for n < 256); ``words`` the full ``word_bits``-bit words
    moved out of it (uint8 for 8 bits, int32 for 32), oldest first, each a 1-D tensor of the
    elements that spilled at that layer. Forward steps grow it by about log2(1/gamma)
    bits per element.
    """

    state: torch.Tensor
    words: list = field(default_factory=list)
    upper: int = STATE_LOW  # upper bound on state.max(), tracked without reading state
    lower: int = STATE_LOW  # lower bound on state.min()
    state_bits: int = STATE_BITS
    word_bits: int = WORD_BITS

    @classmethod
    def empty(cls, shape, device, n: int = 2, filled: bool = True) -> "InformationBuffer":
        """An empty buffer for gamma = n / 2**16 (the layout depends on n, see above).
        ``filled`` False: the state is allocated but not written (for a first forward
        step that writes it without reading it, ``ExactKernels.start``)."""
        state_bits, word_bits = buffer_layout(n)
        low = 1 << (state_bits - word_bits)
        dtype = torch.int32 if state_bits < 32 else torch.int64
        state = (torch.full(shape, low, dtype=dtype, device=device) if filled
                 else torch.empty(shape, dtype=dtype, device=device))
        return cls(state, [], low, low, state_bits, word_bits)

    @property
    def low(self) -> int:
        """Smallest state of an element that has not spilled (STATE_LOW for 31 bits)."""
        return 1 << (self.state_bits - self.word_bits)

    def copy(self) -> "InformationBuffer":
        """A copy that can be unwound without touching this one (words are shared)."""
        return InformationBuffer(self.state.clone(), list(self.words), self.upper, -1,
                                 self.state_bits, self.word_bits)

    def spill_limit(self, n: int) -> int:
        """States at or above this spill a word before a forward step with gamma = n / 2**16
        (below it, the step cannot overflow the state)."""
        return n << (self.state_bits - GAMMA_BITS)

    def before_push(self, n: int) -> None:
        """Spill low words so the next forward step cannot overflow the state."""
        limit = self.spill_limit(n)
        if self.upper >= limit:
            mask, word_dtype = (1 << self.word_bits) - 1, _WORD_DTYPES[self.word_bits]
            pieces = []
            for chunk in self._chunks():
                spill = chunk >= limit
                if bool(spill.any()):
                    pieces.append((chunk.masked_select(spill) & mask).to(word_dtype))
                    chunk.copy_(torch.where(spill, chunk >> self.word_bits, chunk))
            if pieces:
                self.words.append(torch.cat(pieces) if len(pieces) > 1 else pieces[0])
            self.upper = int(self.state.max())
        self.upper = (self.upper // n) * GAMMA_DENOMINATOR + LOW_MASK
        self.lower = -1  # unknown: the first inverse step reads the true minimum

    def after_pop(self, n: int) -> None:
        """Refill states that an inverse step took below ``low`` from the last word."""
        low_state, mask = self.low, (1 << self.word_bits) - 1
        self.lower = (self.lower >> GAMMA_BITS) * n
        if self.lower < low_state:
            # the minimum first, then counts chunk by chunk: no full-size mask or int64 sum
            low = int(self.state.min()) if self.state.numel() else low_state
            total = 0 if low >= low_state else sum(
                int(torch.count_nonzero(chunk < low_state)) for chunk in self._chunks())
            if total:
                if not self.words or self.words[-1].numel() != total:
                    raise ReconstructionError("information buffer out of step: " + NOT_REPLAYABLE)
                word, start = self.words.pop(), 0
                for chunk in self._chunks():
                    refill = chunk < low_state
                    count = int(torch.count_nonzero(refill))
                    if count:
                        bits = word[start:start + count].to(chunk.dtype).bitwise_and_(mask)
                        chunk.masked_scatter_(refill, chunk.masked_select(refill)
                                              .bitwise_left_shift_(self.word_bits).bitwise_or_(bits))
                        start += count
                low = int(self.state.min())
            self.lower = low  # the true minimum (read once when nothing was refilled)
        self.upper = 1 << 62  # unknown: the next forward step reads the true maximum

    def _chunks(self):
        """Flat slices of the state, so that spilling and refilling need little scratch."""
        flat = self.state.view(-1)
        return flat.split(SPILL_CHUNK)

    def is_empty(self) -> bool:
        if self.words:
            return False
        if not self.state.numel() or self.lower == self.upper == self.low:
            return True  # the bounds alone say every state is low (the C kernels track them exactly)
        lo, hi = torch.aminmax(self.state)  # no full-size comparison tensor
        return int(lo) == self.low == int(hi)

    def nbytes(self) -> int:
        return (self.state.numel() * self.state.element_size()
                + sum(w.numel() * w.element_size() for w in self.words))

    def tensors(self) -> list:
        return [self.state, *self.words]
