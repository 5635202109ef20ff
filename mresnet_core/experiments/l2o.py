"""Learning to optimize (Section 3.3, reconstructed): problem families and optimizer-step layers.

Each layer is one step of an optimizer on a random problem (A, b) passed as extra
arguments: f(x, A, b) = -p * grad L(x; A, b) with a learned positive diagonal step p.
Stacked as a ResNet this is gradient descent, as a Momentum ResNet heavy ball, and as the
F of an additive-coupling RevNet (G = the identity) heavy ball without friction.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..momentum import MomentumNet
from .ode import momentum_flow


# ----------------------------------------------------------------- problem families
def least_squares_problems(batch: int, n: int, d: int, scales: torch.Tensor, generator: torch.Generator,
                           noise: float = 0.1):
    """A = Z diag(scales) / sqrt(n), b = A x_true + noise; returns (A, b, x_star), float64."""
    Z = torch.randn(batch, n, d, generator=generator, dtype=torch.float64)
    A = Z * scales.to(torch.float64) / math.sqrt(n)
    x_true = torch.randn(batch, d, generator=generator, dtype=torch.float64)
    b = (A @ x_true.unsqueeze(-1)).squeeze(-1) + noise * torch.randn(batch, n, generator=generator,
                                                                       dtype=torch.float64)
    x_star = torch.linalg.solve(A.mT @ A, (A.mT @ b.unsqueeze(-1))).squeeze(-1)
    return A, b, x_star


def least_squares_loss(x, A, b):
    """0.5 ||A x - b||^2 per problem."""
    r = (A @ x.unsqueeze(-1)).squeeze(-1) - b
    return 0.5 * (r * r).sum(-1)


def least_squares_grad(x, A, b):
    """A^T (A x - b)."""
    r = (A @ x.unsqueeze(-1)).squeeze(-1) - b
    return (A.mT @ r.unsqueeze(-1)).squeeze(-1)


LOGISTIC_REG = 0.1


def logistic_problems(batch: int, n: int, d: int, scales: torch.Tensor, generator: torch.Generator,
                      reg: float = LOGISTIC_REG, newton_steps: int = 30):
    """Labels y = sign(A x_true + noise) in {-1, 1} (as b); x_star of the ridge-logistic loss by Newton."""
    Z = torch.randn(batch, n, d, generator=generator, dtype=torch.float64)
    A = Z * scales.to(torch.float64)
    x_true = torch.randn(batch, d, generator=generator, dtype=torch.float64)
    logits = (A @ x_true.unsqueeze(-1)).squeeze(-1) + torch.randn(batch, n, generator=generator,
                                                                   dtype=torch.float64)
    y = torch.where(logits >= 0, 1.0, -1.0).to(torch.float64)
    x = torch.zeros(batch, d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    for _ in range(newton_steps):
        g = logistic_grad(x, A, y, reg)
        s = torch.sigmoid((A @ x.unsqueeze(-1)).squeeze(-1) * y)
        w = s * (1 - s) / n
        H = A.mT @ (A * w.unsqueeze(-1)) + reg * eye
        x = x - torch.linalg.solve(H, g.unsqueeze(-1)).squeeze(-1)
    return A, y, x


def logistic_loss(x, A, y, reg: float = LOGISTIC_REG):
    """mean log(1 + exp(-y a^T x)) + reg/2 ||x||^2 per problem."""
    m = (A @ x.unsqueeze(-1)).squeeze(-1) * y
    return torch.nn.functional.softplus(-m).mean(-1) + 0.5 * reg * (x * x).sum(-1)


def logistic_grad(x, A, y, reg: float = LOGISTIC_REG):
    """-A^T (y sigmoid(-y A x)) / n + reg x."""
    n = A.shape[-2]
    m = (A @ x.unsqueeze(-1)).squeeze(-1) * y
    return -(A.mT @ (y * torch.sigmoid(-m)).unsqueeze(-1)).squeeze(-1) / n + reg * x


PROBLEMS = {
    "least squares": (least_squares_problems, least_squares_loss, least_squares_grad),
    "logistic regression": (logistic_problems, logistic_loss, logistic_grad),
}


# ----------------------------------------------------------------- the RevNet baseline
# Additive-coupling RevNet (Gomez et al. 2017): one step maps (x1, x2) to
# (y1, y2) = (x1 + F(x2), x2 + G(y1)). It is inverted exactly by x2 = y2 - G(y1),
# x1 = y1 - F(x2), and its Jacobian is a product of two unit-triangular block matrices:
# determinant 1 for any F and G, so no stack of such steps can contract volume
# (a Momentum ResNet step has determinant gamma**d instead).

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


# ----------------------------------------------------------------- layers
class GradientStep(nn.Module):
    """f(x, A, b) = -p * grad L(x; A, b), p = exp(log_p) a learned diagonal step (d parameters)."""

    def __init__(self, grad, d: int, step: float):
        super().__init__()
        self.grad = grad
        self.log_p = nn.Parameter(torch.full((d,), math.log(step), dtype=torch.float64))

    def forward(self, x, A, b):
        return -torch.exp(self.log_p) * self.grad(x, A, b)


class PassThrough(nn.Module):
    """G(y) = y, ignoring the problem data: the parameter-free half of the RevNet step."""

    def forward(self, y, *args, **kwargs):
        return y


KINDS = ("resnet", "momentum", "revnet")


class UnrolledOptimizer(nn.Module):
    """A problem batch (A, b) -> the iterate after ``depth`` tied layers from x0 = 0 (and v0 = 0).

    kind "resnet": x + f(x) (gradient descent); "momentum": MomentumNet(gamma) (heavy ball);
    "revnet": AdditiveCoupling(F = f, G = identity) on (v, x) (heavy ball without friction).
    All three hold exactly the parameters of ``step``.
    """

    def __init__(self, step: nn.Module, kind: str, depth: int, gamma: float = 0.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.step, self.kind, self.depth = step, kind, int(depth)
        self.gamma = {"resnet": 0.0, "momentum": gamma, "revnet": 1.0}[kind]
        self.stack = self.build(self.depth)

    def build(self, depth: int):
        """The stack of ``depth`` tied layers (MomentumNet, or RevNet for kind 'revnet')."""
        if self.kind == "revnet":
            return RevNet([AdditiveCoupling(self.step, PassThrough())] * depth)
        return MomentumNet([self.step] * depth, self.gamma, memory_efficient=False)

    def forward(self, problem):
        A, b = problem
        x0 = A.new_zeros(A.shape[:-2] + A.shape[-1:])
        if self.kind == "revnet":
            return self.stack(torch.zeros_like(x0), x0, A, b)[1]
        return self.stack(x0, A, b)

    @torch.no_grad()
    def iterates(self, problem, depth: int) -> torch.Tensor:
        """x_0, ..., x_depth (beyond the training depth too), shaped (depth + 1, batch, d)."""
        A, b = problem
        x0 = A.new_zeros(A.shape[:-2] + A.shape[-1:])
        stack = self.build(depth)
        if self.kind == "revnet":
            return stack.trajectory(torch.zeros_like(x0), x0, A, b)[1]
        return stack.trajectory(x0, A, b)

    def state_map(self, x, v, A, b, depth: int = 1):
        """(x, v) -> (x_depth, v_depth) for one problem: the map whose Jacobian determinant we check."""
        stack = self.build(depth)
        if self.kind == "revnet":
            v, x = stack(v, x, A, b)
            return x, v
        return momentum_flow(stack, x, v, A, b)
