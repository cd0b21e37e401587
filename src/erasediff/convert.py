"""Convert Selective Amnesia (SA) / SalUn / official-EraseDiff CIFAR10 DDPM checkpoints and SA Fisher files.

Those repos train SA's `Conditional_Model` (the DDIM-repo UNet plus a class branch) and save `ckpt.pth`,
a torch.save'd list [model.state_dict() ("module."-prefixed), optimizer.state_dict(), step,
ema_shadow (optional, keys without "module.")]. `convert_sa_checkpoint` turns it into a run directory
(model/, model_ema/, conversion.json) that `model.pretrained` loads as a `ClassConditionalUNet`; only
`torch.load(weights_only=True)` is used, so a checkpoint cannot run code. The optimizer state is not
converted. `convert_sa_fisher` turns SA's `fisher_dict.pkl` (diagonal Fisher per parameter) into a
safetensors file keyed by the same parameter names as the converted model.

Key mapping (docs/peers.md "Converting SA-family checkpoints"; N = number of resolution levels, 4 for CIFAR10):
    classes_emb.weight (K, C0) + null_classes_emb (C0,) -> class_table.weight (K + 1, C0), row K = null
    temb.dense.{0,1} / cemb.dense.{0,1}  -> unet.time_embedding / unet.class_embedding.linear_{1,2}
    conv_in, norm_out, conv_out         -> unet.conv_in, unet.conv_norm_out, unet.conv_out
    down.i.block.j / up.L.block.j       -> unet.down_blocks.i / unet.up_blocks.(N-1-L) .resnets.j
        norm1 conv1 norm2 conv2 (same), temb_cemb_proj -> time_emb_proj, nin_shortcut -> conv_shortcut
    down.i.attn.j / up.L.attn.j         -> .attentions.j: norm q k v proj_out -> group_norm to_q to_k to_v to_out.0
        (1x1 conv kernels (C, C, 1, 1) squeezed to Linear weights (C, C))
    down.i.downsample.conv / up.L.upsample.conv -> .downsamplers.0.conv / .upsamplers.0.conv
    mid.block_1, mid.attn_1, mid.block_2 -> unet.mid_block.resnets.0, .attentions.0, .resnets.1

Why one file over 300 lines: the key mapping, the strict shape checks and the tensors-only unpickler
serve both converters (weights and Fisher) and are read together when a mapping is checked.
"""

from __future__ import annotations

import codecs
import collections
import io
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from .backbones.unets import ClassConditionalUNet, cifar10_sa_config
from .errors import ErasediffError, first_line
from .files import fix_mode, fix_modes, write_json
from .rundir import COMPLETE

CONVERSION_FORMAT = "erasediff-sa-conversion-v1"
FISHER_FORMAT = "erasediff-fisher-v1"
CKPT_LAYOUT = ("SA's ckpt.pth: a torch.save'd list [model.state_dict() ('module.' keys), optimizer.state_dict(), "
               "step, ema_shadow (optional)]")

_CLASS_KEYS = ("classes_emb.weight", "null_classes_emb")
_FIXED = {"temb.dense.0": "time_embedding.linear_1", "temb.dense.1": "time_embedding.linear_2",
          "cemb.dense.0": "class_embedding.linear_1", "cemb.dense.1": "class_embedding.linear_2",
          "conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"}
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
           "temb_cemb_proj": "time_emb_proj", "nin_shortcut": "conv_shortcut"}
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_MID = {"block_1": ("resnets.0", _RESNET), "attn_1": ("attentions.0", _ATTN), "block_2": ("resnets.1", _RESNET)}
_LEVEL = re.compile(r"(down|up)\.(\d+)\.(?:(block|attn)\.(\d+)\.(\w+)|(downsample|upsample)\.conv)$")
_SQUEEZE = re.compile(r"\.attentions\.\d+\.(to_q|to_k|to_v|to_out\.0)\.weight$")


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def _map(key: str, num_levels: int) -> str | None:
    """Our name for an SA key without "module.", or None when it is not part of SA's layout.

    num_levels: resolution levels of the SA model (len(ch_mult); 4 for CIFAR10): SA stores up levels
    highest-resolution first (up.L -> up_blocks.(num_levels-1-L)).
    """
    if key in _CLASS_KEYS:
        return "class_table.weight"
    module, _, leaf = key.rpartition(".")
    if leaf not in ("weight", "bias"):
        return None
    if module in _FIXED:
        return f"unet.{_FIXED[module]}.{leaf}"
    parts = module.split(".")
    if len(parts) == 3 and parts[0] == "mid" and parts[1] in _MID:
        name, subs = _MID[parts[1]]
        return f"unet.mid_block.{name}.{subs[parts[2]]}.{leaf}" if parts[2] in subs else None
    m = _LEVEL.fullmatch(module)
    if m is None:
        return None
    side, level, kind, index, sub, resample = m.groups()
    level = int(level)
    if level >= num_levels:
        return None
    block = f"down_blocks.{level}" if side == "down" else f"up_blocks.{num_levels - 1 - level}"
    if resample:
        if resample != f"{side}sample":
            return None
        return f"unet.{block}.{'downsamplers' if side == 'down' else 'upsamplers'}.0.conv.{leaf}"
    subs = _RESNET if kind == "block" else _ATTN
    if sub not in subs:
        return None
    return f"unet.{block}.{'resnets' if kind == 'block' else 'attentions'}.{index}.{subs[sub]}.{leaf}"


