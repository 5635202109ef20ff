"""Time and activation memory of one training step: memory-free vs ordinary backprop.

Side by side, in one process on one machine (see DESIGN.md, "Speed and memory targets"):

(a) the toy stack of the paper's Figure 2: d = 500, f_n = Linear(500, 100) - Tanh -
    Linear(100, 500) with separate weights per layer, batch 256, gamma = 0.9;
(b) a CIFAR-style torchvision ResNet-18 (3x3 stride-1 conv1, no max-pool, 32x32 inputs;
    --resnet-arch picks a deeper one, whose longer stages show the memory saving)
    converted with ``to_momentumnet`` (memory_efficient False vs True), with the
    unconverted model's time for reference;
(c) when the reference package ``momentumnet`` (0.10) is importable, its
    ``use_backprop=True`` and ``use_backprop=False`` paths on the same toy problem.

One step is: gradients set to None, ``loss = model(x).pow(2).mean()`` (cross-entropy
for the ResNet), ``loss.backward()``.

* time: median wall time over ``--repeats`` steps after ``--warmup`` steps (the first
  memory-free call compiles its exact kernels with torch.compile; warm-up covers it),
  variants interleaved in each repetition so that load from other processes hits all
  of them alike; ``torch.set_num_threads(--threads)``.
* saved: bytes autograd keeps after the forward pass (``memory.saved_tensor_bytes``),
  parameters excluded; for the memory-free path, the int64 (x, v) and the information
  buffer.
* peak: peak memory of the whole step above its starting level, from the profiler's
  allocation events (``memory.measure_step_memory``), leaving out the parameter
  gradients the step creates (identical for every variant): activations and
  temporaries of the forward and backward passes.
* buffer: the information buffer of the memory-free path (``tape.buffer.nbytes()``).

Run ``python benchmarks/benchmark_memory_free.py`` (a few minutes on 2 CPU cores) or
with ``--quick``. The markdown tables go to stdout, progress to stderr.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mresnet_core import MomentumNet
from mresnet_core.memory import measure_step_memory, saved_tensor_bytes

try:  # the reference implementation (optional)
    import momentumnet as reference
except ImportError:  # pragma: no cover - optional dependency
    reference = None

MB = 1e6
TARGET_TIME_TOY = 1.8
TARGET_TIME_RESNET = 1.45
TARGET_MEM_DEPTH8 = 1.25


# ------------------------------------------------------------------------------ models

def toy_functions(depth: int, d: int, hidden: int, seed: int = 0) -> list:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, d))
            for _ in range(depth)]


def cifar_resnet(arch: str = "resnet18") -> nn.Module:
    """A torchvision ResNet for 32x32 inputs: 3x3 stride-1 conv1, no max-pool."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = getattr(tvm, arch)(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


# ------------------------------------------------------------------------------ measurement

@dataclass
class Variant:
    name: str
    model: nn.Module
    loss: object  # callable(model output) -> scalar
    times: list = field(default_factory=list)
    saved: int | None = None
    peak: int | None = None
    buffer: int | None = None

    def step(self, x):
        self.model.zero_grad(set_to_none=True)
        self.loss(self.model(x)).backward()

    @property
    def time(self) -> float:
        return statistics.median(self.times)


def mean_square(out):
    return out.pow(2).mean()


def run_variants(variants: list, x, repeats: int, warmup: int, memory: bool = True) -> None:
    """Warm up, then time the variants interleaved; then measure their memory."""
    for v in variants:
        for _ in range(warmup):
            v.step(x)
    for _ in range(repeats):
        for v in variants:
            gc.collect()
            t0 = time.perf_counter()
            v.step(x)
            v.times.append(time.perf_counter() - t0)
    if not memory:
        return
    for v in variants:
        v.model.zero_grad(set_to_none=True)
        v.saved = saved_tensor_bytes(v.model, x)
        v.model.zero_grad(set_to_none=True)
        gc.collect()
        v.peak = measure_step_memory(lambda: v.step(x), "cpu", exclude_grads_of=v.model).peak
        v.model.zero_grad(set_to_none=True)


