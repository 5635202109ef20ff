"""Figures 1 and 5: the paper's tied-weight toy networks in 1-D and 2-D.

Both use one residual function f = Linear(d, 16) - Tanh - Linear(16, d) shared by every
layer (:func:`toy_network`), stacked as a ResNet (gamma = 0) or a Momentum ResNet, and
trained on fresh generated batches at every step.

* Figure 1: learn x -> -x**3 on [-1, 1] (MSE, SGD; :func:`cubic_batch`). A ResNet is a
  discretised first-order ODE: its trajectories do not cross, so it can only learn an
  increasing map and its error stays at least that of the best increasing fit (the
  constant mean). A Momentum ResNet (second-order) can cross trajectories and reverse
  the order of the inputs.
* Figure 5: separate 4 nested rings with alternating labels (:func:`rings_batch`;
  cross-entropy on the 2-D output used as logits, Adam), at the reference script's
  settings (:data:`RINGS_REFERENCE`) over several seeds, the runs spread over worker
  processes (:func:`train_rings_runs`); :func:`separation_summary` counts the seeds that
  separate and gives the mean accuracy with its t-interval.

Trained weights are cached (``common.train_steps(checkpoint=...)``) under the profile's
results folder, in a file whose name depends on every training setting and on the code
version, so a figure is redrawn without retraining and a change of either retrains.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..momentum import MomentumNet
from ..plotting import PALETTE
from .common import checkpoint_path, toy_mlp, train_steps

RING_RADII = (0.5, 1.0, 1.5, 2.0)


# ---------------------------------------------------------------------- data and models
def cubic_batch(n: int, generator: torch.Generator | None = None, dtype=torch.float32):
    """``n`` points uniform on [-1, 1] and their targets -x**3, shaped (n, 1)."""
    x = torch.rand(n, 1, generator=generator, dtype=dtype) * 2 - 1
    return x, -x ** 3


def rings_batch(points_per_ring: int, generator: torch.Generator | None = None,
                radii=RING_RADII, scale: float = 3.0, jitter: float = 0.2, dtype=torch.float32):
    """Points on nested rings of radius scale*(r + jitter*U[0,1]); label i % 2 for ring i.

    Returns (points (N, 2), labels (N,) int64), rings in order of increasing radius.
    """
    if points_per_ring < 1:
        raise ValueError(f"points_per_ring must be positive, got {points_per_ring}")
    xs, ys = [], []
    for i, r in enumerate(radii):
        angle = torch.rand(points_per_ring, generator=generator, dtype=dtype) * (2 * torch.pi)
        radius = scale * (r + jitter * torch.rand(points_per_ring, generator=generator, dtype=dtype))
        xs.append(torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1))
        ys.append(torch.full((points_per_ring,), i % 2, dtype=torch.int64))
    return torch.cat(xs), torch.cat(ys)


def toy_network(dim: int, depth: int, gamma: float, hidden: int = 16,
                memory_efficient: bool = False) -> MomentumNet:
    """Tied-weight stack of ``depth`` layers of one :func:`~.common.toy_mlp`; gamma = 0
    gives the ResNet x + f(x)."""
    f = toy_mlp(dim, hidden)
    return MomentumNet([f] * depth, gamma, memory_efficient=memory_efficient)


def _model_name(gamma: float) -> str:
    return "resnet" if gamma == 0 else f"momentum_g{gamma:g}"


# ---------------------------------------------------------------------- Figure 1
def train_cubic(gamma: float, steps: int, *, depth: int = 15, hidden: int = 16, lr: float = 0.01,
                batch: int = 200, seed: int = 1, profile: str | None = None,
                progress: bool = True):
    """Fit x -> -x**3 with a tied stack (SGD, MSE, ``batch`` fresh points per step).

    Returns (model, losses). With ``profile``, the weights are cached under
    results/<profile>/ (see :func:`checkpoint_path`).
    """
    settings = dict(task="cubic", gamma=gamma, steps=steps, depth=depth, hidden=hidden, lr=lr,
                    batch=batch, seed=seed)
    torch.manual_seed(seed)
    model = toy_network(1, depth, gamma, hidden)
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    ckpt = checkpoint_path(profile, f"figure1_{_model_name(gamma)}", settings) if profile else None
    losses = train_steps(model, lambda step: cubic_batch(batch, gen), F.mse_loss, optimizer, steps,
                         checkpoint=ckpt, desc=f"{_model_name(gamma)} (1-D)", progress=progress)
    model.eval()
    return model, losses


def train_cubic_or_none(gamma: float, steps: int, **kwargs):
    """:func:`train_cubic`'s model, or None when its loss diverged (a run that fitted
    nothing: the claims count it as failed, instead of the notebook stopping before them)."""
    try:
        return train_cubic(gamma, steps, **kwargs)[0]
    except FloatingPointError as e:
        print(f"gamma = {gamma}, seed {kwargs.get('seed')}: diverged ({e})")
        return None


def cubic_grid(n: int = 201) -> torch.Tensor:
    """``n`` evenly spaced inputs on [-1, 1], shaped (n, 1)."""
    return torch.linspace(-1.0, 1.0, n).unsqueeze(1)


@torch.no_grad()
def cubic_test_mse(model, n: int = 201) -> float:
    """Mean squared error of ``model`` against -x**3 on the fixed grid :func:`cubic_grid`."""
    x = cubic_grid(n)
    return float(F.mse_loss(model(x), -x ** 3))


def best_increasing_mse(n: int = 201) -> float:
    """Smallest MSE any non-decreasing map reaches on the grid: target -x**3 is decreasing,
    so the best non-decreasing fit (isotonic regression) is the constant mean."""
    y = -cubic_grid(n).double() ** 3
    return float(((y - y.mean()) ** 2).mean())


def trajectories(model, n: int = 8, dtype=torch.float64) -> np.ndarray:
    """Positions of ``n`` evenly spaced inputs on [-1, 1] at depths 0..L, shaped (L + 1, n).

    Computed on a float64 copy of ``model``: a ResNet that learned to contract its inputs
    towards a constant brings them within float32 rounding of each other after a few
    layers, where rounding alone would reorder them.
    """
    model = copy.deepcopy(model).to(dtype)
    return model.trajectory(cubic_grid(n).to(dtype))[..., 0].numpy()


def fit_r2(mse: float, n: int = 201) -> float:
    """R^2 of a fit on the grid: 1 - MSE / variance of the targets -x**3 (the variance is
    the MSE of the constant fit, :func:`best_increasing_mse`)."""
    return 1.0 - mse / best_increasing_mse(n)


def layer_map_min_slope(model, lo: float = -1.5, hi: float = 1.5, n: int = 3001) -> float:
    """Smallest derivative of one ResNet layer x -> x + f(x) over [lo, hi] (float64 grid).

    Positive means every layer is strictly increasing there, hence so is the whole tied
    stack on inputs whose trajectories stay in [lo, hi]: trajectories cannot cross.
    """
    f = copy.deepcopy(model.functions[0]).double()
    x = torch.linspace(lo, hi, n, dtype=torch.float64).unsqueeze(1).requires_grad_()
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return float((1.0 + grad).min())


def order_kept(traj: np.ndarray) -> np.ndarray:
    """Per depth: are the points still in strictly increasing order (no crossing yet)?"""
    return np.all(np.diff(traj, axis=1) > 0, axis=1)


def swapped_pairs(traj: np.ndarray) -> int:
    """Pairs of trajectories whose order at the output is the reverse of their input order
    (0 for an increasing map, n(n-1)/2 when the order is fully reversed)."""
    first, last = traj[0], traj[-1]
    n = len(first)
    return sum(int((first[j] - first[i]) * (last[j] - last[i]) < 0) for i in range(n) for j in range(i + 1, n))


def plot_dynamics(runs: dict, targets: bool = True):
    """Figure 1: one panel per run, trajectories (position vs depth) of the 8 inputs.

    ``runs`` maps a panel title to a (L + 1, n) trajectory array; with ``targets`` the
    desired outputs -x0**3 are drawn at the last depth.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(runs), figsize=(3.4 * len(runs), 4.2), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, (title, traj) in zip(axes, runs.items()):
        depth = np.arange(traj.shape[0])
        colors = plt.cm.viridis(np.linspace(0.0, 0.9, traj.shape[1]))
        for k in range(traj.shape[1]):
            ax.plot(traj[:, k], depth, "-o", ms=3, lw=1.8, color=colors[k],
                    label="trajectory $x_n$" if k == 0 else None)
        if targets:
            ax.scatter(-traj[0] ** 3, np.full(traj.shape[1], depth[-1]), s=70, facecolors="none",
                       edgecolors=PALETTE["theory"], lw=1.2, zorder=3, label="target $-x_0^3$")
        ax.set_title(title)
        ax.set_xlabel("position $x_n$")
        ax.set_xlim(-1.15, 1.15)
    axes[0].set_ylabel("depth n (layer)")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"Learning $x \\mapsto -x^3$ with tied weights: {traj.shape[1]} trajectories "
                 "through depth", y=1.0)
    fig.tight_layout()
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper center", ncol=len(names), bbox_to_anchor=(0.5, 0.0))
    return fig


