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
# # Exact reversibility: inverting a momentum stack without losing a bit
#
# **Claim (Sander et al. 2021, Sec. 3.1 and 3.2).** The momentum update has a closed-form
# inverse (Eq. 3): $x_n = x_{n+1} - v_{n+1}$, $v_n = (v_{n+1} - (1-\gamma) f(x_n)) / \gamma$.
# In floating point the division by $\gamma$ amplifies rounding errors by about
# $1/\gamma$ per layer: "in float32, naive inversion of a 64-layer stack is already
# useless at $\gamma = 0.5$". The paper therefore uses exact fixed-point multiplication
# (Maclaurin et al. 2015) with an *information buffer*, whose cost is about
# $\log_2(1/\gamma)$ bits per element per layer.
#
# **What this notebook measures** on a toy stack ($f_n$ = Linear(32,32)-Tanh-Linear(32,32),
# independent weights, batch 8, float32): the reconstruction error of $x_0$ after $L$
# layers for $\gamma \in \{0.99, 0.9, 0.5, 0.1, 0.01\}$, (1) by the closed form in float32
# and in float64 (`net.inverse(x_L, v_L)`), (2) by our exact arithmetic
# (`net.inverse(state)`: zero, bit for bit, `torch.equal`); the information buffer's
# size in bits per element per layer against $\log_2(1/\gamma)$; and, when the authors'
# package `momentumnet` is installed, its reconstruction and gradient errors on the same
# problem and where its int64 buffer overflows.
#
# **Quick profile** (default, CPU, well under a minute): depths 1 to 1024 for our paths,
# up to 256 for the reference package. **Paper profile** (`notebooks/params/paper.yaml`,
# about 5 minutes on 2 CPU cores): depths to 4096 (1024 for the reference), width 64,
# batch 64; the paper itself gives no numbers beyond the two quoted above.

# %%
# %matplotlib inline
import time

import pandas as pd

from mresnet_core.experiments import common
from mresnet_core.experiments import exactness as rv
from mresnet_core.experiments import reference as ref
from mresnet_core.experiments.common import check_claims, format_this_run, paper_vs_this_run, setup_notebook
from mresnet_core.plotting import save_figure

# %% tags=["parameters"]
profile = "quick"
threads = 2
seed = 0
d = 32  # width of the stack
hidden = 32  # hidden width of each residual function
batch = 8
gammas = [0.99, 0.9, 0.5, 0.1, 0.01]
depths = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
reference_depths = [1, 2, 4, 8, 16, 32, 64, 128, 256]  # the reference package is slower
gradient_depths = [8, 32]
gradient_gammas = [0.01, 0.1, 0.5]
overflow_gammas = [0.5, 0.8, 0.9, 0.99]
tolerance_bits = 0.01  # relative tolerance on log2(1/gamma) bits per element per layer

# %%
start = setup_notebook(threads, seed)
functions = common.toy_functions(max(depths + reference_depths + gradient_depths), d, hidden, seed=seed)
x0 = common.grid_input((batch, d), seed=seed)  # on the float32 and 2**-40 grids: exact input
reference_version = ref.version()
print(f"toy stack: {len(functions)} functions Linear({d},{hidden})-Tanh-Linear({hidden},{d}), "
      f"input {batch} x {d}, float32")
print("reference package momentumnet:", f"version {reference_version}" if reference_version
      else "not installed (its comparisons below are skipped; pip install momentumnet==0.10 --no-deps)")

# %% [markdown]
# ## Reconstruction error after $L$ layers
#
# The stack of depth $L$ is the first $L$ functions. Naive: forward in float, then the
# closed form of Eq. 3 in the same precision; relative error $\|\hat x_0 - x_0\| / \|x_0\|$
# (inf when it overflowed). Exact: the memory-free forward (int64 fixed point, $2^{-40}$,
# $\gamma$ rounded to $n/2^{16}$ for both paths), then `net.inverse(state)`.

# %%
rows = rv.inversion_sweep(functions, gammas, depths, x0)
sweep = pd.DataFrame(rows)
table = sweep.pivot(index="depth", columns="gamma", values="naive float32")[gammas]
print("naive float32 inversion, relative error on x_0 (rows: depth L, columns: gamma)")
print(table.map(lambda e: f"{e:.1e}").to_string())
table64 = sweep.pivot(index="depth", columns="gamma", values="naive float64")[gammas]
print("\nnaive float64 inversion, relative error on x_0")
print(table64.map(lambda e: f"{e:.1e}").to_string())
print("\nexact inversion (ours): x_0 and v_0 = 0 back bit for bit at every depth and gamma:",
      bool(sweep["exact bit for bit"].all()),
      f"(largest |error| {sweep['exact max abs error'].max():.1e})")


