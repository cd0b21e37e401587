"""Writing files so that a crash never leaves half of one, and JSON that stays JSON.

Every result file of a run is written to a temporary sibling, flushed to disk (fsync) and renamed
over its final name, so a reader sees the old file or the new one, never a mix (docs/reliability.md).
JSON never holds NaN or infinity: Python's `json` would write the bare tokens `NaN` / `Infinity`,
which are not JSON; non-finite floats become `null`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def _umask() -> int:
    # os.umask can only be read by setting it; the value is put straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fix_mode(path: Path) -> None:
    """Give `path` the mode a plain `open()` / `mkdir()` would (0666 / 0777 & ~umask).

    safetensors writes its files 0600 and tempfile.mkdtemp makes folders 0700; weights of a shared
    results folder must be readable like the rest of the run.
    """
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~_umask())


def fix_modes(folder: Path) -> None:
    """`fix_mode` for every *.safetensors file under `folder` (a save_pretrained directory)."""
    for p in Path(folder).rglob("*.safetensors"):
        fix_mode(p)


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (the directory entry itself is flushed)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temporary sibling, fsync it, rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def finite_or_none(obj: Any) -> Any:
    """A copy of a JSON-able tree with every NaN / ±inf float replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text (non-finite floats written as null)."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented strict JSON."""
    atomic_write_text(path, json_text(obj, indent=2) + "\n")
