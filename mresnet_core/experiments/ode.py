"""The ODE view of Momentum ResNets (Sander et al. 2021, Sections 3-4): closed forms and references.

Convention: the network discretises ``eps x'' + x' = f(x)`` on [0, t1] with x'(0) = 0.
With N layers, step h = t1 / N, residual function h * f and gamma = 1 - h / eps,

    v_{n+1} = gamma v_n + (1 - gamma) h f(x_n),    x_{n+1} = x_n + v_{n+1}

is explicit Euler for u = x' = v / h (u' = (f(x) - u) / eps) followed by x' = u with the new
u: a first-order scheme. eps = 0 (or eps = h) gives gamma = 0, the ResNet x + h f(x): Euler
for the first-order flow x' = f(x). The paper's Prop. 8 writes ``x'' + x'/eps = f(x)``, the
same ODE with f scaled by 1/eps.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..momentum import MomentumNet


# ----------------------------------------------------------------- the network <-> ODE mapping
def ode_gamma(h: float, eps: float) -> float:
    """gamma = 1 - h/eps for step h; eps = 0 means the first-order flow (gamma = 0)."""
    if eps < 0 or h <= 0:
        raise ValueError(f"need eps >= 0 and h > 0, got eps={eps}, h={h}")
    if eps == 0:
        return 0.0
    if h > eps:
        raise ValueError(f"step h={h} exceeds eps={eps}: gamma = 1 - h/eps would be negative; "
                         f"use at least {math.ceil(1 / eps)} layers per unit time")
    return 1.0 - h / eps


class Scaled(nn.Module):
    """h * f(x, ...): the residual function of one layer of step h."""

    def __init__(self, f: nn.Module, scale: float):
        super().__init__()
        self.f, self.scale = f, float(scale)

    def forward(self, x, *args, **kwargs):
        return self.scale * self.f(x, *args, **kwargs)


def ode_network(f: nn.Module | Sequence[nn.Module], eps: float, depth: int | None = None,
                t1: float = 1.0) -> MomentumNet:
    """MomentumNet whose output approximates x(t1) of eps x'' + x' = f(x), x'(0) = 0.

    ``f`` is one module (tied: repeated ``depth`` times) or a list (one per layer, a
    time-dependent f). MomentumNet rounds gamma to n / 2**16: pick h / eps dyadic for exactness.
    """
    functions = [f] * int(depth) if isinstance(f, nn.Module) else list(f)
    if not functions:
        raise ValueError("need at least one layer")
    h = t1 / len(functions)
    shared: dict[int, nn.Module] = {}
    layers = [shared.setdefault(id(m), Scaled(m, h)) for m in functions]
    return MomentumNet(layers, ode_gamma(h, eps), memory_efficient=False)


class _GivenVelocity(nn.Module):
    """init_velocity returning a velocity set from outside (to start a stack at (x, v))."""

    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, x):
        return self.v


def momentum_flow(net: MomentumNet, x: torch.Tensor, v: torch.Tensor, *args, **kwargs):
    """(x_L, v_L) of ``net``'s update started from (x, v): the map whose Jacobian det is gamma**(d L)."""
    twin = MomentumNet(list(net.functions), net.gamma, memory_efficient=False,
                       residual=net.residual, init_velocity=_GivenVelocity(v))
    state = twin.forward_state(x, *args, **kwargs)
    return state.x, state.v


# ----------------------------------------------------------------- closed forms
def linear_ode_solution(lam, eps, t=1.0):
    """x(t)/x0 for eps x'' + x' = lam x, x'(0) = 0 (numpy, broadcasting); eps = 0 gives exp(lam t)."""
    lam, eps, t = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (lam, eps, t)))
    out = np.empty(lam.shape)
    flat = eps == 0
    out[flat] = np.exp(lam[flat] * t[flat])
    lam_, eps_, t_ = lam[~flat], eps[~flat], t[~flat]
    if lam_.size:
        # roots (-1 +- s) / (2 eps), s = sqrt(1 + 4 eps lam); with a = t/(2 eps), z = s a:
        # x/x0 = exp(-a) (cosh z + a sinh(z)/z), written so that nothing overflows.
        a = t_ / (2 * eps_)
        s = np.sqrt((1 + 4 * eps_ * lam_).astype(complex))
        z = s * a
        small = np.abs(z) < 1e-4
        zs = np.where(small, 1.0, z)
        ep, em = np.exp(z - a), np.exp(-z - a)
        sinhc_term = np.where(small, np.exp(-a) * (1 + z * z / 6), (ep - em) / (2 * zs))
        out[~flat] = np.real(0.5 * (ep + em) + a * sinhc_term)
    return out if out.ndim else float(out)