def information_buffer_bytes(model: nn.Module, x) -> int:
    """Information-buffer bytes of every memory-free MomentumNet in ``model`` for input x.

    Runs one extra forward pass without gradients (BatchNorm statistics move once more).
    """
    if isinstance(model, MomentumNet):
        with torch.no_grad():
            return model.forward_state(x).tape.buffer.nbytes()
    stacks = [m for m in model.modules() if isinstance(m, MomentumNet) and m.memory_efficient]
    total = 0
    handles = []

    def hook(module, args, kwargs, output):
        nonlocal total
        with torch.no_grad():
            total += module.forward_state(*args, **kwargs).tape.buffer.nbytes()

    for m in stacks:
        handles.append(m.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total


# ------------------------------------------------------------------------------ benchmarks

def bench_toy(args, progress) -> list:
    rows = []
    x = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(1))
    for depth in args.depths:
        fs = toy_functions(depth, args.dim, args.hidden)
        variants = [
            Variant("ordinary", MomentumNet(fs, args.gamma, memory_efficient=False), mean_square),
            Variant("memory-free", MomentumNet(fs, args.gamma, memory_efficient=True), mean_square),
        ]
        if reference is not None and not args.no_reference:
            variants += [
                Variant("ref backprop", reference.MomentumNet(fs, args.gamma, use_backprop=True), mean_square),
                Variant("ref memory-free", reference.MomentumNet(fs, args.gamma, use_backprop=False), mean_square),
            ]
        run_variants(variants, x, args.repeats, args.warmup)
        variants[1].buffer = information_buffer_bytes(variants[1].model, x)
        rows.append((depth, {v.name: v for v in variants}))
        progress.update(1)
    return rows


def bench_resnet(args, progress):
    try:
        from mresnet_core import to_momentumnet
    except (ImportError, AttributeError) as err:
        print(f"(ResNet part skipped: mresnet_core.to_momentumnet unavailable: {err})", file=sys.stderr)
        return None
    base = cifar_resnet(args.resnet_arch)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(args.resnet_batch, 3, 32, 32, generator=g)
    labels = torch.randint(0, 10, (args.resnet_batch,), generator=g)
    ce = lambda out: F.cross_entropy(out, labels)  # noqa: E731
    variants = [
        Variant("original", base, ce),
        Variant("ordinary", to_momentumnet(base, args.gamma, memory_efficient=False), ce),
        Variant("memory-free", to_momentumnet(base, args.gamma, memory_efficient=True), ce),
    ]
    run_variants(variants, x, args.resnet_repeats, args.warmup)
    variants[2].buffer = information_buffer_bytes(variants[2].model, x)
    progress.update(1)
    return {v.name: v for v in variants}


