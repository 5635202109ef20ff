#!/usr/bin/env bash
# The whole test suite: unit tests and the notebook regression tests (nbval).
# Sets up ./.venv on first use. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
export MPLBACKEND=Agg
exec "$PY" -m pytest "$@"
