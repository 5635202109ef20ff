"""Additive-coupling RevNet (Gomez et al. 2017), the volume-preserving baseline of Section 3.3.

One step maps (x1, x2) to (y1, y2) = (x1 + F(x2), x2 + G(y1)). It is inverted exactly by
x2 = y2 - G(y1), x1 = y1 - F(x2), and its Jacobian is a product of two unit-triangular
block matrices: determinant 1 for any F and G, so no stack of such steps can contract
volume (Momentum ResNet steps have determinant gamma**d instead).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class AdditiveCoupling(nn.Module):
    """(x1, x2) -> (x1 + F(x2), x2 + G(x1 + F(x2))); extra arguments reach F and G."""

    def __init__(self, F: nn.Module, G: nn.Module):
        super().__init__()
        self.F, self.G = F, G

    def forward(self, x1, x2, *args, **kwargs):
        y1 = x1 + self.F(x2, *args, **kwargs)
        y2 = x2 + self.G(y1, *args, **kwargs)
        return y1, y2

    def inverse(self, y1, y2, *args, **kwargs):
        x2 = y2 - self.G(y1, *args, **kwargs)
        x1 = y1 - self.F(x2, *args, **kwargs)
        return x1, x2


class RevNet(nn.Module):
    """A stack of additive couplings (a step may repeat: tied weights); returns (x1_L, x2_L)."""

    def __init__(self, steps: Sequence[AdditiveCoupling]):
        super().__init__()
        steps = list(steps)
        if not steps or not all(isinstance(s, AdditiveCoupling) for s in steps):
            raise TypeError("RevNet needs a non-empty sequence of AdditiveCoupling steps")
        self.steps = nn.ModuleList(steps)

    def forward(self, x1, x2, *args, **kwargs):
        for step in self.steps:
            x1, x2 = step(x1, x2, *args, **kwargs)
        return x1, x2

    def inverse(self, y1, y2, *args, **kwargs):
        for step in reversed(self.steps):
            y1, y2 = step.inverse(y1, y2, *args, **kwargs)
        return y1, y2

    @torch.no_grad()
    def trajectory(self, x1, x2, *args, **kwargs):
        """Both halves at every depth 0..L, each shaped (L + 1, *x.shape)."""
        out1, out2 = [x1], [x2]
        for step in self.steps:
            x1, x2 = step(x1, x2, *args, **kwargs)
            out1.append(x1)
            out2.append(x2)
        return torch.stack(out1), torch.stack(out2)