def prop8_coefficient(eps: float) -> float:
    """c in Prop. 8's f(x) = c x = (-pi^2 - 1/(4 eps^2)) x for x'' + x'/eps = f(x)."""
    return -math.pi ** 2 - 1.0 / (4 * eps ** 2)


def prop8_trajectory(t, eps: float, x0=1.0):
    """Prop. 8: x(t) = x0 exp(-t/(2 eps)) (cos(pi t) + sin(pi t)/(2 pi eps)); x(1) = -x0 exp(-1/(2 eps))."""
    t = np.asarray(t, dtype=float)
    return x0 * np.exp(-t / (2 * eps)) * (np.cos(np.pi * t) + np.sin(np.pi * t) / (2 * np.pi * eps))


def most_negative_factor(eps: float, grid: int = 200_001) -> float:
    """min over lam of x(1)/x0 for eps x'' + x' = lam x: the most negative 1-D slope reachable."""
    if eps <= 0:
        return 0.0  # exp(lam) > 0: no negative slope (infimum 0, not reached)
    # oscillating regime lam = -(1 + (2 eps w)^2) / (4 eps): x(1)/x0 = e^{-1/(2eps)} (cos w + sin w / (2 eps w))
    w = np.linspace(1e-6, 40 * np.pi, grid)
    values = np.exp(-1 / (2 * eps)) * (np.cos(w) + np.sin(w) / (2 * eps * w))
    return float(values.min())


def linear_ode_parameter(target: float, eps: float, tol: float = 1e-13) -> float:
    """lam with linear_ode_solution(lam, eps) == target, on the branch through lam = 0 (bisection).

    Positive targets are always reachable; negative ones need eps > 0 and target above
    most_negative_factor(eps). Raises ValueError otherwise.
    """
    if eps == 0:
        if target <= 0:
            raise ValueError("a first-order flow (eps = 0) only reaches positive slopes exp(lam)")
        return math.log(target)
    lo_limit = most_negative_factor(eps)
    if target <= lo_limit:
        raise ValueError(f"slope {target} is not reachable at eps={eps}: the most negative is {lo_limit:.6g}")
    # bracket: from lam = 0 (value 1) walk left to the first minimum, right until above target
    lam_min = _first_minimum(eps)
    lo, hi = lam_min, 0.0
    while linear_ode_solution(hi, eps) < target:
        hi = 2 * hi + 1
    for _ in range(400):
        mid = 0.5 * (lo + hi)
        if linear_ode_solution(mid, eps) < target:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def _first_minimum(eps: float) -> float:
    """lam of the first local minimum of x(1)/x0 left of 0 (monotone branch starts there)."""
    w = np.linspace(1e-6, 2 * np.pi, 200_001)
    values = np.cos(w) + np.sin(w) / (2 * eps * w)
    w_min = w[int(np.argmin(values))]
    return -(1 + (2 * eps * w_min) ** 2) / (4 * eps)


# ----------------------------------------------------------------- reference solver
def solve_ode(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, eps: float,
              t1: float = 1.0, steps: int = 4096, times: bool = False):
    """Classical RK4 for eps x'' + x' = f(x), x(0) = x0, x'(0) = 0 (eps = 0: x' = f(x)).

    Fourth order, for reference solutions; use float64 and steps >> t1/eps (the velocity
    relaxes on the time scale eps). With ``times=True`` returns all positions (steps+1, ...).
    """
    h = t1 / steps
    if eps == 0:
        def rhs(state):
            return f(state)
        state = x0
    else:
        def rhs(state):
            x, u = state
            return torch.stack((u, (f(x) - u) / eps))
        state = torch.stack((x0, torch.zeros_like(x0)))
    path = [x0] if times else None
    with torch.no_grad():
        for _ in range(steps):
            k1 = rhs(state)
            k2 = rhs(state + 0.5 * h * k1)
            k3 = rhs(state + 0.5 * h * k2)
            k4 = rhs(state + h * k3)
            state = state + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
            if times:
                path.append(state if eps == 0 else state[0])
    if times:
        return torch.stack(path)
    return state if eps == 0 else state[0]


# ----------------------------------------------------------------- the ODE-limit experiment
def fitted_slope(xs, ys) -> float:
    """Least-squares slope of log(ys) against log(xs): the measured order of a power law."""
    return float(np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)[0])


