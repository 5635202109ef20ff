"""Table 1: Momentum ResNets as drop-in replacements (the checks behind its "Momentum Net" row).

For a model and its :func:`~mresnet_core.to_momentumnet` conversion:

* :func:`compare_tensors`: same parameter count, and every parameter and buffer equal
  (``torch.equal``) to the original's under the documented name mapping
  (``mresnet_core.convert.renamed``);
* :func:`relative_error` of the outputs at gamma = 0 (``memory_efficient=False``), which
  must compute the original network;
* :func:`exact_inverse_ok`: a momentum stack of the converted model runs back to its
  input bit for bit (``net.inverse(state)``);
* activation memory (``mresnet_core.memory.saved_tensor_bytes``) of the original and of
  the memory-free conversion.

:func:`load_resnet` uses ImageNet-pretrained torchvision weights only when the checkpoint
is already in the torch hub cache; it never downloads.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from .. import exact
from ..convert import RESNET_STAGES, renamed, to_momentumnet
from ..memory import saved_tensor_bytes, saved_tensors
from ..momentum import MomentumNet
from .common import relative_error

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

#: Table 1 of the paper, "Comparison of reversible residual architectures" [paper].
TABLE1_COLUMNS = ("closed-form inversion", "same parameters as the ResNet", "unconstrained training")
TABLE1 = {
    "Neural ODE": (True, False, True),
    "i-ResNet": (False, True, False),
    "i-RevNet": (True, False, True),
    "RevNet": (True, False, True),
    "Momentum Net": (True, True, True),
}


# ------------------------------------------------------------------ models
def cached_checkpoint(arch: str):
    """Path of the ImageNet checkpoint of ``arch`` in the torch hub cache, or None.

    The file name is the one torchvision's ``weights.url`` (DEFAULT weights) would be
    downloaded to; nothing is downloaded here.
    """
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    return path if os.path.isfile(path) else None


def load_resnet(arch: str, seed: int = 0, pretrained: bool = True):
    """(model in eval mode, description of its weights).

    ImageNet-pretrained DEFAULT weights if ``pretrained`` and the checkpoint is already in
    the torch hub cache (loaded from there, no download); otherwise random weights
    (``seed``) with BatchNorm scales drawn in [0.2, 0.6] and shifts in [-0.1, 0.1], so a
    deep random network keeps moderate activations, as a trained one does.
    """
    if pretrained and cached_checkpoint(arch) is not None:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        try:
            model = getattr(torchvision.models, arch)(weights=weights, progress=False)
            return model.eval(), f"ImageNet-pretrained ({weights.name}, from the hub cache)"
        except Exception as err:  # a corrupt cache file: fall back, and say so
            reason = f"cached checkpoint unreadable ({type(err).__name__})"
    else:
        reason = "no checkpoint in the hub cache" if pretrained else "random weights requested"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, arch)(weights=None)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.2, 0.6)
                    m.bias.uniform_(-0.1, 0.1)
    return model.eval(), f"random (seed {seed}; {reason})"


def transformer_encoder(d_model: int = 32, nhead: int = 4, layers: int = 6, seed: int = 0):
    """A small ``nn.TransformerEncoder`` (batch first, final LayerNorm), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward=2 * d_model,
                                           dropout=0.1, batch_first=True)
        enc = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model),
                                    enable_nested_tensor=False)
    return enc.eval()


# ------------------------------------------------------------------ comparisons
resnet_names = renamed(*RESNET_STAGES)


@dataclass
class TensorComparison:
    params_original: int  # number of parameter values
    params_converted: int
    tensors: int  # parameters + buffers compared
    same_names: bool  # the renamed original names are exactly the converted names
    all_equal: bool  # torch.equal on every one
    all_copies: bool  # no tensor shared with the original (a new model)


def compare_tensors(original: nn.Module, converted: nn.Module, rename) -> TensorComparison:
    """Parameters and buffers of ``converted`` against ``original`` under ``rename``."""
    same, equal, copies, count = True, True, True, 0
    for kind in ("named_parameters", "named_buffers"):
        want = {rename(k): v for k, v in getattr(original, kind)()}
        got = dict(getattr(converted, kind)())
        same &= sorted(got) == sorted(want)
        for k, v in want.items():
            count += 1
            equal &= k in got and torch.equal(got[k], v)
            copies &= k in got and got[k].data_ptr() != v.data_ptr()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return TensorComparison(n(original), n(converted), count, bool(same), bool(equal), bool(copies))


def momentum_stacks(model: nn.Module) -> dict:
    """{dotted name: depth} of the MomentumNet stacks inside ``model``."""
    return {name: len(m.functions) for name, m in model.named_modules() if isinstance(m, MomentumNet)}


def exact_inverse_ok(stack: MomentumNet, x: torch.Tensor, *args, **kwargs) -> bool:
    """Does ``stack.inverse(stack.forward_state(x))`` give back x and v_0 bit for bit?

    x is compared through the fixed point the stack uses (``exact.to_fixed``, 2**-40):
    the float input itself whenever it lies on that grid.
    """
    with torch.no_grad():
        state = stack.forward_state(x, *args, **kwargs)
        x0, v0 = stack.inverse(state, *args, **kwargs)
    seen = exact.to_float(exact.to_fixed(x), x.dtype)
    return bool(torch.equal(x0, seen) and torch.equal(v0, torch.zeros_like(x)))


