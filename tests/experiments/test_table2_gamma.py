"""The shared image recipe (experiments.images), Table 2's statistics (table2) and Figure 6's
gamma experiments (gamma_robustness), on a tiny digits recipe."""
import copy

import pandas as pd
import pytest
import torch

from mresnet_core.data import load_data, make_loader
from mresnet_core.experiments import gamma_robustness as gr
from mresnet_core.experiments import images, table2
from mresnet_core.models import build_model, momentum_stacks
from mresnet_core.train import evaluate

TINY = images.Recipe(dataset="digits", depth=18, width=4, epochs=1, batch_size=128, lr=0.05, lr_milestones=(),
                     image_size=8, workers=0)


def test_recipe_changes_and_refusals():
    quick = images.recipe("quick")
    assert quick == images.RECIPES["quick"] and quick.dataset == "fashion-mnist"
    changed = images.recipe("quick", epochs=1, lr_milestones=[])
    assert changed.epochs == 1 and changed.lr_milestones == () and changed.width == quick.width
    with pytest.raises(ValueError, match="no field"):
        images.recipe("quick", epoch=1)
    with pytest.raises(ValueError, match="unknown recipe"):
        images.recipe("fast")


def test_table2_and_figure6_share_the_run_at_the_recipes_gamma(tmp_path, monkeypatch):
    """The notebooks ask for the Momentum ResNet (v0 = 0) at the recipe's gamma through
    different functions: one cached run serves both."""
    monkeypatch.setenv("MRESNET_RESULTS_DIR", str(tmp_path))
    rows, models = table2.accuracy_over_seeds(TINY, "digits", [0], ["Momentum ResNet, v0 = 0"], profile="quick")
    assert len(list((tmp_path / "quick").iterdir())) == 1
    trained = gr.train_at_each_gamma([TINY.gamma], TINY, profile="quick", seed=0)
    assert len(list((tmp_path / "quick").iterdir())) == 1  # loaded, not trained again
    assert images.final_accuracy(trained[TINY.gamma]) == rows[0]["test accuracy"]
    gr.train_at_each_gamma([0.0], TINY, profile="quick", seed=0)  # gamma 0: backprop, another run
    assert len(list((tmp_path / "quick").iterdir())) == 2


def test_t_interval_against_the_tabulated_quantile():
    mean, low, high = images.t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.182446305284263 * (5 / 3) ** 0.5 / 2  # t(0.975, 3 dof) * sample std / sqrt(4)
    assert mean == 2.5 and low == pytest.approx(2.5 - half) and high == pytest.approx(2.5 + half)
    assert images.t_interval([3.0])[1:] == (float("-inf"), float("inf"))


def test_gaps_pair_each_momentum_run_with_the_resnet_of_its_seed():
    runs = pd.DataFrame([{"dataset": "d", "model": m, "seed": s, "test accuracy": a}
                         for m, accs in (("ResNet", (90, 80, 85)), ("Momentum ResNet, v0 = 0", (91, 80, 87)))
                         for s, a in enumerate(accs)])
    g = table2.gaps(runs).iloc[0]
    assert g["model"] == "Momentum ResNet, v0 = 0" and g["seeds"] == 3
    mean, low, high = images.t_interval([1, 0, 2])
    assert (g["mean gap"], g["95% low"], g["95% high"]) == pytest.approx((mean, low, high))
    assert table2.gaps(runs[runs["model"] != "ResNet"]).empty


def test_gamma_test_one_leaves_only_what_lies_outside_the_stacks():
    """At gamma_test = 1 the residual functions drop out: the accuracy is that of the
    network with each stage cut down to its first block (the converted stage holds the
    first block and the momentum stack). The network is trained at gamma = 0, where its
    stacks' functions count fully."""
    model = gr.train_at_each_gamma([0.0], TINY, profile=None)[0.0].model
    accs = images.accuracy_at_gammas(model, [0.0, 1.0], TINY)
    stripped = copy.deepcopy(model)
    for i in range(1, 5):
        first, stack = getattr(stripped, f"layer{i}")
        assert stack in momentum_stacks(stripped)
        setattr(stripped, f"layer{i}", first)
    loader = make_loader(load_data("digits", image_size=8, augment=False).test, 256, train=False)
    assert accs[1.0] == evaluate(stripped, loader)[1] != accs[0.0]  # the stacks matter in this network
    assert accs[0.0] == evaluate(model, loader)[1]
    assert all(s.gamma == 0 for s in momentum_stacks(model))  # the model is untouched


def test_memory_free_gradients_match_backprop_and_the_stack_share_is_what_a_stack_fault_moves():
    torch.manual_seed(0)
    model = build_model("mresnet18", 10, width=4, gamma=0.9, memory_efficient="exact")
    x, y = images.first_test_images(TINY, 16)
    check = images.memory_free_gradient_error(model, x, y)
    assert check["relative difference"] < 1e-9 and 0.01 < check["stack share"] < 1


def test_refit_changes_a_copy_at_each_gamma(tmp_path, monkeypatch):
    monkeypatch.setenv("MRESNET_RESULTS_DIR", str(tmp_path))
    base = gr.train_at_each_gamma([0.0], TINY, profile=None)[0.0].model
    before = copy.deepcopy(base.state_dict())
    out = gr.refit_at_gammas(base, [0.5, 1.0], TINY, epochs=1, lr=0.01)
    assert set(out) == {0.5, 1.0} and all(0 <= a <= 100 for a in out.values())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert all(s.gamma == 0 for s in momentum_stacks(base))