def useless_from(col):
    """Smallest depth where the relative error reaches 1 (100 %)."""
    out = {}
    for g in gammas:
        s = sweep[(sweep.gamma == g) & (sweep[col] >= 1)]
        out[g] = int(s.depth.min()) if len(s) else None
    return out


useless32, useless64 = useless_from("naive float32"), useless_from("naive float64")
print("\ndepth from which the naive inverse is useless (error >= 100 %), per gamma:")
print(pd.DataFrame({"float32": useless32, "float64": useless64}).T
      .map(lambda L: f"> {max(depths)}" if L is None or L != L else str(int(L))).to_string())

# %% [markdown]
# ## The reference package on the same problem
#
# `momentumnet` 0.10 has no public inverse: with `use_backprop=False` it rebuilds the
# activations inside `backward`. We read the $x_0$ it rebuilds (the input its first
# residual function receives during backward). It holds $v$ in int64 fixed point but
# $x$ in float (`x = x + v.val`, then `x - v.val`), so it is not exact either.

# %%
if reference_version:
    ref_rows = [{"gamma": g, "depth": L, "reference": ref.reconstruction_error(functions[:L], g, x0)}
                for g in gammas for L in reference_depths]
    ref_sweep = pd.DataFrame(ref_rows)
    print("reference package, relative error of the x_0 its backward pass rebuilds")
    print(ref_sweep.pivot(index="depth", columns="gamma", values="reference")[gammas]
          .map(lambda e: f"{e:.1e}").to_string())
else:
    ref_sweep = None
    print("reference package not installed: skipped")

# %%
fig = rv.plot_inversion_errors(sweep, gammas, ref_sweep)
save_figure(fig, "exact_reversibility_error")

# %% [markdown]
# ## What exactness costs: the information buffer
#
# Each exact multiplication by $\gamma = n/2^{16}$ pushes the information the rounding
# would destroy into a per-element buffer (8-bit words plus a live 31-bit state per
# element, in an int32; 32-bit words and a 62-bit state for $\gamma < 2^{-8}$). Its
# content in bits is (word bits) $\times$ (words) $+ \sum \log_2(\text{state}) -
# \log_2(\text{empty state}) \times$ (elements) (the empty state is $2^{23}$); divided
# by elements $\times$ depth it should be $\log_2(1/\gamma)$. For comparison, storing the
# activations costs 32 bits per element per layer in float32.

# %%
deepest = sweep[sweep.depth == max(depths)].set_index("gamma")
bits = pd.DataFrame({
    "log2(1/gamma) (paper)": {g: rv.paper_bits(g) for g in gammas},
    "this run: bits/element/layer": deepest["bits/element/layer"],
    "buffer bytes": deepest["buffer bytes"].astype(int),
    "float32 activations bytes": {g: 4 * batch * d * max(depths) for g in gammas},
})
bits["relative difference"] = (bits["this run: bits/element/layer"] / bits["log2(1/gamma) (paper)"] - 1).abs()
print(f"information buffer after {max(depths)} layers, {batch * d} elements "
      "(buffer bytes include the live state per element: 4 bytes, 8 for gamma < 2**-8)")
bits

# %%
fig = rv.plot_buffer_cost(sweep, bits, gammas, batch * d)
save_figure(fig, "exact_reversibility_buffer")

# %% [markdown]
# ## Gradients: memory-free backward vs ordinary autograd
#
# Ours: `MomentumNet(..., memory_efficient=True)` against `memory_efficient=False`. The
# reference: `MomentumNet(..., use_backprop=False)` against its `use_backprop=True`.
# Relative error of all gradients (input and parameters) of mean$(x_L^2)$, both measured
# here on the same problem.

# %%
grad_rows = []
for L in gradient_depths:
    for g in gradient_gammas:
        row = {"depth": L, "gamma": g, "ours": rv.gradient_relative_error(functions[:L], g, x0)}
        if reference_version:
            row["reference (measured here)"] = ref.gradient_relative_error(functions[:L], g, x0)
        grad_rows.append(row)
grads = pd.DataFrame(grad_rows)
grads

# %% [markdown]
# ## The reference package's overflows
#
# Its buffer is one int64 per element, pushed by $d = 2^{16}$ and popped by
# $n = \mathrm{int}(\gamma d + 1)$ at every layer, never spilled nor checked. Driving its
# own `TorchExactRep` ($v \leftarrow \gamma v + (1-\gamma) f$, $f \sim N(0,1)$, 1000
# elements) we record the first layer whose push exceeds the int64 range. Its value
# (52 fractional bits in an int64) also wraps silently for $|v| \geq 2^{11}$.

