"""to_momentumnet: turn the residual containers of a model into momentum stacks.

The converted model keeps every parameter and buffer (same values, so pretrained weights
carry over); only the blocks after the first of each container move into a
:class:`~mresnet_core.MomentumNet`. At gamma = 0 it computes what the original did.

Where parameters go, for a converted container ``S`` and its block ``j``:

* nn.Sequential or nn.ModuleList, keep_first=True: ``S.0.*`` stays, ``S.j.*`` (j >= 1)
  becomes ``S.1.functions.{j-1}.*``;
* nn.Sequential, keep_first=False: ``S.j.*`` becomes ``S.functions.j.*``;
* nn.ModuleList, keep_first=False: ``S.j.*`` becomes ``S.0.functions.j.*``.

A Sequential is replaced by ``Sequential(first, momentum)`` (or the bare momentum stack),
a ModuleList by ``ModuleList([first, momentum])`` (or ``[momentum]``), so the code that
iterates over it still works. E.g. torchvision's ``layer2.3.conv1.weight`` becomes
``layer2.1.functions.2.conv1.weight``. An ``nn.TransformerEncoder`` (or
``nn.TransformerDecoder``) whose ``layers`` are converted is replaced by a
:class:`MomentumTransformerEncoder` (``MomentumTransformerDecoder``) with the same
``layers`` mapping and the same ``norm``.

These are the names of ``named_parameters()``/``named_buffers()`` (the module structure).
``state_dict()`` keys are the *original* model's (``layer2.3.conv1.weight``), in its order,
so checkpoints move both ways between the original and the converted model;
``load_state_dict`` accepts the original names and the structural ones above (the keys
that earlier versions saved). Tensors that only the converted model has (a momentum
stack's ``init_velocity``) keep their structural names. Hooks on each converted container
do the renaming, so it also holds under any prefix (a wrapper, DDP's ``module.``).
"""
from __future__ import annotations

import copy
import re

import torch
from torch import nn

from . import exact
from ._torch_private import (ConvNd, canonical_mask, detect_is_causal_mask, get_seq_len, none_or_dtype,
                             register_state_dict_hooks)
from .momentum import MomentumNet
from .modes import DEFAULT_MEMORY_MODE, MemoryMode, memory_mode
from .plan import layer_saved_bytes
from .recompute import plain_call, recompute_block
from .replay import Stack, slow_attention

RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")
_TRANSFORMERS = (nn.TransformerEncoder, nn.TransformerDecoder)


