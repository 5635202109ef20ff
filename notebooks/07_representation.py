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
# # Representation power of Momentum ResNets (Section 4 and Appendix Prop. 8)
#
# **Claims (paper, Section 4).** (a) A first-order flow x' = f(x, t) (a ResNet with small
# steps, a neural ODE) cannot map x to -x in 1-D: its trajectories never cross, so the map
# it computes is increasing. A Momentum ResNet, a second-order flow eps x'' + x' = f, can.
# (b) For linear f, Momentum ResNets represent any linear map up to a multiplicative
# factor, ResNets cannot (they only reach exp(Theta), whose determinant is positive).
# (c) Appendix Prop. 8: x'' + x'/eps = f(x) with f(x) = (-pi^2 - 1/(4 eps^2)) x, started at
# rest from x0, follows x(t) = x0 e^{-t/(2 eps)} (cos(pi t) + sin(pi t)/(2 pi eps)) and
# reaches x(1) = -x0 e^{-1/(2 eps)}.
#
# **What the quick profile shows** (CPU, well under a minute). (a) Both networks (16 layers,
# step 1/16, one small MLP per layer) trained on x -> -x: the ResNet's map stays increasing
# and its error is that of the best increasing fit, the constant 0; the Momentum ResNet fits.
# (b) The reachable slope x(1)/x0 of eps x'' + x' = lambda x as a function of lambda and eps
# (closed form next to an RK4 solution): negative slopes appear only for eps > 0, down to a
# limit m(eps) > -1; 2-D reflections scaled by c are learned by a linear Momentum ResNet
# exactly when c < |m(eps)|, never by the linear ResNet. (c) The Momentum ResNet iteration
# converges to Prop. 8's trajectory as depth grows.
#
# **What is a reconstruction.** The claims are the paper's; our notes record Prop. 8 in the
# form x'' + x'/eps = f(x), and this notebook checks that this is the form in which the
# stated f gives x(1) = -x0 e^{-1/(2 eps)}. The experiments (architectures, sizes, targets,
# training) are ours. Convention throughout: a network of N layers discretises
# eps x'' + x' = F(x) on [0, 1] with residual (1/N) F and gamma = 1 - 1/(N eps)
# (`mresnet_core.theory`, derived in notebook 08); Prop. 8's f is F / eps.
# The paper profile (`notebooks/params/paper.yaml`) only trains deeper networks longer and
# sweeps more values of eps and c; nothing in it needs a GPU.

# %% tags=["parameters"]
profile = "quick"
threads = 1               # tiny models: one thread is fastest on the shared 2-core CPU
seed = 0
# (a) x -> -x
depth_a = 16              # layers; step h = 1/16
eps_a = 0.25              # Momentum ResNet: gamma = 1 - h/eps = 0.75
hidden = 16
steps_a = 500
batch_a = 256
lr_a = 0.01
# (b) linear maps
eps_list = [0.0, 0.1, 0.25, 0.5, 1.0]
eps_b = 1.0               # 2-D experiment
depth_b = 32
factors = [0.25, 0.5, 0.75, 1.0]
steps_b = 600
lr_b = 0.1
# (c) Prop. 8
eps_c = 0.5
depths_c = [8, 32, 128, 512]

# %%
# %matplotlib inline
import math

import numpy as np
import torch
from torch import nn
import matplotlib.pyplot as plt

from mresnet_core.plotting import PALETTE, save_figure, use_style
from mresnet_core.experiments.ode import (linear_ode_parameter, linear_ode_solution, most_negative_factor,
                                 ode_network, prop8_coefficient, prop8_trajectory, solve_ode)
from mresnet_core.experiments.common import train_steps

if threads:
    torch.set_num_threads(threads)
torch.manual_seed(seed)
use_style()
f64 = torch.float64

# %% [markdown]
# ## (a) x -> -x in 1-D
# Both networks have one MLP f_n = Linear(1,16)-Tanh-Linear(16,1) per layer (a
# time-dependent f(x, t)) and step h = 1/16. The ResNet is x + h f_n(x), Euler for
# x' = f(x, t); the Momentum ResNet uses residual h f_n and gamma = 1 - h/eps, a
# discretisation of eps x'' + x' = f(x, t). Trained on x ~ U[-1, 1] to output -x (MSE).
# An increasing map g cannot beat the constant 0 on -x (the best increasing fit of a
# decreasing target is its mean), so its error relative to E[x^2] is at least 1.

# %%
def mlp(seed_):
    torch.manual_seed(seed_)
    return nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(f64)


