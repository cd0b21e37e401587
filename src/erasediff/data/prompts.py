"""Prompts for Stable Diffusion: prompt CSVs (I2P, nudity, Imagenette) and prompt-labelled image folders.

Prompt CSV (what `erasediff generate` reads). One row per prompt; columns by name, any order, extra
columns ignored (I2P's CSV is accepted as it is):
    prompt                                   required, non-empty
    evaluation_seed | seed | sd_seed         int; missing column = `default_seed` for every row
    evaluation_guidance | guidance | sd_guidance_scale   float; optional (the generate command uses its
                                             own --guidance unless told to read this column, docs/evaluation.md)
    case_number | case                       int; missing column = the row index
    num_images                               int >= 1; optional: images of this row (else the command's count)
    categories                               optional: I2P's comma-separated categories ("sexual,violence");
                                             `evaluate`'s nudenet group counts per category (PromptRow.categories)
Prompt folder (`data.dataset: prompt_folder`, what the training runs read): a folder of images with a
`manifest.csv` holding at least the columns `path` (relative to the folder) and `prompt`, the layout
`generate` writes. An image's label is the index of its prompt in `data.prompts`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from erasediff.data.labeled import LabeledImages
from erasediff.errors import DataError

SEED_COLUMNS = ("evaluation_seed", "seed", "sd_seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "guidance", "sd_guidance_scale")
CASE_COLUMNS = ("case_number", "case")
MANIFEST = "manifest.csv"


@dataclass(frozen=True)
class PromptRow:
    prompt: str
    seed: int
    guidance: Optional[float]
    case_number: int
    num_images: Optional[int] = None
    categories: tuple[str, ...] = ()  # the `categories` column, split at commas (I2P); () without one


def _column(fields: Sequence[str], names: Sequence[str]) -> Optional[str]:
    return next((n for n in names if n in fields), None)


def read_prompt_csv(path: str | Path, default_seed: int = 0) -> list[PromptRow]:
    """Rows of a prompt CSV (see module docstring). DataError on a missing/empty/malformed file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt CSV not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if "prompt" not in fields:
            raise DataError(f"prompt CSV {path} has no 'prompt' column (columns: {', '.join(fields) or 'none'}); "
                            f"expected prompt[, {'|'.join(SEED_COLUMNS)}][, {'|'.join(CASE_COLUMNS)}]")
        seed_col, guid_col, case_col = (_column(fields, c) for c in (SEED_COLUMNS, GUIDANCE_COLUMNS, CASE_COLUMNS))
        rows = []
        for i, rec in enumerate(reader):
            line = i + 2  # 1-based, after the header
            prompt = (rec.get("prompt") or "").strip()
            if not prompt:
                raise DataError(f"prompt CSV {path}, line {line}: empty prompt")
            try:
                seed = int(float(rec[seed_col])) if seed_col and rec.get(seed_col) not in (None, "") else default_seed
                guidance = float(rec[guid_col]) if guid_col and rec.get(guid_col) not in (None, "") else None
                case = int(float(rec[case_col])) if case_col and rec.get(case_col) not in (None, "") else i
                n = int(rec["num_images"]) if rec.get("num_images") not in (None, "") else None
            except ValueError as exc:
                raise DataError(f"prompt CSV {path}, line {line}: {exc} (seed, case number and num_images must be "
                                "integers, guidance a number)") from None
            if n is not None and n < 1:
                raise DataError(f"prompt CSV {path}, line {line}: num_images must be >= 1 (got {n})")
            cats = tuple(dict.fromkeys(c.strip() for c in (rec.get("categories") or "").split(",") if c.strip()))
            rows.append(PromptRow(prompt, seed, guidance, case, n, cats))
    if not rows:
        raise DataError(f"prompt CSV {path} has no prompt rows")
    cases = [r.case_number for r in rows]
    if len(set(cases)) != len(cases):
        dup = sorted({c for c in cases if cases.count(c) > 1})[:5]
        raise DataError(f"prompt CSV {path}: case numbers {dup} repeat (they name the output files)")
    return rows


def manifest_rows(folder: str | Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of folder/manifest.csv (what `generate` writes: path, prompt, seed, guidance, case_number,
    index), each a dict; DataError (one line) when the file or one of `columns` is missing."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise DataError(f"'{folder}' has no {MANIFEST} (columns {', '.join(columns)}); `erasediff generate` writes one")
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if not set(columns) <= set(fields):
            raise DataError(f"{manifest} needs the columns {' and '.join(columns)} (has: {', '.join(fields)})")
        return list(reader)


class _PromptImages(Dataset):
    """Item i = (RGB image of paths[i] resized (bicubic) + center-cropped, in [-1, 1] (3, S, S), labels[i])."""

    def __init__(self, paths: list[Path], labels: torch.Tensor, size: int, hflip: bool):
        from torchvision import transforms as T

        self.paths, self.labels = paths, labels
        steps = [T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)]
        steps += [T.RandomHorizontalFlip()] if hflip else []
        self.transform = T.Compose(steps + [T.ToTensor(), T.Normalize((0.5,), (0.5,))])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB")), int(self.labels[i])