def _some(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def convert_sa_state_dict(sd: dict[str, torch.Tensor], num_classes: int = 10) -> dict[str, torch.Tensor]:
    """SA `Conditional_Model` state dict (keys with or without "module.") -> our parameter names.

    classes_emb.weight (K, C0) and null_classes_emb (C0,) become class_table.weight (K + 1, C0);
    attention q/k/v/proj_out kernels (C, C, 1, 1) become Linear weights (C, C); other tensors are
    passed through unchanged (same shape, dtype and values). Raises ErasediffError listing unmapped
    or missing keys, or a class table that does not have `num_classes` rows (wrong architecture).
    Checking every shape against a model is `convert_sa_checkpoint`'s job.
    """
    sd = {_strip(str(k)): v for k, v in sd.items()}
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ErasediffError(f"state dict values must be tensors; not tensors: {_some(bad)}")
    num_levels = 1 + max((int(k.split(".")[1]) for k in sd if re.match(r"down\.\d+\.", k)), default=-1)
    unmapped = [k for k in sd if _map(k, num_levels) is None]
    missing = [k for k in _CLASS_KEYS if k not in sd]
    if unmapped or missing:
        raise ErasediffError(
            "not SA's Conditional_Model layout (DDIM UNet + classes_emb/null_classes_emb/cemb/temb_cemb_proj): "
            + "; ".join(s for s in (unmapped and f"unmapped keys: {_some(unmapped)}",
                                    missing and f"missing keys: {_some(missing)}") if s))
    classes, null = sd["classes_emb.weight"], sd["null_classes_emb"]
    if classes.ndim != 2 or classes.shape[0] != num_classes or null.shape != classes.shape[1:]:
        raise ErasediffError(f"expected classes_emb.weight ({num_classes}, C0) and null_classes_emb (C0,), got "
                             f"{tuple(classes.shape)} and {tuple(null.shape)}")
    out = {"class_table.weight": torch.cat([classes, null[None]], dim=0)}
    for key, value in sd.items():
        if key in _CLASS_KEYS:
            continue
        ours = _map(key, num_levels)
        out[ours] = value[:, :, 0, 0] if _SQUEEZE.search(ours) and value.shape[2:] == (1, 1) else value
    return out


def _describe(arch: dict[str, Any]) -> str:
    keys = ("num_classes", "block_out_channels", "layers_per_block", "down_block_types", "sample_size", "in_channels")
    return "ClassConditionalUNet(" + ", ".join(f"{k}={arch[k]}" for k in keys if k in arch) + ")"


def _build(arch: dict[str, Any], where: Path) -> ClassConditionalUNet:
    try:
        return ClassConditionalUNet(**arch)
    except (TypeError, ValueError) as exc:
        raise ErasediffError(f"cannot convert {where}: invalid arch: {first_line(exc)}") from None


def _check_shapes(ours: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str,
                  arch: dict[str, Any]) -> None:
    missing = [k for k in expected if k not in ours]
    extra = [k for k in ours if k not in expected]
    wrong = [f"{k} {tuple(ours[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in ours and ours[k].shape != v.shape]
    if missing or extra or wrong:
        found = "; ".join(s for s in (missing and f"missing: {_some(missing)}", extra and f"unexpected: {_some(extra)}",
                                      wrong and f"wrong shape (got vs expected): {_some(wrong)}") if s)
        raise ErasediffError(f"{where} does not match the expected architecture {_describe(arch)}: {found}")


def _convert_part(sd: Any, num_classes: int, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict):
        raise ErasediffError(f"{where}: expected a dict of tensors, got {type(sd).__name__} ({CKPT_LAYOUT})")
    try:
        return convert_sa_state_dict(sd, num_classes)
    except ErasediffError as exc:
        raise ErasediffError(f"{where}: {exc}") from None


def convert_sa_checkpoint(ckpt_path: str | os.PathLike, out_dir: str | os.PathLike, *,
                          arch: dict[str, Any] | None = None) -> dict[str, Any]:
    """SA / SalUn / official-EraseDiff `ckpt.pth` -> run directory out_dir/{model, model_ema, conversion.json}.

    arch: `ClassConditionalUNet` kwargs of the checkpoint's model (default `cifar10_sa_config()`).
    model/ holds the raw weights (states[0]), model_ema/ the EMA shadow (states[3]) when present, both
    `save_pretrained` directories; conversion.json records the source, step and parts found, and is
    also returned. out_dir must not exist or be empty. Everything is converted and checked in memory
    first, then written to a temporary sibling directory that is renamed to out_dir: a failure leaves
    nothing behind. Raises ErasediffError naming the file for an unreadable file, a file that is not
    SA's checkpoint list, or weights that do not fit `arch` (strict: no missing, extra or reshaped key).
    """
    path, out = Path(ckpt_path), Path(out_dir)
    arch = dict(cifar10_sa_config() if arch is None else arch)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ErasediffError(f"output directory {out} already exists and is not empty (results are never overwritten)")
    if not path.is_file():
        raise ErasediffError(f"checkpoint not found: {path} (expected {CKPT_LAYOUT})")
    if path.stat().st_size == 0:
        raise ErasediffError(f"{path} is empty (expected {CKPT_LAYOUT})")
    try:
        states = torch.load(path, map_location="cpu", weights_only=True)
    except (*_READ_ERRORS, OSError) as exc:  # a damaged or foreign file (an empty one gives IndexError)
        raise ErasediffError(f"cannot read {path} with torch.load(weights_only=True) ({first_line(exc)}); "
                             f"expected {CKPT_LAYOUT}") from None
    if not isinstance(states, (list, tuple)) or len(states) not in (3, 4) or not isinstance(states[0], dict):
        got = f"a {type(states).__name__}" + (f" of length {len(states)}" if isinstance(states, (list, tuple)) else "")
        raise ErasediffError(f"{path} is {got}, not {CKPT_LAYOUT}")
    step = states[2]
    if isinstance(step, torch.Tensor) and step.numel() == 1:
        step = step.item()
    if not isinstance(step, int) or isinstance(step, bool):
        raise ErasediffError(f"{path}: element 2 should be the step (int), got {type(step).__name__} ({CKPT_LAYOUT})")
    k = arch.get("num_classes", 10)
    parts = {"model": _convert_part(states[0], k, f"{path} (model state_dict, element 0)")}
    if len(states) == 4:
        parts["model_ema"] = _convert_part(states[3], k, f"{path} (EMA shadow, element 3)")
    models = {}
    for name, weights in parts.items():
        model = _build(arch, path)
        _check_shapes(weights, model.state_dict(), f"{path} ({name})", arch)
        model.load_state_dict(weights, strict=True)
        models[name] = model
    info = {"format": CONVERSION_FORMAT, "source": str(path.resolve()), "step": step,
            "parts": {"model": True, "model_ema": "model_ema" in models, "optimizer_state": "not converted"},
            "num_parameters": sum(p.numel() for p in models["model"].parameters()),
            "arch": json.loads(json.dumps(arch))}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, model in models.items():
            model.save_pretrained(tmp / name)
            fix_modes(tmp / name)
        write_json(tmp / "conversion.json", info)
        write_json(tmp / COMPLETE, {"steps": step, "converted_from": str(path.resolve())})
        fix_mode(tmp)  # mkdtemp makes it private; the run directory is not
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return info


class _Refused(pickle.UnpicklingError):
    """The pickle references a global outside the tensor-only allowlist."""


def _storage_from_bytes(data: bytes) -> Any:
    # What pickle.dump writes for a tensor's storage: a legacy torch.save of that storage. Loaded on
    # the CPU (SA's FIM is computed on GPUs) with the weights-only unpickler.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


_TENSOR_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
                   ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
                   ("collections", "OrderedDict"): collections.OrderedDict,
                   ("_codecs", "encode"): codecs.encode}


class _TensorUnpickler(pickle.Unpickler):
    """Rebuilds a plain pickle of tensors (pickle.dump of a dict of CPU/CUDA tensors) and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _TENSOR_GLOBALS:
            raise _Refused(f"{module}.{name}")
        return _TENSOR_GLOBALS[(module, name)]


class _TrustedUnpickler(pickle.Unpickler):
    """Full unpickling (runs whatever the file references), with tensor storages mapped to the CPU."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        return super().find_class(module, name)


_READ_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError,
                IndexError, KeyError, OverflowError, ImportError)


