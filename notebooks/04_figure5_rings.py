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
# columns: the point cloud at increasing depth. The paper shows one run and gives no
# accuracy.
#
# Settings ([ref] script, `examples_paper/run_separation_nested_rings.py` of the authors'
# repository): tied $f$ = Linear(2,16)-Tanh-Linear(16,2), depth 15, $\gamma = 0.99$,
# ring radii $3(r + 0.2\,U[0,1])$ for $r \in \{0.5, 1, 1.5, 2\}$, 2000 fresh points per
# ring per step, cross-entropy on the 2-D output used as logits, Adam; Momentum ResNet
# 1500 steps at lr 0.2; ResNet 5000 steps at lr 0.01, halved at half the steps and
# divided by 10 more at three quarters; one run (seed 1). (The repository's data helper
# now makes 2 rings by default; at the time of the paper it made 4, as the figure shows.)
#
# **What "separates" means here, fixed before any run.** A model separates the rings
# when its accuracy on a fixed evaluation sample (500 points per ring, 2000 in all) is at
# least 0.99. The rings are disjoint bands (0.9 apart), so a network that has made them
# linearly separable puts every point on its side; 0.99 leaves 20 points (4 % of one
# ring) for the boundary's neighbourhood, while a whole ring on the wrong side costs 25
# points in 100. A second, lower level frames the asserted check: 0.75, what a single
# circular cut reaches (3 of the 4 rings right), i.e. a model that has learnt at most
# one of the three ring boundaries.
#
# **The outcome depends on the seed**, so both models are trained at several seeds; the
# notebook reports, for each model, the fraction of seeds that separate and the mean
# accuracy with its 95 % t-interval, and draws the first seed's run as Figure 5.
# **Quick profile** (default, CPU, about a minute and a half on 2 cores): the reference
# training (steps, learning rates, schedule, widths, depth, $\gamma$) at 5 seeds, with
# one cut: 500 fresh points per ring per step instead of 2000 (a noisier gradient per
# step; the cut is printed below). The runs are spread over 2 worker processes.
# **Paper profile** (`notebooks/params/paper.yaml`): the reference settings unchanged,
# at 10 seeds (about 10 CPU minutes).

# %%
# %matplotlib inline
import numpy as np

from mresnet_core.experiments import dynamics as te
from mresnet_core.experiments.common import check_claims, paper_vs_this_run, setup_notebook
from mresnet_core.plotting import save_figure

# %% tags=["parameters"]
profile = "quick"  # results/<profile>/ holds the trained weights
use_cache = True  # reuse weights trained by this code version with these settings
threads = 1  # torch threads per training process: tiny models, one core each
workers = 2  # training processes the runs are spread over (1: all in this process)
seeds = [1, 2, 3, 4, 5]  # the first one is drawn as Figure 5 (paper profile: 1..10)
depth = 15
hidden = 16
gamma = 0.99
points_per_ring = 500  # fresh points per ring per step (reference: 2000)
momentum_steps = 1500
momentum_lr = 0.2
resnet_steps = 5000  # lr halved at half the steps, /10 more at three quarters
resnet_lr = 0.01
eval_points_per_ring = 500  # fixed sample drawn and scored
layers_shown = [0, 5, 10, 15]
separated = 0.99  # accuracy from which the rings count as separated (fixed before the run)
one_cut = 0.75  # accuracy of a single circular cut: 3 of the 4 rings right

# %%
start = setup_notebook(threads, seeds[0])
settings = dict(depth=depth, hidden=hidden, gamma=gamma, points_per_ring=points_per_ring,
                momentum_steps=momentum_steps, momentum_lr=momentum_lr, resnet_steps=resnet_steps,
                resnet_lr=resnet_lr)
cuts = te.rings_cuts(settings)
print(f"Profile {profile!r}: " + ("the reference script's settings" if not cuts else
                                  "the reference script's settings but " + "; ".join(cuts)) +
      f"; seeds {seeds}.")
print(f"Data: 4 generated nested rings (radii 3 (r + 0.2 U[0,1]), r in {te.RING_RADII}), labels 0, 1, 0, 1; "
      f"{points_per_ring} fresh points per ring per training step; evaluation on one fixed sample of "
      f"{eval_points_per_ring} points per ring.")
# nudged_seed: how much one seed's result depends on rounding: the first seed's Momentum
# ResNet again, one initial weight moved to the next float32 (the size of a rounding change)
table, models, nudged = te.rings_over_seeds(
    seeds, gamma=gamma, momentum_steps=momentum_steps, momentum_lr=momentum_lr, resnet_steps=resnet_steps,
    resnet_lr=resnet_lr, points_per_ring=points_per_ring, depth=depth, hidden=hidden,
    eval_points_per_ring=eval_points_per_ring, profile=profile if use_cache else None, workers=workers,
    threads=threads, nudged_seed=seeds[0])
table.round(4)

# %%
nudged_accuracy = te.rings_accuracy(nudged, *te.rings_eval_set(eval_points_per_ring))
print(f"Momentum ResNet, seed {seeds[0]}: accuracy {table.loc[seeds[0], 'Momentum ResNet accuracy']:.4f}; "
      f"with one initial weight moved by one float32 step: {nudged_accuracy:.4f}.")

