"""Backpropagation through momentum layers, one layer at a time: the adjoint of Eq. 2.

Used by the memory-free backward pass (``reversible.py``), which rebuilds each layer's
input and recomputes its residual function with a graph, last layer first.
"""
from __future__ import annotations

import torch

from . import exact_native
from ._torch_private import vjp


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
    (a, c) become tensors of our own at the first layer and are updated in place. An
    incoming dL/dx_L that nothing else holds (``grad_x_owned``) is c's memory: c =
    (1 - gamma) a in place, and the first layer forms its a from c (a = c / (1 - gamma),
    within a rounding of the direct sum), so that no full-size tensor is allocated for c.
    """

    def __init__(self, grad_x, grad_v, gamma: float, shape, dtype, device, grad_x_owned: bool = False):
        if grad_x is None:
            grad_x, grad_x_owned = torch.zeros(shape, dtype=dtype, device=device), True
        self.a, self.b, self.gamma = grad_x, grad_v, gamma
        self.c = None  # set at the first layer; then b is no longer needed
        self.a_owned = grad_x_owned

    def step(self, x_n, f_n, wrt=(), last: bool = False, skip: bool = False) -> list:
        """Take layer n's backward given f_n = f(x_n), recomputed with a graph from the
        leaf x_n; returns [dL/dw or None for w in wrt]. ``last``: layer 0, after which
        no cotangent is needed. ``skip``: f_n is a block's output y = f(x_n) + x_n
        instead (J_f^T c = J_y^T c - c: no node and no full-size tensor for the
        difference)."""
        gamma = self.gamma
        if self.c is None:
            if gamma == 1.0:  # carries b itself
                self.c = torch.zeros_like(self.a) if self.b is None else self.b.clone()
            elif self.b is None and self.a_owned:  # a's memory becomes c; a is formed from c below
                self.c, self.a = self.a.mul_(1.0 - gamma), None
            else:
                self.c = (self.a if self.b is None else self.a + self.b) * (1.0 - gamma)
            self.b = None
        if gamma == 1.0:  # f has no influence: its cotangent is 0, dL/dv gains a per layer
            grads = vjp(f_n, [x_n, *wrt], torch.zeros_like(self.c))
            self.c.add_(self.a)
            return list(grads[1:])
        c = self.c
        grads = vjp(f_n, [x_n, *wrt], c)
        gx = grads[0]
        c_memory = _memory(c)
        others = [_memory(t) for t in grads[1:] if t is not None]
        # gx may be c itself (f(x) = x + ...) or another input's gradient (f(x + w))
        fresh = gx is not None and _writable(gx, [c_memory, *others])
        # a gradient handed back may be c itself (f(x) = x + w): then c is replaced
        aliased = c_memory in others
        fused = self._fused(gx, c_memory, fresh, skip, lerp=not last and not aliased)
        if not fused:
            self._unfused(gx, fresh, skip)
        if not last and (aliased or not fused):
            self.c = torch.lerp(c, self.a, 1.0 - gamma) if aliased else c.lerp_(self.a, 1.0 - gamma)
        return list(grads[1:])

    def _first_scale(self, skip: bool) -> float:
        """At the first layer a is formed from c: a = gx + scale c, c = (1 - gamma) a
        (- c again for a block that adds its own skip connection)."""
        return 1.0 / (1.0 - self.gamma) - (1.0 if skip else 0.0)

    def _fused(self, gx, c_memory: int, fresh: bool, skip: bool, lerp: bool) -> bool:
        """a += J^T c (gx; - c if skip), then c's lerp (if ``lerp``), in one pass of the C
        kernel where it applies (False: nothing done). a goes into memory of our own: a's
        if owned, else gx's if ``fresh``, else a new tensor. ``c_memory``: c's storage."""
        c, a = self.c, self.a
        if gx is not None and _memory(gx) == c_memory:
            return False  # the kernel reads gx while it writes c: only on distinct memory
        if a is None:  # the first layer: a = gx + c / (1 - gamma) (- c if skip)
            alpha = self._first_scale(skip)
        else:
            alpha = -1.0 if skip else None
        if a is not None and self.a_owned:
            out = a
        elif fresh:
            out = gx
        else:
            out = torch.empty_like(c)
        if not exact_native.adjoint_update(out, a, gx, c, alpha, 1.0 - self.gamma, lerp):
            return False
        self.a, self.a_owned = out, True
        return True

    def _unfused(self, gx, fresh: bool, skip: bool) -> None:
        """``_fused``'s a, in torch operations."""
        c = self.c
        if self.a is None:  # a = c / (1 - gamma): a_n = gx + a (- c if skip) in one pass
            scale = self._first_scale(skip)
            if gx is None:
                self.a = c * scale
            else:
                self.a = gx.add_(c, alpha=scale) if fresh else torch.add(gx, c, alpha=scale)
            self.a_owned = True
            return
        if gx is not None:  # before c changes
            if self.a_owned:
                self.a.add_(gx)
            elif fresh:  # autograd's own new tensor: a goes there
                self.a, self.a_owned = gx.add_(self.a), True
            else:
                self.a, self.a_owned = self.a + gx, True
        if skip:
            if self.a_owned:
                self.a.sub_(c)
            else:
                self.a, self.a_owned = self.a - c, True

    def result(self, want_v: bool):
        """(dL/dx_0, dL/dv_0 or None) after the last layer (or before any)."""
        if not want_v:
            return self.a, None
        if self.c is None:  # no layer: dL/dv_0 is the incoming dL/dv_L
            return self.a, self.b if self.b is not None else torch.zeros_like(self.a)
        if self.gamma == 1.0:
            return self.a, self.c
        return self.a, self.c * (self.gamma / (1.0 - self.gamma))


def _memory(t: torch.Tensor) -> int:
    """The address of ``t``'s storage: tensors on the same memory share it."""
    return t.untyped_storage().data_ptr()


def _writable(g: torch.Tensor, others: list) -> bool:
    """Whether autograd's gradient g may be written to: a dense tensor on memory of its
    own, neither a view (an expanded one) nor on any of the storages ``others`` (the
    cotangent handed back, f(x) = x + ...; another input's gradient, f(x + w))."""
    if g._base is not None or not g.is_contiguous() or g.untyped_storage().nbytes() != g.nbytes:
        return False
    return _memory(g) not in others