grid = torch.linspace(-1, 1, 201, dtype=f64)[:, None]
nets_a, rel_mse_a = {}, {}
for name, eps in (("resnet", 0.0), ("momentum", eps_a)):
    net = ode_network([mlp(seed + i) for i in range(depth_a)], eps)
    points = torch.Generator().manual_seed(seed + 1)

    def make_batch(step, points=points):
        x = 2 * torch.rand(batch_a, 1, generator=points, dtype=f64) - 1
        return x, -x

    train_steps(net, make_batch, nn.functional.mse_loss, torch.optim.Adam(net.parameters(), lr=lr_a),
                steps_a, progress=False)
    with torch.no_grad():
        out = net(grid)
    nets_a[name] = net
    rel_mse_a[name] = (((out + grid) ** 2).mean() / (grid ** 2).mean()).item()

resnet_out = nets_a["resnet"].trajectory(grid)
resnet_increasing = bool((resnet_out[-1, 1:] >= resnet_out[-1, :-1]).all())
layer_slopes = (resnet_out[1:, 1:] - resnet_out[1:, :-1]) / (resnet_out[:-1, 1:] - resnet_out[:-1, :-1])
print(f"gamma of the Momentum ResNet: {nets_a['momentum'].gamma}")
print(f"relative MSE on -x: ResNet {rel_mse_a['resnet']:.4f}, Momentum ResNet {rel_mse_a['momentum']:.2e}")
print(f"ResNet map increasing on the grid: {resnet_increasing}; "
      f"smallest layer slope {layer_slopes.min().item():.3f} (> 0: every layer keeps the order)")

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
starts = torch.linspace(-1, 1, 8, dtype=f64)[:, None]
t_a = np.linspace(0, 1, depth_a + 1)
for ax, name, title in ((axes[0], "resnet", "ResNet, step 1/16 (first-order flow)"),
                        (axes[1], "momentum", f"Momentum ResNet, eps = {eps_a}")):
    traj = nets_a[name].trajectory(starts)[:, :, 0].numpy()
    ax.plot(t_a, traj, color=PALETTE[name], marker=".", ms=4)
    ax.scatter(np.ones(8), -starts[:, 0].numpy(), marker="x", color=PALETTE["theory"], zorder=3, label="target -x0")
    ax.set(title=title, xlabel="depth t = n / N", ylabel="x", ylim=(-1.3, 1.3))
    ax.legend(loc="lower left", fontsize=8)
with torch.no_grad():
    for name, label in (("resnet", "ResNet"), ("momentum", "Momentum ResNet")):
        axes[2].plot(grid[:, 0], nets_a[name](grid)[:, 0], color=PALETTE[name], label=label)
axes[2].plot(grid[:, 0], -grid[:, 0], color=PALETTE["theory"], ls="--", label="target -x")
axes[2].set(title="learned map x(1) against x(0)", xlabel="x(0)", ylabel="x(1)")
axes[2].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "representation_minus_x")

# %% [markdown]
# ## (b) Linear maps
# For eps x'' + x' = lambda x with x'(0) = 0 the roots are (-1 +- s)/(2 eps), s = sqrt(1 + 4 eps lambda), and
#
# x(1)/x0 = e^{-1/(2 eps)} (cosh(s/(2 eps)) + sinh(s/(2 eps)) / s),
#
# which is e^lambda at eps = 0 (always positive) and oscillates, hence goes negative, once
# lambda < -1/(4 eps). The most negative slope reachable, m(eps), lies just below
# -e^{-1/(2 eps)} (Prop. 8's value, at frequency pi) and above -1. Markers: an independent
# RK4 solution of the same ODE (`theory.solve_ode`, 4000 steps).

# %%
lams = np.linspace(-60, 3, 1261)
closed = {eps: linear_ode_solution(lams, eps) for eps in eps_list}
lam_check = torch.tensor(np.linspace(-60, 3, 22), dtype=f64)
rk4 = {eps: solve_ode(lambda x: lam_check * x, torch.ones_like(lam_check), eps, steps=4000).numpy()
       for eps in eps_list}
rk4_error = max(np.abs(linear_ode_solution(lam_check.numpy(), eps) - rk4[eps]).max() for eps in eps_list)
m_of_eps = {eps: most_negative_factor(eps) for eps in eps_list}
print(f"closed form vs RK4, largest difference: {rk4_error:.1e}")
print("eps    min over lambda of x(1)/x0    m(eps)     -exp(-1/(2 eps))")
for eps in eps_list:
    prop8_value = -math.exp(-1 / (2 * eps)) if eps else 0.0
    print(f"{eps:<6} {closed[eps].min():>26.4g} {m_of_eps[eps]:>10.4f} {prop8_value:>12.4f}")

