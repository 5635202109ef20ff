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
# # Figure 8: fine-tuning under a memory budget
#
# **Claim (Sander et al. 2021, Fig. 8).** An ImageNet-pretrained ResNet-152 and the
# Momentum ResNet-152 converted from it (same weights) are fine-tuned on the small
# "hymenoptera" set (ants vs bees, 245 training images), each with the largest batch that
# fits the memory (2 vs 4); plotted against wall time on a GPU, the momentum model reaches
# about 80 % accuracy sooner and more smoothly.
#
# **Quick profile** (default, CPU, one core; a stand-in with the paper's shape,
# labelled as such). A narrow ResNet-101 (4 base channels; paper: ResNet-152 at full width)
# is pretrained briefly on 8 of the 10 Fashion-MNIST classes (2000 images, 2 epochs, where
# the paper has ImageNet), converted to a Momentum ResNet with the same weights, and both
# are fine-tuned on a small two-class set of the other two classes (dress vs coat: 244
# training and 200 test images, like hymenoptera's 245 and 153) with the same new head,
# each with the largest batch whose whole training step (parameter gradients included)
# fits one memory budget, *measured* by search, at several seeds (the seed sets the
# shuffling and augmentation). BatchNorm's running statistics of both models are first
# re-estimated on the new training images (one pass, no labels): the converted model's
# activations are not distributed as the ResNet's were, and with its old statistics its
# evaluation would lag behind its training. Time to 80 % is reported both in training
# wall time (evaluations excluded) and in training samples seen.
#
# Whether the *converted* model reaches 80 % within the two epochs depends, at this size,
# on the pretrained weights: with another pretraining seed (and otherwise similar settings) it
# stayed below 80 % during development, while the ResNet reached it every time. Another
# CPU's rounding changes the pretraining like a change of seed, so that outcome is shown
# (over the fine-tuning seeds, as a fraction) and printed, but not pinned in the checks.
#
# **Paper profile** (`notebooks/params/paper.yaml`): the paper's setting, on a GPU where
# there is one: torchvision's ImageNet-pretrained ResNet-152 (`pretrained_weights`, read
# from the torch hub cache or downloaded) instead of the pretraining here, fine-tuned on the
# hymenoptera folder (`dataset: imagefolder`, `data_dir: hymenoptera_data` under the data
# root: `train/` and `val/` with `ants/` and `bees/`) at 224x224. The memory budget there
# is a reconstruction: the paper gives the batches (2 and 4), not its GPU's free memory.

# %%
# %matplotlib inline
import os

import pandas as pd

from mresnet_core.experiments import batch_memory as bm
from mresnet_core.paths import under_data_root
from mresnet_core.experiments import finetune as ft
from mresnet_core.experiments.common import check_claims, paper_vs_this_run, setup_notebook
from mresnet_core.experiments.images import describe_data
from mresnet_core.plotting import save_figure

# %% tags=["parameters"]
profile = "quick"
use_cache = True  # the pretraining run is cached (keyed on settings and code version)
threads = 1  # 0: torch's default (with other jobs on this 2-core machine, 2 threads ran up to 5x slower)
exact_backend = "auto"  # MRESNET_EXACT_BACKEND: auto (the C kernels on the CPU), native, compile or eager
device = "cpu"  # "auto": a GPU where there is one
seed = 0  # pretraining and the new head
dataset = "fashion-mnist"
data_dir = None  # the data set's folder, relative ones under the data root (data/ or $MRESNET_DATA_DIR); None: its default
pretrained_weights = None  # paper: "IMAGENET1K_V1", torchvision's weights of resnet{depth}, instead of pretraining here
image_size = None  # None: the data set's own (28x28)
depth = 101  # paper: 152
width = 4  # base channels (paper: 64)
gamma = 0.9
pretrain_classes = [0, 1, 2, 5, 6, 7, 8, 9]  # T-shirt, trouser, pullover, sandal, shirt, sneaker, bag, boot
pretrain_images = 2000  # class-balanced subset of their 48000
pretrain_test_images = 400
pretrain_epochs = 2
pretrain_lr = 0.05
pretrain_batch = 32
finetune_classes = [3, 4]  # dress vs coat
finetune_images = 244  # hymenoptera: 245 training images
finetune_test_images = 200
budget_mib = 30.0  # one budget for both fine-tuning runs (whole training step)
max_batch = None
finetune_epochs = 2
finetune_lr = 0.01
eval_every = 81  # training samples between evaluations (a third of an epoch)
seeds = [0, 1, 2]
target = 80.0  # accuracy (%) the paper's curves reach
check_batch = 2
gradient_tolerance = 1e-5  # relative, float64

