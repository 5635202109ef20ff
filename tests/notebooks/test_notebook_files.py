"""Static checks of the committed notebooks; nbval (--nbval-lax) re-executes them.

A committed notebook must be executed top to bottom in one run (quick profile), free of
errors and stderr, have a papermill ``parameters`` cell, show its figures inline, build
its "paper vs this run" table with ``common.paper_vs_this_run`` (which accepts computed
numbers only as this run's values), check its claims with ``common.check_claims`` in a
cell that nbval compares, and match its jupytext percent-script pair.
"""
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ids = [p.stem for p in NOTEBOOKS]


def load(path):
    return nbformat.read(path, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_executed_in_order_in_one_run(path):
    counts = [c.execution_count for c in code_cells(load(path)) if c.source.strip()]
    assert counts and None not in counts, f"{path.name} has unexecuted cells: run it (run_all.sh) before committing"
    assert counts == list(range(counts[0], counts[0] + len(counts))), \
        f"{path.name} was not executed top to bottom in one run: {counts}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_no_errors_or_stderr(path):
    for cell in code_cells(load(path)):
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{path.name}: error output in cell\n{cell.source[:200]}"
            assert not (out.output_type == "stream" and out.name == "stderr"), \
                f"{path.name}: stderr output {out.text[:300]!r} in cell\n{cell.source[:200]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_conventions(path):
    nb = load(path)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.lstrip().startswith("#"), \
        f"{path.name}: the first cell must be a markdown title cell"
    tagged = [c for c in code_cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters' for papermill"
    text = "\n".join(c.source for c in nb.cells)
    assert "save_figure(" in text, f"{path.name}: figures must be saved with mresnet_core.plotting.save_figure"
    images = [o for c in code_cells(nb) for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: no figure is shown inline"
    outputs = "\n".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                        + str(o.get("data", {}).get("text/html", ""))
                        for c in code_cells(nb) for o in c.get("outputs", []))
    sources = [c.source for c in code_cells(nb)]
    assert any("paper_vs_this_run(" in src for src in sources), \
        f"{path.name}: needs a results table built by common.paper_vs_this_run (computed 'this run' values)"
    assert "paper" in outputs.lower() and "this run" in outputs.lower(), \
        f"{path.name}: its executed outputs must show the paper next to what this run measured"
    checked = [src for src in sources if src.lstrip().startswith("# NBVAL_CHECK_OUTPUT")]
    assert any("check_claims(" in src for src in checked), \
        f"{path.name}: its claims must be checked by common.check_claims in a '# NBVAL_CHECK_OUTPUT' cell"
    assert "<Figure size" not in outputs and "0x7f" not in outputs, \
        f"{path.name}: outputs must not contain Figure reprs or memory addresses"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_jupytext_pair_in_sync(path):
    script = path.with_suffix(".py")
    assert script.exists(), f"{path.name} has no jupytext pair: jupytext --set-formats ipynb,py:percent {path}"
    paired = jupytext.read(script)
    nb = load(path)
    mine = [(c.cell_type, c.source.strip()) for c in nb.cells]
    theirs = [(c.cell_type, c.source.strip()) for c in paired.cells]
    assert mine == theirs, f"{path.name} and {script.name} differ: run jupytext --sync {path}"
