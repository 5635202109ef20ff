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