# %%
os.environ["MRESNET_EXACT_BACKEND"] = exact_backend
start = setup_notebook(threads, seed)
data_dir = under_data_root(data_dir)
if pretrained_weights:
    print(f"pretrained: torchvision's resnet{depth}, weights {pretrained_weights}")
    pretrained = ft.imagenet_pretrained(depth, pretrained_weights)
else:
    pretrain_settings = dict(dataset=dataset, image_size=image_size, train_images=pretrain_images,
                             test_images=pretrain_test_images, data_dir=data_dir)
    print("pretraining data:", describe_data(classes=pretrain_classes, **pretrain_settings))
    pretrained = ft.pretrain(profile if use_cache else None, depth, pretrain_classes, width=width,
                             epochs=pretrain_epochs, lr=pretrain_lr, lr_milestones=(pretrain_epochs,),
                             batch_size=pretrain_batch, seed=seed, threads=threads, device=device, **pretrain_settings)
data, plain_train = ft.finetuning_data(dataset, finetune_classes, train_images=finetune_images,
                                       test_images=finetune_test_images, image_size=image_size, data_dir=data_dir)
print("fine-tuning data:", data.describe())
models = ft.both_models(pretrained, gamma, data.num_classes, depth=depth, seed=seed)
for model in models.values():
    ft.recalibrate_batchnorm(model, plain_train)
resnet, momentum = list(models)
images, labels, _ = bm.first_images(max(64, max_batch or 0), dataset, image_size=image_size, classes=finetune_classes,
                                    data_dir=data_dir)
rows, batch = ft.budget_batches(models, images, labels, budget_mib * 2**20, max_batch=max_batch)
pd.DataFrame(rows).assign(**{"whole_step (MiB)": lambda t: t["whole_step"] / 2**20}).drop(
    columns=["whole_step", "activations"]).round(2)

# %%
print(f"largest batch within {budget_mib:.0f} MiB (whole step, measured): "
      + ", ".join(f"{k} {v}" for k, v in batch.items()))
check = bm.gradient_check(models[momentum], images[:check_batch], labels[:check_batch], gamma)
print(f"{momentum}, one training step in float64 against Eq. 2 written out by hand: relative difference of "
      f"the loss {check['loss']:.1e}, of the parameter gradients {check['gradients']:.1e} (the stacks carry "
      f"{check['stack share of the gradient norm']:.0%} of the gradient's norm)")
pairs = list(zip(models[resnet].parameters(), models[momentum].parameters()))
same_weights = (len(pairs) == len(list(models[momentum].parameters())) == len(list(models[resnet].parameters()))
                and all(bool((a == b).all()) for a, b in pairs))
# the ResNet's own time per sample at both batch sizes: does a larger batch make a sample cheaper here?
per_sample = {b: ft.seconds_per_sample(models[resnet], images, labels, b) for b in sorted(set(batch.values()))}
print(f"{resnet}, training step time per sample on this machine: "
      + ", ".join(f"{1e3 * t:.2f} ms at batch {b}" for b, t in per_sample.items()))

# %%
runs = ft.finetune_both(models, data, batch, seeds, epochs=finetune_epochs, lr=finetune_lr, eval_every=eval_every,
                        device=device)
times = pd.DataFrame(ft.time_to(runs, target))
times.round(4)

# %%
fig = ft.plot_finetuning(runs, target)
save_figure(fig, "figure8_finetune")

# %% [markdown]
# ## Paper vs this run
# Wall times depend on the machine (and on what else runs on it); samples seen do not.
# What the paper's "sooner" means here is printed below the table.

# %%
by = times.groupby("model", sort=False)
med = {name: {"samples": ft.median_or_never(part["samples to target"]),
              "seconds": ft.median_or_never(part["seconds to target"]),
              "per sample": part["seconds per sample"].median(), "smooth": part["mean |change|"].median(),
              "reached": int(part["samples to target"].notna().sum()), "final": part["final accuracy"]}
       for name, part in by}
