"""Train and evaluate the (Momentum) ResNets: a library API and ``python -m mresnet_core.train``.

Library::

    from mresnet_core.train import TrainConfig, train, evaluate
    result = train(TrainConfig(model="mresnet18", width=8, epochs=5, lr=0.05))
    result.history[-1]["test_acc"], result.model

``train(config, model=m)`` continues training (fine-tuning) an existing model; ``out``
set: every epoch is checkpointed there (model, optimizer, scheduler, RNG states, config,
history; written atomically) with metrics in ``metrics.csv`` and ``metrics.json``, and
``resume=True`` continues from the last checkpoint with the same result as an
uninterrupted run (bit for bit on the CPU with ``workers=0``).

Several processes: ``torchrun --nproc_per_node N -m mresnet_core.train ...`` trains with
DistributedDataParallel (gloo on the CPU, nccl on GPUs); ``batch_size`` is the global
batch, split evenly over the processes; only rank 0 writes files and prints. BatchNorm
normalises with each process's own part of the batch unless ``sync_bn`` (GPUs only: this
torch's SyncBatchNorm refuses CPU tensors) or ``freeze_bn`` (running statistics, e.g.
for fine-tuning with tiny batches).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ._torch_private import BatchNormBase
from .data import CLASS_SUBSETS, DATASETS, ImageData, load_data, make_loader, start_epoch
from .models import (INIT_VELOCITIES, MODEL_NAMES, STEMS, build_model, check_gamma,
                     momentum_stacks, parse_name)
from .modes import DEFAULT_MEMORY_MODE, MODE_NAMES, memory_mode

CHECKPOINT = "checkpoint.pt"
# config fields that may differ between a run and its resumption
RESUMABLE_CHANGES = ("epochs", "workers", "device", "out", "resume", "threads",
                     "data_dir", "download")  # data downloaded on a login node, trained offline


class ConfigError(ValueError):
    """A training setting is invalid or contradicts the checkpoint it should resume."""


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults: the paper's CIFAR-10 recipe (SGD, lr 0.01
    divided by 10 at epoch 180 of 220, momentum 0.9, weight decay 5e-4, batch 128), as the
    reference script ``run_CIFAR_10.py`` trains; CIFAR-10 is downloaded into the data root
    (``paths.data_root()``) when missing. ``dataset="digits"`` trains offline."""

    model: str = "mresnet18"
    gamma: float = 0.9
    init_velocity: str = "zero"
    memory: str = str(DEFAULT_MEMORY_MODE)
    amp: bool = False
    width: int = 64
    stem: str = "cifar"
    weights: str | None = None
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = True
    image_size: int | None = None
    augment: bool = True
    classes: tuple[int, ...] | None = None
    train_images: int | None = None
    test_images: int | None = None
    epochs: int = 220
    batch_size: int = 128
    lr: float = 0.01
    lr_milestones: tuple[int, ...] = (180,)
    lr_factor: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    freeze_bn: bool = False
    sync_bn: bool = False
    seed: int = 0
    workers: int = 0
    device: str = "auto"
    threads: int | None = None
    out: str | None = None
    resume: bool = False

    def check(self) -> None:
        """A ConfigError naming the first invalid setting."""
        try:
            parse_name(self.model)
            check_gamma(self.gamma)
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e)) from None
        try:
            self.memory = str(memory_mode(self.memory))
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if self.init_velocity not in INIT_VELOCITIES:
            raise ConfigError(f"init_velocity must be one of {INIT_VELOCITIES}, got {self.init_velocity!r}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.stem not in STEMS:
            raise ConfigError(f"stem must be one of {STEMS}, got {self.stem!r}")
        for name in ("epochs", "batch_size", "width"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("train_images", "test_images"):
            n = getattr(self, name)
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ConfigError(f"{name} must be a positive integer (or unset: the whole set), got {n!r}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer (or unset: torch's choice), got {self.threads!r}")
        if not 0 < self.lr_factor <= 1:
            raise ConfigError(f"lr_factor multiplies the learning rate at each milestone and must lie in "
                              f"(0, 1], got {self.lr_factor}")
        if self.device != "auto":
            try:
                device = torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ConfigError(f"unknown device {self.device!r}; use auto, cpu, cuda or cuda:N") from None
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ConfigError(f"device {self.device!r} asked for, but CUDA is not available here; "
                                  "use --device cpu (or auto)")
            if device.type not in ("cpu", "cuda"):
                raise ConfigError(f"device {self.device!r}: the trainer runs on cpu or cuda")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError("need lr > 0, weight_decay >= 0 and momentum in [0, 1)")
        if any(m < 1 for m in self.lr_milestones):
            raise ConfigError(f"lr_milestones are epochs >= 1, got {list(self.lr_milestones)}")
        if self.classes is not None and self.dataset not in CLASS_SUBSETS:
            raise ConfigError(f"class subsets (classes / --classes) exist for {' and '.join(CLASS_SUBSETS)} only")
        if self.resume and self.out is None:
            raise ConfigError("resume needs the output folder (out / --out) of the run to continue")


#: The quick profile for notebooks on a 2-core CPU (measured: about 5 s per training of a
#: ResNet-18 and 10 s of a memory-free Momentum ResNet-18 with one thread, 96-98 % test
#: accuracy on the digits): width 8, 16x16 digits, batch 64, lr 0.05 divided by 10 after
#: epoch 4 of 6, one thread.
QUICK = dict(width=8, dataset="digits", image_size=16, batch_size=64, lr=0.05, epochs=6,
             lr_milestones=(4,), threads=1, memory="exact")


def quick_config(model: str = "mresnet18", **overrides) -> TrainConfig:
    """The quick-profile TrainConfig (:data:`QUICK`) for ``model``, with ``overrides``."""
    return TrainConfig(**{**QUICK, "model": model, **overrides})


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model (unwrapped) and per-epoch metrics."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    config: TrainConfig | None = None
    out: Path | None = None


# ------------------------------------------------------------------------------ pieces
def make_optimizer(model: nn.Module, config: TrainConfig):
    """SGD with momentum and weight decay, and the step schedule (x lr_factor at each
    milestone epoch): the paper's optimiser."""
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.lr_milestones),
                                                     gamma=config.lr_factor)
    return optimizer, scheduler


