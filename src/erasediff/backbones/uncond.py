"""Unconditional pixel-space DDPM on diffusers' `UNet2DModel` (docs/experiments.md "Unconditional DDPM and CelebA-HQ").

On a user's machine `model.pretrained` can name `google/ddpm-cifar10-32` or
`google/ddpm-ema-celebahq-256` (loaded with `from_pretrained`). The data labels still define D_f
(a class or an attribute), but the network never sees them: `cond` is passed through unused, so no
guidance and no "other condition" exist for this family.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DModel
from torch import nn

from ..errors import ConfigError
from .base import PixelBackbone


class UnconditionalBackbone(PixelBackbone):
    conditional = False

    def predict(self, model: nn.Module, xt: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return model(xt, t).sample.float()  # float32 under autocast too

    def null_condition(self, n: int) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.long, device=self.device)

    def other_condition(self, cond: Any, generator: torch.Generator) -> Any:
        raise ConfigError(
            "an unconditional model has no other class to relabel to: use method.target=uniform "
            "(valid targets for backbone 'uncond': uniform)"
        )

    def drop_condition(self, cond: Any, p: float, generator: torch.Generator) -> Any:
        return cond

    def condition_for_classes(self, classes: torch.Tensor) -> torch.Tensor:
        return classes.to(self.device, dtype=torch.long)

    def build_model(self) -> nn.Module:
        a = self.arch
        return UNet2DModel(
            sample_size=a.sample_size,
            in_channels=a.in_channels,
            out_channels=a.out_channels,
            block_out_channels=a.block_out_channels,
            layers_per_block=a.layers_per_block,
            down_block_types=a.down_block_types,
            up_block_types=a.up_block_types,
            add_attention=a.mid_block_attention,
            attention_head_dim=a.attention_head_dim,
            norm_num_groups=a.norm_num_groups,
            norm_eps=a.norm_eps,
            dropout=a.dropout,
            flip_sin_to_cos=a.flip_sin_to_cos,
            freq_shift=a.freq_shift,
            downsample_padding=a.downsample_padding,
        )

    def load_model(self, directory: str, **kwargs: Any) -> nn.Module:
        return UNet2DModel.from_pretrained(directory, **kwargs)
