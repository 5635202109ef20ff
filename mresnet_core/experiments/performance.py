"""Speed and whole-step memory of every contender, for a notebook: run the benchmark
harness (``benchmarks/harness.py``, each configuration in a fresh process) and plot the
ratios against the original model (ordinary backprop) by depth, and Figure 7's regime
(the largest batch each contender fits in a memory budget).

    df = run_benchmark("quick")          # pandas DataFrame, one row per configuration x contender
    fig = plot_ratios(df)                # time ratio and whole-step memory vs toy depth
    fit = run_benchmark("figure7", sizes=[302], budget_mib=64)
    fig = plot_largest_batch(fit)        # largest batch within the budget, per contender
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..paths import project_root
from .batch_memory import device_of

#: contenders in the order the plots draw them, with their labels
LABELS = {"original": "original model, ordinary backprop", "ordinary": "ours, ordinary backprop",
          "checkpoint": "torch.utils.checkpoint (sqrt L)",
          "reference": "reference momentumnet 0.10", "exact": "ours, exact inversion",
          "auto": "ours, auto (the converter's default)"}


def harness_path() -> Path:
    """benchmarks/harness.py of this checkout (a clear error when it is absent)."""
    path = project_root() / "benchmarks" / "harness.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the benchmark harness ships with the "
                                "repository, not with the installed package")
    return path


#: the columns of :func:`run_benchmark`'s rows (those of the harness's results.json)
COLUMNS = ["workload", "size", "contender", "status", "time_s", "whole_step_bytes", "activation_bytes",
           "gradient_bytes", "first_step_bytes", "later_step_bytes", "time_ratio", "whole_step_ratio",
           "activation_ratio", "modes", "error", "threads", "device", "torch", "machine", "allocator"]
FIGURE7_COLUMNS = ["largest_batch", "batch_ratio", "batch_vs_checkpoint", "sample_time_s", "budget_bytes", "peaks"]


def run_benchmark(profile: str = "quick", *, threads: int | None = None, workloads=None,
                  contenders=None, sizes=None, device: str = "cpu", out: str | Path | None = None,
                  timeout: float = 3600, budget_mib: float | None = None, repeats: int | None = None):
    """Run the harness (``profile`` 'smoke', 'quick', 'full' or 'figure7') and return its rows.

    Returns a pandas DataFrame with the columns of ``results.json`` (workload, size,
    contender, status, time_s, whole_step_bytes, activation_bytes, gradient_bytes,
    first_step_bytes, later_step_bytes, the ratios to the original model (time_ratio,
    whole_step_ratio, activation_ratio), modes, error, threads, device, torch, machine,
    allocator (the CPU allocator and its settings, which move wide stacks' CPU times);
    for 'figure7' also largest_batch, batch_ratio, batch_vs_checkpoint, sample_time_s,
    budget_bytes, peaks).
    ``workloads``, ``contenders`` and ``sizes`` (toy depths, image sizes, sequence
    lengths, network depths) filter the profile's configurations; ``budget_mib`` sets
    the memory budget of the 'figure7' rows (None: the harness's, 256 MiB on the CPU and
    32 GiB on a GPU); ``device`` 'cpu', 'cuda' or 'auto' (CUDA where available);
    ``repeats`` the number of timed steps per contender (default: the profile's).
    ``out`` keeps the CSV/JSON (default: a temporary folder). The quick profile takes a
    few minutes on a 2-core CPU.
    """
    import pandas as pd

    if profile not in ("smoke", "quick", "full", "figure7"):
        raise ValueError(f"profile must be 'smoke', 'quick', 'full' or 'figure7', got {profile!r}")
    device = device_of(device).type  # "auto": a GPU where there is one (the harness reads its allocator)
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="mresnet-bench-"))
    cmd = [sys.executable, str(harness_path()), "--out", str(out), "--device", device]
    if profile != "full":
        cmd.append(f"--{profile}")
    if threads:
        cmd += ["--threads", str(int(threads))]
    if workloads:
        cmd += ["--workloads", ",".join(workloads)]
    if contenders:
        cmd += ["--contenders", ",".join(contenders)]
    if sizes:
        cmd += ["--sizes", ",".join(str(int(s)) for s in sizes)]
    if budget_mib:
        cmd += ["--budget-mib", str(float(budget_mib))]
    if repeats:
        cmd += ["--repeats", str(int(repeats))]
    # the harness measures the mresnet_core this process imported (a patched copy first on
    # PYTHONPATH included), then this checkout's
    imported = Path(__file__).resolve().parents[2]
    paths = [str(imported), *(p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p), str(project_root())]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the benchmark harness failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    rows = json.loads((out / "results.json").read_text())["rows"]
    df = pd.DataFrame(rows)
    # a row carries only what was measured (a contender that fits no batch in the budget
    # has no time or memory): every documented column exists, empty where nothing was
    columns = COLUMNS + (FIGURE7_COLUMNS if profile == "figure7" else [])
    return df.assign(**{c: None for c in columns if c not in df.columns})


def recorded_figure7(path: str | Path | None = None):
    """The committed full Figure 7 run (``benchmarks/figure7-cpu.json``, written by
    ``harness.py --figure7``) as a DataFrame; machine, date, torch and threads in ``attrs``."""
    import pandas as pd

    path = Path(path) if path is not None else project_root() / "benchmarks" / "figure7-cpu.json"
    info = json.loads(path.read_text())
    df = pd.DataFrame(info["rows"])
    df.attrs.update({k: info.get(k) for k in ("date", "machine", "torch", "threads", "profile")})
    return df


def plot_ratios(df, workload: str = "toy"):
    """Two panels for ``workload`` by size (toy: depth): step time / original and
    whole-step peak memory (parameter gradients included) / original, every contender.
    Failed contenders are left out of the lines and named in the title. Returns the figure."""
    import matplotlib.pyplot as plt

    data = df[df["workload"] == workload]
    if data.empty:
        raise ValueError(f"no rows for workload {workload!r}; have {sorted(set(df['workload']))}")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    failed = []
    for name, label in LABELS.items():
        rows = data[(data["contender"] == name)].sort_values("size")
        ok = rows[rows["status"] == "ok"]
        if len(ok) < len(rows):
            failed.append(name)
        if ok.empty:
            continue
        for ax, col in zip(axes, ("time_ratio", "whole_step_ratio")):
            ax.plot(ok["size"], ok[col], marker="o", label=label)
    threads = data["threads"].dropna().iloc[0] if "threads" in data and data["threads"].notna().any() else "?"
    xlabel = "depth" if workload == "toy" else "size"
    for ax, title in zip(axes, ("time per step / original", "whole-step peak memory / original")):
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_title(title)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    note = f" (failed: {', '.join(failed)})" if failed else ""
    fig.suptitle(f"{workload}: one training step, {threads} thread(s){note}")
    fig.tight_layout()
    return fig


def plot_largest_batch(df):
    """Figure 7's regime: the largest batch each contender fits in the budget (bars, log
    scale) and its time per sample there. Returns the figure."""
    import matplotlib.pyplot as plt

    data = df[df["budget_bytes"].notna()] if "budget_bytes" in df else df.iloc[0:0]
    if data.empty:
        raise ValueError("no Figure 7 rows (run_benchmark('figure7', ...))")
    ok = data[(data["status"] == "ok") & (data["largest_batch"] > 0)]
    names = [n for n in LABELS if n in set(ok["contender"])]
    ok = ok.set_index("contender").loc[names]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    bars = axes[0].barh([LABELS[n] for n in names], ok["largest_batch"], color="C0")
    axes[0].bar_label(bars, padding=2, fontsize=8)
    axes[0].set_xscale("log", base=2)
    axes[0].set_xlim(1, 2 * ok["largest_batch"].max())
    axes[0].set_xlabel("largest batch within the budget")
    axes[1].barh([LABELS[n] for n in names], ok["sample_time_s"] * 1e3, color="C1")
    axes[1].set_xlabel("ms per sample at that batch")
    axes[1].set_yticklabels([])
    first = data.iloc[0]
    fig.suptitle(f"depth {first['size']}, budget {first['budget_bytes'] / 2**20:.0f} MiB, "
                 f"{first.get('device', '?')}, {first.get('threads', '?')} thread(s)")
    fig.tight_layout()
    return fig
