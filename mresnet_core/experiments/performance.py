"""Speed and whole-step memory of every contender, for a notebook: run the benchmark
harness (``benchmarks/harness.py``, each configuration in a fresh process) and plot the
ratios against ordinary backprop by depth.

    df = run_benchmark("quick")          # pandas DataFrame, one row per configuration x contender
    fig = plot_ratios(df)                # time ratio and whole-step memory vs toy depth
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..plotting import project_root

#: contenders in the order the plots draw them, with their labels
LABELS = {"ordinary": "ordinary backprop", "checkpoint": "torch.utils.checkpoint (sqrt L)",
          "reference": "reference momentumnet 0.10", "exact": "ours, exact inversion",
          "auto": "ours, auto (the converter's default)"}


def harness_path() -> Path:
    """benchmarks/harness.py of this checkout (a clear error when it is absent)."""
    path = project_root() / "benchmarks" / "harness.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the benchmark harness ships with the "
                                "repository, not with the installed package")
    return path


def run_benchmark(profile: str = "quick", *, threads: int | None = None, workloads=None,
                  contenders=None, sizes=None, device: str = "cpu", out: str | Path | None = None,
                  timeout: float = 3600):
    """Run the harness (``profile`` 'smoke', 'quick' or 'full') and return its rows.

    Returns a pandas DataFrame with the columns of ``results.csv`` (workload, size,
    contender, status, time_s, whole_step_bytes, activation_bytes, gradient_bytes, the
    three ratios to ordinary backprop, modes, error, threads, device, torch, machine).
    ``workloads``, ``contenders`` and ``sizes`` (toy depths, image sizes, sequence
    lengths) filter the profile's configurations.
    ``out`` keeps the CSV/JSON (default: a temporary folder). The quick profile takes a
    few minutes on a 2-core CPU.
    """
    import pandas as pd

    if profile not in ("smoke", "quick", "full"):
        raise ValueError(f"profile must be 'smoke', 'quick' or 'full', got {profile!r}")
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
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(project_root()), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the benchmark harness failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    rows = json.loads((out / "results.json").read_text())["rows"]
    return pd.DataFrame(rows)


def plot_ratios(df, workload: str = "toy"):
    """Two panels for ``workload`` by size (toy: depth): step time / ordinary and
    whole-step peak memory (parameter gradients included) / ordinary, every contender.
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
    for ax, title in zip(axes, ("time per step / ordinary", "whole-step peak memory / ordinary")):
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
