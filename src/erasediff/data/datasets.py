"""Dataset loaders: every dataset becomes a `LabeledImages` of float32 (C, H, W) images in [-1, 1].

The diffusion models, the forget/remain split and the evaluation classifier all see the same
convention: pixel values scaled to [-1, 1] and integer class labels, with the labels also held as
one (N,) int64 tensor so that splits never have to read an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from erasediff.data.labeled import LabeledImages
from erasediff.data.prompts import load_prompt_folder
from erasediff.errors import DataError

DATASETS = ("digits", "cifar10", "folder", "celebahq", "prompt_folder")
SPLITS = ("train", "test")
CIFAR10_ROOT = "data/cifar10"
CELEBAHQ_ANNOTATIONS = "CelebAMask-HQ-attribute-anno.txt"
DIGITS_SIZE = 16


def dataset_from_config(d, split: str, *, hflip: bool | None = None) -> LabeledImages:
    """`load_dataset` with every setting of a `DataConfig` `d` (hflip: None = d.hflip)."""
    return load_dataset(d.dataset, root=d.root, split=split, image_size=d.image_size,
                        hflip=d.hflip if hflip is None else hflip, download=d.download,
                        attribute=d.attribute, attribute_file=d.attribute_file, prompts=d.prompts)


def load_dataset(name: str, *, root: str | None = None, split: str = "train", image_size: int | None = None,
                 hflip: bool = False, download: bool = True, attribute: str | None = None,
                 attribute_file: str | None = None, prompts: Sequence[str] = ()) -> LabeledImages:
    """Load dataset `name` ("digits" | "cifar10" | "folder" | "celebahq") at `split` ("train" | "test").

    image_size is the side in pixels (digits default 16, cifar10 fixed at 32, folder required,
    celebahq default 256). hflip adds a random horizontal flip (training augmentation); it is refused
    on digits. attribute / attribute_file: celebahq's labels (see `_load_celebahq`).
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
    if name == "celebahq":
        return _load_celebahq(root, attribute, attribute_file, image_size or 256, hflip)
    if name == "prompt_folder":  # Stable Diffusion: images + manifest.csv, label = prompt index
        return load_prompt_folder(root, prompts, image_size or 512, hflip)
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


class _ImageFiles(Dataset):
    """Item i = (transform(RGB image of paths[i]), labels[i]); images are read on access."""

    def __init__(self, paths: list[Path], labels: torch.Tensor, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), int(self.labels[i])


def read_attribute_file(path: Path) -> tuple[list[str], list[str], torch.Tensor]:
    """Parse a CelebA / CelebAMask-HQ attribute annotation file.

    Format (both datasets): line 1 = number of images; line 2 = the 40 attribute names; then one line
    per image: `<file name> <40 values in {-1, 1}>`. Returns (attribute names, file names,
    values (N, A) int8 in {-1, 1}).
    """
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if len(lines) < 3:
        raise DataError(f"attribute file {path} is empty or truncated: expected a count line, a line of attribute "
                        "names and one line per image")
    names = lines[1]
    files, values = [], []
    for k, row in enumerate(lines[2:], start=3):
        if len(row) != len(names) + 1 or any(v not in ("1", "-1") for v in row[1:]):
            raise DataError(f"attribute file {path}, line {k}: expected '<file> ' followed by {len(names)} values in "
                            f"{{-1, 1}} (got {len(row)} fields)")
        files.append(row[0])
        values.append([int(v) for v in row[1:]])
    return names, files, torch.tensor(values, dtype=torch.int8)


def _load_celebahq(root: str | None, attribute: str | None, attribute_file: str | None, image_size: int,
                   hflip: bool) -> LabeledImages:
    """CelebA-HQ (or CelebA) images labelled by one attribute: 1 = has it, 0 = does not.

    root: the image folder (CelebAMask-HQ's `CelebA-HQ-img/` with 0.jpg ... 29999.jpg); attribute_file:
    the annotation file the user provides (default <root>/CelebAMask-HQ-attribute-anno.txt, also
    looked up one level above root as CelebAMask-HQ ships it). CelebA-HQ has no train/test split:
    both splits are every annotated image (the unconditional experiments of docs/experiments.md evaluate on
    generated images only). Images are resized and center-cropped to image_size, in [-1, 1].
    """
    if root is None:
        raise DataError("the celebahq dataset needs data.root: the folder of CelebA-HQ images (e.g. CelebA-HQ-img)")
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"CelebA-HQ image folder '{root}' does not exist")
    if attribute_file is not None:
        anno = Path(attribute_file)
    else:
        candidates = [folder / CELEBAHQ_ANNOTATIONS, folder.parent / CELEBAHQ_ANNOTATIONS]
        anno = next((c for c in candidates if c.is_file()), candidates[0])
    if not anno.is_file():
        raise DataError(f"CelebA-HQ attribute file not found: {anno} (set data.attribute_file to the "
                        f"{CELEBAHQ_ANNOTATIONS} the dataset ships)")
    names, files, values = read_attribute_file(anno)
    if attribute not in names:
        raise DataError(f"unknown CelebA attribute {attribute!r} in {anno}; valid attributes: {', '.join(names)}")
    paths = [folder / f for f in files]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} images listed in {anno} are missing from '{root}' "
                        f"(first: {missing[0].name})")
    labels = (values[:, names.index(attribute)] > 0).long()
    ds = _ImageFiles(paths, labels, _to_unit_range(hflip, image_size))
    return LabeledImages(ds, labels, 2, [f"not_{attribute}", attribute], 3, image_size, "celebahq")


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