def to_momentumnet(model: nn.Module, gamma: float = 0.9, *, stages=None, keep_first: bool = True,
                   memory_efficient: MemoryMode | bool | str = DEFAULT_MEMORY_MODE) -> nn.Module:
    """A copy of ``model`` whose residual containers are momentum stacks (same parameters).

    Args:
        model: a torchvision ResNet (anything with ``layer1``..``layer4`` made of blocks is
            detected) or any model whose residual containers you name in ``stages``.
        gamma: momentum in [0, 1]; 0 gives back the original network.
        stages: dotted paths of the containers (nn.Sequential or nn.ModuleList of blocks
            that add their own skip connection), e.g. ``["encoder.layers"]``; for an
            ``nn.TransformerEncoder`` itself use ``["layers"]`` with ``keep_first=False``.
            Default: ``layer1``..``layer4``.
        keep_first: leave each container's first block (which may change shape) plain.
        memory_efficient: how each momentum stack gets its activations in backward.
            "auto" (default): each stack picks, at its first forward with gradients, the
            cheapest exact way for its shapes (exact inversion where it saves memory,
            recompute-from-input or ordinary backprop for short stacks; see
            ``mresnet_core.plan``), so the converted model's training step never needs
            more memory than ordinary backprop. True forces exact inversion in every
            stack, False ordinary backprop, "recompute" recomputation. All give the
            gradients of ordinary autograd. ``mresnet_core.memory.describe(model)``
            lists each stack's choice.

    The parameter name mapping is in this module's docstring (and :func:`renamed`).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_momentumnet expects an nn.Module, got {type(model).__name__}")
    n = exact.gamma_numerator(gamma)  # the one check of gamma
    gamma = float(gamma)
    if memory_mode(memory_efficient) == "exact":
        exact.check_invertible(n)
    paths = _resolve_stages(model, stages, keep_first)

    new = copy.deepcopy(model)
    for path in paths:
        stack = _convert_container(new.get_submodule(path), gamma, keep_first, memory_efficient)
        owner = _transformer_owning(new, path)
        if owner is not None:  # replace the whole encoder/decoder, whose forward needs layers[0]
            stack, path = _momentum_transformer(_module_at(new, owner), stack), owner
        if not path:
            new = stack
        else:
            parent, _, name = path.rpartition(".")
            setattr(_module_at(new, parent), name, stack)
    return new


def renamed(*containers: str, keep_first: bool = True, module_list: bool = False):
    """The parameter/buffer name mapping of :func:`to_momentumnet` for ``containers``
    (``named_parameters``/``named_buffers``; ``state_dict`` keeps the original names).

    Returns ``rename(name)``: ``S.j.rest`` -> ``S.1.functions.{j-1}.rest`` (keep_first,
    j >= 1; ``S.0.rest`` is unchanged), or ``S.functions.j.rest`` / ``S.0.functions.j.rest``
    (keep_first=False, for an nn.Sequential / nn.ModuleList); other names unchanged. E.g.
    ``renamed(*RESNET_STAGES)`` for a converted torchvision ResNet, or
    ``renamed("layers", keep_first=False, module_list=True)`` for a Transformer encoder.
    """
    def rename(name: str) -> str:
        for prefix in containers:
            m = re.fullmatch(rf"{re.escape(prefix)}\.(\d+)\.(.*)", name)
            if m:
                j, rest = int(m[1]), m[2]
                if keep_first:
                    return name if j == 0 else f"{prefix}.1.functions.{j - 1}.{rest}"
                return f"{prefix}.{'0.' if module_list else ''}functions.{j}.{rest}"
        return name
    return rename


# ---------------------------------------------------------------------------- stages
def _resolve_stages(model, stages, keep_first) -> list:
    """The dotted paths of the containers to convert, all checked before copying."""
    if stages is None:
        missing = [s for s in RESNET_STAGES if not isinstance(getattr(model, s, None), nn.Module)]
        if missing:
            hint = (" For nn.TransformerEncoder use stages=['layers'], keep_first=False."
                    if isinstance(model, _TRANSFORMERS) else "")
            raise ValueError(
                f"{type(model).__name__} has no residual container {missing[0]!r}: only models "
                "with layer1..layer4 (torchvision ResNets) are detected; pass stages=[...] with "
                f"the dotted paths of its containers of residual blocks.{hint}")
        stages = RESNET_STAGES
    if isinstance(stages, str):
        stages = [stages]
    stages = list(stages)
    if not stages or not all(isinstance(s, str) and s for s in stages):
        raise TypeError(f"stages must be a non-empty list of dotted paths (strings), "
                        f"got {stages!r}")
    paths = []
    for path in stages:
        module = _module_at(model, path)
        if isinstance(module, _TRANSFORMERS):  # an encoder/decoder named itself: its layers
            path, module = f"{path}.layers", module.layers
        _check_container(module, path, keep_first)
        paths.append(path)
    if len(set(paths)) != len(paths):
        raise ValueError(f"stages names a container twice: {stages!r}")
    return paths


def _module_at(model, path):
    """The submodule at a dotted ``path`` ("" is the model), or a ValueError naming it."""
    module = model
    for i, name in enumerate(path.split(".") if path else []):
        child = getattr(module, name, None) if isinstance(module, nn.Module) else None
        if child is None:
            where = ".".join(path.split(".")[:i]) or "the model"
            raise ValueError(f"stage {path!r} not found: {where} ({type(module).__name__}) has no "
                             f"submodule {name!r}; pass stages=[...] with dotted paths of "
                             "containers of residual blocks")
        module = child
    return module


def _transformer_owning(model, path):
    """The path of the nn.TransformerEncoder/Decoder whose ``layers`` ``path`` is, or None."""
    owner, _, name = path.rpartition(".")
    is_layers = name == "layers" and isinstance(_module_at(model, owner), _TRANSFORMERS)
    return owner if is_layers else None


def _check_container(container, path, keep_first) -> None:
    """A clear error unless ``container`` is a sequence of shape-preserving blocks."""
    if not isinstance(container, (nn.Sequential, nn.ModuleList)):
        raise TypeError(f"stage {path!r} is a {type(container).__name__}, not a sequence of "
                        "modules: name an nn.Sequential or nn.ModuleList of residual blocks")
    if len(container) == 0:
        raise ValueError(f"stage {path!r} is empty: there are no blocks to convert")
    for j, block in enumerate(container):
        why = None if keep_first and j == 0 else _shape_change(block)
        if why:
            fix = ("use keep_first=True to keep it out of the momentum stack" if j == 0 else
                   "only a stage's first block may change shape; name the part of the "
                   "container whose blocks keep their input's shape")
            raise ValueError(f"block {path}.{j} ({type(block).__name__}) changes the shape of "
                             f"its input ({why}): {fix}")


def _convert_container(container, gamma, keep_first, memory_efficient):
    """Sequential(first, MomentumNet(rest)) (or a ModuleList) in place of ``container``."""
    blocks = list(container)
    first, rest = (blocks[0], blocks[1:]) if keep_first else (None, blocks)
    if not rest:
        return container  # a single kept block: nothing to put in a momentum stack
    stack = MomentumNet(rest, gamma, memory_efficient=memory_efficient, residual=False,
                        within_network=True)
    stack.training = container.training
    parts = [first, stack] if keep_first else [stack]
    if isinstance(container, nn.Sequential):
        new = MomentumStage(first, stack) if keep_first else stack
    else:
        new = nn.ModuleList(parts)
    new.training = container.training
    # where the stack sits in ``new`` ("1.", "" or "0.") and its first block's original index
    names = _OriginalNames("" if new is stack else f"{len(parts) - 1}.", int(keep_first))
    register_state_dict_hooks(new, _SaveOriginalNames(names), _LoadEitherNames(names))
    new.register_load_state_dict_post_hook(_MissingAsOriginal(names))
    return new


class MomentumStage(nn.Sequential):
    """``Sequential(first block, momentum stack)``: a converted stage.

    The first block may change shape, so it cannot be inverted; it can be recomputed in
    backward from its input (``recompute.RecomputeBlock``), so that its activations are
    not held through the rest of the forward pass, as the stack's are not. That is done
    where what it would save for backward is at least ``RECOMPUTE_FIRST_FACTOR`` times
    its input (``first_block_plan``: measured at the first call with gradients for each
    input shape, as ``plan.layer_saved_bytes`` measures a stack's layer), and the stack
    is trained by "auto" or "recompute", or by "exact" with at least
    ``RECOMPUTE_FIRST_MIN_DEPTH`` layers: forced exact inversion recomputes a first block
    only where that costs little next to the stack's own backward (in ResNet-50's
    two-block first stage it would add a fifth to the step's time).
    """

    #: recompute the first block when it saves at least this many input-sized tensors
    RECOMPUTE_FIRST_FACTOR = 2
    #: and, for a stack forced to exact inversion, when the stack has this many layers
    RECOMPUTE_FIRST_MIN_DEPTH = 8

    def __init__(self, first: nn.Module, stack: MomentumNet):
        super().__init__(first, stack)
        self._first_plans: dict = {}
        self._first_mode: str | None = None  # how the last call with gradients ran the first block

    def first_block_plan(self, x: torch.Tensor) -> dict:
        """{"recompute": bool, "saved_bytes", "input_bytes"} for an input like ``x``."""
        key = (tuple(x.shape), x.dtype, x.device)
        plan = self._first_plans.get(key)
        if plan is None:
            stack = Stack(functions=[self[0]], residual_of=plain_call, n=0)
            saved = layer_saved_bytes(stack, self[0], x, (), {})
            size = x.numel() * x.element_size()
            plan = {"recompute": saved >= self.RECOMPUTE_FIRST_FACTOR * size, "saved_bytes": saved,
                    "input_bytes": size}
            self._first_plans[key] = plan
        return plan

    def forward(self, x):
        first, stack = self[0], self[1]
        mode = stack.memory_efficient
        wanted = (mode != MemoryMode.BACKPROP and torch.is_grad_enabled()
                  and (mode != MemoryMode.EXACT or len(stack.functions) >= self.RECOMPUTE_FIRST_MIN_DEPTH)
                  and (x.requires_grad or any(p.requires_grad for p in first.parameters())))
        if wanted and self.first_block_plan(x)["recompute"]:
            self._first_mode = "recompute"
            x = recompute_block(first, x)
        else:
            if torch.is_grad_enabled():
                self._first_mode = "backprop"
            x = first(x)
        return stack(x)

    def first_block_row(self, path: str) -> dict:
        """The first block as a row of ``memory.describe``: "recompute" or "backprop" (how
        the last forward pass with gradients ran it; None before one), depth 1."""
        plan = next(reversed(self._first_plans.values()), None)
        return {"path": f"{path}.0" if path else "0", "depth": 1, "requested": self[1].memory_efficient,
                "mode": self._first_mode, "backprop_bytes": plan["saved_bytes"] if plan else None,
                "recompute_bytes": None, "exact_bytes": None, "gradient_bytes": None, "kept": None}


def _shape_change(block) -> str | None:
    """Why ``block`` changes its input's shape, when visible without running it."""
    if getattr(block, "downsample", None) is not None:
        return "it has a downsample branch on its skip connection"
    if isinstance(block, nn.Linear) and block.in_features != block.out_features:
        return f"Linear({block.in_features} -> {block.out_features})"
    if isinstance(block, ConvNd) and (
            block.in_channels != block.out_channels or any(s != 1 for s in block.stride)):
        return f"{block.in_channels} -> {block.out_channels} channels, stride {block.stride}"
    return None


# ---------------------------------------------------------------------------- state dicts
class _OriginalNames:
    """Key mapping of one converted container, relative to it: the momentum stack's
    ``{stack}functions.{j}.*`` are the original container's ``{j + offset}.*``."""

    def __init__(self, stack: str, offset: int):
        self.stack, self.offset = stack, offset
        self.loading = None  # the container's prefix during its load_state_dict

    def original(self, key: str) -> str:
        m = re.fullmatch(rf"{re.escape(self.stack)}functions\.(0|[1-9]\d*)(\..*)?", key, re.S)
        return key if m is None else f"{int(m[1]) + self.offset}{m[2] or ''}"

    def structural(self, key: str) -> str:
        m = re.fullmatch(r"(0|[1-9]\d*)(\..*)?", key, re.S)
        if m is None or int(m[1]) < self.offset:
            return key
        return f"{self.stack}functions.{int(m[1]) - self.offset}{m[2] or ''}"

    def rename(self, name: str, prefix: str) -> str:
        """``name`` (a key or a module's metadata path) with its part below ``prefix`` mapped."""
        return prefix + self.original(name[len(prefix):]) if name.startswith(prefix) else name


class _SaveOriginalNames:
    """state_dict post-hook: the container's keys (and metadata) get the original names."""

    def __init__(self, names: _OriginalNames):
        self.names = names

    def __call__(self, module, state_dict, prefix, local_metadata) -> None:
        # the container's keys are the last ones: popped and put back renamed, in order
        items = [(self.names.rename(k, prefix), state_dict.pop(k))
                 for k in [k for k in state_dict if k.startswith(prefix)]]
        state_dict.update(items)
        meta = getattr(state_dict, "_metadata", None)
        if meta is not None:  # module versions under the original module paths, which win
            entries = [(m, meta.pop(m)) for m in [m for m in meta if m.startswith(prefix)]]
            meta.update((m, v) for m, v in entries if self.names.rename(m, prefix) == m)
            meta.update((self.names.rename(m, prefix), v) for m, v in entries
                        if self.names.rename(m, prefix) != m)


class _LoadEitherNames:
    """load_state_dict pre-hook: original keys of the container become structural ones;
    keys the container has already (structural names) stay."""

    def __init__(self, names: _OriginalNames):
        self.names = names

    def __call__(self, module, state_dict, prefix, local_metadata, strict, missing_keys,
                 unexpected_keys, error_msgs) -> None:
        self.names.loading = prefix
        own = set()
        for name, child in module.named_children():
            own.update(child.state_dict(prefix=f"{prefix}{name}.", keep_vars=True))
        for key in [k for k in state_dict if k.startswith(prefix) and k not in own]:
            new = prefix + self.names.structural(key[len(prefix):])
            if new in own and new not in state_dict:
                state_dict[new] = state_dict.pop(key)


class _MissingAsOriginal:
    """load_state_dict post-hook: the container's missing keys under their original names."""

    def __init__(self, names: _OriginalNames):
        self.names = names

    def __call__(self, module, incompatible_keys) -> None:
        prefix, self.names.loading = self.names.loading, None
        if prefix is not None:
            missing = incompatible_keys.missing_keys
            missing[:] = [self.names.rename(k, prefix) for k in missing]


# ---------------------------------------------------------------------------- transformers
class MomentumTransformerEncoder(nn.Module):
    """nn.TransformerEncoder whose ``layers`` hold a momentum stack (see ``to_momentumnet``).

    Same call and same per-layer arguments as ``nn.TransformerEncoder.forward`` (masks
    canonicalised, causal mask detected, then ``norm``), without its nested-tensor fast
    path: outputs at padded positions are computed like real tokens rather than set to 0
    (before ``norm``); outputs at real tokens are the same.
    """

    def __init__(self, layers: nn.ModuleList, norm: nn.Module | None, batch_first: bool):
        super().__init__()
        self.layers, self.norm, self.batch_first = layers, norm, batch_first

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        src_key_padding_mask = canonical_mask(
            mask=src_key_padding_mask, mask_name="src_key_padding_mask",
            other_type=none_or_dtype(mask), other_name="mask", target_type=src.dtype)
        mask = canonical_mask(mask=mask, mask_name="mask", other_type=None, other_name="",
                                 target_type=src.dtype, check_other=False)
        is_causal = detect_is_causal_mask(mask, is_causal, get_seq_len(src, self.batch_first))
        out = src
        with slow_attention():
            for layer in self.layers:
                out = layer(out, src_mask=mask, is_causal=is_causal,
                            src_key_padding_mask=src_key_padding_mask)
        return out if self.norm is None else self.norm(out)


class MomentumTransformerDecoder(nn.Module):
    """nn.TransformerDecoder whose ``layers`` hold a momentum stack (same call, same norm)."""

    def __init__(self, layers: nn.ModuleList, norm: nn.Module | None, batch_first: bool):
        super().__init__()
        self.layers, self.norm, self.batch_first = layers, norm, batch_first

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
        tgt_is_causal = detect_is_causal_mask(tgt_mask, tgt_is_causal,
                                              get_seq_len(tgt, self.batch_first))
        out = tgt
        with slow_attention():
            for layer in self.layers:
                out = layer(out, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask,
                            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)
        return out if self.norm is None else self.norm(out)


def _momentum_transformer(original, layers):
    """The Momentum version of an nn.TransformerEncoder/Decoder, given its converted layers."""
    cls = (MomentumTransformerEncoder if isinstance(original, nn.TransformerEncoder)
           else MomentumTransformerDecoder)
    new = cls(layers, original.norm, original.layers[0].self_attn.batch_first)
    new.training = original.training
    return new
