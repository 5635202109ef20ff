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
# # Figure 2: memory vs depth, ResNet vs Momentum ResNet
#
# **Claim (Sander et al. 2021, Fig. 2).** Training a ResNet by backpropagation stores every
# layer's activations, so its memory grows linearly with depth; a Momentum ResNet rebuilds
# them in the backward pass from the invertible update (Eq. 3) and its memory stays flat.
# The paper plots the peak memory (MiB, log scale) of one forward + backward on a toy
# problem for depths 0 to about 900: the ResNet goes from about 1.2e2 to about 2e3 MiB,
# the Momentum ResNet stays at about 1.2e2 MiB.
#
# Settings ([ref] script `examples/plot_memory.py`): inputs `torch.rand(500, 500)` (d = 500,
# batch 500), one residual function f = Linear(500,8)-Tanh-Linear(8,500) **shared by all
# layers** (tied weights), gamma = 1 - 1/(50 depth), loss mean(out²), peak resident memory
# measured with `memory_profiler`.
#
# **What is compared here.** Both curves are the *same* momentum stack with the same gamma:
# ordinary backprop (`MomentumNet(..., memory_efficient=False)`, labelled "ResNet") and
# the exact memory-free backward (`memory_efficient=True`). The reference script's ResNet
# is gamma = 0 with ordinary backprop; the momentum update saves nothing for backward, so
# it keeps exactly the same bytes (checked below). Three measurements of each point:
# (1) the bytes autograd keeps after the forward pass (`saved_tensor_bytes`, exact),
# next to (3) the theory computed from the shapes (`mresnet_core.experiments.depth_memory`, derived
# below); (2) measured peaks of one step: the tensor-level peak of the step in this
# process (CPU profiler allocation events, or the CUDA allocator on a GPU), and the peak
# RSS of a fresh Python process per point, which is what the paper measured.
#
# **Quick profile** (default, CPU, 1 thread, under a minute): the `depths` of the
# parameters cell in this process and the RSS at its `rss_depths` (a few depths, up to
# less than half of the paper's deepest, about 900). Each RSS point runs in a child forked
# from one fresh interpreter per allocator setting, which has imported torch and this
# package and done nothing else: a new heap per point, one interpreter start per setting.
# **Paper profile** (`notebooks/params/paper.yaml`): depths 1 to 900 in steps of 50, RSS
# at six of them, and on a machine with a GPU the CUDA allocator peak in place of the
# profiler. Checked (nbval): the deterministic byte counts and how they grow, and the
# step peaks against criteria with a wide margin; RSS and timings are printed, never compared.

# %%
# %matplotlib inline
import os
import time

import numpy as np
import torch

from mresnet_core.experiments import depth_memory as dm
from mresnet_core.experiments.common import check_claims, paper_vs_this_run, setup_notebook
from mresnet_core.plotting import save_figure

# %% tags=["parameters"]
profile = "quick"
threads = 1  # the steps are small: one thread is fastest on the shared 2-core CPU (None: torch's default)
device = "cpu"  # "auto": CUDA when available (paper profile), else CPU
depths = [1, 10, 50, 100, 200, 400]
rss_depths = [1, 100, 400]  # one fresh process per depth, path and allocator setting (CPU)
batch = 500
dim = 500
hidden = 8
gamma_scale = 50.0  # gamma = 1 - 1 / (gamma_scale * depth)
seed = 1
exact_backend = "auto"  # MRESNET_EXACT_BACKEND: auto (the C kernels on the CPU), native, compile or eager

# %%
start = setup_notebook(threads, seed)
os.environ["MRESNET_EXACT_BACKEND"] = exact_backend  # also seen by the fresh processes
if device == "auto":
    device = "cuda" if torch.cuda.is_available() else "cpu"
problem = dm.ToyProblem(dim=dim, batch=batch, hidden=hidden, gamma_scale=gamma_scale, seed=seed)
MiB = dm.MIB
print(f"profile {profile}, device {device}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")

