"""The ResNets of the paper and their Momentum versions, by the reference script's names.

``build_model("mresnet101", num_classes=10, gamma=0.9)`` is torchvision's ResNet-101 with
the CIFAR stem (3x3 stride-1 conv1, no max-pool) whose residual stages are momentum stacks
(:func:`~mresnet_core.to_momentumnet`, first block of each stage kept plain). ``width``
scales every stage's channels (64 is the paper's; 8 or 16 give narrow models for CPU
runs); ``stem="imagenet"`` keeps torchvision's 7x7 stride-2 conv1 and max-pool, and
``weights=`` loads torchvision's pretrained weights through its own API (this downloads
them when they are not cached).
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.resnet import BasicBlock, Bottleneck

from . import exact
from .convert import to_momentumnet
from .modes import DEFAULT_MEMORY_MODE, MemoryMode, memory_mode
from .momentum import MomentumNet

# depth -> (block type, blocks per stage), as torchvision's resnet18 ... resnet152
DEPTHS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
    152: (Bottleneck, [3, 8, 36, 3]),
}
MODEL_NAMES = tuple(f"{p}resnet{d}" for p in ("", "m") for d in DEPTHS)
INIT_VELOCITIES = ("zero", "block")
STEMS = ("cifar", "imagenet")


class NarrowResNet(tvm.ResNet):
    """torchvision's ResNet with ``width`` base channels (stages width, 2w, 4w, 8w).

    The layers, forward pass and initialisation are torchvision's (its ``_make_layer``
    builds the stages); only the hard-coded 64 base channels become ``width``.
    """

    def __init__(self, block, layers, num_classes: int = 1000, width: int = 64):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for m in self.modules():
            _init_like_torchvision(m)


class BlockResidual(nn.Module):
    """f0(x) = block(x) - x for a block that adds its own skip connection: the v0 = f(x0)
    initial velocity of a momentum stack (the paper's "init_speed=1")."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x):
        return self.block(x) - x


def parse_name(name: str) -> tuple[bool, int]:
    """("mresnet101") -> (True, 101); a ValueError listing the valid names otherwise."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    momentum = name.startswith("m")
    return momentum, int(name[len("mresnet" if momentum else "resnet"):])


def check_gamma(gamma) -> float:
    """gamma as a float, checked as every momentum stack checks it (``exact.gamma_numerator``)."""
    exact.gamma_numerator(gamma)
    return float(gamma)


def build_resnet(depth: int, num_classes: int = 10, *, width: int = 64, stem: str = "cifar",
                 weights=None) -> tvm.ResNet:
    """The plain ResNet of ``depth`` (18/34/50/101/152) with the CIFAR or ImageNet stem.

    ``weights`` (a torchvision weights enum or its name, e.g. "IMAGENET1K_V1") needs
    ``stem="imagenet"`` and ``width=64``; the 1000-class head is replaced by a fresh one
    when ``num_classes`` differs (fine-tuning).
    """
    if depth not in DEPTHS:
        raise ValueError(f"no ResNet of depth {depth}; choose one of {sorted(DEPTHS)}")
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width (base channels) must be a positive integer, got {width!r}")
    if weights is not None:
        if stem != "imagenet" or width != 64:
            raise ValueError("pretrained weights exist for the ImageNet form only: use "
                             "stem='imagenet' and width=64 with weights=")
        model = _pretrained(depth, weights)
        if num_classes != model.fc.out_features:
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        return model
    block, layers = DEPTHS[depth]
    if width == 64:
        model = tvm.get_model(f"resnet{depth}", weights=None, num_classes=num_classes)
    else:
        model = NarrowResNet(block, layers, num_classes=num_classes, width=width)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1,
                                padding=1, bias=False)
        _init_like_torchvision(model.conv1)
        model.maxpool = nn.Identity()
    return model


def build_deep_resnet(blocks: int, num_classes: int = 10, *, width: int = 8) -> tvm.ResNet:
    """A CIFAR ResNet of depth 12 * ``blocks`` + 2: four stages of ``blocks`` torchvision
    Bottleneck blocks with ``width`` base channels, 3x3 stem, no max-pool. At
    ``blocks=100`` it is the depth-1202 network of the paper's Figure 7 (the paper's
    "1201"), narrowed so that it trains on small machines."""
    if not isinstance(blocks, int) or blocks < 1:
        raise ValueError(f"blocks (per stage) must be a positive integer, got {blocks!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width (base channels) must be a positive integer, got {width!r}")
    model = NarrowResNet(tvm.resnet.Bottleneck, [blocks] * 4, num_classes=num_classes, width=width)
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    _init_like_torchvision(model.conv1)
    model.maxpool = nn.Identity()
    return model


def _pretrained(depth: int, weights) -> tvm.ResNet:
    """torchvision's ResNet with pretrained ``weights``; a ValueError of one line when the
    name is unknown or the file can be neither found in the cache nor downloaded."""
    try:
        weights = tvm.get_weight(f"ResNet{depth}_Weights.{weights}") if isinstance(weights, str) else weights
    except (KeyError, ValueError, AttributeError):
        names = ", ".join(w.name for w in tvm.get_model_weights(f"resnet{depth}"))
        raise ValueError(f"unknown weights {weights!r} for resnet{depth}; choose one of {names}") from None
    try:
        return tvm.get_model(f"resnet{depth}", weights=weights)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a corrupt file a RuntimeError
        reason = str(getattr(e, "reason", e)).splitlines()[0]
        raise ValueError(f"could not load the pretrained weights {weights} ({reason}): torchvision "
                         f"downloads them to {torch.hub.get_dir()}/checkpoints; put the file there on "
                         "a machine without internet") from None


def momentum_stacks(model: nn.Module) -> list[MomentumNet]:
    """Every MomentumNet inside ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, MomentumNet)]