@torch.no_grad()
def evaluate(model: nn.Module, loader, device="cpu") -> tuple[float, float]:
    """(mean cross-entropy, accuracy in %) of ``model`` in eval mode over ``loader``,
    summed over all processes when torch.distributed is running."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        sums += torch.stack([nn.functional.cross_entropy(out, y, reduction="sum").double(),
                             (out.argmax(1) == y).sum().double(),
                             torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    model.train(was_training)
    loss, correct, n = _all_reduce(sums).tolist()
    return loss / max(n, 1), 100.0 * correct / max(n, 1)


def set_train_mode(model: nn.Module, freeze_bn: bool = False) -> None:
    """model.train(), with the BatchNorm layers left in eval mode when ``freeze_bn``."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, BatchNormBase):
                m.eval()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def make_scaler(config: TrainConfig, device: torch.device):
    """The gradient scaler of ``--amp``: active for CUDA float16 only (bfloat16 on the CPU
    has float32's range and needs none)."""
    enabled = config.amp and device.type == "cuda"
    try:
        return torch.amp.GradScaler(device.type, enabled=enabled)
    except (AttributeError, TypeError):  # torch < 2.3
        return torch.cuda.amp.GradScaler(enabled=enabled)


def autocast_for(config: TrainConfig, device: torch.device):
    """``torch.autocast`` of ``--amp``: float16 on CUDA, bfloat16 on the CPU; off without it."""
    return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16,
                          enabled=config.amp)


