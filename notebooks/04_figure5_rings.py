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
# # Figure 5: separating 4 nested rings, ResNet vs Momentum ResNet
#
# **Claim (Sander et al. 2021, Fig. 5).** Four nested rings in the plane with alternating
# labels 0, 1, 0, 1 must be made linearly separable by a 2-D network of tied weights.
# A ResNet (like a neural ODE, Teh et al. 2019, whose flow cannot untangle nested
# rings) fails; a Momentum ResNet separates them. Rows: ResNet / Momentum ResNet;
# columns: the point cloud at increasing depth.
#
# Settings ([ref] script): tied $f$ = Linear(2,16)-Tanh-Linear(16,2), depth 15,
# $\gamma = 0.99$, ring radii $3(r + 0.2\,U[0,1])$ for $r \in \{0.5, 1, 1.5, 2\}$,
# 2000 fresh points per ring per step, cross-entropy on the 2-D output used as logits,
# Adam; Momentum ResNet 1500 steps at lr 0.2; ResNet 5000 steps at lr 0.01, halved at
# step 2500 and divided by 10 at step 3750.
#
# **Quick profile** (default, CPU, about two minutes the first time): the paper's
# settings unchanged, one seed (1). Trained weights are cached under `results/<profile>/`
# in files named after a hash of the settings, so re-running redraws the figure in
# seconds and a changed setting retrains. It shows the figure and checks the final
# accuracy on a fixed sample of 500 points per ring: at seed 1 the Momentum ResNet
# separates the rings (>= 0.95), the ResNet does not (<= 0.9).
# **Paper profile** (`notebooks/params/paper.yaml`): the same settings, plus seeds 2-5
# (`extra_seeds`) to see how much the outcome depends on the seed: it does, see the end.
# The paper gives the picture only, no accuracies.

# %%
# %matplotlib inline
import time

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
gamma = 0.99
points_per_ring = 2000  # fresh points per ring per step
momentum_steps = 1500
momentum_lr = 0.2
resnet_steps = 5000  # lr halved at resnet_steps // 2, divided by 10 more at 3 * resnet_steps // 4
resnet_lr = 0.01
eval_points_per_ring = 500  # fixed sample drawn and scored
layers_shown = [0, 5, 10, 15]
extra_seeds = []  # more seeds, accuracies only (about 2-3 CPU minutes each)

# %%
if threads:
    torch.set_num_threads(threads)
use_style()
common = dict(points_per_ring=points_per_ring, depth=depth, hidden=hidden, seed=seed, profile=profile)

start = time.monotonic()
momentum, momentum_losses = te.train_rings(gamma, momentum_steps, momentum_lr, **common)
resnet, resnet_losses = te.train_rings(0.0, resnet_steps, resnet_lr, **common)
print(f"training (or loading the cached weights): {time.monotonic() - start:.1f} s")

# %%
points, labels = te.rings_eval_set(eval_points_per_ring)
accuracy = {"ResNet": te.rings_accuracy(resnet, points, labels),
            "Momentum ResNet": te.rings_accuracy(momentum, points, labels)}
final_loss = {"ResNet": sum(resnet_losses[-50:]) / 50, "Momentum ResNet": sum(momentum_losses[-50:]) / 50}
folds = te.fold_fraction(resnet, points)
for name in accuracy:
    print(f"{name:<16} accuracy {accuracy[name]:.3f}  cross-entropy (mean of the last 50 steps) "
          f"{final_loss[name]:.3f}")
print(f"ResNet layer map folds the plane (Jacobian determinant <= 0) at {100 * folds:.1f} % "
      "of the points it visits")

# %%
snapshots = {"ResNet": te.ring_snapshots(resnet, points, layers_shown),
             f"Momentum ResNet ($\\gamma$ = {gamma})": te.ring_snapshots(momentum, points, layers_shown)}
fig = te.plot_rings(snapshots, labels.numpy(), titles={
    "ResNet": f"\naccuracy {accuracy['ResNet']:.2f}",
    f"Momentum ResNet ($\\gamma$ = {gamma})": f"\naccuracy {accuracy['Momentum ResNet']:.2f}"})
save_figure(fig, "figure5_rings")

# %%
print("paper vs this run (Figure 5; the paper shows the picture, no numbers)")
pd.DataFrame([
    {"model": "ResNet", "steps": resnet_steps, "lr": resnet_lr, "paper": "fails to separate",
     f"this run (seed {seed}): accuracy": round(accuracy["ResNet"], 3)},
    {"model": f"Momentum ResNet (gamma = {gamma})", "steps": momentum_steps, "lr": momentum_lr,
     "paper": "separates the rings", f"this run (seed {seed}): accuracy": round(accuracy["Momentum ResNet"], 3)},
])

# %%
# NBVAL_CHECK_OUTPUT
separates = accuracy["Momentum ResNet"] >= 0.95
fails = accuracy["ResNet"] <= 0.9
print("Momentum ResNet separates the rings (accuracy >= 0.95):", separates)
print("ResNet does not (accuracy <= 0.9):", fails)
assert separates and fails

# %% [markdown]
# ## How much does the outcome depend on the seed?
#
# The figure is one training run per model, as in the paper. Measured while building
# this notebook (same settings and code, this machine, accuracy on the same 500 points
# per ring):
#
# | seed | ResNet | Momentum ResNet |
# |---|---|---|
# | 1 (above) | 0.818 | 0.999 |
# | 2 | 1.000 | 0.937 |
# | 3 | 0.924 | 0.919 |
#
# So in this reproduction the contrast of Figure 5 holds at seed 1 but not at seeds 2
# and 3: the tied ResNet sometimes separates the rings, and the Momentum ResNet at the
# constant learning rate 0.2 sometimes ends short of 0.95. The "trajectories cannot
# cross" argument is about ODE flows; with 15 large steps the trained ResNet's layer map
# x -> x + f(x) is not invertible: its Jacobian determinant is negative at a sizeable
# share of the points it visits (printed above for seed 1; about 16 % for the seed-2
# ResNet that separates the rings), so the discrete ResNet folds the plane, which no
# flow can do, and whether it separates the rings is left to the optimisation. The cell
# below reruns further seeds (`extra_seeds`, paper profile).

# %%
rows = []
for s in extra_seeds:
    other = {**common, "seed": s}
    m_mom, _ = te.train_rings(gamma, momentum_steps, momentum_lr, progress=False, **other)
    m_res, _ = te.train_rings(0.0, resnet_steps, resnet_lr, progress=False, **other)
    rows.append({"seed": s, "ResNet accuracy": round(te.rings_accuracy(m_res, points, labels), 3),
                 "Momentum ResNet accuracy": round(te.rings_accuracy(m_mom, points, labels), 3),
                 "ResNet folds (% of visited points)": round(100 * te.fold_fraction(m_res, points), 1)})
rows.insert(0, {"seed": seed, "ResNet accuracy": round(accuracy["ResNet"], 3),
                "Momentum ResNet accuracy": round(accuracy["Momentum ResNet"], 3),
                "ResNet folds (% of visited points)": round(100 * folds, 1)})
pd.DataFrame(rows)
