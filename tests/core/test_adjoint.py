"""MomentumAdjoint against autograd through the plain momentum update (float64)."""
import pytest
import torch
from torch import nn

from mresnet_core import adjoint as adjoint_module
from mresnet_core.adjoint import MomentumAdjoint


def plain_layers(fns, gamma, x, v):
    for f in fns:
        v = gamma * v + (1 - gamma) * f(x)
        x = x + v
    return x, v


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("with_b", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_adjoint_of_three_layers_matches_autograd(gamma, with_b, fused, monkeypatch):
    """Both ways of the element-wise update: the C kernel's one pass (where the library
    is there) and the torch operations."""
    if not fused:
        monkeypatch.setattr(adjoint_module.exact_native, "adjoint_update", lambda *args: False)
    torch.manual_seed(0)
    fns = [nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 4)).double() for _ in range(3)]
    x0 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    v0 = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    a = torch.randn(5, 4, dtype=torch.float64)
    b = torch.randn(5, 4, dtype=torch.float64) if with_b else None
    params = [p for f in fns for p in f.parameters()]
    xL, vL = plain_layers(fns, gamma, x0, v0)
    outs, cots = ([xL, vL], [a, b]) if with_b else ([xL], [a])
    expected = torch.autograd.grad(outs, [x0, v0, *params], cots)

    # the inputs of each layer, then the adjoint from the last layer down
    xs, x, v = [], x0.detach(), v0.detach()
    for f in fns:
        xs.append(x)
        v = gamma * v + (1 - gamma) * f(x).detach()
        x = x + v
    a_in, b_in = a.clone(), (b.clone() if b is not None else None)
    adjoint = MomentumAdjoint(a_in, b_in, gamma, a.shape, a.dtype, a.device)
    got_params = []
    for i in reversed(range(len(fns))):
        leaf = xs[i].clone().requires_grad_(True)
        got_params = adjoint.step(leaf, fns[i](leaf), list(fns[i].parameters()), last=i == 0) + got_params
    dx, dv = adjoint.result(want_v=True)
    for got, want in zip([dx, dv, *got_params], expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    # the incoming gradients are never written to
    assert torch.equal(a_in, a) and (b is None or torch.equal(b_in, b))
