"""Figure 7: training memory against batch size for a ResNet and its memory-free Momentum
version, the largest batch each fits in a memory budget (measured, never extrapolated),
accuracy against memory when more or fewer momentum stacks are memory-free, and the
memory-free gradients checked against Eq. 2 written out by hand."""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..convert import to_momentumnet
from ..data import load_data
from ..exact import rounded_gamma
from ..memory import largest_fitting_batch, training_step_memory
from ..models import build_deep_resnet, build_model, momentum_stacks
from ..momentum import MomentumNet
from .images import final_accuracy, fit


# ---------------------------------------------------------------------- data and models
def first_images(count: int, dataset: str = "fashion-mnist", *, image_size: int | None = None, classes=None,
                 data_dir=None):
    """(images, labels, data line): the first ``count`` training images of ``dataset``,
    without augmentation (the whole set repeated when ``count`` exceeds it)."""
    data = load_data(dataset, data_dir=data_dir, image_size=image_size, augment=False, classes=classes)
    n = min(count, len(data.train))
    xs, ys = zip(*(data.train[i] for i in range(n)))
    index = torch.arange(count) % n
    return torch.stack(xs)[index], torch.tensor(ys)[index], data.describe()


def deep_pair(blocks: int, num_classes: int = 10, *, width: int, gamma: float = 0.9, seed: int = 0) -> dict:
    """{"resnet{depth}": the CIFAR ResNet of depth 12 * blocks + 2 (``build_deep_resnet``),
    "mresnet{depth}": its conversion (same weights), memory-free (exact inversion in every stack)}."""
    torch.manual_seed(seed)
    base = build_deep_resnet(blocks, num_classes, width=width)
    depth = 12 * blocks + 2
    return {f"resnet{depth}": base,
            f"mresnet{depth}": to_momentumnet(copy.deepcopy(base), gamma, memory_efficient=True)}


