"""Figure 2: memory of one training step vs depth on the paper's toy problem.

The toy problem ([ref] script ``examples/plot_memory.py`` of the ``momentumnet``
package): inputs ``torch.rand(batch, dim)``, one residual function
``f = Linear(dim, hidden) - Tanh - Linear(hidden, dim)`` shared by every layer (tied
weights), ``depth`` layers with gamma = 1 - 1/(50 depth), loss ``mean(out ** 2)``, one
forward + backward. The paper compares a ResNet trained by ordinary backprop with a
Momentum ResNet whose backward pass rebuilds the activations (memory-free).

Here both curves are the *same* momentum stack: ordinary backprop
(``memory_efficient=False``) and the memory-free backward (``memory_efficient=True``).
The reference script's ResNet curve is gamma = 0 with ordinary backprop; it saves the
same bytes (the momentum update saves nothing); :func:`resnet_saved_bytes` measures it.

Three measurements per depth and path (see :mod:`mresnet_core.memory`):

* ``saved``: bytes autograd keeps after the forward pass (deterministic);
* ``peak``: peak memory of the step above its starting level, by the CPU profiler's
  allocation events or the CUDA allocator;
* ``before`` / ``peak`` of :func:`measure_rss`: resident set size of a fresh Python
  process just before and at the highest point of the step (what the paper's
  ``memory_profiler`` saw, interpreter and libraries included), under glibc's default
  malloc and with a fixed mmap threshold (:data:`MALLOC_SETTINGS`).

:func:`plot_memory_vs_depth` draws them next to the shape theory below.

The shape theory (``toy_ordinary_saved_bytes``, ``memory_free_saved_bytes`` and friends).
What one forward pass keeps for backward, in bytes, for the toy stack of the paper's
Figure 2: every layer applies the same kind of residual function
``f = Linear(dim, hidden) - Tanh - Linear(hidden, dim)`` to a ``(batch, dim)`` input.
These are the numbers :func:`mresnet_core.memory.saved_tensor_bytes` measures
(parameters excluded); ``tests/test_py`` checks them against it exactly.

Ordinary backprop (``MomentumNet(..., memory_efficient=False)``), per layer:

* the first ``Linear`` saves its input x_n (needed for the weight gradient):
  ``batch * dim`` values;
* ``Tanh`` saves its output (its derivative is ``1 - tanh**2``), which the second
  ``Linear`` saves again as its input: one storage, ``batch * hidden`` values;
* the momentum update ``v = gamma v + (1 - gamma) f``, ``x = x + v`` multiplies by
  Python scalars and adds: it saves nothing. Weights are parameters, not activations.

So ``depth * batch * (dim + hidden) * itemsize`` bytes, whatever gamma (a ResNet,
gamma = 0, saves the same).

Memory-free backward (``memory_efficient=True``, ``exact.py``), independent of depth
apart from the information buffer:

* x_L and v_L in int64 fixed point: ``2 * 8`` bytes per element;
* the information buffer: one 31-bit state per element (an int32), plus the 8-bit words
  it spills (uint8). Each exact multiplication by gamma = n / 2**16 pushes
  log2(2**16 / n) bits per element into the state; the state starts at 2**23 and spills
  its low 8 bits once it would pass about gamma * 2**31, so after ``depth`` layers each
  element has spilled ``floor(depth * log2(1 / gamma) / 8)`` words. That count is exact
  except within about a bit of a word boundary, where rounding inside the state decides,
  element by element, whether the spill happens at this layer or the next. (For
  gamma < 2**-8 the state is 62 bits in an int64 and the words 32 bits.)

The paper's asymptotic cost, ``depth * log2(1 / gamma)`` bits per element, is
:func:`information_bits`. With Figure 2's schedule gamma = 1 - 1/(50 depth) it is
``depth * log2(1 / gamma) ~ 1 / (50 ln 2) ~ 0.03`` bits per element at every depth, so
no word ever spills: the buffer is the 32-bit state alone.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .. import exact
from ..memory import measure_step_memory, peak_rss_in_forked_processes, saved_tensors
from ..momentum import MomentumNet
from .common import toy_mlp

# --------------------------------------------------------------------------------------
# The shape theory (see the module docstring)
# --------------------------------------------------------------------------------------

INT64_BYTES = 8


def _layout(gamma: float) -> tuple:
    """(state bytes, word bits, word bytes) of the information buffer for ``gamma``
    (``exact.buffer_layout``): a 31-bit state in an int32 with 8-bit words (n >= 256), or a
    62-bit state in an int64 with 32-bit words (gamma < 2**-8)."""
    state_bits, word_bits = exact.buffer_layout(exact.gamma_numerator(gamma))
    return (4 if state_bits < 32 else 8), word_bits, (word_bits + 7) // 8


def buffer_layout_bytes(gamma: float) -> tuple:
    """(bytes of the information buffer's live state per element, bits of a spilled word)
    at ``gamma``: what the memory-free path keeps per element besides int64 x and v."""
    state, word_bits, _ = _layout(gamma)
    return state, word_bits


def figure2_gamma(depth: int, scale: float = 50.0) -> float:
    """Figure 2's momentum at ``depth`` layers: gamma = 1 - 1 / (scale * depth).

    Depth 0 (no layer) uses depth 1's value, where the formula is undefined.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    return 1.0 - 1.0 / (scale * max(depth, 1))


def toy_ordinary_saved_bytes(depth: int, batch: int, dim: int, hidden: int,
                             itemsize: int = 4) -> int:
    """Bytes ordinary backprop saves for the toy stack: ``depth * batch * (dim + hidden) * itemsize``.

    Per layer: the first Linear's input (batch x dim) and the Tanh output that the second
    Linear saves again (batch x hidden, one storage). Independent of gamma.
    """
    return depth * batch * (dim + hidden) * itemsize


def _bits_per_layer(gamma: float) -> float:
    n = exact.gamma_numerator(gamma)
    exact.check_invertible(n)
    return math.log2(exact.GAMMA_DENOMINATOR / n)


def information_bits(depth: int, gamma: float) -> float:
    """Bits per element the exact arithmetic must remember after ``depth`` layers.

    ``depth * log2(1 / gamma)`` with gamma rounded as the network rounds it (n / 2**16).
    """
    return depth * _bits_per_layer(gamma)


def buffer_words_per_element(depth: int, gamma: float) -> int:
    """Words each element has spilled after ``depth`` layers: floor(bits / word bits)
    (8-bit words; 32-bit for gamma < 2**-8).

    Exact unless ``information_bits(depth, gamma)`` lies within about a bit of a multiple
    of the word size (see the module docstring).
    """
    return int(math.floor(information_bits(depth, gamma) / _layout(gamma)[1]))


def information_buffer_bytes(depth: int, numel: int, gamma: float) -> int:
    """Bytes of the information buffer: the state (int32) plus the spilled words (bytes)."""
    state, _, word = _layout(gamma)
    return numel * (state + word * buffer_words_per_element(depth, gamma))


def memory_free_saved_bytes(depth: int, numel: int, gamma: float) -> int:
    """Bytes the memory-free path keeps for backward: int64 x_L and v_L, and the buffer.

    ``numel`` is the number of elements of the stack's input (batch * dim for the toy).
    """
    return 2 * INT64_BYTES * numel + information_buffer_bytes(depth, numel, gamma)


def crossover_depth(batch: int, dim: int, hidden: int, itemsize: int = 4,
                    gamma_of_depth=figure2_gamma, max_depth: int = 1_000_000) -> int:
    """First depth at which the memory-free path saves fewer bytes than ordinary backprop
    for the toy stack (``gamma_of_depth(depth)`` gives gamma; Figure 2's schedule by default).

    Beyond it ordinary backprop grows by ``batch * (dim + hidden) * itemsize`` bytes per
    layer and the memory-free path by at most one byte per element every
    8 / log2(1 / gamma) layers, so for float32 it stays below.
    """
    numel = batch * dim
    for depth in range(1, max_depth + 1):
        if (memory_free_saved_bytes(depth, numel, gamma_of_depth(depth))
                < toy_ordinary_saved_bytes(depth, batch, dim, hidden, itemsize)):
            return depth
    raise ValueError(f"the memory-free path does not save less than ordinary backprop "
                     f"up to depth {max_depth}")


# --------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------

MIB = 2.0 ** 20
#: the paper's Figure 2, points read off its log axis (approximate): RSS in MiB at depth ~0 and ~900
PAPER_RSS_MIB = {"depth": 900, "ordinary": (1.2e2, 2e3), "memory-free": (1.2e2, 1.2e2)}
#: path name -> memory_efficient flag of the MomentumNet
PATHS = {"ordinary": False, "memory-free": True}
LABELS = {"ordinary": "ResNet (ordinary backprop)", "memory-free": "Momentum ResNet (memory-free)"}
SHORT = {"ordinary": "ResNet", "memory-free": "Momentum"}


@dataclass(frozen=True)
class ToyProblem:
    """The toy problem of Figure 2 (defaults: the paper's sizes)."""

    dim: int = 500
    batch: int = 500
    hidden: int = 8
    gamma_scale: float = 50.0  # gamma = 1 - 1 / (gamma_scale * depth)
    seed: int = 1

    def gamma(self, depth: int) -> float:
        return figure2_gamma(depth, self.gamma_scale)

    @property
    def numel(self) -> int:
        return self.batch * self.dim


def build(depth: int, memory_efficient: bool, problem: ToyProblem = ToyProblem(),
          device: str | torch.device = "cpu", gamma: float | None = None):
    """(net, x): ``depth`` layers of one shared f, and the input batch (seeded)."""
    torch.manual_seed(problem.seed)
    f = toy_mlp(problem.dim, problem.hidden).to(device)
    x = torch.rand(problem.batch, problem.dim, generator=torch.Generator().manual_seed(problem.seed)).to(device)
    g = problem.gamma(depth) if gamma is None else gamma
    return MomentumNet([f] * depth, g, memory_efficient=memory_efficient), x


def training_step(net: nn.Module, x: torch.Tensor) -> None:
    """One step: gradients set to None, loss = mean(out ** 2), backward."""
    net.zero_grad(set_to_none=True)
    net(x).pow(2).mean().backward()


def warm_up_both_paths(dim: int = 500, batch: int = 500, hidden: int = 8, gamma_scale: float = 50.0,
                       seed: int = 1, gamma: float | None = None) -> None:
    """One training step of a *one-layer* stack on *both* paths (at ``gamma``, default
    Figure 2's value at depth 1): torch's first-use initialisation, and the exact kernels
    of the memory-free path loaded (or compiled), before any measured step."""
    problem = ToyProblem(dim, batch, hidden, gamma_scale, seed)
    for path in PATHS.values():
        warm, x = build(1, path, problem, gamma=problem.gamma(1) if gamma is None else gamma)
        training_step(warm, x)
        del warm


def prepare_fork_server(dim: int = 500, batch: int = 500, hidden: int = 8, gamma_scale: float = 50.0,
                        seed: int = 1) -> None:
    """``prepare`` of :func:`mresnet_core.memory.peak_rss_in_forked_processes`: the warm-up
    of both paths once, in the interpreter the measured children are forked from (torch's
    first-use work, paid once instead of in every child), with one torch thread (no thread
    pool exists when it forks)."""
    torch.set_num_threads(1)
    warm_up_both_paths(dim, batch, hidden, gamma_scale, seed)


def fresh_process_step(depth: int, memory_efficient: bool, dim: int = 500, batch: int = 500,
                       hidden: int = 8, gamma_scale: float = 50.0, seed: int = 1,
                       threads: int = 1, warm_up: bool = True):
    """Factory for :func:`mresnet_core.memory.peak_rss_in_forked_processes` (with
    ``warm_up=False`` after :func:`prepare_fork_server`) or
    :func:`~mresnet_core.memory.peak_rss_in_fresh_process`.

    Builds the model and data and returns the step of the ``depth``-layer stack; with
    ``warm_up`` it first runs :func:`warm_up_both_paths` at the depth's gamma. Warming both
    paths in every process gives both the same libraries before the step: the kernels
    the memory-free path loads are not counted as a difference in its RSS baseline, and
    nothing is compiled during the measured step.
    """
    torch.set_num_threads(threads)
    problem = ToyProblem(dim, batch, hidden, gamma_scale, seed)
    if warm_up:
        warm_up_both_paths(dim, batch, hidden, gamma_scale, seed, gamma=problem.gamma(depth))
    net, x = build(depth, memory_efficient, problem)
    return lambda: training_step(net, x)


def resnet_saved_bytes(depth: int, problem: ToyProblem = ToyProblem(),
                       device: str | torch.device = "cpu") -> int:
    """Bytes saved by the reference script's ResNet: gamma = 0, ordinary backprop."""
    net, x = build(depth, False, problem, device, gamma=0.0)
    return saved_tensors(net, x).nbytes


# --------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------

@dataclass
class Point:
    depth: int
    path: str
    gamma: float
    saved: int
    theory: int
    buffer: int
    peak: int
    peak_method: str
    seconds: float = 0.0


def _measure_point(depth: int, path: str, problem: ToyProblem, device, warm_up: bool = True) -> Point:
    start = time.perf_counter()
    if warm_up:  # a one-layer step of this path first: kernels loaded (compiled) outside the measured step
        warm, x = build(1, PATHS[path], problem, device, gamma=problem.gamma(depth))
        training_step(warm, x)
        del warm
    net, x = build(depth, PATHS[path], problem, device)
    report = saved_tensors(net.forward_state, x)
    saved = report.nbytes
    buffer = report.output.tape.buffer.nbytes() if PATHS[path] else 0
    del report
    if PATHS[path]:
        theory = memory_free_saved_bytes(depth, problem.numel, net.gamma)
    else:
        theory = toy_ordinary_saved_bytes(depth, problem.batch, problem.dim,
                                                       problem.hidden, x.element_size())
    step = measure_step_memory(lambda: training_step(net, x), device)
    return Point(depth, path, net.gamma, saved, theory, buffer, step.peak, step.method,
                 seconds=time.perf_counter() - start)


def measure_depths(depths, problem: ToyProblem = ToyProblem(), *,
                   device: str | torch.device = "cpu"):
    """Both paths at every depth, in this process. Returns a pandas DataFrame.

    One row per (depth, path); columns: depth, path, gamma (as the network rounds it),
    saved (bytes kept for backward), theory (:mod:`.memory_model`), buffer (information
    buffer bytes, 0 for ordinary), peak (peak of one step above its starting level,
    parameter gradients included), peak_method ("cpu-profiler" or "cuda-allocator"),
    seconds (wall time of the point: a forward pass for the saved bytes and one step;
    the first depth of each path starts with a one-layer warm-up step, which loads the
    exact kernels, or compiles them, outside the measured step).
    """
    import pandas as pd

    device = torch.device(device)
    rows = [_measure_point(int(depth), path, problem, device, warm_up=(i == 0))
            for i, depth in enumerate(depths) for path in PATHS]
    return pd.DataFrame([asdict(p) for p in rows])


#: allocator settings for the fresh processes: name -> extra environment variables.
#: glibc's malloc serves blocks above a threshold with mmap and returns them on free; by
#: default that threshold grows to the size of the blocks freed so far, after which large
#: tensors come from the heap, whose freed pages may stay resident. A fixed 128 KiB
#: threshold keeps returning them, so the RSS follows the live tensors.
MALLOC_SETTINGS = {
    "default malloc": {},
    "mmap threshold 128 KiB": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def measure_rss(depths, problem: ToyProblem = ToyProblem(), *, settings=None, threads: int = 1,
                timeout: float = 600):
    """Peak RSS of one step in a fresh process (CPU), per depth, path and allocator setting.

    Returns a pandas DataFrame with columns depth, path, malloc (a key of ``settings``,
    default :data:`MALLOC_SETTINGS`), before (RSS just before the step, bytes), peak
    (highest RSS during the step), step (peak - before), method. Per allocator setting,
    one fresh interpreter with the current environment plus the setting's variables
    (``MRESNET_EXACT_BACKEND`` included) imports this module and warms up both paths on a
    one-layer stack (:func:`prepare_fork_server`: torch's first-use work done once), and
    each (depth, path) point runs in a child forked from it, one at a time, with
    ``threads`` threads (:func:`mresnet_core.memory.peak_rss_in_forked_processes`): the
    child warms up both paths again (cheap now; it brings the pages the step runs into
    its own RSS before the measurement, as in a fresh process), then runs the step. Each
    point starts from the same freshly prepared process; the import is paid once per setting.
    """
    import pandas as pd

    settings = MALLOC_SETTINGS if settings is None else settings
    points = [(int(depth), path) for depth in depths for path in PATHS]
    rows = []
    for malloc, env in settings.items():
        sizes = dict(dim=problem.dim, batch=problem.batch, hidden=problem.hidden,
                     gamma_scale=problem.gamma_scale, seed=problem.seed)
        calls = [dict(depth=depth, memory_efficient=PATHS[path], threads=threads, **sizes)
                 for depth, path in points]
        measured = peak_rss_in_forked_processes(f"{__name__}:fresh_process_step", calls,
                                                prepare=f"{__name__}:prepare_fork_server", prepare_kwargs=sizes,
                                                env=env, timeout=timeout)
        for (depth, path), rss in zip(points, measured):
            rows.append(dict(depth=depth, path=path, malloc=malloc, before=rss["before"],
                             peak=rss["peak"], step=rss["step"], method=rss["method"]))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------


def _finish_axis(ax, ylabel: str, title: str) -> None:
    """Log memory axis against depth, titled, legend below: both panels of Figure 2."""
    ax.set_yscale("log")
    ax.set_xlabel("depth")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)


def plot_memory_vs_depth(frame, rss=None, problem: ToyProblem = ToyProblem()):
    """Figure 2 in MiB on log axes: (a) tensor memory (theory, saved bytes, step peak)
    from :func:`measure_depths`; (b) when ``rss`` (from :func:`measure_rss`) is given, the
    peak RSS of a fresh process, absolute like the paper's memory_profiler."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ..plotting import PALETTE

    colors = {"ordinary": PALETTE["resnet"], "memory-free": PALETTE["momentum"]}
    depths = sorted(frame["depth"].unique())
    grid = np.unique(np.linspace(max(depths[0], 1), depths[-1], 200).round().astype(int))
    has_rss = rss is not None and len(rss)
    fig, axes = plt.subplots(1, 2 if has_rss else 1, figsize=(13 if has_rss else 6.5, 6.2),
                             squeeze=False)
    ax = axes[0, 0]
    theory = {
        "ordinary": [toy_ordinary_saved_bytes(d, problem.batch, problem.dim, problem.hidden)
                     for d in grid],
        "memory-free": [memory_free_saved_bytes(d, problem.numel, problem.gamma(d))
                        for d in grid],
    }
    method = frame["peak_method"].iloc[0]
    for path in PATHS:
        rows = frame[frame["path"] == path].sort_values("depth")
        c = colors[path]
        ax.plot(rows["depth"], rows["peak"] / MIB, "-^", color=c, lw=2, ms=5,
                label=f"{SHORT[path]}: step peak ({method})")
        ax.plot(grid, np.asarray(theory[path]) / MIB, color=c, lw=1.2, ls="--",
                label=f"{SHORT[path]}: theory (saved)")
        ax.plot(rows["depth"], rows["saved"] / MIB, "o", color=c, ms=7, mfc="none", mew=1.5,
                label=f"{SHORT[path]}: saved_tensor_bytes")
    _finish_axis(ax, "memory (MiB)", "(a) tensors: saved for backward, and step peak above its start\n"
                 "ResNet = ordinary backprop, Momentum = memory-free, same stack")
    if has_rss:
        ax = axes[0, 1]
        styles = ["-o", "--s", ":d", "-.v"]
        for (malloc, style) in zip(rss["malloc"].unique(), styles):
            for path in PATHS:
                rows = rss[(rss["path"] == path) & (rss["malloc"] == malloc)].sort_values("depth")
                ax.plot(rows["depth"], rows["peak"] / MIB, style, color=colors[path], lw=2, ms=5,
                        label=f"{SHORT[path]}: {malloc}")
        for path in PATHS:
            rows = rss[(rss["path"] == path) & (rss["malloc"] == rss["malloc"].iloc[0])].sort_values("depth")
            ax.plot(rows["depth"], rows["before"] / MIB, ":", color=colors[path], lw=1,
                    label=f"{SHORT[path]}: RSS before the step")
        paper = PAPER_RSS_MIB
        for path, marker in (("ordinary", "X"), ("memory-free", "P")):
            ax.plot([0, paper["depth"]], paper[path], marker, ls="none", ms=10, color=colors[path],
                    mec="black", mew=0.8, label=f"paper, {SHORT[path]}: points read off its Fig. 2")
        _finish_axis(ax, "peak RSS (MiB)", "(b) whole process: peak RSS, one fresh process per point (CPU)\n"
                     "paper: two points per curve read off its Figure 2 (approximate)")
    fig.suptitle(f"Figure 2: memory vs depth. d = {problem.dim}, batch {problem.batch}, tied "
                 f"f = Linear({problem.dim},{problem.hidden})-Tanh-Linear({problem.hidden},{problem.dim}), "
                 f"gamma = 1 - 1/({problem.gamma_scale:g} depth), loss mean(out²)", fontsize=10)
    fig.tight_layout()
    return fig
