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
# # The ODE limit: Momentum ResNets discretise eps x'' + x' = f(x) (Section 3)
#
# **Claim (paper).** In the infinitesimal step regime a Momentum ResNet is a second-order
# ODE, eps x'' + x' = f(x) (the paper, with unit steps, links eps = 1/(1 - gamma)); as
# eps -> 0 it becomes the first-order neural ODE x' = f(x) that ResNets discretise.
#
# **What the quick profile shows.** With a fixed random MLP f in 2-D (float64) and 64
# starting points: the Momentum ResNet with N layers, residual (1/N) f and
# gamma = 1 - 1/(N eps) converges to the RK4 solution of eps x'' + x' = f(x), x'(0) = 0, at
# t = 1 as N grows, with the first-order rate the derivation below predicts (slope -1 on a
# log-log plot, measured for three values of eps); and the solution approaches the
# first-order flow linearly in eps, while at eps = h the network *is* the ResNet.
#
# **What is a reconstruction.** The paper states the continuous limit; the precise
# mapping (step h, residual h f, gamma = 1 - h/eps), the order-1 analysis, the test
# function and all sizes are ours. The paper profile only uses more points and deeper
# ladders.

# %% tags=["parameters"]
profile = "quick"
threads = 1                        # small tensors: one thread is fastest on the shared 2-core CPU
seed = 0
dim = 2
hidden = 16
f_scale = 3.0                      # multiplies f's last layer: visibly nonlinear paths on [0, 1]
n_points = 64
eps_list = [1.0, 0.25, 0.0625]     # powers of 2: gamma = 1 - h/eps is exact in MomentumNet
log2_depths = list(range(4, 13))   # N = 16 ... 4096
fit_last = 4                       # the slope is fitted on the deepest `fit_last` networks
ref_steps = 4096                   # RK4 reference steps (fourth order: error ~1e-12 here)
eps_zero_list = [2.0 ** -k for k in range(1, 8)]
limit_depth = 4096                 # depth used for the eps -> 0 comparison

# %%
# %matplotlib inline
import math

import numpy as np
import torch
from torch import nn
import matplotlib.pyplot as plt

from mresnet_core.plotting import PALETTE, save_figure, use_style
from mresnet_core.experiments.ode import ode_network, solve_ode

if threads:
    torch.set_num_threads(threads)
torch.manual_seed(seed)
use_style()
f64 = torch.float64

# %% [markdown]
# ## From the update rule to the ODE
# The Momentum ResNet update is v_{n+1} = gamma v_n + (1 - gamma) g(x_n), x_{n+1} = x_n + v_{n+1}.
# Take N layers on [0, 1], step h = 1/N, t_n = n h, and write u = x' for the ODE
# eps x'' + x' = f(x), i.e. x' = u, eps u' = f(x) - u, with x'(0) = 0.
#
# * **x must move by O(h) per layer**, so v_n ~ h u(t_n): put u_n = v_n / h. Then
#   x_{n+1} = x_n + h u_{n+1}.
# * **The velocity update** must be explicit Euler for eps u' = f - u:
#   u_{n+1} = u_n + (h/eps)(f(x_n) - u_n) = (1 - h/eps) u_n + (h/eps) f(x_n).
#   Multiplying by h: v_{n+1} = (1 - h/eps) v_n + (h/eps) h f(x_n).
# * Matching the two: **gamma = 1 - h/eps and residual function g = h f**
#   (then (1 - gamma) g = (h/eps) h f). v_0 = 0 is x'(0) = 0.
#
# So the network is explicit Euler for u followed by an Euler step for x with the *new*
# velocity (semi-implicit Euler). Each step makes an O(h^2) local error, so the output
# differs from x(1) by O(h) = O(1/N): **order 1**, the slope -1 to be measured. gamma >= 0
# requires h <= eps (N >= 1/eps). With h = 1 (the paper's unit steps, t in [0, N]) the
# mapping reads gamma = 1 - 1/eps, i.e. eps = 1/(1 - gamma). Without the factor h in the
# residual, v would settle near f and x would move by O(1) per layer: no limit as N grows.
#
# **eps -> 0.** Formally eps u' = f - u forces u = f: the first-order flow x' = f(x).
# Discretely, eps = h gives gamma = 0 and x_{n+1} = x_n + h f(x_n): the ResNet, Euler for
# x' = f. `mresnet_core.theory.ode_network` builds the network from (f, eps, N).

