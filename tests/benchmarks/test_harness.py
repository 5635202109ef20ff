"""The benchmark harness runs end to end (``--smoke``): fresh processes, every contender,
CSV and JSON with machine, torch version and thread count, the printed ratio table."""
import csv
import json
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
    contenders = {"ordinary", "checkpoint", "reference", "exact", "auto"}
    for workload in ("toy", "transformer"):
        mine = {r["contender"]: r for r in rows if r["workload"] == workload}
        assert set(mine) == contenders, workload
        for name in ("ordinary", "checkpoint", "exact", "auto"):  # ours and torch's never fail
            assert mine[name]["status"] == "ok", (workload, name, mine[name]["error"])
            assert float(mine[name]["whole_step_bytes"]) > 0 and float(mine[name]["time_s"]) > 0
            assert mine[name]["threads"] == "1"
        assert float(mine["ordinary"]["whole_step_ratio"]) == 1.0
        # the reference package is optional and may fail: then the error is recorded
        ref = mine["reference"]
        assert ref["status"] == "ok" or ref["error"]
    assert "1 thread(s)" in done.stdout and "exact whole-step" in done.stdout