res, mom = med[resnet], med[momentum]
n = len(seeds)
paper_vs_this_run([
    {"claim": "largest batch in the budget", "paper": "2 vs 4 (ResNet-152, hymenoptera)",
     "this run: ResNet": batch[resnet], "this run: Momentum ResNet": batch[momentum]},
    {"claim": f"seeds (of {n}) reaching {target:.0f} %", "paper": "both reach ~80 %",
     "this run: ResNet": res["reached"], "this run: Momentum ResNet": mom["reached"]},
    {"claim": "final accuracy (%), mean over seeds", "paper": "about 80 %",
     "this run: ResNet": round(res["final"].mean(), 1), "this run: Momentum ResNet": round(mom["final"].mean(), 1)},
    {"claim": "final accuracy (%), std over seeds", "paper": "-",
     "this run: ResNet": round(res["final"].std(), 1), "this run: Momentum ResNet": round(mom["final"].std(), 1)},
    {"claim": f"samples seen to {target:.0f} % (median)", "paper": "-",
     "this run: ResNet": res["samples"], "this run: Momentum ResNet": mom["samples"]},
    {"claim": f"training time to {target:.0f} % (s, median, this machine)", "paper": "Momentum sooner (GPU)",
     "this run: ResNet": round(res["seconds"], 2), "this run: Momentum ResNet": round(mom["seconds"], 2)},
    {"claim": "training time per sample (ms, median)", "paper": "-",
     "this run: ResNet": round(1e3 * res["per sample"], 2),
     "this run: Momentum ResNet": round(1e3 * mom["per sample"], 2)},
    {"claim": "mean |change| of the accuracy between evaluations (points, median)", "paper": "Momentum smoother",
     "this run: ResNet": round(res["smooth"], 2), "this run: Momentum ResNet": round(mom["smooth"], 2)},
])

# %%
def sooner(what):
    return "sooner" if mom[what] < res[what] else "not sooner"


gain = per_sample[batch[resnet]] / per_sample[batch[momentum]]  # > 1: the larger batch is cheaper per sample
cost = mom["per sample"] / res["per sample"]
print(f"The Momentum ResNet reached {target:.0f} % at {mom['reached']} of {n} seeds, the ResNet at {res['reached']} "
      f"of {n} (final accuracy {mom['final'].mean():.1f} ± {mom['final'].std():.1f} and "
      f"{res['final'].mean():.1f} ± {res['final'].std():.1f} %, mean ± std over seeds).")
print(f"On this machine the Momentum ResNet reaches {target:.0f} % {sooner('samples')} in samples seen "
      f"(median {mom['samples']:.0f} vs {res['samples']:.0f}) and {sooner('seconds')} in wall time (median "
      f"{mom['seconds']:.1f} s vs {res['seconds']:.1f} s).")
print(f"Each of its training samples took {cost:.1f}x the ResNet's time (the memory-free backward re-runs every "
      f"residual function); its larger batch {'bought little' if gain < 1.2 else 'helped'}: the ResNet's own step "
      f"costs {1 / gain:.2f}x per sample at batch {batch[momentum]} what it costs at batch {batch[resnet]} on this "
      "machine. The paper's 'sooner' is wall time on a GPU with batches of 2 and 4, where (our reading) a batch twice "
      "as large costs little more time than the small one, so that each sample became cheaper; in samples seen, a "
      "larger batch at the same learning rate means fewer updates, which is no reason to be sooner.")

# %% [markdown]
# ## Checks
# Fixed before the run: the larger batch under one budget (memory is deterministic), the
# memory-free step computing the momentum network's gradients, and the ResNet reaching
# the paper's 80 % at every seed (the task and budget are within reach). The Momentum
# ResNet's 80 % is printed above, not checked (see the introduction). The paper's 2-fold
# batch and its "sooner" in wall time are reported: at depth 101 the batch gain is
# smaller than at 152, and here a sample of the memory-free model costs more time.

# %%
# NBVAL_CHECK_OUTPUT
check_claims(
    {
        "under the same budget the Momentum ResNet (memory-free) fine-tunes with a larger batch (paper: 4 vs 2)":
            batch[momentum] > batch[resnet],
        f"memory-free training step = plain autograd through Eq. 2 written out (float64, loss and parameter "
        f"gradients within {gradient_tolerance:g} relative)":
            check["loss"] <= gradient_tolerance and check["gradients"] <= gradient_tolerance,
        f"the ResNet reaches {target:.0f} % at every one of {n} seeds (paper: both reach ~80 %)": res["reached"] == n,
    },
    identities={"the converted model starts from the ResNet's weights (every parameter equal)": same_weights},
    reported={
        "the Momentum ResNet's batch at least twice the ResNet's (paper: 4 vs 2)": batch[momentum] >= 2 * batch[resnet],
        f"the Momentum ResNet reaches {target:.0f} % sooner in wall time (median over seeds)":
            mom["seconds"] < res["seconds"],
    },
)
