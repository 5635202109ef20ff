"""experiments.batch_memory: the measured largest batch, Eq. 2 written out by hand, the
gradient check against it, and the accuracy of k memory-free stacks."""
import copy

import pytest
import torch
import torch.nn.functional as F

from mresnet_core import to_momentumnet
from mresnet_core.exact import rounded_gamma
from mresnet_core.experiments import batch_memory as bm
from mresnet_core.memory import training_step_memory
from mresnet_core.models import build_deep_resnet, momentum_stacks, set_gamma


def tiny_pair():
    return bm.deep_pair(2, width=2, seed=0)  # depth 26: stacks of one block per stage


def test_first_images_repeats_the_set_when_asked_for_more():
    x, y, line = bm.first_images(5, "digits", image_size=16)
    assert x.shape == (5, 3, 16, 16) and y.shape == (5,) and line.startswith("digits")
    many, labels, _ = bm.first_images(2000, "digits", image_size=16)  # 1347 training digits
    assert torch.equal(many[1347], many[0]) and torch.equal(labels[1347 + 4], labels[4])


def test_largest_batch_is_measured_with_the_batch_after_it():
    images, labels, _ = bm.first_images(64, "digits", image_size=16)
    model = tiny_pair()["mresnet26"]
    probe = copy.deepcopy(model)
    probe.train()
    F.cross_entropy(probe(images[:1]), labels[:1]).backward()

    def peak(b):  # an independent measurement, the way the module measures (first step at b)
        return training_step_memory(probe, images[:b], loss=lambda out: F.cross_entropy(out, labels[:b]),
                                    warmup=0).whole_step

    budget = (peak(10) + peak(11)) / 2  # between two batches: the answer is 10
    largest, rows = bm.largest_batch_within(model, images, labels, budget, batches=[2, 4])
    assert largest == 10
    measured = {r["batch"]: r for r in rows}
    assert {2, 4, 10, 11} <= set(measured)
    assert measured[10]["fits"] and not measured[11]["fits"]
    assert measured[10]["whole_step"] == peak(10)
    assert not any(r["out_of_memory"] or r["capped"] for r in rows)


def test_a_batch_cap_that_fits_stops_the_search():
    images, labels, _ = bm.first_images(8, "digits", image_size=16)
    largest, rows = bm.largest_batch_within(tiny_pair()["mresnet26"], images, labels, 2**30, max_batch=8)
    assert largest == 8 and [r["batch"] for r in rows] == [8] and rows[0]["capped"]


def test_memory_vs_batch_has_a_row_per_model_and_batch():
    images, labels, _ = bm.first_images(16, "digits", image_size=16)
    rows, largest = bm.memory_vs_batch(tiny_pair(), images, labels, 2**30, batches=[4, 8], max_batch=16)
    assert largest == {"resnet26": 16, "mresnet26": 16}
    assert sorted((r["model"], r["batch"]) for r in rows) == sorted(
        (m, b) for m in ("resnet26", "mresnet26") for b in (4, 8, 16))
    assert all(r["whole_step"] >= r["activations"] > 0 for r in rows)


def test_written_out_is_the_converted_forward_and_at_gamma_0_the_resnet():
    torch.manual_seed(0)
    base = build_deep_resnet(2, width=2).double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    converted = to_momentumnet(copy.deepcopy(base), 0.9, memory_efficient=False).eval()
    with torch.no_grad():
        assert bm.relative(bm.written_out(converted, x, rounded_gamma(0.9)), converted(x)) < 1e-12
        assert bm.relative(bm.written_out(converted, x, 0.0), base(x)) < 1e-12
        assert bm.relative(bm.written_out(converted, x, 0.9), base(x)) > 1e-3  # momentum changes the function
    assert rounded_gamma(0.9) == 58982 / 2**16


def test_gradient_check_passes_exact_inversion_and_sees_another_network():
    images, labels, _ = bm.first_images(2, "digits", image_size=16)
    free = bm.with_memory_free_stacks(34, 4, 10, width=2, gamma=0.9, seed=0)
    good = bm.gradient_check(free, images, labels, 0.9)
    assert good["loss"] < 1e-12 and good["gradients"] < 1e-9 and 0 < good["stack share of the gradient norm"] < 1
    set_gamma(free, 0.5)  # the model no longer computes Eq. 2 at the gamma it is checked at
    assert bm.gradient_check(free, images, labels, 0.9)["gradients"] > 1e-3


def test_k_longest_stacks_memory_free_from_the_same_weights():
    models = [bm.with_memory_free_stacks(34, k, 10, width=2, gamma=0.9, seed=3) for k in (0, 1, 4)]
    lengths = [[len(s.functions) for s in momentum_stacks(m)] for m in models]
    assert lengths[0] == [2, 3, 5, 2]
    free = [[str(s.memory_efficient) for s in momentum_stacks(m)] for m in models]
    assert free[0] == ["backprop"] * 4 and free[1] == ["backprop", "backprop", "exact", "backprop"]
    assert free[2] == ["exact"] * 4
    for a, b in zip(models[0].parameters(), models[2].parameters(), strict=True):
        assert torch.equal(a, b)
    wrapped = bm.with_memory_free_stacks(34, 4, 10, width=2, gamma=0.9, seed=3, dtype=torch.float64)
    assert wrapped(torch.randn(2, 3, 8, 8)).dtype == torch.float64
    with pytest.raises(ValueError, match="fewer than 5"):
        bm.with_memory_free_stacks(34, 5, 10, width=2, gamma=0.9, seed=3)


def test_the_same_training_whatever_the_memory_free_stacks_in_float64():
    rows = bm.accuracy_vs_memory_free_stages([0, 4], depth=34, batch_size=16, width=2, gamma=0.9, seed=0,
                                             dataset="digits", image_size=16, train_images=96, test_images=64,
                                             epochs=1, lr=0.05, lr_milestones=(), threads=1)
    assert [r["memory-free stacks"] for r in rows] == [0, 4]
    assert rows[0]["test accuracy"] == rows[1]["test accuracy"]
    assert rows[1]["whole_step"] < rows[0]["whole_step"]
    # the same training up to rounding: after 6 steps the weights agree far below any
    # prediction's margin (rounding differences grow about tenfold in 10 steps here)
    assert rows[0]["weights apart"] == 0.0 and 0.0 <= rows[1]["weights apart"] < 1e-9


def test_plot_draws_points_above_the_budget_as_crosses():
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    table = pd.DataFrame([
        {"model": "resnet26", "batch": 2, "whole_step": 2e6, "activations": 1e6, "fits": True, "out_of_memory": False},
        {"model": "resnet26", "batch": 4, "whole_step": 4e6, "activations": 3e6, "fits": False, "out_of_memory": False},
        {"model": "resnet26", "batch": 8, "whole_step": None, "activations": None, "fits": False,
         "out_of_memory": True},
        {"model": "mresnet26", "batch": 2, "whole_step": 1e6, "activations": 5e5, "fits": True,
         "out_of_memory": False}])
    fig = bm.plot_memory(table, 3e6, {"resnet26": 2, "mresnet26": 2})
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "resnet26: out of memory" in labels
    crosses = [line for line in fig.axes[0].get_lines() if line.get_marker() == "x" and len(line.get_xdata())]
    assert [list(line.get_xdata()) for line in crosses] == [[4]]