# %% [markdown]
# ## The theory, from the shapes
#
# **Ordinary backprop.** Per layer n the forward pass computes
# f(x_n) = W₂ tanh(W₁ x_n + b₁) + b₂, then v_{n+1} = γ v_n + (1-γ) f(x_n) and
# x_{n+1} = x_n + v_{n+1}. Autograd keeps, per layer:
#
# - the input x_n of the first Linear (its weight gradient is x_nᵀ · grad): B·d float32
#   values;
# - the output of tanh (its derivative is 1 - tanh²), which the second Linear keeps again
#   as its input: one storage of B·h values;
# - nothing for the momentum update: multiplications by the Python scalars γ and 1-γ and
#   additions need no saved input. The weights are parameters (counted once, not per
#   layer, and not activation memory).
#
# So the saved bytes are **L · B · (d + h) · 4**: linear in the depth L, whatever γ (the
# bytes per layer at this run's sizes are printed below). The loss adds out² and the
# backward pass its temporaries on top, a constant.
#
# **Memory-free backward.** The forward pass runs without a graph in exact int64 fixed
# point and keeps, whatever L:
#
# - x_L and v_L as int64: 2 · 8 bytes per element;
# - the information buffer: a live state of s bytes per element, plus the w-bit words it
#   spills (s and w come from `exact.buffer_layout` and depend on γ; printed below).
#   Multiplying v by γ = n/2¹⁶ exactly pushes log₂(2¹⁶/n) = log₂(1/γ) bits per element per
#   layer into the state, so after L layers each element has spilled ⌊L log₂(1/γ) / w⌋
#   words.
#
# So **B·d · (16 + s + (w/8) ⌊L log₂(1/γ) / w⌋)** bytes. With Figure 2's γ = 1 - 1/(50 L),
# L log₂(1/γ) ≈ 1/(50 ln 2) bits per element at every depth, far less than a word: no
# word is ever spilled and the memory-free path keeps B·d·(16 + s) bytes at every depth.
# It keeps less than ordinary backprop from the first depth L where
# L·(d + h)·4 > d·(16 + s) (computed and printed below).
# (At a fixed γ the buffer would grow by log₂(1/γ) bits per element per layer, the
# paper's O(L · B · d · log(1/γ)) bits, still far below ordinary backprop's 32 · (d+h)/d
# bits per element per layer.)

# %%
# NBVAL_CHECK_OUTPUT
per_layer = dm.toy_ordinary_saved_bytes(1, batch, dim, hidden)
deepest = max(depths)
state_bytes, word_bits = dm.buffer_layout_bytes(problem.gamma(deepest))
free_bytes = dm.memory_free_saved_bytes(deepest, batch * dim, problem.gamma(deepest))
print(f"ordinary backprop: B (d + h) 4 = {batch} x {dim + hidden} x 4 = {per_layer} bytes per layer "
      f"({per_layer / MiB:.3f} MiB)")
print(f"information buffer at Figure 2's gamma: a {state_bytes}-byte state per element, {word_bits}-bit words")
print(f"memory-free: {free_bytes} bytes ({free_bytes / MiB:.2f} MiB, {free_bytes // (batch * dim)} bytes per element) "
      f"at depth {deepest} (information buffer "
      f"{dm.information_buffer_bytes(deepest, batch * dim, problem.gamma(deepest))} bytes, "
      f"{dm.buffer_words_per_element(deepest, problem.gamma(deepest))} spilled words per element)")
print("information kept per element (bits) at each depth:",
      [round(dm.information_bits(d, problem.gamma(d)), 3) for d in depths])
print("memory-free keeps fewer bytes than ordinary backprop from depth",
      dm.crossover_depth(batch, dim, hidden, gamma_of_depth=problem.gamma))

# %% [markdown]
# ## Measured in this process: saved bytes and the step peak
#
# For each depth and path: `saved_tensors(net.forward_state, x)` (bytes autograd keeps
# after the forward pass, parameters excluded, the memory-free path's int64 state and
# buffer included), then one warm-up step (the first memory-free step builds or compiles its exact
# kernels) and one measured step (gradients set to None, forward, mean(out²),
# backward): its peak above the level before it, from the CPU profiler's allocation
# events or the CUDA allocator.

# %%
t0 = time.monotonic()
measured = dm.measure_depths(depths, problem, device=device)
print(f"in-process measurements: {time.monotonic() - t0:.1f} s")
table = measured.assign(**{
    "saved (MiB)": measured["saved"] / MiB,
    "theory (MiB)": measured["theory"] / MiB,
    "info buffer (MiB)": measured["buffer"] / MiB,
    "step peak (MiB)": measured["peak"] / MiB,
})[["depth", "path", "gamma", "saved (MiB)", "theory (MiB)", "info buffer (MiB)", "step peak (MiB)",
    "peak_method"]]
table.round(3)

# %% [markdown]
# ## Checks
#
# **The paper's expectation** (Fig. 2): the ResNet's memory grows linearly with depth, the
# Momentum ResNet's stays flat. **Criteria, fixed before the run from the shape theory
# above** (the byte counts are deterministic, so they are compared exactly): saved bytes
# equal to the theory at every depth on both paths; ordinary backprop growing by exactly
# B·(d+h)·4 bytes per layer; the memory-free path growing by no more than its information
# buffer between the shallowest and the deepest depth, and keeping less than ordinary
# backprop from the theory's crossover depth on. The step peaks (allocation events,
# gradients and temporaries included) are judged with a wide margin: the memory-free
# peak below twice its depth-1 value at every depth (a path that kept one layer's
# activations per layer would exceed it by far before the deepest depth), and ordinary
# backprop's peak growing at least as much as its saved bytes. That the reference
# script's ResNet (γ = 0) saves what ordinary backprop of the momentum stack saves is a
# consistency check: the momentum update saves nothing for backward.

