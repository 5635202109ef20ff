"""Table 2: test accuracy of a ResNet and its Momentum versions (v0 = 0 and v0 = f(x0))
trained with one recipe over several seeds; each Momentum ResNet's accuracy gap to the
ResNet of the same seed with its 95 % interval over seeds; how the trained momentum
networks fare at another gamma_test (whether their momentum stacks act)."""
from __future__ import annotations

from .. import sweep
from .images import Recipe, accuracy_at_gammas, final_accuracy, fit_recipe, mean_std, recipe, recipe_run, t_interval

#: Table 2 of the paper: test accuracy (%) over 10 runs, ResNet-101 on CIFAR, mean and std.
PAPER_TABLE2 = {
    "cifar10": {"Momentum ResNet, v0 = 0": (95.1, 0.13), "Momentum ResNet, v0 = f(x0)": (95.18, 0.06),
                "ResNet": (95.15, 0.12)},
    "cifar100": {"Momentum ResNet, v0 = 0": (76.39, 0.18), "Momentum ResNet, v0 = f(x0)": (76.38, 0.42),
                 "ResNet": (76.86, 0.25)},
}

#: row name -> (momentum, init_velocity)
VARIANTS = {"ResNet": (False, "zero"), "Momentum ResNet, v0 = 0": (True, "zero"),
            "Momentum ResNet, v0 = f(x0)": (True, "block")}


def accuracy_over_seeds(recipe: Recipe, dataset: str, seeds, variants, *, profile: str | None,
                        gamma_test: float | None = None, train_missing: bool = True) -> tuple[list, dict]:
    """Train (or load) every variant of ``variants`` (names of :data:`VARIANTS`) at every
    seed. Returns rows (dataset, model, seed, test accuracy, seconds and, for Momentum
    ResNets when ``gamma_test`` is given, the accuracy of the trained network evaluated at
    gamma_test) and {(variant, seed): trained model}. ``train_missing`` False: only the
    runs already finished (by the sweep launcher, :func:`sweep_runs`) are loaded; the
    others have no row."""
    rows, models = [], {}
    for variant in variants:
        momentum, v0 = VARIANTS[variant]
        for seed in seeds:
            result = fit_recipe(profile, recipe, momentum=momentum, seed=seed, init_velocity=v0, dataset=dataset,
                                train_missing=train_missing)
            if result is None:
                continue
            row = {"dataset": dataset, "model": variant, "seed": seed, "test accuracy": final_accuracy(result),
                   "seconds": sum(r["seconds"] for r in result.history)}
            if momentum and gamma_test is not None:
                row[f"at gamma_test = {gamma_test:g}"] = accuracy_at_gammas(result.model, [gamma_test], recipe,
                                                                            dataset)[gamma_test]
            rows.append(row)
            models[variant, seed] = result.model
    return rows, models


def sweep_runs(profile: str, recipe: Recipe, datasets, seeds, variants) -> list:
    """Every run of the table as a sweep run (:mod:`mresnet_core.sweep`), in the folders
    :func:`accuracy_over_seeds` reads under ``profile``."""
    return [recipe_run(profile, recipe, momentum=VARIANTS[v][0], init_velocity=VARIANTS[v][1], seed=seed,
                       dataset=dataset)
            for dataset in datasets for v in variants for seed in seeds]


def notebook_sweep(profile: str) -> list:
    """The runs of the Table 2 notebook with ``profile``'s parameters."""
    p = sweep.notebook_parameters("09_table2_accuracy", profile)
    r = recipe(p["recipe_name"], **p["recipe_changes"])
    return sweep_runs(profile, r, p["datasets"] or [r.dataset], p["seeds"], p["variants"])


def summary(table):
    """Mean and std of the test accuracy per data set and model, as a DataFrame."""
    import pandas as pd

    out = []
    for (dataset, model), part in table.groupby(["dataset", "model"], sort=False):
        mean, std = mean_std(part["test accuracy"])
        out.append({"dataset": dataset, "model": model, "mean": mean, "std": std, "runs": len(part)})
    return pd.DataFrame(out)


def gaps(table, confidence: float = 0.95):
    """Per data set and Momentum variant: the accuracy gap to the ResNet of the same seed
    (points, positive: the Momentum ResNet ahead), its mean, std and Student-t interval
    over the seeds both were trained at, as a DataFrame (empty without ResNet runs)."""
    import pandas as pd

    out = []
    for dataset, part in table.groupby("dataset", sort=False):
        resnet = part[part["model"] == "ResNet"].set_index("seed")["test accuracy"]
        for model, runs in part[part["model"] != "ResNet"].groupby("model", sort=False):
            gap = (runs.set_index("seed")["test accuracy"] - resnet).dropna()
            if gap.empty:  # no ResNet run at these seeds: nothing to compare with
                continue
            mean, low, high = t_interval(gap, confidence)
            out.append({"dataset": dataset, "model": model, "mean gap": mean, "std": mean_std(gap)[1],
                        f"{confidence:.0%} low": low, f"{confidence:.0%} high": high, "seeds": len(gap)})
    return pd.DataFrame(out, columns=["dataset", "model", "mean gap", "std", f"{confidence:.0%} low",
                                      f"{confidence:.0%} high", "seeds"])


def plot_accuracies(table, paper=PAPER_TABLE2):
    """One panel per data set: each run's accuracy (dots) and mean +- std per model, with
    the paper's ResNet-101 numbers beside them where the data set is the paper's."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ..plotting import PALETTE

    colors = dict(zip(VARIANTS, [PALETTE["resnet"], PALETTE["momentum"], PALETTE["revnet"]]))
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = table[table["dataset"] == dataset]
        models = list(dict.fromkeys(part["model"]))
        for i, model in enumerate(models):
            values = part[part["model"] == model]["test accuracy"].to_numpy()
            ax.plot(np.full(len(values), i) + np.linspace(-0.1, 0.1, len(values)), values, "o",
                    color=colors[model], alpha=0.7, label="one run (seed)" if i == 0 else None)
            mean, std = mean_std(values)
            ax.errorbar(i + 0.25, mean, yerr=std, fmt="s", color=colors[model], capsize=4,
                        label="mean +- std" if i == 0 else None)
            if dataset in paper:
                pm, ps = paper[dataset][model]
                ax.errorbar(i + 0.4, pm, yerr=ps, fmt="D", color="0.3", capsize=4,
                            label="paper (ResNet-101)" if i == 0 else None)
        seeds = part.groupby("model")["seed"].nunique().min()
        ax.set(xticks=range(len(models)), xticklabels=[m.replace("Momentum ResNet, ", "Momentum\n") for m in models],
               ylabel="test accuracy (%)", title=f"{dataset}: {seeds} seeds per model")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
