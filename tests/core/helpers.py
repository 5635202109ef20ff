"""Small models and comparisons shared by the unit tests."""
import subprocess
import sys

import torch
from torch import nn


def mlp_stack(depth, d=6, hidden=5, dtype=torch.float64, seed=0, extra=()):
    """Independent Linear-Tanh-Linear residual functions (optionally with extra modules)."""
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), *extra, nn.Linear(hidden, d)).to(dtype)
            for _ in range(depth)]


def rel_err(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def grads(net, x, *args, loss=lambda y: (y ** 2).sum(), **kwargs):
    """Output and gradients w.r.t. x, every parameter and tensor args requiring grad."""
    out = net(x, *args, **kwargs)
    wrt = [x] + [p for p in net.parameters() if p.requires_grad]
    wrt += [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor) and a.requires_grad]
    return out, torch.autograd.grad(loss(out), wrt)


class Scaled(nn.Module):
    """f(x, scale, shift=...) = tanh(W x) * scale + shift: extra positional and keyword args."""

    def __init__(self, d, dtype):
        super().__init__()
        self.lin = nn.Linear(d, d).to(dtype)

    def forward(self, x, scale, shift=None):
        y = torch.tanh(self.lin(x)) * scale
        return y if shift is None else y + shift


def fresh_python(code: str, env: dict | None = None, timeout: float = 300) -> str:
    """Run ``code`` in a fresh interpreter (what happens at import, or what could kill the
    process, cannot touch the test run); its stdout, after asserting it exited 0."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
