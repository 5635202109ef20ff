"""Exact inversion at depth, the closed-form float inverse, and clear errors on bad input."""
import pytest
import torch
from torch import nn

from mresnet_core import FixedPointRangeError, MomentumNet, ReconstructionError
from mresnet_core import exact
from helpers import mlp_stack, rel_err


def on_grid(shape, dtype, seed=0):
    """Values exactly representable both in ``dtype`` and in 2**-40 fixed point."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2**16).round().div(2**16).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", [0.01, 0.9])
def test_inverse_reconstructs_input_bit_for_bit_after_1000_layers(gamma, dtype):
    net = MomentumNet(mlp_stack(1000, d=6, hidden=4, dtype=dtype), gamma, memory_efficient="exact")
    x0 = on_grid((5, 6), dtype)
    with torch.no_grad():
        state = net.forward_state(x0)
        x_back, v_back = net.inverse(state)
    assert torch.equal(x_back, x0)
    assert torch.equal(v_back, torch.zeros_like(x0))
    assert state.tape.buffer.words, "1000 layers must have spilled words"
    # off-grid inputs come back as the fixed-point value the network actually used
    x1 = torch.randn(5, 6, dtype=dtype) * 1e-9
    with torch.no_grad():
        back, _ = net.inverse(net.forward_state(x1))
    assert torch.equal(back, exact.to_float(exact.to_fixed(x1), dtype))


def test_inverse_with_learned_initial_velocity_and_arguments():
    torch.manual_seed(0)
    init = nn.Linear(6, 6).double()
    net = MomentumNet([nn.Bilinear(6, 6, 6).double() for _ in range(50)], 0.5, init_velocity=init, memory_efficient="exact")
    x0, other = on_grid((3, 6), torch.float64), torch.randn(3, 6, dtype=torch.float64) * 0.1
    with torch.no_grad():
        x_back, v_back = net.inverse(net.forward_state(x0, other), other)
        assert torch.equal(x_back, x0)
        assert torch.equal(v_back, exact.to_float(exact.to_fixed(init(x0)), torch.float64))


def test_closed_form_float_inverse_works_for_short_stacks_and_drifts_for_long_ones():
    short = MomentumNet(mlp_stack(5, dtype=torch.float64), 0.9, memory_efficient=False)
    x0 = torch.randn(4, 6, dtype=torch.float64)
    with torch.no_grad():
        x_back, v_back = short.inverse(*short.forward_state(x0))
    assert rel_err(x_back, x0) < 1e-10
    deep = MomentumNet(mlp_stack(64, dtype=torch.float32), 0.5, memory_efficient=False)
    with torch.no_grad():
        x_back, _ = deep.inverse(*deep.forward_state(x0.float()))
    assert not rel_err(x_back, x0.float()) < 1e-2  # 2**64 amplification of rounding errors


# ----------------------------------------------------------------------------- errors

class ShapeChanger(nn.Module):
    def forward(self, x):
        return x[..., :-1]


class Exploding(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full_like(x, self.value)


class Flaky(nn.Module):
    """Returns something different at every call: not a function of its input."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.tanh(x) * self.calls


@pytest.mark.parametrize("gamma", [0.0, 1e-7])
def test_resnet_gamma_cannot_be_memory_free(gamma):
    with pytest.raises(ValueError, match="memory_efficient=False"):
        MomentumNet(mlp_stack(2), gamma, memory_efficient="exact")
    MomentumNet(mlp_stack(2), gamma, memory_efficient=False)  # fine as a plain ResNet


def test_functions_must_be_modules():
    with pytest.raises(TypeError, match=r"functions\[1\] is a function"):
        MomentumNet([nn.Tanh(), lambda x: x], 0.9, memory_efficient="exact")
    with pytest.raises(TypeError, match="sequence of nn.Module"):
        MomentumNet(nn.Tanh(), 0.9, memory_efficient="exact")
    with pytest.raises(TypeError, match="init_velocity must be"):
        MomentumNet([nn.Tanh()], 0.9, init_velocity=lambda x: x, memory_efficient="exact")


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_shape_changing_function(memory_efficient):
    net = MomentumNet([nn.Tanh(), ShapeChanger()], 0.9, memory_efficient=memory_efficient)
    with pytest.raises(ValueError, match="ShapeChanger must return a tensor shaped like its input"):
        net(torch.randn(2, 4))


def test_bad_inputs():
    net = MomentumNet(mlp_stack(2, dtype=torch.float32), 0.9, memory_efficient="exact")
    with pytest.raises(TypeError, match="floating-point input"):
        net(torch.ones(2, 6, dtype=torch.int64))
    with pytest.raises(TypeError, match="expects a tensor"):
        net([[1.0] * 6])
    with pytest.raises(FixedPointRangeError, match="input x0 reached magnitude"):
        net(torch.full((2, 6), 1e8))
    with pytest.raises(ValueError, match="init_velocity must return a tensor shaped like x"):
        MomentumNet([nn.Tanh()], 0.9, init_velocity=ShapeChanger(), memory_efficient="exact")(torch.randn(2, 3))


def test_activation_out_of_fixed_point_range_is_an_error_naming_the_layer():
    net = MomentumNet([nn.Tanh(), nn.Tanh(), Exploding(1e9)], 0.5, memory_efficient="exact")
    with pytest.raises(FixedPointRangeError, match="after layer 3 .* beyond the exact fixed-point range"):
        net(torch.randn(2, 3))
    nan_net = MomentumNet([nn.Tanh(), Exploding(float("nan"))], 0.5, memory_efficient="exact")
    with pytest.raises(FixedPointRangeError, match="NaN or inf"):
        nan_net(torch.randn(2, 3))


def test_non_deterministic_function_is_detected_in_backward():
    net = MomentumNet([nn.Linear(3, 3), Flaky(), nn.Linear(3, 3)], 0.7, memory_efficient="exact")
    y = net(torch.randn(2, 3, requires_grad=True))
    with pytest.raises(ReconstructionError, match="not deterministic"):
        y.sum().backward()


def test_inverse_needs_a_tape_or_both_tensors():
    plain = MomentumNet(mlp_stack(2), 0.9, memory_efficient=False)
    state = plain.forward_state(torch.randn(2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="no exact tape"):
        plain.inverse(state)
    with pytest.raises(TypeError, match="inverse needs"):
        plain.inverse(state.x)


def test_gamma_reported_is_the_rounded_value_and_both_paths_use_it():
    net = MomentumNet(mlp_stack(3), 0.123456789, memory_efficient="exact")
    assert net.gamma == round(0.123456789 * 65536) / 65536
    assert "gamma=0.12" in repr(net)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_index_kept_and_gradients_match():
    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    fns = [f.to(dev) for f in mlp_stack(30, dtype=torch.float32)]
    plain = MomentumNet(fns, 0.9, memory_efficient=False)
    free = MomentumNet(fns, 0.9, memory_efficient="exact")
    x = torch.randn(8, 6, device=dev, requires_grad=True)
    y0 = plain(x)
    y1 = free(x)
    assert y1.device == dev
    g0 = torch.autograd.grad((y0 ** 2).sum(), [x, *plain.parameters()])
    g1 = torch.autograd.grad((y1 ** 2).sum(), [x, *free.parameters()])
    for a, b in zip(g1, g0, strict=True):
        assert a.device == dev and rel_err(a, b) < 1e-4
