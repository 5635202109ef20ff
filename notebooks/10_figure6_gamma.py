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
# # Figure 6 (top): robustness to $\gamma$
#
# **Claim (Sander et al. 2021, Fig. 6 top).** Momentum ResNet-101 on CIFAR-10: trained and
# evaluated at the same $\gamma$, the accuracy is flat in $\gamma$ (about 95.0-95.2 %); a
# network trained at $\gamma_{train} = 0$ (a ResNet with the momentum structure) and
# evaluated at another $\gamma_{test}$ loses accuracy as $\gamma_{test}$ grows (to about
# 92.5 % at $\gamma_{test} = 1$), and a short refit at $\gamma_{test}$ (20 epochs in the
# paper) recovers it. At $\gamma = 1$ the momentum stacks ignore their residual functions
# ($(1-\gamma) f = 0$): only the first block of each stage still acts. Figure 6 (bottom),
# ImageNet top-1 errors, needs ImageNet: it is a command for the trainer (README), not a
# notebook.
#
# **Quick profile** (default, CPU, about two minutes): the narrow Momentum ResNet-18 of
# the Table 2 notebook on the embedded digits (16x16), 6 epochs, at
# $\gamma \in \{0, 0.3, 0.6, 0.9, 1\}$; the $\gamma_{train} = 0$ network evaluated at
# each $\gamma_{test}$, then refitted for 2 epochs at each. **Paper profile**: Momentum
# ResNet-101 on CIFAR-10 with the paper's recipe and a 20-epoch refit (GPU).

# %%
# %matplotlib inline
import os

import pandas as pd

from mresnet_core.experiments import gamma_robustness as gr
from mresnet_core.experiments.common import check_claims, paper_vs_this_run, setup_notebook
from mresnet_core.experiments.images import describe_data, final_accuracy
from mresnet_core.plotting import save_figure

# %% tags=["parameters"]
profile = "quick"
use_cache = True
threads = 1
exact_backend = "auto"  # MRESNET_EXACT_BACKEND: auto (the C kernels on the CPU), native, compile or eager
dataset = "digits"  # paper: "cifar10"
data_dir = None
image_size = 16  # digits; None for CIFAR (32)
depth = 18  # paper: 101
width = 8  # paper: 64
epochs = 6  # paper: 220
batch_size = 64
lr = 0.05  # paper: 0.01
lr_milestones = [4]  # paper: [180]
gammas = [0.0, 0.3, 0.6, 0.9, 1.0]
refit_epochs = 2  # paper: 20
refit_lr = 0.005  # the last learning rate of the schedule
seed = 0
flat_points = 2.0  # trained at gamma_test: every accuracy within this many points of the best
drop_points = 5.0  # gamma_train = 0 at gamma_test = 1, no refit: at least this many points lost
recovered_points = 2.0  # after the refit: within this many points of the network trained there

# %%
os.environ["MRESNET_EXACT_BACKEND"] = exact_backend
start = setup_notebook(threads, seed)
data_settings = dict(dataset=dataset, data_dir=data_dir, image_size=image_size)
print("data:", describe_data(**data_settings))
settings = dict(**data_settings, width=width, batch_size=batch_size, seed=seed, threads=threads)
trained = gr.train_at_each_gamma(gammas, profile=profile if use_cache else None, depth=depth, epochs=epochs,
                                 lr=lr, lr_milestones=tuple(lr_milestones), **settings)
trained_at = {g: final_accuracy(r) for g, r in trained.items()}
base = trained[0.0].model
no_refit = gr.accuracy_at_gammas(base, gammas, **data_settings)
refit = gr.refit_at_gammas(base, [g for g in gammas if g > 0], epochs=refit_epochs, lr=refit_lr, **settings)
refit[0.0] = trained_at[0.0]  # gamma_test = gamma_train: nothing to refit
results = pd.DataFrame({"trained at gamma_test": trained_at, "gamma_train = 0, no refit": no_refit,
                        f"gamma_train = 0, refit {refit_epochs} epochs": refit}).rename_axis("gamma_test")
results.round(2)

# %%
paper = {"paper (CIFAR-10): gamma_train = 0, no refit": [(1.0, 92.5)]} if dataset == "cifar10" else None
fig = gr.plot_robustness(gammas, trained_at, {"$\\gamma_{train} = 0$, no refit": no_refit,
                                               f"$\\gamma_{{train}} = 0$, refit {refit_epochs} epochs":
                                                   dict(sorted(refit.items()))}, paper)
save_figure(fig, "figure6_gamma")

# %% [markdown]
# ## Paper vs this run
# The paper's accuracies are CIFAR-10 ones; on the digits compare the shapes of the
# curves (flat, falling, recovered), not the values.

# %%
spread = max(trained_at.values()) - min(trained_at.values())
drop = no_refit[0.0] - no_refit[1.0]
gap_after_refit = max(trained_at[g] - refit[g] for g in gammas)
paper_vs_this_run([
    {"curve": "gamma_train = gamma_test", "measure": "spread of the accuracy over gamma (points)",
     "paper": "flat: 95.0-95.2 % (CIFAR-10)", "this run": round(spread, 2)},
    {"curve": "gamma_train = 0, no refit", "measure": "accuracy at gamma_test = 1 (%)",
     "paper": "about 92.5 % (from about 95 %)", "this run": round(no_refit[1.0], 2)},
    {"curve": f"gamma_train = 0, refit {refit_epochs} epochs at gamma_test (paper: 20)",
     "measure": "accuracy at gamma_test = 1 (%)", "paper": "recovers", "this run": round(refit[1.0], 2)},
    {"curve": f"gamma_train = 0, refit {refit_epochs} epochs at gamma_test (paper: 20)",
     "measure": "largest gap to trained-at-gamma_test (points)", "paper": "small", "this run": round(gap_after_refit, 2)},
])

# %%
print(f"Without refit the gamma_train = 0 network loses {drop:.1f} points at gamma_test = 1 "
      f"({no_refit[0.0]:.1f} % -> {no_refit[1.0]:.1f} %); the paper's ResNet-101 lost about 2.5 points. "
      f"A {refit_epochs}-epoch refit brings every gamma_test within {gap_after_refit:.1f} points of the network "
      "trained there.")

# %% [markdown]
# ## Checks
# Asserted: a gamma_train = 0 network suffers at another gamma_test (it would not if the
# momentum did nothing). Reported, not asserted: the flat curve and the recovery after a
# refit, each within 2 points. On the AVX2 machine of the first execution the spread
# was exactly 2.00; on the AVX-512 machine of this execution (other matrix-kernel
# rounding, one seed, 6 epochs on the digits) both miss their 2 points: at this size they
# are not stable findings, and the table above gives the numbers. Their printed outcome
# is still pinned by nbval.

# %%
# NBVAL_CHECK_OUTPUT
check_claims({
    f"gamma_train = 0 evaluated at gamma_test = 1 without refit loses >= {drop_points} points": drop >= drop_points,
}, reported={
    f"trained at gamma_test: every accuracy within {flat_points} points of the best": spread <= flat_points,
    f"after a {refit_epochs}-epoch refit: within {recovered_points} points of the network trained at gamma_test, "
    "at every gamma_test": gap_after_refit <= recovered_points,
})
