"""Benchmark harness: one training step, every contender, side by side; CSV + JSON out.

Each configuration (a workload at one size) runs in a fresh Python process, so that no
allocator cache, compiled kernel or thread pool of one configuration colours another;
inside it the contenders are timed interleaved (each repetition runs every contender
once, starting one contender further each time, so that load from other processes and
the state one leaves behind hit them alike) and their memory is measured
one after the other. One step is ``zero_grad(set_to_none=True)``, forward, loss,
``backward()``.

Contenders: ``ordinary`` (our stacks with ordinary backprop, the baseline of every
ratio), ``checkpoint`` (the same with ``torch.utils.checkpoint`` every ceil(sqrt(L))
layers of each stack), ``reference`` (the authors' package ``momentumnet`` 0.10,
memory-free, when importable; its failures are recorded, not hidden), ``exact`` (ours,
``memory_efficient=True``) and ``auto`` (ours, ``memory_efficient="auto"``, the
converter's default). Workloads: the toy stack of the paper's Figure 2 (d=500,
Linear(500,100)-Tanh-Linear(100,500), batch 256, gamma 0.9) by depth; CIFAR-style
torchvision ResNet-18/50/101 converted by ``to_momentumnet`` (32x32, and 224x224 with a
small batch); a converted ``nn.TransformerEncoder`` by sequence length.

Memory: ``mresnet_core.memory.training_step_memory``: ``whole_step`` (parameter
gradients included: the headline) and ``activations`` (without them). CPU: profiler
allocation timeline; CUDA: allocator peak.

    python benchmarks/harness.py --smoke            # seconds (what CI runs)
    python benchmarks/harness.py --quick            # a few minutes on 2 CPU cores
    python benchmarks/harness.py                    # the full set (long on a CPU)
    python benchmarks/harness.py --device cuda      # GPU: allocator peaks, toy 64..1024
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

CONTENDERS = ("ordinary", "checkpoint", "reference", "exact", "auto")
HERE = Path(__file__).resolve().parent
FIELDS = ["workload", "size", "contender", "status", "time_s", "whole_step_bytes", "activation_bytes",
          "gradient_bytes", "time_ratio", "whole_step_ratio", "activation_ratio", "modes", "error",
          "threads", "device", "torch", "machine"]


# ------------------------------------------------------------------------------ profiles

def profile(name: str, device: str) -> list:
    """The configurations of a profile: dicts with workload, size and settings."""
    toy = dict(workload="toy", d=500, hidden=100, batch=256, repeats=10)
    if name == "smoke":
        return [dict(toy, size=4, d=64, hidden=16, batch=32, repeats=1),
                dict(workload="transformer", size=8, d_model=16, nhead=2, layers=3, batch=2, repeats=1)]
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

def _checkpointed(model, torch, nn):
    """Replace every momentum stack of ``model`` (ordinary backprop) by one that runs
    ``torch.utils.checkpoint`` over segments of ceil(sqrt(L)) layers."""
    from torch.utils.checkpoint import checkpoint
    from mresnet_core import MomentumNet
    from mresnet_core.recompute import plain_steps

    class Checkpointed(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, *args, **kwargs):
            net = self.net
            stack = net._stack()
            fns = list(net.functions)
            seg = max(1, math.ceil(math.sqrt(len(fns))))
            v = None

            def run(lo, x, v):
                sub = type(stack)(functions=fns[lo:lo + seg], residual_of=stack.residual_of, n=stack.n)
                return plain_steps(sub, x, v, lambda i, m, xi: stack.residual_of(m, xi, args, kwargs))

            for lo in range(0, len(fns), seg):
                if v is None:
                    v = torch.zeros_like(x)
                x, v = checkpoint(run, lo, x, v, use_reentrant=False)
            return x

    if isinstance(model, MomentumNet):
        return Checkpointed(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, MomentumNet):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, Checkpointed(m))
    return model


def build(cfg: dict, contender: str, device):
    """(model, inputs, loss) of one contender for one configuration."""
    import torch
    import torchvision
    from torch import nn
    from mresnet_core import MomentumNet, to_momentumnet

    gamma = 0.9
    mode = {"ordinary": False, "checkpoint": False, "exact": True, "auto": "auto"}.get(contender)
    torch.manual_seed(0)
    w = cfg["workload"]
    if w == "toy":
        fns = [nn.Sequential(nn.Linear(cfg["d"], cfg["hidden"]), nn.Tanh(), nn.Linear(cfg["hidden"], cfg["d"]))
               for _ in range(cfg["size"])]
        x = torch.randn(cfg["batch"], cfg["d"], generator=torch.Generator().manual_seed(1))
        if contender == "reference":
            import momentumnet
            model = momentumnet.MomentumNet(fns, gamma=gamma, use_backprop=False)
        else:
            model = MomentumNet(fns, gamma, memory_efficient=mode)
        loss = lambda out: out.pow(2).mean()  # noqa: E731
    elif w.startswith("resnet"):
        base = getattr(torchvision.models, w)(num_classes=10)
        if cfg["size"] <= 64:  # CIFAR stem: 3x3 stride-1 conv1, no max-pool
            base.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            base.maxpool = nn.Identity()
        x = torch.randn(cfg["batch"], 3, cfg["size"], cfg["size"], generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 10, (cfg["batch"],), generator=torch.Generator().manual_seed(2)).to(device)
        if contender == "reference":
            import momentumnet
            model = momentumnet.transform_to_momentumnet(base, gamma=gamma, use_backprop=False)
        else:
            model = to_momentumnet(base, gamma, memory_efficient=mode)
        loss = lambda out: nn.functional.cross_entropy(out, y)  # noqa: E731
    elif w == "transformer":
        layer = nn.TransformerEncoderLayer(cfg["d_model"], cfg["nhead"], 4 * cfg["d_model"], dropout=0.0,
                                           batch_first=True)
        enc = nn.TransformerEncoder(layer, cfg["layers"], enable_nested_tensor=False)
        x = torch.randn(cfg["batch"], cfg["size"], cfg["d_model"], generator=torch.Generator().manual_seed(1))
        if contender == "reference":
            import momentumnet
            model = momentumnet.transform_to_momentumnet(enc, sub_layers=["layers"], gamma=gamma,
                                                         use_backprop=False, keep_first_layer=False)
        else:
            model = to_momentumnet(enc, gamma, stages=["layers"], keep_first=False, memory_efficient=mode)
        loss = lambda out: out.pow(2).mean()  # noqa: E731
    else:
        raise ValueError(f"unknown workload {w!r}")
    if contender == "checkpoint":
        model = _checkpointed(model, torch, nn)
    return model.to(device).train(), x.to(device), loss


def run_config(cfg: dict, contenders, device_name: str, threads: int) -> list:
    """All contenders of one configuration: rows with time and memory (one process)."""
    import torch
    from mresnet_core.memory import describe, training_step_memory

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    meta = dict(workload=cfg["workload"], size=cfg["size"], threads=torch.get_num_threads(), device=device_name,
                torch=torch.__version__, machine=f"{platform.machine()} {platform.node()} ({os.cpu_count()} cpus)"
                + (f" {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    built, rows = {}, {}
    for c in contenders:
        try:
            model, x, loss = build(cfg, c, device)
            for _ in range(2):  # warm-up: compiled kernels, plans, allocator
                model.zero_grad(set_to_none=True)
                loss(model(x)).backward()
            built[c] = (model, x, loss)
            rows[c] = dict(meta, contender=c, status="ok", times=[])
        except Exception as err:  # noqa: BLE001 - reported in the table, not hidden
            rows[c] = dict(meta, contender=c, status="failed", error=f"{type(err).__name__}: {err}"[:300])
    order = list(built.items())
    for r in range(cfg["repeats"] if order else 0):
        # each repetition starts at the next contender: what one leaves behind (allocator
        # state, caches) then falls on every contender alike, not always on the same one
        shift = r % len(order)
        for c, (model, x, loss) in order[shift:] + order[:shift]:
            gc.collect()
            model.zero_grad(set_to_none=True)
            sync()
            t0 = time.perf_counter()
            loss(model(x)).backward()
            sync()
            rows[c]["times"].append(time.perf_counter() - t0)
    for c, (model, x, loss) in built.items():
        try:
            m = training_step_memory(model, x, loss=loss, device=device, warmup=0)
            rows[c].update(whole_step_bytes=m.whole_step, activation_bytes=m.activations,
                           gradient_bytes=m.gradients)
            modes = sorted({r["mode"] + (f" (last {r['kept']} of {r['depth']} graphs kept)" if r["kept"] else "")
                            for r in describe(model) if r["mode"]})
            rows[c]["modes"] = "+".join(modes)
        except Exception as err:  # noqa: BLE001
            rows[c].update(status="failed", error=f"memory: {type(err).__name__}: {err}"[:300])
        rows[c]["time_s"] = statistics.median(rows[c].pop("times"))
    for r in rows.values():
        r.pop("times", None)
    return list(rows.values())


# ------------------------------------------------------------------------------ parent

def run_in_fresh_process(cfg: dict, contenders, device: str, threads: int, timeout: float) -> list:
    """run_config in a new interpreter; failures come back as rows with the error."""
    spec = json.dumps(dict(cfg=cfg, contenders=list(contenders), device=device, threads=threads))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
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
    """time/whole-step/activation ratios of every row against 'ordinary' of its configuration."""
    base = {(r["workload"], r["size"]): r for r in rows if r["contender"] == "ordinary" and r["status"] == "ok"}
    for r in rows:
        o = base.get((r["workload"], r["size"]))
        for key, field in (("time_ratio", "time_s"), ("whole_step_ratio", "whole_step_bytes"),
                           ("activation_ratio", "activation_bytes")):
            ok = o is not None and r.get(field) is not None and o.get(field)
            r[key] = round(r[field] / o[field], 4) if ok else None
    return rows


def table(rows: list, contenders) -> str:
    """Markdown: per configuration, ordinary's absolute figures and every contender's ratios."""
    others = [c for c in contenders if c != "ordinary"]
    meta = next((r for r in rows if r.get("threads")), {})
    head = (f"Device {meta.get('device', '?')}, {meta.get('threads', '?')} thread(s), torch "
            f"{meta.get('torch', '?')}, {meta.get('machine', '?')}. Ratios: contender / ordinary backprop "
            "(time: median step; whole step: peak with parameter gradients; act.: without them).\n\n")
    cols = (["workload", "size", "ordinary ms", "ordinary whole-step MiB"]
            + [f"{c} time" for c in others] + [f"{c} whole-step" for c in others]
            + [f"{c} act." for c in others])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    by = {}
    for r in rows:
        by.setdefault((r["workload"], r["size"]), {})[r["contender"]] = r
    failures = []
    for (w, s), rs in by.items():
        o = rs.get("ordinary", {})
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
                date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                seconds=round(time.perf_counter() - t0, 1), rows=rows)
    (out / "results.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="two tiny configurations (seconds)")
    p.add_argument("--quick", action="store_true", help="toy 8..256, ResNet-18, Transformer (minutes)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    p.add_argument("--workloads", default=None, help="comma-separated filter, e.g. toy,resnet18")
    p.add_argument("--sizes", default=None, help="comma-separated filter on sizes (toy depths, "
                   "image sizes, sequence lengths), e.g. 8,64")
    p.add_argument("--out", default=None, help="folder for results.csv/results.json "
                   "(default benchmarks/results/<profile>-<device>)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per configuration")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        rows = run_config(spec["cfg"], spec["contenders"], spec["device"], spec["threads"])
        print("HARNESS_ROWS " + json.dumps(rows))
        return 0
    import torch  # only for the default thread count
    threads = args.threads or torch.get_num_threads()
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in contenders if c not in CONTENDERS]
    if bad or "ordinary" not in contenders:
        p.error(f"contenders must include 'ordinary' and come from {CONTENDERS}, got {bad or contenders}")
    configs = profile(name, args.device)
    if args.workloads:
        keep = set(args.workloads.split(","))
        configs = [c for c in configs if c["workload"] in keep]
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
    print(table(rows, contenders))
    print(f"\n{len(configs)} configurations in {info['seconds']:.0f} s; results in {out}/results.csv and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
