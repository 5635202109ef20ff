"""Learning to optimize (Section 3.3, reconstructed): problem families and optimizer-step layers.

Each layer is one step of an optimizer on a random problem (A, b) passed as extra
arguments: f(x, A, b) = -p * grad L(x; A, b) with a learned positive diagonal step p.
Stacked as a ResNet this is gradient descent, as a Momentum ResNet heavy ball, and as
the F of an additive-coupling RevNet whose G (a learned diagonal scale) is learned too,
a frictionless heavy ball with a learned position step.
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


class LearnedScale(nn.Module):
    """G(y) = q * y, q = exp(log_q) a learned positive diagonal (d parameters), ignoring the
    problem data: the learned second half of the RevNet step (q = 1 at initialisation)."""

    def __init__(self, d: int):
        super().__init__()
        self.log_q = nn.Parameter(torch.zeros(d, dtype=torch.float64))

    def forward(self, y, *args, **kwargs):
        return torch.exp(self.log_q) * y


KINDS = ("resnet", "momentum", "revnet")


class UnrolledOptimizer(nn.Module):
    """A problem batch (A, b) -> the iterate after ``depth`` tied layers from x0 = 0 (and v0 = 0).

    kind "resnet": x + f(x) (gradient descent); "momentum": MomentumNet(gamma) (heavy ball);
    "revnet": the additive coupling (v, x) -> (v + F(x), x + G(v + F(x))) with both halves
    learned: F = f and G = :class:`LearnedScale` (a heavy ball without friction whose
    position step is learned too). The ResNet and the Momentum ResNet hold the d
    parameters of ``step``; the RevNet holds those and G's d more.
    """

    def __init__(self, step: nn.Module, kind: str, depth: int, gamma: float = 0.0):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.step, self.kind, self.depth = step, kind, int(depth)
        self.gamma = {"resnet": 0.0, "momentum": gamma, "revnet": 1.0}[kind]
        self.coupling_g = LearnedScale(step.log_p.numel()) if kind == "revnet" else None
        self.stack = self.build(self.depth)

    def build(self, depth: int):
        """The stack of ``depth`` tied layers (MomentumNet, or RevNet for kind 'revnet')."""
        if self.kind == "revnet":
            return RevNet([AdditiveCoupling(self.step, self.coupling_g)] * depth)
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


# ----------------------------------------------------------------- the experiment
def make_problems(name: str, count: int, n: int, d: int, scales: torch.Tensor, generator: torch.Generator):
    """``count`` random problems of family ``name`` (a key of PROBLEMS): ((A, b), x_star)."""
    A, b, x_star = PROBLEMS[name][0](count, n, d, scales, generator)
    return (A, b), x_star


def relative_sq_distance(out, x_star):
    """Training loss: mean ||x_L - x*||^2 / mean ||x*||^2 over the batch of problems."""
    return ((out - x_star) ** 2).sum(-1).mean() / (x_star ** 2).sum(-1).mean()


def train_and_track(name: str, kind: str, *, n: int, d: int, scales, depth: int, eval_depth: int,
                    gamma: float, train_steps: int, batch: int, pool: int, test_problems: int,
                    lr: float, init_step: float, seed: int):
    """Train one unrolled optimizer (Adam on :func:`relative_sq_distance` at ``depth``
    layers, problems drawn from a pool) and run it to ``eval_depth`` on held-out problems.
    Returns (model, relative distance ||x_n - x*|| / ||x*|| for n = 0..eval_depth)."""
    from .common import train_steps as fit

    gen = torch.Generator().manual_seed(seed + 1)
    (A_pool, b_pool), x_pool = make_problems(name, pool, n, d, scales, gen)
    test, x_test = make_problems(name, test_problems, n, d, scales, gen)
    torch.manual_seed(seed)
    model = UnrolledOptimizer(GradientStep(PROBLEMS[name][2], d, init_step), kind, depth, gamma)
    picks = torch.Generator().manual_seed(seed + 2)

    def make_batch(step):
        idx = torch.randint(0, pool, (batch,), generator=picks)
        return (A_pool[idx], b_pool[idx]), x_pool[idx]

    fit(model, make_batch, relative_sq_distance, torch.optim.Adam(model.parameters(), lr=lr), train_steps,
        progress=False)
    iterates = model.iterates(test, eval_depth)
    dist = ((iterates - x_test) ** 2).sum(-1).mean(-1).sqrt() / (x_test ** 2).sum(-1).mean().sqrt()
    return model, dist.numpy()


def state_map_log_dets(model: UnrolledOptimizer, problem, x, v, depths) -> list:
    """(L, sign, log|det J|) of the Jacobian (autograd) of the state map (x, v) -> (x_L, v_L)
    of ``model`` for one problem, at the state (x, v), for each L in ``depths``."""
    A, b = problem
    d = x.numel()
    out = []
    for L in depths:
        J = torch.autograd.functional.jacobian(
            lambda z: torch.cat(model.state_map(z[:d], z[d:], A, b, depth=L)), torch.cat((x, v)))
        sign, logdet = torch.linalg.slogdet(J)
        out.append((L, sign.item(), logdet.item()))
    return out


def plot_l2o(curves: dict, det_rows: list, depth: int, d: int, gamma: float, labels: dict):
    """(left, middle) distance to the minimiser vs depth per problem family; (right) log|det|
    of the state map against d L log(gamma) (momentum) and 0 (RevNet)."""
    import matplotlib.pyplot as plt
    import numpy as np

    from ..plotting import PALETTE

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, name in zip(axes[:2], PROBLEMS):
        for kind in KINDS:
            ax.semilogy(curves[name, kind], color=PALETTE[kind], label=labels[kind])
        ax.axvline(depth, color="0.4", ls="--", lw=1, label="training depth")
        ax.set(title=name, xlabel="layer $n$", ylabel="$\\|x_n - x^*\\| / \\|x^*\\|$", ylim=(1e-8, 3))
    axes[0].legend(loc="lower left", fontsize=8)
    ax = axes[2]
    for kind, marker in (("momentum", "o"), ("revnet", "s")):
        pts = [(L, logdet) for name, k, L, _, logdet, _ in det_rows if k == kind and name == "least squares"]
        ax.plot(*zip(*pts), marker, color=PALETTE[kind], label=f"{kind}: autograd")
    Ls = np.arange(depth + 1)
    ax.plot(Ls, d * Ls * math.log(gamma), color=PALETTE["theory"], lw=1, label="$d L \\log\\gamma$")
    ax.axhline(0, color=PALETTE["theory"], lw=1, ls=":", label="0 (volume preserved)")
    ax.set(title="volume of the state map (least squares)", xlabel="layers $L$", ylabel="$\\log |\\det J|$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
