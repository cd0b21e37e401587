"""Imagenette for the Stable Diffusion class-forgetting evaluation (docs/experiments.md "Table 4").

- The 10 classes, their ImageNet-1k indices (`IMAGENET_INDEX`, the SalUn/ESD mapping; UNCONFIRMED for
  this paper, docs/evaluation.md "Stable Diffusion metrics") and the class named in a prompt.
- Generated images: a `generate` folder (files `<case_number>_<k>.png` listed in its manifest.csv)
  read with the prompt CSV it came from, which gives each case its class (`class` column, else the
  class its prompt names).
- Real images: fast.ai's imagenette2 (`<root>/<wnid>/*.JPEG`, or its parent holding `train/`), a
  folder with a manifest.csv (path, prompt), or the Hub dataset `frgfm/imagenette` (config 160px,
  train split; needs the optional `datasets` package). `select_real` takes the remaining classes, all
  of them or a class-balanced share; `real_batches` resizes them (bicubic, short side) and
  center-crops them to the generated size, as the paper's evaluation does.
Images are float32 (3, H, W) in [-1, 1], the project's range.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from erasediff.data.prompts import IMAGENETTE_WNIDS, MANIFEST, read_prompt_csv
from erasediff.errors import DataError, first_line

#: ImageNet-1k indices of the 10 Imagenette classes (docs/evaluation.md; SalUn/ESD mapping), Imagenette order
IMAGENET_INDEX = {
    "tench": 0, "English springer": 217, "cassette player": 482, "chain saw": 491, "church": 497,
    "French horn": 566, "garbage truck": 569, "gas pump": 571, "golf ball": 574, "parachute": 701,
}
IMAGENETTE_CLASSES = tuple(IMAGENET_INDEX)
#: WordNet folder names of imagenette2 -> class; fast.ai files parachute under n03888605, ImageNet under n03888257
WNID_CLASS = {**IMAGENETTE_WNIDS, "n03888257": "parachute"}
HUB_DATASET = "frgfm/imagenette"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


# ------------------------------------------------------------------------------------------ classes
def class_key(name: str) -> str:
    """'English springer' -> 'english_springer' (the suffix of the `acc_<class>` keys)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def check_class(name: str) -> str:
    """The Imagenette class called `name` (case and '_'/' ' insensitive); DataError naming the valid ones."""
    found = {class_key(c): c for c in IMAGENETTE_CLASSES}.get(class_key(name))
    if found is None:
        raise DataError(f"'{name}' is not an Imagenette class; valid: {', '.join(IMAGENETTE_CLASSES)}")
    return found


def class_in_prompt(prompt: str) -> Optional[str]:
    """The Imagenette class named in `prompt` ("Image of tench", "an image of a chain saw"), or None."""
    text = f" {class_key(prompt).replace('_', ' ')} "
    hits = [c for c in IMAGENETTE_CLASSES if f" {class_key(c).replace('_', ' ')} " in text]
    return max(hits, key=len) if hits else None


def forget_class(forget_prompts: Sequence[str]) -> str:
    """The one Imagenette class that the prompts of D_f (data.forget_prompts) name; DataError otherwise."""
    named = sorted({c for c in map(class_in_prompt, forget_prompts) if c is not None})
    if len(named) != 1:
        raise DataError(f"data.forget_prompts {list(forget_prompts)} must name exactly one Imagenette class (they name "
                        f"{named or 'none'}); valid classes: {', '.join(IMAGENETTE_CLASSES)}")
    return named[0]


# ------------------------------------------------------------------------------- generated images
@dataclass(frozen=True)
class GeneratedImage:
    path: Path
    prompt: str
    cls: str  # Imagenette class name


def prompt_classes(prompts_csv) -> dict[int, tuple[str, str]]:
    """case_number -> (prompt, class) of a prompt CSV: its `class` column, else the class named in the prompt."""
    rows = read_prompt_csv(prompts_csv)
    with Path(prompts_csv).open(newline="", encoding="utf-8") as f:
        records = list(csv.DictReader(f))
    out = {}
    for row, rec in zip(rows, records):
        named = (rec.get("class") or "").strip()
        cls = check_class(named) if named else class_in_prompt(row.prompt)
        if cls is None:
            raise DataError(f"prompt CSV {prompts_csv}: case {row.case_number} ('{row.prompt}') has no `class` column "
                            f"value and names no Imagenette class ({', '.join(IMAGENETTE_CLASSES)})")
        out[row.case_number] = (row.prompt, cls)
    return out