# %%
torch.manual_seed(seed)
f = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)).to(f64)
with torch.no_grad():
    f[2].weight.mul_(f_scale)
x0 = torch.randn(n_points, dim, dtype=f64, generator=torch.Generator().manual_seed(seed + 1))

depths = [2 ** k for k in log2_depths]
errors, slopes = {}, {}
for eps in eps_list:
    reference = solve_ode(f, x0, eps, steps=ref_steps)
    errors[eps] = {}
    for N in depths:
        if N * eps < 1:
            continue  # gamma would be negative
        net = ode_network(f, eps, depth=N)
        assert net.gamma == 1 - 1 / (N * eps), "gamma must be exact (dyadic h / eps)"
        with torch.no_grad():
            errors[eps][N] = (net(x0) - reference).norm(dim=-1).max().item()
    Ns = sorted(errors[eps])[-fit_last:]
    slopes[eps] = np.polyfit(np.log(Ns), np.log([errors[eps][N] for N in Ns]), 1)[0]

print("max over the 64 points of |x_N - x(1)|")
print("N     " + "".join(f"{'eps = ' + str(eps):>16}" for eps in eps_list))
for N in depths:
    print(f"{N:<6}" + "".join(f"{errors[eps][N]:>16.3e}" if N in errors[eps] else f"{'-':>16}"
                              for eps in eps_list))
print("fitted slope (deepest " + str(fit_last) + "): " + ", ".join(f"eps {e}: {s:.4f}" for e, s in slopes.items()))

# %% [markdown]
# ## eps -> 0: back to the first-order flow
# Distance at t = 1 between the second-order solution (RK4) and the first-order flow
# x' = f(x) (RK4), and between the Momentum ResNet and the ResNet at N = 4096 layers
# (the ResNet is the Momentum ResNet at eps = h). In the figure's left panel the same
# holds at N = 16 for eps = 1/16: its dots sit on the first-order flow (dashed).

# %%
flow = solve_ode(f, x0, 0.0, steps=ref_steps)
with torch.no_grad():
    resnet_out = ode_network(f, 0.0, depth=limit_depth)(x0)
    at_eps_h = ode_network(f, 1 / limit_depth, depth=limit_depth)(x0)
eps_h_is_resnet = bool(torch.equal(at_eps_h, resnet_out))
ode_gap, net_gap = {}, {}
for eps in eps_zero_list:
    ode_gap[eps] = (solve_ode(f, x0, eps, steps=ref_steps) - flow).norm(dim=-1).max().item()
    with torch.no_grad():
        net_gap[eps] = (ode_network(f, eps, depth=limit_depth)(x0) - resnet_out).norm(dim=-1).max().item()
small = eps_zero_list[-fit_last:]
slope_eps = np.polyfit(np.log(small), np.log([ode_gap[e] for e in small]), 1)[0]
print(f"{'eps':>10} {'|x_eps(1) - x_flow(1)| (ODE)':>30} {'|MomentumNet - ResNet| (N=4096)':>33}")
for eps in eps_zero_list:
    print(f"{eps:>10.5f} {ode_gap[eps]:>30.4e} {net_gap[eps]:>33.4e}")
