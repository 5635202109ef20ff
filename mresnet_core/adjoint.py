"""Backpropagation through momentum layers, one layer at a time: the adjoint of Eq. 2.

Used by the memory-free backward pass (``reversible.py``), which rebuilds each layer's
input and recomputes its residual function with a graph, last layer first.
"""
from __future__ import annotations

import torch


class MomentumAdjoint:
    """Backpropagation through a momentum stack one layer at a time, last layer first
    (the adjoint of Eq. 2).

    Layer n is v_{n+1} = gamma v_n + (1 - gamma) f(x_n), x_{n+1} = x_n + v_{n+1}. With
    a = dL/dx_{n+1}, b = dL/dv_{n+1} and c = (1 - gamma)(a + b) (x_{n+1} holds v_{n+1}):

        dL/dx_n = a + J_f(x_n)^T c
        dL/dv_n = gamma (a + b) = gamma / (1 - gamma) c
        dL/dw   = (df/dw)^T c                    for each w in ``wrt`` (parameters, arguments)

    It carries (a, c) rather than (a, b): c is the cotangent autograd needs, and the next
    layer's follows in one pass, c_n = (1 - gamma) dL/dx_n + gamma c = lerp(c, dL/dx_n,
    1 - gamma), so a layer costs two full-size passes (``a += J^T c``, the lerp) besides
    its vector-Jacobian product. dL/dv_0 is formed once, at the end. Gamma = 1 (f has no
    influence) carries b instead (dL/dv_n = a + b). The incoming gradients are never written to;
    (a, c) become tensors of our own at the first layer and are updated in place.
    """

    def __init__(self, grad_x, grad_v, gamma: float, shape, dtype, device):
        if grad_x is None:
            grad_x = torch.zeros(shape, dtype=dtype, device=device)
        self.a, self.b, self.gamma = grad_x, grad_v, gamma
        self.c = None  # set at the first layer; then b is no longer needed
        self.a_owned = False

    def step(self, x_n, f_n, wrt=(), last: bool = False) -> list:
        """Take layer n's backward given f_n = f(x_n), recomputed with a graph from the
        leaf x_n; returns [dL/dw or None for w in wrt]. ``last``: layer 0, after which
        no cotangent is needed."""
        gamma = self.gamma
        if self.c is None:
            if gamma == 1.0:  # carries b itself
                self.c = torch.zeros_like(self.a) if self.b is None else self.b.clone()
            else:
                self.c = (self.a if self.b is None else self.a + self.b) * (1.0 - gamma)
            self.b = None
        if gamma == 1.0:  # f has no influence: its cotangent is 0, dL/dv gains a per layer
            grads = torch.autograd.grad(f_n, [x_n, *wrt], torch.zeros_like(self.c), allow_unused=True)
            self.c.add_(self.a)
            return list(grads[1:])
        c = self.c
        grads = torch.autograd.grad(f_n, [x_n, *wrt], c, allow_unused=True)
        gx = grads[0]
        if gx is not None:  # before c changes: gx may be c itself (f(x) = x + ...)
            if self.a_owned:
                self.a.add_(gx)
            else:
                self.a, self.a_owned = self.a + gx, True
        if not last:
            ptr = c.untyped_storage().data_ptr()
            aliased = any(t is not None and t.untyped_storage().data_ptr() == ptr for t in grads[1:])
            # a gradient handed back may be c itself (f(x) = x + w): then c is replaced
            self.c = torch.lerp(c, self.a, 1.0 - gamma) if aliased else c.lerp_(self.a, 1.0 - gamma)
        return list(grads[1:])

    def result(self, want_v: bool):
        """(dL/dx_0, dL/dv_0 or None) after the last layer (or before any)."""
        if not want_v:
            return self.a, None
        if self.c is None:  # no layer: dL/dv_0 is the incoming dL/dv_L
            return self.a, self.b if self.b is not None else torch.zeros_like(self.a)
        if self.gamma == 1.0:
            return self.a, self.c
        return self.a, self.c * (self.gamma / (1.0 - self.gamma))
