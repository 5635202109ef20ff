# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Table 2: Momentum ResNets reach the accuracy of ResNets
#
# **Claim (Sander et al. 2021, Table 2).** Trained with the same recipe, a Momentum ResNet
# (with v0 = 0 or v0 = f(x0)) reaches the test accuracy of the ResNet it comes from: on
# CIFAR-10, ResNet-101 95.15 ± 0.12 %, Momentum ResNet-101 95.1 ± 0.13 % (v0 = 0) and
# 95.18 ± 0.06 % (v0 = f(x0)); on CIFAR-100, 76.86 ± 0.25, 76.39 ± 0.18 and 76.38 ± 0.42
# (10 runs each; SGD, momentum 0.9, weight decay 5e-4, batch 128, 220 epochs, lr 0.01
# then 0.001 from epoch 180, random crop + flip, gamma = 0.9). Every gap to the ResNet is
# at most 0.5 point.
#
# **Quick profile** (default, this 2-core CPU, about two minutes): the recipe
# `images.RECIPES["quick"]`, shared with the Figure 6 notebook (which reuses this
# notebook's cached gamma = 0.9 run). What it cuts: Fashion-MNIST (28x28, 10 classes)
# instead of CIFAR, a class-balanced subset of its training and test sets (the data line
# below gives the sizes), ResNet-18 at width 8 instead of ResNet-101 at width 64, 3 epochs
# (lr 0.05, divided by 10 for the last) instead of 220, batch 32, 4 seeds instead of 10,
# and the v0 = 0 variant only (v0 = f(x0) runs in the paper profile). That is a few
# thousand image passes per run against the paper's eleven million: it tests whether
# momentum and the memory-free backward cost accuracy, not the CIFAR numbers.
# **Paper profile** (`notebooks/params/paper.yaml`, GPUs and the CIFAR data sets):
# ResNet-101 at full width on CIFAR-10 and CIFAR-100 with the paper's recipe, the three
# rows, 10 seeds. One run from the command line: `python -m mresnet_core.train -m
# mresnet101 -g 0.9 --dataset cifar10 --epochs 220 --seed S` (and `-m resnet101`, `-i 1`
# for v0 = f(x0)); see the README.

# %%
# %matplotlib inline
import os
import time

import pandas as pd

from mresnet_core import sweep
from mresnet_core.experiments import images, table2
from mresnet_core.experiments.common import check_claims, paper_vs_this_run, setup_notebook
from mresnet_core.plotting import save_figure

# %% tags=["parameters"]
profile = "quick"
use_cache = True  # reuse runs trained by this code version with these settings
exact_backend = "auto"  # MRESNET_EXACT_BACKEND: auto (the C kernels on the CPU), native, compile or eager
recipe_name = "quick"  # images.RECIPES: "quick" (Fashion-MNIST subsets, CPU) or "paper" (CIFAR, GPU)
recipe_changes = {}  # fields of the recipe to change, e.g. {"epochs": 1}
datasets = None  # None: the recipe's data set; paper: ["cifar10", "cifar100"]
variants = ["ResNet", "Momentum ResNet, v0 = 0"]  # paper: also "Momentum ResNet, v0 = f(x0)"
seeds = [0, 1, 2, 3]  # paper: 10 runs
parity_points = 5.0  # asserted: the 95 % interval of each momentum model's gap to the ResNet within +-this
paper_parity_points = 0.5  # reported: the paper's parity (its largest gap is 0.48 point)
gamma_test = 0.0  # the Momentum ResNet (v0 = 0) evaluated at this gamma instead of the trained one ...
gamma_change_points = 2.5  # ... loses at least this many points at every seed (Figure 6's drop)
gradient_tolerance = 1e-6  # memory-free vs backprop parameter gradients, float64, relative
train_missing = True  # False (paper): train nothing here, aggregate the runs the sweep launcher finished