def lipschitz_lower_bound(f, x: torch.Tensor, iters: int = 20, seed: int = 0) -> float:
    """A lower bound on the Lipschitz constant of ``f`` near ``x``: ||J u|| for the unit
    vector u found by ``iters`` steps of power iteration on J^T J (J the Jacobian of f
    at x, by double backward). Any unit u gives a valid lower bound; the iteration makes
    it close to the spectral norm of J.
    """
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    u /= u.norm()
    xi = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = f(xi)
        w = torch.zeros_like(y, requires_grad=True)
        (jt_w,) = torch.autograd.grad(y, xi, w, create_graph=True)  # J^T w, linear in w
        best = 0.0
        for _ in range(iters):
            (ju,) = torch.autograd.grad(jt_w, w, u, retain_graph=True)  # J u
            best = max(best, float(ju.norm()))
            (jtju,) = torch.autograd.grad(y, xi, ju, retain_graph=True)  # J^T J u
            u = jtju / jtju.norm()
    return best


def residual_lipschitz(stack: MomentumNet, x: torch.Tensor, layer: int = 0, iters: int = 50) -> float:
    """:func:`lipschitz_lower_bound` of the residual function f of ``stack``'s ``layer``
    (``block(x) - x`` for blocks that add their input) at ``x``, in eval mode."""
    block = stack.functions[layer]
    f = block if stack.residual else (lambda z: block(z) - z)
    return lipschitz_lower_bound(f, x, iters)


def resnet_stage_input(model: nn.Module, x: torch.Tensor, stage: str = "layer3") -> torch.Tensor:
    """Input of the momentum stack of ``stage`` in a converted torchvision ResNet."""
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        for name in RESNET_STAGES:
            block = getattr(model, name)
            if name == stage:
                return block[0](h)
            h = block(h)
    raise ValueError(f"no stage {stage!r}")


def resnet_report(arch: str, batch: int = 2, size: int = 64, gamma: float = 0.9, seed: int = 0,
                  pretrained: bool = True, stage: str = "layer3") -> dict:
    """Every drop-in check for one torchvision ResNet, as one row of numbers.

    gamma = 0 conversion vs the original (outputs, float32, eval mode); parameters and
    buffers under the name mapping; exact inverse of ``stage``'s momentum stack of the
    gamma conversion (memory-free); activation memory saved for backward by one
    training-mode forward of ``batch`` images of ``size`` x ``size``, original vs
    memory-free conversion (BatchNorm running statistics updated on copies).
    """
    model, weights = load_resnet(arch, seed=seed, pretrained=pretrained)
    plain = to_momentumnet(model, 0.0, memory_efficient=False)
    free = to_momentumnet(model, gamma, memory_efficient=True)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        err = relative_error(plain(x), model(x))
    same = compare_tensors(model, plain, resnet_names)
    same_free = compare_tensors(model, free, resnet_names)
    stacks = momentum_stacks(free)
    h = resnet_stage_input(free, x, stage)
    inverse_ok = exact_inverse_ok(getattr(free, stage)[1], h)
    lipschitz = residual_lipschitz(getattr(free, stage)[1], h)
    mem_original = saved_tensor_bytes(copy.deepcopy(model).train(), x)
    mem_free = saved_tensor_bytes(copy.deepcopy(free).train(), x)
    return {
        "model": arch, "weights": weights,
        "parameters (original)": same.params_original,
        "parameters (Momentum)": same.params_converted,
        "tensors equal": same.all_equal and same.same_names and same_free.all_equal and same_free.same_names,
        "new copies": same.all_copies and same_free.all_copies,
        "tensors compared": same.tensors,
        "stack depths": "/".join(str(stacks[f"{s}.1"]) for s in RESNET_STAGES),
        "gamma=0 rel. error": err,
        f"{stage} exact inverse": inverse_ok,
        f"Lip(f) of {stage}'s first momentum block >=": lipschitz,
        "saved MiB (original)": mem_original / 2**20,
        "saved MiB (Momentum, memory-free)": mem_free / 2**20,
    }


def causal_mask(seq: int) -> torch.Tensor:
    return nn.Transformer.generate_square_subsequent_mask(seq)


