"""Peak-memory measurement of training steps (accounting of saved bytes: ``accounting.py``).

From the most to the least deterministic:

* :func:`saved_tensor_bytes` and :func:`saved_tensors` (from ``accounting.py``, exported
  here too): the bytes of the tensors autograd keeps for backward after one forward pass.
  Exact, deterministic and device independent; this is the "activation memory" of the
  paper's Figure 2. Parameters are excluded.
* :func:`training_step_memory`: the headline measure. The peak memory of one whole
  training step of a model (``zero_grad(set_to_none=True)``, forward, loss, backward),
  parameter gradients included, since they are allocated during backward and decide an
  out-of-memory error; the gradient-free activation peak comes with it as a second
  figure. Built on :func:`measure_step_memory`.
* :func:`peak_step_memory` (and :func:`measure_step_memory`): the peak memory of one
  training step (forward + backward). On CUDA it is the caching allocator's
  ``max_memory_allocated``; on the CPU it replays the allocation and free events that
  ``torch.profiler`` records (``profile_memory=True``). It includes the temporaries of
  both passes, and the parameter gradients unless ``exclude_grads_of`` leaves them out
  (CPU), so it is what actually limits the batch size.
* :func:`peak_rss_in_fresh_process`: the peak resident set size of a fresh Python
  process running one step (``VmHWM`` on Linux, ``ru_maxrss`` elsewhere); the coarsest,
  whole-process view (interpreter, torch, allocator caching), a sanity check on the CPU.
  :func:`peak_rss_in_forked_processes` measures several steps the same way, each in a
  child forked from one fresh interpreter that has imported the factory's module (the
  import, most of a fresh process's cost, is paid once).

:func:`describe` (from ``momentum.py``, exported here too) lists how each momentum stack
of a model is trained and the estimates behind it. The information buffer of the
memory-free path is measured by its own
``MomentumNet(...).forward_state(x).tape.buffer.nbytes()``.

Example::

    from mresnet_core import MomentumNet
    from mresnet_core.memory import saved_tensor_bytes, peak_step_memory, training_step_memory

    net = MomentumNet(functions, gamma=0.9, memory_efficient=True)
    activations = saved_tensor_bytes(net, x)          # bytes kept for backward
    step = training_step_memory(net, x)               # whole step, gradients included
    step.whole_step, step.activations
    peak = peak_step_memory(lambda: net(x).pow(2).mean().backward(), x.device,
                            exclude_grads_of=net)   # activations and temporaries
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ._torch_private import allocation_events
from .accounting import SavedTensors, parameter_tensors, saved_tensor_bytes, saved_tensors
from .momentum import describe

__all__ = [
    "SavedTensors",
    "StepMemory",
    "saved_tensors",
    "saved_tensor_bytes",
    "measure_step_memory",
    "peak_step_memory",
    "TrainingStepMemory",
    "training_step_memory",
    "describe",
    "peak_rss_in_fresh_process",
    "peak_rss_in_forked_processes",
    "allocation_step",
]


# --------------------------------------------------------------------------------------
# Bytes saved for backward
# --------------------------------------------------------------------------------------

# --------------------------------------------------------------------------------------
# Peak memory of a training step
# --------------------------------------------------------------------------------------

@dataclass
class StepMemory:
    """Memory of one step, in bytes, relative to the level just before it.

    Attributes:
        peak: the highest level reached during the step (>= 0).
        retained: the level after the step (what it left allocated: gradients created
            for the first time, outputs it returned; negative if it freed more than it
            allocated).
        method: "cpu-profiler" or "cuda-allocator".
        events: number of allocation/free events replayed (CPU only; 0 on CUDA).
        excluded: bytes of the parameter gradients left out (``exclude_grads_of``).
        peak_all: the peak with nothing left out (CPU: from the same events as ``peak``;
            equal to ``peak`` when ``exclude_grads_of`` is None or on CUDA).
    """

    peak: int
    retained: int
    method: str
    events: int = 0
    excluded: int = 0
    peak_all: int | None = None


def _grad_storages(exclude_grads_of) -> dict:
    """{address: bytes} of the ``.grad`` storages of the given parameters (or modules)."""
    params = parameter_tensors(None, exclude_grads_of)
    out = {}
    for p in params:
        if p.grad is not None and p.grad.layout == torch.strided:
            s = p.grad.untyped_storage()
            out[s.data_ptr()] = s.nbytes()
    return out


# --------------------------------------------------------------------------------------
# Native stderr of the profiler (kept out of notebooks and logs)
# --------------------------------------------------------------------------------------

#: torch.profiler's tracing library logs each start/stop (and, on machines without a GPU,
#: a failed GPU query) straight to file descriptor 2, e.g.
#: "USDT:2026-01-01 10:00:00 123:123 SyncActivityProfilerHandler.cpp:39] profiler_start".
_PROFILER_LOG = re.compile(r"^[A-Z]+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ \w+\.cpp:\d+\] ")


@contextlib.contextmanager
def _profiler_logs_dropped():
    """Route native stderr to a temporary file for the duration; drop the profiler's own
    log lines and pass anything else on to ``sys.stderr``."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            with warnings.catch_warnings():
                # the profiler cannot size blocks allocated before it started (see memory.py)
                warnings.filterwarnings("ignore", message=".*[Mm]emory block of unknown size.*")
                yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            rest = [line for line in tmp.read().decode(errors="replace").splitlines()
                    if line.strip() and not _PROFILER_LOG.match(line)]
            if rest:
                sys.stderr.write("\n".join(rest) + "\n")


