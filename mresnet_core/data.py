"""Image data for training: CIFAR-10/100, image folders (ImageNet, hymenoptera) and the
embedded handwritten digits, with the paper's augmentation and normalisation.

:func:`load_data` returns an :class:`ImageData` (train and test sets, classes, image size,
a one-line description); :func:`make_loader` batches a set deterministically: the order
comes from a ``DistributedSampler`` seeded with ``seed`` and reseeded by
:func:`start_epoch`, so that a resumed run sees the same batches, and a run split over
processes sees, per step, exactly the global batch of a single-process run.

The digits (``sklearn.datasets.load_digits``: 1797 8x8 grey images, shipped with
scikit-learn) are the offline default for CPU runs: upsampled to ``image_size``, repeated
on 3 channels, split once into stratified train/test sets (``split_seed``).
"""
from __future__ import annotations

import contextlib
import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets, transforms
from torchvision.transforms import functional as TF

from .paths import DATA_DIR_VARIABLE, data_root, project_root

DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
CLASS_SUBSETS = ("digits", "fashion-mnist")  # the data sets that take classes=
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # of the training images, in [0, 1]
#: where Debian's dataset-fashion-mnist package puts the four original files
FASHION_MNIST_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULT_DIGITS_SIZE = 16


class DataNotFoundError(FileNotFoundError):
    """A data set is not where it was looked for (the message says how to get it)."""


@dataclass
class ImageData:
    """Train and test sets of one data set, ready for :func:`make_loader`."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    image_size: int
    source: str | None = None  # where the files came from, when that is worth saying

    def describe(self) -> str:
        """One line: data set, split sizes, image size, classes (and source)."""
        s = self.image_size
        return (f"{self.name}: {len(self.train)} train / {len(self.test)} test images, "
                f"3x{s}x{s}, {self.num_classes} classes" + (f" (from {self.source})" if self.source else ""))


class TensorImages(Dataset):
    """Images held as one (N, C, H, W) float tensor, with labels and a per-image transform;
    ``index``: where each image comes from in the source data set (to check splits)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None,
                 index: torch.Tensor | None = None):
        self.images, self.labels, self.transform, self.index = images, labels, transform, index

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        return (self.transform(x) if self.transform is not None else x), int(self.labels[i])