def profile_memory_free_step(args, depth: int, top: int) -> str:
    """Top ops (self CPU time) of one memory-free toy step, after warm-up."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(args.batch, args.dim, generator=torch.Generator().manual_seed(1))
    net = MomentumNet(toy_functions(depth, args.dim, args.hidden), args.gamma, memory_efficient=True)
    v = Variant("memory-free", net, mean_square)
    for _ in range(max(args.warmup, 1)):
        v.step(x)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        v.step(x)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


# ------------------------------------------------------------------------------ report

def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def mb(n) -> str:
    return f"{n / MB:.2f}" if n is not None else "-"


def toy_table(rows, has_ref: bool) -> str:
    head = ("| depth | time ordinary (ms) | time memory-free (ms) | time ratio "
            "| saved ordinary (MB) | saved memory-free (MB) | saved ratio "
            "| peak ordinary (MB) | peak memory-free (MB) | peak ratio | info buffer (MB) |")
    sep = "|" + "---:|" * 11
    lines = [head, sep]
    for depth, v in rows:
        o, m = v["ordinary"], v["memory-free"]
        lines.append(f"| {depth} | {o.time * 1e3:.1f} | {m.time * 1e3:.1f} | {ratio(m.time, o.time)} "
                     f"| {mb(o.saved)} | {mb(m.saved)} | {ratio(m.saved, o.saved)} "
                     f"| {mb(o.peak)} | {mb(m.peak)} | {ratio(m.peak, o.peak)} | {mb(m.buffer)} |")
    if has_ref:
        lines += ["", "Reference package `momentumnet` 0.10, same toy problem, same run:", "",
                  "| depth | time ref backprop (ms) | time ref memory-free (ms) | ref time ratio "
                  "| peak ref backprop (MB) | peak ref memory-free (MB) | ref peak ratio "
                  "| ours memory-free vs ref memory-free (time) |",
                  "|" + "---:|" * 8]
        for depth, v in rows:
            rb, rm, m = v["ref backprop"], v["ref memory-free"], v["memory-free"]
            lines.append(f"| {depth} | {rb.time * 1e3:.1f} | {rm.time * 1e3:.1f} | {ratio(rm.time, rb.time)} "
                         f"| {mb(rb.peak)} | {mb(rm.peak)} | {ratio(rm.peak, rb.peak)} "
                         f"| {ratio(m.time, rm.time)} |")
    return "\n".join(lines)


def resnet_table(v, arch: str) -> str:
    o, m, b = v["ordinary"], v["memory-free"], v["original"]
    return "\n".join([
        "| model | time (ms) | time vs ordinary | saved (MB) | peak (MB) | peak vs ordinary |",
        "|---|---:|---:|---:|---:|---:|",
        f"| torchvision {arch} (unconverted) | {b.time * 1e3:.0f} | {ratio(b.time, o.time)} "
        f"| {mb(b.saved)} | {mb(b.peak)} | {ratio(b.peak, o.peak)} |",
        f"| Momentum {arch}, ordinary backprop | {o.time * 1e3:.0f} | 1.00x | {mb(o.saved)} "
        f"| {mb(o.peak)} | 1.00x |",
        f"| Momentum {arch}, memory-free | {m.time * 1e3:.0f} | {ratio(m.time, o.time)} "
        f"| {mb(m.saved)} | {mb(m.peak)} | {ratio(m.peak, o.peak)} |",
    ])


def verdicts(rows, resnet, arch: str = "resnet18") -> list:
    out = []
    by_depth = dict(rows)
    worst = max(v["memory-free"].time / v["ordinary"].time for _, v in rows)
    out.append(f"- toy time ratio <= {TARGET_TIME_TOY}x at every depth: "
               f"{'MET' if worst <= TARGET_TIME_TOY else 'MISSED'} (worst {worst:.2f}x)")
    if resnet is not None:
        r = resnet["memory-free"].time / resnet["ordinary"].time
        out.append(f"- {arch} time ratio <= {TARGET_TIME_RESNET}x: "
                   f"{'MET' if r <= TARGET_TIME_RESNET else 'MISSED'} ({r:.2f}x)")
    depths = sorted(by_depth)
    lo, hi = depths[0], depths[-1]
    if hi > lo:
        m_lo, m_hi = by_depth[lo]["memory-free"], by_depth[hi]["memory-free"]
        growth, allowance = m_hi.peak - m_lo.peak, m_hi.buffer - m_lo.buffer
        slack = 0.01 * m_lo.peak  # allocator rounding, small bookkeeping tensors
        out.append(f"- memory-free peak at depth {hi} within the information-buffer growth of "
                   f"depth {lo}: {'MET' if growth <= allowance + slack else 'MISSED'} "
                   f"(peak grew {growth / MB:+.2f} MB, buffer grew {allowance / MB:+.2f} MB)")
    if 8 in by_depth:
        r8 = by_depth[8]["memory-free"].peak / by_depth[8]["ordinary"].peak
        out.append(f"- depth 8 peak ratio <= {TARGET_MEM_DEPTH8}x: "
                   f"{'MET' if r8 <= TARGET_MEM_DEPTH8 else 'MISSED'} ({r8:.2f}x)")
    deeper = [(d, v["memory-free"].peak / v["ordinary"].peak) for d, v in rows if d >= 16]
    if deeper:
        bad = [f"{d}: {r:.2f}x" for d, r in deeper if r >= 1]
        out.append("- peak ratio below 1 from depth 16 on: "
                   + ("MET" if not bad else "MISSED (" + ", ".join(bad) + ")"))
    return out


# ------------------------------------------------------------------------------ main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", type=int, nargs="+", help="toy depths (default 8 16 32 64 256)")
    p.add_argument("--repeats", type=int, help="timed steps per variant, toy (default 7)")
    p.add_argument("--resnet-repeats", type=int, help="timed steps per variant, ResNet (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--batch", type=int, default=256, help="toy batch size (default 256)")
    p.add_argument("--dim", type=int, default=500, help="toy width d (default 500)")
    p.add_argument("--hidden", type=int, default=100, help="toy hidden width (default 100)")
    p.add_argument("--gamma", type=float, default=0.9, help="momentum (default 0.9)")
    p.add_argument("--resnet-batch", type=int, help="ResNet batch size (default 64)")
    p.add_argument("--resnet-arch", default="resnet18",
                   choices=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"],
                   help="torchvision ResNet for part (b) (default resnet18; the time target is for it)")
    p.add_argument("--no-resnet", action="store_true")
    p.add_argument("--no-reference", action="store_true", help="skip the momentumnet package")
    p.add_argument("--top-ops", type=int, default=0,
                   help="also print the top N ops of one memory-free toy step (torch.profiler)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: depths 8 16 64, 3 repeats, ResNet batch 16 and 2 repeats "
                        "(flags given explicitly still win)")
    args = p.parse_args(argv)
    defaults = (dict(depths=[8, 16, 64], repeats=3, resnet_repeats=2, resnet_batch=16) if args.quick
                else dict(depths=[8, 16, 32, 64, 256], repeats=7, resnet_repeats=5, resnet_batch=64))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.depths = sorted(set(args.depths))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    has_ref = reference is not None and not args.no_reference
    progress = tqdm(total=len(args.depths) + (0 if args.no_resnet else 1), file=sys.stderr,
                    desc="benchmark", unit="config")
    t0 = time.perf_counter()
    rows = bench_toy(args, progress)
    resnet = None if args.no_resnet else bench_resnet(args, progress)
    progress.close()

    print(f"## Memory-free vs ordinary backprop, one training step (CPU, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__})\n")
    print(f"Toy stack: d={args.dim}, f = Linear({args.dim},{args.hidden})-Tanh-Linear"
          f"({args.hidden},{args.dim}) per layer, batch {args.batch}, gamma={args.gamma}; "
          f"median of {args.repeats} steps after {args.warmup} warm-up. Ratios: memory-free / ordinary. "
          "peak: profiler allocation peak of forward+backward, parameter gradients left out; "
          "saved: bytes kept for backward after the forward pass.\n")
    print(toy_table(rows, has_ref))
    if not has_ref:
        print("\n(reference package momentumnet not installed: pip install momentumnet==0.10 --no-deps)")
    if resnet is not None:
        print(f"\nCIFAR {args.resnet_arch} (3x3 conv1, no max-pool), 32x32 inputs, batch {args.resnet_batch}, "
              f"to_momentumnet(gamma={args.gamma}, keep_first=True), cross-entropy; median of "
              f"{args.resnet_repeats} steps. Information buffer: {mb(resnet['memory-free'].buffer)} MB.\n")
        print(resnet_table(resnet, args.resnet_arch))
    print("\nTargets (DESIGN.md):")
    print("\n".join(verdicts(rows, resnet, args.resnet_arch)))
    print(f"\nTimings on a shared CPU are noisy; total benchmark time {time.perf_counter() - t0:.0f} s.")
    if args.top_ops:
        depth = 64 if 64 in args.depths else args.depths[-1]
        print(f"\nTop ops of one memory-free toy step at depth {depth} (self CPU time):\n")
        print(profile_memory_free_step(args, depth, args.top_ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
