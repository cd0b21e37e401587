"""Denoising losses and forgetting targets (docs/method.md "The losses").

All losses are mean-reduced MSE over batch and pixels, as the official code (docs/method.md "Loss reduction"): λ and
λ_EWC values in the configs are tied to this reduction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from . import shard

if TYPE_CHECKING:  # keep config validation free of the diffusers import (seconds)
    from .backbones.base import Backbone


def eps_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖target − pred‖² averaged over every element (scalar)."""
    return F.mse_loss(pred, target)


def denoising_loss(
    backbone: Backbone,
    model: nn.Module,
    x0: torch.Tensor,
    cond: Any,
    generator: torch.Generator,
    *,
    t: torch.Tensor | None = None,
    cond_drop: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L = E‖ε − ε_θ(x_t, t, c)‖² with ε ~ N(0, I) (Eq. 1–2 of the paper, the "simple" loss).

    x0: (B, C, H, W); t: (B,) int64 in [0, T) (antithetic draw if None); cond_drop: probability of
    replacing c by the null condition (CFG training, 0.1 when pretraining). Returns (loss, t) so a
    caller can reuse t for a second batch, as the official EraseDiff code does for D_f.
    """
    if t is None:
        t = backbone.sample_timesteps(x0.shape[0], generator)
    eps = shard.randn(x0.shape, generator).to(x0.device)
    cond = backbone.drop_condition(cond, cond_drop, generator)
    pred = backbone.predict(model, backbone.add_noise(x0, eps, t), t, cond)
    return eps_mse(pred, eps), t


def uniform_target_loss(
    backbone: Backbone, model: nn.Module, x0: torch.Tensor, cond: Any, t: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """EraseDiff_noise forgetting loss (docs/method.md "Forgetting targets"): ε_f ~ U[0, 1) (not N(0, I)).

    The same ε_f noises the input, x̃_t = sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε_f, and is the regression target:
    L_f = ‖ε_f − ε_θ(x̃_t, t, c_f)‖². True label, no label dropout, no stop-gradient (the target is data).
    """
    eps_f = shard.rand(x0.shape, generator).to(x0.device)
    pred = backbone.predict(model, backbone.add_noise(x0, eps_f, t), t, cond)
    return eps_mse(pred, eps_f)


def random_label_target_loss(
    backbone: Backbone,
    model: nn.Module,
    x0: torch.Tensor,
    cond: Any,
    t: torch.Tensor,
    generator: torch.Generator,
    cond_drop: float = 0.0,
) -> torch.Tensor:
    """EraseDiff_rl / SalUn "RL" forgetting loss (docs/method.md "Forgetting targets").

    x_t is the forget image noised with ε ~ N(0, I); the target is the *same model's* prediction at
    the same (x_t, t) for another condition c' (a random other class, or the surrogate prompt for SD),
    detached: L_f = ‖sg[ε_θ(x_t, t, c')] − ε_θ(x_t, t, c_f)‖². Only the c_f branch gets gradients.
    cond_drop applies to the c_f branch (the official code leaves its config value 0.1 active).
    """
    eps = shard.randn(x0.shape, generator).to(x0.device)
    xt = backbone.add_noise(x0, eps, t)
    other = backbone.other_condition(cond, generator)
    with torch.no_grad():
        target = backbone.predict(model, xt, t, other)
    pred = backbone.predict(model, xt, t, backbone.drop_condition(cond, cond_drop, generator))
    return eps_mse(pred, target)
