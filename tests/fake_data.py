"""Small data sets written in the real on-disk formats, for tests that must run offline:
CIFAR-10/100 python pickles (torchvision's layout), an ImageFolder tree (train/ and
val/ with one folder of PNGs per class) and a saved ``state_dict`` standing for
pretrained weights. torchvision checks the CIFAR files against the MD5 sums of the real
ones; ``CHECKSUM_BYPASS`` is a sitecustomize module that turns that check off in the
processes of the test that puts it on their PYTHONPATH, nowhere else."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

CIFAR = {  # folder, train files, test file, meta file, label key, label names key, classes
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "batches.meta", "labels", "label_names", 10),
    "cifar100": ("cifar-100-python", ["train"], "test", "meta", "fine_labels", "fine_label_names", 100),
}

CHECKSUM_BYPASS = '''\
"""Test-only: torchvision's CIFAR checksum checks pass (the files are small fakes)."""
from torchvision.datasets import CIFAR10, cifar

CIFAR10._check_integrity = lambda self: True
cifar.check_integrity = lambda path, md5=None: True
'''


def bypass_checksums(monkeypatch) -> None:
    """In this process: torchvision's CIFAR checksum checks pass (what CHECKSUM_BYPASS does)."""
    from torchvision.datasets import CIFAR10, cifar

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: True)


def write_cifar(root: Path, dataset: str = "cifar10", per_file: int = 20, seed: int = 0) -> Path:
    """``root/<torchvision folder>`` with ``per_file`` random 32x32 images per batch file,
    pickled as the real files are (dicts of "data": uint8 rows of 3072 in CHW order, a
    label list, file names; a meta file of label names)."""
    folder, train_files, test_file, meta_file, label_key, names_key, classes = CIFAR[dataset]
    out = Path(root) / folder
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [*train_files, test_file]:
        labels = [int(i % classes) for i in range(per_file)]
        batch = {"batch_label": name, "data": rng.integers(0, 256, (per_file, 3072), dtype=np.uint8),
                 label_key: labels, "filenames": [f"{name}_{i}.png" for i in range(per_file)]}
        if dataset == "cifar100":
            batch["coarse_labels"] = [lab // 5 for lab in labels]
        with open(out / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(out / meta_file, "wb") as fh:
        pickle.dump({names_key: [f"class{i}" for i in range(classes)]}, fh)
    return out


def write_image_folder(root: Path, classes=("ants", "bees"), per_class: int = 6, size: int = 40,
                       seed: int = 0) -> Path:
    """``root/train/<class>/*.png`` and ``root/val/<class>/*.png`` (the hymenoptera layout)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in classes:
            folder = Path(root) / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return Path(root)


def write_fashion_mnist(root: Path, train: int = 30, test: int = 20, seed: int = 0) -> Path:
    """``root/FashionMNIST/raw/`` with the four files unpacked, in the original IDX format
    (big-endian magic 2051 for images, 2049 for labels), random 28x28 images."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([2051, n, 28, 28], dtype=">i4").tobytes() + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(np.array([2049, n], dtype=">i4").tobytes() + labels.tobytes())
    return raw


def write_pretrained(torch_home: Path, arch: str = "resnet18", seed: int = 0) -> Path:
    """A random ``state_dict`` of torchvision's ``arch``, saved where ``weights=<DEFAULT>``
    loads it from without downloading: ``torch_home/hub/checkpoints/<file name of the
    weights' URL>`` (torch.hub checks the hash only of what it downloads). Stands for the
    ImageNet-pretrained weights in processes whose TORCH_HOME is ``torch_home``."""
    import os

    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = Path(torch_home) / "hub" / "checkpoints" / os.path.basename(weights.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(torchvision.models, arch)(weights=None)
    torch.save(model.state_dict(), path)
    return path


def write_paper_data(root: Path, torch_home: Path, pretrained=("resnet18", "resnet50")) -> dict:
    """Everything the paper profile reads, small and in the real formats, under ``root``
    laid out as the data root (``$MRESNET_DATA_DIR``): cifar10/, cifar100/,
    fashion-mnist/ and hymenoptera_data/; and pretrained ``state_dict``s of
    ``pretrained`` in ``torch_home``'s hub cache. Returns the environment variables a
    process needs to find them (MRESNET_DATA_DIR, TORCH_HOME)."""
    root = Path(root)
    write_cifar(root / "cifar10", "cifar10", per_file=104)  # 520 training images: Figure 7 takes 512
    write_cifar(root / "cifar100", "cifar100", per_file=200)
    write_fashion_mnist(root / "fashion-mnist", train=100, test=50)
    write_image_folder(root / "hymenoptera_data", per_class=8)  # hymenoptera's layout (ants, bees)
    for arch in pretrained:
        write_pretrained(torch_home, arch)
    return {"MRESNET_DATA_DIR": str(root), "TORCH_HOME": str(torch_home)}
