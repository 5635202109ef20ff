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