def set_gamma(model: nn.Module, gamma: float) -> None:
    """Set gamma of every momentum stack (e.g. to evaluate at another gamma than trained).

    gamma = 0 cannot be inverted, so memory-free stacks switch to ordinary backprop.
    """
    gamma = check_gamma(gamma)
    stacks = momentum_stacks(model)
    if not stacks:
        raise ValueError(f"{type(model).__name__} has no momentum stack whose gamma could be set")
    for stack in stacks:
        if gamma == 0.0:
            stack.memory_efficient = False
        stack.gamma = gamma


def build_model(name: str, num_classes: int = 10, *, gamma: float = 0.9,
                init_velocity: str = "zero", memory_efficient: MemoryMode | bool | str = DEFAULT_MEMORY_MODE,
                width: int = 64,
                stem: str = "cifar", weights=None) -> nn.Module:
    """A ResNet or Momentum ResNet by name: resnet18/34/50/101/152, mresnet18/.../152.

    Args:
        name: the reference script's model names ("m" prefix: Momentum ResNet).
        num_classes: size of the classification head.
        gamma: momentum in [0, 1] of every stack (Momentum ResNets only).
        init_velocity: "zero" (v0 = 0) or "block" (v0 = f0(x0), one extra learned block of
            the stage's type per stack); Momentum ResNets only.
        memory_efficient: how the momentum stacks get their activations in backward
            (``modes.MemoryMode``; default "auto", as ``to_momentumnet``). gamma = 0
            cannot be inverted: "exact" falls back to ordinary backprop with a warning.
        width: base channels (64 in the paper).
        stem: "cifar" (3x3 stride-1 conv1, no max-pool) or "imagenet" (torchvision's).
        weights: torchvision pretrained weights (ImageNet form only), e.g. "IMAGENET1K_V1".
    """
    momentum, depth = parse_name(name)
    gamma = check_gamma(gamma)
    if init_velocity not in INIT_VELOCITIES:
        raise ValueError(f"init_velocity must be one of {INIT_VELOCITIES}, got {init_velocity!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    model = build_resnet(depth, num_classes, width=width, stem=stem, weights=weights)
    if not momentum:
        return model
    memory_efficient = memory_mode(memory_efficient)
    if memory_efficient == "exact" and gamma == 0.0:
        warnings.warn("gamma = 0 (a plain ResNet) cannot be inverted; the momentum stacks "
                      "use ordinary backprop (memory_efficient=False)", stacklevel=2)
        memory_efficient = False
    model = to_momentumnet(model, gamma, keep_first=True, memory_efficient=memory_efficient)
    if init_velocity == "block":
        for stack in momentum_stacks(model):
            block = copy.deepcopy(stack.functions[0])  # same type and shape, fresh weights
            for m in block.modules():
                _init_like_torchvision(m)
            stack.init_velocity = BlockResidual(block)
    return model


def _init_like_torchvision(m: nn.Module) -> None:
    """torchvision's ResNet initialisation for one module (conv: Kaiming fan-out; BN: 1, 0)."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)
        m.reset_running_stats()