print(f"slope in eps (smallest {fit_last}): {slope_eps:.3f}; at eps = h = 1/{limit_depth} the Momentum ResNet "
      f"equals the ResNet bit for bit: {eps_h_is_resnet}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
show = x0[:3]
t_path = np.linspace(0, 1, 513)
colors = plt.cm.viridis(np.linspace(0, 0.85, len(eps_list)))
for eps, color in zip(eps_list, colors):
    path = solve_ode(f, show, eps, steps=512, times=True).numpy()
    axes[0].plot(t_path, path[:, :, 0], color=color, lw=1.5)
    N_plot = max(16, math.ceil(1 / eps))  # gamma >= 0 needs N >= 1/eps
    layers = ode_network(f, eps, depth=N_plot).trajectory(show).numpy()
    axes[0].plot(np.linspace(0, 1, N_plot + 1), layers[:, :, 0], ".", color=color, ms=5)
    axes[0].plot([], [], color=color, marker=".", label=f"eps = {eps}")
path = solve_ode(f, show, 0.0, steps=512, times=True).numpy()
axes[0].plot(t_path, path[:, :, 0], color=PALETTE["resnet"], ls="--", lw=1.2)
axes[0].plot([], [], color=PALETTE["resnet"], ls="--", label="first-order flow x' = f(x)")
axes[0].set(title="3 paths, first coordinate: lines RK4, dots N = 16", xlabel="t", ylabel="x1(t)")
axes[0].legend(fontsize=8)

for eps, color in zip(eps_list, colors):
    Ns = sorted(errors[eps])
    axes[1].loglog(Ns, [errors[eps][N] for N in Ns], "o-", color=color, ms=4,
                   label=f"eps = {eps}: slope {slopes[eps]:.3f}")
Ns = np.array(depths, dtype=float)
axes[1].loglog(Ns, 2 * errors[eps_list[-1]][depths[-1]] * Ns[-1] / Ns, ls="--", color=PALETTE["theory"],
               label="slope -1")
axes[1].set(title="Momentum ResNet vs ODE solution at t = 1", xlabel="layers N", ylabel="max |x_N - x(1)|")
axes[1].legend(fontsize=8)

E = np.array(eps_zero_list)
axes[2].loglog(E, [ode_gap[e] for e in eps_zero_list], "o-", color=PALETTE["momentum"],
               label=f"ODE: |x_eps(1) - x_flow(1)|, slope {slope_eps:.2f}")
axes[2].loglog(E, [net_gap[e] for e in eps_zero_list], "s", color=PALETTE["resnet"], mfc="none",
               label=f"networks, N = {limit_depth}: |MomentumNet - ResNet|")
axes[2].loglog(E, ode_gap[E[-1]] * E / E[-1], ls="--", color=PALETTE["theory"], label="slope 1")
axes[2].set(title="eps -> 0 recovers the first-order flow", xlabel="eps", ylabel="distance at t = 1")
axes[2].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "ode_limit")

# %% [markdown]
# ## Paper vs this run
# The paper states the limit (and eps = 1/(1 - gamma) for unit steps) without a convergence
# measurement; the rate is what the discretisation above predicts.

# %%
claim = "limit eps x'' + x' = f; order 1"
print(f"{'':<36} {'paper / derivation':<34} this run")
for eps in eps_list:
    print(f"{'order in N, eps = ' + str(eps):<36} {claim:<34} slope {slopes[eps]:.3f}")
print(f"{'eps -> 0':<36} {'first-order neural ODE':<34} gap ~ eps^{slope_eps:.2f}; eps = h gives the ResNet: "
      f"{eps_h_is_resnet}")

# %% [markdown]
# ## Checks
# Compared by nbval on re-execution: rates rounded to one decimal and booleans.

# %%
# NBVAL_CHECK_OUTPUT
rates_ok = all(abs(s + 1) < 0.05 for s in slopes.values())
deepest_ok = all(errors[eps][depths[-1]] < 1e-3 for eps in eps_list)
eps_rate_ok = abs(slope_eps - 1) < 0.1
gap_ok = all(net_gap[e] < 1.1 * ode_gap[e] + 2e-3 for e in eps_zero_list)
for eps in eps_list:
    print(f"eps = {eps}: measured order {-slopes[eps]:.1f}")
print("every slope within 0.05 of -1:", rates_ok)
print(f"error at N = {depths[-1]} below 1e-3 for every eps:", deepest_ok)
print(f"distance to the first-order flow ~ eps^{slope_eps:.1f}, exponent within 0.1 of 1:", eps_rate_ok)
print("networks at N = 4096 follow the ODE gap:", gap_ok)
print("eps = h: Momentum ResNet == ResNet:", eps_h_is_resnet)
assert rates_ok and deepest_ok and eps_rate_ok and gap_ok and eps_h_is_resnet
