"""Backbone adapters, chosen by `model.backbone`."""

from __future__ import annotations

import torch

from ..config import RunConfig
from .base import Backbone
from .class_cond import ClassConditionalBackbone
from .uncond import UnconditionalBackbone

BACKBONES = {"class_cond": ClassConditionalBackbone, "uncond": UnconditionalBackbone}


def build_backbone(cfg: RunConfig, device: torch.device) -> Backbone:
    if cfg.model.backbone == "stable_diffusion":
        # late import: the SD adapter loads transformers (seconds); it reads the whole run config
        # (pipeline, prompts, surrogate) rather than only `diffusion` and `arch`
        from .stable_diffusion import StableDiffusionBackbone

        return StableDiffusionBackbone(cfg, device)
    return BACKBONES[cfg.model.backbone](cfg.diffusion, cfg.model.arch, device, image_size=cfg.data.image_size)


__all__ = ["Backbone", "BACKBONES", "ClassConditionalBackbone", "UnconditionalBackbone", "build_backbone"]