# %%
if reference_version:
    overflow = [{"gamma": g, "predicted by its bit count": round(ref.predicted_overflow_depth(g)),
                 "measured here: first overflowing layer": ref.buffer_overflow_depth(g)}
                for g in overflow_gammas]
    print(pd.DataFrame(overflow).to_string(index=False))
    wraps = {v: ref.fixed_point_value(v) for v in (1.5, 2047.0, 2048.0, 3000.0)}
    print("\nreference fixed point, value in -> value held:",
          ", ".join(f"{k:g} -> {v:g}" for k, v in wraps.items()))
else:
    overflow, wraps = None, None
    print("reference package not installed: skipped (pip install momentumnet==0.10 --no-deps)")

# %% [markdown]
# ## Paper vs this run
# The "paper" column holds only what the paper states; the reference package's behaviour
# is not a claim of the paper and is listed after it as measured here.

# %%
g32 = {g: sweep[(sweep.gamma == g) & (sweep.depth == 64)]["naive float32"].item() for g in gammas}
rows = [
    {"claim": "naive float32 inversion, gamma 0.5, 64 layers: relative error", "paper": "already useless",
     "this run": float(f"{g32[0.5]:.2g}")},
    {"claim": "naive float64 inversion, gamma 0.5, 64 layers: relative error", "paper": "-",
     "this run": float(f"{table64.loc[64, 0.5]:.2g}")},
    {"claim": f"exact inversion bit for bit at every depth <= {max(depths)} and gamma", "paper": "exact",
     "this run": bool(sweep["exact bit for bit"].all())},
]
for g in gammas:
    rows.append({"claim": f"buffer cost, gamma {g} (bits/element/layer)",
                 "paper": f"log2(1/gamma) = {rv.paper_bits(g):.4f}",
                 "this run": round(float(bits.loc[g, "this run: bits/element/layer"]), 4)})
worst_ours = grads["ours"].max()
rows.append({"claim": "memory-free gradient vs autograd (ours): largest relative error", "paper": "-",
             "this run": float(f"{worst_ours:.2g}")})
if reference_version:
    for _, r in grads.iterrows():
        rows.append({"claim": f"reference package, measured here: gradient relative error, gamma {r['gamma']}, "
                              f"depth {int(r['depth'])}", "paper": "-",
                     "this run": float(f"{r['reference (measured here)']:.2g}")})
    for o in overflow:
        rows.append({"claim": f"reference package, measured here: first layer whose buffer overflows, gamma {o['gamma']}",
                     "paper": "-", "this run": o["measured here: first overflowing layer"]})
    rows.append({"claim": "reference package, measured here: fixed-point value held for 3000", "paper": "-",
                 "this run": wraps[3000.0]})
format_this_run(paper_vs_this_run(rows))

# %% [markdown]
# ## Checks
# Each fails if its claim does: an inverse that is not bit for bit, a buffer that costs
# more (or less) than log2(1/gamma), memory-free gradients that leave autograd's, or a
# naive inverse that stops failing where rounding must make it fail. The reference
# package's failures are checked too, as measured here (its cells run in the test suite,
# which installs it).

# %%
# NBVAL_CHECK_OUTPUT
measured = {
    f"exact inverse, bit for bit (torch.equal), all gamma, depths 1..{max(depths)}": bool(sweep["exact bit for bit"].all()),
    "naive float32 inverse useless (error >= 100 %) at gamma 0.5, 64 layers": g32[0.5] >= 1,
    "naive float32 inverse still fine (error < 1e-5) at gamma 0.5, 4 layers": table.loc[4, 0.5] < 1e-5,
    "naive float64 inverse useless at gamma 0.01, 16 layers": table64.loc[16, 0.01] >= 1,
    f"buffer bits/element/layer within {tolerance_bits:.0%} of log2(1/gamma), every gamma":
        bool((bits["relative difference"] <= tolerance_bits).all()),
    "memory-free gradients within 1e-4 of autograd (ours, float32)": worst_ours <= 1e-4,
}
if reference_version:
    r = grads.set_index(["depth", "gamma"])["reference (measured here)"]
    measured.update({
        "reference package: its int64 buffer overflows within 10 % of the depth its bit count predicts, every gamma":
            all(abs(o["measured here: first overflowing layer"] - o["predicted by its bit count"])
                <= 0.1 * o["predicted by its bit count"] for o in overflow),
        "reference package: value 1.5 held exactly, 3000 (>= 2**11) wrapped": wraps[1.5] == 1.5 and wraps[3000.0] != 3000.0,
        "reference package: gradient error > 100 % at gamma 0.01, depth 8": r[(8, 0.01)] > 1,
    })
check_claims(measured)

# %%
print(f"notebook run time: {time.monotonic() - start:.0f} s")
