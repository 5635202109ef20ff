"""What the image-classification notebooks (Table 2, Figures 6-8) share: cached training
runs of the trainer (:mod:`mresnet_core.train`), mean and spread over seeds, and the data
set line every run prints."""
from __future__ import annotations

import dataclasses

from ..data import load_data
from ..train import CHECKPOINT, TrainConfig, TrainResult, train
from .common import run_dir


def fit(profile: str | None, name: str, *, start_from=None, data=None, **settings) -> TrainResult:
    """Train with :func:`mresnet_core.train.train` (no progress bars, no per-epoch lines);
    ``settings`` are TrainConfig fields (model name, gamma, epochs, ...); the momentum
    stacks are trained by exact inversion unless ``memory`` says otherwise.

    With ``profile`` (and no ``start_from``), the run is checkpointed under the profile's
    results folder in a folder keyed on every setting and the code version: a finished run
    is loaded instead of retrained, an interrupted one resumes. ``start_from``: an
    ``nn.Module`` to continue training (refit, fine-tuning); such runs are not cached.
    """
    settings.setdefault("memory", "exact")  # the paper's memory-free training, in every profile
    if settings.get("threads") == 0:  # the notebooks' "torch's default" (TrainConfig: None)
        settings["threads"] = None
    config = TrainConfig(**settings)
    if profile and start_from is None:
        out = run_dir(profile, name, dataclasses.asdict(config))
        config.out, config.resume = str(out), (out / CHECKPOINT).exists()
    return train(config, model=start_from, data=data, progress=False, verbose=False)


def final_accuracy(result: TrainResult) -> float:
    """Test accuracy (%) after the last epoch."""
    return float(result.history[-1]["test_acc"])


def describe_data(**kwargs) -> str:
    """The one-line description of the data set a run with these settings uses."""
    return load_data(**kwargs).describe()


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    import statistics

    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)
