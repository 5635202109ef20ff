"""The paper profile's smoke run (``run_all.sh --profile paper --smoke``): all 13
notebooks with notebooks/params/paper.yaml's settings, shrunk by smoke.yaml, on data
written here in the real on-disk formats (CIFAR-10/100 pickles, Fashion-MNIST IDX files)
and with a saved ``state_dict`` standing for the ImageNet-pretrained weights in the torch
hub cache; Table 2's and Figure 6's runs come from the sweep launcher, which the smoke
run starts before the notebooks (``python -m mresnet_core.sweep table2 --smoke --local``). It shows the paper profile's code paths run (its models, data
loaders and branches); none of its numbers is a result. torchvision's CIFAR checksum check is
bypassed only in the processes this test starts (the sitecustomize on their PYTHONPATH)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fake_data

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.slow
def test_every_notebook_runs_the_paper_profile_shrunk(tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1",
               MRESNET_RESULTS_DIR=str(tmp_path / "results"),
               MRESNET_FIGURES_DIR=str(tmp_path / "figures"))
    env.update(fake_data.write_paper_data(tmp_path / "data", tmp_path / "torch-home"))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(fake_data.CHECKSUM_BYPASS)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.pop("MRESNET_SMOKE", None)  # the runner's --smoke sets it

    # two notebooks at a time, one thread each (OMP_NUM_THREADS above): a smoke run measures nothing
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), "--profile", "paper",
                           "--smoke", "--jobs", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)
    out_dir = tmp_path / "results" / "paper-smoke"
    status = json.loads((out_dir / "status.json").read_text())
    failed = {stem: s["detail"] for stem, s in status.items() if s["status"] != "ok"}
    assert done.returncode == 0 and not failed, f"{failed}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert sorted(status) == NOTEBOOKS
    assert "smoke run" in done.stdout and "not results" in done.stdout

    logs = {stem: (out_dir / f"{stem}.log").read_text() for stem in NOTEBOOKS}
    # the paper profile's own paths were taken: pretrained weights from the hub cache, the
    # CIFAR loaders, Table 2's three rows, depth 1202 (Figure 7), claims printed as a smoke run
    assert logs["01_table1_dropin"].count("ImageNet-pretrained") >= 2
    assert "data: cifar10" in logs["09_table2_accuracy"] and "data: cifar100" in logs["09_table2_accuracy"]
    assert "v0 = f(x0)" in logs["09_table2_accuracy"]
    assert "cifar10" in logs["11_figure7_memory_batch"] and "1202" in logs["11_figure7_memory_batch"]
    assert "weights IMAGENET1K_V1" in logs["12_figure8_finetune"]  # Figure 8: pretrained, then hymenoptera
    assert "imagefolder hymenoptera_data" in logs["12_figure8_finetune"]
    assert all("SMOKE RUN" in logs[stem] for stem in NOTEBOOKS if "check_claims" in
               (ROOT / "notebooks" / f"{stem}.py").read_text())
    assert any((tmp_path / "figures").iterdir())  # figures went to the scratch folder, not figures/
    # Table 2's and Figure 6's runs came from the sweep launcher, run before the notebooks
    # (one trainer process per run); the notebooks (train_missing false, as in the paper
    # profile) loaded them: no checkpoint is newer than the last sweep's log
    assert "6 of 6 runs finished" in (out_dir / "sweep-table2.log").read_text()
    assert "3 of 3 runs finished" in (out_dir / "sweep-figure6.log").read_text()
    assert "runs: 6 of 6 runs finished" in logs["09_table2_accuracy"]
    assert "runs: 3 of 3 runs finished" in logs["10_figure6_gamma"]
    checkpoints = list(out_dir.glob("cifar*/checkpoint.pt"))
    assert len(checkpoints) == 6 + 2  # Figure 6's run at gamma 0.9 is Table 2's
    swept = (out_dir / "sweep-figure6.log").stat().st_mtime_ns
    assert all(c.stat().st_mtime_ns <= swept for c in checkpoints)


def parameter_names(stem: str) -> set:
    """The names the parameters cell of notebook ``stem`` (its jupytext .py) assigns."""
    import ast

    source = (ROOT / "notebooks" / f"{stem}.py").read_text()
    cell = source.split('# %% tags=["parameters"]', 1)[1].split("\n# %%", 1)[0]
    return {t.id for node in ast.parse(cell).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


@pytest.mark.parametrize("table", ["quick", "paper", "smoke"])
def test_parameter_files_name_only_notebooks_and_their_parameters(table):
    """A misspelt key would be injected by papermill as a new variable and change nothing:
    every key of the profiles and of the smoke overrides is a parameter of its notebook."""
    import yaml

    entries = yaml.safe_load((ROOT / "notebooks" / "params" / f"{table}.yaml").read_text()) or {}
    for stem, params in entries.items():
        names = set.intersection(*map(parameter_names, NOTEBOOKS)) if stem == "all" else parameter_names(stem)
        assert stem == "all" or stem in NOTEBOOKS
        assert not set(params or {}) - names, f"{table}.yaml, {stem}: not parameters: {set(params) - names}"