def _load_fisher_file(path: Path, trust_pickle: bool) -> Any:
    """Tensor-only loading first (torch.save zip: weights_only; plain pickle: allowlist); else trust."""
    is_zip = zipfile.is_zipfile(path)
    try:
        if is_zip:
            return torch.load(path, map_location="cpu", weights_only=True)
        with path.open("rb") as f:
            return _TensorUnpickler(f).load()
    except _READ_ERRORS as exc:
        if not isinstance(exc, _Refused) and not (is_zip and isinstance(exc, pickle.UnpicklingError)):
            raise ErasediffError(f"cannot read {path}: {first_line(exc)} (expected SA's fisher_dict.pkl, "
                                 "a pickled dict of parameter name -> tensor)") from None
        if not trust_pickle:
            raise ErasediffError(
                f"{path} holds Python objects other than tensors ({first_line(exc)}); unpickling it can run "
                "arbitrary code: pass trust_pickle=True (--trust-pickle) only if the file comes from a trusted source"
            ) from None
    warnings.warn(f"unpickling {path} (trust_pickle=True): this runs any code the file contains; "
                  "use it only on files from a trusted source", UserWarning, stacklevel=3)
    try:
        if is_zip:
            return torch.load(path, map_location="cpu", weights_only=False)
        with path.open("rb") as f:
            return _TrustedUnpickler(f).load()
    except _READ_ERRORS as exc:
        raise ErasediffError(f"cannot unpickle {path}: {first_line(exc)}") from None


