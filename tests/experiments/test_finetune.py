"""experiments.finetune: the two models, BatchNorm recalibration, the fine-tuning loop's
records and the time to a target accuracy."""
import math

import pytest
import torch

from mresnet_core.data import load_data
from mresnet_core.experiments import finetune as ft
from mresnet_core.models import build_model, momentum_stacks


def pretrained():
    torch.manual_seed(0)
    return build_model("resnet50", 5, width=2)


def test_both_models_share_the_weights_and_a_seeded_head():
    models = ft.both_models(pretrained(), 0.9, 2, depth=50, seed=1)
    res, mom = models["resnet50"], models["mresnet50"]
    assert res.fc.out_features == 2
    for a, b in zip(res.parameters(), mom.parameters(), strict=True):
        assert torch.equal(a, b) and a is not b
    assert all(str(s.memory_efficient) == "exact" for s in momentum_stacks(mom))
    again = ft.both_models(pretrained(), 0.9, 2, depth=50, seed=1)["resnet50"]
    assert torch.equal(again.fc.weight, res.fc.weight)


def test_recalibrated_statistics_are_those_of_the_new_images():
    model = pretrained()
    data = load_data("digits", image_size=8, augment=False, train_images=40)
    ft.recalibrate_batchnorm(model, data.train, batch_size=40)  # one batch: the exact statistics
    x = torch.stack([data.train[i][0] for i in range(len(data.train))])
    with torch.no_grad():
        first = model.conv1(x)  # what the first BatchNorm sees, computed independently
    assert torch.allclose(model.bn1.running_mean, first.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model.bn1.running_var, first.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert model.bn1.momentum == 0.1 and model.training


def test_finetune_records_samples_seconds_and_accuracy():
    data, _ = ft.finetuning_data("digits", [5, 6], train_images=20, test_images=10, image_size=8)
    model = ft.both_models(pretrained(), 0.9, 2, depth=50)["mresnet50"]
    records = ft.finetune(model, data, 6, epochs=2, lr=0.01, eval_every=8)
    samples = [r["samples"] for r in records]
    # batches of 6, 6, 6, 2 per epoch: evaluated at the first step at or past 8, 16, 24, ... and at the end
    assert samples == [12, 18, 26, 32, 40]
    seconds = [r["seconds"] for r in records]
    assert all(b > a for a, b in zip(seconds, seconds[1:])) and seconds[0] > 0
    assert all(r["test_acc"] in {0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0}
               for r in records)


def test_time_to_a_target_and_the_median_that_counts_never_as_latest():
    rows = ([{"model": "a", "seed": 0, "batch": 2, "samples": s, "seconds": s / 10, "test_acc": acc}
             for s, acc in ((10, 50.0), (20, 85.0), (30, 70.0), (40, 90.0))]
            + [{"model": "b", "seed": 0, "batch": 4, "samples": s, "seconds": s / 5, "test_acc": 60.0}
               for s in (12, 24)])
    a, b = ft.time_to(rows, 80.0)
    assert (a["samples to target"], a["seconds to target"], a["final accuracy"], a["best accuracy"]) == (20, 2, 90, 90)
    assert a["seconds per sample"] == pytest.approx(0.1) and a["mean |change|"] == pytest.approx(70 / 3)
    assert math.isnan(b["samples to target"]) and b["batch"] == 4
    assert ft.median_or_never([3.0, math.nan, 1.0]) == 3.0
    assert ft.median_or_never([math.nan, math.nan, 1.0]) == math.inf
    assert ft.median_or_never([1.0, 2.0]) == 1.5 and math.isnan(ft.median_or_never([]))


def test_seconds_per_sample_is_a_positive_time():
    images = torch.randn(4, 3, 8, 8)
    assert 0 < ft.seconds_per_sample(pretrained(), images, torch.tensor([0, 1, 2, 3]), 4, repeats=1) < 10