# %%
# NBVAL_CHECK_OUTPUT
ordinary = measured[measured["path"] == "ordinary"].set_index("depth").sort_index()
free = measured[measured["path"] == "memory-free"].set_index("depth").sort_index()
shallow, deep = ordinary.index.min(), ordinary.index.max()

exact = bool((measured["saved"] == measured["theory"]).all())

slope, intercept = np.polyfit(ordinary.index.to_numpy(float), ordinary["saved"].to_numpy(float), 1)
linear = round(slope) == per_layer and abs(intercept) < 1
print(f"ordinary backprop: fitted slope {round(slope)} bytes per layer, intercept {round(intercept)} bytes")

growth = int(free.loc[deep, "saved"] - free.loc[shallow, "saved"])
buffer_deep = int(free.loc[deep, "buffer"])
flat = growth <= buffer_deep
print(f"memory-free: saved bytes grow by {growth} bytes from depth {shallow} to {deep}; "
      f"information buffer {buffer_deep} bytes")

cross = dm.crossover_depth(batch, dim, hidden, gamma_of_depth=problem.gamma)
below = bool((free.loc[free.index >= cross, "saved"] < ordinary.loc[ordinary.index >= cross, "saved"]).all())

resnet = dm.resnet_saved_bytes(deep, problem, device)
same = resnet == int(ordinary.loc[deep, "saved"])

peaks_flat = free["peak"].max() <= 2 * free.loc[shallow, "peak"]
peaks_grow = ordinary.loc[deep, "peak"] - ordinary.loc[shallow, "peak"] >= \
    ordinary.loc[deep, "saved"] - ordinary.loc[shallow, "saved"]
check_claims({
    "saved bytes equal the shape theory at every depth, both paths": exact,
    f"ordinary backprop: saved bytes grow linearly, {per_layer} bytes per layer": linear,
    f"memory-free: saved bytes grow from depth {shallow} to {deep} by at most the information buffer": flat,
    f"memory-free saves less than ordinary backprop at every measured depth >= {cross}": below,
    "step peak (gradients included): memory-free stays below twice its depth-1 value": peaks_flat,
    "step peak: ordinary grows at least as fast as its saved bytes": peaks_grow,
}, identities={
    "the reference script's ResNet (gamma = 0) saves what ordinary backprop of the momentum stack saves": same,
})

# %% [markdown]
# ## Measured in fresh processes: peak RSS, as the paper did
#
# The paper's `memory_profiler` samples the resident set size (RSS) of the whole process:
# the interpreter, torch and its libraries, the model, and every page the C allocator
# holds, freed or not. Here each point runs in its own process: per allocator setting, one
# fresh interpreter imports torch and this package and nothing else, and each point runs
# in a child forked from it (`memory.peak_rss_in_forked_processes`), so every point starts
# from the same freshly imported heap and none sees another's memory; only the import is
# shared, which costs a few seconds per interpreter. The child builds the model, runs one
# warm-up step of a one-layer stack on *both* paths (so both load the same libraries, the
# memory-free path's exact kernels included, before the measured step: their RSS baselines
# differ only by what the step itself holds, and building the kernels is outside the
# measured interval), resets the kernel's high-water mark and runs the step. A forked
# child counts only the pages it has touched itself, so its RSS before the step is below
# a fresh interpreter's (library pages it never uses are not counted); what the step adds
# is the same. Each point runs twice: with glibc's default
# `malloc`, and with `MALLOC_MMAP_THRESHOLD_=131072`, under which every block above
# 128 KiB is returned to the system when freed, so the RSS follows the live tensors.
# By default glibc raises that threshold to the largest block freed so far, after which
# 1 MB tensors come from the heap, where freed pages can stay resident.

# %%
t0 = time.monotonic()
rss = dm.measure_rss(rss_depths, problem, threads=threads or torch.get_num_threads())
print(f"{len(rss)} processes forked from {rss['malloc'].nunique()} fresh interpreters: {time.monotonic() - t0:.1f} s")
rss.assign(**{"before (MiB)": rss["before"] / MiB, "peak (MiB)": rss["peak"] / MiB,
              "step (MiB)": rss["step"] / MiB})[
    ["depth", "path", "malloc", "before (MiB)", "peak (MiB)", "step (MiB)", "method"]].round(1)