def depth_convergence(f: nn.Module, x0: torch.Tensor, eps_list, depths, ref_steps: int = 4096,
                      fit_last: int = 4):
    """max_i |x_N(x0_i) - x(1)| for the network of N layers against the RK4 solution of
    eps x'' + x' = f(x), per eps and N (skipping N < 1/eps, where gamma < 0), and the
    slope fitted on the deepest ``fit_last`` networks. Returns (errors {eps: {N: err}},
    slopes {eps: slope})."""
    errors, slopes = {}, {}
    for eps in eps_list:
        reference = solve_ode(f, x0, eps, steps=ref_steps)
        errors[eps] = {}
        for N in depths:
            if N * eps < 1:
                continue
            with torch.no_grad():
                errors[eps][N] = (ode_network(f, eps, depth=N)(x0) - reference).norm(dim=-1).max().item()
        Ns = sorted(errors[eps])[-fit_last:]
        slopes[eps] = fitted_slope(Ns, [errors[eps][N] for N in Ns])
    return errors, slopes


def first_order_limit(f: nn.Module, x0: torch.Tensor, eps_list, depth: int, ref_steps: int = 4096,
                      fit_last: int = 4):
    """How eps x'' + x' = f approaches the first-order flow x' = f as eps -> 0.

    Returns (ode_gap {eps: max |x_eps(1) - x_flow(1)|} from RK4, net_gap {eps: max
    |MomentumNet - ResNet|} at ``depth`` layers, the slope of ode_gap in eps over the
    smallest ``fit_last`` eps, resnet_equals_eps_h: the network at eps = h compared bit for
    bit with the ResNet)."""
    flow = solve_ode(f, x0, 0.0, steps=ref_steps)
    with torch.no_grad():
        resnet_out = ode_network(f, 0.0, depth=depth)(x0)
        at_eps_h = ode_network(f, 1 / depth, depth=depth)(x0)
    ode_gap, net_gap = {}, {}
    for eps in eps_list:
        ode_gap[eps] = (solve_ode(f, x0, eps, steps=ref_steps) - flow).norm(dim=-1).max().item()
        with torch.no_grad():
            net_gap[eps] = (ode_network(f, eps, depth=depth)(x0) - resnet_out).norm(dim=-1).max().item()
    small = sorted(eps_list)[:fit_last]
    slope = fitted_slope(small, [ode_gap[e] for e in small])
    return ode_gap, net_gap, slope, bool(torch.equal(at_eps_h, resnet_out))


def plot_ode_limit(f: nn.Module, x0: torch.Tensor, eps_list, errors: dict, slopes: dict,
                   ode_gap: dict, net_gap: dict, slope_eps: float, depth: int):
    """The ODE-limit figure: (left) three paths, RK4 lines and N = 16 network dots;
    (middle) network error vs N per eps; (right) the gap to the first-order flow vs eps."""
    import math

    import matplotlib.pyplot as plt

    from ..plotting import PALETTE

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    show = x0[:3]
    t_path = np.linspace(0, 1, 513)
    colors = plt.cm.viridis(np.linspace(0, 0.85, len(eps_list)))
    for eps, color in zip(eps_list, colors):
        path = solve_ode(f, show, eps, steps=512, times=True).numpy()
        axes[0].plot(t_path, path[:, :, 0], color=color, lw=1.5)
        n_plot = max(16, math.ceil(1 / eps))  # gamma >= 0 needs N >= 1/eps
        layers = ode_network(f, eps, depth=n_plot).trajectory(show).numpy()
        axes[0].plot(np.linspace(0, 1, n_plot + 1), layers[:, :, 0], ".", color=color, ms=5)
        axes[0].plot([], [], color=color, marker=".", label=f"$\\varepsilon$ = {eps}")
    path = solve_ode(f, show, 0.0, steps=512, times=True).numpy()
    axes[0].plot(t_path, path[:, :, 0], color=PALETTE["resnet"], ls="--", lw=1.2)
    axes[0].plot([], [], color=PALETTE["resnet"], ls="--", label="first-order flow $\\dot x = f(x)$")
    axes[0].set(title="3 paths, first coordinate: lines RK4, dots N = 16", xlabel="$t$", ylabel="$x_1(t)$")
    axes[0].legend(fontsize=8)

    all_depths = sorted({N for e in errors.values() for N in e})
    for eps, color in zip(eps_list, colors):
        Ns = sorted(errors[eps])
        axes[1].loglog(Ns, [errors[eps][N] for N in Ns], "o-", color=color, ms=4,
                       label=f"$\\varepsilon$ = {eps}: slope {slopes[eps]:.3f}")
    Ns = np.array(all_depths, dtype=float)
    last = errors[eps_list[-1]][all_depths[-1]]
    axes[1].loglog(Ns, 2 * last * Ns[-1] / Ns, ls="--", color=PALETTE["theory"], label="slope $-1$")
    axes[1].set(title="Momentum ResNet vs ODE solution at $t = 1$", xlabel="layers $N$",
                ylabel="$\\max_i \\|x_N - x(1)\\|$")
    axes[1].legend(fontsize=8)

    E = np.array(sorted(ode_gap))
    axes[2].loglog(E, [ode_gap[e] for e in E], "o-", color=PALETTE["momentum"],
                   label=f"ODE: $\\|x_\\varepsilon(1) - x_{{flow}}(1)\\|$, slope {slope_eps:.2f}")
    axes[2].loglog(E, [net_gap[e] for e in E], "s", color=PALETTE["resnet"], mfc="none",
                   label=f"networks, N = {depth}: |MomentumNet $-$ ResNet|")
    axes[2].loglog(E, ode_gap[E[0]] * E / E[0], ls="--", color=PALETTE["theory"], label="slope 1")
    axes[2].set(title="$\\varepsilon \\to 0$ recovers the first-order flow", xlabel="$\\varepsilon$",
                ylabel="distance at $t = 1$")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------- Section 4: representation
