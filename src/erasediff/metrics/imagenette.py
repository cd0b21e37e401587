"""Imagenette evaluation of SD class forgetting: PAPER.md Table 4 (§4.4, §5 "Imagenette", §6.4).

Two numbers per model, computed on the evaluation images of `erasediff generate` (a folder with a
`manifest.csv`; files `<case_number>_<k>.png`; StableDiffusion/prompts/imagenette.csv maps each case
number to its prompt "Image of {class}" and its `class` column):

- accuracy: the share of the images of each class whose top-1 ImageNet class (torchvision ResNet-50,
  `ResNet50_Weights.IMAGENET1K_V2` = `DEFAULT`, its own preprocessing `weights.transforms()`) is that
  class's ImageNet index (`IMAGENET_INDEX`, the SalUn/ESD mapping, UNCONFIRMED for this paper:
  PAPER.md §5). The paper reports it for the forgotten class ("tench acc", lower is better); the mean
  over the 9 other classes shows what is kept. The official `imageclassify.py` only dumps top-5 to a
  CSV; the accuracy step is ours.
- FID of the remaining classes: the generated images of every class but the forgotten one against real
  Imagenette images of those classes, resized (bicubic) and center-cropped to the generated size.
  `standard` protocol: pytorch-fid Inception pool_3 (2048-d), every real image of the remaining
  classes. `paper` protocol (`quirks.EvalQuirks.sd_table4()`): the first max-pool block (64-d) and the
  uint8 cast of both sets, and 1000 real images, as EraseDiff/SalUn `compute-fid.py` (torchmetrics
  `FID(feature=64)`); these are the paper's ≈3–5 values, not a standard FID. Which 1000 real images
  the paper used ("the first 1000 of the train split without the forget class", in the Hub dataset's
  order) is not known here: ours takes an equal share of each remaining class (`select_real`).

The classifier and the feature extractor are arguments (images (B, 3, H, W) in [-1, 1] -> logits
(B, 1000) / features (B, D)), so the tests and the scripts' SMOKE runs pass tiny random networks
(`smoke_classifier`, `smoke_extractor`) instead of downloading ResNet-50 and Inception.
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

from ..data.prompts import IMAGENETTE_WNIDS, MANIFEST, read_prompt_csv
from ..errors import DataError, ErasediffError, first_line
from .fid import (
    IMAGE_EXTENSIONS,
    _device_of,
    _read_image,
    extract_features,
    feature_statistics,
    fid_from_statistics,
    inception_extractor,
    reference_statistics,
)
from .quirks import EvalQuirks

#: ImageNet-1k indices of the 10 Imagenette classes (PAPER.md §5; SalUn/ESD mapping), in Imagenette order
IMAGENET_INDEX = {
    "tench": 0, "English springer": 217, "cassette player": 482, "chain saw": 491, "church": 497,
    "French horn": 566, "garbage truck": 569, "gas pump": 571, "golf ball": 574, "parachute": 701,
}
IMAGENETTE_CLASSES = tuple(IMAGENET_INDEX)
#: WordNet folder names of imagenette2 -> class; fast.ai files parachute under n03888605, ImageNet under n03888257
WNID_CLASS = {**IMAGENETTE_WNIDS, "n03888257": "parachute"}
HUB_DATASET = "frgfm/imagenette"
FID_PROTOCOLS = ("standard", "paper")
PAPER_MAX_REAL = 1000  # real images of compute-fid.py (PAPER.md §5)

#: PAPER.md §6.4 (v2 Table 4): FID of the remaining classes (64-d uint8 variant) and tench accuracy
PAPER_TABLE4 = {
    "sd14": {"label": "SD v1.4", "fid": 4.8883, "acc_forget": 0.74},
    "esd_x": {"label": "ESD-x", "fid": 3.0824, "acc_forget": 0.00},
    "erasediff_x": {"label": "EraseDiff-x", "fid": 3.0902, "acc_forget": 0.00},
}


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


# ------------------------------------------------------------------------------ generated images
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


def _batches(paths: Sequence[Path], batch_size: int, read: Callable[[Path], torch.Tensor],
             desc: str, progress: bool) -> Iterator[torch.Tensor]:
    """Batches (B, 3, H, W) float32 in [-1, 1] of `paths` read with `read`, in order; one size throughout."""
    if batch_size < 1:
        raise ErasediffError(f"batch size must be >= 1 (got {batch_size})")
    size = None
    for start in tqdm(range(0, len(paths), batch_size), desc=desc, unit="batch", disable=not progress):
        images = []
        for p in paths[start:start + batch_size]:
            image = read(p)
            size = size or tuple(image.shape[1:])
            if tuple(image.shape[1:]) != size:
                raise DataError(f"image {p} is {image.shape[2]}x{image.shape[1]}, the first one {size[1]}x{size[0]}: "
                                "the generated images of a folder must share one size")
            images.append(image)
        yield torch.stack(images)


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of an image file."""
    with Image.open(path) as img:
        return img.height, img.width