# %% [markdown]
# **2-D maps with negative determinant.** Target: c * R, R the reflection across the line at
# 30 degrees (det R = -1, eigenvalues +1 and -1). Linear tied networks x' = x + (1/N) Theta x
# (ResNet) and the Momentum ResNet with residual (1/N) Theta x, eps = 1, N = 32, trained from
# Theta = 0 on the matrix they compute. The ResNet computes (I + Theta/N)^N, whose determinant
# is a N-th power, >= 0 for even N: no ResNet of this kind comes closer (in Frobenius norm,
# relatively) than sigma_min / ||c R|| = 1/sqrt(2). The Momentum ResNet needs lambda with
# x(1)/x0 = -c along the reflected direction: possible exactly when c < |m|, with m the
# network's own most negative slope (computed below by running the 1-D network on a grid of
# lambda). Above it the best it can do is m there, a relative error (c - |m|)/(c sqrt 2).

# %%
theta = math.pi / 6
R = torch.tensor([[math.cos(2 * theta), math.sin(2 * theta)],
                  [math.sin(2 * theta), -math.cos(2 * theta)]], dtype=f64)
eye = torch.eye(2, dtype=f64)


class Diagonal(nn.Module):
    """f(x) = lam * x, one lambda per sample: the 1-D linear ODE on a grid of lambda at once."""

    def __init__(self, lam):
        super().__init__()
        self.lam = lam

    def forward(self, x):
        return self.lam * x


lam_grid = torch.linspace(-80, 0, 8001, dtype=f64)
with torch.no_grad():
    m_network = ode_network(Diagonal(lam_grid), eps_b, depth=depth_b)(torch.ones_like(lam_grid)).min().item()


def matrix_of(net):
    return net(eye).T  # columns: images of the basis vectors


def relative_error(M, target):
    return ((M - target).norm() / target.norm()).item()


linear_nets, errors_b, dets_b = {}, {}, {}
for c in factors:
    for name, eps in (("resnet", 0.0), ("momentum", eps_b)):
        lin = nn.Linear(2, 2, bias=False).to(f64)
        nn.init.zeros_(lin.weight)
        net = ode_network(lin, eps, depth=depth_b)
        train_steps(net, lambda step, c=c: (eye, (c * R).T), nn.functional.mse_loss,
                    torch.optim.Adam(net.parameters(), lr=lr_b), steps_b, progress=False)
        with torch.no_grad():
            M = matrix_of(net)
        linear_nets[name, c] = net
        errors_b[name, c] = relative_error(M, c * R)
        dets_b[name, c] = torch.linalg.det(M).item()

# the constructive answer from the closed form: Theta = P diag(lambda_i) P^-1 with x(1)/x0 = c * eigenvalue
c_demo = 0.5
evals, P = torch.linalg.eigh(R)
lam_star = torch.tensor([linear_ode_parameter(c_demo * e.item(), eps_b) for e in evals], dtype=f64)
Theta_star = P @ torch.diag(lam_star) @ P.T
print(f"most negative slope: ODE m({eps_b}) = {m_of_eps[eps_b]:.4f}, network N={depth_b}: {m_network:.4f}")
print(f"closed-form Theta for c = {c_demo}: eigenvalues {lam_star.numpy().round(4)}; its ODE map "
      f"x(1) = {[round(float(linear_ode_solution(l, eps_b)), 4) for l in lam_star]} * x0 along the eigenvectors")
print(f"{'c':>5} {'ResNet rel. error':>18} {'det':>8} {'Momentum rel. error':>20} {'det':>8} {'predicted':>10}")
for c in factors:
    predicted = max(0.0, c - abs(m_network)) / (c * math.sqrt(2))
    print(f"{c:>5} {errors_b['resnet', c]:>18.4f} {dets_b['resnet', c]:>8.4f} "
          f"{errors_b['momentum', c]:>20.2e} {dets_b['momentum', c]:>8.4f} {predicted:>10.4f}")

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
for eps, color in zip(eps_list, plt.cm.viridis(np.linspace(0, 0.9, len(eps_list)))):
    axes[0].plot(lams, closed[eps], color=color, label=f"eps = {eps}")
    axes[0].plot(lam_check.numpy(), rk4[eps], "o", ms=3, color=color)
axes[0].axhline(0, color="0.3", lw=0.8)
axes[0].set(title="eps x'' + x' = lambda x: x(1)/x0 (lines closed form, dots RK4)", xlabel="lambda",
            ylabel="x(1) / x0", ylim=(-0.8, 2.5))
