"""Which torch device a config's `device` names (`auto` = CUDA when available)."""

from __future__ import annotations

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