def _measure_cpu(step_fn: Callable[[], Any], exclude_grads_of=None) -> StepMemory:
    from torch.profiler import ProfilerActivity, profile

    with _profiler_logs_dropped(), profile(activities=[ProfilerActivity.CPU], profile_memory=True,
                                           record_shapes=False, with_stack=False) as prof:
        step_fn()
    events = sorted(allocation_events(prof))  # by time; ties keep the recorded order
    skip: set = set()
    excluded = 0
    if exclude_grads_of is not None:
        grads = _grad_storages(exclude_grads_of)
        if grads and any(ptr is None for _, _, ptr, _ in events):
            raise RuntimeError("this torch profiler does not report allocation addresses; "
                               "exclude_grads_of is unavailable")
        live: dict = {}  # address -> index of the allocation event still live there
        for i, (_, _, ptr, nbytes) in enumerate(events):
            if nbytes > 0:
                live[ptr] = i
            else:
                live.pop(ptr, None)
        for ptr, i in live.items():
            if ptr in grads:
                skip.add(i)
                excluded += events[i][3]
    level = peak = level_all = peak_all = 0
    for i, (_, _, _, nbytes) in enumerate(events):
        level_all += nbytes
        peak_all = max(peak_all, level_all)
        if i not in skip:
            level += nbytes
            peak = max(peak, level)
    return StepMemory(peak=peak, retained=level, method="cpu-profiler", events=len(events),
                      excluded=excluded, peak_all=peak_all)


def _measure_cuda(step_fn: Callable[[], Any], device: torch.device) -> StepMemory:
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step_fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    retained = torch.cuda.memory_allocated(device) - base
    return StepMemory(peak=max(peak, 0), retained=retained, method="cuda-allocator",
                      peak_all=max(peak, 0))


def measure_step_memory(step_fn: Callable[[], Any], device: str | torch.device = "cpu", *,
                        exclude_grads_of: nn.Module | Iterable | None = None) -> StepMemory:
    """Peak (and retained) memory of ``step_fn()``, relative to the level before it.

    ``step_fn`` is a zero-argument callable doing one training step, e.g.
    ``lambda: model(x).pow(2).mean().backward()``. Measure after a warm-up call (the
    first call of the memory-free path compiles its kernels), and decide where the
    gradients stand: set them to None first (what ``optimizer.zero_grad()`` does) and
    the step allocates them, which is the usual training loop.

    * CPU: the step runs under ``torch.profiler.profile(profile_memory=True)``; each
      allocation (+bytes) and free (-bytes) through the CPU tensor allocator is replayed
      in time order and the running maximum above the starting level is the peak.
      Tensors allocated before the step (parameters, inputs, existing gradients) are not
      counted, and freeing one of them during the step is generally not reported either
      (the CPU allocator did not record its size; it warns once, "Memory block of unknown
      size was allocated before the profiling started"), so such a free does not lower
      the level: the peak errs high, never low, in that case. Memory not
      allocated as tensors (Python objects, compiled-kernel code, BLAS/OpenMP scratch
      outside the allocator) is invisible, and allocations on threads the profiler does
      not follow could be missed. Deterministic for a deterministic step (up to thread
      interleaving). The profiler slows the step down: time steps separately.

      ``exclude_grads_of`` (a module, or an iterable of modules and parameters) leaves
      out the parameter gradients the step creates and keeps (allocations still live at
      the end whose address is a ``.grad`` of those parameters), so that the peak is the
      activation and temporary memory of the step. Gradients that existed before the
      step are accumulated in place and were never counted; temporary gradient tensors
      that the step frees again are counted.
    * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
      ``memory_allocated`` before the step (tensor bytes as the caching allocator rounds
      them, without its cache). ``exclude_grads_of`` is not available there (allocate
      the gradients before the step instead, or subtract the parameter bytes).
    """
    device = torch.device(device)
    if device.type == "cuda":
        if exclude_grads_of is not None:
            raise NotImplementedError("exclude_grads_of is implemented for CPU measurements only")
        return _measure_cuda(step_fn, device)
    if device.type == "cpu":
        return _measure_cpu(step_fn, exclude_grads_of)
    raise ValueError(f"peak memory measurement supports 'cpu' and 'cuda' devices, got {device}")


