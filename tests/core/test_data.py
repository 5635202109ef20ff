"""data.py: the digits split (fixed, stratified, disjoint), image sizes, class subsets,
clear errors for missing data sets, and the deterministic, process-splittable order."""
from pathlib import Path

import pytest
import torch
from fake_data import bypass_checksums, write_cifar, write_fashion_mnist  # tests/: on the path through its conftest.py

from mresnet_core.data import DataNotFoundError, default_data_dir, load_data, make_loader, start_epoch

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits():
    return load_data("digits")


def test_digits_split_is_fixed_stratified_and_disjoint(digits):
    assert (len(digits.train), len(digits.test), digits.num_classes) == (1347, 450, 10)
    train, test = set(digits.train.index.tolist()), set(digits.test.index.tolist())
    assert not train & test and len(train | test) == 1797
    for c in range(10):  # each digit ~25 % in the test split
        n_test = int((digits.test.labels == c).sum())
        n_all = n_test + int((digits.train.labels == c).sum())
        assert abs(n_test - 0.25 * n_all) <= 1
    again = load_data("digits")
    assert torch.equal(again.test.index, digits.test.index)
    assert torch.equal(again.train.images, digits.train.images)
    assert digits.describe() == "digits: 1347 train / 450 test images, 3x16x16, 10 classes"


def test_digits_images_are_normalised_three_channel_images(digits):
    x, y = digits.test[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)
    torch.manual_seed(0)
    x, _ = digits.train[0]
    assert x.shape == (3, 16, 16)
    whole = torch.stack([digits.train[i][0] for i in range(200)])
    assert abs(float(whole.mean())) < 0.3 and 0.7 < float(whole.std()) < 1.3
    assert load_data("digits", image_size=32).test[0][0].shape == (3, 32, 32)


def test_digit_subsets_are_relabelled():
    low, high = load_data("digits", classes=(0, 1, 2, 3, 4)), load_data("digits", classes=range(5, 10))
    assert low.num_classes == high.num_classes == 5
    assert set(low.test.labels.tolist()) == set(high.train.labels.tolist()) == set(range(5))
    assert len(low.train) + len(low.test) + len(high.train) + len(high.test) == 1797
    assert low.describe().startswith("digits 01234: ")
    with pytest.raises(ValueError, match="distinct digits"):
        load_data("digits", classes=(3, 3))


def test_missing_cifar_says_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"CIFAR-10 is not in .*nothing.*--download.*--data-dir.*--dataset digits"):
        load_data("cifar10", data_dir=tmp_path / "nothing", download=False)
    assert not (tmp_path / "nothing").exists()


def offline(monkeypatch):
    """Every download fails as it does without a network."""
    import urllib.error

    from torchvision.datasets import utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(utils, "download_url", no_network)


def test_cifar_offline_names_the_data_set_and_leaves_no_folder(tmp_path, monkeypatch):
    offline(monkeypatch)
    target = tmp_path / "a" / "b"
    with pytest.raises(DataNotFoundError, match=r"CIFAR-100 is not in .* could not be downloaded .*Name or service"):
        load_data("cifar100", data_dir=target, download=True)
    assert not (tmp_path / "a").exists()


def test_cifar_files_failing_the_checksum_are_named_as_such(tmp_path, monkeypatch):
    offline(monkeypatch)
    write_cifar(tmp_path, "cifar10")
    with pytest.raises(DataNotFoundError, match="fail torchvision's checksum"):
        load_data("cifar10", data_dir=tmp_path, download=True)


@pytest.mark.parametrize("dataset,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_in_the_real_format_loads(tmp_path, monkeypatch, dataset, classes):
    bypass_checksums(monkeypatch)  # the files are small fakes
    write_cifar(tmp_path, dataset, per_file=20)
    data = load_data(dataset, data_dir=tmp_path, download=False)
    assert data.num_classes == classes and len(data.test) == 20
    assert len(data.train) == (100 if dataset == "cifar10" else 20)
    x, y = data.train[3]
    assert x.shape == (3, 32, 32) and 0 <= y < classes


def test_the_default_data_folder_is_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MRESNET_DATA_DIR", str(tmp_path / "root"))
    assert default_data_dir("cifar10") == tmp_path / "root" / "cifar10"
    monkeypatch.delenv("MRESNET_DATA_DIR")
    monkeypatch.chdir(ROOT / "notebooks")  # papermill's working directory: still the repository's data/
    assert default_data_dir("cifar10") == ROOT / "data" / "cifar10"


def test_missing_image_folder_says_what_it_needs(tmp_path):
    with pytest.raises(DataNotFoundError, match="needs data_dir"):
        load_data("imagefolder")
    with pytest.raises(DataNotFoundError, match="train/ or val/"):
        load_data("imagefolder", data_dir=tmp_path)


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="digits, fashion-mnist, cifar10, cifar100, imagefolder"):
        load_data("mnist")


def _batches(loader, epoch):
    start_epoch(loader, epoch)
    return [x for x, _ in loader]  # the test set has no random transform: images identify samples