def _train_epoch(model, loader, optimizer, scaler, device, config, *, progress, epoch, callback):
    set_train_mode(model, config.freeze_bn)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    # a bar only on a terminal: in a log file its carriage returns would be fragments
    bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", disable=not (progress and sys.stdout.isatty()),
               file=sys.stdout, leave=False, dynamic_ncols=True)
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(config, device):
            out = model(x)
            loss = nn.functional.cross_entropy(out.float(), y)
        value = loss.item()
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"the training loss became {value} in epoch {epoch} with learning rate "
                f"{optimizer.param_groups[0]['lr']:g}: the run diverged. Lower --lr; the last "
                "finite epoch's checkpoint and metrics are kept")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        with torch.no_grad():
            sums += torch.stack([loss.detach().double() * len(y), (out.argmax(1) == y).sum().double(),
                                 torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
        if callback is not None:
            callback(getattr(model, "module", model), epoch)
        bar.set_postfix(loss=f"{value:.3f}")
    loss, correct, n = _all_reduce(sums).tolist()
    return loss / max(n, 1), 100.0 * correct / max(n, 1)


# ------------------------------------------------------------------------------ run setup
class PeakMemory:
    """The peak memory of one epoch, for the metrics' ``peak_memory_mib`` column: the CUDA
    allocator's peak on a GPU, the process's peak resident set on the CPU (Linux: reset
    at each epoch through /proc/self/clear_refs where allowed, else the peak since the
    process started). ``kind`` says which."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda-allocator" if device.type == "cuda" else "cpu-rss"

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set
        except OSError:
            pass

    def peak_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
        except OSError:
            pass
        import resource
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kB elsewhere
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def _device(config: TrainConfig, local_rank: int) -> torch.device:
    if config.device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(config.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _atomic_write(path: Path, write: Callable[[io.IOBase], None], binary: bool = False) -> None:
    """Write ``path`` through a temporary file and os.replace: never half written."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb" if binary else "w", newline=None if binary else "") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _config_dict(config: TrainConfig) -> dict:
    """The config as JSON values (tuples as lists; a weights enum or torch.device as text),
    as saved in checkpoints and config.json and compared on resume."""
    def plain(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        return [plain(x) for x in v] if isinstance(v, (tuple, list, range)) else str(v)
    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def _load_checkpoint(config: TrainConfig) -> dict:
    """The checkpoint in ``config.out``, checked against ``config`` (a ConfigError if it
    was written for another model or setting)."""
    path = Path(config.out) / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"nothing to resume: {path} does not exist (run without --resume first)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        ckpt["config"], ckpt["epoch"]  # noqa: B018 - a checkpoint of this trainer has both
    except Exception as e:  # noqa: BLE001 - truncated, empty, random or foreign files
        raise ConfigError(f"{path} is not a readable checkpoint of this trainer ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'no detail'}); delete it to start "
                          "over, or choose another --out") from None
    saved, now = dict(ckpt["config"]), _config_dict(config)
    if "memory_free" in saved and "memory" not in saved:  # written before --memory existed
        saved["memory"] = "exact" if saved.pop("memory_free") else "backprop"
    for name, default in _config_dict(TrainConfig()).items():  # settings added since it was written
        saved.setdefault(name, default)
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in now
            if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    if diff:
        raise ConfigError(f"{path} was written for another configuration ({'; '.join(diff)}); "
                          "resume with the same settings (only --epochs, --workers, --device "
                          "and --threads may change) or choose another --out")
    if ckpt["epoch"] > config.epochs:
        raise ConfigError(f"{path} has already trained {ckpt['epoch']} epochs, more than "
                          f"--epochs {config.epochs}")
    return ckpt


def _write_outputs(out: Path, model, optimizer, scheduler, scaler, epoch, config, history) -> None:
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_state(), "epoch": epoch,
            "config": _config_dict(config), "history": history}
    _atomic_write(out / CHECKPOINT, lambda f: torch.save(ckpt, f), binary=True)
    _atomic_write(out / "metrics.json", lambda f: json.dump(history, f, indent=1, allow_nan=False))

    def write_csv(f):
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    _atomic_write(out / "metrics.csv", write_csv)


def _check_writable(out: Path) -> None:
    """A ConfigError now, before data and model load, if ``out`` cannot hold the run."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {existing} is not writable; choose another --out")


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: the run stops before anything non-finite is kept."""


def _load_data_once(config: TrainConfig, rank: int, world: int) -> ImageData:
    """load_data for this process; under torchrun rank 0 first (it may download), then
    the others from what it left on disk."""
    def load():
        return load_data(config.dataset, data_dir=config.data_dir, image_size=config.image_size,
                         download=config.download and rank == 0, augment=config.augment,
                         classes=config.classes, train_images=config.train_images,
                         test_images=config.test_images)
    if world == 1:
        return load()
    data = load() if rank == 0 else None
    dist.barrier()
    return data if data is not None else load()


# ------------------------------------------------------------------------------ train
def train(config: TrainConfig, *, model: nn.Module | None = None, data: ImageData | None = None,
          progress: bool = True, verbose: bool = True,
          callback: Callable | None = None) -> TrainResult:
    """Train ``config.model`` (or the given ``model``, e.g. to fine-tune or refit after
    changing gamma) on ``config.dataset`` (or the given ``data``) for ``config.epochs``.

    A given model is trained as it is (moved to the device in place): the model-building
    settings of ``config`` (model, gamma, init_velocity, memory, width, stem,
    weights) then only name the run; set gamma with :func:`mresnet_core.models.set_gamma`.

    ``progress``: a tqdm bar per epoch; ``verbose``: print the data set, model, device
    and one line per epoch (rank 0 only). ``callback(model, epoch)`` runs after every
    optimiser step (on every process).
    Returns the trained model (unwrapped from DistributedDataParallel) and a history of
    per-epoch dicts: epoch, lr, train_loss, train_acc, test_loss, test_acc, seconds,
    peak_memory_mib and peak_memory_kind (:class:`PeakMemory`: the CUDA allocator's peak
    on a GPU, the peak resident set on the CPU).
    Raises ConfigError for invalid settings and DataNotFoundError for missing data,
    before any file is written.
    """
    config.check()
    rank, world, local_rank = _distributed()
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} (the global batch) must be divisible "
                          f"by the number of processes {world}")
    device = _device(config, local_rank)
    if config.sync_bn and (world == 1 or device.type != "cuda"):
        raise ConfigError("sync_bn needs several processes on GPUs (torchrun, nccl): this "
                          "torch's SyncBatchNorm refuses CPU tensors; use freeze_bn on the CPU")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    out = Path(config.out) if config.out is not None else None
    if out is not None and rank == 0:
        _check_writable(out)
    ckpt = _load_checkpoint(config) if config.resume else None
    if out is not None and not config.resume and (out / CHECKPOINT).exists():
        raise ConfigError(f"{out} already holds a run ({CHECKPOINT}); resume it with --resume, "
                          "or choose another --out (or delete that folder)")
    say = (lambda *a: print(*a, flush=True)) if rank == 0 and verbose else (lambda *a: None)

    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if data is None:
        data = _load_data_once(config, rank, world)
    _seed_everything(config.seed)
    given = model is not None
    if not given:
        model = build_model(config.model, data.num_classes, gamma=config.gamma,
                            init_velocity=config.init_velocity, memory_efficient=config.memory,
                            width=config.width, stem=config.stem, weights=config.weights)
    model = model.to(device)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = make_scaler(config, device)
    history: list[dict] = []
    start = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        history, start = list(ckpt["history"]), ckpt["epoch"]
        _set_rng_state(ckpt["rng"])

    say(f"data: {data.describe()}")
    n_params = f"{sum(p.numel() for p in model.parameters()):,} parameters"
    if given:
        gammas = sorted({s.gamma for s in momentum_stacks(model)})
        say(f"model: the given {type(model).__name__} ({n_params}), "
            + (f"gamma {', '.join(f'{g:g}' for g in gammas)}" if gammas else "no momentum stack"))
    else:
        say(f"model: {config.model} (width {config.width}, {config.stem} stem, {n_params}), "
            f"gamma {config.gamma}, v0 {config.init_velocity}, memory {config.memory}")
    say(f"device: {device}, {torch.get_num_threads()} threads, {world} process(es), "
        f"batch {config.batch_size} global ({config.batch_size // world} per process)"
        + (f"; resuming after epoch {start}" if ckpt is not None else ""))

    trained = model
    if world > 1:
        if config.sync_bn:
            trained = nn.SyncBatchNorm.convert_sync_batchnorm(trained)
        trained = DistributedDataParallel(
            trained, device_ids=[device.index] if device.type == "cuda" else None)
        model = trained.module
    per_rank = config.batch_size // world
    pin = device.type == "cuda"
    train_loader = make_loader(data.train, per_rank, train=True, seed=config.seed,
                               workers=config.workers, rank=rank, world_size=world, pin_memory=pin)
    test_loader = make_loader(data.test, per_rank, train=False, workers=config.workers,
                              rank=rank, world_size=world, pin_memory=pin)
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _atomic_write(out / "config.json", lambda f: json.dump(_config_dict(config), f, indent=1))

    memory = PeakMemory(device)
    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        memory.start()
        start_epoch(train_loader, epoch)
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = _train_epoch(trained, train_loader, optimizer, scaler, device, config,
                                             progress=progress and rank == 0, epoch=epoch,
                                             callback=callback)
        scheduler.step()
        if world > 1:  # evaluate (and save) with rank 0's BatchNorm running statistics
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        test_loss, test_acc = evaluate(model, test_loader, device)
        if not math.isfinite(test_loss):
            raise TrainingDiverged(f"the test loss became {test_loss} after epoch {epoch} with learning "
                                   f"rate {lr:g}: the run diverged. Lower --lr; the last finite "
                                   "epoch's checkpoint and metrics are kept")
        row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc,
               "test_loss": test_loss, "test_acc": test_acc,
               "seconds": time.perf_counter() - t0, "peak_memory_mib": round(memory.peak_mib(), 1),
               "peak_memory_kind": memory.kind}
        history.append(row)
        say(f"epoch {epoch}/{config.epochs}: lr {lr:.4g}, train loss {train_loss:.4f} "
            f"acc {train_acc:.2f}%, test loss {test_loss:.4f} acc {test_acc:.2f}% "
            f"({row['seconds']:.1f} s, peak memory {row['peak_memory_mib']:.0f} MiB, {memory.kind})")
        if out is not None and rank == 0:
            _write_outputs(out, model, optimizer, scheduler, scaler, epoch, config, history)
    return TrainResult(model=model, history=history, config=config, out=out)


