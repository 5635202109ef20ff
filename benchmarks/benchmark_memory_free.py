"""Kept for the commands quoted elsewhere: runs the benchmark harness (``harness.py``) on
the toy stack and the converted ResNet-18, the comparison this script used to make.

    python benchmarks/benchmark_memory_free.py [--quick] [harness options]

See ``benchmarks/README.md``; ``harness.py`` is the benchmark.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import main  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a.startswith("--workloads") for a in argv):
        argv += ["--workloads", "toy,resnet18"]
    sys.exit(main(argv))
