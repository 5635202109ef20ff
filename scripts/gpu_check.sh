#!/usr/bin/env bash
# The checks that need a GPU, in one run (a few minutes on one card), for a machine with
# CUDA that this project has not run on yet:
#   1. the unit tests, where the CUDA ones (skipped on CPUs) run too;
#   2. the benchmark harness on CUDA (allocator peaks): the toy stack and ResNet-50,
#      and Figure 7's regime at depth 302 (width 64, the largest batch within 8 GiB);
#   3. one memory-free training epoch of the trainer on CUDA, with and without --amp;
#   4. the paper profile's smoke run (tests/notebooks/test_paper_smoke.py: every notebook
#      with paper.yaml's settings shrunk, on fake data files; device "auto" takes the GPU).
# Writes what it measured to $OUT (default results/gpu_check/): tests.txt, harness/,
# fit/, train*/, smoke.txt and summary.txt (the device, torch, and the harness's tables).
#   bash scripts/gpu_check.sh            # or OUT=/somewhere bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure_env.sh
OUT="${OUT:-results/gpu_check}"
mkdir -p "$OUT"
"$PY" - <<'PY' | tee "$OUT/summary.txt"
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
status=0
"$PY" -m pytest tests/core -q -p no:cacheprovider -x 2>&1 | tee "$OUT/tests.txt" | tail -3 || status=1
"$PY" benchmarks/harness.py --device cuda --workloads toy,resnet50 --sizes 64,256,32 \
    --out "$OUT/harness" | tee -a "$OUT/summary.txt" || status=1
"$PY" benchmarks/harness.py --device cuda --figure7 --sizes 302 --budget-mib 8192 \
    --out "$OUT/fit" | tee -a "$OUT/summary.txt" || status=1
rm -rf "$OUT"/train "$OUT"/train-amp  # a rerun starts the runs afresh
for amp in "" --amp; do
    "$PY" -m mresnet_core.train -m mresnet50 -g 0.9 --dataset digits --image-size 32 --epochs 1 \
        --memory exact --device cuda $amp --out "$OUT/train${amp:+-amp}" 2>&1 | tail -2 \
        | tee -a "$OUT/summary.txt" || status=1
done
"$PY" -m pytest tests/notebooks/test_paper_smoke.py -q -p no:cacheprovider 2>&1 | tee "$OUT/smoke.txt" | tail -3 \
    | tee -a "$OUT/summary.txt" || status=1
echo "gpu_check: $([ $status = 0 ] && echo passed || echo FAILED); results in $OUT" | tee -a "$OUT/summary.txt"
exit $status
