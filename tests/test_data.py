"""Data: digits/folder/cifar10 loaders, forget/remain splits, and the endless resumable batch iterator."""

import re

import pytest
import torch
from torch.utils.data import Dataset

from erasediff.data import (
    DATASETS,
    InfiniteBatches,
    forget_remain_split,
    images_of_classes,
    load_dataset,
)
from erasediff.errors import DataError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits"), load_dataset("digits", split="test")


def test_digits_shapes_range_and_split_sizes(digits):
    train, test = digits
    assert (len(train.dataset), len(test.dataset)) == (1437, 360)
    assert (train.channels, train.image_size, train.num_classes, train.name) == (1, 16, 10, "digits")
    assert train.class_names == [str(d) for d in range(10)]
    x, y = train.dataset[0]
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and isinstance(int(y), int)
    images, labels = train.dataset.tensors
    assert images.min() == -1.0 and images.max() == 1.0
    assert labels.dtype == torch.int64 and torch.equal(labels, train.labels)
    counts = torch.bincount(train.labels, minlength=10)
    assert counts.min() >= 135 and counts.max() <= 150
    assert load_dataset("digits", image_size=8).dataset.tensors[0].shape == (1437, 1, 8, 8)


def test_digits_split_is_disjoint_and_deterministic(digits):
    from collections import Counter

    from sklearn.datasets import load_digits

    # at 8x8 the images are the raw sklearn ones: train + test must be exactly the full set, no overlap
    rows = lambda images, labels: Counter(zip(map(tuple, images.flatten(1).tolist()), labels.tolist()))
    raw = load_digits()
    full = rows(torch.from_numpy(raw.images).float() / 8 - 1, torch.from_numpy(raw.target))
    train8, test8 = (load_dataset("digits", split=s, image_size=8).dataset.tensors for s in ("train", "test"))
    assert rows(*train8) + rows(*test8) == full
    train, _ = digits
    again = load_dataset("digits")
    assert torch.equal(again.dataset.tensors[0], train.dataset.tensors[0])
    assert torch.equal(again.labels, train.labels)


def test_loader_argument_errors():
    with pytest.raises(DataError, match="hflip.*digits"):
        load_dataset("digits", hflip=True)
    with pytest.raises(DataError, match=r"unknown dataset 'mnist'.*digits, cifar10, folder"):
        load_dataset("mnist")
    with pytest.raises(DataError, match=r"unknown split 'val'.*train, test"):
        load_dataset("digits", split="val")
    with pytest.raises(DataError, match="image_size must be 32"):
        load_dataset("cifar10", image_size=64)
    # every dataset the config accepts has a loader, and the other way round
    import typing

    from erasediff.config import DataConfig
    assert set(typing.get_args(typing.get_type_hints(DataConfig)["dataset"])) == set(DATASETS)


def test_cifar10_missing_without_download(tmp_path):
    missing = tmp_path / "nocifar"
    with pytest.raises(DataError, match=re.escape(f"CIFAR10 not found in folder '{missing}'") + ".*download"):
        load_dataset("cifar10", root=str(missing), download=False)


def test_cifar10_failed_download(tmp_path, monkeypatch):
    from urllib.error import URLError

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match=r"CIFAR10 not found in folder .*download failed.*URLError"):
        load_dataset("cifar10", root=str(tmp_path))


def test_folder_loader(tmp_path):
    from PIL import Image

    for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 12), color).save(tmp_path / c / f"{i}.png")
    data = load_dataset("folder", root=str(tmp_path), image_size=8)
    assert (data.num_classes, data.class_names, data.channels, data.image_size) == (2, ["cat", "dog"], 3, 8)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    x, y = data.dataset[4]
    assert x.shape == (3, 8, 8) and y == 1
    assert torch.allclose(x[2], torch.ones(8, 8)) and torch.allclose(x[0], -torch.ones(8, 8))
    images, labels = images_of_classes(data, [1], max_per_class=2)
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [1, 1]


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=re.escape(f"image folder '{tmp_path / 'nope'}' does not exist")):
        load_dataset("folder", root=str(tmp_path / "nope"), image_size=8)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="no images in folder"):
        load_dataset("folder", root=str(tmp_path), image_size=8)
    with pytest.raises(DataError, match="needs data.image_size"):
        load_dataset("folder", root=str(tmp_path))


def test_images_of_classes_digits(digits):
    train, _ = digits
    images, labels = images_of_classes(train, [3, 7], max_per_class=5)
    assert images.shape == (10, 1, 16, 16) and sorted(labels.tolist()) == [3] * 5 + [7] * 5
    first_threes = torch.nonzero(train.labels == 3).flatten()[:5]
    assert torch.equal(images[labels == 3], train.dataset.tensors[0][first_threes])
    with pytest.raises(DataError, match=r"class 12 is out of range: valid classes are 0\.\.9"):
        images_of_classes(train, [12])


def test_split_basic():
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 1])
    forget, remain = forget_remain_split(labels, [1], 3)
    assert forget.tolist() == [1, 3, 6] and remain.tolist() == [0, 2, 4, 5]
    assert forget.dtype == remain.dtype == torch.int64
    forget, remain = forget_remain_split(labels, [], 3)
    assert forget.numel() == 0 and remain.tolist() == list(range(7))