# ---------------------------------------------------------------------- Figure 5
#: The reference script's settings (examples_paper/run_separation_nested_rings.py of the
#: authors' repository, with the 4-ring data its toy_datasets generated at the paper's time).
RINGS_REFERENCE = dict(depth=15, hidden=16, gamma=0.99, points_per_ring=2000, momentum_steps=1500,
                       momentum_lr=0.2, resnet_steps=5000, resnet_lr=0.01)


def rings_cuts(settings: dict) -> list:
    """What ``settings`` change from :data:`RINGS_REFERENCE`: one "name value (reference
    value)" string per differing key (an empty list: the reference settings)."""
    return [f"{key} {settings[key]} (reference {ref})" for key, ref in RINGS_REFERENCE.items()
            if key in settings and settings[key] != ref]


def rings_lr_factor(resnet: bool, steps: int):
    """Learning-rate multiplier per step: constant for the Momentum ResNet; for the ResNet
    halved at steps // 2 and divided by 10 more at 3 * steps // 4 (reference script)."""
    if not resnet:
        return lambda step: 1.0
    return lambda step: 1.0 if step < steps // 2 else (0.5 if step < 3 * steps // 4 else 0.05)


def _rings_checkpoint(gamma: float, steps: int, lr: float, *, points_per_ring: int = 2000, depth: int = 15,
                      hidden: int = 16, seed: int = 1, profile: str | None = None, nudge: bool = False):
    """The cache file of one :func:`train_rings` run (None without a profile)."""
    if not profile:
        return None
    settings = dict(task="rings", gamma=gamma, steps=steps, lr=lr, points_per_ring=points_per_ring,
                    depth=depth, hidden=hidden, seed=seed, schedule="step" if gamma == 0 else "constant")
    if nudge:
        settings["nudge"] = True
    return checkpoint_path(profile, f"figure5_{_model_name(gamma)}", settings)


