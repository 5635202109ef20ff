"""Figure 8: fine-tuning a pretrained ResNet and its Momentum version (same weights) under
one memory budget, each with the largest batch that fits; accuracy against wall time."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..convert import to_momentumnet
from .batch_memory import largest_batch, memory_vs_batch
from .images import fit


def pretrain(profile: str | None, depth: int, classes, **settings):
    """``resnet{depth}`` trained on the digits ``classes`` (cached like every image run)."""
    return fit(profile, f"figure8-pretrain-resnet{depth}", model=f"resnet{depth}", dataset="digits",
               classes=tuple(classes), **settings).model


def fresh_head(model: nn.Module, num_classes: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with a new, seeded classification head for ``num_classes``."""
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def budget_batches(gamma: float, batches, budget_bytes: float, *, depth: int, image_size: int, width: int,
                   seed: int = 0) -> tuple:
    """Measure both models' whole-step memory at ``batches`` (a ResNet and its memory-free
    Momentum version, like the fine-tuned ones) and return (rows, {name: largest batch
    within the budget})."""
    import pandas as pd

    rows = memory_vs_batch([f"resnet{depth}", f"mresnet{depth}"], batches, image_size=image_size, width=width,
                           gamma=gamma, seed=seed)
    table = pd.DataFrame(rows)
    return table, largest_batch(table, budget_bytes)


def finetune_both(pretrained: nn.Module, gamma: float, batch: dict, *, depth: int, classes, epochs: int,
                  lr: float, seed: int = 0, **settings) -> dict:
    """Fine-tune the pretrained ResNet and its conversion (memory-free, same weights, same
    new head) on the digits ``classes``, each with its own batch size ``batch[name]``.
    Returns {name: history} with the cumulative wall time per epoch in "elapsed"."""
    base = fresh_head(pretrained, len(classes), seed)
    models = {f"resnet{depth}": base,
              f"mresnet{depth}": to_momentumnet(base, gamma, memory_efficient=True)}
    out = {}
    for name, model in models.items():
        result = fit(None, f"figure8-finetune-{name}", start_from=model, model=name, gamma=gamma, dataset="digits",
                     classes=tuple(classes), batch_size=batch[name], epochs=epochs, lr=lr, lr_milestones=(),
                     seed=seed, **settings)
        elapsed = 0.0
        for row in result.history:
            elapsed += row["seconds"]
            row["elapsed"] = elapsed
        out[name] = result.history
    return out


def plot_finetuning(histories: dict, batch: dict, target: float):
    """Test accuracy against cumulative training time, one curve per model."""
    import matplotlib.pyplot as plt

    from ..plotting import PALETTE

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, history in histories.items():
        momentum = name.startswith("m")
        label = f"Momentum {name[1:]} (memory-free)" if momentum else name
        ax.plot([0] + [r["elapsed"] for r in history], [None] + [r["test_acc"] for r in history], "o-",
                color=PALETTE["momentum" if momentum else "resnet"], label=f"{label}, batch {batch[name]}")
    ax.axhline(target, color=PALETTE["theory"], lw=1, ls="--", label=f"{target:.0f} %")
    ax.set(xlabel="training time (s)", ylabel="test accuracy (%)", title="fine-tuning under one memory budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