axes[0].legend(fontsize=8)
eps_fine = np.linspace(0.02, 3, 150)
axes[1].plot(eps_fine, [most_negative_factor(e, grid=20001) for e in eps_fine], color=PALETTE["momentum"],
             label="m(eps): most negative x(1)/x0")
axes[1].plot(eps_fine, -np.exp(-1 / (2 * eps_fine)), ls="--", color=PALETTE["theory"],
             label="Prop. 8: -exp(-1/(2 eps))")
axes[1].axhline(-1, color="0.3", lw=0.8, ls=":")
axes[1].set(title="reachable negative slopes (eps = 0: none)", xlabel="eps", ylabel="slope")
axes[1].legend(fontsize=8)
cs = np.array(factors)
axes[2].plot(cs, [errors_b["resnet", c] for c in factors], "o-", color=PALETTE["resnet"], label="ResNet (trained)")
axes[2].plot(cs, [errors_b["momentum", c] for c in factors], "o-", color=PALETTE["momentum"],
             label="Momentum ResNet (trained)")
c_fine = np.linspace(min(factors), max(factors), 200)
axes[2].plot(c_fine, np.maximum(0, c_fine - abs(m_network)) / (c_fine * math.sqrt(2)), ls="--",
             color=PALETTE["momentum"], lw=1, label="momentum: best possible")
axes[2].axhline(1 / math.sqrt(2), ls="--", color=PALETTE["resnet"], lw=1, label="ResNet: det >= 0 bound")
axes[2].axvline(abs(m_network), color="0.5", lw=0.8, ls=":")
axes[2].set(title=f"learning c x reflection (eps = {eps_b}, N = {depth_b})", xlabel="c",
            ylabel="relative error ||M - cR|| / ||cR||")
axes[2].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "representation_linear_maps")

# %% [markdown]
# ## (c) Appendix Prop. 8
# The paper's form is x'' + x'/eps = f(x) with f(x) = (-pi^2 - 1/(4 eps^2)) x: roots
# -1/(2 eps) +- i pi, hence the stated trajectory and x(1) = -x0 e^{-1/(2 eps)}. In our
# convention eps x'' + x' = F(x) this is F = eps f. (Reading the ODE as eps x'' + x' = f
# instead would not give the stated x(1); printed below.) The Momentum ResNet with N layers,
# residual (1/N) F and gamma = 1 - 1/(N eps) (exact here: 1/(N eps) is a power of 2) follows
# the trajectory ever more closely as N grows.

# %%
c8 = prop8_coefficient(eps_c)
x0_c = 1.0
exact_end = prop8_trajectory(1.0, eps_c, x0_c)
other_reading = float(linear_ode_solution(c8, eps_c))
print(f"Prop. 8, eps = {eps_c}: closed-form x(1) = {exact_end:.6f}, -x0 exp(-1/(2 eps)) = "
      f"{-x0_c * math.exp(-1 / (2 * eps_c)):.6f}; reading it as eps x'' + x' = f: x(1) = {other_reading:.6f}")
paths_c, errors_c = {}, {}
for N in depths_c:
    net = ode_network(Diagonal(torch.tensor(eps_c * c8, dtype=f64)), eps_c, depth=N)
    assert net.gamma == 1 - 1 / (N * eps_c)
    paths_c[N] = net.trajectory(torch.tensor([x0_c], dtype=f64))[:, 0].numpy()
    errors_c[N] = abs(paths_c[N][-1] - exact_end)
# asymptotic order: between the two deepest networks (the shallowest are pre-asymptotic)
slope_c = math.log(errors_c[depths_c[-1]] / errors_c[depths_c[-2]]) / math.log(depths_c[-1] / depths_c[-2])
for N in depths_c:
    print(f"N = {N:>4}: network x(1) = {paths_c[N][-1]:+.6f}, |error| = {errors_c[N]:.2e}")
