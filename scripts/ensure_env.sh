# Sourced by run_all.sh and run_tests.sh: make sure a Python environment with this
# project (and its notebook/test extras) is used, creating ./.venv on a fresh machine.
# An active virtualenv/conda env is used when it already has this checkout installed.
# Sets $PY to the interpreter to use.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_ready() {  # does interpreter $1 import everything, with mresnet_core from this checkout?
    # run from / : from the checkout, "python -" would import its mresnet_core through the
    # working directory, and an environment holding another checkout would pass
    (cd / && "$1" - "$_root") >/dev/null 2>&1 <<'PYCHECK'
import os, sys
import mresnet_core, papermill, nbval, jupytext, torchvision  # noqa: F401
here = os.path.realpath(os.path.dirname(os.path.dirname(mresnet_core.__file__)))
sys.exit(here != os.path.realpath(sys.argv[1]))
PYCHECK
}
if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && command -v python >/dev/null && _ready python; then
    PY="$(command -v python)"
elif [ -x "$_root/.venv/bin/python" ] && _ready "$_root/.venv/bin/python"; then
    PY="$_root/.venv/bin/python"
else
    echo "[setup] installing the project and its notebook/test tools into $_root/.venv (first run: a few minutes)" >&2
    [ -x "$_root/.venv/bin/python" ] || python3 -m venv "$_root/.venv"
    "$_root/.venv/bin/python" -m pip install -q --upgrade pip >&2
    # the versions the committed notebooks were executed with (requirements.lock); where
    # they cannot be installed (another Python or platform), pyproject.toml's ranges
    if ! "$_root/.venv/bin/python" -m pip install -q -e "$_root[notebooks,test]" -c "$_root/requirements.lock" >&2; then
        echo "[setup] the locked versions (requirements.lock) do not install here; installing the" \
             "newest allowed by pyproject.toml instead: notebook outputs may then differ" >&2
        "$_root/.venv/bin/python" -m pip install -q -e "$_root[notebooks,test]" >&2
    fi
    PY="$_root/.venv/bin/python"
    _ready "$PY" || { echo "[setup] installation failed: see the pip messages above" >&2; exit 1; }
fi
export PY
# Fashion-MNIST, the quick profile's real images (notebooks 09-12): where it is neither in
# the data folder nor installed, Debian's dataset-fashion-mnist package holds its four
# original files; installed here when apt-get can (as root), else the loader's own message
# says how to get it.
_fmnist=/usr/share/datasets/fashion-mnist
if [ ! -e "$_fmnist/train-images-idx3-ubyte.gz" ] \
   && [ ! -e "${MRESNET_DATA_DIR:-$_root/data}/fashion-mnist/FashionMNIST/raw/train-images-idx3-ubyte" ] \
   && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian's dataset-fashion-mnist (the Fashion-MNIST files, for notebooks 09-12)" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; } >&2 \
        || echo "[setup] could not install dataset-fashion-mnist; notebooks 09-12 will say how to get Fashion-MNIST" >&2
fi