class Diagonal(nn.Module):
    """f(x) = lam * x with a fixed ``lam`` (a scalar, or one value per sample: the 1-D
    linear ODE for a whole grid of lambda at once)."""

    def __init__(self, lam):
        super().__init__()
        self.lam = lam

    def forward(self, x):
        return self.lam * x


def train_minus_x(eps: float, depth: int, hidden: int, steps: int, batch: int, lr: float,
                  seed: int = 0, dtype=torch.float64):
    """Fit x -> -x on [-1, 1] with ``depth`` independent MLPs Linear(1, hidden)-Tanh-
    Linear(hidden, 1) as the network of :func:`ode_network` (eps = 0: the ResNet with step
    1/depth), Adam on MSE. Returns (net, relative MSE on a 201-point grid, i.e.
    MSE / E[x^2]; an increasing map cannot go below 1)."""
    from .common import toy_mlp, train_steps

    functions = []
    for i in range(depth):
        torch.manual_seed(seed + i)
        functions.append(toy_mlp(1, hidden, dtype))
    net = ode_network(functions, eps)
    points = torch.Generator().manual_seed(seed + 1)

    def make_batch(step):
        x = 2 * torch.rand(batch, 1, generator=points, dtype=dtype) - 1
        return x, -x

    train_steps(net, make_batch, nn.functional.mse_loss, torch.optim.Adam(net.parameters(), lr=lr),
                steps, progress=False)
    grid = torch.linspace(-1, 1, 201, dtype=dtype)[:, None]
    with torch.no_grad():
        rel_mse = (((net(grid) + grid) ** 2).mean() / (grid ** 2).mean()).item()
    return net, rel_mse


def order_preservation(net, n: int = 201, dtype=torch.float64):
    """(is the map of ``net`` non-decreasing on a grid of [-1, 1], smallest ratio of
    consecutive gaps between layers: > 0 means every layer keeps the order)."""
    grid = torch.linspace(-1, 1, n, dtype=dtype)[:, None]
    out = net.trajectory(grid)
    increasing = bool((out[-1, 1:] >= out[-1, :-1]).all())
    slopes = (out[1:, 1:] - out[1:, :-1]) / (out[:-1, 1:] - out[:-1, :-1])
    return increasing, float(slopes.min())


