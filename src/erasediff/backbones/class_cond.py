"""Class-conditional pixel-space DDPM (SA-compatible UNet, docs/peers.md): conditions are class ids.

cond: (B,) int64 in [0, K]; K = num_classes is the learned null class used for classifier-free
guidance (its row of the class table is trained by label dropout, p_uncond = 0.1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import shard
from .base import PixelBackbone
from .unets import ClassConditionalUNet


class ClassConditionalBackbone(PixelBackbone):
    conditional = True

    def predict(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t, c): (B,C,H,W) float32 (also under autocast)."""
        return model(xt, t, cond).float()

    def null_condition(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)

    def other_condition(self, cond: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A uniformly random class ≠ c for every sample: c' = (c + U{1..K−1}) mod K.

        (The official code draws one label in {1..9} for the whole batch and never checks it
        against c_f, docs/method.md "Forgetting targets"; this version is always a different class.)
        """
        shift = shard.randint(1, self.num_classes, cond.shape, generator)
        return (cond + shift.to(cond.device)) % self.num_classes

    def condition_for_classes(self, classes: torch.Tensor) -> torch.Tensor:
        return classes.to(self.device, dtype=torch.long)

    def build_model(self) -> nn.Module:
        return ClassConditionalUNet(**self.arch.model_dump())

    def load_model(self, directory: str, **kwargs: Any) -> nn.Module:
        return ClassConditionalUNet.from_pretrained(directory, **kwargs)
