# Sourced by run_all.sh and run_tests.sh: make sure a Python environment with this
# project (and its notebook/test extras) is active, creating ./.venv on a fresh machine.
# Sets $PY to the interpreter to use.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_have() { "$1" -c 'import mresnet_core, papermill, nbval, jupytext, torchvision' >/dev/null 2>&1; }
if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && _have python; then
    PY="$(command -v python)"
elif [ -x "$_root/.venv/bin/python" ] && _have "$_root/.venv/bin/python" \
     && "$_root/.venv/bin/python" -c "import mresnet_core, os, sys; sys.exit(os.path.dirname(os.path.dirname(mresnet_core.__file__)) != '$_root')" ; then
    PY="$_root/.venv/bin/python"
else
    echo "[setup] creating $_root/.venv and installing the project (first run: a few minutes)" >&2
    [ -x "$_root/.venv/bin/python" ] || python3 -m venv "$_root/.venv"
    "$_root/.venv/bin/python" -m pip install -q --upgrade pip >&2
    "$_root/.venv/bin/python" -m pip install -q -e "$_root[notebooks,test]" >&2
    PY="$_root/.venv/bin/python"
fi
export PY