def device_of(name: str) -> torch.device:
    """"auto": CUDA when available, else the CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------- memory of a step
def step_memory(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """TrainingStepMemory of one whole training step (gradients set to None first, so they
    are allocated during it) of ``model`` on (x, y) with cross-entropy, measured as it
    comes (no warm-up at this shape: the first step at a batch size is the one that must
    fit). None when the device runs out of memory (CUDA): that batch does not fit."""
    try:
        return training_step_memory(model, x, loss=lambda out: F.cross_entropy(out, y), warmup=0)
    except torch.cuda.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        return None


def largest_batch_within(model: nn.Module, images, labels, budget_bytes: float, *, batches=(),
                         max_batch: int | None = None) -> tuple:
    """(largest batch, rows): the largest batch whose whole-step peak is within
    ``budget_bytes``, found by ``memory.largest_fitting_batch`` (every answer and the
    batch after it measured, nothing extrapolated), after measuring ``batches`` too (for
    the curve). ``max_batch``: measured first; if it fits, the search stops there and the
    answer is "at least max_batch" (``capped`` in the rows). A device out of memory counts
    as above the budget (the budget must not exceed the device's memory). Rows: batch,
    whole_step, activations (bytes; None when out of memory), fits, out_of_memory, capped."""
    device = next(model.parameters()).device
    if device.type == "cuda" and budget_bytes > torch.cuda.get_device_properties(device).total_memory:
        raise ValueError("the budget exceeds the GPU's memory: an out-of-memory error would not mean "
                         "'above the budget'")
    model.train()
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(images[:1].to(device)), labels[:1].to(device)).backward()  # warm-up at batch 1
    measured: dict = {}

    def peak_at(b: int) -> float:
        if b not in measured:
            if b > len(images):
                raise ValueError(f"batch {b} needs more than the {len(images)} images given")
            measured[b] = step_memory(model, images[:b].to(device), labels[:b].to(device))
            model.zero_grad(set_to_none=True)
        m = measured[b]
        return math.inf if m is None else m.whole_step

    for b in batches:
        peak_at(b)
    capped = max_batch is not None and peak_at(max_batch) <= budget_bytes
    largest = max_batch if capped else largest_fitting_batch(peak_at, int(budget_bytes))[0]
    rows = [{"batch": b, "whole_step": None if m is None else m.whole_step,
             "activations": None if m is None else m.activations, "fits": peak_at(b) <= budget_bytes,
             "out_of_memory": m is None, "capped": capped and b == max_batch}
            for b, m in sorted(measured.items())]
    return largest, rows


def memory_vs_batch(models: dict, images, labels, budget_bytes: float, *, batches=(),
                    max_batch: int | None = None) -> tuple:
    """(rows with a "model" column, {model: largest batch within the budget}) for each
    model of ``models`` (see :func:`largest_batch_within`)."""
    rows, largest = [], {}
    for name, model in models.items():
        largest[name], part = largest_batch_within(model, images, labels, budget_bytes, batches=batches,
                                                   max_batch=max_batch)
        rows += [{"model": name, **r} for r in part]
    return rows, largest


# ---------------------------------------------------------------------- Eq. 2 by hand
def written_out(model: nn.Module, x: torch.Tensor, gamma: float) -> torch.Tensor:
    """The forward pass of a converted torchvision-style ResNet written out by hand: the
    stem, then in each stage its first block and Eq. 2 over the stack's blocks
    (f(x) = block(x) - x for blocks that add their input, v_0 = 0, v <- gamma v + (1 - gamma) f(x), x <- x + v), pooling
    and head. It calls the blocks themselves, none of the package's stack code."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for name in ("layer1", "layer2", "layer3", "layer4"):
        for part in getattr(model, name):
            if not isinstance(part, MomentumNet):
                x = part(x)
                continue
            if part.init_velocity is not None:
                raise ValueError("written_out knows v_0 = 0 only")
            v = torch.zeros_like(x)
            for block in part.functions:
                f = block(x) if part.residual else block(x) - x
                v = gamma * v + (1 - gamma) * f
                x = x + v
    return model.fc(torch.flatten(model.avgpool(x), 1))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def gradient_check(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gamma: float) -> dict:
    """One training step of ``model`` (a converted ResNet, in its memory modes) against
    plain autograd through :func:`written_out` on a copy with the same weights, both in
    float64 (where exact inversion and autograd agree to about 1e-12; in float32 this
    network's gradients at initialisation move by 1e-3 under a 1e-7 change of the input,
    too ill-conditioned to compare two computations). Returns the relative differences
    of the loss and of all parameter gradients together, and the stacks' share of the
    gradient norm (what a stack-only fault would change at least)."""
    ours = copy.deepcopy(model).double().train()
    reference = copy.deepcopy(model).double().train()
    device = next(ours.parameters()).device
    x, y = x.to(device).double(), y.to(device)
    ours.zero_grad(set_to_none=True)
    loss = F.cross_entropy(ours(x), y)
    loss.backward()
    ref_loss = F.cross_entropy(written_out(reference, x, rounded_gamma(gamma)), y)
    ref_grads = torch.autograd.grad(ref_loss, list(reference.parameters()))
    grads = torch.cat([p.grad.flatten() for p in ours.parameters()])
    want = torch.cat([g.flatten() for g in ref_grads])
    in_stacks = {id(p) for s in momentum_stacks(reference) for p in s.parameters()}
    stack_part = torch.cat([g.flatten() for p, g in zip(reference.parameters(), ref_grads) if id(p) in in_stacks])
    return {"loss": relative(loss.detach(), ref_loss.detach()), "gradients": relative(grads, want),
            "stack share of the gradient norm": float(stack_part.norm() / want.norm())}


# ---------------------------------------------------------------------- accuracy vs memory
class InFloat64(nn.Module):
    """``net`` in float64, fed the trainer's float32 images (cast on the way in)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.double()

    def forward(self, x):
        return self.net(x.double())


def with_memory_free_stacks(depth: int, k: int, num_classes: int, *, width: int, gamma: float, seed: int,
                            dtype: torch.dtype = torch.float32) -> nn.Module:
    """``mresnet{depth}`` with its k longest momentum stacks memory-free (exact
    inversion), the others by ordinary backprop; the same initial weights for every k."""
    torch.manual_seed(seed)
    model = build_model(f"mresnet{depth}", num_classes, gamma=gamma, width=width, memory_efficient=False)
    stacks = sorted(momentum_stacks(model), key=lambda stack: -len(stack.functions))
    if k > len(stacks):
        raise ValueError(f"mresnet{depth} has {len(stacks)} momentum stacks, fewer than {k}")
    for stack in stacks[:k]:
        stack.memory_efficient = True
    return InFloat64(model) if dtype == torch.float64 else model


def accuracy_vs_memory_free_stages(ks, *, depth: int, batch_size: int, width: int, gamma: float,
                                   seed: int = 0, dtype: str = "float64", device: str = "cpu",
                                   profile: str | None = None, **settings) -> list:
    """Train ``mresnet{depth}`` with its k longest stacks memory-free, for each k in
    ``ks``, from the same initial weights and the same batches (``settings``: the
    trainer's fields: dataset, image_size, train_images, epochs, lr, ...). Rows: k,
    whole_step and activations peak of one training step at ``batch_size`` (bytes),
    final test accuracy (%), and the relative distance of the trained weights from the
    first k's (``weights apart``). Exact inversion gives the gradients of ordinary
    backprop up to rounding; through training those rounding differences grow (in
    float64 too, more slowly), which the distance shows. ``device``: where memory is measured and
    the runs train ("auto": CUDA when available). With ``profile``, each run is cached
    (keyed on the settings that build its model too): a finished one is loaded, an
    interrupted one resumes."""
    dt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    where = device_of(device)
    x, y, _ = first_images(batch_size, settings.get("dataset", "fashion-mnist"),
                           image_size=settings.get("image_size"), classes=settings.get("classes"),
                           data_dir=settings.get("data_dir"))
    num_classes = len(settings["classes"]) if settings.get("classes") else 10
    rows = []
    first = None
    for k in ks:
        model = with_memory_free_stacks(depth, k, num_classes, width=width, gamma=gamma, seed=seed, dtype=dt)
        model.to(where).train()
        F.cross_entropy(model(x[:1].to(where)), y[:1].to(where)).backward()  # warm-up at another shape
        step = step_memory(model, x.to(where), y.to(where))
        model.zero_grad(set_to_none=True)
        built = dict(builder="with_memory_free_stacks", depth=depth, k=k, num_classes=num_classes, width=width,
                     gamma=gamma, seed=seed, dtype=dtype)
        result = fit(profile, f"figure7-stages{k}", start_from=model, start_key=built, model=f"mresnet{depth}",
                     gamma=gamma, width=width, batch_size=batch_size, seed=seed, device=str(where), **settings)
        weights = torch.cat([p.detach().reshape(-1).double().cpu() for p in model.parameters()])
        first = weights if first is None else first
        rows.append({"memory-free stacks": k, "whole_step": step.whole_step, "activations": step.activations,
                     "test accuracy": final_accuracy(result),
                     "weights apart": float((weights - first).norm() / first.norm())})
    return rows


# ---------------------------------------------------------------------- figure
def plot_memory(table, budget_bytes: float, largest: dict, stages=None):
    """(left) whole-step peak against batch size per model (every point measured; a batch
    above the budget drawn as a cross, one out of memory at the budget line), the budget
    and each model's largest batch; (right, with ``stages``) accuracy against memory."""
    import matplotlib.pyplot as plt

    from ..plotting import PALETTE

    mib = 2.0 ** 20
    fig, axes = plt.subplots(1, 2 if stages is not None else 1, figsize=(12 if stages is not None else 6.5, 4.2),
                             squeeze=False)
    ax = axes[0, 0]
    for name, part in table.groupby("model", sort=False):
        momentum = name.startswith("m")
        color = PALETTE["momentum" if momentum else "resnet"]
        label = f"Momentum {name[1:]} (memory-free)" if momentum else name
        measured = part[~part["out_of_memory"]]
        ax.plot(measured["batch"], measured["whole_step"] / mib, "-", color=color, lw=1,
                label=f"{label}: whole step")
        ax.plot(measured["batch"], measured["activations"] / mib, ":", color=color, lw=1,
                label=f"{label}: without gradients")
        fits, over = measured[measured["fits"]], measured[~measured["fits"]]
        ax.plot(fits["batch"], fits["whole_step"] / mib, "o", color=color, ms=4)
        ax.plot(over["batch"], over["whole_step"] / mib, "x", color=color, ms=6)
        oom = part[part["out_of_memory"]]
        if len(oom):
            ax.plot(oom["batch"], [budget_bytes / mib] * len(oom), "X", color=color, ms=8,
                    label=f"{label}: out of memory")
        ax.axvline(largest[name], color=color, lw=0.8, ls="--", label=f"{label}: largest batch {largest[name]}")
    ax.axhline(budget_bytes / mib, color=PALETTE["theory"], lw=1, label=f"budget {budget_bytes / mib:.0f} MiB")
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="peak memory of a training step (MiB)",
           title="training memory against batch size (x: above the budget)")
    ax.legend(fontsize=7)
    if stages is not None:
        ax = axes[0, 1]
        ax.plot(stages["whole_step"] / mib, stages["test accuracy"], "o-", color=PALETTE["momentum"],
                label="Momentum ResNet, k stacks memory-free")
        for _, r in stages.iterrows():
            ax.annotate(f"k = {int(r['memory-free stacks'])}", (r["whole_step"] / mib, r["test accuracy"]),
                        textcoords="offset points", xytext=(5, 5), fontsize=8)
        acc = stages["test accuracy"]
        ax.set(xlabel="peak memory of a training step (MiB)", ylabel="final test accuracy (%)",
               title="accuracy against memory used",  # at least 5 points tall: differences at scale
               ylim=(acc.min() - 2.5, min(100.5, acc.max() + 2.5)))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
