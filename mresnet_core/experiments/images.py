"""What the image-classification notebooks (Table 2, Figures 6-8) share: cached training
runs of the trainer (:mod:`mresnet_core.train`), the training recipe of each profile (one
definition, so that two notebooks asking for the same run share its cache entry), mean
and spread over seeds, the memory-free gradients checked against backprop, and the data
set line every run prints."""
from __future__ import annotations

import copy
import dataclasses
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import load_data, make_loader
from ..models import momentum_stacks, set_gamma
from ..sweep import Run, is_finished
from ..train import CHECKPOINT, TrainConfig, TrainResult, evaluate, train
from .common import run_dir


def fit(profile: str | None, name: str, *, start_from=None, start_key: dict | None = None, data=None,
        **settings) -> TrainResult:
    """Train with :func:`mresnet_core.train.train` (no progress bars, no per-epoch lines);
    ``settings`` are TrainConfig fields (model name, gamma, epochs, ...); the momentum
    stacks are trained by exact inversion unless ``memory`` says otherwise.

    With ``profile`` (and no ``start_from``), the run is checkpointed under the profile's
    results folder in a folder keyed on every setting and the code version
    (:func:`cached_config`): a finished run is loaded instead of retrained, an interrupted
    one resumes. ``start_from``: an ``nn.Module`` to continue training (refit,
    fine-tuning); such runs are not cached, unless ``start_key`` names what built that
    module (the caller vouches that equal keys give equal modules): it joins the key.
    """
    config = run_config(**settings)
    if profile and (start_from is None or start_key is not None):
        config = cached_config(profile, name, config, start_key)
        config.resume = (Path(config.out) / CHECKPOINT).exists()
    return train(config, model=start_from, data=data, progress=False, verbose=False)


def run_config(**settings) -> TrainConfig:
    """The TrainConfig of :func:`fit` (exact inversion unless ``memory`` says otherwise;
    threads 0, the notebooks' "torch's default", is TrainConfig's None)."""
    settings.setdefault("memory", "exact")  # the paper's memory-free training, in every profile
    if settings.get("threads") == 0:
        settings["threads"] = None
    return TrainConfig(**settings)


def cached_config(profile: str, name: str, config: TrainConfig, start_key: dict | None = None) -> TrainConfig:
    """``config`` as :func:`fit` caches it: its output folder is the profile's cache
    folder for these settings (and ``start_key``, see :func:`fit`) and this code version,
    so a run started by the sweep launcher (:mod:`mresnet_core.sweep`) is the one the
    notebook loads."""
    config = dataclasses.replace(config, out=None, resume=False)
    key = dataclasses.asdict(config) if start_key is None else {**dataclasses.asdict(config), "start": start_key}
    config.out = str(run_dir(profile, name, key))
    return config


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


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its two-sided Student-t interval at
    ``confidence`` (values treated as independent draws, e.g. one per seed); a single
    value gives an infinite interval (nothing is known of the spread)."""
    from scipy import stats

    values = [float(v) for v in values]
    mean, std = mean_std(values)
    if len(values) < 2:
        return mean, -float("inf"), float("inf")
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * std / len(values) ** 0.5
    return mean, mean - half, mean + half


# ---------------------------------------------------------------------- the shared recipe
@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the image notebooks train a ResNet or Momentum ResNet of ``depth``: data set and
    its class-balanced subsets, base width, schedule (SGD, lr divided by 10 at each
    milestone), momentum gamma, torch threads (0: torch's default) and DataLoader worker
    processes (the results do not depend on them: each sample's augmentation has its own
    seed; one worker loads the next batch on the second core while this one trains)."""

    dataset: str
    depth: int
    width: int
    epochs: int
    batch_size: int
    lr: float
    lr_milestones: tuple[int, ...]
    train_images: int | None = None
    test_images: int | None = None
    image_size: int | None = None
    gamma: float = 0.9
    threads: int = 1
    workers: int = 1
    data_dir: str | None = None

    def data(self, dataset: str | None = None):
        """The :class:`~mresnet_core.data.ImageData` a run of this recipe trains on (training
        set augmented, test set not), read once per process and handed to every run."""
        return _image_data(dataset or self.dataset, self.data_dir, self.image_size, self.train_images,
                           self.test_images)


@functools.lru_cache(maxsize=4)
def _image_data(dataset, data_dir, image_size, train_images, test_images):
    """load_data for :meth:`Recipe.data`, once per setting."""
    return load_data(dataset, data_dir=data_dir, image_size=image_size, train_images=train_images,
                     test_images=test_images, download=True)  # as the trainer, where the network allows


#: the recipes by profile. quick: Fashion-MNIST on a 2-core CPU (class-balanced subsets of
#: 1500 training and 1000 test images, ResNet-18 at width 8, 3 epochs: a run takes 10-15
#: s); paper: CIFAR with the paper's schedule at full width (GPU).
RECIPES = {
    "quick": Recipe(dataset="fashion-mnist", depth=18, width=8, epochs=3, batch_size=32, lr=0.05,
                    lr_milestones=(2,), train_images=1500, test_images=1000),
    "paper": Recipe(dataset="cifar10", depth=101, width=64, epochs=220, batch_size=128, lr=0.01,
                    lr_milestones=(180,), threads=0, workers=4),
}


