"""Benchmark harness: one training step, every contender, side by side; CSV + JSON out.

Each configuration (a workload at one size) runs in a fresh Python process, so that no
allocator cache, compiled kernel or thread pool of one configuration colours another;
inside it the contenders are timed interleaved (each repetition runs every contender
once, starting one contender further each time, so that load from other processes and
the state one leaves behind hit them alike) and their memory is measured
one after the other. One step is ``zero_grad(set_to_none=True)``, forward, loss,
``backward()``.

Contenders: ``original`` (the model a user would otherwise train, by ordinary backprop:
the unconverted torchvision ResNet or ``nn.TransformerEncoder``, the toy stack as a plain
loop; the baseline of every ratio), ``ordinary`` (our converted model with ordinary
backprop, ``memory_efficient="backprop"``), ``checkpoint`` (the original with
``torch.utils.checkpoint``: ``checkpoint_sequential`` in ceil(sqrt(L)) segments of each
stage of L blocks, the toy loop every ceil(sqrt(L)) layers), ``reference`` (the authors'
package ``momentumnet`` 0.10, memory-free, when importable; its failures are recorded,
not hidden), ``exact`` (ours, ``memory_efficient="exact"``) and ``auto`` (ours, the
converter's default). Workloads: the toy stack of the paper's Figure 2 (d=500,
Linear(500,100)-Tanh-Linear(100,500), batch 256, gamma 0.9) by depth; CIFAR-style
torchvision ResNet-18/50/101 (32x32, and 224x224 with a small batch); an
``nn.TransformerEncoder`` by sequence length; and Figure 7's regime (``--figure7``): a
depth-1202 CIFAR ResNet (four stages of 100 Bottleneck blocks, base width 8), where each
contender gets the largest batch whose whole-step peak stays within a budget (measured
at every batch tried, first step included) and its time per sample there.

Memory: ``mresnet_core.memory.training_step_memory``: ``whole_step`` (parameter
gradients included: the headline) and ``activations`` (without them), each the larger of
the first step at the measured batch (after a warm-up at batch 2: where ``auto`` plans)
and a later step. CPU: profiler allocation timeline; CUDA: allocator peak.

    python benchmarks/harness.py --smoke            # seconds (what CI runs)
    python benchmarks/harness.py --quick            # a few minutes on 2 CPU cores
    python benchmarks/harness.py                    # the full set (long on a CPU)
    python benchmarks/harness.py --device cuda      # GPU: allocator peaks, toy 64..1024
    python benchmarks/harness.py --figure7 --sizes 1202   # largest batch within 256 MiB
"""
from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

CONTENDERS = ("original", "ordinary", "checkpoint", "reference", "exact", "auto")
BASELINE = "original"
HERE = Path(__file__).resolve().parent
FIELDS = ["workload", "size", "contender", "status", "time_s", "whole_step_bytes", "activation_bytes",
          "gradient_bytes", "first_step_bytes", "later_step_bytes", "time_ratio", "whole_step_ratio",
          "activation_ratio", "largest_batch", "batch_ratio", "batch_vs_checkpoint", "sample_time_s",
          "budget_bytes", "modes", "error",
          "threads", "device", "torch", "machine", "allocator"]


# ------------------------------------------------------------------------------ profiles

def profile(name: str, device: str) -> list:
    """The configurations of a profile: dicts with workload, size and settings."""
    toy = dict(workload="toy", d=500, hidden=100, batch=256, repeats=10)
    if name == "smoke":
        return [dict(toy, size=4, d=64, hidden=16, batch=32, repeats=1),
                dict(workload="transformer", size=8, d_model=16, nhead=2, layers=3, batch=2, repeats=1),
                dict(workload="deep", size=26, width=2, budget_mib=6, repeats=1)]
    if name == "figure7":  # on a GPU the paper's width and its 32 GiB card (a V100)
        return [dict(workload="deep", size=d, width=64 if device == "cuda" else 8,
                     budget_mib=32768 if device == "cuda" else 256, repeats=3) for d in (302, 1202)]
    if device == "cuda":
        return ([dict(toy, size=d, repeats=10) for d in (64, 128, 256, 512, 1024)]
                + [dict(workload=a, size=32, batch=128, repeats=10) for a in ("resnet18", "resnet50", "resnet101")]
                + [dict(workload=a, size=224, batch=16, repeats=5) for a in ("resnet18", "resnet50")]
                + [dict(workload="transformer", size=s, d_model=256, nhead=8, layers=12, batch=16, repeats=10)
                   for s in (128, 512, 1024)])
    if name == "quick":
        return ([dict(toy, size=d) for d in (8, 16, 64, 256)]
                + [dict(workload="resnet18", size=32, batch=16, repeats=3)]
                + [dict(workload="transformer", size=s, d_model=64, nhead=4, layers=8, batch=8, repeats=3)
                   for s in (64, 256)])
    return ([dict(toy, size=d) for d in (8, 16, 32, 64, 128, 256, 512, 1024)]
            + [dict(workload=a, size=32, batch=32, repeats=3) for a in ("resnet18", "resnet50", "resnet101")]
            + [dict(workload=a, size=224, batch=2, repeats=2) for a in ("resnet18", "resnet50")]
            + [dict(workload="transformer", size=s, d_model=64, nhead=4, layers=12, batch=8, repeats=3)
               for s in (64, 256, 1024)])


