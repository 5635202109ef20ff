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