def plot_minus_x(nets: dict, eps: float, depth: int):
    """Trajectories of 8 inputs through the ResNet and the Momentum ResNet trained on x -> -x,
    and the maps they learned. ``nets`` maps "resnet" and "momentum" to the networks."""
    import matplotlib.pyplot as plt

    from ..plotting import PALETTE

    dtype = next(nets["resnet"].parameters()).dtype
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    starts = torch.linspace(-1, 1, 8, dtype=dtype)[:, None]
    t = np.linspace(0, 1, depth + 1)
    for ax, name, title in ((axes[0], "resnet", f"ResNet, step 1/{depth} (first-order flow)"),
                            (axes[1], "momentum", f"Momentum ResNet, $\\varepsilon$ = {eps}")):
        traj = nets[name].trajectory(starts)[:, :, 0].numpy()
        ax.plot(t, traj[:, 0], color=PALETTE[name], marker=".", ms=4, label="trajectories $x(t)$")
        ax.plot(t, traj[:, 1:], color=PALETTE[name], marker=".", ms=4)
        ax.scatter(np.ones(8), -starts[:, 0].numpy(), marker="x", color=PALETTE["theory"], zorder=3,
                   label="target $-x_0$")
        ax.set(title=title, xlabel="depth $t = n / N$", ylabel="$x$", ylim=(-1.3, 1.3))
        ax.legend(loc="lower left", fontsize=8)
    grid = torch.linspace(-1, 1, 201, dtype=dtype)[:, None]
    with torch.no_grad():
        for name, label in (("resnet", "ResNet"), ("momentum", "Momentum ResNet")):
            axes[2].plot(grid[:, 0], nets[name](grid)[:, 0], color=PALETTE[name], label=label)
    axes[2].plot(grid[:, 0], -grid[:, 0], color=PALETTE["theory"], ls="--", label="target $-x$")
    axes[2].set(title="learned map $x(1)$ against $x(0)$", xlabel="$x(0)$", ylabel="$x(1)$")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def reflection(theta: float, dtype=torch.float64) -> torch.Tensor:
    """The 2-D reflection across the line at angle ``theta`` (det -1, eigenvalues +1, -1)."""
    c, s = math.cos(2 * theta), math.sin(2 * theta)
    return torch.tensor([[c, s], [s, -c]], dtype=dtype)


def network_most_negative_slope(eps: float, depth: int, lam_min: float = -80.0, n: int = 8001) -> float:
    """The most negative x_N / x_0 the 1-D linear network (residual lam x / N) reaches over
    lam in [lam_min, 0]."""
    lam = torch.linspace(lam_min, 0, n, dtype=torch.float64)
    with torch.no_grad():
        return ode_network(Diagonal(lam), eps, depth=depth)(torch.ones_like(lam)).min().item()


def fit_linear_map(target: torch.Tensor, eps: float, depth: int, steps: int, lr: float):
    """Train the linear tied network x -> x + (1/N) Theta x (eps = 0) or its momentum
    version (eps > 0) from Theta = 0 to compute ``target`` (Adam on the matrix it
    computes). Returns (the matrix M it computes, ||M - target|| / ||target||, det M)."""
    from .common import train_steps

    eye = torch.eye(target.shape[0], dtype=target.dtype)
    lin = nn.Linear(target.shape[0], target.shape[0], bias=False).to(target.dtype)
    nn.init.zeros_(lin.weight)
    net = ode_network(lin, eps, depth=depth)
    train_steps(net, lambda step: (eye, target.T), nn.functional.mse_loss,
                torch.optim.Adam(net.parameters(), lr=lr), steps, progress=False)
    with torch.no_grad():
        M = net(eye).T  # columns: images of the basis vectors
    return M, ((M - target).norm() / target.norm()).item(), torch.linalg.det(M).item()


