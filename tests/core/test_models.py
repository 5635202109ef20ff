"""models.py: names, stems, parameters shared with the ResNet, v0 = f(x0) stacks, and the
memory-free gradients of a whole (tiny) Momentum ResNet."""
import copy

import pytest
import torch
from torch import nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

from mresnet_core import MomentumNet
from mresnet_core.models import (MODEL_NAMES, BlockResidual, build_model, momentum_stacks,
                                 set_gamma)

from helpers import rel_err


def test_names_are_the_reference_scripts():
    assert MODEL_NAMES == ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                           "mresnet18", "mresnet34", "mresnet50", "mresnet101", "mresnet152")


@pytest.mark.parametrize("name,block,stacks", [("resnet18", BasicBlock, 0), ("mresnet34", BasicBlock, 4),
                                               ("mresnet50", Bottleneck, 4), ("mresnet152", Bottleneck, 4)])
def test_every_depth_builds_with_its_block_type(name, block, stacks):
    model = build_model(name, num_classes=7, width=2)
    assert isinstance(model.layer1[0], block)
    assert len(momentum_stacks(model)) == stacks
    assert model.fc.out_features == 7


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet20'.*mresnet101"):
        build_model("resnet20")


@pytest.mark.parametrize("gamma", [-0.1, 1.5, "0.9", True])
def test_gamma_outside_unit_interval_is_an_error(gamma):
    with pytest.raises((ValueError, TypeError), match=r"gamma must be a number in \[0, 1\]"):
        build_model("mresnet18", gamma=gamma, width=2)


def test_gamma_zero_falls_back_to_ordinary_backprop():
    with pytest.warns(UserWarning, match="cannot be inverted"):
        model = build_model("mresnet18", gamma=0.0, width=2, memory_efficient="exact")
    assert all(s.memory_efficient == "backprop" and s.gamma == 0 for s in momentum_stacks(model))
    auto = build_model("mresnet18", gamma=0.0, width=2)  # the default never inverts gamma 0
    auto(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(s.memory_efficient == "auto" and s.training_mode != "exact" for s in momentum_stacks(auto))


def test_cifar_stem_keeps_the_resolution():
    model = build_model("resnet18", width=4)
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert model.conv1.bias is None and isinstance(model.maxpool, nn.Identity)
    x = torch.randn(2, 3, 16, 16)
    stem = model.relu(model.bn1(model.conv1(x)))
    assert model.layer1(model.maxpool(stem)).shape == (2, 4, 16, 16)
    assert model.layer4(model.layer3(model.layer2(model.layer1(stem)))).shape == (2, 32, 2, 2)
    assert model(x).shape == (2, 10)


def test_width_64_imagenet_form_is_torchvisions_resnet():
    model = build_model("resnet18", num_classes=1000, stem="imagenet")
    assert type(model) is ResNet
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's resnet18


def test_weights_need_the_imagenet_form():
    with pytest.raises(ValueError, match="stem='imagenet'"):
        build_model("resnet18", weights="IMAGENET1K_V1")


@pytest.mark.parametrize("depth", [34, 50])
def test_momentum_model_has_the_resnets_parameters(depth):
    torch.manual_seed(0)
    plain = build_model(f"resnet{depth}", width=4).state_dict()
    torch.manual_seed(0)
    mom = build_model(f"mresnet{depth}", width=4).state_dict()
    assert list(plain) == list(mom)  # a converted model saves under the original names
    for k, v in plain.items():
        assert torch.equal(v, mom[k]), k


def test_block_init_velocity_adds_one_block_per_stack():
    torch.manual_seed(0)
    zero = build_model("mresnet50", width=4)
    torch.manual_seed(0)
    block = build_model("mresnet50", width=4, init_velocity="block")
    stacks = momentum_stacks(block)
    assert len(stacks) == 4
    extra = 0
    for stack in stacks:
        v0 = stack.init_velocity
        assert isinstance(v0, BlockResidual) and type(v0.block) is type(stack.functions[0])
        shapes = [p.shape for p in v0.block.parameters()]
        assert shapes == [p.shape for p in stack.functions[0].parameters()]
        extra += sum(p.numel() for p in v0.parameters())
        x = torch.randn(2, stack.functions[0].conv1.in_channels, 4, 4)
        assert v0(x).shape == x.shape
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(block) == count(zero) + extra
    assert all(s.init_velocity is None for s in momentum_stacks(zero))


@pytest.mark.parametrize("init_velocity", ["zero", "block"])
def test_memory_free_gradients_equal_ordinary_ones(init_velocity):
    torch.manual_seed(0)
    free = build_model("mresnet18", width=4, init_velocity=init_velocity)
    plain = copy.deepcopy(free)
    for stack in momentum_stacks(plain):
        stack.memory_efficient = False
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    grads = []
    for model in (free, plain):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append({k: p.grad for k, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        assert rel_err(grads[0][k], grads[1][k]) < 1e-4, k
    for (k, a), b in zip(free.state_dict().items(), plain.state_dict().values()):  # BN stats
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), k


def test_set_gamma_reaches_every_stack():
    model = build_model("mresnet18", width=2)
    set_gamma(model, 0.5)
    assert [s.gamma for s in momentum_stacks(model)] == [0.5] * 4
    set_gamma(model, 0.0)  # a ResNet again: the stacks switch to ordinary backprop
    assert all(s.gamma == 0 and s.memory_efficient == "backprop" for s in momentum_stacks(model))
    with pytest.raises(ValueError, match="no momentum stack"):
        set_gamma(build_model("resnet18", width=2), 0.5)
    assert all(isinstance(s, MomentumNet) for s in momentum_stacks(model))


def test_deep_resnet_has_the_depth_and_widths_it_names():
    """Figure 7's network: 12 n + 2 layers (four stages of n Bottleneck blocks of three
    convolutions, the stem and the classifier), base width w, CIFAR stem."""
    from mresnet_core.models import build_deep_resnet

    model = build_deep_resnet(3, num_classes=7, width=4)
    blocks = [m for m in model.modules() if isinstance(m, Bottleneck)]
    shortcuts = {id(b.downsample[0]) for b in blocks if b.downsample is not None}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and id(m) not in shortcuts]
    assert len(blocks) == 12 and len(convs) + 1 == 12 * 3 + 2  # + the fully connected layer
    assert model.conv1.kernel_size == (3, 3) and model.conv1.out_channels == 4
    assert model.fc.in_features == 8 * 4 * 4 and model.fc.out_features == 7
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="blocks"):
        build_deep_resnet(0)
