"""Dataset loaders: every dataset becomes a `LabeledImages` of float32 (C, H, W) images in [-1, 1].

The diffusion models, the forget/remain split and the evaluation classifier all see the same
convention: pixel values scaled to [-1, 1] and integer class labels, with the labels also held as
one (N,) int64 tensor so that splits never have to read an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from erasediff.errors import DataError

DATASETS = ("digits", "cifar10", "folder")
SPLITS = ("train", "test")
CIFAR10_ROOT = "data/cifar10"
DIGITS_SIZE = 16


@dataclass
class LabeledImages:
    """A labelled image dataset with its labels precomputed.

    dataset: item i -> (image float32 (C, H, W) in [-1, 1], label int).
    labels: (N,) int64 with labels[i] == dataset[i][1].
    """

    dataset: Dataset
    labels: torch.Tensor
    num_classes: int
    class_names: list[str]
    channels: int
    image_size: int
    name: str


def load_dataset(name: str, *, root: str | None = None, split: str = "train", image_size: int | None = None,
                 hflip: bool = False, download: bool = True) -> LabeledImages:
    """Load dataset `name` ("digits" | "cifar10" | "folder") at `split` ("train" | "test").

    image_size is the side in pixels (digits default 16, cifar10 fixed at 32, folder required).
    hflip adds a random horizontal flip (training augmentation); it is refused on digits.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: valid datasets are {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: valid splits are {', '.join(SPLITS)}")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive int (got {image_size!r})")
    if name == "digits":
        return _load_digits(split, image_size or DIGITS_SIZE, hflip)
    if name == "cifar10":
        return _load_cifar10(root or CIFAR10_ROOT, split, image_size, hflip, download)
    return _load_folder(root, split, image_size, hflip)


def _load_digits(split: str, image_size: int, hflip: bool) -> LabeledImages:
    """scikit-learn's 1797 8x8 digits (values 0..16), bilinearly resized, held in memory.

    The 80/20 stratified split uses random_state=0 so that every run and the evaluation classifier
    share it; each split keeps the original sklearn order (indices sorted).
    """
    if hflip:
        raise DataError("hflip is not allowed on digits: flipping a digit changes its class (set hflip: false)")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    train_idx, test_idx = train_test_split(range(len(digits.target)), test_size=0.2,
                                           stratify=digits.target, random_state=0)
    idx = torch.tensor(sorted(train_idx if split == "train" else test_idx), dtype=torch.int64)
    x = torch.from_numpy(digits.images).float()[idx, None] / 16.0
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = x.clamp(0.0, 1.0) * 2.0 - 1.0
    labels = torch.from_numpy(digits.target).long()[idx]
    return LabeledImages(TensorDataset(images, labels), labels, 10, [str(d) for d in range(10)], 1, image_size,
                         "digits")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _to_unit_range(hflip: bool, resize: int | None = None):
    from torchvision import transforms as T

    steps = [T.Resize(resize), T.CenterCrop(resize)] if resize else []
    steps += [T.RandomHorizontalFlip()] if hflip else []
    return T.Compose(steps + [T.ToTensor(), T.Normalize((0.5,), (0.5,))])


def _load_cifar10(root: str, split: str, image_size: int | None, hflip: bool, download: bool) -> LabeledImages:
    """torchvision CIFAR10 (50000 train / 10000 test, 3x32x32), read from `root` on each access."""
    from torchvision.datasets import CIFAR10

    if image_size not in (None, 32):
        raise DataError(f"cifar10 images are 32x32: image_size must be 32 or unset (got {image_size})")
    try:
        ds = CIFAR10(root, train=(split == "train"), download=download, transform=_to_unit_range(hflip))
    except (RuntimeError, OSError) as exc:
        how = ("the download failed; fetch the python version from https://www.cs.toronto.edu/~kriz/cifar.html and"
               if download else "set data.download: true, or")
        raise DataError(f"CIFAR10 not found in folder '{root}': {how} extract 'cifar-10-batches-py' into that folder"
                        f" ({_one_line(exc)})") from exc
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return LabeledImages(ds, labels, len(ds.classes), list(ds.classes), 3, 32, "cifar10")


def _load_folder(root: str | None, split: str, image_size: int | None, hflip: bool) -> LabeledImages:
    """An ImageFolder tree root/<class_name>/<image>, read as RGB, resized and center-cropped.

    If root/<split> is a folder it is used (root/train/<class>/..., root/test/<class>/...); otherwise
    root itself is the tree, whatever the split.
    """
    from torchvision.datasets import ImageFolder

    if root is None:
        raise DataError("the folder dataset needs data.root: a folder laid out as root/<class_name>/<image>")
    if image_size is None:
        raise DataError("the folder dataset needs data.image_size (images are resized and center-cropped to it)")
    path = Path(root)
    if not path.is_dir():
        raise DataError(f"image folder '{root}' does not exist: expected root/<class_name>/<image>")
    if (path / split).is_dir():
        path = path / split
    try:
        ds = ImageFolder(str(path), transform=_to_unit_range(hflip, image_size))
    except FileNotFoundError as exc:
        raise DataError(f"no images in folder '{path}': expected {path}/<class_name>/<image> ({_one_line(exc)})") from exc
    labels = torch.as_tensor(ds.targets, dtype=torch.int64)
    return LabeledImages(ds, labels, len(ds.classes), list(ds.classes), 3, image_size, "folder")


def images_of_classes(data: LabeledImages, classes: Sequence[int],
                      max_per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of `classes` in dataset order, the first `max_per_class` of each (None = all).

    Returns images (N, C, H, W) float32 in [-1, 1] and labels (N,) int64. Used as the real-image
    reference of evaluation, so load `data` with hflip=False to get deterministic images.
    """
    for c in classes:
        if not 0 <= c < data.num_classes:
            raise DataError(f"class {c} is out of range: valid classes are 0..{data.num_classes - 1} ({data.name})")
    keep = torch.zeros(len(data.labels), dtype=torch.bool)
    for c in set(classes):
        idx = torch.nonzero(data.labels == c).flatten()
        keep[idx[:max_per_class] if max_per_class is not None else idx] = True
    idx = torch.nonzero(keep).flatten()
    tensors = getattr(data.dataset, "tensors", None)
    if tensors is not None and len(tensors) == 2:
        return tensors[0][idx], tensors[1][idx].long()
    if len(idx) == 0:
        return torch.empty(0, data.channels, data.image_size, data.image_size), torch.empty(0, dtype=torch.int64)
    items = [data.dataset[i] for i in idx.tolist()]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)
