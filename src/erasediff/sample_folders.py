"""Sample folders: N images per class written as PNG files with a manifest, sharded and resumable.

Layout of a sample folder (docs/evaluation.md "The paper's protocols": 5K images per remaining class for FID, 500 of the
forgotten class for the classifier):

    DIR/<class>/<index:05d>.png     uint8 PNG, grey for 1-channel models, RGB otherwise
    DIR/manifest.csv                path,class,seed,index of every image in the folder
    DIR/sample.json                 identity: the model and the config sections that set the pixels

Image i of class c is a function of (model, sample config, c, i) alone (`samplers.sampling_units`),
so a folder can be filled in several calls (more classes, a larger N), by several processes
(`accelerate launch --num_processes N -m erasediff sample ...` on GPUs, `torchrun --nproc_per_node N -m
erasediff sample ...` on CPUs, split the work units between processes), and after an
interruption (finished images are skipped; files are written under a temporary name and renamed, so
a killed process never leaves a truncated PNG). A folder whose sample.json names another model or
sampler is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .config import RunConfig, to_dict
from .device import resolve_device
from .errors import ErasediffError
from .files import atomic_write_text, write_json
from .rundir import FolderClaim

IDENTITY = "sample.json"
MANIFEST = "manifest.csv"


def image_path(root: Path, c: int, i: int) -> Path:
    return root / str(c) / f"{i:05d}.png"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, C) uint8 by round((x + 1) / 2 · 255), as torchvision.save_image."""
    x = ((images.clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def save_png(array: np.ndarray, path: Path) -> None:
    """Write one (H, W, C) uint8 image atomically (temporary name, then rename)."""
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def folder_identity(cfg: RunConfig, model_spec: str) -> dict[str, Any]:
    """What decides the pixels of a sample folder: the model, its family and diffusion, the sampler."""
    return {
        "model": str(model_spec),
        "backbone": cfg.model.backbone,
        "diffusion": to_dict(cfg.diffusion),
        "sample": {k: v for k, v in to_dict(cfg.sample).items() if k != "grid_per_class"},
    }


def check_identity(root: Path, identity: dict[str, Any]) -> bool:
    """True if `root` already holds samples of `identity` (resume); raises if it holds other samples."""
    path = root / IDENTITY
    if not path.is_file():
        if root.is_dir() and any(p for p in root.iterdir() if not p.name.startswith(".")):
            raise ErasediffError(f"folder {root} is not empty and holds no {IDENTITY}: choose a new folder for samples "
                                 "(results are never overwritten)")
        return False
    saved = json.loads(path.read_text())
    if saved != identity:
        diff = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise ErasediffError(f"folder {root} holds samples of another model or sampler (differs in: {', '.join(diff)}; "
                             f"see {path}): choose another folder (results are never overwritten)")
    return True


def write_manifest(root: Path, seed: int) -> int:
    """Rewrite DIR/manifest.csv from the PNG files present; returns the number of images listed."""
    rows = []
    for class_dir in sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)):
        for f in sorted(class_dir.glob("[0-9]*.png")):
            rows.append(f"{class_dir.name}/{f.name},{class_dir.name},{seed},{int(f.stem)}")
    atomic_write_text(root / MANIFEST, "path,class,seed,index\n" + "".join(r + "\n" for r in rows))
    return len(rows)


def sample_to_folder(
    cfg: RunConfig, model_spec: str, root: str | Path, counts: dict[int, int], *, progress: bool = True,
) -> dict[str, Any]:
    """Make sure `root` holds images 0..counts[c]−1 of every class c; sample only the missing ones.

    counts: {class: number of images}. Work units (single-class batches of ≤ sample.batch_size) are
    split between the processes of an `accelerate launch` (one process otherwise); the main process
    writes manifest.csv when all are done. Returns {"root", "sampled", "skipped", "images"}.
    """
    from accelerate import PartialState

    from .backbones import build_backbone
    from .checkpoint import load_eval_model
    from .samplers import class_noise, sample_unit, sampling_units

    root = Path(root)
    identity = folder_identity(cfg, model_spec)
    # cpu=True lets a CPU-only torchrun / mpirun launch form a gloo group (accelerate's MULTI_CPU)
    state = PartialState(cpu=resolve_device(cfg.device).type == "cpu")
    # the main process holds the folder for the whole call: no second command can mix images into it
    claim = FolderClaim(root, "sample folder") if state.is_main_process else nullcontext()
    with claim:
        if state.is_main_process:
            check_identity(root, identity)
        # every unit with a missing image is (re)sampled whole: its images are deterministic
        units = [
            u for c, n in sorted(counts.items()) for u in sampling_units([c], n, cfg.sample.batch_size)
            if not all(image_path(root, u[0], i).is_file() for i in range(u[1], u[2]))
        ]
        total = sum(counts.values())
        device = state.device if state.num_processes > 1 else resolve_device(cfg.device)
        mine_count = 0
        if units:
            backbone = build_backbone(cfg, device)
            model = load_eval_model(backbone, model_spec, cfg.sample.use_ema, cfg.model)
            shape = backbone.sample_shape  # (C, h, w): pixels, or latents that sample_unit decodes
            if state.is_main_process:
                write_json(root / IDENTITY, identity)
            state.wait_for_everyone()
            noise: dict[int, torch.Tensor] = {}
            with state.split_between_processes(units) as mine:
                mine_count = sum(b - a for _, a, b in mine)
                bar = tqdm(total=mine_count, desc=f"sampling [{state.process_index}]", unit="img",
                           disable=not progress or not state.is_local_main_process)
                for c, start, stop in mine:
                    if c not in noise:
                        noise = {c: class_noise([c], counts[c], shape, cfg.sample.seed)}
                    images = to_uint8(sample_unit(backbone, model, c, start, stop, noise[c], cfg.sample))
                    (root / str(c)).mkdir(parents=True, exist_ok=True)
                    for i, array in zip(range(start, stop), images):
                        save_png(array, image_path(root, c, i))
                    bar.update(stop - start)
                bar.close()
        state.wait_for_everyone()
        if state.is_main_process:
            if not (root / IDENTITY).is_file():
                write_json(root / IDENTITY, identity)
            write_manifest(root, cfg.sample.seed)
    sampled = sum(b - a for _, a, b in units)
    info = {"root": str(root), "sampled": sampled, "skipped": total - sampled, "images": total}
    if state.num_processes > 1:
        info.update(processes=state.num_processes, sampled_by_this_process=mine_count)
    return info


def read_samples(root: str | Path, counts: dict[int, int], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images 0..counts[c]−1 of every class from a sample folder: ((N, C, H, W) in [-1, 1], labels (N,) int64)."""
    root = Path(root)
    images, labels = [], []
    for c, n in sorted(counts.items()):
        for i in range(n):
            path = image_path(root, c, i)
            if not path.is_file():
                raise ErasediffError(f"sample folder {root} lacks {path.relative_to(root)}: sample it first")
            with Image.open(path) as img:
                arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
            images.append(torch.from_numpy(arr.reshape(*arr.shape[:2], channels).copy()))
            labels.append(c)
    if not images:
        raise ErasediffError(f"no images requested from sample folder {root}")
    x = torch.stack(images).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    return x, torch.tensor(labels, dtype=torch.int64)