# ---------------------------------------------------------------------------------------- accuracy
class TorchvisionClassifier(torch.nn.Module):
    """A torchvision ImageNet classifier with its own preprocessing: images (B, 3, H, W) in [-1, 1] -> logits (B, 1000).

    `preprocess` is the weights' `transforms()` (ResNet-50 V2: bilinear resize of the short side to
    232, center crop 224, ImageNet mean/std), applied to the batch as a [0, 1] tensor (the official
    `imageclassify.py` applies it to PIL images; the tensor resize is antialiased, so the two agree up
    to interpolation rounding).
    """

    def __init__(self, net: torch.nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.net, self.preprocess = net.eval(), preprocess

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess((images.float() + 1.0) / 2.0))  # [-1, 1] -> [0, 1] -> model input


def resnet50_classifier(device: str | torch.device | None = None) -> TorchvisionClassifier:
    """torchvision ResNet-50 with `ResNet50_Weights.IMAGENET1K_V2` (downloaded on first use) and its transforms."""
    from torchvision.models import ResNet50_Weights, resnet50

    weights = ResNet50_Weights.IMAGENET1K_V2
    try:
        net = resnet50(weights=weights)
    except (OSError, RuntimeError) as exc:
        raise ErasediffError(f"could not fetch the ResNet-50 weights {weights.url} ({type(exc).__name__}: {exc}); "
                             f"put the file into torch's hub cache ({torch.hub.get_dir()}/checkpoints) on a machine "
                             "without internet") from exc
    model = TorchvisionClassifier(net, weights.transforms())
    return model if device is None else model.to(device)


class _TinyRandomNet(torch.nn.Module):
    """A small random conv net: images (B, 3, H, W) in [-1, 1] -> (B, out_dim). Offline smoke stand-in only."""

    def __init__(self, out_dim: int, seed: int):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8, out_dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(images.float()))  # (B, 8, H/2, W/2)
        return self.fc(h.mean(dim=(2, 3)))


def smoke_classifier(seed: int = 0) -> torch.nn.Module:
    """A tiny RANDOM 1000-way classifier for offline smoke runs (`--offline-smoke`); its accuracies mean nothing."""
    return _TinyRandomNet(1000, seed)


def smoke_extractor(dims: int = 2048, seed: int = 1) -> torch.nn.Module:
    """A tiny RANDOM feature extractor for offline smoke runs, standing in for Inception-v3 of `dims` features.

    It outputs 8 features for dims=2048 and 4 for dims=64 (a few dozen smoke images cannot fill a
    2048-d covariance); `extractor_id` names it so cached statistics never mix with Inception's.
    """
    net = _TinyRandomNet(8 if dims == 2048 else 4, seed + dims)
    net.extractor_id = f"smoke-random-{dims}"
    return net


@torch.inference_mode()
def imagenette_accuracy(folder, prompts_csv, classifier: Callable[[torch.Tensor], torch.Tensor], *,
                        forget: str = "tench", batch_size: int = 50, progress: bool = False) -> dict:
    """Top-1 accuracy of `classifier` on the generated images of each class (PAPER.md §5 "Imagenette").

    folder: `generate` output (manifest.csv); prompts_csv: the CSV it was generated from. classifier:
    images (B, 3, H, W) in [-1, 1] -> logits (B, 1000) over ImageNet-1k (`resnet50_classifier()`).
    Returns {"acc_<class>": share of that class's images whose argmax is its ImageNet index (for the
    classes present), "acc_forget": the forgotten class's, "acc_remain_mean": the unweighted mean over
    the other classes present, "n_<class>": image counts, "n_images", "forget"}. Images of several
    prompts of one class are pooled.
    """
    forget = check_class(forget)
    items = read_generated(folder, prompts_csv)
    present = [c for c in IMAGENETTE_CLASSES if any(it.cls == c for it in items)]
    if forget not in present:
        raise DataError(f"no generated image of the forget class '{forget}' in {folder} (classes there: "
                        f"{', '.join(present)})")
    device = _device_of(classifier)
    preds = []
    for batch in _batches([it.path for it in items], batch_size, _read_image, "accuracy", progress):
        logits = classifier(batch if device is None else batch.to(device))
        if logits.dim() != 2 or logits.shape[1] != 1000:
            raise ErasediffError(f"the classifier must return logits (B, 1000) over ImageNet-1k (got {tuple(logits.shape)})")
        preds.append(logits.argmax(dim=1).cpu())
    pred = torch.cat(preds)  # (N,) ImageNet indices
    target = torch.tensor([IMAGENET_INDEX[it.cls] for it in items])
    out: dict = {"forget": forget, "n_images": len(items)}
    for c in present:
        mask = target == IMAGENET_INDEX[c]
        out[f"acc_{class_key(c)}"] = float((pred[mask] == target[mask]).float().mean())
        out[f"n_{class_key(c)}"] = int(mask.sum())
    out["acc_forget"] = out[f"acc_{class_key(forget)}"]
    remain = [out[f"acc_{class_key(c)}"] for c in present if c != forget]
    out["acc_remain_mean"] = float(np.mean(remain)) if remain else None
    return out


