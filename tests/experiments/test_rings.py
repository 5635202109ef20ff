"""Figure 5's pieces: the ring data, the reference settings, training runs in worker
processes, and the statistics over seeds, each against an independent computation."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mresnet_core.experiments import dynamics as te


def test_rings_batch_lies_on_its_bands_with_alternating_labels():
    x, y = te.rings_batch(300, torch.Generator().manual_seed(0))
    assert x.shape == (1200, 2) and y.tolist() == [0] * 300 + [1] * 300 + [0] * 300 + [1] * 300
    radius = x.double().norm(dim=1).view(4, 300)
    for ring, r in enumerate(te.RING_RADII):
        assert (radius[ring] >= 3 * r - 1e-5).all() and (radius[ring] <= 3 * (r + 0.2) + 1e-5).all()
    angle = torch.atan2(x[:, 1], x[:, 0])
    assert angle.min() < -3.0 and angle.max() > 3.0  # all the way round


def test_rings_cuts_names_what_differs_from_the_reference():
    assert te.rings_cuts(dict(te.RINGS_REFERENCE)) == []
    assert te.rings_cuts({**te.RINGS_REFERENCE, "points_per_ring": 500, "seeds": [1, 2]}) == [
        "points_per_ring 500 (reference 2000)"]


def test_resnet_schedule_halves_then_divides_by_ten():
    factor = te.rings_lr_factor(True, 5000)
    assert [factor(s) for s in (0, 2499, 2500, 3749, 3750, 4999)] == [1.0, 1.0, 0.5, 0.5, 0.05, 0.05]
    assert {te.rings_lr_factor(False, 1500)(s) for s in (0, 1499)} == {1.0}


def test_rings_accuracy_of_the_identity_map():
    """Zero residual functions leave the points in place: the logits are the coordinates."""
    model = te.toy_network(2, 3, 0.9)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    x, y = te.rings_eval_set(50)
    expected = np.mean((x[:, 1].numpy() > x[:, 0].numpy()) == (y.numpy() == 1))
    assert te.rings_accuracy(model, x, y) == pytest.approx(expected, abs=1e-7)


def test_t_interval_against_the_t_table():
    values = [0.9, 0.95, 0.97, 0.99, 0.93]
    mean, low, high = te.t_interval(values)
    half = 2.7764451051977987 * np.std(values, ddof=1) / math.sqrt(5)  # t(0.975, 4 dof)
    assert mean == pytest.approx(0.948) and (low, high) == pytest.approx((0.948 - half, 0.948 + half))
    with pytest.raises(ValueError):
        te.t_interval([0.9])


def test_separation_summary_counts_seeds_at_or_above_the_level():
    table = pd.DataFrame({"seed": [1, 2, 3, 4], "ResNet accuracy": [0.5, 0.99, 0.7, 0.98],
                          "Momentum ResNet accuracy": [0.99, 1.0, 0.995, 0.9]}).set_index("seed")
    summary = te.separation_summary(table, 0.99)
    assert summary.loc["ResNet", "seeds separated"] == 1 and summary.loc["Momentum ResNet", "seeds separated"] == 3
    assert summary.loc["Momentum ResNet", "fraction separated"] == 0.75
    assert summary.loc["ResNet", "mean accuracy"] == pytest.approx(0.7925)
    assert summary.loc["ResNet", "min"] == 0.5 and summary.loc["Momentum ResNet", "max"] == 1.0


def _jobs(profile=None):
    common = dict(points_per_ring=20, depth=3, hidden=4, profile=profile)
    return [dict(gamma=0.9, steps=6, lr=0.1, seed=1, **common), dict(gamma=0.0, steps=8, lr=0.01, seed=2, **common),
            dict(gamma=0.0, steps=5, lr=0.01, seed=3, **common)]


def _same(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.slow
def test_runs_in_worker_processes_equal_runs_here(tmp_path, monkeypatch):
    """Spread over two spawned processes, each run gives the weights and losses it gives
    in this process; cached runs are then loaded here, unchanged."""
    monkeypatch.setenv("MRESNET_RESULTS_DIR", str(tmp_path))
    here = [te.train_rings(**job, progress=False) for job in _jobs()]
    there = te.train_rings_runs(_jobs("unit"), workers=2)
    assert len(list((tmp_path / "unit").glob("figure5_*.pt"))) == 3
    for (m1, l1), (m2, l2), job in zip(here, there, _jobs()):
        assert _same(m1, m2) and l1 == l2 and m2.gamma == pytest.approx(job["gamma"], abs=1e-4)
    again = te.train_rings_runs(_jobs("unit"), workers=2)
    assert all(_same(m1, m2) and l1 == l2 for (m1, l1), (m2, l2) in zip(here, again))


def test_rings_over_seeds_table_and_models():
    settings = dict(gamma=0.9, momentum_steps=3, momentum_lr=0.1, resnet_steps=4, resnet_lr=0.01,
                    points_per_ring=10, depth=2, hidden=4, eval_points_per_ring=25)
    table, models, nudged = te.rings_over_seeds([4, 5], nudged_seed=5, **settings)
    assert list(table.index) == [4, 5] and set(models) == {4, 5}
    x, y = te.rings_eval_set(25)
    resnet, momentum = models[5]
    assert resnet.gamma == 0 and momentum.gamma == pytest.approx(0.9, abs=1e-4)
    assert table.loc[5, "Momentum ResNet accuracy"] == te.rings_accuracy(momentum, x, y)
    assert table.loc[5, "ResNet accuracy"] == te.rings_accuracy(resnet, x, y)
    assert 0 <= table.loc[4, "ResNet folds (% of visited points)"] <= 100
    alone, _ = te.train_rings(0.9, 3, 0.1, points_per_ring=10, depth=2, hidden=4, seed=5, nudge=True,
                              progress=False)
    assert _same(nudged, alone) and not _same(nudged, momentum)
    assert te.rings_over_seeds([4], **settings).nudged is None


def test_nudge_moves_one_initial_weight_by_one_float32_step():
    plain, _ = te.train_rings(0.9, 0, 0.1, points_per_ring=5, depth=2, hidden=4, seed=3, progress=False)
    nudged, _ = te.train_rings(0.9, 0, 0.1, points_per_ring=5, depth=2, hidden=4, seed=3, nudge=True,
                               progress=False)
    a, b = plain.state_dict(), nudged.state_dict()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed == ["functions.0.0.weight", "functions.1.0.weight"]  # one weight, tied over the depth
    diff = (a[changed[0]] != b[changed[0]]).nonzero().tolist()
    assert diff == [[0, 0]]
    w = a[changed[0]][0, 0]
    assert b[changed[0]][0, 0] == torch.nextafter(w, torch.tensor(math.inf)) and b[changed[0]][0, 0] > w


def test_accuracy_plot_shows_each_seed_and_each_mean_interval():
    import matplotlib

    matplotlib.use("Agg")
    table = pd.DataFrame({"seed": [1, 2, 3], "ResNet accuracy": [0.5, 0.9, 0.7],
                          "Momentum ResNet accuracy": [0.95, 0.97, 0.93]}).set_index("seed")
    fig = te.plot_accuracy_over_seeds(table, 0.99, 0.75)
    ax = fig.axes[0]
    dots = [line for line in ax.lines if line.get_marker() == "o"]
    assert [list(d.get_ydata()) for d in dots] == [[0.5, 0.9, 0.7], [0.95, 0.97, 0.93]]
    means = sorted(c.lines[0].get_ydata()[0] for c in ax.containers if len(c.lines[0].get_ydata()))
    assert means == pytest.approx([0.7, 0.95])