def convert_sa_fisher(pkl_path: str | os.PathLike, out_path: str | os.PathLike, *, trust_pickle: bool = False,
                      arch: dict[str, Any] | None = None) -> Path:
    """SA's `fisher_dict.pkl` ("module." parameter name -> tensor) -> safetensors keyed by our parameter names.

    Same mapping as the weights (the classes_emb and null_classes_emb entries become the (K + 1, C0)
    class_table.weight; attention kernels are squeezed), checked strictly against `arch` (default
    `cifar10_sa_config()`); dtypes are kept; numpy arrays are accepted as values. A plain pickle of
    tensors (what SA writes, CPU or CUDA tensors) and a torch.save'd dict load without unpickling
    anything else, so need no flag. Any other pickle could run code when loaded: it is refused with
    ErasediffError unless trust_pickle=True, which unpickles it with a warning. out_path must not
    exist; it is written atomically. Returns out_path.
    """
    path, out = Path(pkl_path), Path(out_path)
    arch = dict(cifar10_sa_config() if arch is None else arch)
    if out.exists():
        raise ErasediffError(f"{out} already exists (results are never overwritten)")
    if not path.is_file():
        raise ErasediffError(f"Fisher file not found: {path} (expected SA's fisher_dict.pkl)")
    fisher = _load_fisher_file(path, trust_pickle)
    if not isinstance(fisher, dict):
        raise ErasediffError(f"{path} holds a {type(fisher).__name__}, not a dict of parameter name -> tensor")
    fisher = {k: torch.as_tensor(v) if isinstance(v, np.ndarray) else v for k, v in fisher.items()}
    ours = _convert_part(fisher, arch.get("num_classes", 10), str(path))
    with torch.device("meta"):
        expected = _build(arch, path).state_dict()
    _check_shapes(ours, expected, str(path), arch)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file({k: v.detach().contiguous().clone() for k, v in ours.items()}, str(tmp),
              metadata={"format": FISHER_FORMAT, "source": str(path.resolve())})
    fix_mode(tmp)
    os.replace(tmp, out)
    return out