def recipe(name: str = "quick", **changes) -> Recipe:
    """The recipe of profile ``name`` with ``changes`` (field -> value; lists become tuples)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    unknown = set(changes) - {f.name for f in dataclasses.fields(Recipe)}
    if unknown:
        raise ValueError(f"a Recipe has no field {', '.join(sorted(unknown))}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    return dataclasses.replace(RECIPES[name], **changes)


def recipe_settings(recipe: Recipe, *, momentum: bool, seed: int, gamma: float | None = None,
                    init_velocity: str = "zero", dataset: str | None = None) -> tuple[str, dict]:
    """(cache name, TrainConfig settings) of one run of ``recipe``: ``resnet{depth}`` or
    ``mresnet{depth}`` at ``gamma`` (default the recipe's) with v0 ``init_velocity``.
    Momentum stacks train memory-free (exact inversion), at gamma = 0 (nothing to invert)
    by backprop. The name depends on the model alone, so every notebook asking for the
    same settings gets the same run."""
    gamma = recipe.gamma if gamma is None else float(gamma)
    dataset = dataset or recipe.dataset
    model = f"{'m' if momentum else ''}resnet{recipe.depth}"
    name = f"{dataset}-{model}" + (f"-g{gamma:g}-v0{init_velocity}" if momentum else "")
    return name, dict(model=model, gamma=gamma, init_velocity=init_velocity,
                      memory="backprop" if momentum and gamma == 0 else "exact", seed=seed, dataset=dataset,
                      data_dir=recipe.data_dir, image_size=recipe.image_size, train_images=recipe.train_images,
                      test_images=recipe.test_images, width=recipe.width, epochs=recipe.epochs,
                      batch_size=recipe.batch_size, lr=recipe.lr, lr_milestones=tuple(recipe.lr_milestones),
                      threads=recipe.threads, workers=recipe.workers)


def fit_recipe(profile: str | None, recipe: Recipe, *, train_missing: bool = True, **run) -> TrainResult | None:
    """One (cached) run of ``recipe`` (``run``: the arguments of :func:`recipe_settings`).
    ``train_missing`` False: only a run already finished in the cache (by the sweep
    launcher, or an earlier execution) is loaded; otherwise None, nothing is trained."""
    name, settings = recipe_settings(recipe, **run)
    if not train_missing and not (profile and is_finished(recipe_run(profile, recipe, **run))):
        return None
    return fit(profile, name, data=recipe.data(settings["dataset"]), **settings)


def recipe_run(profile: str, recipe: Recipe, **run) -> Run:
    """:func:`fit_recipe`'s run as a sweep run (:mod:`mresnet_core.sweep`): the same
    settings and the same output folder, named with its seed."""
    name, settings = recipe_settings(recipe, **run)
    return Run(f"{name}-seed{run['seed']}", cached_config(profile, name, run_config(**settings)))


def first_test_images(recipe: Recipe, size: int, dataset: str | None = None):
    """The first ``size`` test images and labels of the recipe's data (no augmentation)."""
    images, labels = next(iter(make_loader(recipe.data(dataset).test, size, train=False)))
    return images, labels


def accuracy_at_gammas(model, gammas, recipe: Recipe, dataset: str | None = None) -> dict:
    """{gamma_test: test accuracy (%)} of copies of ``model`` with every momentum stack's
    gamma set to gamma_test, without retraining (BatchNorm on its running statistics)."""
    loader = make_loader(recipe.data(dataset).test, 256, train=False)
    out = {}
    for g in gammas:
        probe = copy.deepcopy(model)
        set_gamma(probe, g)
        out[g] = evaluate(probe, loader)[1]
    return out


# ---------------------------------------------------------------------- gradient check
def memory_free_gradient_error(model, images, labels) -> dict:
    """The parameter gradients of one training step of ``model`` (BatchNorm on batch
    statistics) with its momentum stacks memory-free (exact inversion) against ordinary
    backprop through the same network, on copies in float64 (where the two agree to
    about 1e-12; in float32 the trained network amplifies the rounding of the fixed-point
    state). Returns the relative difference of all gradients together and the stacks'
    share of the backprop gradient norm (the least a fault confined to the stacks moves)."""
    grads = {}
    for mode in ("exact", "backprop"):
        probe = copy.deepcopy(model).double().train()
        for stack in momentum_stacks(probe):
            stack.memory_efficient = mode
        probe.zero_grad(set_to_none=True)
        F.cross_entropy(probe(images.double()), labels).backward()
        grads[mode] = [torch.zeros_like(p) if p.grad is None else p.grad for p in probe.parameters()]
        if mode == "backprop":
            in_stacks = {id(p) for s in momentum_stacks(probe) for p in s.parameters()}
            stack_part = torch.cat([g.flatten() for p, g in zip(probe.parameters(), grads[mode])
                                    if id(p) in in_stacks])
    exact, reference = (torch.cat([g.flatten() for g in grads[m]]) for m in ("exact", "backprop"))
    return {"relative difference": float((exact - reference).norm() / reference.norm()),
            "stack share": float(stack_part.norm() / reference.norm())}