def load_data(dataset: str = "digits", *, data_dir: str | Path | None = None,
              image_size: int | None = None, download: bool = False, augment: bool = True,
              classes: Sequence[int] | None = None, split_seed: int = 0,
              test_fraction: float = 0.25, train_images: int | None = None,
              test_images: int | None = None) -> ImageData:
    """Train and test sets of ``dataset`` (one of :data:`DATASETS`).

    Args:
        dataset: "digits" (embedded), "cifar10", "cifar100" or "imagefolder" (``data_dir``
            holds ``train/`` and ``val/`` with one subfolder per class: ImageNet, the
            "hymenoptera" ants/bees set).
        data_dir: where the data set is (CIFAR: torchvision's folder layout; default
            ``default_data_dir(dataset)``: ``$MRESNET_DATA_DIR/<dataset>``, else
            ``data/<dataset>`` at the repository root). Unused for digits.
        image_size: digits: side after upsampling (default 16); CIFAR: 32 unless given
            (then resized); image folders: the crop side (default 224).
        download: CIFAR only: let torchvision download the data set when missing.
        augment: training augmentation (CIFAR: random crop with 4-pixel padding and
            horizontal flip; image folders: random resized crop and flip; digits: random
            shifts of up to 1/8 of the side, no flip).
        classes: digits only: keep these digits, relabelled 0..len(classes)-1 in the given
            order (e.g. (0, 1, 2, 3, 4) and (5, 6, 7, 8, 9) for a fine-tuning experiment).
        split_seed, test_fraction: digits only: the fixed stratified train/test split.
        train_images, test_images: keep a fixed class-balanced subset of this many images
            of the training (test) set (:func:`balanced_subset`), to fit a time budget.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if classes is not None and dataset not in CLASS_SUBSETS:
        raise ValueError(f"class subsets (classes=) are available for {' and '.join(CLASS_SUBSETS)} only")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    for what, n in (("train_images", train_images), ("test_images", test_images)):
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"{what} must be a positive integer (or None: the whole set), got {n!r}")
    if dataset == "digits":
        data = load_digits(image_size or DEFAULT_DIGITS_SIZE, augment=augment, classes=classes,
                           split_seed=split_seed, test_fraction=test_fraction)
    elif dataset == "fashion-mnist":
        data = load_fashion_mnist(data_dir, image_size=image_size or 28, download=download,
                                  augment=augment, classes=classes)
    elif dataset.startswith("cifar"):
        data = load_cifar(dataset, data_dir, image_size=image_size or 32, download=download,
                          augment=augment)
    else:
        data = load_image_folder(data_dir, image_size=image_size or 224, augment=augment)
    if train_images is None and test_images is None:
        return data
    whole = f"{len(data.train)} train / {len(data.test)} test"
    if train_images is not None:
        data.train = balanced_subset(data.train, train_images, split_seed, "train_images")
    if test_images is not None:
        data.test = balanced_subset(data.test, test_images, split_seed, "test_images")
    data.name = f"{data.name} (class-balanced subset of {whole})"
    return data


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The labels of every sample of ``dataset``, without loading its images."""
    if isinstance(dataset, TensorImages):
        return dataset.labels
    if isinstance(dataset, Relabeled):
        return torch.tensor([dataset.mapping[int(y)] for y in labels_of(dataset.dataset)[dataset.indices]])
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"cannot read the labels of a {type(dataset).__name__} without loading it")
    return torch.as_tensor(targets)


def balanced_subset(dataset: Dataset, n: int, seed: int = 0, what: str = "n") -> Subset:
    """``n`` samples of ``dataset`` with the classes as equally represented as ``n``
    allows (earlier classes get the remainder), drawn by a fixed permutation (``seed``)
    and kept in the data set's order: the same subset on every call."""
    labels = labels_of(dataset)
    if n > len(labels):
        raise ValueError(f"{what}={n} exceeds the {len(labels)} images of the set")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    classes = labels.unique().tolist()
    share, extra = divmod(n, len(classes))
    chosen = []
    for k, c in enumerate(classes):
        members = order[labels[order] == c]
        want = share + (k < extra)
        if want > len(members):
            raise ValueError(f"{what}={n}: class {c} has only {len(members)} images, {want} asked for")
        chosen.append(members[:want])
    return Subset(dataset, sorted(torch.cat(chosen).tolist()))


