"""The model-level speed options of a config (`model.gradient_checkpointing / channels_last / compile / tf32`).

Applied in one place to every model that trains or samples (`prepare.prepare_model`,
`checkpoint.load_eval_model`), so training, evaluation and generated data run the same network.
None of them changes a result beyond float rounding except tf32 (docs/speed.md).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .errors import ConfigError


def apply_speed_options(model: nn.Module, options: ModelConfig) -> nn.Module:
    """`model` (in place) with the speed options of `options` applied; returns it."""
    if options.tf32:  # process-wide: matmuls and cuDNN convolutions in TF32 on Ampere+ (no effect on CPUs)
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
    if options.gradient_checkpointing:
        if not getattr(model, "_supports_gradient_checkpointing", False):
            raise ConfigError(f"model.gradient_checkpointing: {type(model).__name__} does not support it; valid: false")
        model.enable_gradient_checkpointing()  # diffusers: every block recomputes its activations in backward
    if options.channels_last:
        model.to(memory_format=torch.channels_last)  # 4-d conv weights NHWC; inputs are converted by the convs
    if options.compile:
        model.compile()  # nn.Module.compile: the same module object (state_dict, save_pretrained) with a compiled call
    return model