# ------------------------------------------------------------------------------ CLI
def _init_velocity(value: str) -> str:
    """-i 0 / 1 (the reference script) or zero / block."""
    mapping = {"0": "zero", "1": "block", "zero": "zero", "block": "block"}
    if value not in mapping:
        raise argparse.ArgumentTypeError("use 0 or zero (v0 = 0), 1 or block (v0 = f(x0))")
    return mapping[value]


def _gamma(value: str) -> float:
    try:
        return check_gamma(float(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"gamma must be a number in [0, 1], got {value!r}") from None


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in the help (unless None: the help says what unset means), and the
    description and examples kept as written."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command line; defaults are the paper's CIFAR-10 recipe, as ``run_CIFAR_10.py``."""
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m mresnet_core.train",
        description="Train a ResNet or Momentum ResNet (Sander et al., ICML 2021).\n"
                    "The paper: --dataset cifar10, 220 epochs, batch 128, SGD lr 0.01 (x0.1 "
                    "at epoch 180),\nmomentum 0.9, weight decay 5e-4, width 64, gamma 0.9: the "
                    "defaults (CIFAR-10 is downloaded\ninto the data root when missing). Every "
                    "epoch is checkpointed in --out; --resume continues exactly.",
        epilog="examples:\n"
               "  quick, offline:  python -m mresnet_core.train -m mresnet18 --dataset digits --width 8 "
               "--epochs 6 --batch-size 64 --lr 0.05 --lr-milestones 4 --threads 1\n"
               "  the paper:       python -m mresnet_core.train -m mresnet101 -g 0.9\n"
               "  continue a run:  the same command with --resume (and a larger --epochs)\n"
               "  2 GPUs:          torchrun --nproc_per_node 2 -m mresnet_core.train "
               "-m mresnet101 --dataset cifar10\n"
               "The memory-free path's exact kernels are C code built when the package is installed; "
               "MRESNET_EXACT_BACKEND=eager (or compile) uses the torch kernels instead (same bits).",
        formatter_class=_HelpFormatter)
    p.add_argument("-m", "--model", default=d.model, choices=MODEL_NAMES, metavar="MODEL",
                   help=f"network, one of {', '.join(MODEL_NAMES)} ('m': Momentum ResNet)")
    p.add_argument("-g", "--gamma", type=_gamma, default=d.gamma,
                   help="momentum in [0, 1] of the momentum stacks; the paper: 0.9")
    p.add_argument("-i", "--init-velocity", type=_init_velocity, default=d.init_velocity,
                   help="initial velocity: 0/zero (v0 = 0) or 1/block (v0 = f(x0), one "
                        "extra learned block per stack)")
    p.add_argument("--memory", choices=MODE_NAMES, default=d.memory,
                   help="how the momentum stacks get their activations in backward: auto (the "
                        "cheapest exact way per stack), exact (rebuilt by exact inversion), "
                        "recompute (re-run from the stack's input) or backprop (stored); "
                        "gamma 0 always uses ordinary backprop")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: torch.autocast to float16 (with a gradient scaler) on "
                        "CUDA, bfloat16 on the CPU; every memory mode supports it")
    p.add_argument("--memory-free", dest="memory", action="store_const", const="exact",
                   help="the same as --memory exact (earlier versions' flag)")
    p.add_argument("--no-memory-free", dest="memory", action="store_const", const="backprop",
                   help="the same as --memory backprop")
    p.add_argument("--width", type=int, default=d.width, help="base channels; the paper: 64")
    p.add_argument("--stem", choices=STEMS, default=d.stem,
                   help="cifar: 3x3 stride-1 conv1, no max-pool; imagenet: torchvision's")
    p.add_argument("--weights", default=d.weights,
                   help="torchvision pretrained weights, e.g. IMAGENET1K_V1 (needs --stem "
                        "imagenet and width 64; downloads them)")
    p.add_argument("--dataset", choices=DATASETS, default=d.dataset,
                   help="the paper: cifar10, cifar100; digits: scikit-learn's handwritten digits, "
                        "embedded, offline; imagefolder: --data-dir with train/ and val/ "
                        "(ImageNet, hymenoptera)")
    p.add_argument("--data-dir", default=d.data_dir,
                   help="folder of the data set (default: $MRESNET_DATA_DIR/<dataset>, else "
                        "data/<dataset> at the repository root)")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=d.download,
                   help="let torchvision download CIFAR when it is missing")
    p.add_argument("--image-size", type=int, default=d.image_size,
                   help="digits: upsampled side (16 if unset); CIFAR: 32; image folders: crop "
                        "side (224 if unset)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=d.augment,
                   help="training augmentation (CIFAR: random crop, padding 4, and flip; digits: "
                        "random shifts; image folders: random resized crop and flip)")
    p.add_argument("--classes", type=int, nargs="+", default=d.classes,
                   help="digits and fashion-mnist: keep these labels, relabelled 0..k-1")
    p.add_argument("--train-images", type=int, default=d.train_images,
                   help="train on a fixed class-balanced subset of this many images (default: all)")
    p.add_argument("--test-images", type=int, default=d.test_images,
                   help="evaluate on a fixed class-balanced subset of this many images (default: all)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs; the paper: 220")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="global batch size, split evenly over torchrun processes; the paper: 128")
    p.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate; the paper: 0.01")
    p.add_argument("--lr-milestones", type=int, nargs="*", default=list(d.lr_milestones),
                   help="epochs after which lr is multiplied by --lr-factor; the paper: 180")
    p.add_argument("--lr-factor", type=float, default=d.lr_factor, help="the paper: 0.1")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum; the paper: 0.9")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="the paper: 5e-4")
    p.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm uses (and keeps) its running statistics while training")
    p.add_argument("--sync-bn", action="store_true",
                   help="torchrun on GPUs: BatchNorm statistics over the global batch")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds weights, order, augmentation")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--device", default=d.device, help="auto (cuda if available), cpu, cuda, cuda:1")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch CPU threads (unset: torch's choice)")
    p.add_argument("-s", "--out", default=None,
                   help="output folder (checkpoint.pt, metrics.csv/json, config.json); default "
                        "results/train/<dataset>/<model>-w<width>-g<gamma>-i<v0>-s<seed>")
    p.add_argument("--test-only", action="store_true",
                   help="evaluate the run in --out on its data set's test split, and stop")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (same settings; "
                        "--epochs may grow)")
    p.add_argument("--resume-if-present", action="store_true",
                   help="--resume when --out holds a checkpoint, else start: one command that "
                        "starts, continues or (when finished) just re-reports a run, as sweeps need")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                   help="tqdm progress bar per epoch when the output is a terminal (the epoch "
                        "lines are printed either way)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed command-line arguments."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    values["lr_milestones"] = tuple(args.lr_milestones)
    values["classes"] = tuple(args.classes) if args.classes else None
    if values["out"] is None:
        values["out"] = default_out(TrainConfig(**values))
    if getattr(args, "resume_if_present", False):
        values["resume"] = (Path(values["out"]) / CHECKPOINT).is_file()
    return TrainConfig(**values)


def default_out(config: TrainConfig) -> str:
    """results/train/<dataset>/<model>-w<width>-g<gamma>-i<v0>-s<seed>: runs that differ in
    any of these get their own folder."""
    v0 = {"zero": 0, "block": 1}[config.init_velocity]
    return (f"results/train/{config.dataset}/{config.model}-w{config.width}-g{config.gamma:g}"
            f"-i{v0}-s{config.seed}")


def load_run(out_dir: str | Path, device: str | torch.device = "cpu") -> TrainResult:
    """The model a run in ``out_dir`` trained (its last checkpoint, in eval mode), with its
    config and metrics; a ConfigError of one line if there is no readable run there."""
    out = Path(out_dir)
    path = out / CHECKPOINT
    if not path.is_file():
        raise ConfigError(f"no run in {out}: {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        saved = dict(ckpt["config"])
    except Exception as e:  # noqa: BLE001 - truncated, empty, random or foreign files
        raise ConfigError(f"{path} is not a readable checkpoint of this trainer ({type(e).__name__})") from None
    if "memory_free" in saved and "memory" not in saved:
        saved["memory"] = "exact" if saved.pop("memory_free") else "backprop"
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known}
    config = TrainConfig(**saved)
    num_classes = ckpt["model"]["fc.weight"].shape[0]
    model = build_model(config.model, num_classes, gamma=config.gamma, init_velocity=config.init_velocity,
                        memory_efficient=config.memory, width=config.width, stem=config.stem)
    model.load_state_dict(ckpt["model"])
    return TrainResult(model=model.to(device).eval(), history=list(ckpt["history"]), config=config, out=out)


def test_only(config: TrainConfig) -> tuple[float, float]:
    """(test loss, accuracy in %) of the run in ``config.out`` on its data set's test split
    (``--test-only``); the data folder and device may be other than the run's."""
    if config.out is None:
        raise ConfigError("--test-only evaluates the run in --out: name it")
    run = load_run(config.out)
    device = _device(config, 0)
    saved = run.config
    data = load_data(saved.dataset, data_dir=config.data_dir or saved.data_dir, image_size=saved.image_size,
                     download=config.download, augment=False, classes=saved.classes,
                     test_images=saved.test_images)
    loader = make_loader(data.test, config.batch_size, train=False, workers=config.workers)
    loss, acc = evaluate(run.model.to(device), loader, device)
    print(f"{config.out}: after epoch {len(run.history)}, test loss {loss:.4f}, accuracy {acc:.2f}% "
          f"({data.describe()})", flush=True)
    return loss, acc


def main(argv: list[str] | None = None) -> TrainResult:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args)
    try:
        if args.test_only:
            return test_only(config)
        return train(config, progress=args.progress)  # epoch lines are printed either way
    except (ValueError, FileNotFoundError) as e:  # ConfigError, DataNotFoundError, TrainingDiverged, model errors
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