def transformer_report(batch: int = 4, seq: int = 16, d_model: int = 32, nhead: int = 4,
                       layers: int = 6, gamma: float = 0.9, seed: int = 0) -> dict:
    """The same checks for an ``nn.TransformerEncoder`` with a causal mask (all layers
    converted: ``stages=["layers"], keep_first=False``), plus the memory-free gradients
    against ordinary autograd at ``gamma`` (train mode, dropout replayed)."""
    enc = transformer_encoder(d_model, nhead, layers, seed)
    mask = causal_mask(seq)
    kw = dict(mask=mask, is_causal=True)
    plain0 = to_momentumnet(enc, 0.0, stages=["layers"], keep_first=False, memory_efficient=False)
    free = to_momentumnet(enc, gamma, stages=["layers"], keep_first=False, memory_efficient=True)
    plain = to_momentumnet(enc, gamma, stages=["layers"], keep_first=False, memory_efficient=False)
    x = torch.randn(batch, seq, d_model, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        err = relative_error(plain0(x, **kw), enc(x, **kw))
    rename = renamed("layers", keep_first=False, module_list=True)
    same, same_free = compare_tensors(enc, plain0, rename), compare_tensors(enc, free, rename)
    stack = free.layers[0]
    inverse_ok = exact_inverse_ok(stack, x, src_mask=mask, is_causal=True)

    def grads(net):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            xi = x.clone().requires_grad_(True)
            out = net.train()(xi, **kw)
            g = torch.autograd.grad(out.pow(2).mean(), [xi, *net.parameters()])
        return torch.cat([t.reshape(-1) for t in g])

    grad_err = relative_error(grads(free), grads(plain))
    mem_original = saved_tensor_bytes(copy.deepcopy(enc).train(), x, **kw)
    mem_free = saved_tensor_bytes(copy.deepcopy(free).train(), x, **kw)
    return {
        "model": f"TransformerEncoder ({layers} layers, d_model {d_model}, causal mask)",
        "weights": f"random (seed {seed})",
        "parameters (original)": same.params_original,
        "parameters (Momentum)": same.params_converted,
        "tensors equal": same.all_equal and same.same_names and same_free.all_equal and same_free.same_names,
        "new copies": same.all_copies and same_free.all_copies,
        "tensors compared": same.tensors,
        "stack depths": str(len(stack.functions)),
        "gamma=0 rel. error": err,
        "layers exact inverse": inverse_ok,
        "memory-free gradient rel. error": grad_err,
        "saved MiB (original)": mem_original / 2**20,
        "saved MiB (Momentum, memory-free)": mem_free / 2**20,
    }


# ------------------------------------------------------------------ measured rows of Table 1
def stack_memory_vs_depth(arch: str = "resnet101", stage: str = "layer3", depths=(1, 2, 4, 8, 16, 22),
                          batch: int = 2, size: int = 64, gamma: float = 0.9, seed: int = 0) -> list:
    """Bytes saved for backward by one momentum stack made of the first ``k`` momentum
    blocks of ``stage`` of a converted ``arch``, for each k in ``depths``: ordinary backprop
    against the memory-free path (its information buffer reported apart). Rows of dicts:
    depth, ordinary, memory-free, buffer (bytes), in training mode."""
    model, _ = load_resnet(arch, seed=seed, pretrained=False)
    converted = to_momentumnet(model, gamma, memory_efficient=True)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    h = resnet_stage_input(converted, x, stage)
    blocks = list(getattr(converted, stage)[1].functions)
    if max(depths) > len(blocks):
        raise ValueError(f"{arch}.{stage} has {len(blocks)} momentum blocks, fewer than {max(depths)}")
    rows = []
    for k in depths:
        part = [copy.deepcopy(b).train() for b in blocks[:k]]
        plain = MomentumNet(part, gamma, memory_efficient=False, residual=False)
        free = MomentumNet(part, gamma, memory_efficient=True, residual=False)
        report = saved_tensors(free.forward_state, h)
        rows.append({"depth": k, "ordinary": saved_tensor_bytes(plain, h), "memory-free": report.nbytes,
                     "buffer": report.output.tape.buffer.nbytes()})
        del report
    return rows


def unconstrained_training(arch: str = "resnet18", steps: int = 8, batch: int = 8, size: int = 32,
                           gamma: float = 0.9, lr: float = 0.05, seed: int = 0, stage: str = "layer3") -> dict:
    """Train a memory-free Momentum ``arch`` with plain SGD, no constraint of any kind on its
    blocks (no spectral normalisation, no Lipschitz bound), for ``steps`` steps on one
    fixed batch of random images with random labels (a mechanics check: can it fit, not
    a data set). Returns the losses, whether ``stage``'s momentum stack still inverts bit
    for bit after training, and the Lipschitz lower bound of its first momentum block
    before and after training (each at the stack's input in eval mode).

    The bound is no evidence about training: a torchvision block ends with a ReLU after
    the skip addition, so its residual function ``f(x) = relu(g(x) + x) - x`` equals
    ``-x`` on every coordinate where ``g(x) + x < 0``, which gives ``Lip(f) >= 1`` for
    any weights, initial ones included."""
    model, _ = load_resnet(arch, seed=seed, pretrained=False)
    net = to_momentumnet(model, gamma, memory_efficient=True).train()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, 1000, (batch,), generator=gen)

    def stack_and_input():  # in eval mode
        net.eval()
        return getattr(net, stage)[1], resnet_stage_input(net, x, stage)

    stack, h = stack_and_input()
    lipschitz_init = residual_lipschitz(stack, h)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    stack, h = stack_and_input()
    return {"losses": losses, "lipschitz_init": lipschitz_init, "lipschitz": residual_lipschitz(stack, h),
            "inverse_ok": exact_inverse_ok(stack, h)}