# %%
points, labels = te.rings_eval_set(eval_points_per_ring)
resnet, momentum = models[seeds[0]]
first = table.loc[seeds[0]]
snapshots = {"ResNet": te.ring_snapshots(resnet, points, layers_shown),
             f"Momentum ResNet ($\\gamma$ = {gamma})": te.ring_snapshots(momentum, points, layers_shown)}
fig = te.plot_rings(snapshots, labels.numpy(), titles={
    "ResNet": f"\naccuracy {first['ResNet accuracy']:.3f} (seed {seeds[0]})",
    f"Momentum ResNet ($\\gamma$ = {gamma})": f"\naccuracy {first['Momentum ResNet accuracy']:.3f} (seed {seeds[0]})"})
save_figure(fig, "figure5_rings")

# %%
fig = te.plot_accuracy_over_seeds(table, separated, one_cut)
save_figure(fig, "figure5_rings_seeds")

# %% [markdown]
# ## Paper vs this run
# The paper shows one run of each model and no accuracies; here the fraction of seeds
# that separate the rings (accuracy >= the level fixed above) and the mean accuracy with
# its 95 % t-interval over the seeds.

# %%
summary = te.separation_summary(table, separated)
res, mom = table["ResNet accuracy"], table["Momentum ResNet accuracy"]
n_seeds = len(table)
paper_vs_this_run([
    {"model": name, "paper": expected,
     f"this run: seeds separated (>= {separated})": int(summary.loc[name, "seeds separated"]),
     "this run: seeds": n_seeds,
     "this run: fraction separated": float(summary.loc[name, "fraction separated"]),
     "this run: mean accuracy": round(float(summary.loc[name, "mean accuracy"]), 4),
     "this run: 95 % t-interval low": round(float(summary.loc[name, "95 % t-interval low"]), 4),
     "this run: 95 % t-interval high": round(float(summary.loc[name, "95 % t-interval high"]), 4),
     "this run: min": round(float(summary.loc[name, "min"]), 4),
     "this run: max": round(float(summary.loc[name, "max"]), 4)}
    for name, expected in (("ResNet", "fails to separate"), ("Momentum ResNet", "separates the rings"))])

# %% [markdown]
# ## What holds, and what does not
# The "trajectories cannot cross" argument is about ODE flows; with 15 large steps a
# trained ResNet's layer map x -> x + f(x) need not be invertible: its Jacobian
# determinant is negative at a share of the points it visits (the "folds" column of the
# first table), so the discrete ResNet can fold the plane, which no flow can do, and
# whether it separates the rings is left to the optimisation. The trainings are also
# sensitive to rounding (the nudged run above shows how far one rounding-sized change at
# initialisation moves one seed's result), so another machine's floating-point kernels
# may give other numbers at each seed: the claims below are about the spread over the
# seeds, not about one seed. The lines below are computed from this run.

# %%
count = {name: int(summary.loc[name, "seeds separated"]) for name in summary.index}
mean_mom, low_mom, high_mom = te.t_interval(mom)
print(f"Separated (accuracy >= {separated}): Momentum ResNet at {count['Momentum ResNet']} of {n_seeds} seeds, "
      f"ResNet at {count['ResNet']} of {n_seeds} (paper: the Momentum ResNet separates, the ResNet fails).")
print(f"Momentum ResNet: accuracy {mom.min():.4f} to {mom.max():.4f}, mean {mean_mom:.4f}, 95 % t-interval "
      f"[{low_mom:.4f}, {high_mom:.4f}]; ResNet: {res.min():.4f} to {res.max():.4f}, mean {res.mean():.4f}.")
print(f"Momentum ResNet more accurate than the ResNet at {int((mom > res).sum())} of {n_seeds} seeds.")

# %% [markdown]
# ## Checks
# Criteria fixed before the run (see the introduction): "separates" means accuracy
# >= 0.99 on the evaluation sample; 0.75 is what a single circular cut reaches.
# Asserted: the Momentum ResNet learns more than one ring boundary on average over the
# seeds, i.e. the 95 % t-interval of its mean accuracy lies above 0.75. It fails if the
# momentum stops working: with the momentum switched off the "Momentum ResNet" is a
# ResNet trained at lr 0.2 (`tests/notebooks/test_claims_trip.py` runs that case).
# Reported (the paper's two statements, printed as reproduced or not; their numbers are
# in the cell above): the Momentum ResNet separates the rings at every seed, and the
# ResNet separates them at none. The second counts how many of five ResNet runs pass
# 0.99, which another machine's rounding can change (see above); nbval pins the
# outcome of this execution.

# %%
# NBVAL_CHECK_OUTPUT
check_claims({
    f"Momentum ResNet: 95 % t-interval of the mean accuracy over the seeds above {one_cut} (one circular cut)":
        low_mom > one_cut,
}, reported={
    f"Momentum ResNet separates the rings (accuracy >= {separated}) at every seed": count["Momentum ResNet"] == n_seeds,
    f"ResNet fails to separate them (accuracy < {separated}) at every seed": count["ResNet"] == 0,
})