def read_generated(folder, prompts_csv) -> list[GeneratedImage]:
    """The images listed in folder/manifest.csv, each with its prompt and Imagenette class.

    A manifest row's case number is its `case_number` column (what `generate` writes), else the
    `<case_number>_` prefix of its file name; the prompt CSV maps it to a class (`prompt_classes`).
    """
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not folder.is_dir():
        raise DataError(f"generated-image folder '{folder}' does not exist")
    if not manifest.is_file():
        raise DataError(f"generated-image folder '{folder}' has no {MANIFEST}; `erasediff generate` writes one "
                        "(columns path, prompt, seed, guidance, case_number, index)")
    classes = prompt_classes(prompts_csv)
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if "path" not in (reader.fieldnames or []):
            raise DataError(f"{manifest} has no `path` column (columns: {', '.join(reader.fieldnames or []) or 'none'})")
        records = list(reader)
    if not records:
        raise DataError(f"{manifest} lists no images")
    out = []
    for rec in records:
        case = rec.get("case_number") or rec["path"].split("_", 1)[0]
        try:
            prompt, cls = classes[int(case)]
        except (ValueError, KeyError):
            raise DataError(f"{manifest}: image {rec['path']} has case number '{case}', which is not in {prompts_csv} "
                            f"(cases {sorted(classes)})") from None
        path = folder / rec["path"]
        if not path.is_file():
            raise DataError(f"{manifest} lists {rec['path']}, which is not in {folder}")
        out.append(GeneratedImage(path, prompt, cls))
    return out


def read_image(path: Path) -> torch.Tensor:
    """One image file as float32 (3, H, W) RGB in [-1, 1] (8-bit value v -> v / 127.5 - 1)."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB"), dtype=np.float32)  # (H, W, 3) in 0..255
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1.0


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file."""
    with Image.open(path) as img:
        return img.height, img.width


def image_batches(refs: Sequence, batch_size: int, read: Callable[[object], torch.Tensor] = read_image, *,
                  desc: str = "images", progress: bool = False) -> Iterator[torch.Tensor]:
    """Batches (B, 3, H, W) float32 in [-1, 1] of `refs` read with `read`, in order; one size throughout."""
    size = None
    for start in tqdm(range(0, len(refs), batch_size), desc=desc, unit="batch", disable=not progress):
        images = []
        for ref in refs[start:start + batch_size]:
            image = read(ref)
            size = size or tuple(image.shape[1:])
            if tuple(image.shape[1:]) != size:
                raise DataError(f"image {ref} is {image.shape[2]}x{image.shape[1]}, the first one {size[1]}x{size[0]}: "
                                "the images of one set must share one size")
            images.append(image)
        yield torch.stack(images)


