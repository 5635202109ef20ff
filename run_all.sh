#!/usr/bin/env bash
# Regenerate every figure and table of the paper: runs all notebooks with papermill.
#   bash run_all.sh                   quick profile (CPU, generated data, about 5 min)
#   bash run_all.sh --profile paper   the paper's settings (GPU and data sets needed)
#   bash run_all.sh --skip-done       continue after a failure; names select notebooks
#   bash run_all.sh --update-committed  re-execute notebooks/*.ipynb in place (before committing)
#   bash run_all.sh --profile paper --smoke  the paper profile shrunk to seconds per notebook
#                                     (notebooks/params/smoke.yaml): its code paths run, no result
# Sets up ./.venv on first use. Executed notebooks and logs: results/<profile>/.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
export PATH="$(dirname "$PY"):$PATH" MPLBACKEND=Agg
exec "$PY" scripts/run_notebooks.py "$@"
