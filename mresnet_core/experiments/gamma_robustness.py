"""Figure 6 (top): robustness to gamma. Momentum ResNets trained at gamma_train and
evaluated at gamma_test, with and without a short refit at gamma_test."""
from __future__ import annotations

import copy

from ..data import load_data, make_loader
from ..models import set_gamma
from ..train import evaluate
from .images import final_accuracy, fit


def train_at_each_gamma(gammas, *, profile: str | None, depth: int, **settings) -> dict:
    """{gamma: TrainResult} of ``mresnet{depth}`` trained at each gamma (gamma_train =
    gamma_test: the paper's flat curve). gamma = 0 trains by ordinary backprop."""
    return {g: fit(profile, f"figure6-mresnet{depth}-g{g:g}", model=f"mresnet{depth}", gamma=g,
                   memory="exact" if g > 0 else "backprop", **settings) for g in gammas}


def accuracy_at_gammas(model, gammas, *, dataset: str, data_dir=None, image_size=None,
                       batch_size: int = 256) -> dict:
    """{gamma_test: test accuracy (%)} of a copy of ``model`` with every momentum stack's
    gamma set to gamma_test, without any retraining."""
    data = load_data(dataset, data_dir=data_dir, image_size=image_size, augment=False)
    loader = make_loader(data.test, batch_size, train=False)
    out = {}
    for g in gammas:
        probe = copy.deepcopy(model)
        set_gamma(probe, g)
        out[g] = evaluate(probe, loader)[1]
    return out


def refit_at_gammas(model, gammas, *, epochs: int, lr: float, **settings) -> dict:
    """{gamma_test: test accuracy (%)} after refitting a copy of ``model`` for ``epochs``
    epochs at gamma_test (constant learning rate ``lr``); never cached."""
    out = {}
    for g in gammas:
        probe = copy.deepcopy(model)
        set_gamma(probe, g)
        result = fit(None, "figure6-refit", start_from=probe, epochs=epochs, lr=lr, lr_milestones=(),
                     **settings)
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