def peak_step_memory(step_fn: Callable[[], Any], device: str | torch.device = "cpu", *,
                     exclude_grads_of: nn.Module | Iterable | None = None) -> int:
    """Peak bytes above the starting level during ``step_fn()``; see :func:`measure_step_memory`."""
    return measure_step_memory(step_fn, device, exclude_grads_of=exclude_grads_of).peak


# --------------------------------------------------------------------------------------
# Whole training step of a model
# --------------------------------------------------------------------------------------

@dataclass
class TrainingStepMemory:
    """Peak memory of one whole training step, in bytes above the level before it.

    Attributes:
        whole_step: the peak with everything the step allocates, parameter gradients
            included (the headline figure: what decides an out-of-memory error).
        activations: the peak without the parameter gradients the step creates (its
            activations and temporaries; the "gradient-free" second column).
        gradients: bytes of the parameter gradients the step created and kept.
        method: "cpu-profiler" or "cuda-allocator".
    """

    whole_step: int
    activations: int
    gradients: int
    method: str


def _mean_square(out):
    return out.float().pow(2).mean()


def training_step_memory(model: nn.Module, *inputs, loss: Callable | None = None,
                         device: str | torch.device | None = None, warmup: int = 1
                         ) -> TrainingStepMemory:
    """Peak memory of ``model.zero_grad(set_to_none=True); loss(model(*inputs)).backward()``.

    This is the step a training loop runs with PyTorch's default ``zero_grad``: the
    gradients are allocated during the backward pass, so they count towards the peak.
    ``loss`` maps the output to a scalar (default: mean square). ``warmup`` untimed
    steps run first (kernels compiled, lazy state allocated); gradients are set to None
    before the measured step and the step's gradients are left in place after it.

    * CPU (the device of the first parameter, or ``device``): one step under
      ``torch.profiler`` (see :func:`measure_step_memory`); ``whole_step`` replays every
      allocation, ``activations`` the same events without the gradients the step keeps.
    * CUDA: ``whole_step`` is the allocator peak of the step from gradients set to None;
      ``activations`` that of a second step whose gradients already exist (zeroed in
      place, so they are accumulated into rather than allocated).

    Both figures are tensor memory above the level before the step (parameters, inputs
    and optimizer state excluded), comparable between models on the same inputs.
    """
    loss = _mean_square if loss is None else loss
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else inputs[0].device
    device = torch.device(device)

    def step():
        loss(model(*inputs)).backward()

    for _ in range(warmup):
        model.zero_grad(set_to_none=True)
        step()
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        whole = measure_step_memory(step, device)
        gradients = whole.retained
        model.zero_grad(set_to_none=False)
        act = measure_step_memory(step, device).peak
        return TrainingStepMemory(whole_step=whole.peak, activations=act,
                                  gradients=gradients, method=whole.method)
    m = measure_step_memory(step, device, exclude_grads_of=model)
    return TrainingStepMemory(whole_step=m.peak_all, activations=m.peak, gradients=m.excluded,
                              method=m.method)