# ------------------------------------------------------------------------------------- real images
class RealImagenette:
    """Real Imagenette images with their classes: a folder or the Hub dataset `frgfm/imagenette`.

    Folder layouts: fast.ai's imagenette2 (`<root>/<wnid>/*.JPEG`, or its parent with `train/`), or a
    folder with a manifest.csv (path, prompt) as `python -m erasediff.data.prompts imagenette-manifest
    DIR` or `erasediff generate` write it (class = the class named in the prompt). `items` lists
    (class, reference) in a fixed order; `open(reference)` gives the RGB PIL image; `describe` names
    the source (it is part of the cache key of the real statistics).
    """

    def __init__(self, source: str):
        self.source = str(source)
        self._dataset = None
        root = Path(source)
        if root.is_dir():
            self.items = self._folder_items(root)
            self.describe = f"folder:{root.resolve()}"
        elif self.source == HUB_DATASET:
            self._dataset = load_hub_imagenette()
            self.items = self._hub_items(self._dataset)
            self.describe = f"hub:{HUB_DATASET}/160px/train"
        else:
            raise DataError(f"real Imagenette images '{source}': no such folder; pass imagenette2/train (class folders "
                            f"by WordNet id), a folder with a {MANIFEST} (path, prompt), or '{HUB_DATASET}' (needs the "
                            "`datasets` package)")
        if not self.items:
            raise DataError(f"no real Imagenette images in '{source}': expected <wnid>/*.JPEG class folders "
                            f"({', '.join(WNID_CLASS)}) or a {MANIFEST} with columns path, prompt")

    @staticmethod
    def _folder_items(root: Path) -> list[tuple[str, Path]]:
        if (root / MANIFEST).is_file():
            with (root / MANIFEST).open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not {"path", "prompt"} <= set(reader.fieldnames or []):
                    raise DataError(f"{root / MANIFEST} needs the columns path and prompt")
                items = []
                for rec in reader:
                    cls = class_in_prompt(rec["prompt"])
                    if cls is None:
                        raise DataError(f"{root / MANIFEST}: prompt '{rec['prompt']}' of {rec['path']} names no "
                                        f"Imagenette class ({', '.join(IMAGENETTE_CLASSES)})")
                    items.append((cls, root / rec["path"]))
            missing = [p for _, p in items if not p.is_file()]
            if missing:
                raise DataError(f"{len(missing)} images listed in {root / MANIFEST} are missing (first: {missing[0]})")
            return items
        if not any((root / w).is_dir() for w in WNID_CLASS) and (root / "train").is_dir():
            root = root / "train"
        return [(cls, p) for wnid, cls in WNID_CLASS.items() if (root / wnid).is_dir()
                for p in sorted((root / wnid).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]

    @staticmethod
    def _hub_items(dataset) -> list[tuple[str, int]]:
        names = dataset.features["label"].names if hasattr(dataset.features["label"], "names") else []

        def cls_of(label: int) -> str:
            name = names[label] if label < len(names) else ""
            return WNID_CLASS.get(name) or class_in_prompt(name) or IMAGENETTE_CLASSES[label]

        return [(cls_of(int(label)), i) for i, label in enumerate(dataset["label"])]

    def open(self, ref) -> Image.Image:
        if self._dataset is not None:
            return self._dataset[int(ref)]["image"].convert("RGB")
        with Image.open(ref) as img:
            return img.convert("RGB")


def load_hub_imagenette(config: str = "160px", split: str = "train"):
    """The Hub dataset `frgfm/imagenette` (docs/experiments.md "Table 4": config 160px, train split) via `datasets`.

    `datasets` is not a requirement of this project: without it, a DataError tells the user to pass
    the imagenette2 folder instead.
    """
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading the Hub dataset {HUB_DATASET} needs the `datasets` package, which is not installed "
                        "(and not a requirement of this project): pip install datasets, or download "
                        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz and pass its train/ "
                        "folder") from None
    try:
        return datasets.load_dataset(HUB_DATASET, config, split=split)
    except (OSError, ValueError, ConnectionError) as exc:
        raise DataError(f"could not load {HUB_DATASET} ({config}, {split}): {first_line(exc)}") from None


def select_real(items: Sequence[tuple[str, object]], forget: str, max_real: Optional[int]) -> list[tuple[str, object]]:
    """The real items not of class `forget`: all of them, or `max_real` taken round-robin over the classes.

    The round-robin takes each remaining class's items in their listed order, one class after the
    other, so a capped set is class-balanced (up to one image) and deterministic. The paper's script
    takes "the first 1000 train images not of the forget class" of the Hub dataset (which 1000 is
    UNCONFIRMED, docs/evaluation.md "Stable Diffusion metrics").
    """
    remain = [(c, r) for c, r in items if c != forget]
    if not remain:
        raise DataError(f"the real images hold no class other than the forget class '{forget}'")
    if max_real is None or max_real >= len(remain):
        return remain
    if max_real < 2:
        raise DataError(f"max_real must be >= 2 (got {max_real})")
    per_class: dict[str, list] = {}
    for c, r in remain:
        per_class.setdefault(c, []).append((c, r))
    queues = [iter(v) for v in per_class.values()]
    out: list = []
    while len(out) < max_real:
        for q in queues:
            item = next(q, None)
            if item is not None and len(out) < max_real:
                out.append(item)
    return out


def real_batches(real: RealImagenette, refs: Sequence, size: tuple[int, int], batch_size: int, *,
                 progress: bool = False) -> Iterator[torch.Tensor]:
    """Batches (B, 3, H, W) in [-1, 1] of real images `refs`: bicubic resize of the short side to min(size),
    center crop to `size` = (H, W) of the generated images (docs/experiments.md "Table 4")."""
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(min(size), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                           T.PILToTensor()])

    def read(ref) -> torch.Tensor:
        return transform(real.open(ref)).float() / 127.5 - 1.0  # uint8 (3, H, W) -> [-1, 1]

    return image_batches(refs, batch_size, read, desc="real", progress=progress)