# ------------------------------------------------------------------------------ child process

def plain_momentum(fns, gamma: float, segment: int = 0):
    """The toy stack as a user would write it without this package (the ``original``
    baseline): v <- gamma v + (1 - gamma) f(x), x <- x + v, ordinary autograd;
    ``segment`` > 0 runs it under ``torch.utils.checkpoint`` every ``segment`` layers."""
    import torch
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.functions = nn.ModuleList(fns)

        def run(self, lo, hi, x, v):
            for f in self.functions[lo:hi]:
                v = gamma * v + (1 - gamma) * f(x)
                x = x + v
            return x, v

        def forward(self, x):
            v, depth = torch.zeros_like(x), len(self.functions)
            step = segment or depth
            for lo in range(0, depth, step):
                if segment:
                    x, v = checkpoint(self.run, lo, lo + step, x, v, use_reentrant=False)
                else:
                    x, v = self.run(lo, lo + step, x, v)
            return x

    return Plain()


def checkpoint_stages(model, stages=None):
    """``model`` with each of its ``stages`` (nn.Sequential of blocks) run by
    ``checkpoint_sequential`` in ceil(sqrt(blocks)) segments (what a user would do);
    ``stages`` None: ``model`` is itself the nn.Sequential."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint_sequential

    class Segments(nn.Module):
        def __init__(self, blocks):
            super().__init__()
            self.blocks = blocks

        def forward(self, x):
            n = len(self.blocks)
            return checkpoint_sequential(self.blocks, max(1, math.ceil(math.sqrt(n))), x, use_reentrant=False)

    if stages is None:
        return Segments(model)
    for name in stages:
        setattr(model, name, Segments(getattr(model, name)))
    return model


def build(cfg: dict, contender: str, device):
    """(model, inputs, loss) of one contender for one configuration; ``loss(out)`` takes
    the labels of the first ``len(out)`` samples, so smaller batches of the inputs work."""
    import torch
    import torchvision
    from torch import nn
    from mresnet_core import MomentumNet, to_momentumnet
    from mresnet_core.models import build_deep_resnet

    gamma = 0.9
    mode = {"ordinary": "backprop", "exact": "exact", "auto": "auto"}.get(contender)
    torch.manual_seed(0)
    w = cfg["workload"]
    batch = cfg.get("batch", 1)
    if w == "toy":
        fns = [nn.Sequential(nn.Linear(cfg["d"], cfg["hidden"]), nn.Tanh(), nn.Linear(cfg["hidden"], cfg["d"]))
               for _ in range(cfg["size"])]
        x = torch.randn(batch, cfg["d"], generator=torch.Generator().manual_seed(1))
        if contender in ("original", "checkpoint"):
            segment = math.ceil(math.sqrt(len(fns))) if contender == "checkpoint" else 0
            model = plain_momentum(fns, gamma, segment)
        elif contender == "reference":
            import momentumnet
            model = momentumnet.MomentumNet(fns, gamma=gamma, use_backprop=False)
        else:
            model = MomentumNet(fns, gamma, memory_efficient=mode)
        loss = lambda out: out.pow(2).mean()  # noqa: E731
    elif w.startswith("resnet") or w == "deep":
        if w == "deep":  # Figure 7: four stages of (depth - 2) / 12 Bottleneck blocks
            base = build_deep_resnet((cfg["size"] - 2) // 12, width=cfg.get("width", 8))
            image = 32
        else:
            base = getattr(torchvision.models, w)(num_classes=10)
            image = cfg["size"]
            if image <= 64:  # CIFAR stem: 3x3 stride-1 conv1, no max-pool
                base.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
                base.maxpool = nn.Identity()
        x = torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(1))
        # labels for up to 4096 samples: the Figure 7 rows try many batch sizes on one model
        y = torch.randint(0, 10, (max(batch, 4096),), generator=torch.Generator().manual_seed(2)).to(device)
        if contender == "original":
            model = base
        elif contender == "checkpoint":
            model = checkpoint_stages(base, ("layer1", "layer2", "layer3", "layer4"))
        elif contender == "reference":
            import momentumnet
            model = momentumnet.transform_to_momentumnet(base, gamma=gamma, use_backprop=False)
        else:
            model = to_momentumnet(base, gamma, memory_efficient=mode)
        loss = lambda out: nn.functional.cross_entropy(out, y[:len(out)])  # noqa: E731
    elif w == "transformer":
        layer = nn.TransformerEncoderLayer(cfg["d_model"], cfg["nhead"], 4 * cfg["d_model"], dropout=0.0,
                                           batch_first=True)
        enc = nn.TransformerEncoder(layer, cfg["layers"], enable_nested_tensor=False)
        x = torch.randn(batch, cfg["size"], cfg["d_model"], generator=torch.Generator().manual_seed(1))
        if contender == "original":
            model = enc
        elif contender == "checkpoint":
            model = checkpoint_stages(nn.Sequential(*enc.layers))  # no norm, no mask here
        elif contender == "reference":
            import momentumnet
            model = momentumnet.transform_to_momentumnet(enc, sub_layers=["layers"], gamma=gamma,
                                                         use_backprop=False, keep_first_layer=False)
        else:
            model = to_momentumnet(enc, gamma, stages=["layers"], keep_first=False, memory_efficient=mode)
        loss = lambda out: out.pow(2).mean()  # noqa: E731
    else:
        raise ValueError(f"unknown workload {w!r}")
    return model.to(device).train(), x.to(device), loss


def _measure(model, x, loss, device):
    """TrainingStepMemory of one step of ``model`` on ``x`` (no warm-up: the step is
    measured as it comes, the first at a new input shape included)."""
    from mresnet_core.memory import training_step_memory
    return training_step_memory(model, x, loss=loss, device=device, warmup=0)


def _timed_step(model, x, loss, sync) -> float:
    """Seconds of one training step (gradients set to None first, the device synchronised)."""
    gc.collect()
    model.zero_grad(set_to_none=True)
    sync()
    t0 = time.perf_counter()
    loss(model(x)).backward()
    sync()
    return time.perf_counter() - t0


def _modes(model) -> str:
    from mresnet_core.memory import describe
    return "+".join(sorted({r["mode"] + (f" (last {r['kept']} of {r['depth']} graphs kept)" if r["kept"] else "")
                            for r in describe(model) if r["mode"]}))


def run_config(cfg: dict, contenders, device_name: str, threads: int) -> list:
    """All contenders of one configuration: rows with time and memory (one process).

    Memory first, for each contender: a warm-up step at batch 2 (kernels loaded, nothing
    planned for the measured shape yet), then the first step at the measured batch and a
    later one; the whole-step peak reported is the larger. Then the interleaved timing.
    """
    import torch

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    meta = _meta(cfg, device_name, device)
    built, rows = {}, {}
    for c in contenders:
        try:
            model, x, loss = build(cfg, c, device)
            small = x[:2] if len(x) > 2 else x[:1]  # another shape than the measured batch where possible
            model.zero_grad(set_to_none=True)
            loss(model(small)).backward()
            first = _measure(model, x, loss, device)
            later = _measure(model, x, loss, device)
            built[c] = (model, x, loss)
            rows[c] = dict(meta, contender=c, status="ok", times=[],
                           whole_step_bytes=max(first.whole_step, later.whole_step),
                           activation_bytes=max(first.activations, later.activations),
                           gradient_bytes=later.gradients, first_step_bytes=first.whole_step,
                           later_step_bytes=later.whole_step, modes=_modes(model))
        except Exception as err:  # noqa: BLE001 - reported in the table, not hidden
            rows[c] = dict(meta, contender=c, status="failed", error=f"{type(err).__name__}: {err}"[:300])
    order = list(built.items())
    # every module is imported by now: the collector never traces those objects again, so
    # the gc.collect() before each timed step costs milliseconds, not a quarter second
    gc.collect()
    gc.freeze()
    for r in range(cfg["repeats"] if order else 0):
        # each repetition starts at the next contender: what one leaves behind (allocator
        # state, caches) then falls on every contender alike, not always on the same one
        shift = r % len(order)
        for c, (model, x, loss) in order[shift:] + order[:shift]:
            rows[c]["times"].append(_timed_step(model, x, loss, sync))
    for c in built:
        rows[c]["time_s"] = statistics.median(rows[c].pop("times"))
    for r in rows.values():
        r.pop("times", None)
    return list(rows.values())


def allocator() -> str:
    """The CPU memory allocator the runs use, as the environment sets it (the children
    inherit it): a preloaded allocator library, glibc malloc's tunables, or the default.
    It moves the CPU time ratios: glibc returns large freed blocks to the system, so
    their pages are faulted in afresh in every step (benchmarks/RESULTS.md)."""
    # torch's own switch: tensors of 2 MiB and more on huge pages (no help here: RESULTS.md)
    huge = os.environ.get("THP_MEM_ALLOC_ENABLE")
    pages = f", THP_MEM_ALLOC_ENABLE={huge}" if huge else ""
    preloaded = [Path(p).name for p in os.environ.get("LD_PRELOAD", "").replace(":", " ").split()
                 if "malloc" in Path(p).name]
    if preloaded:
        return " ".join(preloaded) + " (LD_PRELOAD)" + pages
    tunables = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES")
    return "glibc malloc, " + (" ".join(tunables) if tunables else "default settings") + pages


def _meta(cfg, device_name, device) -> dict:
    import torch
    return dict(workload=cfg["workload"], size=cfg["size"], threads=torch.get_num_threads(), device=device_name,
                torch=torch.__version__, machine=f"{platform.machine()} {platform.node()} ({os.cpu_count()} cpus)"
                + (f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""), allocator=allocator())


def run_fit_config(cfg: dict, contenders, device_name: str, threads: int) -> list:
    """Figure 7's regime: for each contender, the largest batch whose whole-step peak
    (the larger of the first step at that batch and a later one) is within
    ``cfg['budget_mib']`` (``mresnet_core.memory.largest_fitting_batch``), and the time
    per sample at that batch (median of ``cfg['repeats']`` steps). One model per
    contender, measured at each batch."""
    import torch
    from mresnet_core.memory import largest_fitting_batch

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    budget = int(cfg["budget_mib"] * 2**20)
    rows = []
    for i, c in enumerate(contenders):
        row = dict(_meta(cfg, device_name, device), contender=c, budget_bytes=budget)
        try:
            model, x, loss = build(dict(cfg, batch=1), c, device)
            model.zero_grad(set_to_none=True)
            loss(model(x)).backward()  # warm-up at batch 1
            if i == 0:  # the modules are imported: keep the collector off their objects (run_config)
                gc.collect()
                gc.freeze()
            images = torch.randn(256, *x.shape[1:], generator=torch.Generator().manual_seed(1)).to(device)

            def first_step(b):
                batch = images[torch.arange(b) % len(images)]
                return _measure(model, batch, loss, device).whole_step

            fits, seen = largest_fitting_batch(first_step, budget)
            row.update(status="ok", largest_batch=fits, peaks={str(k): v for k, v in sorted(seen.items())})
            if fits:
                batch = images[torch.arange(fits) % len(images)]
                later = _measure(model, batch, loss, device)
                row.update(whole_step_bytes=max(seen[fits], later.whole_step), first_step_bytes=seen[fits],
                           later_step_bytes=later.whole_step, activation_bytes=later.activations,
                           gradient_bytes=later.gradients, modes=_modes(model))
                if row["whole_step_bytes"] > budget:  # a later step above the first: one fewer
                    row["status"] = f"later step above the budget at {fits}"
                times = [_timed_step(model, batch, loss, sync) for _ in range(cfg["repeats"])]
                row.update(time_s=statistics.median(times), sample_time_s=statistics.median(times) / fits)
            del model
            gc.collect()
        except Exception as err:  # noqa: BLE001
            row.update(status="failed", error=f"{type(err).__name__}: {err}"[:300])
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ parent

def run_in_fresh_process(cfg: dict, contenders, device: str, threads: int, timeout: float) -> list:
    """run_config in a new interpreter; failures come back as rows with the error."""
    spec = json.dumps(dict(cfg=cfg, contenders=list(contenders), device=device, threads=threads))
    # PYTHONPATH first: a caller that put a package there (the notebook's own, a patched
    # copy in the trip tests) benchmarks that one; this checkout otherwise
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + [str(HERE.parent)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec],
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return [dict(workload=cfg["workload"], size=cfg["size"], contender=c, status="failed",
                     error=f"timed out after {timeout:.0f} s") for c in contenders]
    for line in done.stdout.splitlines():
        if line.startswith("HARNESS_ROWS "):
            return json.loads(line[len("HARNESS_ROWS "):])
    why = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
    return [dict(workload=cfg["workload"], size=cfg["size"], contender=c, status="failed",
                 error=f"child exited {done.returncode}: {why}") for c in contenders]


def add_ratios(rows: list) -> list:
    """Ratios of every row against the baseline ('original', the unconverted model) of its
    configuration: time, whole-step and activation peaks; for the Figure 7 rows, the
    largest batch against the baseline's and against checkpointing's."""
    def by(name):
        return {(r["workload"], r["size"]): r for r in rows if r["contender"] == name and r["status"] == "ok"}

    base, ckpt = by(BASELINE), by("checkpoint")
    for r in rows:
        o = base.get((r["workload"], r["size"]))
        for key, field in (("time_ratio", "time_s"), ("whole_step_ratio", "whole_step_bytes"),
                           ("activation_ratio", "activation_bytes")):
            ok = o is not None and r.get(field) is not None and o.get(field) and "largest_batch" not in r
            r[key] = round(r[field] / o[field], 4) if ok else None
        if r.get("largest_batch") is not None:
            for key, ref in (("batch_ratio", o), ("batch_vs_checkpoint", ckpt.get((r["workload"], r["size"])))):
                ok = ref is not None and ref.get("largest_batch")
                r[key] = round(r["largest_batch"] / ref["largest_batch"], 3) if ok else None
    return rows


def fit_table(rows: list) -> str:
    """Markdown of the Figure 7 rows: per contender, the largest batch within the budget,
    its ratio to the original's and to checkpointing's, the time per sample there."""
    lines = ["| workload | depth | budget MiB | contender | largest batch | vs original | vs checkpoint | "
             "ms per sample | whole-step MiB at it | modes |", "|" + "---|" * 10]

    def num(r, key, fmt, scale=1.0):
        return fmt.format(r[key] * scale) if r.get(key) is not None else "-"

    for r in rows:
        cells = [r["workload"], str(r["size"]), f"{r['budget_bytes'] / 2**20:.0f}", r["contender"]]
        if r["status"] != "ok":
            cells += ["FAILED", "", "", "", "", r.get("error", r["status"])]
        else:
            cells += [str(r["largest_batch"]), num(r, "batch_ratio", "{:.1f}x"),
                      num(r, "batch_vs_checkpoint", "{:.2f}x"), num(r, "sample_time_s", "{:.0f}", 1e3),
                      num(r, "whole_step_bytes", "{:.1f}", 2.0**-20), r.get("modes", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: list, contenders, allocator_used: str | None = None) -> str:
    """Markdown: per configuration, the original model's absolute figures and every
    contender's ratios to it; the Figure 7 rows as `fit_table`."""
    fit = [r for r in rows if r.get("budget_bytes") is not None]
    rows = [r for r in rows if r.get("budget_bytes") is None]
    others = [c for c in contenders if c != BASELINE]
    meta = next((r for r in rows + fit if r.get("threads")), {})
    head = (f"Device {meta.get('device', '?')}, {meta.get('threads', '?')} thread(s), torch "
            f"{meta.get('torch', '?')}, {meta.get('machine', '?')}"
            + (f", CPU allocator: {allocator_used}" if allocator_used else "") + ". Ratios: contender / the original "
            "(unconverted) model trained by ordinary backprop (time: median step; whole step: the larger "
            "peak of the first step at the measured batch and a later one, parameter gradients "
            "included; act.: without them).\n\n")
    if not rows:
        return head + fit_table(fit)
    cols = (["workload", "size", "original ms", "original whole-step MiB"]
            + [f"{c} time" for c in others] + [f"{c} whole-step" for c in others]
            + [f"{c} act." for c in others])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    by = {}
    for r in rows:
        by.setdefault((r["workload"], r["size"]), {})[r["contender"]] = r
    failures = []
    for (w, s), rs in by.items():
        o = rs.get(BASELINE, {})
        cell = lambda c, k: (f"{rs[c][k]:.2f}x" if c in rs and rs[c].get(k) is not None  # noqa: E731
                             else ("FAILED" if c in rs and rs[c]["status"] != "ok" else "-"))
        vals = [w, str(s), f"{o['time_s'] * 1e3:.1f}" if o.get("time_s") else "-",
                f"{o['whole_step_bytes'] / 2**20:.2f}" if o.get("whole_step_bytes") else "-"]
        vals += [cell(c, "time_ratio") for c in others] + [cell(c, "whole_step_ratio") for c in others]
        vals += [cell(c, "activation_ratio") for c in others]
        lines.append("| " + " | ".join(vals) + " |")
        failures += [f"- {w} {s} {c}: {r.get('error')}" for c, r in rs.items() if r["status"] != "ok"]
    modes = sorted({f"{r['workload']} {r['size']}: auto -> {r['modes']}" for r in rows
                    if r["contender"] == "auto" and r.get("modes")})
    out = head + "\n".join(lines)
    if fit:
        out += "\n\nFigure 7 regime (largest batch within the budget, first step included):\n\n" + fit_table(fit)
    if modes:
        out += "\n\nModes chosen by auto: " + "; ".join(modes)
    if failures:
        out += "\n\nFailures (reported, not hidden):\n" + "\n".join(failures)
    return out