def largest_fitting_batch(peak_at: Callable[[int], int], budget: int, start: int = 2) -> tuple:
    """(the largest batch whose measured peak ``peak_at(batch)`` is within ``budget``,
    {batch: peak} of every batch measured). Two batches (``start`` and twice it) give a
    line; the batch it predicts and the next one are measured, and a bisection between
    the largest batch measured within the budget and the smallest measured above it
    ends when they are neighbours: the answer and the batch after it were both
    measured, nothing is extrapolated (for an affine peak, four measurements). Peaks
    must grow with the batch. 0 when batch 1 does not fit."""
    if start < 1 or budget <= 0:
        raise ValueError(f"need start >= 1 and a positive budget, got start={start}, budget={budget}")
    seen: dict = {}

    def peak(b: int) -> int:
        if b not in seen:
            seen[b] = peak_at(b)
        return seen[b]

    def bounds() -> tuple:
        lo = max((k for k, v in seen.items() if v <= budget), default=0)
        hi = min((k for k, v in seen.items() if v > budget and k > lo), default=None)
        return lo, hi

    a, b = start, 2 * start
    slope = max((peak(b) - peak(a)) / (b - a), 1.0)
    guess = max(1, int((budget - (peak(a) - slope * a)) // slope))
    peak(guess)
    peak(guess + 1)
    lo, hi = bounds()
    while hi is None:  # everything measured fits: double
        peak(2 * lo)
        lo, hi = bounds()
    if lo == 0:
        if peak(1) > budget:
            return 0, seen
        lo, hi = bounds()
    while hi - lo > 1:
        peak((lo + hi) // 2)
        lo, hi = bounds()
    return lo, seen


# --------------------------------------------------------------------------------------
# Peak RSS of a fresh process
# --------------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import importlib, json, resource, sys

    def status(field):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    def reset_high_water_mark():
        try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return status("VmHWM") is not None
        except OSError:
            return False

    spec, kwargs = sys.argv[1], json.loads(sys.argv[2])
    module, _, name = spec.partition(":")
    factory = getattr(importlib.import_module(module), name)
    step = factory(**kwargs)
    if reset_high_water_mark():
        method, before = "VmHWM", status("VmRSS")
        step()
        peak = status("VmHWM")
    else:
        scale = 1 if sys.platform == "darwin" else 1024
        method, before = "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    print("MRESNET_RSS " + json.dumps({"before": before, "peak": peak, "method": method}))
    """
)


def peak_rss_in_fresh_process(factory: str, kwargs: dict | None = None, *,
                              env: dict | None = None, timeout: float | None = 600) -> dict:
    """Peak resident set size of a fresh Python process running one step.

    ``factory`` is ``"package.module:function"``; in a new interpreter,
    ``step = function(**kwargs)`` builds the model and data (``kwargs`` must be
    JSON-serialisable) and returns a zero-argument callable, then ``step()`` runs once.
    Returns ``{"before": bytes, "peak": bytes, "step": peak - before, "method": ...}``.

    On Linux the child resets its high-water mark after the setup (``/proc/self/clear_refs``)
    so ``before`` is the RSS just before the step and ``peak`` the highest RSS during it
    (method "VmHWM"). Elsewhere it falls back to ``ru_maxrss`` (method "ru_maxrss"), a
    high-water mark since the process started, so ``step`` understates the step's peak
    whenever the setup once reached more than it kept.

    Limits: RSS is the whole process (interpreter, torch, allocator caches, compiled
    kernels, pages the allocator keeps after a free), so use it to compare configurations
    (the same factory with different arguments), not as an exact tensor count (see
    :func:`measure_step_memory`). The child runs with the current interpreter and working
    directory; ``env`` entries are added to the environment (e.g. ``{"OMP_NUM_THREADS": "1"}``).
    """
    cmd = [sys.executable, "-c", _CHILD, factory, json.dumps(kwargs or {})]
    child_env = dict(os.environ, **(env or {}))
    done = subprocess.run(cmd, capture_output=True, text=True, env=child_env, timeout=timeout)
    for line in done.stdout.splitlines():
        if line.startswith("MRESNET_RSS "):
            rss = json.loads(line[len("MRESNET_RSS "):])
            rss["step"] = rss["peak"] - rss["before"]
            return rss
    raise RuntimeError(f"the child process for {factory!r} failed (exit {done.returncode}):\n"
                       f"{done.stderr[-2000:]}")


_FORK_SERVER = textwrap.dedent(
    """
    import importlib, json, os, sys

    def status(field):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    spec, calls, prepare = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    module, _, name = spec.partition(":")
    factory = getattr(importlib.import_module(module), name)
    if prepare is not None:
        prepare_module, _, prepare_name = prepare[0].partition(":")
        getattr(importlib.import_module(prepare_module), prepare_name)(**prepare[1])
    sys.stdout.flush()
    for kwargs in calls:
        pid = os.fork()
        if pid == 0:  # the child: one step, nothing of the other steps in its heap
            code = 1
            try:
                step = factory(**kwargs)
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")  # Linux >= 4.0: VmHWM reset to the current RSS
                before = status("VmRSS")
                step()
                peak = status("VmHWM")
                print("MRESNET_RSS " + json.dumps({"before": before, "peak": peak, "method": "VmHWM (forked)"}))
                code = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, wait_status = os.waitpid(pid, 0)
        if wait_status != 0:
            print("MRESNET_RSS_FAILED " + json.dumps(kwargs))
            sys.stdout.flush()
    """
)


def peak_rss_in_forked_processes(factory: str, calls: Iterable[dict], *, prepare: str | None = None,
                                 prepare_kwargs: dict | None = None, env: dict | None = None,
                                 timeout: float | None = 600) -> list:
    """:func:`peak_rss_in_fresh_process` for several steps at the cost of one interpreter start.

    A fresh Python process (the current environment plus ``env``, read at its start, so
    allocator settings such as ``MALLOC_MMAP_THRESHOLD_`` hold in every child) imports
    the factory's module and runs ``prepare(**prepare_kwargs)`` if given (``"module:function"``:
    a warm-up every step would otherwise repeat, such as torch's first-use initialisation);
    then, one at a time, a child forked from it runs ``factory(**kwargs)``, resets its
    high-water mark and runs the step. Each child starts from the same prepared heap and
    never holds another step's memory; only importing and preparing are shared. Returns
    one dict per call, in order, like :func:`peak_rss_in_fresh_process` (method
    "VmHWM (forked)"). A forked child's RSS counts only the pages it has touched itself
    (its page tables start without the libraries' pages), so its ``before`` is lower than
    a fresh process's, and a step that runs code the child has not run yet counts those
    pages too: let the factory run a warm-up of its own (cheap once ``prepare`` has done
    the first-use work). Linux only (``fork`` and ``/proc/self/clear_refs``); elsewhere each call
    runs in its own fresh process (``prepare`` is then not run). Neither the import nor
    ``prepare`` may start threads (an OpenMP pool does not survive ``fork``): prepare
    with one torch thread.
    """
    calls = [dict(c) for c in calls]
    if not sys.platform.startswith("linux"):
        return [peak_rss_in_fresh_process(factory, c, env=env, timeout=timeout) for c in calls]
    prep = None if prepare is None else [prepare, dict(prepare_kwargs or {})]
    cmd = [sys.executable, "-c", _FORK_SERVER, factory, json.dumps(calls), json.dumps(prep)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env or {})),
                          timeout=timeout)
    results = []
    for line in done.stdout.splitlines():
        if line.startswith("MRESNET_RSS_FAILED "):
            raise RuntimeError(f"the forked child for {factory!r} with {line.split(' ', 1)[1]} failed:\n"
                               f"{done.stderr[-2000:]}")
        if line.startswith("MRESNET_RSS "):
            rss = json.loads(line[len("MRESNET_RSS "):])
            rss["step"] = rss["peak"] - rss["before"]
            results.append(rss)
    if done.returncode != 0 or len(results) != len(calls):
        raise RuntimeError(f"the fork server for {factory!r} failed (exit {done.returncode}, "
                           f"{len(results)} of {len(calls)} steps measured):\n{done.stderr[-2000:]}")
    return results


def allocation_step(nbytes: int) -> Callable[[], float]:
    """A step that allocates and fills ``nbytes`` of tensor memory (a calibration).

    ``peak_rss_in_fresh_process("mresnet_core.memory:allocation_step", {"nbytes": n})``
    should report a step of about ``n`` bytes. The same step runs once at 4 KiB before
    it is returned: a forked child would otherwise count the library pages its first
    ``ones``/``sum`` touches (tens of MiB) as the step's.
    """
    def step(n: int = nbytes) -> float:
        return float(torch.ones(n // 4, dtype=torch.float32).sum())
    step(4096)
    return step
