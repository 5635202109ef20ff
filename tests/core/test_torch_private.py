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
