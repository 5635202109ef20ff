"""Table 2: test accuracy of a ResNet and its Momentum versions (v0 = 0 and v0 = f(x0))
over several seeds, trained with the same recipe."""
from __future__ import annotations

from .images import final_accuracy, fit, mean_std

#: Table 2 of the paper: test accuracy (%) over 10 runs, ResNet-101 on CIFAR, mean and std.
PAPER_TABLE2 = {
    "cifar10": {"Momentum ResNet, v0 = 0": (95.1, 0.13), "Momentum ResNet, v0 = f(x0)": (95.18, 0.06),
                "ResNet": (95.15, 0.12)},
    "cifar100": {"Momentum ResNet, v0 = 0": (76.39, 0.18), "Momentum ResNet, v0 = f(x0)": (76.38, 0.42),
                 "ResNet": (76.86, 0.25)},
}

#: row name -> (model name prefix, init_velocity)
VARIANTS = {"ResNet": ("resnet", "zero"), "Momentum ResNet, v0 = 0": ("mresnet", "zero"),
            "Momentum ResNet, v0 = f(x0)": ("mresnet", "block")}


def accuracy_over_seeds(dataset: str, depth: int, seeds, *, profile: str | None, gamma: float, **settings):
    """Rows (dicts) of final test accuracy for every variant of :data:`VARIANTS` and seed.
    ``settings``: the rest of the TrainConfig (width, epochs, lr, ...)."""
    rows = []
    for variant, (prefix, v0) in VARIANTS.items():
        for seed in seeds:
            result = fit(profile, f"table2-{dataset}-{prefix}{depth}-{v0}", model=f"{prefix}{depth}",
                         dataset=dataset, seed=seed, gamma=gamma, init_velocity=v0, **settings)
            rows.append({"dataset": dataset, "model": variant, "seed": seed, "test accuracy": final_accuracy(result),
                         "seconds": sum(r["seconds"] for r in result.history)})
    return rows


def summary(table):
    """Mean and std of the test accuracy per data set and model, as a DataFrame."""
    import pandas as pd

    out = []
    for (dataset, model), part in table.groupby(["dataset", "model"], sort=False):
        mean, std = mean_std(part["test accuracy"])
        out.append({"dataset": dataset, "model": model, "mean": mean, "std": std, "runs": len(part)})
    return pd.DataFrame(out)


def plot_accuracies(table, paper=PAPER_TABLE2):
    """One panel per data set: each run's accuracy (dots) and mean +- std per model."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ..plotting import PALETTE

    colors = [PALETTE["resnet"], PALETTE["momentum"], PALETTE["revnet"]]
    datasets = list(dict.fromkeys(table["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        part = table[table["dataset"] == dataset]
        for i, (model, color) in enumerate(zip(VARIANTS, colors)):
            values = part[part["model"] == model]["test accuracy"].to_numpy()
            ax.plot(np.full(len(values), i) + np.linspace(-0.1, 0.1, len(values)), values, "o", color=color,
                    alpha=0.7, label="one run (seed)" if i == 0 else None)
            mean, std = mean_std(values)
            ax.errorbar(i + 0.25, mean, yerr=std, fmt="s", color=color, capsize=4,
                        label="mean +- std" if i == 0 else None)
            if dataset in paper:
                pm, ps = paper[dataset][model]
                ax.errorbar(i + 0.4, pm, yerr=ps, fmt="D", color="0.3", capsize=4,
                            label="paper (ResNet-101)" if i == 0 else None)
        ax.set(xticks=range(len(VARIANTS)),
               xticklabels=[m.replace("Momentum ResNet, ", "Momentum\n") for m in VARIANTS],
               ylabel="test accuracy (%)", title=f"{dataset}: {len(part) // len(VARIANTS)} seeds per model")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
