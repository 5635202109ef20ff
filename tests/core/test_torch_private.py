"""The private torch APIs mresnet_core uses are all still where _torch_private looks."""
import pytest

from mresnet_core import _torch_private


def test_every_private_torch_api_is_present():
    _torch_private.check()  # names every missing one in its ImportError


def test_a_moved_api_is_named_clearly(monkeypatch):
    monkeypatch.setattr(_torch_private, "_MISSING", dict(_torch_private._MISSING))  # undone after the test
    _torch_private._MISSING["torch.nn.functional._canonical_mask"] = "Transformer masks"
    with pytest.raises(ImportError, match=r"_canonical_mask \(Transformer masks\).*_torch_private.py"):
        _torch_private.check()
    stand_in = _torch_private._lookup("torch.nn.functional", "_no_such_helper", "a test")
    with pytest.raises(ImportError, match="has no torch.nn.functional._no_such_helper, which mresnet_core uses"):
        stand_in()


def test_the_early_freeing_rules_are_tried_on_a_small_graph(monkeypatch):
    """check() also reports when torch no longer behaves as the early freeing of a
    recomputed residual assumes (here: no node seems to keep its output)."""
    assert _torch_private.check_freeing()
    monkeypatch.setattr(_torch_private, "_MISSING", dict(_torch_private._MISSING))
    monkeypatch.setattr(_torch_private, "_class_saves_output", lambda node, nr: False)
    _torch_private.check_freeing.cache_clear()
    try:
        assert not _torch_private.check_freeing()
        with pytest.raises(ImportError, match="freeing a recomputed residual early"):
            _torch_private.check()
    finally:
        monkeypatch.undo()
        _torch_private.check_freeing.cache_clear()
    assert _torch_private.check_freeing()


def test_when_the_rules_do_not_hold_nothing_is_freed_and_gradients_stay_right(monkeypatch):
    import torch
    from torch import nn

    from mresnet_core import MomentumNet
    from mresnet_core import exact_walk

    freed = []
    monkeypatch.setattr(exact_walk, "free_storage", freed.append)
    # fused pops off for the count (the top one writes the float x below over f instead)
    fuse_from = exact_walk.lowest_fused_layer
    monkeypatch.setattr(exact_walk, "lowest_fused_layer", lambda stack, x_bytes: len(stack.functions))
    torch.manual_seed(0)
    fns = [nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8)).double() for _ in range(4)]
    x = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    MomentumNet(fns, 0.9, memory_efficient="exact")(x).sum().backward()
    assert len(freed) == 4  # the rules hold on this torch: each layer's f goes early
    freed.clear()
    monkeypatch.setattr(exact_walk, "lowest_fused_layer", fuse_from)  # on: f is not taken over either
    monkeypatch.setattr(_torch_private, "check_freeing", lambda: False)
    gx = x.grad.clone()
    x.grad = None
    MomentumNet(fns, 0.9, memory_efficient="exact")(x).sum().backward()
    assert not freed and torch.equal(x.grad, gx)


def test_vjp_is_torch_autograd_grad(monkeypatch):
    """The engine called directly gives what torch.autograd.grad gives, for a tensor and
    a GradientEdge as the output and an input the output does not use; a wrong-shaped
    cotangent is refused as grad refuses it; without the engine's entry point, or for a
    tensor subclass, torch.autograd.grad itself runs."""
    import torch
    from torch.autograd.graph import get_gradient_edge

    torch.manual_seed(0)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    unused = torch.randn(2, requires_grad=True)
    c = torch.randn(3, 4, dtype=torch.float64)

    def graph():
        return torch.tanh(x @ w)

    expected = torch.autograd.grad(graph(), [x, w, unused], c, allow_unused=True)
    assert expected[2] is None
    for root in (graph(), get_gradient_edge(graph())):
        got = _torch_private.vjp(root, [x, w, unused], c)
        assert got[2] is None and all(torch.equal(a, b) for a, b in zip(got[:2], expected[:2]))
    with pytest.raises(RuntimeError, match="shape"):
        _torch_private.vjp(graph(), [x, w], torch.randn(4, 3, dtype=torch.float64))

    calls = []
    real = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    _torch_private.vjp(graph(), [x, w], c)
    assert not calls  # the direct path

    class Tagged(torch.Tensor):
        pass

    got = _torch_private.vjp(graph(), [x, w], c.as_subclass(Tagged))
    assert calls and all(torch.equal(a, b) for a, b in zip(got, expected[:2]))
    calls.clear()
    monkeypatch.setitem(_torch_private._MISSING, "torch.autograd.graph._engine_run_backward", "test")
    got = _torch_private.vjp(graph(), [x, w], c)
    assert calls and all(torch.equal(a, b) for a, b in zip(got, expected[:2]))