def plot_linear_maps(eps_list, lams, closed: dict, lam_check, rk4: dict, factors, errors: dict,
                     m_network: float, eps_b: float, depth_b: int):
    """(left) x(1)/x0 of eps x'' + x' = lam x, closed form and RK4; (middle) the most
    negative reachable slope m(eps); (right) trained errors on c x reflection."""
    import matplotlib.pyplot as plt

    from ..plotting import PALETTE

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for eps, color in zip(eps_list, plt.cm.viridis(np.linspace(0, 0.9, len(eps_list)))):
        axes[0].plot(lams, closed[eps], color=color, label=f"$\\varepsilon$ = {eps}")
        axes[0].plot(lam_check, rk4[eps], "o", ms=3, color=color)
    axes[0].plot([], [], "o", ms=3, color="0.4", label="RK4 (dots)")
    axes[0].axhline(0, color="0.3", lw=0.8)
    axes[0].set(title="$\\varepsilon\\ddot x + \\dot x = \\lambda x$: $x(1)/x_0$ (lines: closed form)",
                xlabel="$\\lambda$", ylabel="$x(1) / x_0$", ylim=(-0.8, 2.5))
    axes[0].legend(fontsize=8)
    eps_fine = np.linspace(0.02, 3, 150)
    axes[1].plot(eps_fine, [most_negative_factor(e, grid=20001) for e in eps_fine], color=PALETTE["momentum"],
                 label="$m(\\varepsilon)$: most negative $x(1)/x_0$")
    axes[1].plot(eps_fine, -np.exp(-1 / (2 * eps_fine)), ls="--", color=PALETTE["theory"],
                 label="Prop. 8: $-e^{-1/(2\\varepsilon)}$")
    axes[1].axhline(-1, color="0.3", lw=0.8, ls=":", label="$-1$")
    axes[1].set(title="reachable negative slopes ($\\varepsilon = 0$: none)", xlabel="$\\varepsilon$",
                ylabel="slope")
    axes[1].legend(fontsize=8)
    cs = np.array(factors)
    axes[2].plot(cs, [errors["resnet", c] for c in factors], "o-", color=PALETTE["resnet"], label="ResNet (trained)")
    axes[2].plot(cs, [errors["momentum", c] for c in factors], "o-", color=PALETTE["momentum"],
                 label="Momentum ResNet (trained)")
    c_fine = np.linspace(min(factors), max(factors), 200)
    axes[2].plot(c_fine, np.maximum(0, c_fine - abs(m_network)) / (c_fine * math.sqrt(2)), ls="--",
                 color=PALETTE["momentum"], lw=1, label="momentum: best possible")
    axes[2].axhline(1 / math.sqrt(2), ls="--", color=PALETTE["resnet"], lw=1, label="ResNet: $\\det \\geq 0$ bound")
    axes[2].axvline(abs(m_network), color="0.5", lw=0.8, ls=":", label="$c = |m|$ of the network")
    axes[2].set(title=f"learning $c R$, $R$ a reflection ($\\varepsilon$ = {eps_b}, N = {depth_b})", xlabel="$c$",
                ylabel="$\\|M - cR\\| / \\|cR\\|$")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    return fig


def prop8_convergence(eps: float, depths, x0: float = 1.0):
    """The Momentum ResNet of Prop. 8 (residual (1/N) eps f, f(x) = c x with c from
    :func:`prop8_coefficient`) at each depth N. Returns (paths {N: x_0..x_N}, errors
    {N: |x_N - x(1)|} against the closed form, slope of log error between the two deepest)."""
    c8 = prop8_coefficient(eps)
    end = prop8_trajectory(1.0, eps, x0)
    paths, errors = {}, {}
    for N in depths:
        net = ode_network(Diagonal(torch.tensor(eps * c8, dtype=torch.float64)), eps, depth=N)
        paths[N] = net.trajectory(torch.tensor([x0], dtype=torch.float64))[:, 0].numpy()
        errors[N] = abs(paths[N][-1] - end)
    slope = math.log(errors[depths[-1]] / errors[depths[-2]]) / math.log(depths[-1] / depths[-2])
    return paths, errors, slope


def plot_prop8(paths: dict, errors: dict, slope: float, eps: float, x0: float = 1.0):
    """Prop. 8's closed-form trajectory against the networks, and the error at t = 1 vs N."""
    import matplotlib.pyplot as plt

    from ..plotting import PALETTE

    depths = sorted(paths)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    t_fine = np.linspace(0, 1, 400)
    axes[0].plot(t_fine, prop8_trajectory(t_fine, eps, x0), color=PALETTE["theory"], lw=2.5,
                 label="closed form (Prop. 8)")
    for N, color in zip(depths, plt.cm.Oranges(np.linspace(0.4, 0.95, len(depths)))):
        axes[0].plot(np.linspace(0, 1, N + 1), paths[N], color=color, marker="." if N <= 32 else None,
                     label=f"Momentum ResNet, N = {N}")
    axes[0].axhline(prop8_trajectory(1.0, eps, x0), color="0.5", ls=":", lw=1, label="$x(1)$")
    axes[0].set(title=f"$\\ddot x + \\dot x/\\varepsilon = f(x)$, $\\varepsilon$ = {eps}",
                xlabel="$t = n / N$", ylabel="$x$")
    axes[0].legend(fontsize=8)
    Ns = np.array(depths, dtype=float)
    axes[1].loglog(Ns, [errors[N] for N in depths], "o-", color=PALETTE["momentum"],
                   label=f"$|x_N - x(1)|$, last slope {slope:.2f}")
    axes[1].loglog(Ns, errors[depths[-1]] * Ns[-1] / Ns, ls="--", color=PALETTE["theory"], label="slope $-1$")
    axes[1].set(title="error at $t = 1$ against depth", xlabel="layers $N$", ylabel="error")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig
