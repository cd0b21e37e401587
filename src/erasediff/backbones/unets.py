"""Class-conditional ε-prediction UNet compatible with Selective Amnesia's (SA) CIFAR10 DDPM.

`ClassConditionalUNet` wraps a diffusers `UNet2DConditionModel` so that SA checkpoints can be
converted onto it key by key, and so that it saves / loads with diffusers' `save_pretrained` /
`from_pretrained` (safetensors weights + config.json).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from torch import nn

_ATTN_BLOCKS = ("AttnDownBlock2D", "AttnUpBlock2D")
_DUMMY_CROSS_DIM = 1  # width of the unused encoder_hidden_states (no cross-attention blocks)


class ClassConditionalUNet(ModelMixin, ConfigMixin):
    """SA-compatible class-conditional ε-prediction UNet (EraseDiff CIFAR10 experiments).

    Why this class exists: SA's network maps exactly onto `UNet2DConditionModel` (projection class
    embedding concatenated to the time embedding, so the resnets see a 2 * 4 * C0 embedding like SA's
    `temb_cemb_proj`), except for two things that are handled here:

    1. The class table lives outside the inner UNet: `class_table` is an (num_classes + 1) x C0
       embedding; rows 0..num_classes-1 are the classes, row `num_classes` is the learned null class
       used for classifier-free guidance. The inner UNet receives `class_labels = class_table[c]`
       (a C0-d vector, before its projection MLP `unet.class_embedding`).
    2. `UNet2DConditionModel`'s "UNetMidBlock2D" option builds no attention, so `__init__` replaces
       `unet.mid_block` by `UNetMidBlock2D(num_layers=1, add_attention=mid_block_attention)`
       (resnet, attention, resnet = SA's mid.block_1 / mid.attn_1 / mid.block_2). Pitfall: the inner
       `unet` saved on its own and reloaded with `UNet2DConditionModel.from_pretrained` comes back
       with `mid_block = None` (its config says mid_block_type=None; the mid-block weights are only
       logged as unused); always save / load this wrapper class, whose config rebuilds the block.

    Parameter names (the SA -> diffusers converter relies on them):
        class_table.weight                       (num_classes + 1, C0); row num_classes = SA null_classes_emb
        unet.class_embedding.linear_{1,2}        projection MLP of the class vector
        unet.time_embedding.linear_{1,2}         timestep MLP
        unet.down_blocks.{i}.resnets.{j}.*       e.g. ...time_emb_proj (Linear 2*4*C0 -> C)
        unet.down_blocks.{i}.attentions.{j}.*    to_q / to_k / to_v / to_out.0 / group_norm
        unet.mid_block.resnets.{0,1}.*, unet.mid_block.attentions.0.*
        unet.up_blocks.{i}.*, unet.conv_in, unet.conv_norm_out, unet.conv_out

    `encoder_hidden_states` is unused (no cross-attention) but required by the inner forward; a
    (B, 1, 1) zeros tensor is passed.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 3,
        out_channels: int = 3,
        num_classes: int = 10,
        block_out_channels: tuple[int, ...] = (128, 256, 256, 256),
        layers_per_block: int = 2,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types: tuple[str, ...] = ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        mid_block_attention: bool = True,
        attention_head_dim: int = 256,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        dropout: float = 0.1,
        flip_sin_to_cos: bool = False,
        freq_shift: int = 1,
        downsample_padding: int = 0,
    ):
        super().__init__()
        block_out_channels = tuple(block_out_channels)
        _validate(num_classes, block_out_channels, tuple(down_block_types), tuple(up_block_types),
                  mid_block_attention, attention_head_dim, norm_num_groups, dropout)
        c0 = block_out_channels[0]
        temb = 2 * 4 * c0  # time embedding (4 * C0) concatenated with class embedding (4 * C0)
        self.class_table = nn.Embedding(num_classes + 1, c0)
        self.unet = UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            flip_sin_to_cos=flip_sin_to_cos, freq_shift=freq_shift,
            down_block_types=tuple(down_block_types), mid_block_type=None, up_block_types=tuple(up_block_types),
            block_out_channels=block_out_channels, layers_per_block=layers_per_block,
            downsample_padding=downsample_padding, dropout=dropout, act_fn="silu",
            norm_num_groups=norm_num_groups, norm_eps=norm_eps, cross_attention_dim=_DUMMY_CROSS_DIM,
            attention_head_dim=attention_head_dim, class_embed_type="projection",
            projection_class_embeddings_input_dim=c0, class_embeddings_concat=True,
        )
        self.unet.mid_block = UNetMidBlock2D(
            in_channels=block_out_channels[-1], temb_channels=temb, dropout=dropout, num_layers=1,
            resnet_eps=norm_eps, resnet_act_fn="silu", resnet_groups=norm_num_groups,
            add_attention=mid_block_attention, attention_head_dim=attention_head_dim,
        )

    @property
    def null_class(self) -> int:
        """Label of the learned unconditional (null) class: num_classes."""
        return self.config.num_classes

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, class_labels: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t, c).

        sample: (B, C, H, W) float; timestep: (B,) int64 in [0, T) or a scalar;
        class_labels: (B,) int64 in [0, num_classes] (num_classes = null class).
        Returns the noise prediction (B, C, H, W).
        """
        if not sample.is_cuda and bool(torch.any((class_labels < 0) | (class_labels > self.null_class))):
            raise ValueError(f"class_labels must lie in [0, {self.null_class}] ({self.null_class} = null class), "
                             f"got min {int(class_labels.min())}, max {int(class_labels.max())}")
        cond = self.class_table(class_labels)  # (B, C0)
        context = sample.new_zeros(sample.shape[0], 1, _DUMMY_CROSS_DIM)  # (B, 1, 1), unused
        return self.unet(sample, timestep, encoder_hidden_states=context, class_labels=cond, return_dict=False)[0]


def _validate(num_classes: int, channels: tuple[int, ...], down: tuple[str, ...], up: tuple[str, ...],
              mid_attention: bool, head_dim: int, groups: int, dropout: float) -> None:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not len(channels) == len(down) == len(up):
        raise ValueError(f"block_out_channels {channels}, down_block_types {down} and up_block_types {up} "
                         "must have the same length")
    if any(c % groups for c in channels):
        raise ValueError(f"every block_out_channels entry {channels} must be divisible by norm_num_groups={groups}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    attn_channels = [c for c, t in zip(channels, down) if t in _ATTN_BLOCKS]
    attn_channels += [c for c, t in zip(reversed(channels), up) if t in _ATTN_BLOCKS]
    attn_channels += [channels[-1]] if mid_attention else []
    bad = [c for c in attn_channels if c % head_dim]
    if bad:
        raise ValueError(f"attention blocks with {bad} channels are not divisible by attention_head_dim={head_dim}")


def cifar10_sa_config() -> dict[str, Any]:
    """Kwargs of SA's CIFAR10 class-conditional DDPM (38,632,323 parameters)."""
    return dict(
        sample_size=32, in_channels=3, out_channels=3, num_classes=10,
        block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        mid_block_attention=True, attention_head_dim=256, norm_num_groups=32, norm_eps=1e-6,
        dropout=0.1, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
    )
