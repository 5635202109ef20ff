"""Models the notebooks share: the paper's small tied-weight toy networks.

``toy_network`` builds the 1-D (Figure 1) and 2-D (Figure 5) models: one residual
function f = Linear(d, hidden) - Tanh - Linear(hidden, d), tied (shared) across all
layers, stacked as a ResNet (gamma = 0) or a Momentum ResNet.
"""
from __future__ import annotations

from torch import nn

from .momentum import MomentumNet


def tied_function(dim: int, hidden: int = 16) -> nn.Module:
    """f(x) = Linear(hidden, dim)(tanh(Linear(dim, hidden)(x)))."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))


def toy_network(dim: int, depth: int, gamma: float, hidden: int = 16,
                memory_efficient: bool = False) -> MomentumNet:
    """Tied-weight stack of ``depth`` layers; gamma = 0 gives the ResNet x + f(x)."""
    f = tied_function(dim, hidden)
    return MomentumNet([f] * depth, gamma, memory_efficient=memory_efficient)
