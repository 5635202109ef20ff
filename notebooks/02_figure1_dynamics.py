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
# # Figure 1: ResNet vs Momentum ResNet dynamics in 1-D
#
# **Claim (Sander et al. 2021, Fig. 1 and Sec. 4).** Learning the decreasing map
# $x \mapsto -x^3$ on $[-1, 1]$ with a deep network of tied weights (depth 15,
# $f$ = Linear(1,16)-Tanh-Linear(16,1)): a ResNet is a discretised first-order ODE, its
# trajectories never cross, so it can only learn an *increasing* map and cannot fit;
# a Momentum ResNet (second order) can make trajectories cross and reverses the order
# of the inputs, fitting $-x^3$.
#
# Settings ([ref] script): SGD lr 0.01, 200 fresh points per step, MSE, seed 1,
# 301 steps for the Momentum ResNet and 2001 for the ResNet. The caption says
# $\gamma = 0.9$, the reference script used $\gamma = 0.99$: both are run.
#
# **Quick profile** (default, CPU, well under a minute of training): the paper's settings
# unchanged; these models are tiny. It shows the 8 trajectories, checks numerically that
# the ResNet keeps the order of the 8 inputs at every depth (in float64, and every
# ResNet layer is strictly increasing) while both Momentum ResNets reverse it, and
# compares the fit errors on a fixed grid with the best any increasing map can do.
# **Paper profile**: the same settings (`notebooks/params/paper.yaml`); nothing more is
# needed. The paper gives no numbers for this figure, only the picture.

# %%
# %matplotlib inline
import time

import numpy as np
import pandas as pd
import torch

from mresnet_core.experiments import dynamics as te
from mresnet_core.plotting import save_figure, use_style

# %% tags=["parameters"]
profile = "quick"  # results/<profile>/ holds the trained weights
threads = 1  # tiny models: one thread is fastest on a shared 2-core CPU (0: torch default)
seed = 1
depth = 15
hidden = 16
lr = 0.01
batch = 200  # fresh points per SGD step
gammas = [0.9, 0.99]  # paper caption, reference script
momentum_steps = 301
resnet_steps = 2001
n_trajectories = 8
n_test = 201  # fixed test grid on [-1, 1]

# %%
if threads:
    torch.set_num_threads(threads)
use_style()
common = dict(depth=depth, hidden=hidden, lr=lr, batch=batch, seed=seed, profile=profile)

start = time.monotonic()
models, losses = {}, {}
models[0.0], losses[0.0] = te.train_cubic(0.0, resnet_steps, **common)
for gamma in gammas:
    models[gamma], losses[gamma] = te.train_cubic(gamma, momentum_steps, **common)
print(f"training (or loading the cached weights): {time.monotonic() - start:.1f} s")

# %%
best_increasing = te.best_increasing_mse(n_test)
mse = {g: te.cubic_test_mse(m, n_test) for g, m in models.items()}
traj = {g: te.trajectories(m, n_trajectories) for g, m in models.items()}
n_pairs = n_trajectories * (n_trajectories - 1) // 2
swapped = {g: te.swapped_pairs(t) for g, t in traj.items()}
resnet_slope = te.layer_map_min_slope(models[0.0])
for g in models:
    name = "ResNet" if g == 0 else f"Momentum ResNet, gamma = {g}"
    print(f"{name:<32} test MSE {mse[g]:.4f}  order kept at depth 0..{depth}: "
          f"{''.join('y' if k else '.' for k in te.order_kept(traj[g]))}  "
          f"swapped pairs at the output: {swapped[g]}/{n_pairs}")
print(f"best MSE of any increasing map on the grid (constant fit): {best_increasing:.4f}")
print(f"smallest slope of a ResNet layer x -> x + f(x) on [-1.5, 1.5]: {resnet_slope:.3f}")

# %%
panels = {"ResNet": traj[0.0]}
for gamma, note in zip(gammas, ["paper caption", "reference script"]):
    panels[f"Momentum ResNet, $\\gamma$ = {gamma}\n({note})"] = traj[gamma]
fig = te.plot_dynamics(panels)
save_figure(fig, "figure1_dynamics")

# %%
rows = [dict(model="ResNet", gamma=0.0, steps=resnet_steps,
             paper="cannot fit: order kept, increasing map only",
             **{"this run: test MSE": round(mse[0.0], 4),
                "this run: swapped pairs": f"{swapped[0.0]}/{n_pairs}"})]
for g in gammas:
    rows.append(dict(model="Momentum ResNet", gamma=g, steps=momentum_steps,
                     paper="fits -x^3: trajectories cross",
                     **{"this run: test MSE": round(mse[g], 4),
                        "this run: swapped pairs": f"{swapped[g]}/{n_pairs}"}))
rows.append(dict(model="best increasing map (bound)", gamma=np.nan, steps=0, paper="-",
                 **{"this run: test MSE": round(best_increasing, 4), "this run: swapped pairs": f"0/{n_pairs}"}))
print("paper vs this run (Figure 1; the paper shows the picture, no numbers)")
pd.DataFrame(rows)

# %%
# NBVAL_CHECK_OUTPUT
resnet_kept = bool(te.order_kept(traj[0.0]).all())
print("ResNet: the 8 trajectories never cross (order kept at every depth):", resnet_kept)
print("ResNet: every layer x -> x + f(x) strictly increasing on [-1.5, 1.5]:", resnet_slope > 0)
print("ResNet: test MSE not below the best increasing map's:", mse[0.0] >= best_increasing - 1e-4)
assert resnet_kept and resnet_slope > 0 and mse[0.0] >= best_increasing - 1e-4
for g in gammas:
    reversed_all = bool(np.all(np.diff(traj[g][-1]) < 0)) and swapped[g] == n_pairs
    fits = mse[g] < 0.5 * best_increasing
    print(f"Momentum ResNet, gamma = {g}: output order fully reversed (trajectories cross):", reversed_all)
    print(f"Momentum ResNet, gamma = {g}: test MSE below half the best increasing map's:", fits)
    assert reversed_all and fits
