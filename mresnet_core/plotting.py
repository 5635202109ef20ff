"""One figure style for every notebook, and one way to save figures (PNG + PDF)."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

from .paths import project_root

PALETTE = {"resnet": "#4C72B0", "momentum": "#DD8452", "revnet": "#55A868", "theory": "#444444"}


def use_style() -> None:
    """Apply the project style (seaborn 'whitegrid', readable sizes)."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook", font_scale=1.0)
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight",
                                "axes.titlesize": "medium"})
    _figures_as_images_only()


def _figures_as_images_only() -> None:
    """In IPython, a figure returned by a cell shows as its image only: no
    '<Figure size ...>' text next to it (notebook outputs must not hold Figure reprs)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from matplotlib.figure import Figure

    shell.display_formatter.formatters["text/plain"].for_type(Figure, lambda fig, p, cycle: p.text(""))


def figures_dir() -> Path:
    """Where figures go: ``$MRESNET_FIGURES_DIR`` if set (the test suite points it at a
    scratch folder, so running the tests never rewrites figures/), else figures/ at
    the project root (what run_all.sh fills)."""
    override = os.environ.get("MRESNET_FIGURES_DIR")
    return Path(override) if override else project_root() / "figures"


def save_figure(fig, name: str, directory: str | Path | None = None):
    """Save ``fig`` as ``<name>.png`` and ``<name>.pdf`` and return it for inline display.

    End a notebook cell with ``save_figure(fig, "name")``: the figure is shown once.
    """
    if not name or any(c in name for c in "/\\ "):
        raise ValueError(f"figure name must be a plain file stem without spaces or slashes, got {name!r}")
    out = Path(directory) if directory is not None else figures_dir()
    out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(out / f"{name}.{ext}", metadata={"CreationDate": None} if ext == "pdf" else None)
    import matplotlib.pyplot as plt

    plt.close(fig)  # shown once, by the notebook displaying the returned figure
    return fig
