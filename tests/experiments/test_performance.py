"""Notebook helpers for the benchmark: the DataFrame runner and the ratio plot."""
import json
import os
import subprocess
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from mresnet_core.experiments import performance

matplotlib.use("Agg")


def fake_rows():
    rows = []
    for depth in (8, 16, 64):
        for name, t, m in (("ordinary", 1.0, 1.0), ("checkpoint", 1.3, 0.5), ("exact", 1.4, 0.3),
                           ("auto", 1.2, 0.4)):
            rows.append(dict(workload="toy", size=depth, contender=name, status="ok", time_ratio=t,
                             whole_step_ratio=m, threads=2))
        rows.append(dict(workload="toy", size=depth, contender="reference", status="failed",
                         time_ratio=None, whole_step_ratio=None, threads=2, error="ImportError"))
    return pd.DataFrame(rows)


def test_plot_ratios_draws_every_contender_that_ran():
    fig = performance.plot_ratios(fake_rows())
    time_ax, mem_ax = fig.axes
    assert len(time_ax.lines) == 1 + 4  # the 1.0 guide and four contenders
    assert "failed: reference" in fig._suptitle.get_text() and "2 thread(s)" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="no rows for workload"):
        performance.plot_ratios(fake_rows(), workload="resnet50")


def test_run_benchmark_checks_the_profile():
    with pytest.raises(ValueError, match="profile must be"):
        performance.run_benchmark("huge")
    assert performance.harness_path().name == "harness.py"


def test_run_benchmark_measures_the_package_this_process_imported(monkeypatch, tmp_path):
    """The harness gets the folder of the imported mresnet_core first on its PYTHONPATH (a
    patched copy in the trip tests), then the caller's PYTHONPATH, then this checkout."""
    seen = {}

    def fake_run(cmd, env, **kwargs):
        seen["paths"], seen["cmd"] = env["PYTHONPATH"].split(os.pathsep), cmd
        (tmp_path / "results.json").write_text(json.dumps({"rows": []}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(performance.subprocess, "run", fake_run)
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    performance.run_benchmark("smoke", out=tmp_path, repeats=2, contenders=["original", "exact"])
    imported = str(Path(performance.__file__).resolve().parents[2])
    assert seen["paths"][:2] == [imported, "/somewhere/else"]
    assert seen["cmd"][-4:] == ["--contenders", "original,exact", "--repeats", "2"]


def test_a_contender_that_fits_no_batch_leaves_empty_columns(monkeypatch, tmp_path):
    """Figure 7's rows of contenders that fit no batch in the budget carry no time or
    memory (the harness writes only what it measured): the columns the notebook shows
    still exist, empty (a budget below every contender's batch 1 crashed notebook 13)."""
    def fake_run(cmd, env, **kwargs):
        rows = [dict(workload="deep", size=1202, contender=c, status="ok", largest_batch=0) for c in ("original", "exact")]
        (tmp_path / "results.json").write_text(json.dumps({"rows": rows}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(performance.subprocess, "run", fake_run)
    df = performance.run_benchmark("figure7", out=tmp_path, sizes=[1202], budget_mib=16)
    shown = ["contender", "largest_batch", "batch_ratio", "batch_vs_checkpoint", "sample_time_s",
             "whole_step_bytes", "first_step_bytes", "later_step_bytes", "modes", "status"]
    assert df[shown]["sample_time_s"].isna().all() and list(df["largest_batch"]) == [0, 0]


@pytest.mark.benchmark
def test_run_benchmark_smoke_returns_a_dataframe(tmp_path):
    df = performance.run_benchmark("smoke", threads=1, workloads=["toy"], out=tmp_path)
    assert set(df["contender"]) == set(performance.LABELS)
    assert (tmp_path / "results.csv").is_file()
    fig = performance.plot_ratios(df)
    assert len(fig.axes) == 2


def test_the_documented_columns_are_those_the_harness_writes(load_script):
    harness = load_script("benchmarks/harness.py")
    documented = performance.COLUMNS + performance.FIGURE7_COLUMNS
    assert sorted(documented) == sorted(harness.FIELDS + ["peaks"])  # peaks: JSON only, per batch tried
    for column in documented:  # and run_benchmark's docstring names each of them
        assert column in performance.run_benchmark.__doc__, column
