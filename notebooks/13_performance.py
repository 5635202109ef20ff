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
# # Performance: time and whole-step memory of every way to train a momentum stack
#
# **What the paper claims** (Sec. 3, Fig. 2): the memory-free backward keeps activation
# memory flat in depth, at the price of recomputing each layer once in the backward pass
# (one extra forward: a floor of about 4/3 of ordinary backprop's time). It gives no
# timings. This notebook measures, side by side and each configuration in a fresh process
# (`benchmarks/harness.py`), one training step of the toy stack of Figure 2 (d = 500,
# f = Linear(500,100)-Tanh-Linear(100,500) per layer, batch 256, gamma = 0.9) for every
# contender: ordinary backprop, `torch.utils.checkpoint` every sqrt(L) layers (the tool a
# user reaches for first), the authors' package `momentumnet` 0.10 (when installed), and
# ours: exact inversion (`memory_efficient=True`) and the converter's default
# (`memory_efficient="auto"`: per stack, exact inversion where it saves memory, else
# ordinary backprop or recomputation from the stack's input; an inverted stack keeps its
# last layers' graphs from the forward pass as far as they fit in the parameter
# gradients its backward allocates later, so those layers are neither inverted nor
# recomputed, at the same whole-step peak).
#
# Memory is the **whole training step** (parameter gradients included: what decides an
# out-of-memory error), the gradient-free activation peak is a second column. Times vary
# with the machine and are printed, never checked; memory is deterministic and checked.
#
# **Quick profile** (CPU, a few minutes): depths 8, 16, 64 at the default thread count. **Paper profile**: the full sweep (depths 8-1024, converted ResNet-18/50/101,
# a Transformer encoder); on a GPU `python benchmarks/harness.py --device cuda`.

# %%
# %matplotlib inline
import pandas as pd

from mresnet_core.experiments import performance as perf
from mresnet_core.experiments.common import check_claims, paper_vs_this_run, setup_notebook
from mresnet_core.plotting import save_figure

# %% tags=["parameters"]
profile = "quick"
bench_profile = "quick"  # the harness's profile: smoke, quick or full
threads = 0  # 0: torch's default thread count (what the speed targets are measured at)
workloads = ["toy"]  # paper profile: all workloads
sizes = [8, 16, 64]  # toy depths (paper profile: all of the harness's)

# %%
start = setup_notebook(threads, 0)
rows = perf.run_benchmark(bench_profile, workloads=workloads, sizes=sizes)
print(f"{len(rows)} measurements, {rows['threads'].iloc[0]} thread(s), torch {rows['torch'].iloc[0]}, "
      f"{rows['machine'].iloc[0]}")
table = rows[rows["workload"] == "toy"].pivot_table(index="size", columns="contender", values="whole_step_ratio")
table.round(3)

# %%
rows[rows["workload"] == "toy"].pivot_table(index="size", columns="contender", values="time_ratio").round(2)

# %%
fig = perf.plot_ratios(rows, "toy")
save_figure(fig, "performance_toy")

# %% [markdown]
# ## Paper vs this run

# %%
toy = rows[(rows["workload"] == "toy") & (rows["status"] == "ok")]
ratio = toy.pivot_table(index="size", columns="contender", values="whole_step_ratio")
times = toy.pivot_table(index="size", columns="contender", values="time_ratio")
depths = sorted(ratio.index)
modes = toy[toy["contender"] == "auto"].set_index("size")["modes"]
paper_vs_this_run([
    {"claim": f"memory-free whole-step memory / ordinary, depth {d}", "paper": "flat in depth (Fig. 2)",
     "this run": round(float(ratio.loc[d, "exact"]), 3)} for d in depths
] + [
    {"claim": f"memory-free time / ordinary, depth {d} (varies with the machine)", "paper": "-",
     "this run": round(float(times.loc[d, "exact"]), 2)} for d in depths
] + [
    {"claim": f"auto time / ordinary, depth {d} ({modes[d]}; varies with the machine)", "paper": "-",
     "this run": round(float(times.loc[d, "auto"]), 2)} for d in depths
])

# %%
leanest = {d: ratio.loc[d].idxmin() for d in depths}
fastest = {d: times.loc[d].drop("ordinary", errors="ignore").idxmin() for d in depths}
for d in depths:
    print(f"depth {d}: leanest {leanest[d]} ({ratio.loc[d, leanest[d]]:.2f}x ordinary's memory), "
          f"fastest besides ordinary {fastest[d]} ({times.loc[d, fastest[d]]:.2f}x its time)")

# %% [markdown]
# ## Checks (memory only: deterministic)
# What holds in this measurement, each failing if the memory-free path stopped saving
# memory or grew its peak. Exact inversion holds a 20-byte-per-element state (int64 x
# and v, the buffer's 32-bit state) through the backward pass, where the parameter
# gradients are being allocated; it drops that state once the backward pass reaches
# depth 0, and the incoming gradient is handed over rather than held beside the
# adjoint, so at depth 8 it stays within 1.15x of ordinary backprop, and below it from
# depth 16 on. `auto` plans a lone stack as the whole step: ordinary backprop where
# inverting would not save memory (depth 8 here), exact inversion from where it does
# (inside a converted network it recomputes short stacks instead, which frees their
# activations while the rest of the network runs). Where `auto` inverts, the graphs it keeps are
# sized to fit in the gradients: its whole-step peak must be no higher than inverting
# every layer (its gradient-free peak is higher: that is where the kept graphs show).
# The whole step includes every parameter gradient
# (the toy stack has its own weights at every layer), which no method saves: the
# gradient-free peak shows the activations alone.

# %%
# NBVAL_CHECK_OUTPUT
act = toy.pivot_table(index="size", columns="contender", values="activation_ratio")
deep = [d for d in depths if d >= 16]
check_claims({
    "exact inversion: whole-step memory within 1.15x of ordinary backprop at depth 8":
        all(ratio.loc[d, "exact"] <= 1.15 for d in depths if d <= 8),
    "exact inversion: whole-step memory below ordinary backprop from depth 16 on":
        all(ratio.loc[d, "exact"] < 1 for d in deep),
    "exact inversion: its share of ordinary's whole-step memory falls with depth":
        all(ratio.loc[a, "exact"] > ratio.loc[b, "exact"] for a, b in zip(depths, depths[1:])),
    f"exact inversion: gradient-free peak under a quarter of ordinary's at depth {depths[-1]}":
        act.loc[depths[-1], "exact"] < 0.25,
    "auto: whole-step memory never above ordinary backprop's, below it from depth 16 on":
        bool((ratio["auto"] <= 1.0).all()) and all(ratio.loc[d, "auto"] < 1 for d in deep),
    f"auto inverts at depth {depths[-1]}, and where it inverts its kept graphs leave the whole-step peak within 0.1 % of inverting every layer":
        modes[depths[-1]].startswith("exact") and all(
            ratio.loc[d, "auto"] <= ratio.loc[d, "exact"] * 1.001 for d in depths if modes[d].startswith("exact")),
})