def train_rings(gamma: float, steps: int, lr: float, *, points_per_ring: int = 2000,
                depth: int = 15, hidden: int = 16, seed: int = 1, profile: str | None = None,
                nudge: bool = False, progress: bool = True):
    """Separate the nested rings with a tied 2-D stack (Adam, cross-entropy on the output).

    gamma = 0 (ResNet) uses the step schedule of :func:`rings_lr_factor`. ``nudge``
    moves one initial weight to the next float32 (a rounding-sized change, to show how
    much the result depends on rounding). Returns (model, losses); with ``profile`` the
    weights are cached under results/<profile>/.
    """
    resnet = gamma == 0
    ckpt = _rings_checkpoint(gamma, steps, lr, points_per_ring=points_per_ring, depth=depth, hidden=hidden,
                             seed=seed, profile=profile, nudge=nudge)
    torch.manual_seed(seed)
    model = toy_network(2, depth, gamma, hidden)
    if nudge:
        with torch.no_grad():
            w = model.functions[0][0].weight
            w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rings_lr_factor(resnet, steps))
    losses = train_steps(model, lambda step: rings_batch(points_per_ring, gen), F.cross_entropy,
                         optimizer, steps, scheduler=scheduler, checkpoint=ckpt,
                         desc=f"{_model_name(gamma)} (rings)", progress=progress)
    model.eval()
    return model, losses


