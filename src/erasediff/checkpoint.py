"""Checkpoints: one safetensors file per save, plus diffusers model directories at the end of a run.

`checkpoints/step_XXXXXXX.safetensors` holds every tensor needed to resume — model weights
(`model.*`), EMA shadow (`ema.*`), optimiser state (`optimizer.*`), RNG states (`rng.*`) and method
state (`method.*`) — and its metadata holds the step, the non-tensor parts of those states (JSON)
and the resolved config (YAML). Nothing is pickled.

Trust (docs/reliability.md): a save writes a temporary file, fsyncs it, reads it back and checks it,
and only then renames it into place; the previous checkpoints stay until then (the newest
`train.keep_checkpoints` are kept). The metadata holds a SHA-256 of every tensor's bytes, checked on
every load: a truncated or overwritten file raises `CorruptCheckpoint` naming it, and a resume falls
back to the previous checkpoint.

`model/` and `model_ema/` are `save_pretrained` directories (raw and EMA weights) that stock diffusers
and `model.pretrained` load; each carries `erasediff_config.yaml`, the run's resolved config.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import ErasediffError, first_line
from .files import fix_mode, fsync_dir
from .rundir import COMPLETE, checkpoints_newest_first
from .speed import apply_speed_options

FORMAT = "erasediff-checkpoint-v1"


class CorruptCheckpoint(ErasediffError):
    """A checkpoint file that cannot be read back exactly (truncated, overwritten, not a checkpoint)."""


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and raw bytes of `tensors` in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


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


def save_checkpoint(path: Path, *, step: int, config_yaml: str, states: dict[str, Any],
                    extra: dict[str, str] | None = None) -> None:
    """Write `states` (name -> nested state with tensors) to `path`: temporary file, fsync, verify, rename.

    extra: more metadata strings (the loop's bookkeeping: timing, skipped steps).
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {name: flatten(state, name, tensors) for name, state in states.items()}
    meta = {"format": FORMAT, "step": str(step), "config": config_yaml, "state": json.dumps(skeleton),
            "sha256": tensor_digest(tensors), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    fix_mode(tmp)
    read_checkpoint(tmp)  # raises CorruptCheckpoint: the file on disk is checked before it replaces anything
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_checkpoint(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a checkpoint whose tensor data matches its checksum; CorruptCheckpoint otherwise."""
    if not path.is_file():
        raise ErasediffError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CorruptCheckpoint(f"{path} is not an erasediff checkpoint (expected metadata format '{FORMAT}')")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = first_line(exc)
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable (truncated or damaged: {reason})") from None
    if "sha256" in meta and tensor_digest(tensors) != meta["sha256"]:
        raise CorruptCheckpoint(f"checkpoint {path} is corrupt: its tensor data does not match the stored checksum")
    return meta, tensors


def load_checkpoint(path: Path) -> tuple[int, str, dict[str, Any]]:
    """Read and verify a checkpoint: (step, resolved config YAML, states)."""
    return unpack_checkpoint(*read_checkpoint(path))


def unpack_checkpoint(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> tuple[int, str, dict[str, Any]]:
    """(step, resolved config YAML, states) of what `read_checkpoint` returned."""
    skeleton = json.loads(meta["state"])
    return int(meta["step"]), meta["config"], {name: unflatten(v, tensors) for name, v in skeleton.items()}


def checkpoint_meta(path: Path) -> dict[str, str]:
    """The metadata of a checkpoint (its header only: quick, no checksum)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable (truncated or damaged: {first_line(exc)})") from None
    if meta.get("format") != FORMAT:
        raise CorruptCheckpoint(f"{path} is not an erasediff checkpoint (expected metadata format '{FORMAT}')")
    return meta


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints_newest_first(run_dir)
    return found[0] if found else None


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:07d}.safetensors"


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints."""
    for p in checkpoints_newest_first(run_dir)[keep:]:
        p.unlink()


def check_finite_weights(model: torch.nn.Module, what: str) -> None:
    """ErasediffError if any parameter or buffer of `model` holds NaN or infinity."""
    bad = [n for n, t in (*model.named_parameters(), *model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ErasediffError(f"{what} has non-finite weights ({len(bad)} tensors, e.g. {bad[0]}): it comes from a "
                             "diverged run; refusing to use it")


def load_eval_model(backbone: Any, spec: str, use_ema: bool, options: Any = None) -> torch.nn.Module:
    """The model to sample from (eval mode, on the backbone's device): the EMA weights of a complete run
    directory when `use_ema` and available, else its raw weights; a model with non-finite weights is refused.
    backbone: the adapter of the model family (its `load_model(path)` and `device`); options: the config's
    `model` section, whose speed options are applied (speed.py)."""
    raw, ema = resolve_pretrained(spec)
    path = ema if (use_ema and ema is not None) else raw
    try:
        model = backbone.load_model(path)
    except (OSError, ValueError) as exc:
        raise ErasediffError(f"could not load model '{spec}': {first_line(exc)}") from None
    check_finite_weights(model, f"model '{spec}'")
    model = model.to(backbone.device).eval()
    if options is not None:
        apply_speed_options(model, options)
    return model


def resolve_pretrained(spec: str) -> tuple[str, str | None]:
    """Where the raw and EMA weights of `model.pretrained` live: (raw, ema or None).

    Accepted: a complete run directory of this project (model/ + model_ema/, COMPLETE), a diffusers model directory
    (config.json), a pipeline directory (unet/), or a Hugging Face Hub id (downloaded by diffusers on a
    user's machine). A path that does not exist and does not look like a Hub id is an error.
    """
    p = Path(spec)
    if p.is_dir():
        if (p / "model").is_dir() or (p / "checkpoints").is_dir():
            if not (p / COMPLETE).is_file():
                raise ErasediffError(
                    f"run directory {spec} is not complete (no {COMPLETE} marker: the run was stopped before it "
                    "finished writing its models); finish it with --resume, then use it")
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


# ----------------------------------------------- per-parameter files (SA's Fisher, SalUn's mask: docs/baselines.md)
def fresh_path(path: str | Path) -> Path:
    """`path` as a Path; ErasediffError if it exists (results are never overwritten, docs/reliability.md)."""
    out = Path(path)
    if out.exists():
        raise ErasediffError(f"output file {out} already exists (results are never overwritten): choose another path")
    return out


def save_param_file(out: Path, tensors: dict[str, torch.Tensor], config_yaml: str, kind: str) -> None:
    """Write tensors keyed by parameter name to `out`, metadata = format `erasediff-<kind>-v1` and the resolved
    config (YAML) that made them; never over an existing file.

    Written to a temporary sibling and fsynced, then hard-linked to `out`: the link fails if `out` appeared
    in the meantime (another process), so no file is ever replaced or seen half-written.
    """
    out = fresh_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp),
                  metadata={"format": f"erasediff-{kind}-v1", "config": config_yaml})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        fix_mode(tmp)
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise ErasediffError(f"output file {out} appeared while it was computed (another process?): "
                                 "results are never overwritten") from None
        fsync_dir(out.parent)
    finally:
        tmp.unlink(missing_ok=True)


def load_param_file(path: Path, shapes: dict[str, tuple[int, ...]], what: str) -> dict[str, torch.Tensor]:
    """The tensors of a per-parameter file whose keys are exactly those of `shapes` (parameter name -> shape),
    with those shapes; ErasediffError naming `what` (e.g. "method.fisher file F") otherwise."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if keys != set(shapes):
                missing, unexpected = sorted(set(shapes) - keys), sorted(keys - set(shapes))
                raise ErasediffError(
                    f"{what} does not match the model's trainable parameters: {len(missing)} missing (first: "
                    f"{missing[:3]}), {len(unexpected)} unexpected (first: {unexpected[:3]})"
                )
            tensors = {n: f.get_tensor(n) for n in shapes}
    except (SafetensorError, OSError) as exc:
        raise ErasediffError(f"{what} is not a readable safetensors file: {first_line(exc)}") from None
    for name, shape in shapes.items():
        got = tuple(tensors[name].shape)
        if got != tuple(shape):
            raise ErasediffError(f"{what}: '{name}' has shape {got}, the parameter {tuple(shape)}")
    return tensors