# %%
os.environ["MRESNET_EXACT_BACKEND"] = exact_backend
recipe = images.recipe(recipe_name, **recipe_changes)
start = setup_notebook(recipe.threads, seeds[0])
datasets = datasets or [recipe.dataset]
print("recipe:", recipe)
for dataset in datasets:
    print("data:", recipe.data(dataset).describe())
rows, models = [], {}
for dataset in datasets:
    part, trained = table2.accuracy_over_seeds(recipe, dataset, seeds, variants, gamma_test=gamma_test,
                                               profile=profile if use_cache else None, train_missing=train_missing)
    rows += part
    models.update({(dataset, *key): model for key, model in trained.items()})
if use_cache:  # the same runs as `python -m mresnet_core.sweep table2 --profile <profile>` (one job per run)
    print("runs:", sweep.collect(table2.sweep_runs(profile, recipe, datasets, seeds, variants))[1])
if not rows:
    raise RuntimeError(f"no finished run to aggregate: train them first, e.g. `python -m mresnet_core.sweep table2 "
                       f"--profile {profile} --slurm table2.sbatch` (or --local --gpus 0 1 ...), or train_missing=True")
runs = pd.DataFrame(rows)
runs.pivot_table(index=["dataset", "seed"], columns="model", values="test accuracy", sort=False).round(2)

# %% [markdown]
# Mean and spread per model, then each Momentum ResNet's gap to the ResNet of the same
# seed (points; positive: the Momentum ResNet ahead) with its 95 % Student-t interval
# over the seeds.

# %%
stats = table2.summary(runs)
stats.round(2)

# %%
gap_table = table2.gaps(runs)
gap_table.round(2)

# %% [markdown]
# Do the momentum stacks act? The Momentum ResNet (v0 = 0) trained at gamma = 0.9,
# evaluated at another gamma_test without retraining: its residual functions were trained
# for the momentum update, so the accuracy changes (Figure 6's effect); had the stacks
# computed nothing (f = 0), it could not change. And are its memory-free gradients
# backprop's? One training step on a batch of test images, memory-free (exact inversion)
# against ordinary backprop through the same trained network, in float64; the stacks'
# share of the gradient norm is what a fault confined to the stacks would move at least.

# %%
column = f"at gamma_test = {gamma_test:g}"
momentum_runs = runs[runs["model"] == "Momentum ResNet, v0 = 0"]
print(momentum_runs[["dataset", "seed", "test accuracy", column]].round(2).to_string(index=False))
x, y = images.first_test_images(recipe, 32, datasets[0])
checked = {v: next(s for s in seeds if (datasets[0], v, s) in models) for v in variants
           if v != "ResNet" and any((datasets[0], v, s) in models for s in seeds)}  # its first trained seed
gradient_checks = {v: images.memory_free_gradient_error(models[datasets[0], v, s], x, y) for v, s in checked.items()}
pd.DataFrame(gradient_checks).T

# %%
fig = table2.plot_accuracies(runs)
save_figure(fig, "table2_accuracy")

# %% [markdown]
# ## Paper vs this run
# The paper's numbers are for ResNet-101 on CIFAR; on another data set (the quick
# profile's Fashion-MNIST) the CIFAR-10 ones are shown for reference only: compare the
# gaps between the models, not the accuracies.

# %%
table_rows = []
for _, r in stats.iterrows():
    paper_key = r["dataset"] if r["dataset"] in table2.PAPER_TABLE2 else "cifar10"
    pm, ps = table2.PAPER_TABLE2[paper_key][r["model"]]
    pr = table2.PAPER_TABLE2[paper_key]["ResNet"][0]
    row = {"data set": r["dataset"], "model": r["model"],
           "paper": f"{pm} ± {ps}" + (f", gap {pm - pr:+.2f}" if r["model"] != "ResNet" else "")
                    + f" ({paper_key}, ResNet-101, 10 runs)",
           "this run: mean accuracy (%)": round(r["mean"], 2), "this run: std": round(r["std"], 2),
           "this run: runs": int(r["runs"])}
    g = gap_table[(gap_table["dataset"] == r["dataset"]) & (gap_table["model"] == r["model"])]
    if len(g):
        row.update({"this run: mean gap (points)": round(g["mean gap"].item(), 2),
                    "this run: 95% low": round(g["95% low"].item(), 2),
                    "this run: 95% high": round(g["95% high"].item(), 2)})
    table_rows.append(row)