# %%
fig = dm.plot_memory_vs_depth(measured, rss, problem)
save_figure(fig, "figure2_memory")

# %% [markdown]
# ## Paper vs this run
#
# The paper's numbers are two points per curve read off its Figure 2 (log scale, so
# roughly), and they are the RSS of the whole process: the ~1.2e2 MiB at depth 0 is the
# Python process with torch loaded (torch 1.x in 2021), not activations. This run's RSS
# baseline is that of a current torch, larger. The quick profile stops at the deepest of
# its `rss_depths`; the theory gives the saved bytes at depth 900 (printed below the table).

# %%
def rss_mib(depth, path, malloc="default malloc", column="peak"):
    row = rss[(rss["depth"] == depth) & (rss["path"] == path) & (rss["malloc"] == malloc)]
    return round(float(row[column].iloc[0]) / MiB, 1)


def peak_mib(depth, path):
    row = measured[(measured["depth"] == depth) & (measured["path"] == path)]
    return round(float(row["peak"].iloc[0]) / MiB, 1) if len(row) else float("nan")


paper_rss = dm.PAPER_RSS_MIB
rows = []
for path in dm.PATHS:
    for depth, paper, paper_depth in ((min(rss_depths), paper_rss[path][0], 0),
                                      (max(rss_depths), paper_rss[path][1], paper_rss["depth"])):
        rows.append({"model": dm.LABELS[path], "depth": depth,
                     "paper": f"peak RSS ~{paper:g} MiB at depth ~{paper_depth} (read off its figure)",
                     "this run: RSS before the step (MiB)": rss_mib(depth, path, column="before"),
                     "this run: peak RSS, default malloc (MiB)": rss_mib(depth, path),
                     "this run: peak RSS, 128 KiB mmap threshold (MiB)": rss_mib(depth, path, "mmap threshold 128 KiB"),
                     "this run: step peak, tensors (MiB)": peak_mib(depth, path)})
paper_vs_this_run(rows, "paper vs this run (RSS: whole process)")

# %%
base = rss[rss["malloc"] == "default malloc"]
for path in dm.PATHS:
    part = base[base["path"] == path].sort_values("depth")
    if len(part) >= 2:
        per_layer_rss = (part["peak"].iloc[-1] - part["peak"].iloc[0]) / (part["depth"].iloc[-1] - part["depth"].iloc[0])
        print(f"{dm.LABELS[path]}: peak RSS with the default malloc grows by {per_layer_rss / MiB:.2f} MiB "
              f"per layer between depths {part['depth'].iloc[0]} and {part['depth'].iloc[-1]}")
print(f"this run: saved bytes of ordinary backprop grow by {per_layer / MiB:.2f} MiB per layer; "
      f"paper: about (2e3 - 1.2e2) / 900 = {(2e3 - 1.2e2) / 900:.1f} MiB per layer of RSS")
for path in dm.PATHS:
    theory = (dm.toy_ordinary_saved_bytes(900, batch, dim, hidden) if path == "ordinary"
              else dm.memory_free_saved_bytes(900, batch * dim, problem.gamma(900)))
    print(f"theory at depth 900, {dm.LABELS[path]}: saved {theory / MiB:.1f} MiB")

# %% [markdown]
# ## Reading the figure
#
# - **Tensors (left).** Ordinary backprop keeps exactly L · B · (d+h) · 4 bytes and its
#   step peak follows a few MiB above (the loss, the gradients and one layer's
#   temporaries). The memory-free path keeps the same bytes at every depth (int64 x and
#   v and the buffer's state; Figure 2's γ schedule never spills a buffer word; the
#   figures are printed above) and its step peak is flat. These are the curves of the
#   claim; they are deterministic and checked above.
# - **Whole process (right).** The RSS adds a baseline of several hundred MiB: the
#   interpreter and a current torch (the paper's ~1.2e2 MiB at depth 0 is the same kind
#   of baseline with a 2021 torch), the same for both paths since every process loads
#   the same libraries before its step. With the 128 KiB mmap threshold the RSS of the step
#   follows the tensor peak of the left panel: ordinary backprop grows by about its
#   saved bytes per layer, the memory-free path stays flat (slopes printed above). With glibc's default heuristics the RSS grows
#   faster than the tensors held (see the slopes printed above): pages freed by the
#   per-layer temporaries stay resident when small long-lived blocks sit between them,
#   and then even the memory-free curve can rise although its tensors do not. The
#   paper's ResNet slope, about twice its activations per layer in RSS (its figure read
#   against the shape theory at its sizes), looks like the same effect; its C library and torch version are not given, so this
#   is an interpretation. RSS numbers change from run to run and machine to machine:
#   they are printed, never checked.

# %%
print(f"notebook run time: {time.monotonic() - start:.0f} s")
