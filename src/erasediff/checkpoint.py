"""Checkpoints: one safetensors file per save, plus diffusers model directories at the end of a run.

`checkpoints/step_XXXXXXX.safetensors` holds every tensor needed to resume — model weights
(`model.*`), EMA shadow (`ema.*`), optimiser state (`optimizer.*`), RNG states (`rng.*`) and method
state (`method.*`) — and its metadata holds the step, the non-tensor parts of those states (JSON)
and the resolved config (YAML). Nothing is pickled. Saves are atomic (write, then rename) and only
the newest checkpoint is kept.

`model/` and `model_ema/` are `save_pretrained` directories (raw and EMA weights) that stock diffusers
and `model.pretrained` load; each carries `erasediff_config.yaml`, the run's resolved config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import ErasediffError

FORMAT = "erasediff-checkpoint-v1"


def flatten(tree: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor leaf of a nested dict/list into `tensors`; return the JSON-able skeleton."""
    if isinstance(tree, torch.Tensor):
        tensors[prefix] = tree.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(tree, dict):
        return {"__dict__": [[k, flatten(v, f"{prefix}.{k}", tensors)] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(tree)]
    return tree


def unflatten(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten` (dict keys keep their type: optimizer state is keyed by int)."""
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {k: unflatten(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [unflatten(v, tensors) for v in skeleton]
    return skeleton


def save_checkpoint(path: Path, *, step: int, config_yaml: str, states: dict[str, Any]) -> None:
    """Write `states` (name -> nested state with tensors) atomically to `path`."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {name: flatten(state, name, tensors) for name, state in states.items()}
    meta = {"format": FORMAT, "step": str(step), "config": config_yaml, "state": json.dumps(skeleton)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[int, str, dict[str, Any]]:
    """Read a checkpoint: (step, resolved config YAML, states)."""
    if not path.is_file():
        raise ErasediffError(f"checkpoint not found: {path}")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ErasediffError(f"{path} is not an erasediff checkpoint (expected metadata format '{FORMAT}')")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    skeleton = json.loads(meta["state"])
    return int(meta["step"]), meta["config"], {name: unflatten(v, tensors) for name, v in skeleton.items()}


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step_*.safetensors"))
    return found[-1] if found else None


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:07d}.safetensors"


def prune_checkpoints(run_dir: Path, keep: Path) -> None:
    for p in (run_dir / "checkpoints").glob("step_*.safetensors"):
        if p != keep:
            p.unlink()


def resolve_pretrained(spec: str) -> tuple[str, str | None]:
    """Where the raw and EMA weights of `model.pretrained` live: (raw, ema or None).

    Accepted: a run directory of this project (model/ + model_ema/), a diffusers model directory
    (config.json), a pipeline directory (unet/), or a Hugging Face Hub id (downloaded by diffusers on a
    user's machine). A path that does not exist and does not look like a Hub id is an error.
    """
    p = Path(spec)
    if p.is_dir():
        if (p / "model" / "config.json").is_file():
            ema = p / "model_ema"
            return str(p / "model"), str(ema) if (ema / "config.json").is_file() else None
        if (p / "config.json").is_file():
            return str(p), None
        if (p / "unet" / "config.json").is_file():
            return str(p / "unet"), None
        raise ErasediffError(
            f"model.pretrained '{spec}' holds no model: expected a run directory (model/), a diffusers model "
            "directory (config.json) or a pipeline directory (unet/)"
        )
    head = spec.split("/")[0]
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not Path(head).exists()
    if not looks_like_hub_id:
        raise ErasediffError(f"model path not found: {spec} (expected a run directory, a model directory or a Hub id)")
    return spec, None