def write_results(out: Path, rows: list, name: str, device: str, threads: int, torch_version: str,
                  t0: float) -> dict:
    """results.csv and results.json in ``out`` (rewritten after every configuration, so an
    interrupted run keeps what it measured)."""
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    info = dict(profile=name, device=device, threads=threads, torch=torch_version,
                machine=f"{platform.platform()} ({os.cpu_count()} cpus)", python=platform.python_version(),
                allocator=allocator(), date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                seconds=round(time.perf_counter() - t0, 1), rows=rows)
    (out / "results.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="two tiny configurations (seconds)")
    p.add_argument("--quick", action="store_true", help="toy 8..256, ResNet-18, Transformer (minutes)")
    p.add_argument("--figure7", action="store_true", help="Figure 7's regime: depth-302 and -1202 CIFAR "
                   "ResNets (width 8; 64 on a GPU), largest batch within a budget for every contender (depth "
                   "1202: about 12 minutes on 2 cores)")
    p.add_argument("--budget-mib", type=float, default=None, help="memory budget of the Figure 7 rows "
                   "(default 256 MiB on the CPU, 32 GiB on a GPU)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    p.add_argument("--workloads", default=None, help="comma-separated filter, e.g. toy,resnet18")
    p.add_argument("--sizes", default=None, help="comma-separated filter on sizes (toy depths, "
                   "image sizes, sequence lengths), e.g. 8,64")
    p.add_argument("--out", default=None, help="folder for results.csv/results.json "
                   "(default benchmarks/results/<profile>-<device>)")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per contender and configuration "
                   "(default: the profile's, 10 for the toy stack)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        run = run_fit_config if "budget_mib" in spec["cfg"] else run_config
        rows = run(spec["cfg"], spec["contenders"], spec["device"], spec["threads"])
        print("HARNESS_ROWS " + json.dumps(rows))
        return 0
    import torch  # only for the default thread count
    threads = args.threads or torch.get_num_threads()
    name = "smoke" if args.smoke else "quick" if args.quick else "figure7" if args.figure7 else "full"
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad or BASELINE not in contenders:
        p.error(f"contenders must include {BASELINE!r} and come from {CONTENDERS}, got {bad or contenders}")
    configs = profile(name, args.device)
    if args.workloads:
        keep = set(args.workloads.split(","))
        configs = [c for c in configs if c["workload"] in keep]
    if args.budget_mib:
        configs = [dict(c, budget_mib=args.budget_mib) if "budget_mib" in c else c for c in configs]
    if args.repeats:
        configs = [dict(c, repeats=args.repeats) for c in configs]
    if args.sizes:
        sizes = {int(v) for v in args.sizes.split(",")}
        configs = [c for c in configs if c["size"] in sizes]
    out = Path(args.out) if args.out else HERE / "results" / f"{name}-{args.device}"
    out.mkdir(parents=True, exist_ok=True)
    rows, t0 = [], time.perf_counter()
    info = write_results(out, rows, name, args.device, threads, torch.__version__, t0)
    for i, cfg in enumerate(configs, 1):
        print(f"[{i}/{len(configs)}] {cfg['workload']} {cfg['size']}", file=sys.stderr, flush=True)
        rows += run_in_fresh_process(cfg, contenders, args.device, threads, args.timeout)
        info = write_results(out, add_ratios(rows), name, args.device, threads, torch.__version__, t0)
    print(table(rows, contenders, info["allocator"]))
    print(f"\n{len(configs)} configurations in {info['seconds']:.0f} s; results in {out}/results.csv and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
