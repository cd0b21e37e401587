"""A captions CSV of MS-COCO for `evaluate` (docs/evaluation.md "Utility at scale"): one caption per image
of a seeded random choice of N images, in the prompt CSV format of `generate`.

    python -m erasediff.data.coco --annotations captions_val2014.json --output coco_30k.csv --n 30000 --seed 0

Columns: case_number (0..N-1), prompt (the caption, whitespace collapsed), evaluation_seed (the row's
generation seed), image_id, file_name (the COCO image the caption describes). The choice: numpy's
`default_rng(seed)` permutes the images that have a caption (sorted by id) and draws, for each of them in
that order, one of its captions (sorted by annotation id) and a generation seed; the CSV is the first N
of that order. So `--n 10000` gives the first 10000 rows of `--n 30000` with the same seed, and
`evaluate.max_prompts` of the 30k CSV is a random subset too. T2IBenchmark's fixed 30k captions
(MS-COCO_val2014_30k_captions.csv) can be used as they are instead (column `captions` -> rename to
`prompt`); which captions the paper used is UNCONFIRMED.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

from ..errors import DataError

COLUMNS = ("case_number", "prompt", "evaluation_seed", "image_id", "file_name")


def coco_caption_rows(annotations: str | Path, n: int, seed: int = 0) -> list[dict]:
    """The rows of the captions CSV (module docstring) from a COCO captions JSON (`images`, `annotations`).

    DataError naming the problem when the file is missing, not COCO captions JSON, or has fewer than n
    captioned images.
    """
    path = Path(annotations)
    if not path.is_file():
        raise DataError(f"COCO annotations file {path} not found (captions_val2014.json of "
                        "http://images.cocodataset.org/annotations/annotations_trainval2014.zip)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"COCO annotations file {path} is not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or \
            not isinstance(data.get("annotations"), list):
        raise DataError(f"{path} is not a COCO captions file: expected a JSON object with lists 'images' and "
                        "'annotations' (captions_val2014.json)")
    try:
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        captions: dict[int, list[tuple[int, str]]] = {}
        for ann in data["annotations"]:
            text = " ".join(str(ann["caption"]).split())
            if text:
                captions.setdefault(int(ann["image_id"]), []).append((int(ann.get("id", 0)), text))
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: an image lacks id / file_name or an annotation image_id / caption ({exc!r})") from None
    ids = sorted(i for i in captions if i in files)
    if n < 1:
        raise DataError(f"--n must be >= 1 (got {n})")
    if n > len(ids):
        raise DataError(f"--n {n} is more than the {len(ids)} captioned images of {path}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    picks = rng.integers(0, 1 << 30, size=len(ids))  # caption choice, one per image in `order`
    seeds = rng.integers(0, 1 << 31, size=len(ids))  # generation seed of each row
    rows = []
    for case, (i, pick, row_seed) in enumerate(zip(order[:n], picks[:n], seeds[:n])):
        image_id = ids[int(i)]
        options = sorted(captions[image_id])
        rows.append({"case_number": case, "prompt": options[int(pick) % len(options)][1],
                     "evaluation_seed": int(row_seed), "image_id": image_id, "file_name": files[image_id]})
    return rows


def write_rows(rows: list[dict], output: str | Path) -> Path:
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out)
    return out


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become one `error:` line and exit status 2 (`main`), not usage + message."""

    def error(self, message: str):
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m erasediff.data.coco",
                description="write a captions CSV of MS-COCO (one caption per image of a seeded random choice of N "
                            "images) for `erasediff evaluate` (evaluate.prompts)")
    p.add_argument("--annotations", required=True, help="COCO captions JSON, e.g. annotations/captions_val2014.json")
    p.add_argument("--output", required=True, help="the CSV to write, e.g. data/coco/coco_30k.csv")
    p.add_argument("--n", type=int, default=30000, help="number of images / rows (default 30000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line (module docstring); 0, or 2 after one `error:` line on bad input."""
    try:
        args = build_parser().parse_args(argv)
        if args.n < 1:
            raise _UsageError(f"--n must be >= 1 (got {args.n})")
        rows = coco_caption_rows(args.annotations, args.n, args.seed)
    except _UsageError as exc:
        print(f"error: {exc} (see --help)", file=sys.stderr)
        return 2
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = write_rows(rows, args.output)
    print(f"wrote {out}: {len(rows)} captions of {len(rows)} COCO images (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
