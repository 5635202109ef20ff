"""Closed forms, the ODE <-> network mapping, the RevNet step and the learning-to-optimize pieces."""
import math

import numpy as np
import pytest
import torch

from mresnet_core import MomentumNet
from mresnet_core.experiments.ode import (linear_ode_parameter, linear_ode_solution, momentum_flow,
                                 most_negative_factor, ode_gamma, ode_network, prop8_coefficient,
                                 prop8_trajectory, solve_ode)

from twostate import full_jacobian, mlp

f64 = torch.float64


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.25, 1.0])
def test_linear_closed_form_matches_rk4(eps):
    lam = torch.tensor([-40.0, -3.0, -1.0, 0.0, 2.5], dtype=f64)
    ref = solve_ode(lambda x: lam * x, torch.ones(5, dtype=f64), eps, steps=4000)
    assert np.allclose(linear_ode_solution(lam.numpy(), eps), ref.numpy(), rtol=1e-9, atol=1e-12)


def test_linear_closed_form_at_critical_damping_and_vectorised():
    eps = 0.2
    lam = -1 / (4 * eps)  # double root: x = e^{-t/(2eps)} (1 + t/(2eps))
    assert linear_ode_solution(lam, eps) == pytest.approx(math.exp(-2.5) * 3.5, rel=1e-12)
    grid = linear_ode_solution(np.linspace(-50, 5, 101), [[0.0], [0.1], [1.0]])
    assert grid.shape == (3, 101) and np.isfinite(grid).all()


def test_negative_slopes_need_momentum():
    assert (linear_ode_solution(np.linspace(-200, 5, 2001), 0.0) > 0).all()
    assert most_negative_factor(0.0) == 0.0
    for eps in (0.1, 0.5, 2.0):
        m = most_negative_factor(eps)
        assert -1 < m < -math.exp(-1 / (2 * eps)) + 1e-12  # Prop. 8's slope is reachable, -1 is not
        for target in (0.5 * m, 0.3, 4.0):
            lam = linear_ode_parameter(target, eps)
            assert linear_ode_solution(lam, eps) == pytest.approx(target, rel=1e-9)
        with pytest.raises(ValueError, match="not reachable"):
            linear_ode_parameter(1.01 * m, eps)
    with pytest.raises(ValueError, match="positive"):
        linear_ode_parameter(-0.1, 0.0)


@pytest.mark.parametrize("eps", [0.25, 0.5, 1.0])
def test_prop8_trajectory_solves_its_ode(eps):
    """x'' + x'/eps = c x (the paper's form) is eps x'' + x' = eps c x in ours."""
    c = prop8_coefficient(eps)
    t = np.linspace(0, 1, 257)
    path = solve_ode(lambda x: eps * c * x, torch.ones(1, dtype=f64), eps, steps=256 * 40, times=True)
    assert np.allclose(path[::40, 0].numpy(), prop8_trajectory(t, eps), atol=1e-9)
    assert prop8_trajectory(1.0, eps, x0=2.0) == pytest.approx(-2.0 * math.exp(-1 / (2 * eps)), rel=1e-13)
    assert linear_ode_solution(eps * c, eps) == pytest.approx(-math.exp(-1 / (2 * eps)), rel=1e-12)


def test_ode_gamma_and_errors():
    assert ode_gamma(1 / 64, 0.25) == 1 - 1 / 16
    assert ode_gamma(0.1, 0.0) == 0.0
    with pytest.raises(ValueError, match="exceeds eps"):
        ode_gamma(0.5, 0.25)
    net = ode_network(mlp(2), 0.25, depth=64)
    assert net.gamma == 1 - 1 / 16 and len(net.functions) == 64
    assert len(list(net.parameters())) == 4  # tied: one f


def test_ode_network_converges_at_first_order():
    f = mlp(2, seed=1)
    x0 = torch.randn(16, 2, dtype=f64, generator=torch.Generator().manual_seed(0))
    for eps in (0.0, 0.5):
        ref = solve_ode(f, x0, eps, steps=2048)
        with torch.no_grad():
            errors = [(ode_network(f, eps, depth=N)(x0) - ref).abs().max().item() for N in (128, 256, 512)]
        rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
        assert all(0.9 < r < 1.1 for r in rates), (eps, errors)


def test_momentum_flow_and_its_determinant():
    d, L, gamma = 3, 4, 0.75
    net = MomentumNet([mlp(d, seed=i) for i in range(L)], gamma, memory_efficient=False)
    x = torch.randn(d, dtype=f64)
    xL, vL = momentum_flow(net, x, torch.zeros(d, dtype=f64))
    assert torch.allclose(xL, net(x), rtol=0, atol=1e-14)
    v = torch.randn(d, dtype=f64)
    J = full_jacobian(lambda a, b: momentum_flow(net, a, b), x, v)
    assert torch.linalg.det(J).item() == pytest.approx(gamma ** (d * L), rel=1e-9)
