"""What every notebook shares: its set-up cell, the toy residual function, the
grid-rounded input, relative error, cached training on fresh batches, and claim checks.

Each concept exists once, here; the experiment modules and the notebooks import it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from ..paths import project_root
from ..plotting import use_style


# ---------------------------------------------------------------------- notebook set-up
def setup_notebook(threads: int | None = 1, seed: int | None = 0) -> float:
    """The set-up cell of every notebook: ``torch.set_num_threads(threads)`` (0 or None
    keeps torch's default), ``torch.manual_seed(seed)``, the figure style, wide pandas
    tables, and a line naming the versions and the machine the results come from.
    Returns ``time.monotonic()``, the notebook's start time."""
    if threads:
        torch.set_num_threads(int(threads))
    if seed is not None:
        torch.manual_seed(seed)
    print(environment_line())
    use_style()
    try:
        import pandas as pd

        pd.set_option("display.width", 200)
        pd.set_option("display.max_colwidth", None)
    except ImportError:  # pragma: no cover - pandas comes with the notebook extra
        pass
    return time.monotonic()


def cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else ``platform.processor()``."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def environment_line() -> str:
    """Versions (Python, torch, torchvision, numpy, mresnet_core's code version) and the
    machine (CPU, cores, torch threads, GPU): what a result printed below was produced with."""
    import platform

    import numpy
    import torchvision

    gpu = (", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
           if torch.cuda.is_available() else "none")
    return (f"ran with Python {platform.python_version()}, torch {torch.__version__}, torchvision "
            f"{torchvision.__version__}, numpy {numpy.__version__}, mresnet_core code {code_version()}; "
            f"on {cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads), GPU: {gpu}")


# ---------------------------------------------------------------------- small helpers
def relative_error(approx: torch.Tensor, truth: torch.Tensor) -> float:
    """||approx - truth|| / ||truth|| in float64; inf when approx is not finite."""
    a, t = approx.detach().to(torch.float64), truth.detach().to(torch.float64)
    if not bool(torch.isfinite(a).all()):
        return math.inf
    err = float((a - t).norm() / t.norm().clamp_min(1e-300))
    return err if math.isfinite(err) else math.inf


def toy_mlp(d: int, hidden: int = 16, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The paper's toy residual function f(x) = Linear(hidden, d)(tanh(Linear(d, hidden)(x)))."""
    return nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, d)).to(dtype)


