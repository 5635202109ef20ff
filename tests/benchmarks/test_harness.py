"""The benchmark harness runs end to end (``--smoke``): fresh processes, every contender,
CSV and JSON with machine, torch version and thread count, the printed ratio table."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.benchmark
def test_smoke_run_writes_csv_json_and_table(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "harness.py"), "--smoke",
                           "--threads", "1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    info = json.loads((tmp_path / "results.json").read_text())
    assert info["threads"] == 1 and info["torch"] and info["machine"] and info["profile"] == "smoke"
    assert info["allocator"] and f"CPU allocator: {info['allocator']}" in done.stdout
    assert all(r["allocator"] == info["allocator"] for r in rows)  # each row names its own (the children's)
    contenders = {"original", "ordinary", "checkpoint", "reference", "exact", "auto"}
    ours_and_torch = ("original", "ordinary", "checkpoint", "exact", "auto")  # never fail
    for workload in ("toy", "transformer"):
        mine = {r["contender"]: r for r in rows if r["workload"] == workload}
        assert set(mine) == contenders, workload
        for name in ours_and_torch:
            r = mine[name]
            assert r["status"] == "ok", (workload, name, r["error"])
            assert float(r["whole_step_bytes"]) > 0 and float(r["time_s"]) > 0
            # the reported peak is the larger of the first step at the batch and a later one
            assert float(r["whole_step_bytes"]) == max(float(r["first_step_bytes"]), float(r["later_step_bytes"]))
            assert r["threads"] == "1"
        assert float(mine["original"]["whole_step_ratio"]) == 1.0
        # the reference package is optional and may fail: then the error is recorded
        ref = mine["reference"]
        assert ref["status"] == "ok" or ref["error"]
    # Figure 7's regime: every batch reported was measured, the next one did not fit
    fit = {r["contender"]: r for r in info["rows"] if r["workload"] == "deep"}
    assert set(fit) == contenders
    for name in ours_and_torch:
        r = fit[name]
        assert r["status"] == "ok" and r["largest_batch"] >= 1, (name, r.get("error"))
        peaks = {int(b): v for b, v in r["peaks"].items()}
        assert peaks[r["largest_batch"]] <= r["budget_bytes"] < peaks[r["largest_batch"] + 1]
        assert r["sample_time_s"] > 0
    assert fit["original"]["batch_ratio"] == 1.0
    assert "1 thread(s)" in done.stdout and "exact whole-step" in done.stdout
    assert "Figure 7 regime" in done.stdout


def test_the_allocator_of_a_run_is_named(monkeypatch, load_script):
    """The CPU time ratios depend on the allocator (benchmarks/RESULTS.md), so a run
    records which one its environment sets: a preloaded library, glibc's tunables, or
    the default."""
    harness = load_script("benchmarks/harness.py")
    for name in ("LD_PRELOAD", "GLIBC_TUNABLES", "THP_MEM_ALLOC_ENABLE",
                 *[k for k in os.environ if k.startswith("MALLOC_")]):
        monkeypatch.delenv(name, raising=False)
    assert harness.allocator() == "glibc malloc, default settings"
    monkeypatch.setenv("MALLOC_TOP_PAD_", "268435456")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "33554432")
    assert harness.allocator() == "glibc malloc, MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TOP_PAD_=268435456"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert harness.allocator().endswith("MALLOC_TOP_PAD_=268435456, THP_MEM_ALLOC_ENABLE=1")
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libfoo.so /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")
    assert harness.allocator() == "libtcmalloc_minimal.so.4 (LD_PRELOAD), THP_MEM_ALLOC_ENABLE=1"
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE")
    assert harness.allocator() == "libtcmalloc_minimal.so.4 (LD_PRELOAD)"
    assert "CPU allocator: libtcmalloc_minimal.so.4" in harness.table([], ["original"], harness.allocator())


def test_a_child_imports_the_package_first_on_pythonpath(monkeypatch, load_script):
    """A caller's PYTHONPATH (the notebook's package, a patched copy in the trip tests)
    comes before this checkout in every child, so the package measured is the caller's."""
    harness = load_script("benchmarks/harness.py")
    seen = {}

    def fake_run(cmd, env, **kwargs):
        seen["paths"] = env["PYTHONPATH"].split(os.pathsep)
        return subprocess.CompletedProcess(cmd, 0, 'HARNESS_ROWS []\n', "")

    monkeypatch.setattr(harness.subprocess, "run", fake_run)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/patched/copy", "/other"]))
    assert harness.run_in_fresh_process({"workload": "toy", "size": 8}, ["original"], "cpu", 1, 10) == []
    assert seen["paths"] == ["/patched/copy", "/other", str((ROOT / "benchmarks").resolve().parent)]
