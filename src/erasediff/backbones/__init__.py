"""Backbone adapters, chosen by `model.backbone`."""

from __future__ import annotations

import torch

from ..config import RunConfig
from .base import Backbone
from .class_cond import ClassConditionalBackbone
from .uncond import UnconditionalBackbone

BACKBONES = {"class_cond": ClassConditionalBackbone, "uncond": UnconditionalBackbone}


def build_backbone(cfg: RunConfig, device: torch.device) -> Backbone:
    return BACKBONES[cfg.model.backbone](cfg.diffusion, cfg.model.arch, device)


__all__ = ["Backbone", "BACKBONES", "ClassConditionalBackbone", "UnconditionalBackbone", "build_backbone"]