# ----------------------------------------------------------------------------------- real images
class RealImagenette:
    """Real Imagenette images with their classes: a folder or the Hub dataset `frgfm/imagenette`.

    Folder layouts: fast.ai's imagenette2 (`<root>/<wnid>/*.JPEG`, or its parent with `train/`), or a
    folder with a manifest.csv (path, prompt) as `python -m erasediff.data.prompts imagenette-manifest
    DIR` or `erasediff generate` write it (class = the class named in the prompt). `items` lists
    (class, reference) in a fixed order; `open(reference)` gives the RGB PIL image.
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
    """The Hub dataset `frgfm/imagenette` (PAPER.md §4.4: config 160px, train split) via `datasets`.

    `datasets` is not a requirement of this project: without it, a DataError tells the user to pass
    the imagenette2 folder instead.
    """
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading the Hub dataset {HUB_DATASET} needs the `datasets` package, which is not installed "
                        "(and not a requirement of this project): pip install datasets, or download "
                        "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz and pass its train/ folder") from None
    try:
        return datasets.load_dataset(HUB_DATASET, config, split=split)
    except (OSError, ValueError, ConnectionError) as exc:
        raise DataError(f"could not load {HUB_DATASET} ({config}, {split}): {first_line(exc)}") from None


def select_real(items: Sequence[tuple[str, object]], forget: str, max_real: Optional[int]) -> list[tuple[str, object]]:
    """The real items not of class `forget`: all of them, or `max_real` taken round-robin over the classes.

    The round-robin takes each remaining class's items in their listed order, one class after the
    other, so a capped set is class-balanced (up to one image) and deterministic.
    """
    remain = [(c, r) for c, r in items if c != forget]
    if not remain:
        raise DataError(f"the real images hold no class other than the forget class '{forget}'")
    if max_real is None or max_real >= len(remain):
        return remain
    if max_real < 2:
        raise ErasediffError(f"max_real must be >= 2 (got {max_real})")
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


def _resize_reader(size: tuple[int, int], real: RealImagenette) -> Callable[[object], torch.Tensor]:
    """ref -> (3, H, W) float32 in [-1, 1]: bicubic resize of the short side + center crop to `size` (PAPER.md §4.4)."""
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(min(size), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                           T.PILToTensor()])
    return lambda ref: transform(real.open(ref)).float() / 127.5 - 1.0  # uint8 (3, H, W) -> [-1, 1]


# ------------------------------------------------------------------------------------------- FID
@dataclass(frozen=True)
class FidProtocol:
    """How the remaining-class FID is computed: `quirks` (feature size, uint8 cast) and the real-set cap."""

    name: str
    quirks: EvalQuirks
    max_real: Optional[int]


def fid_protocol(name: str, max_real: Optional[int] = None) -> FidProtocol:
    """`standard` (2048-d, all real images) or `paper` (`EvalQuirks.sd_table4()`, 1000 real images); max_real overrides the cap."""
    if name == "standard":
        return FidProtocol(name, EvalQuirks(), max_real)
    if name == "paper":
        return FidProtocol(name, EvalQuirks.sd_table4(), PAPER_MAX_REAL if max_real is None else max_real)
    raise ErasediffError(f"unknown FID protocol '{name}'; valid: {', '.join(FID_PROTOCOLS)}")


def fid_extractor(protocol: FidProtocol, device=None, smoke: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-fid Inception-v3 with the protocol's feature size, or its tiny random smoke stand-in."""
    if smoke:
        net = smoke_extractor(protocol.quirks.inception_dims)
        return net if device is None else net.to(device)
    return inception_extractor(protocol.quirks.inception_dims, device)


