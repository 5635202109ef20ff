"""Figure 6 (top): robustness to gamma. Momentum ResNets trained at gamma_train and
evaluated at gamma_test, with and without a short refit at gamma_test. At gamma_test = 1
the residual functions drop out of the momentum stacks ((1 - gamma) f = 0, v stays v0 = 0):
only what lies outside them (stem, each stage's first block, head) still acts."""
from __future__ import annotations

import copy

from ..models import momentum_stacks, set_gamma
from .. import sweep
from .images import Recipe, final_accuracy, fit, fit_recipe, recipe, recipe_run

#: Figure 6 (top) of the paper, Momentum ResNet-101 on CIFAR-10 (read off the figure):
#: trained at gamma_test, the accuracy stays in this band (%) for every gamma ...
PAPER_FLAT_BAND = (95.0, 95.2)
#: ... and the network trained at gamma_train = 0, evaluated at gamma_test = 1 without
#: refit, falls from about 95 % to about 92.5 %: this many points lost.
PAPER_DROP_AT_ONE = 2.5


def train_at_each_gamma(gammas, recipe: Recipe, *, profile: str | None, seed: int = 0,
                        train_missing: bool = True) -> dict:
    """{gamma: TrainResult} of the recipe's Momentum ResNet (v0 = 0) trained at each gamma
    (gamma_train = gamma_test: the paper's flat curve); cached under the same names as the
    Table 2 runs (:func:`~mresnet_core.experiments.images.fit_recipe`), so the run at the
    recipe's gamma is shared with the Table 2 notebook. ``train_missing`` False: only the
    runs already finished (by the sweep launcher) are loaded; the others are left out."""
    out = {g: fit_recipe(profile, recipe, momentum=True, seed=seed, gamma=g, train_missing=train_missing)
           for g in gammas}
    return {g: result for g, result in out.items() if result is not None}


def notebook_sweep(profile: str) -> list:
    """The trainings of the Figure 6 notebook (one per gamma; the refits start from them)
    with ``profile``'s parameters."""
    p = sweep.notebook_parameters("10_figure6_gamma", profile)
    return sweep_runs(profile, recipe(p["recipe_name"], **p["recipe_changes"]), p["gammas"], p["seed"])


def sweep_runs(profile: str, recipe: Recipe, gammas, seed: int = 0) -> list:
    """:func:`train_at_each_gamma`'s runs as sweep runs (:mod:`mresnet_core.sweep`), in the
    folders it reads under ``profile``."""
    return [recipe_run(profile, recipe, momentum=True, seed=seed, gamma=g) for g in gammas]


def refit_at_gammas(model, gammas, recipe: Recipe, *, epochs: int, lr: float, seed: int = 0) -> dict:
    """{gamma_test: test accuracy (%)} after refitting a copy of ``model`` for ``epochs``
    epochs at gamma_test (constant learning rate ``lr``), its momentum stacks memory-free
    (exact inversion; gamma_test = 0 by backprop); never cached."""
    out = {}
    for g in gammas:
        probe = copy.deepcopy(model)
        set_gamma(probe, g)
        for stack in momentum_stacks(probe):
            stack.memory_efficient = "exact" if g > 0 else "backprop"
        result = fit(None, "figure6-refit", start_from=probe, data=recipe.data(), model=f"mresnet{recipe.depth}",
                     gamma=g, dataset=recipe.dataset, data_dir=recipe.data_dir, image_size=recipe.image_size,
                     train_images=recipe.train_images, test_images=recipe.test_images, width=recipe.width,
                     batch_size=recipe.batch_size, threads=recipe.threads, workers=recipe.workers, seed=seed,
                     epochs=epochs, lr=lr, lr_milestones=())
        out[g] = final_accuracy(result)
    return out


def plot_robustness(gammas, trained_at: dict, curves: dict, paper: dict | None = None):
    """Accuracy against gamma_test: trained at gamma_test, and each entry of ``curves``
    ({label: {gamma_test: accuracy}}); ``paper`` ({label: [(gamma, accuracy)]}) as points."""
    import matplotlib.pyplot as plt

    from ..plotting import PALETTE

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(gammas, [trained_at[g] for g in gammas], "o-", color=PALETTE["momentum"], lw=2,
            label="$\\gamma_{train} = \\gamma_{test}$")
    styles = [("s--", PALETTE["resnet"]), ("^-", PALETTE["revnet"]), ("v:", PALETTE["theory"])]
    for (label, values), (style, color) in zip(curves.items(), styles):
        ax.plot(list(values), list(values.values()), style, color=color, label=label)
    for label, points in (paper or {}).items():
        ax.plot(*zip(*points), "X", ms=9, color="0.3", mec="black", ls="none", label=label)
    ax.set(xlabel="$\\gamma_{test}$", ylabel="test accuracy (%)", title="robustness to $\\gamma$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
