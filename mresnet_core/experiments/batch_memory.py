"""Figure 7: training memory against batch size for a ResNet and its memory-free Momentum
version, the largest batch each fits in a memory budget, and accuracy against memory when
more or fewer momentum stacks are memory-free."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data import load_data
from ..memory import saved_tensor_bytes, training_step_memory
from ..models import build_model, momentum_stacks
from .images import final_accuracy, fit


def real_batch(size: int, image_size: int, dataset: str = "digits", data_dir=None):
    """The first ``size`` training images and labels of ``dataset`` (no augmentation)."""
    data = load_data(dataset, data_dir=data_dir, image_size=image_size, augment=False)
    xs, ys = zip(*(data.train[i] for i in range(size)))
    return torch.stack(xs), torch.tensor(ys), data.num_classes


def memory_vs_batch(names, batches, *, image_size: int, width: int, gamma: float = 0.9, seed: int = 0,
                    dataset: str = "digits", data_dir=None) -> list:
    """Rows: model, batch, whole_step (peak of a training step, parameter gradients
    included), activations (the same without the gradients) and saved (bytes kept for
    backward after the forward pass), in bytes, for each model name and batch size.
    Momentum models are memory-free (exact inversion in every stack)."""
    x_all, y_all, num_classes = real_batch(max(batches), image_size, dataset, data_dir)
    rows = []
    for name in names:
        torch.manual_seed(seed)
        model = build_model(name, num_classes, gamma=gamma, width=width, memory_efficient=True).train()
        for b in batches:
            x, y = x_all[:b], y_all[:b]
            step = training_step_memory(model, x, loss=lambda out, y=y: F.cross_entropy(out, y))
            rows.append({"model": name, "batch": b, "whole_step": step.whole_step,
                         "activations": step.activations, "saved": saved_tensor_bytes(model, x)})
    return rows


def largest_batch(table, budget_bytes: float, column: str = "whole_step") -> dict:
    """{model: the largest batch whose ``column`` stays within ``budget_bytes``}, from the
    straight line through the measured (batch, bytes) points of each model (memory is
    affine in the batch size)."""
    out = {}
    for name, part in table.groupby("model", sort=False):
        slope, intercept = np.polyfit(part["batch"], part[column], 1)
        out[name] = int((budget_bytes - intercept) // slope)
    return out


def accuracy_vs_memory_free_stages(ks, *, depth: int, batch_size: int, image_size: int, width: int, gamma: float,
                                   seed: int = 0, **settings) -> list:
    """Train ``mresnet{depth}`` with its k deepest momentum stacks memory-free (the others
    by ordinary backprop), for each k in ``ks``. Rows: k, whole_step and activations
    peak of one training step at ``batch_size``, final test accuracy (%). The gradients
    are the same up to float rounding whatever k, so the accuracy should not depend on it."""
    x, y, num_classes = real_batch(batch_size, image_size, settings.get("dataset", "digits"),
                                   settings.get("data_dir"))
    rows = []
    for k in ks:
        torch.manual_seed(seed)
        model = build_model(f"mresnet{depth}", num_classes, gamma=gamma, width=width, memory_efficient=False)
        stacks = sorted(momentum_stacks(model), key=lambda stack: -len(stack.functions))
        if k > len(stacks):
            raise ValueError(f"mresnet{depth} has {len(stacks)} momentum stacks, fewer than {k}")
        for stack in stacks[:k]:
            stack.memory_efficient = True
        step = training_step_memory(model.train(), x, loss=lambda out: F.cross_entropy(out, y))
        result = fit(None, f"figure7-stages{k}", start_from=model, model=f"mresnet{depth}", gamma=gamma,
                     width=width, image_size=image_size, batch_size=batch_size, seed=seed, **settings)
        rows.append({"memory-free stacks": k, "whole_step": step.whole_step, "activations": step.activations,
                     "test accuracy": final_accuracy(result)})
    return rows


def plot_memory(table, budget_bytes: float, largest: dict, stages=None):
    """(left) whole-step peak against batch size per model, the budget line and each
    model's largest batch; (right, with ``stages``) accuracy against whole-step memory."""
    import matplotlib.pyplot as plt

    from ..plotting import PALETTE

    mib = 2.0 ** 20
    fig, axes = plt.subplots(1, 2 if stages is not None else 1, figsize=(12 if stages is not None else 6.5, 4.2),
                             squeeze=False)
    ax = axes[0, 0]
    for name, part in table.groupby("model", sort=False):
        color = PALETTE["momentum"] if name.startswith("m") else PALETTE["resnet"]
        label = f"Momentum {name[1:]} (memory-free)" if name.startswith("m") else name
        ax.plot(part["batch"], part["whole_step"] / mib, "o-", color=color, label=f"{label}: whole step")
        ax.plot(part["batch"], part["activations"] / mib, "o:", color=color, label=f"{label}: without gradients")
        ax.axvline(largest[name], color=color, lw=0.8, ls="--", label=f"{label}: largest batch {largest[name]}")
    ax.axhline(budget_bytes / mib, color=PALETTE["theory"], lw=1, label=f"budget {budget_bytes / mib:.0f} MiB")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="peak memory of a training step (MiB)",
           title="training memory against batch size")
    ax.legend(fontsize=7)
    if stages is not None:
        ax = axes[0, 1]
        ax.plot(stages["whole_step"] / mib, stages["test accuracy"], "o-", color=PALETTE["momentum"],
                label="Momentum ResNet, k stacks memory-free")
        for _, r in stages.iterrows():
            ax.annotate(f"k = {int(r['memory-free stacks'])}", (r["whole_step"] / mib, r["test accuracy"]),
                        textcoords="offset points", xytext=(5, 5), fontsize=8)
        acc = stages["test accuracy"]
        ax.set(xlabel="peak memory of a training step (MiB)", ylabel="final test accuracy (%)",
               title="accuracy against memory used",  # at least 5 points tall: differences at scale
               ylim=(acc.min() - 2.5, min(100.5, acc.max() + 2.5)))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
