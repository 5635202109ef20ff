"""Figure 8: fine-tuning a pretrained ResNet and its Momentum version (same weights) under
one memory budget, each with the largest batch that fits (measured); test accuracy
against training time and against samples seen, over seeds."""
from __future__ import annotations

import copy
import math
import statistics
import time

import torch
from torch import nn

from .._torch_private import BatchNormBase
from ..convert import to_momentumnet
from ..data import ImageData, load_data, make_loader, start_epoch
from ..models import build_resnet
from ..train import TrainConfig, evaluate, make_optimizer, set_train_mode
from .batch_memory import device_of, memory_vs_batch
from .images import fit


def finetuning_data(dataset: str, classes, *, train_images: int, test_images: int, image_size: int | None = None,
                    data_dir=None) -> tuple:
    """(the fine-tuning set with its training augmentation, the same training images
    without it): a fixed class-balanced subset of ``classes`` (None: every class, e.g. an
    image folder such as hymenoptera's)."""
    kwargs = dict(data_dir=data_dir, classes=None if classes is None else tuple(classes), train_images=train_images,
                  test_images=test_images, image_size=image_size)
    return load_data(dataset, **kwargs), load_data(dataset, augment=False, **kwargs).train


def pretrain(profile: str | None, depth: int, classes, **settings) -> nn.Module:
    """``resnet{depth}`` trained on ``classes`` of the data set in ``settings`` (the
    trainer's fields; cached like every image run when ``profile`` is given)."""
    return fit(profile, f"figure8-pretrain-resnet{depth}", model=f"resnet{depth}", classes=tuple(classes),
               **settings).model


def imagenet_pretrained(depth: int, weights: str) -> nn.Module:
    """torchvision's ``resnet{depth}`` with its pretrained ``weights`` (e.g. "IMAGENET1K_V1";
    read from the torch hub cache, downloaded where the network allows): the paper's
    starting point for Figure 8 (ResNet-152)."""
    return build_resnet(depth, stem="imagenet", weights=weights)


def fresh_head(model: nn.Module, num_classes: int, seed: int = 0) -> nn.Module:
    """A copy of ``model`` with a new, seeded classification head for ``num_classes``."""
    model = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def both_models(pretrained: nn.Module, gamma: float, num_classes: int, *, depth: int, seed: int = 0) -> dict:
    """{"resnet{depth}": the pretrained ResNet with a new head, "mresnet{depth}": its
    conversion (same weights, same new head), memory-free (exact inversion in every stack)}."""
    base = fresh_head(pretrained, num_classes, seed)
    return {f"resnet{depth}": base,
            f"mresnet{depth}": to_momentumnet(copy.deepcopy(base), gamma, memory_efficient=True)}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images, batch_size: int = 64) -> nn.Module:
    """Re-estimate the BatchNorm running statistics of ``model`` (in place) on the data set
    ``images`` (the fine-tuning images without augmentation: one pass in train mode, no
    gradients, the batches' statistics averaged); weights untouched. A converted model's activations are
    not distributed as the pretrained ResNet's were (momentum changes them), so its old
    statistics would make evaluation wrong until training had replaced them."""
    norms = [m for m in model.modules() if isinstance(m, BatchNormBase)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    for x, _ in make_loader(images, batch_size, train=False):
        model(x.to(device))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.train(was_training)
    return model


def budget_batches(models: dict, images, labels, budget_bytes: float, *, max_batch: int | None = None) -> tuple:
    """(rows, {name: the largest batch whose whole training step, parameter gradients
    included, is within the budget}), measured on the models as they will be fine-tuned
    (``batch_memory.memory_vs_batch``; nothing extrapolated)."""
    return memory_vs_batch({name: copy.deepcopy(m) for name, m in models.items()}, images, labels,
                           budget_bytes, max_batch=max_batch)


def seconds_per_sample(model: nn.Module, images, labels, batch_size: int, repeats: int = 3) -> float:
    """Median wall time per sample of a training step (forward, cross-entropy, backward;
    no optimiser) of a copy of ``model`` at ``batch_size``, after one warm-up step."""
    model = copy.deepcopy(model).train()
    device = next(model.parameters()).device
    x, y = images[:batch_size].to(device), labels[:batch_size].to(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats + 1):
        model.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        nn.functional.cross_entropy(model(x), y).backward()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) / batch_size


