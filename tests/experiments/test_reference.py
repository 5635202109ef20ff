"""mresnet_core.reference: driving the optional reference package momentumnet 0.10."""
import math

import pytest
import torch

from mresnet_core.experiments import common
from mresnet_core.experiments import reference as ref


def test_unavailable_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ref, "load", lambda: None)
    assert ref.version() is None
    with pytest.raises(ref.ReferenceUnavailable, match="pip install momentumnet"):
        ref.reconstruction_error([], 0.5, torch.zeros(1))


def test_reference_fraction_and_predicted_overflow():
    assert ref.reference_fraction(0.5) == (32769, 65536)
    assert ref.predicted_overflow_depth(0.5) == pytest.approx(48, abs=0.5)
    assert ref.predicted_overflow_depth(0.99) > 3000


needs_ref = pytest.mark.skipif(ref.load() is None, reason="momentumnet not installed")


@needs_ref
def test_reconstruction_error_small_when_shallow_large_when_deep():
    fs = common.toy_functions(16, d=8, hidden=8)
    x0 = common.grid_input((4, 8))
    assert ref.reconstruction_error(fs[:2], 0.9, x0) < 1e-5
    assert ref.reconstruction_error(fs, 0.01, x0) > 1.0


@needs_ref
def test_reconstruction_error_rejects_a_shared_first_function():
    f = common.toy_functions(1, d=4, hidden=4)[0]
    with pytest.raises(ValueError, match="shared"):
        ref.reconstruction_error([f, f], 0.5, torch.zeros(2, 4))


@needs_ref
def test_reference_gradients_are_wrong_at_small_gamma():
    fs = common.toy_functions(8, d=8, hidden=8)
    x0 = common.grid_input((4, 8))
    assert ref.gradient_relative_error(fs, 0.01, x0) > 0.1  # ours: < 1e-5 (test_reversibility)
    assert ref.gradient_relative_error(fs[:1], 0.9, x0) < 1e-4


@needs_ref
def test_buffer_overflow_and_value_wrap():
    depth = ref.buffer_overflow_depth(0.5)
    assert depth is not None and 40 <= depth <= 60
    assert ref.buffer_overflow_depth(0.5, max_depth=20) is None
    assert ref.fixed_point_value(1.5) == 1.5
    assert ref.fixed_point_value(3000.0) != 3000.0 and not math.isnan(ref.fixed_point_value(3000.0))