def load_digits(image_size: int = DEFAULT_DIGITS_SIZE, *, augment: bool = True,
                classes: Sequence[int] | None = None, split_seed: int = 0,
                test_fraction: float = 0.25) -> ImageData:
    """scikit-learn's handwritten digits as 3-channel ``image_size`` images (see load_data)."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # in [0, 1]
    labels = torch.tensor(bunch.target, dtype=torch.int64)
    source = torch.arange(len(labels))
    name = "digits"
    if classes is not None:
        classes = _check_classes(classes, 10, "digits")
        keep = torch.isin(labels, torch.tensor(classes))
        images, source = images[keep], source[keep]
        labels = torch.tensor([classes.index(int(y)) for y in labels[keep]], dtype=torch.int64)
        name = f"digits {''.join(map(str, classes))}" if len(classes) < 10 else name
    num_classes = int(labels.max()) + 1
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(),
                                           test_size=test_fraction, random_state=split_seed,
                                           stratify=labels.numpy())
    images = TF.resize(images, [image_size, image_size], antialias=True).repeat(1, 3, 1, 1)
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    mean, std = float(images[train_idx].mean()), float(images[train_idx].std())
    normalize = transforms.Normalize((mean,) * 3, (std,) * 3)
    shift = transforms.RandomCrop(image_size, padding=max(1, image_size // 8))
    train_tf = transforms.Compose([shift, normalize]) if augment else normalize
    return ImageData(name=name,
                     train=TensorImages(images[train_idx], labels[train_idx], train_tf,
                                        source[train_idx]),
                     test=TensorImages(images[test_idx], labels[test_idx], normalize,
                                       source[test_idx]),
                     num_classes=num_classes, image_size=image_size)


CIFAR_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


@contextlib.contextmanager
def _no_folder_left_on_failure(root: Path):
    """Remove again the (empty) folders up to ``root`` that did not exist before the
    block, if it fails: a download that failed leaves nothing behind."""
    created = [] if root.exists() else [root, *[q for q in root.parents if not q.exists()]]
    try:
        yield
    except BaseException:
        for q in created:  # children first
            with contextlib.suppress(OSError):
                q.rmdir()
        raise


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _shown(path: Path) -> str:
    """``path`` as printed: relative to the repository when inside it (the same on every
    clone), else as given."""
    try:
        return str(path.resolve().relative_to(project_root()))
    except ValueError:
        return str(path)


def default_data_dir(dataset: str) -> Path:
    """``paths.data_root() / dataset``: where a data set is looked for (and downloaded to)
    when no data_dir is given."""
    return data_root() / dataset


def load_cifar(dataset: str = "cifar10", data_dir: str | Path | None = None, *,
               image_size: int = 32, download: bool = False, augment: bool = True) -> ImageData:
    """CIFAR-10 or CIFAR-100 through torchvision, with the paper's augmentation.

    Looked for in ``data_dir`` (default ``default_data_dir(dataset)``) in torchvision's
    layout (``cifar-10-batches-py/`` or ``cifar-100-python/``); ``download`` fetches it
    there when missing. A failure is a DataNotFoundError that names the data set and how
    to get it; a folder this call created for a download that failed is removed again.
    """
    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[dataset]
    name = CIFAR_NAMES[dataset]
    root = Path(data_dir) if data_dir is not None else default_data_dir(dataset)
    resize = [transforms.Resize(image_size, antialias=True)] if image_size != 32 else []
    final = [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)]
    crop = [transforms.RandomCrop(image_size, padding=image_size // 8),
            transforms.RandomHorizontalFlip()] if augment else []
    folder = root / cls.base_folder
    present = folder.is_dir() and any(folder.iterdir())
    how = (f"Get it where the network allows (python -c \"from mresnet_core.data import load_data; "
           f"load_data('{dataset}', data_dir='{root}', download=True)\", or {cls.url} unpacked) "
           f"and put {cls.base_folder}/ in {root}, or point --data-dir (or ${DATA_DIR_VARIABLE}) at "
           "a copy; offline, the embedded digits (--dataset digits) train anywhere.")
    with _no_folder_left_on_failure(root):
        try:
            train = cls(root=str(root), train=True, download=download,
                        transform=transforms.Compose(resize + crop + final))
            test = cls(root=str(root), train=False, download=download,
                       transform=transforms.Compose(resize + final))
        except (RuntimeError, OSError) as e:  # torchvision: not found / corrupted; download failed
            if present:
                raise DataNotFoundError(
                    f"{name}: {folder} holds files that fail torchvision's checksum (corrupt, "
                    f"incomplete or not {name}); delete that folder to download it again, or "
                    f"replace it with a good copy. {how}") from e
            if download:
                raise DataNotFoundError(f"{name} is not in {root} and could not be downloaded "
                                        f"({_first_line(e)}). {how}") from e
            raise DataNotFoundError(f"{name} is not in {root} (downloading is off: --download turns "
                                    f"it on). {how}") from e
    return ImageData(name=dataset, train=train, test=test, num_classes=len(train.classes),
                     image_size=image_size)


class Relabeled(Dataset):
    """The samples of ``dataset`` whose label is in ``classes``, relabelled by their
    position there (0..len(classes)-1)."""

    def __init__(self, dataset: Dataset, labels: torch.Tensor, classes: Sequence[int]):
        self.dataset, self.classes = dataset, list(classes)
        self.indices = torch.nonzero(torch.isin(labels, torch.tensor(self.classes))).flatten().tolist()
        self.mapping = {c: i for i, c in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        x, y = self.dataset[self.indices[i]]
        return x, self.mapping[int(y)]


def _check_classes(classes, total: int, what: str = "labels") -> list:
    """``classes`` as a list of distinct labels 0..total-1 (a ValueError otherwise)."""
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes) or not set(classes) <= set(range(total)):
        raise ValueError(f"classes must be distinct {what} 0..{total - 1}, got {classes!r}")
    return classes


def load_fashion_mnist(data_dir: str | Path | None = None, *, image_size: int = 28, download: bool = False,
                       augment: bool = True, classes: Sequence[int] | None = None) -> ImageData:
    """Fashion-MNIST (Xiao et al. 2017: 60,000 + 10,000 grey 28x28 images of 10 kinds of
    clothing) through torchvision's ``FashionMNIST``, as 3-channel images.

    Looked for in ``data_dir`` (default ``default_data_dir("fashion-mnist")``) in
    torchvision's layout (``FashionMNIST/raw/``). When missing, the four original files
    are taken from Debian's ``dataset-fashion-mnist`` package if it is installed
    (:data:`FASHION_MNIST_SYSTEM`; unpacked here, since Debian recompressed them and
    their MD5 sums are not torchvision's; torchvision's reader checks the IDX headers),
    else downloaded where ``download`` allows. Training augmentation: random crop with
    padding image_size // 8 and horizontal flip. ``classes``: keep these labels,
    relabelled 0..len(classes)-1 in the given order.
    """
    name = "fashion-mnist"
    root = Path(data_dir) if data_dir is not None else default_data_dir(name)
    raw = root / datasets.FashionMNIST.__name__ / "raw"
    system = FASHION_MNIST_SYSTEM
    files = [Path(url).name for url, _ in datasets.FashionMNIST.resources]
    found = all((raw / Path(f).stem).exists() for f in files)
    from_system = not found and all((system / f).is_file() for f in files)
    resize = [transforms.Resize(image_size, antialias=True)] if image_size != 28 else []
    final = [transforms.ToTensor(), transforms.Normalize((FASHION_MEAN,) * 3, (FASHION_STD,) * 3)]
    crop = [transforms.RandomCrop(image_size, padding=max(1, image_size // 8)),
            transforms.RandomHorizontalFlip()] if augment else []
    grey3 = [transforms.Grayscale(num_output_channels=3)]
    how = (f"Get it where the network allows (--download, or python -c \"from mresnet_core.data import "
           f"load_data; load_data('fashion-mnist', download=True)\"), install Debian's "
           f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist: the original files in "
           f"{system}), or point --data-dir (or ${DATA_DIR_VARIABLE}) at a copy; offline, the embedded "
           "digits (--dataset digits) train anywhere.")
    with _no_folder_left_on_failure(root):
        if from_system:  # Debian recompressed them (other MD5 sums than torchvision's): unpack here
            raw.mkdir(parents=True, exist_ok=True)
            for f in files:
                with gzip.open(system / f, "rb") as src, open(raw / Path(f).stem, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        try:
            train = datasets.FashionMNIST(str(root), train=True, download=download,
                                          transform=transforms.Compose(grey3 + resize + crop + final))
            test = datasets.FashionMNIST(str(root), train=False, download=download,
                                         transform=transforms.Compose(grey3 + resize + final))
        except (RuntimeError, OSError) as e:
            raise DataNotFoundError(f"Fashion-MNIST is not in {root} and could not be had "
                                    f"({_first_line(e)}). {how}") from e
    num_classes = len(train.classes)
    source = "Debian's dataset-fashion-mnist" if from_system else _shown(root)
    label = name
    if classes is not None:
        classes = _check_classes(classes, num_classes)
        train, test = Relabeled(train, train.targets, classes), Relabeled(test, test.targets, classes)
        num_classes = len(classes)
        label = f"{name} {'/'.join(datasets.FashionMNIST.classes[c] for c in classes)}"
    return ImageData(name=label, train=train, test=test, num_classes=num_classes, image_size=image_size,
                     source=source)


def load_image_folder(data_dir: str | Path | None, *, image_size: int = 224,
                      augment: bool = True) -> ImageData:
    """``data_dir/train`` and ``data_dir/val`` class folders with ImageNet preprocessing."""
    if data_dir is None:
        raise DataNotFoundError("dataset 'imagefolder' needs data_dir (--data-dir) holding "
                                "train/ and val/ with one subfolder per class (ImageNet, the "
                                "hymenoptera ants/bees set). Offline, use --dataset digits.")
    root = Path(data_dir)
    missing = [d for d in ("train", "val") if not (root / d).is_dir()]
    if missing:
        raise DataNotFoundError(f"{root} has no {' or '.join(d + '/' for d in missing)} folder: "
                                "an image folder data set needs train/ and val/ with one "
                                "subfolder per class. Offline, use --dataset digits.")
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = ([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip()]
                if augment else [transforms.Resize(image_size * 256 // 224),
                                 transforms.CenterCrop(image_size)])
    test_tf = [transforms.Resize(image_size * 256 // 224), transforms.CenterCrop(image_size)]
    train = datasets.ImageFolder(str(root / "train"),
                                 transforms.Compose(train_tf + [transforms.ToTensor(), normalize]))
    test = datasets.ImageFolder(str(root / "val"),
                                transforms.Compose(test_tf + [transforms.ToTensor(), normalize]))
    if train.classes != test.classes:
        raise ValueError(f"{root}: train/ and val/ have different class folders "
                         f"({train.classes} vs {test.classes})")
    return ImageData(name=f"imagefolder {root.name}", train=train, test=test,
                     num_classes=len(train.classes), image_size=image_size)


class SeededAugmentation(Dataset):
    """``dataset`` with the random augmentation of sample ``i`` in epoch ``e`` drawn from
    its own seed (``seed``, ``e``, ``i``), whichever process loads it: a run gives the same
    batches with any number of DataLoader workers (and resumed mid-way), and loading leaves
    the caller's random state untouched. :func:`start_epoch` sets the epoch."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed, self.epoch = dataset, int(seed), 0

    def __len__(self) -> int:
        return len(self.dataset)

    def sample_seed(self, i: int) -> int:
        """The augmentation seed of sample ``i`` in the current epoch (a fixed mix of the
        three numbers, below 2**63)."""
        return (self.seed * 1_000_003 + self.epoch) * 2_147_483_659 + int(i) & (2**63 - 1)

    def __getitem__(self, i):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.sample_seed(i))
            return self.dataset[i]


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int = 0,
                workers: int = 0, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over this process's share of ``dataset``.

    Training: a ``DistributedSampler`` (also with one process) shuffles with ``seed`` +
    epoch (call :func:`start_epoch` before each epoch) and gives each of the
    ``world_size`` processes every ``world_size``-th sample of the permutation, so the
    processes' batch ``k`` together are the single-process batch ``k`` when
    ``batch_size`` is the per-process batch; each sample's augmentation has its own seed
    (:class:`SeededAugmentation`), so ``workers`` changes nothing but speed. Evaluation:
    rank ``r`` gets samples r, r + world_size, ... in order (no padding, every sample
    counted once).
    """
    if train:
        dataset = SeededAugmentation(dataset, seed)
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=seed)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          pin_memory=pin_memory)
    if world_size > 1:
        dataset = Subset(dataset, range(rank, len(dataset), world_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=pin_memory)


def start_epoch(loader: DataLoader, epoch: int) -> None:
    """Fix the shuffle and augmentation of ``epoch`` (deterministic, resumable, the same
    with any number of workers; the seed is the one given to :func:`make_loader`)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if isinstance(loader.dataset, SeededAugmentation):
        loader.dataset.epoch = epoch
