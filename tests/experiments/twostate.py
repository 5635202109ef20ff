"""Shared by the ODE and learning-to-optimize tests: a seeded float64 toy MLP and the full
Jacobian of a two-state map (x, v) -> (x', v')."""
import torch

from mresnet_core.experiments.common import toy_mlp


def mlp(d, hidden=8, seed=0):
    """The toy residual function Linear-Tanh-Linear in float64, initialised from ``seed``."""
    torch.manual_seed(seed)
    return toy_mlp(d, hidden, torch.float64)


def full_jacobian(fn, x, v):
    """Jacobian of (x, v) -> fn(x, v) (a pair of tensors) as a (2d, 2d) matrix."""
    d = x.numel()
    return torch.autograd.functional.jacobian(lambda z: torch.cat(fn(z[:d], z[d:])), torch.cat((x, v)))
