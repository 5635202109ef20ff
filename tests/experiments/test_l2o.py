"""experiments.l2o: problem families, the unrolled optimizers and the RevNet baseline."""

import pytest
import torch

from mresnet_core.experiments.l2o import (KINDS, PROBLEMS, AdditiveCoupling, GradientStep, RevNet,
                                          UnrolledOptimizer)
from twostate import full_jacobian, mlp

f64 = torch.float64


def test_revnet_step_inverse_exact_and_volume_preserving():
    d = 4
    step = AdditiveCoupling(mlp(d, seed=1), mlp(d, seed=2))
    net = RevNet([step, AdditiveCoupling(mlp(d, seed=3), mlp(d, seed=4)), step])
    x1, x2 = torch.randn(2, 5, d, dtype=f64)
    y1, y2 = net(x1, x2)
    r1, r2 = net.inverse(y1, y2)
    assert torch.allclose(r1, x1, atol=1e-12) and torch.allclose(r2, x2, atol=1e-12)
    for fn in (step, net):
        J = full_jacobian(lambda a, b: fn(a, b), x1[0], x2[0])
        assert torch.linalg.det(J).item() == pytest.approx(1.0, abs=1e-10)
    t1, t2 = net.trajectory(x1, x2)
    assert t1.shape == (4, 5, d) and torch.equal(t2[-1], y2)
    with pytest.raises(TypeError):
        RevNet([mlp(d)])


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_l2o_minimisers_determinants_and_parameter_counts(name):
    gen, loss, grad = PROBLEMS[name]
    d, n = 5, 20
    A, b, x_star = gen(8, n, d, torch.linspace(0.5, 2, d), torch.Generator().manual_seed(0))
    assert grad(x_star, A, b).abs().max() < 1e-10
    xs = x_star.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(xs, A, b).sum(), xs)
    assert torch.allclose(g, grad(x_star, A, b), atol=1e-12)
    counts = {}
    for kind in KINDS:
        model = UnrolledOptimizer(GradientStep(grad, d, 0.05), kind, depth=6, gamma=0.5)
        counts[kind] = sum(p.numel() for p in model.parameters())
        out = model((A, b))
        assert out.shape == x_star.shape
        assert torch.allclose(model.iterates((A, b), 6)[-1], out.detach())
        J = full_jacobian(lambda x, v: model.state_map(x, v, A[0], b[0], depth=3),
                          torch.randn(d, dtype=f64), torch.randn(d, dtype=f64))
        expected = {"resnet": None, "momentum": 0.5 ** (d * 3), "revnet": 1.0}[kind]
        if expected is not None:
            assert torch.linalg.det(J).item() == pytest.approx(expected, rel=1e-9)
    assert counts == {"resnet": d, "momentum": d, "revnet": 2 * d}  # the RevNet learns G too