def real_statistics(real: RealImagenette, forget: str, size: tuple[int, int], extractor: Callable, protocol: FidProtocol,
                    *, cache_dir=None, batch_size: int = 50, progress: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """(mu (D,), sigma (D, D), n) of the real images of the remaining classes at `size` under `protocol`.

    With `cache_dir`, the statistics are cached by `fid.reference_statistics` under a key naming the
    source, the forget class, the size, the cap and the quirks (and the extractor's `extractor_id`).
    """
    forget = check_class(forget)
    chosen = select_real(real.items, forget, protocol.max_real)
    refs = [r for _, r in chosen]

    def images():
        return (protocol.quirks.apply(b) for b in _batches(refs, batch_size, _resize_reader(size, real), "real", progress))

    if cache_dir is not None:
        key = (f"imagenette-remaining/{real.describe}/forget={class_key(forget)}/size={size[0]}x{size[1]}/"
               f"n={len(refs)}/uint8={protocol.quirks.uint8_cast}")
        extractor_id = getattr(extractor, "extractor_id", type(extractor).__name__)
        mu, sigma = reference_statistics(key, images, extractor, extractor_id, cache_dir, batch_size=batch_size)
        return mu, sigma, len(refs)
    feats = np.concatenate([extract_features(extractor, b, batch_size) for b in images()])  # (N, D)
    return (*feature_statistics(feats), len(refs))


def imagenette_fid(folder, prompts_csv, real: RealImagenette | str, extractor: Callable[[torch.Tensor], torch.Tensor],
                   *, forget: str = "tench", protocol: FidProtocol | str = "standard", real_stats=None,
                   cache_dir=None, batch_size: int = 50, progress: bool = False) -> dict:
    """FID of the generated images of the remaining classes vs real Imagenette images of those classes.

    PAPER.md §5 "Imagenette": the generated files not of the forget class (900 of the 1K) against
    real images of the 9 other classes, resized to the generated size; both sets go through the
    protocol's quirks (`EvalQuirks.apply`; the uint8 cast under `paper`) before `extractor`
    (`fid_extractor(protocol)`). real_stats: precomputed (mu, sigma, n) of `real_statistics` (one
    computation for several models). Returns {"fid", "n_generated", "n_real", "dims", "protocol"}.
    """
    forget = check_class(forget)
    protocol = fid_protocol(protocol) if isinstance(protocol, str) else protocol
    gen = [it.path for it in read_generated(folder, prompts_csv) if it.cls != forget]
    if len(gen) < 2:
        raise DataError(f"{folder} holds {len(gen)} generated images of classes other than '{forget}'; FID needs >= 2")
    size = image_size(gen[0])
    if real_stats is None:
        real = real if isinstance(real, RealImagenette) else RealImagenette(real)
        real_stats = real_statistics(real, forget, size, extractor, protocol, cache_dir=cache_dir,
                                     batch_size=batch_size, progress=progress)
    mu_r, sigma_r, n_real = real_stats
    feats = np.concatenate([extract_features(extractor, protocol.quirks.apply(b), batch_size)
                            for b in _batches(gen, batch_size, _read_image, "generated", progress)])  # (N, D)
    if feats.shape[1] != len(mu_r):
        raise ErasediffError(f"generated features are {feats.shape[1]}-d but the real statistics {len(mu_r)}-d")
    mu_g, sigma_g = feature_statistics(feats)
    # as fid.frechet_distance: a feature constant at one value in both sets (frequent after the uint8 cast)
    # adds exactly 0 but makes the covariances singular; drop it
    keep = ~((np.diag(sigma_g) == 0) & (np.diag(sigma_r) == 0) & (mu_g == mu_r))
    if keep.any() and not keep.all():
        mu_g, sigma_g, mu_r, sigma_r = mu_g[keep], sigma_g[np.ix_(keep, keep)], mu_r[keep], sigma_r[np.ix_(keep, keep)]
    return {"fid": fid_from_statistics(mu_g, sigma_g, mu_r, sigma_r), "n_generated": len(feats),
            "n_real": int(n_real), "dims": int(feats.shape[1]), "protocol": protocol.name}


# ----------------------------------------------------------------------------------- all together
def evaluate_imagenette(folders: dict[str, str], prompts_csv, *, classifier: Callable, forget: str = "tench",
                        real: RealImagenette | str | None = None, extractor: Optional[Callable] = None,
                        protocol: FidProtocol | str = "standard", clip=None, cache_dir=None, batch_size: int = 50,
                        progress: bool = False) -> dict[str, dict]:
    """Table 4 metrics of several models: {name: {"folder", accuracy keys, FID keys, CLIP keys}}.

    folders: model name -> `generate` output folder. Every folder (and `real`) is checked before any
    network runs. The accuracy always; the remaining-class FID when `real` and `extractor` are given
    (the real statistics are computed once per generated image size, `real_statistics`); the CLIP
    score when `clip` = (CLIPModel, CLIPProcessor) is given (`clip_score.clip_score_folder`).
    """
    from .clip_score import clip_score_folder

    forget = check_class(forget)
    protocol = fid_protocol(protocol) if isinstance(protocol, str) else protocol
    if not folders:
        raise DataError("no model folders to evaluate")
    for folder in folders.values():
        read_generated(folder, prompts_csv)
    if real is not None and extractor is None:
        raise ErasediffError("the remaining-class FID needs a feature extractor (fid_extractor(protocol))")
    real = RealImagenette(real) if isinstance(real, str) else real
    results = {}
    for name, folder in folders.items():
        results[name] = {"folder": str(folder), **imagenette_accuracy(folder, prompts_csv, classifier, forget=forget,
                                                                       batch_size=batch_size, progress=progress)}
    if real is not None:
        stats: dict[tuple[int, int], tuple] = {}  # generated size (H, W) -> real (mu, sigma, n)
        for name, folder in folders.items():
            gen = [it.path for it in read_generated(folder, prompts_csv) if it.cls != forget]
            size = image_size(gen[0]) if gen else (0, 0)
            if gen and size not in stats:
                stats[size] = real_statistics(real, forget, size, extractor, protocol, cache_dir=cache_dir,
                                              batch_size=batch_size, progress=progress)
            results[name].update(imagenette_fid(folder, prompts_csv, real, extractor, forget=forget, protocol=protocol,
                                                real_stats=stats.get(size), batch_size=batch_size, progress=progress))
    if clip is not None:
        for name, folder in folders.items():
            results[name].update(clip_score_folder(folder, *clip, batch_size=batch_size, progress=progress))
    return results


# ------------------------------------------------------------------------------------------ table
def _cell(value, paper, fmt: str) -> str:
    ours = "–" if value is None else format(value, fmt)
    return ours if paper is None else f"{ours} ({format(paper, fmt)})"


def table4(results: dict[str, dict], forget: str = "tench", protocol: str = "standard", real: str = "") -> str:
    """Markdown table in the layout of PAPER.md §6.4 (Table 4), one column per model, cells 'ours (paper)'.

    A model named sd14 / esd_x / erasediff_x gets the paper's numbers beside its own; the paper's
    tench accuracy only when `forget` is tench. The paper's FID is the 64-d uint8 variant, so it is
    shown next to ours only under the `paper` protocol.
    """
    forget = check_class(forget)
    names = list(results)
    head = "| | " + " | ".join(f"{PAPER_TABLE4[n]['label']} [{n}]" if n in PAPER_TABLE4 else n for n in names) + " |"
    lines = [f"Table 4 (PAPER.md §6.4): forget '{forget}'; cells: ours (paper)", "", head, "|---" * (len(names) + 1) + "|"]

    def paper(n: str, key: str):
        if n not in PAPER_TABLE4 or (key == "acc_forget" and forget != "tench") or (key == "fid" and protocol != "paper"):
            return None
        return PAPER_TABLE4[n].get(key)

    rows = [("fid", f"FID remaining ({protocol}) ↓", ".4f"), ("acc_forget", f"{forget} acc ↓", ".2f"),
            ("acc_remain_mean", "remaining acc (mean) ↑", ".2f"), ("clip_score", "CLIP score (×100) ↑", ".2f")]
    for key, label, fmt in rows:
        if not any(key in r for r in results.values()):
            continue
        lines.append(f"| {label} | " + " | ".join(_cell(results[n].get(key), paper(n, key), fmt) for n in names) + " |")
    notes = []
    if any("fid" in r for r in results.values()):
        r0 = next(r for r in results.values() if "fid" in r)
        notes.append(f"FID: {r0['n_generated']} generated vs {r0['n_real']} real images ({real}), {r0['dims']}-d features"
                     + ("; the paper's FID is the 64-d uint8 variant: `--fid-protocol paper` to compare" if protocol != "paper"
                        else "; 64-d features and the uint8 cast of compute-fid.py (not a standard FID)"))
    if any(r.get("smoke") for r in results.values()):
        notes.append("OFFLINE SMOKE RUN: random stand-in networks; the numbers are meaningless")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
