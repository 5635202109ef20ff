"""data.py: the digits split (fixed, stratified, disjoint), image sizes, class subsets,
clear errors for missing data sets, and the deterministic, process-splittable order."""
import pytest
import torch

from mresnet_core.data import DataNotFoundError, load_data, make_loader, start_epoch


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
    with pytest.raises(DataNotFoundError, match=r"cifar10 not found.*--data-dir.*--dataset digits"):
        load_data("cifar10", data_dir=tmp_path / "nothing", download=False)
    assert not (tmp_path / "nothing").exists() or not any((tmp_path / "nothing").iterdir())


def test_missing_image_folder_says_what_it_needs(tmp_path):
    with pytest.raises(DataNotFoundError, match="needs data_dir"):
        load_data("imagefolder")
    with pytest.raises(DataNotFoundError, match="train/ or val/"):
        load_data("imagefolder", data_dir=tmp_path)


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="digits, cifar10, cifar100, imagefolder"):
        load_data("mnist")


def _batches(loader, epoch):
    start_epoch(loader, epoch, seed=0)
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
