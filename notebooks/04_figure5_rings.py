# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
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
# half the steps and divided by 10 more at three quarters. The paper shows one run.
#
# **The outcome depends on the seed**, so both models are trained at several seeds and
# the figure of the first seed is shown next to the accuracies of all of them.
# **Quick profile** (default, CPU, about two minutes): 5 seeds, with training shortened
# for *both* models alike: 40 % of the reference steps (Momentum ResNet 600, ResNet 2000,
# same learning rates and schedule shape) and 500 fresh points per ring per step instead
# of 2000. **Paper profile** (`notebooks/params/paper.yaml`): the reference settings
# unchanged, 5 seeds (about 15 CPU minutes). Accuracy is measured on a fixed sample of
# 500 points per ring. The paper gives the picture only, no accuracies.

# %%
# %matplotlib inline
import numpy as np

from mresnet_core.experiments import dynamics as te
from mresnet_core.experiments.common import check_claims, paper_vs_this_run, setup_notebook
from mresnet_core.plotting import save_figure

# %% tags=["parameters"]
profile = "quick"  # results/<profile>/ holds the trained weights
use_cache = True  # reuse weights trained by this code version with these settings
threads = 1  # tiny models: one thread is fastest on a shared 2-core CPU (0: torch default)
seeds = [1, 2, 3, 4, 5]  # the first one is drawn as Figure 5
depth = 15
hidden = 16
gamma = 0.99
points_per_ring = 500  # fresh points per ring per step (reference: 2000)
momentum_steps = 600  # reference: 1500
momentum_lr = 0.2
resnet_steps = 2000  # reference: 5000; lr halved at half the steps, /10 more at three quarters
resnet_lr = 0.01
eval_points_per_ring = 500  # fixed sample drawn and scored
layers_shown = [0, 5, 10, 15]
separated = 0.95  # accuracy from which the rings count as separated

# %%
start = setup_notebook(threads, seeds[0])
table, models = te.rings_over_seeds(
    seeds, gamma=gamma, momentum_steps=momentum_steps, momentum_lr=momentum_lr, resnet_steps=resnet_steps,
    resnet_lr=resnet_lr, points_per_ring=points_per_ring, depth=depth, hidden=hidden,
    eval_points_per_ring=eval_points_per_ring, profile=profile if use_cache else None)
table.round(3)

# %%
points, labels = te.rings_eval_set(eval_points_per_ring)
resnet, momentum = models[seeds[0]]
first = table.loc[seeds[0]]
snapshots = {"ResNet": te.ring_snapshots(resnet, points, layers_shown),
             f"Momentum ResNet ($\\gamma$ = {gamma})": te.ring_snapshots(momentum, points, layers_shown)}
fig = te.plot_rings(snapshots, labels.numpy(), titles={
    "ResNet": f"\naccuracy {first['ResNet accuracy']:.2f} (seed {seeds[0]})",
    f"Momentum ResNet ($\\gamma$ = {gamma})": f"\naccuracy {first['Momentum ResNet accuracy']:.2f} (seed {seeds[0]})"})
save_figure(fig, "figure5_rings")

# %%
fig = te.plot_accuracy_over_seeds(table, separated)
save_figure(fig, "figure5_rings_seeds")

# %% [markdown]
# ## Paper vs this run
# The paper shows one run and no accuracies; here the statistics over the seeds.

# %%
res, mom = table["ResNet accuracy"], table["Momentum ResNet accuracy"]
n_seeds = len(table)
ahead = int((mom > res).sum())
paper_vs_this_run([
    {"model": "ResNet", "paper": "fails to separate", "this run: median accuracy": round(res.median(), 3),
     "this run: min": round(res.min(), 3), "this run: max": round(res.max(), 3),
     f"this run: seeds separated (>= {separated})": int((res >= separated).sum()), "this run: seeds": n_seeds},
    {"model": f"Momentum ResNet (gamma = {gamma})", "paper": "separates the rings",
     "this run: median accuracy": round(mom.median(), 3), "this run: min": round(mom.min(), 3),
     "this run: max": round(mom.max(), 3),
     f"this run: seeds separated (>= {separated})": int((mom >= separated).sum()), "this run: seeds": n_seeds},
])

# %% [markdown]
# ## What holds, and what does not
# The "trajectories cannot cross" argument is about ODE flows; with 15 large steps a
# trained ResNet's layer map x -> x + f(x) need not be invertible: its Jacobian
# determinant is negative at a share of the points it visits (the "folds" column above),
# so the discrete ResNet can fold the plane, which no flow can do, and whether it
# separates the rings is left to the optimisation. The conclusion below is computed from
# this run's table.

# %%
print(f"Momentum ResNet ahead of the ResNet at {ahead} of {n_seeds} seeds; median accuracy "
      f"{mom.median():.3f} vs {res.median():.3f}.")
print(f"Rings separated (accuracy >= {separated}): Momentum ResNet at {int((mom >= separated).sum())} of {n_seeds} "
      f"seeds, ResNet at {int((res >= separated).sum())} of {n_seeds}.")
robust = (mom >= separated).all() and (res < separated).all()
print("The paper's contrast (the ResNet fails, the Momentum ResNet separates) holds at every seed:"
      if robust else
      "The paper's contrast (the ResNet fails, the Momentum ResNet separates) does not hold at every seed: "
      "what holds here is that the Momentum ResNet does better in median and at most seeds.")

# %% [markdown]
# ## Checks
# Asserted: the Momentum ResNet is ahead in median and above 0.85 at every seed; both
# fail if the momentum stops helping (for instance with the momentum switched off, which
# makes the "Momentum ResNet" a ResNet trained with a large constant learning rate).
# Reported, not asserted: "ahead at a majority of seeds". It held on the AVX2 machine the
# notebook was first run on (3 of 5 seeds) and not on the AVX-512 machine of this
# execution, whose matrix kernels round differently: at five seeds and 40 % of the
# reference training it is not a stable finding (the paper profile runs the reference
# length). Its printed outcome is still pinned by nbval.

# %%
# NBVAL_CHECK_OUTPUT
check_claims({
    "Momentum ResNet: median accuracy over the seeds above the ResNet's": mom.median() > res.median(),
    "Momentum ResNet above 0.85 at every seed": bool((mom > 0.85).all()),
}, reported={
    "Momentum ResNet ahead of the ResNet at a majority of seeds": ahead > n_seeds / 2,
})
