"""Finetune (Golatkar et al. 2020): keep training on the remaining data D_r only.

The same objective pretrains a base model (data.forget_classes empty, so D_r = D), trains Retrain
(D_r from random init) and BlindSpot's proxy, and is the λ = 0 reference for EraseDiff.
Loss: L_r = E‖ε − ε_θ(x_t, t, c)‖² with label dropout `cond_drop` (CFG training, docs/method.md "Notation").
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from annotated_types import Interval

from ..config import MethodConfig
from ..losses import denoising_loss
from . import register
from .base import Method, TrainState


class FinetuneConfig(MethodConfig):
    name: Literal["finetune"] = "finetune"
    #: probability of training on the null condition instead of c (p_uncond, 0.1 in SA/EraseDiff)
    cond_drop: Annotated[float, Interval(ge=0, lt=1)] = 0.1


@register
class Finetune(Method):
    name = "finetune"
    Config = FinetuneConfig
    needs_forget = False
    needs_remain = True
    training_objective = True

    def loss(self, state: TrainState, forget, remain) -> tuple[torch.Tensor, dict[str, float]]:
        x0, cond = state.backbone.encode(remain)
        loss, _ = denoising_loss(state.backbone, state.model, x0, cond, state.generator, cond_drop=self.cfg.cond_drop)
        return loss, {"loss_r": loss.item()}