paper_vs_this_run(table_rows)

# %%
for _, g in gap_table.iterrows():
    print(f"{g['dataset']}: {g['model']} vs ResNet: mean gap {g['mean gap']:+.2f} points over {g['seeds']} seeds, "
          f"95 % interval [{g['95% low']:+.2f}, {g['95% high']:+.2f}] (the paper: at most 0.48 point apart)")
worst = momentum_runs[column].sub(momentum_runs["test accuracy"]).abs().min()
print(f"At gamma_test = {gamma_test:g} the Momentum ResNet (v0 = 0) changes by at least {worst:.1f} points "
      "at every seed.")

# %% [markdown]
# ## Checks
# Criteria fixed before the run. **Parity** (asserted): the 95 % interval of each Momentum
# ResNet's gap to the ResNet lies within ±`parity_points` (5 points). The paper's gaps are
# at most 0.48 point, with per-run standard deviations of 0.06-0.42 over 10 full-length
# runs; at this profile's length a single run's accuracy moves by one to two points
# between seeds (pilot runs before this notebook: std of the gap about 1.7 points, so
# about ±2.7 for the 95 % interval over 4 seeds), so 0.5 point cannot be resolved here:
# the asserted tolerance is that resolution plus the paper's largest gap plus a margin
# for other machines' rounding (which moves each run as a seed change does). A momentum
# or a memory-free backward costing more than that fails it. The paper's own 0.5-point
# parity (the interval within ±0.5) is reported. **The momentum stacks act** (asserted,
# v0 = 0 model): evaluated at gamma_test = 0 instead of the trained 0.9, it loses at least
# the 2.5 points the paper's Figure 6 shows for a change of gamma_test, at every seed; a
# network whose stacks computed nothing would lose none. **Memory-free gradients**
# (a consistency check, asserted: exact inversion makes them backprop's up to rounding):
# within `gradient_tolerance` of backprop's (float64).

# %%
# NBVAL_CHECK_OUTPUT
measured, reported = {}, {}
for _, g in gap_table.iterrows():
    name = f"{g['dataset']}: {g['model']} vs ResNet, {g['seeds']} seeds"
    measured[f"{name}: 95 % interval of the accuracy gap within ±{parity_points:g} points"] = \
        -parity_points <= g["95% low"] and g["95% high"] <= parity_points
    reported[f"{name}: 95 % interval of the accuracy gap within ±{paper_parity_points:g} points (the paper's parity)"] = \
        -paper_parity_points <= g["95% low"] and g["95% high"] <= paper_parity_points
for dataset in datasets:
    change = momentum_runs[momentum_runs["dataset"] == dataset]
    measured[f"{dataset}: Momentum ResNet (v0 = 0) trained at gamma = {recipe.gamma:g}, evaluated at gamma_test = "
             f"{gamma_test:g}: loses >= {gamma_change_points:g} points at every seed (its momentum stacks act)"] = \
        bool((change["test accuracy"] - change[column] >= gamma_change_points).all())
identities = {}  # exact inversion makes the memory-free gradients backprop's, up to rounding
for variant, check in gradient_checks.items():
    identities[f"{variant}: memory-free parameter gradients within {gradient_tolerance:g} of backprop's (float64, "
               "relative)"] = check["relative difference"] <= gradient_tolerance
check_claims(measured, identities=identities, reported=reported)

# %%
print(f"notebook run time: {time.monotonic() - start:.0f} s (this kernel's CPU time: {time.process_time():.0f} s)")