def _rings_job(job: dict):
    """One :func:`train_rings` run in a worker process: (state_dict, losses)."""
    torch.set_num_threads(job.pop("threads"))
    model, losses = train_rings(**job, progress=False)
    return model.state_dict(), losses


def train_rings_runs(jobs: list, workers: int = 1, threads: int = 1) -> list:
    """Run :func:`train_rings` for each job (a dict of all its keyword arguments but
    ``progress``); returns [(model, losses)] in the order of ``jobs``.

    With ``workers`` > 1 the runs not yet cached are spread over that many fresh
    processes of ``threads`` torch threads each, longest first (these tiny models keep
    one core busy each; a second thread does not help them). Every run seeds itself, so
    where it runs does not change its result.
    """
    def cached(job):
        ckpt = _rings_checkpoint(**job)
        return ckpt is not None and ckpt.exists()

    results = [None] * len(jobs)
    pending = [i for i, job in enumerate(jobs) if not cached(job)] if workers > 1 else []
    if len(pending) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # costliest first (steps x points), so that the last runs to start are short ones
        pending.sort(key=lambda i: -jobs[i]["steps"] * jobs[i]["points_per_ring"])
        context = multiprocessing.get_context("spawn")  # no forked copy of this process's threads
        with ProcessPoolExecutor(min(workers, len(pending)), mp_context=context) as pool:
            futures = {i: pool.submit(_rings_job, {**jobs[i], "threads": threads}) for i in pending}
            for i, future in futures.items():
                state, losses = future.result()
                model = toy_network(2, jobs[i]["depth"], jobs[i]["gamma"], jobs[i]["hidden"])
                model.load_state_dict(state)
                results[i] = (model.eval(), losses)
    for i, job in enumerate(jobs):
        if results[i] is None:  # cached, or run here
            results[i] = train_rings(**job, progress=False)
    return results


def rings_eval_set(points_per_ring: int = 500, seed: int = 12345):
    """A fixed sample of the ring distribution (what the figure shows and accuracy uses)."""
    return rings_batch(points_per_ring, torch.Generator().manual_seed(seed))