def finetune(model: nn.Module, data: ImageData, batch_size: int, *, epochs: int, lr: float, seed: int = 0,
             eval_every: int, freeze_bn: bool = False, weight_decay: float = 5e-4, device: str = "cpu") -> list:
    """Fine-tune a copy of ``model`` on ``data`` (SGD with momentum 0.9, constant ``lr``,
    the trainer's seeded shuffling and augmentation) and evaluate it on the test set
    after each ``eval_every`` training samples (at the step that crosses it) and at the
    end. Records: samples seen, training seconds (wall time of the training steps only,
    evaluations excluded), test accuracy (%)."""
    where = device_of(device)
    model = copy.deepcopy(model).to(where)
    sync = (lambda: torch.cuda.synchronize(where)) if where.type == "cuda" else (lambda: None)
    config = TrainConfig(lr=lr, lr_milestones=(), weight_decay=weight_decay, batch_size=batch_size, seed=seed)
    optimizer, _ = make_optimizer(model, config)
    train_loader = make_loader(data.train, batch_size, train=True, seed=seed)
    test_loader = make_loader(data.test, 256, train=False)
    records, samples, seconds, next_eval = [], 0, 0.0, eval_every

    def record():
        records.append({"samples": samples, "seconds": seconds, "test_acc": evaluate(model, test_loader, where)[1]})
        set_train_mode(model, freeze_bn)

    for epoch in range(1, epochs + 1):
        start_epoch(train_loader, epoch)
        set_train_mode(model, freeze_bn)
        for x, y in train_loader:
            x, y = x.to(where), y.to(where)
            sync()
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            sync()
            seconds += time.perf_counter() - t0
            samples += len(y)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"fine-tuning diverged (loss {loss.item()}) after {samples} samples; lower lr")
            if samples >= next_eval:
                record()
                while next_eval <= samples:
                    next_eval += eval_every
    if not records or records[-1]["samples"] != samples:
        record()
    return records


def finetune_both(models: dict, data: ImageData, batch: dict, seeds, **settings) -> list:
    """Fine-tune every model of ``models`` with its own batch ``batch[name]``, at each seed
    (the seed sets the shuffling and augmentation; the starting weights are the same).
    The runs of one seed alternate between the models, so a slower or busier spell of
    the machine falls on both alike. Rows: model, seed, batch, samples, seconds, test_acc."""
    rows = []
    for seed in seeds:
        for name, model in models.items():
            for r in finetune(model, data, batch[name], seed=seed, **settings):
                rows.append({"model": name, "seed": seed, "batch": batch[name], **r})
    return rows


def time_to(rows, target: float) -> list:
    """Per (model, seed): the first evaluation at or above ``target`` % (samples seen and
    training seconds; nan when never reached), the final and the best accuracy, the
    training seconds per sample, and the mean absolute change of the accuracy between
    consecutive evaluations (how smooth the curve is)."""
    import pandas as pd

    out = []
    for (name, seed), run in pd.DataFrame(rows).groupby(["model", "seed"], sort=False):
        hit = run[run["test_acc"] >= target]
        first = hit.iloc[0] if len(hit) else None
        out.append({"model": name, "seed": seed, "batch": int(run["batch"].iloc[0]),
                    "samples to target": float(first["samples"]) if first is not None else math.nan,
                    "seconds to target": float(first["seconds"]) if first is not None else math.nan,
                    "final accuracy": float(run["test_acc"].iloc[-1]), "best accuracy": float(run["test_acc"].max()),
                    "seconds per sample": float(run["seconds"].iloc[-1] / run["samples"].iloc[-1]),
                    "mean |change|": float(run["test_acc"].diff().abs().mean())})
    return out


def median_or_never(values) -> float:
    """Median of times to a target where a run that never reached it counts as later than
    any that did (inf); nan for no runs."""
    values = [math.inf if math.isnan(v) else v for v in values]
    return statistics.median(values) if values else math.nan


def plot_finetuning(rows, target: float):
    """Test accuracy against training time (left) and samples seen (right), one line per
    model and seed."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from ..plotting import PALETTE

    table = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for (name, seed), run in table.groupby(["model", "seed"], sort=False):
        momentum = name.startswith("m")
        label = (f"Momentum {name[1:]} (memory-free)" if momentum else name) + f", batch {run['batch'].iloc[0]}"
        for ax, column in zip(axes, ("seconds", "samples")):
            ax.plot([0] + list(run[column]), [None] + list(run["test_acc"]), "o-", ms=3, lw=1,
                    color=PALETTE["momentum" if momentum else "resnet"], alpha=0.8,
                    label=label if seed == table["seed"].iloc[0] else None)
    for ax, xlabel in zip(axes, ("training time (s, this machine)", "training samples seen")):
        ax.axhline(target, color=PALETTE["theory"], lw=1, ls="--", label=f"{target:.0f} %")
        ax.set(xlabel=xlabel, title=f"fine-tuning under one memory budget (one line per seed)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy (%)")
    fig.tight_layout()
    return fig
