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
# # Figure 7: training memory against batch size, and accuracy against memory
#
# **Claim (Sander et al. 2021, Fig. 7).** Top: the memory of a training step grows with
# the batch size far more slowly for a Momentum ResNet (memory-free backward) than for the
# ResNet: on CIFAR-10 at depth 1201 the ResNet runs out of 32 GiB past batch 256 while the
# Momentum ResNet needs about 7 GiB at batch about 4096 (ImageNet at depth 152 likewise).
# Bottom: Momentum ResNet-101 on CIFAR-10 keeps its final accuracy (95.0-95.2 %) whatever
# the memory it is given (about 5 to 11 GiB).
#
# **Quick profile** (default, CPU, about two minutes): (top) the whole-step peak memory
# (parameter gradients included; the gradient-free peak dotted) of ResNet-101 and its
# memory-free Momentum version at 8 base channels on 32x32 digit images, at batch sizes
# 4 to 32 (CPU profiler), and the largest batch each fits in a stated budget (straight
# line through the measured points); (bottom) a narrow Momentum ResNet-50 trained on the
# digits with its k = 0, 1 or 4 deepest momentum stacks memory-free: memory of its
# training step against its final accuracy. **Paper profile**: full width, GPU allocator peaks,
# larger batches, CIFAR-10 (`notebooks/params/paper.yaml`).

# %%
# %matplotlib inline
import os

import pandas as pd

from mresnet_core.experiments import batch_memory as bm
from mresnet_core.experiments.common import check_claims, paper_vs_this_run, setup_notebook
from mresnet_core.experiments.images import describe_data
from mresnet_core.plotting import save_figure

# %% tags=["parameters"]
profile = "quick"
threads = 1
exact_backend = "auto"  # MRESNET_EXACT_BACKEND: auto (the C kernels on the CPU), native, compile or eager
seed = 0
# top: memory against batch size
depth = 101
width = 8  # paper: 64
image_size = 32
batches = [4, 8, 16, 32]
budget_mib = 256.0  # the memory budget both models must fit in
gamma = 0.9
# bottom: accuracy against memory, k memory-free stacks
stages_depth = 50  # its stacks hold 5, 3, 2 and 2 blocks
stages = [0, 1, 4]  # the k deepest stacks memory-free
stages_width = 8
stages_image_size = 16
stages_batch = 64
epochs = 6
lr = 0.05
lr_milestones = [4]
dataset = "digits"  # paper: "cifar10"
accuracy_points = 1.5  # accuracies of the k = 0..4 runs within this many points of each other

# %%
os.environ["MRESNET_EXACT_BACKEND"] = exact_backend
start = setup_notebook(threads, seed)
print("data:", describe_data(dataset=dataset, image_size=image_size, augment=False))
MiB = 2.0 ** 20
memory = pd.DataFrame(bm.memory_vs_batch([f"resnet{depth}", f"mresnet{depth}"], batches, image_size=image_size,
                                         width=width, gamma=gamma, seed=seed, dataset=dataset))
largest = bm.largest_batch(memory, budget_mib * MiB)
print(f"largest batch within {budget_mib:.0f} MiB (whole step): " + ", ".join(f"{k} {v}" for k, v in largest.items()))
memory.assign(**{c + " (MiB)": memory[c] / MiB for c in ("whole_step", "activations", "saved")}).drop(
    columns=["whole_step", "activations", "saved"]).round(2)

# %%
stages_table = pd.DataFrame(bm.accuracy_vs_memory_free_stages(
    stages, depth=stages_depth, batch_size=stages_batch, image_size=stages_image_size, width=stages_width,
    gamma=gamma, seed=seed, dataset=dataset, epochs=epochs, lr=lr, lr_milestones=tuple(lr_milestones),
    threads=threads))
stages_table.assign(**{"whole_step (MiB)": stages_table["whole_step"] / MiB}).round(3)

# %%
fig = bm.plot_memory(memory, budget_mib * MiB, largest, stages_table)
save_figure(fig, "figure7_memory_batch")

# %% [markdown]
# ## Paper vs this run

# %%
by = memory.set_index(["model", "batch"])["whole_step"]
ratio = {b: by[(f"mresnet{depth}", b)] / by[(f"resnet{depth}", b)] for b in batches}
spread = stages_table["test accuracy"].max() - stages_table["test accuracy"].min()
paper_vs_this_run([
    {"claim": f"Momentum / ResNet whole-step memory, depth {depth}, largest measured batch",
     "paper": "far smaller (depth 1201: ~7 GiB at batch ~4096 vs 32 GiB at 256)",
     "this run": round(float(ratio[max(batches)]), 3)},
    {"claim": f"largest batch within {budget_mib:.0f} MiB: ResNet", "paper": "-",
     "this run": largest[f"resnet{depth}"]},
    {"claim": f"largest batch within {budget_mib:.0f} MiB: Momentum ResNet (memory-free)", "paper": "larger",
     "this run": largest[f"mresnet{depth}"]},
    {"claim": "final accuracy across memory budgets: spread (points)", "paper": "95.0-95.2 % (spread ~0.2)",
     "this run": round(float(spread), 2)},
])

# %% [markdown]
# ## Checks
# The memory claims fail if the memory-free path stops saving memory at some batch size
# (or stops fitting a larger batch); the accuracy claim fails if making stacks
# memory-free changes what is learned (it should not: its gradients are exact).

# %%
# NBVAL_CHECK_OUTPUT
check_claims({
    f"Momentum ResNet-{depth} (memory-free) below the ResNet's whole-step peak at every batch size":
        all(r < 1 for r in ratio.values()),
    f"Momentum ResNet-{depth} fits a larger batch in {budget_mib:.0f} MiB":
        largest[f"mresnet{depth}"] > largest[f"resnet{depth}"],
    f"accuracy with k = {stages} memory-free stacks within {accuracy_points} points":
        spread <= accuracy_points,
    "more memory-free stacks, less memory (whole step, k = 0 vs all)":
        stages_table["whole_step"].iloc[-1] < stages_table["whole_step"].iloc[0],
})