def test_split_errors():
    labels = torch.tensor([0, 0, 1, 1, 2])
    with pytest.raises(DataError, match=r"forget class 12 is out of range: valid classes are 0\.\.9"):
        forget_remain_split(labels, [12], 10)
    with pytest.raises(DataError, match=r"forget class -1 is out of range"):
        forget_remain_split(labels, [-1], 3)
    with pytest.raises(DataError, match=r"\[1\] are listed more than once"):
        forget_remain_split(labels, [1, 2, 1], 3)
    with pytest.raises(DataError, match="forget set is empty"):
        forget_remain_split(labels, [3], 4)
    with pytest.raises(DataError, match="remain set is empty"):
        forget_remain_split(labels, [0, 1, 2], 3)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(DataError, match=r"forget_ratio must be in \(0, 1\)"):
            forget_remain_split(labels, [1], 3, forget_ratio=bad)


def test_forget_ratio_matches_official_unl_ratio():
    labels = torch.arange(10).repeat_interleave(5000)  # CIFAR10 train: 5000 per class
    forget, remain = forget_remain_split(labels, [0], 10, forget_ratio=0.1)
    assert len(forget) == 5000 and len(remain) == 45000
    forget, remain = forget_remain_split(labels, [2, 8], 10, forget_ratio=0.1, seed=0)
    assert len(forget) == 4444 and len(remain) == 40000
    assert torch.all(forget[1:] > forget[:-1]) and set(labels[forget].tolist()) == {2, 8}
    assert torch.equal(forget, forget_remain_split(labels, [2, 8], 10, forget_ratio=0.1, seed=0)[0])
    assert not torch.equal(forget, forget_remain_split(labels, [2, 8], 10, forget_ratio=0.1, seed=1)[0])


def draw(it, n):
    return [next(it) for _ in range(n)]


def toy(n=23):
    """In-memory dataset whose image value is its own index, so batches reveal what was drawn."""
    return torch.utils.data.TensorDataset(torch.arange(n).float().view(n, 1, 1, 1), torch.arange(n) % 3)


class ItemDataset(Dataset):
    """The same data without `.tensors`, forcing the DataLoader path; counts image reads."""

    def __init__(self, n=23):
        self.n, self.reads = n, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.reads += 1
        return torch.full((1, 1, 1), float(i)), i % 3


def ids(batch):
    return batch[0].flatten().long().tolist()


@pytest.mark.parametrize("make", [toy, ItemDataset])
def test_batches_cover_each_index_once_per_epoch(make):
    indices = torch.tensor([0, 2, 3, 5, 7, 8, 11, 13, 17, 19, 22])
    it = InfiniteBatches(make(), indices, 4, seed=3)
    assert it.batches_per_epoch == 2  # 11 // 4, last 3 dropped
    for _ in range(3):
        epoch = [i for b in draw(it, 2) for i in ids(b)]
        assert len(epoch) == len(set(epoch)) == 8 and set(epoch) <= set(indices.tolist())
    images, labels = next(it)
    assert images.shape == (4, 1, 1, 1) and images.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.tolist() == [i % 3 for i in ids((images, labels))]
    full = InfiniteBatches(make(), indices[:8], 4, seed=0)
    assert sorted(i for b in draw(full, 2) for i in ids(b)) == indices[:8].tolist()


def test_batches_deterministic_and_seed_dependent():
    idx = torch.arange(23)
    a = [ids(b) for b in draw(InfiniteBatches(toy(), idx, 5, seed=0), 12)]
    b = [ids(b) for b in draw(InfiniteBatches(toy(), idx, 5, seed=0), 12)]
    c = [ids(b) for b in draw(InfiniteBatches(toy(), idx, 5, seed=1), 12)]
    assert a == b and a != c
    assert a[:4] != a[4:8]  # each epoch reshuffles
    assert [ids(b) for b in draw(InfiniteBatches(ItemDataset(), idx, 5, seed=0), 12)] == a


@pytest.mark.parametrize("make", [toy, ItemDataset])
@pytest.mark.parametrize("k", [0, 3, 4, 9])
def test_batches_resume(make, k):
    fresh = [ids(b) for b in draw(InfiniteBatches(make(), torch.arange(23), 5, seed=7), k + 6)]
    ds = make()
    it = InfiniteBatches(ds, torch.arange(23), 5, seed=7)
    draw(it, 2)  # a loader already mid-epoch must be dropped on resume
    reads = getattr(ds, "reads", 0)
    it.load_state_dict({"batches_drawn": k})
    assert getattr(ds, "reads", 0) == reads  # fast-forward reads no image
    assert [ids(b) for b in draw(it, 6)] == fresh[k:]
    assert it.state_dict() == {"batches_drawn": k + 6}
    with pytest.raises(DataError, match="batches_drawn"):
        it.load_state_dict({"batches_drawn": -1})


def test_batches_small_set_and_empty():
    it = InfiniteBatches(toy(), torch.tensor([4, 9, 1]), 8, seed=0)
    assert it.batches_per_epoch == 1
    batches = [ids(b) for b in draw(it, 6)]
    assert all(sorted(b) == [1, 4, 9] for b in batches) and len({tuple(b) for b in batches}) > 1
    with pytest.raises(DataError, match="empty"):
        InfiniteBatches(toy(), torch.tensor([], dtype=torch.int64), 4, seed=0)


def test_batches_with_workers():
    idx = torch.arange(23)
    ref = [ids(b) for b in draw(InfiniteBatches(toy(), idx, 5, seed=2), 6)]
    it = InfiniteBatches(ItemDataset(), idx, 5, seed=2, num_workers=1)
    it.load_state_dict({"batches_drawn": 2})
    assert [ids(b) for b in draw(it, 4)] == ref[2:]