@torch.no_grad()
def rings_accuracy(model, points: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of points whose larger output coordinate (logit) is their label."""
    return float((model(points).argmax(dim=1) == labels).float().mean())


def fold_fraction(model, points: torch.Tensor) -> float:
    """Share of the points a tied ResNet visits (the inputs of every layer) where its layer
    map x -> x + f(x) reverses orientation (Jacobian determinant <= 0).

    Nonzero means the discrete ResNet folds the plane there: no ODE flow (and no
    invertible map) does that, so the no-crossing argument for ResNets no longer holds.
    """
    if model.gamma != 0:
        raise ValueError(f"fold_fraction is for a tied ResNet (gamma = 0), got gamma = {model.gamma}")
    visited = model.trajectory(points)[:-1].reshape(-1, points.shape[-1]).double()
    f = copy.deepcopy(model.functions[0]).double()
    jac = torch.func.vmap(torch.func.jacrev(lambda x: x + f(x)))(visited)
    return float((torch.linalg.det(jac) <= 0).double().mean())


def ring_snapshots(model, points: torch.Tensor, layers) -> dict:
    """Point cloud after each layer in ``layers`` (0 = input): layer -> (N, 2) array."""
    traj = model.trajectory(points)
    bad = [k for k in layers if not 0 <= k < traj.shape[0]]
    if bad:
        raise ValueError(f"layers {bad} outside 0..{traj.shape[0] - 1}")
    return {k: traj[k].numpy() for k in layers}


def plot_rings(rows: dict, labels, titles: dict | None = None):
    """Figure 5: one row per model, one column per depth, points colored by label.

    ``rows`` maps a row name to ``ring_snapshots`` output; ``titles`` optionally maps a
    row name to a suffix for its last panel (e.g. the accuracy). The last layer's panel
    shows the decision boundary of the 2-D logits (output_0 = output_1).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    labels = np.asarray(labels)
    layers = list(next(iter(rows.values())).keys())
    fig, axes = plt.subplots(len(rows), len(layers), figsize=(3.0 * len(layers), 3.1 * len(rows)),
                             squeeze=False)
    colors = np.where(labels == 0, PALETTE["resnet"], PALETTE["momentum"])
    for r, (name, snaps) in enumerate(rows.items()):
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            pts = snaps[layer]
            ax.scatter(pts[:, 0], pts[:, 1], c=colors, s=2, alpha=0.6, linewidths=0, rasterized=True)
            title = f"layer {layer}" + (" (input)" if layer == 0 else "")
            if c == len(layers) - 1:
                # square limits around the data, so the boundary output_0 = output_1 is the diagonal
                lo, hi = float(pts.min()), float(pts.max())
                pad = 0.05 * (hi - lo)
                lo, hi = lo - pad, hi + pad
                ax.plot([lo, hi], [lo, hi], "--", color=PALETTE["theory"], lw=1)
                ax.set_xlim(lo, hi)
                ax.set_ylim(lo, hi)
                ax.set_aspect("equal", adjustable="box")
                title = f"layer {layer} (output)" + (titles.get(name, "") if titles else "")
            else:
                ax.set_aspect("equal", adjustable="datalim")
            ax.set_title(title)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize="large")
    handles = [Line2D([], [], ls="", marker="o", color=PALETTE["resnet"], label="label 0 (rings 1, 3)"),
               Line2D([], [], ls="", marker="o", color=PALETTE["momentum"], label="label 1 (rings 2, 4)"),
               Line2D([], [], ls="--", color=PALETTE["theory"], label="decision boundary (output)")]
    fig.suptitle("Separating 4 nested rings: the point cloud through depth (tied weights)", y=1.0)
    fig.tight_layout()
    fig.legend(handles=handles, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 0.0))
    return fig


class RingRuns(NamedTuple):
    """What :func:`rings_over_seeds` returns."""

    table: "pandas.DataFrame"  # one row per seed: both accuracies, the ResNet's fold fraction
    models: dict  # seed -> (resnet, momentum)
    nudged: MomentumNet | None  # the nudged Momentum ResNet of ``nudged_seed``, if asked for


