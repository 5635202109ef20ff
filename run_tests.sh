#!/usr/bin/env bash
# The whole test suite: unit tests, the notebook regression tests, and nbval over every
# notebook (slow ones included). Sets up ./.venv on first use. Extra arguments go to
# pytest, e.g. `bash run_tests.sh -m "not slow" tests` for the quick unit tests only.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
# The authors' reference package (pure Python) is compared against in the exactness
# notebook; installed without its pinned dependencies so that its cells are checked too.
"$PY" -c "import momentumnet" 2>/dev/null || "$PY" -m pip install -q "momentumnet==0.10" --no-deps >&2
export MPLBACKEND=Agg
exec "$PY" -m pytest "$@"