def test_order_is_seeded_per_epoch_and_splits_over_processes(digits):
    single = make_loader(digits.test, 20, train=True, seed=3)
    first = torch.cat(_batches(single, 1))
    assert torch.equal(first, torch.cat(_batches(single, 1)))  # same epoch, same batches
    assert not torch.equal(first, torch.cat(_batches(single, 2)))
    ranks = [make_loader(digits.test, 10, train=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    per_rank = [_batches(r, 1) for r in ranks]
    global_batches = _batches(single, 1)
    assert len(per_rank[0]) == len(per_rank[1]) == len(global_batches)
    for a, b, whole in zip(*per_rank, global_batches):  # rank batches k together = batch k
        assert torch.equal(torch.stack([a, b], 1).flatten(0, 1), whole)


def test_evaluation_shards_count_each_sample_once(digits):
    parts = [make_loader(digits.test, 64, train=False, rank=r, world_size=3) for r in range(3)]
    assert sum(len(p.dataset) for p in parts) == len(digits.test)


def test_image_folder_reads_train_and_val_class_folders(digits, tmp_path):
    """A small image folder (digit images saved as PNG: ants/bees stand-ins) loads with the
    ImageNet preprocessing at the requested crop size."""
    from torchvision.transforms.functional import to_pil_image
    images = digits.test.images
    for split in ("train", "val"):
        for c, name in enumerate(("ants", "bees")):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                to_pil_image(images[4 * c + i]).save(tmp_path / split / name / f"{i}.png")
    data = load_data("imagefolder", data_dir=tmp_path, image_size=32)
    assert (len(data.train), len(data.test), data.num_classes) == (6, 6, 2)
    assert data.train.classes == ["ants", "bees"]
    x, y = data.test[5]
    assert x.shape == (3, 32, 32) and y == 1
    assert data.train[0][0].shape == (3, 32, 32)
    assert data.describe() == f"imagefolder {tmp_path.name}: 6 train / 6 test images, 3x32x32, 2 classes"


def test_fashion_mnist_in_the_real_format_loads_as_three_channel_images(tmp_path):
    write_fashion_mnist(tmp_path, train=30, test=20)
    data = load_data("fashion-mnist", data_dir=tmp_path, image_size=16)
    assert (len(data.train), len(data.test), data.num_classes) == (30, 20, 10)
    x, y = data.train[3]
    assert x.shape == (3, 16, 16) and torch.equal(x[0], x[1]) and y == 3
    shirts = load_data("fashion-mnist", data_dir=tmp_path, classes=(6, 0), augment=False)
    assert shirts.num_classes == 2 and len(shirts.train) == 6 and {y for _, y in shirts.train} == {0, 1}
    assert shirts.name == "fashion-mnist Shirt/T-shirt/top"
    with pytest.raises(ValueError, match="distinct labels 0..9"):
        load_data("fashion-mnist", data_dir=tmp_path, classes=(3, 3))


def test_fashion_mnist_missing_offline_says_how_to_get_it(tmp_path, monkeypatch):
    import mresnet_core.data as data_module

    monkeypatch.setattr(data_module, "FASHION_MNIST_SYSTEM", tmp_path / "no-package")
    with pytest.raises(DataNotFoundError, match="Fashion-MNIST is not in .*dataset-fashion-mnist.*--dataset digits"):
        load_data("fashion-mnist", data_dir=tmp_path / "none", download=False)
    assert not (tmp_path / "none").exists()


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_comes_from_the_debian_package_offline(tmp_path, monkeypatch):
    offline(monkeypatch)
    data = load_data("fashion-mnist", data_dir=tmp_path / "fm", download=False, augment=False)
    assert (len(data.train), len(data.test)) == (60000, 10000)
    assert "from Debian's dataset-fashion-mnist" in data.describe()
    again = load_data("fashion-mnist", data_dir=tmp_path / "fm", download=False)  # unpacked: found as is
    assert again.source == str(tmp_path / "fm")


def test_balanced_subsets_are_fixed_and_balanced(digits):
    from mresnet_core.data import balanced_subset, labels_of

    sub = balanced_subset(digits.train, 53, seed=0)
    counts = labels_of(sub).bincount()
    assert len(sub) == 53 and counts.max() - counts.min() <= 1
    assert sub.indices == balanced_subset(digits.train, 53, seed=0).indices  # the same on every call
    assert sub.indices != balanced_subset(digits.train, 53, seed=1).indices
    two = load_data("digits", classes=(7, 2), train_images=40, test_images=10)
    assert len(two.train) == 40 and labels_of(two.train).bincount().tolist() == [20, 20]
    assert len(two.test) == 10 and "class-balanced subset" in two.describe()
    with pytest.raises(ValueError, match="exceeds"):
        load_data("digits", train_images=10**6)
    with pytest.raises(ValueError, match="positive integer"):
        load_data("digits", test_images=0)


def test_augmentation_is_seeded_per_sample_and_epoch(digits):
    from mresnet_core.data import SeededAugmentation

    aug = SeededAugmentation(digits.train, seed=5)
    state = torch.get_rng_state()
    first = aug[3][0]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    torch.manual_seed(123)  # and does not matter
    assert torch.equal(aug[3][0], first)
    shifted = [not torch.equal(aug[3][0], first) for aug.epoch in range(1, 6)]
    assert any(shifted)  # other epochs, other shifts