def rings_over_seeds(seeds, *, gamma: float, momentum_steps: int, momentum_lr: float, resnet_steps: int,
                     resnet_lr: float, points_per_ring: int, depth: int = 15, hidden: int = 16,
                     eval_points_per_ring: int = 500, profile: str | None = None, workers: int = 1,
                     threads: int = 1, nudged_seed: int | None = None) -> RingRuns:
    """Train both models of Figure 5 at every seed (:func:`train_rings_runs`); accuracy on
    the fixed evaluation sample (:func:`rings_eval_set`) and the ResNet's fold fraction.
    With ``nudged_seed``, also that seed's Momentum ResNet with ``nudge=True`` (one initial
    weight moved by one float32 step), trained alongside the others."""
    import pandas as pd

    seeds = list(seeds)
    common = dict(points_per_ring=points_per_ring, depth=depth, hidden=hidden, profile=profile)
    jobs = [dict(gamma=gamma, steps=momentum_steps, lr=momentum_lr, seed=seed, **common) for seed in seeds]
    jobs += [dict(gamma=0.0, steps=resnet_steps, lr=resnet_lr, seed=seed, **common) for seed in seeds]
    if nudged_seed is not None:
        jobs.append(dict(gamma=gamma, steps=momentum_steps, lr=momentum_lr, seed=nudged_seed, nudge=True, **common))
    runs = train_rings_runs(jobs, workers=workers, threads=threads)
    points, labels = rings_eval_set(eval_points_per_ring)
    rows, models = [], {}
    for k, seed in enumerate(seeds):
        momentum, resnet = runs[k][0], runs[len(seeds) + k][0]
        models[seed] = (resnet, momentum)
        rows.append({"seed": seed, "ResNet accuracy": rings_accuracy(resnet, points, labels),
                     "Momentum ResNet accuracy": rings_accuracy(momentum, points, labels),
                     "ResNet folds (% of visited points)": 100 * fold_fraction(resnet, points)})
    nudged = runs[-1][0] if nudged_seed is not None else None
    return RingRuns(pd.DataFrame(rows).set_index("seed"), models, nudged)


def t_interval(values, level: float = 0.95) -> tuple:
    """(mean, low, high): the two-sided Student-t confidence interval of the mean of
    ``values`` (at least two), from their sample standard deviation."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        raise ValueError(f"a t-interval needs at least two values, got {values.size}")
    mean = float(values.mean())
    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / np.sqrt(values.size))
    return mean, mean - half, mean + half


def separation_summary(table, separated: float):
    """One row per model of ``rings_over_seeds``' table: seeds, mean accuracy with its 95 %
    t-interval, min, max, and the seeds whose accuracy is at least ``separated`` (count
    and fraction)."""
    import pandas as pd

    rows = []
    for model in ("ResNet", "Momentum ResNet"):
        acc = table[f"{model} accuracy"].to_numpy(dtype=np.float64)
        mean, low, high = t_interval(acc)
        hits = int((acc >= separated).sum())
        rows.append({"model": model, "seeds": acc.size, "mean accuracy": mean, "95 % t-interval low": low,
                     "95 % t-interval high": high, "min": float(acc.min()), "max": float(acc.max()),
                     "seeds separated": hits, "fraction separated": hits / acc.size})
    return pd.DataFrame(rows).set_index("model")


def plot_accuracy_over_seeds(table, threshold: float = 0.99, floor: float | None = None):
    """Final accuracy of each model at each seed (one dot per seed), the mean with its 95 %
    t-interval beside them, the level ``threshold`` that counts as separated and, if
    given, a lower reference level ``floor``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for i, (column, key) in enumerate((("ResNet accuracy", "resnet"), ("Momentum ResNet accuracy", "momentum"))):
        values = table[column].to_numpy()
        ax.plot(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, "o",
                color=PALETTE[key], ms=7, label=f"{column.split(' accuracy')[0]}: one dot per seed")
        mean, low, high = t_interval(values)
        ax.errorbar(i + 0.3, mean, yerr=[[mean - low], [high - mean]], fmt="s", color=PALETTE[key], ms=6,
                    capsize=4, lw=1.8)
    ax.errorbar([], [], yerr=[], fmt="s", color="0.3", capsize=4, label="mean, 95 % t-interval")
    ax.axhline(threshold, color=PALETTE["theory"], ls="--", lw=1, label=f"separated: accuracy >= {threshold}")
    if floor is not None:
        ax.axhline(floor, color=PALETTE["theory"], ls=":", lw=1, label=f"one circular cut: {floor}")
    ax.set(xticks=[0, 1], xticklabels=["ResNet", "Momentum ResNet"], xlim=(-0.6, 1.6), ylabel="accuracy",
           title=f"Figure 5 over {len(table)} seeds")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, -0.62), ncol=2)
    fig.tight_layout()
    return fig