def load_prompt_folder(root: str | None, prompts: Sequence[str], image_size: int, hflip: bool):
    """A `LabeledImages` of root/manifest.csv's images, label = index of the row's prompt in `prompts`.

    Rows whose prompt is not in `prompts` are an error (a typo would silently drop data otherwise).
    docs/experiments.md "Table 4": images are resized to `image_size` (bicubic), center-cropped, scaled to [-1, 1].
    """

    if root is None:
        raise DataError("the prompt_folder dataset needs data.root: a folder of images with a manifest.csv "
                        "(columns path, prompt), e.g. the output of `erasediff generate`")
    folder = Path(root)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise DataError(f"prompt folder '{root}' has no {MANIFEST} (columns path, prompt); `erasediff generate` writes one")
    if not prompts:
        raise DataError("the prompt_folder dataset needs data.prompts (label = index of an image's prompt)")
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not {"path", "prompt"} <= set(reader.fieldnames or []):
            raise DataError(f"{manifest} needs the columns path and prompt (has: {', '.join(reader.fieldnames or [])})")
        records = [(r["path"], r["prompt"]) for r in reader]
    if not records:
        raise DataError(f"{manifest} lists no images")
    unknown = sorted({p for _, p in records if p not in prompts})
    if unknown:
        raise DataError(f"{manifest}: prompts {unknown[:3]} are not in data.prompts {list(prompts)}")
    paths = [folder / p for p, _ in records]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} of {len(paths)} images listed in {manifest} are missing (first: {missing[0]})")
    labels = torch.tensor([list(prompts).index(p) for _, p in records], dtype=torch.int64)
    return LabeledImages(_PromptImages(paths, labels, image_size, hflip), labels, len(prompts), list(prompts), 3,
                         image_size, "prompt_folder")


#: fast.ai imagenette2 class folders (WordNet ids) -> class names of HF frgfm/imagenette (docs/experiments.md "Table 4")
IMAGENETTE_WNIDS = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player", "n03000684": "chain saw",
    "n03028079": "church", "n03394916": "French horn", "n03417042": "garbage truck", "n03425413": "gas pump",
    "n03445777": "golf ball", "n03888605": "parachute",
}
IMAGENETTE_TEMPLATE = "an image of a {}"


def write_imagenette_manifest(root: str | Path, template: str = IMAGENETTE_TEMPLATE) -> Path:
    """Write root/manifest.csv for an imagenette2 split folder (root/<wnid>/<image>): prompt = template(class).

    The training prompts of docs/experiments.md "Table 4" ("an image of a {label}"), so the folder is a `prompt_folder`.
    """
    folder = Path(root)
    rows = []
    for wnid, name in IMAGENETTE_WNIDS.items():
        files = sorted(p for p in (folder / wnid).glob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
        rows += [(p.relative_to(folder).as_posix(), template.format(name)) for p in files]
    if not rows:
        raise DataError(f"no Imagenette images in '{root}': expected {root}/<wnid>/*.JPEG (e.g. imagenette2/train)")
    out = folder / MANIFEST
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "prompt"])
        w.writerows(rows)
    return out


def select_i2p(source: str | Path, out: str | Path, min_nudity: float = 50.0) -> int:
    """Write the rows of an I2P CSV whose `nudity_percentage` exceeds `min_nudity` to `out` (all columns kept,
    so `generate` and `attack` read its seeds and guidance): the nude-prompt subset that the attack papers
    attack (Ring-A-Bell's notebook: > 50; UnlearnDiffAtk's 142 prompts: its exact rule is UNCONFIRMED).
    Returns the number of rows written; DataError on a file without the columns or no matching row."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise DataError(f"I2P CSV not found: {source}")
    with source.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        if not {"prompt", "nudity_percentage"} <= set(fields):
            raise DataError(f"{source} is not an I2P CSV: it needs the columns prompt and nudity_percentage "
                            f"(has: {', '.join(fields) or 'none'})")
        rows = [r for r in reader if r["nudity_percentage"] not in (None, "") and float(r["nudity_percentage"]) > min_nudity]
    if not rows:
        raise DataError(f"no row of {source} has nudity_percentage > {min_nudity}")
    if "case_number" not in fields:  # keep the I2P row numbers as the case numbers (they name the images)
        fields = ["case_number", *fields]
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow({"case_number": i, **r})
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    """python -m erasediff.data.prompts imagenette-manifest DIR | i2p-select I2P.csv OUT.csv [--min-nudity 50]"""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m erasediff.data.prompts")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("imagenette-manifest", help="write DIR/manifest.csv for an imagenette2 split folder")
    p.add_argument("folder")
    p = sub.add_parser("i2p-select", help="the I2P rows with nudity_percentage > --min-nudity (attack prompts)")
    p.add_argument("source")
    p.add_argument("output")
    p.add_argument("--min-nudity", type=float, default=50.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "imagenette-manifest":
            print(f"wrote {write_imagenette_manifest(args.folder)}")
        else:
            n = select_i2p(args.source, args.output, args.min_nudity)
            print(f"wrote {args.output}: {n} prompts with nudity_percentage > {args.min_nudity}")
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
