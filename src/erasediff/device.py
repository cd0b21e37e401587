"""Which torch device a config's `device` names (`auto` = CUDA when available), and mixed precision on it."""

from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from .errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"config key 'device' has an invalid value '{spec}'; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{spec}' requested but CUDA is not available; valid here: auto, cpu")
    return device


#: the autocast dtype of each `train.mixed_precision` / `sample.mixed_precision` value
PRECISION_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_context(mode: str, device: torch.device) -> AbstractContextManager:
    """torch.autocast to `mode`'s dtype on `device` (weights, optimiser and losses stay float32; docs/
    distributed.md "Mixed precision"); `no` disables autocast, also inside an enclosing autocast."""
    dtype = PRECISION_DTYPES[mode]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