print(f"measured order (slope of log error against log N, last two depths): {slope_c:.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
t_fine = np.linspace(0, 1, 400)
axes[0].plot(t_fine, prop8_trajectory(t_fine, eps_c, x0_c), color=PALETTE["theory"], lw=2.5,
             label="closed form (Prop. 8)")
for N, color in zip(depths_c, plt.cm.Oranges(np.linspace(0.4, 0.95, len(depths_c)))):
    axes[0].plot(np.linspace(0, 1, N + 1), paths_c[N], color=color, marker="." if N <= 32 else None,
                 label=f"Momentum ResNet, N = {N}")
axes[0].axhline(exact_end, color="0.5", ls=":", lw=1)
axes[0].set(title=f"x'' + x'/eps = f(x), eps = {eps_c}", xlabel="t = n / N", ylabel="x")
axes[0].legend(fontsize=8)
Ns = np.array(depths_c, dtype=float)
axes[1].loglog(Ns, [errors_c[N] for N in depths_c], "o-", color=PALETTE["momentum"],
               label=f"|x_N - x(1)|, last slope {slope_c:.2f}")
axes[1].loglog(Ns, errors_c[depths_c[-1]] * Ns[-1] / Ns, ls="--", color=PALETTE["theory"], label="slope -1")
axes[1].set(title="error at t = 1 against depth", xlabel="layers N", ylabel="error")
axes[1].legend(fontsize=8)
fig.tight_layout()
save_figure(fig, "prop8_trajectory")

# %% [markdown]
# ## Paper vs this run
# The paper states these results as theorems and pictures, with no table of numbers; the
# left column says what it claims, the right one what this run measured.

# %%
rows = [
    ("x -> -x, first-order flow (ResNet, h = 1/16)", "impossible (map is increasing)",
     f"rel. MSE {rel_mse_a['resnet']:.3f}, increasing: {resnet_increasing}"),
    ("x -> -x, Momentum ResNet", "possible", f"rel. MSE {rel_mse_a['momentum']:.1e}"),
    ("negative slope of eps x'' + x' = lambda x", "only with eps > 0",
     "eps=0: min " + f"{closed[0.0].min():.2g}" + "; " + ", ".join(f"m({e})={m_of_eps[e]:.3f}" for e in eps_list[1:])),
    ("2-D map c*R, det < 0 (ResNet)", "cannot be represented",
     f"rel. error >= {min(errors_b['resnet', c] for c in factors):.3f} for every c"),
    ("2-D map c*R, det < 0 (Momentum ResNet)", "represented up to a factor",
     ", ".join(f"c={c}: {errors_b['momentum', c]:.1e}" for c in factors)),
    (f"Prop. 8 x(1), eps = {eps_c}", f"-x0 exp(-1/(2 eps)) = {-math.exp(-1 / (2 * eps_c)):.4f}",
     f"network N={depths_c[-1]}: {paths_c[depths_c[-1]][-1]:.4f} (order {slope_c:.2f})"),
]
print(f"{'':<45} {'paper':<34} this run")
for what, paper, ours in rows:
    print(f"{what:<45} {paper:<34} {ours}")

# %% [markdown]
# ## Checks
# Compared by nbval on re-execution (booleans and closed-form values only).

# %%
# NBVAL_CHECK_OUTPUT
checks = {
    "(a) ResNet map increasing, every layer order-preserving": resnet_increasing and layer_slopes.min().item() > 0,
    "(a) ResNet rel. MSE >= 0.99 (best increasing fit: 1)": rel_mse_a["resnet"] >= 0.99,
    "(a) Momentum ResNet rel. MSE < 0.01": rel_mse_a["momentum"] < 0.01,
    "(b) closed form = RK4 to 1e-8": rk4_error < 1e-8,
    "(b) eps = 0: every slope positive": bool((closed[0.0] > 0).all()),
    "(b) eps > 0: negative slopes, all above -1": all(-1 < m_of_eps[e] < 0 for e in eps_list[1:]),
    "(b) ResNet det >= 0 and error >= 1/sqrt(2) - 1e-9": all(
        dets_b["resnet", c] >= 0 and errors_b["resnet", c] >= 1 / math.sqrt(2) - 1e-9 for c in factors),
    "(b) Momentum ResNet error < 1e-2 where c < |m|": all(
        errors_b["momentum", c] < 1e-2 for c in factors if c < abs(m_network)),
    "(b) and within 0.02 of the best possible where c > |m|": all(
        abs(errors_b["momentum", c] - (c - abs(m_network)) / (c * math.sqrt(2))) < 0.02
        for c in factors if c > abs(m_network)),
    "(c) closed form x(1) = -x0 exp(-1/(2 eps))": abs(exact_end + x0_c * math.exp(-1 / (2 * eps_c))) < 1e-12,
    "(c) network error at largest N < 5e-3": errors_c[depths_c[-1]] < 5e-3,
    "(c) measured order within 0.1 of 1": abs(slope_c + 1) < 0.1,
}
for what, ok in checks.items():
    print(f"{what}: {ok}")
print(f"Prop. 8 x(1) at eps = {eps_c}: {exact_end:.4f}")
assert all(checks.values())
