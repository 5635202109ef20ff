"""experiments.images, table2: cached runs and summaries (batch_memory: test_batch_memory.py)."""
import pandas as pd
import pytest

from mresnet_core.experiments import images, table2

TINY = dict(model="resnet18", dataset="digits", width=4, image_size=8, epochs=1, batch_size=128, lr=0.05, lr_milestones=(),
            threads=1)


def test_fit_caches_a_finished_run_and_retrains_on_a_changed_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("MRESNET_RESULTS_DIR", str(tmp_path))
    first = images.fit("quick", "tiny", **TINY)
    runs = list((tmp_path / "quick").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoint.pt").exists()
    again = images.fit("quick", "tiny", **TINY)
    assert again.history == first.history  # loaded, not retrained (seconds included)
    images.fit("quick", "tiny", **{**TINY, "seed": 1})
    assert len(list((tmp_path / "quick").iterdir())) == 2


def test_summary_and_mean_std():
    runs = pd.DataFrame([{"dataset": "d", "model": m, "seed": s, "test accuracy": a}
                         for m, accs in (("ResNet", (90, 92)), ("Momentum ResNet, v0 = 0", (91, 91)))
                         for s, a in enumerate(accs)])
    stats = table2.summary(runs).set_index("model")
    assert stats.loc["ResNet", "mean"] == 91 and stats.loc["ResNet", "std"] == pytest.approx(2 ** 0.5)
    assert stats.loc["Momentum ResNet, v0 = 0", "std"] == 0 and (stats["runs"] == 2).all()
    assert images.mean_std([3.0]) == (3.0, 0.0)



def test_a_table2_sweep_trains_the_runs_the_notebook_then_loads(tmp_path, monkeypatch):
    """The sweep launcher's trainer processes write the notebook's own cache folders: with
    train_missing=False the notebook loads a run finished that way (same history, nothing
    retrained) and leaves out the one not run, which a plain fit_recipe would train."""
    from mresnet_core import sweep

    monkeypatch.setenv("MRESNET_RESULTS_DIR", str(tmp_path))
    recipe = images.recipe("quick", dataset="digits", depth=18, width=4, image_size=8, epochs=1, batch_size=64,
                           lr_milestones=(), train_images=60, test_images=40, workers=0)
    runs = table2.sweep_runs("quick", recipe, ["digits"], [0, 1], ["Momentum ResNet, v0 = 0"])
    assert [r.name for r in runs] == ["digits-mresnet18-g0.9-v0zero-seed0", "digits-mresnet18-g0.9-v0zero-seed1"]
    assert sweep.run_local(runs[:1], ["cpu"], log=lambda line: None) == {runs[0].name: 0}
    assert sweep.collect(runs)[1] == "1 of 2 runs finished"
    trained = runs[0].out / "metrics.json"
    before = trained.read_text()
    rows, models = table2.accuracy_over_seeds(recipe, "digits", [0, 1], ["Momentum ResNet, v0 = 0"],
                                              profile="quick", train_missing=False)
    assert [r["seed"] for r in rows] == [0] and list(models) == [("Momentum ResNet, v0 = 0", 0)]
    assert rows[0]["test accuracy"] == pd.read_json(trained)["test_acc"].iloc[-1]
    assert trained.read_text() == before  # loaded, not trained again (a new training writes new seconds)
    again = images.fit_recipe("quick", recipe, momentum=True, seed=1)  # train_missing=True: trains it there
    assert again.history and sweep.collect(runs)[1] == "2 of 2 runs finished"


@pytest.mark.parametrize("name, runs", [("table2", 2 * 4), ("figure6", 4)])
def test_each_named_experiment_gives_its_notebooks_runs(name, runs, tmp_path, monkeypatch):
    """The command line's table of experiments resolves, with the quick profile's
    parameters: Table 2's two models at four seeds, Figure 6's four gammas."""
    from mresnet_core import sweep

    monkeypatch.setenv("MRESNET_RESULTS_DIR", str(tmp_path))
    found = sweep.experiment_runs(name, "quick")
    sweep.check_unique(found)
    assert len(found) == runs and all(r.out.parent == tmp_path / "quick" for r in found)
    with pytest.raises(ValueError, match="unknown experiment"):
        sweep.experiment_runs("table3", "quick")


def test_a_run_from_a_given_module_is_cached_only_with_a_key_naming_it(tmp_path, monkeypatch):
    """fit(start_from=...) trains uncached unless start_key says what built the module;
    with one, the same key loads the finished run (the module gets its trained weights),
    another key trains anew."""
    import torch

    from mresnet_core.models import build_model

    monkeypatch.setenv("MRESNET_RESULTS_DIR", str(tmp_path))

    def fresh():
        torch.manual_seed(0)
        return build_model("resnet18", 10, width=4)

    images.fit("quick", "given", start_from=fresh(), **TINY)
    assert not (tmp_path / "quick").exists()  # no key: not cached
    first = images.fit("quick", "given", start_from=fresh(), start_key={"seed": 0}, **TINY)
    again_model = fresh()
    again = images.fit("quick", "given", start_from=again_model, start_key={"seed": 0}, **TINY)
    assert again.history == first.history  # loaded, seconds included
    assert all(torch.equal(a, b) for a, b in zip(again_model.state_dict().values(), first.model.state_dict().values()))
    images.fit("quick", "given", start_from=fresh(), start_key={"seed": 1}, **TINY)
    assert len(list((tmp_path / "quick").iterdir())) == 2