def toy_functions(depth: int, d: int, hidden: int, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> list:
    """``depth`` independent :func:`toy_mlp` functions (PyTorch's default init from
    ``seed``), leaving the global random state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [toy_mlp(d, hidden, dtype) for _ in range(depth)]


def grid_input(shape, seed: int = 0, step_bits: int = 20, dtype: torch.dtype = torch.float32):
    """Standard normal values rounded to multiples of 2**-step_bits.

    They are representable both in float32 (|x| < 16) and in the 2**-40 fixed point, so
    the exact path's input is the float input itself and ``torch.equal`` applies.
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    return (x * 2**step_bits).round().div(2**step_bits).to(dtype)


# ---------------------------------------------------------------------- claim checks
def check_claims(measured: dict, identities: dict | None = None, reported: dict | None = None,
                 source: str = "this run") -> None:
    """Print each claim with its outcome and raise AssertionError naming the false ones.

    ``measured``: claims about what was measured in ``source`` (default: this run; a
    recorded result file read back names itself); they fail if the result does.
    ``identities``: algebra or consistency checks (identities that hold by construction,
    closed forms evaluated against themselves): printed under their own heading, so that
    they are not read as findings; they are asserted too.
    ``reported``: claims of the paper whose outcome here depends on the seeds and on the
    machine's floating-point kernels at the quick profile's size: printed as
    "reproduced" or "not reproduced here" (the numbers are printed beside them), not
    asserted; nbval pins the printed outcome, so a change either way still fails the suite.

    In a smoke run (:func:`smoke_run`) the measured claims are printed, not asserted: at
    a smoke run's sizes they mean nothing; the identities are still asserted.
    """
    smoke = smoke_run()
    if smoke:
        print("SMOKE RUN (MRESNET_SMOKE=1): sizes shrunk to exercise the code paths; nothing below is a "
              "measurement of the paper's claims. Measured and reported claims are printed, not asserted; "
              "identities are asserted.")
    groups = [(f"measured in {source}" + (" (smoke run: not asserted)" if smoke else ""), measured,
               ("ok", "FAILED"), not smoke)]
    if identities:
        groups.append(("identity / algebra checks (hold by construction)", identities, ("ok", "FAILED"), True))
    if reported:
        groups.append(("the paper's claims at this size (reported, not asserted)", reported,
                       ("reproduced", "not reproduced here"), False))
    failed = []
    for title, claims, words, asserted in groups:
        print(f"{title}:")
        for claim, ok in claims.items():
            ok = bool(ok)
            print(f"  [{words[0] if ok else words[1]}] {claim}")
            if asserted and not ok:
                failed.append(claim)
    if failed:
        raise AssertionError("claims that failed: " + "; ".join(failed))


def smoke_run() -> bool:
    """Whether this is a smoke run (``run_all.sh --smoke``, which sets MRESNET_SMOKE=1):
    the notebooks run at sizes that only show their code paths work."""
    return os.environ.get("MRESNET_SMOKE", "") not in ("", "0")


# ---------------------------------------------------------------------- cached training
def results_dir(profile: str) -> Path:
    """Where a profile's run results go: ``$MRESNET_RESULTS_DIR/<profile>`` if set (the
    test suite points it at a scratch folder), else ``results/<profile>`` at the root."""
    if not profile or any(c in profile for c in "/\\ "):
        raise ValueError(f"profile must be a plain name such as 'quick', got {profile!r}")
    base = os.environ.get("MRESNET_RESULTS_DIR")
    return (Path(base) if base else project_root() / "results") / profile


#: the files whose content a cached result depends on: the Python sources and the C
#: kernels (the CPU's default exact backend), not the compiled library built from them
SOURCE_SUFFIXES = (".py", ".c", ".h")


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """A digest of every source file of the installed ``mresnet_core`` (``SOURCE_SUFFIXES``):
    any change to the code that builds or trains a model gives another digest (and so retrains)."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in SOURCE_SUFFIXES and p.is_file()):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def checkpoint_path(profile: str, name: str, settings: dict) -> Path:
    """Cache file of a training run: ``<results_dir>/<name>-<digest>.pt``, the digest
    covering every setting and :func:`code_version`."""
    blob = json.dumps({"code": code_version(), **settings}, sort_keys=True, default=str)
    return results_dir(profile) / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}.pt"


def train_steps(model: nn.Module, make_batch: Callable[[int], tuple], loss_fn: Callable,
                optimizer: torch.optim.Optimizer, steps: int, *, scheduler=None,
                checkpoint: str | Path | None = None, desc: str = "training",
                progress: bool = True) -> list[float]:
    """Run ``steps`` optimisation steps on fresh batches; return the loss of each step.

    ``make_batch(step)`` returns (inputs, targets); ``loss_fn(model(inputs), targets)``.
    With ``checkpoint`` (see :func:`checkpoint_path`), a finished run of the same length
    is loaded instead of retrained, and the model, optimizer, scheduler and losses are
    saved when training ends.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        if saved.get("steps") == steps:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.load_state_dict(saved["scheduler"])
            return list(saved["losses"])
    model.train()
    losses = []
    # stdout, not stderr: executed notebooks must stay free of stderr output
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0, file=sys.stdout)
    for step in bar:
        inputs, targets = make_batch(step)
        loss = loss_fn(model(inputs), targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"steps": steps, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "losses": losses}, path)
    return losses


# ---------------------------------------------------------------------- paper vs this run
def paper_vs_this_run(rows: list[dict], title: str = "paper vs this run"):
    """The "paper vs this run" table of a notebook, as a pandas DataFrame.

    Each row is a dict: label columns (e.g. "claim", "model"), a "paper" entry (what the
    paper states or reports: text or number, "-" where it gives none) and one or more
    "this run: ..." entries. Those must be computed values (numbers or booleans, never
    text typed into the notebook): a TypeError says which one is not.
    """
    import numbers

    import pandas as pd

    for i, row in enumerate(rows):
        if "paper" not in row:
            raise ValueError(f"row {i} has no 'paper' entry: {row}")
        measured = {k: v for k, v in row.items() if k.startswith("this run")}
        if not measured:
            raise ValueError(f"row {i} has no 'this run: ...' entry: {row}")
        for key, value in measured.items():
            if isinstance(value, str) or not isinstance(value, (numbers.Number, bool)):
                raise TypeError(f"row {i}, {key!r}: a measured value must be a number or a boolean "
                                f"computed in this run, got {type(value).__name__} {value!r}")
    print(title)
    return pd.DataFrame(rows)


def format_this_run(table, digits: int = 6):
    """``table`` (from :func:`paper_vs_this_run`) with every float of its "this run" columns
    written with up to ``digits`` significant figures (scientific where needed: the
    notebooks round their values already), booleans and integers as they are. pandas
    shows a column that mixes floats with booleans or integers with fixed decimals, which
    prints 3.6e-07 as 0.0."""
    out = table.copy()
    for col in out.columns:
        if str(col).startswith("this run"):
            out[col] = out[col].map(lambda v: f"{v:.{digits}g}" if isinstance(v, float) else v)
    return out


def run_dir(profile: str, name: str, settings: dict) -> Path:
    """Folder of a cached run: ``<results_dir>/<name>-<digest>``, the digest covering every
    setting and :func:`code_version` (a folder version of :func:`checkpoint_path`)."""
    return checkpoint_path(profile, name, settings).with_suffix("")
