"""Where things are: the checkout, and the one data root the trainer and the notebooks share."""
from __future__ import annotations

import os
from pathlib import Path

#: environment variable naming the data root (default: data/ at the repository root)
DATA_DIR_VARIABLE = "MRESNET_DATA_DIR"


def project_root() -> Path:
    """The checkout this runs in: the nearest folder, from the working directory up,
    holding pyproject.toml and mresnet_core/ (the notebooks run in notebooks/); else
    the working directory."""
    here = Path.cwd()
    for base in (here, *here.parents):
        if (base / "pyproject.toml").exists() and (base / "mresnet_core").is_dir():
            return base
    return here


def data_root() -> Path:
    """Where data sets live unless a data_dir is given: ``$MRESNET_DATA_DIR``, else
    ``data/`` at the repository root (git-ignored), so that one download serves the
    trainer and every notebook wherever they run from. Each data set has its own
    subfolder (``data/cifar10``, ``data/fashion-mnist``, ...)."""
    value = os.environ.get(DATA_DIR_VARIABLE)
    return Path(value).expanduser() if value else project_root() / "data"


def under_data_root(path: str | Path | None) -> Path | None:
    """``path`` as given when absolute, else under :func:`data_root` (None stays None): how
    a notebook parameter names a data set's folder (the notebooks run in notebooks/, so a
    path relative to the working directory would point there)."""
    if path is None:
        return None
    path = Path(path).expanduser()
    return path if path.is_absolute() else data_root() / path
