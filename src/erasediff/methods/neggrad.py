"""NegGrad (Golatkar et al. 2020, "Eternal Sunshine of the Spotless Net"): gradient ascent on D_f.

Objective (docs/baselines.md "NegGrad"; paper: 5 epochs on D_f):
    min_θ  −L_f(θ),   L_f(θ) = E_{(x0,c)~D_f, t, ε~N(0,I)} ‖ε − ε_θ(x_t, t, c)‖²
i.e. the standard ε-MSE (`denoising_loss`) on forget batches, negated, so the loop's descent step
ascends L_f. `cond_drop` is the label-dropout probability of that loss (default 0: the true forget
label; the official code calls its loss with the loss function's default dropout).

Option `data`:
- `forget` (default, the paper): ascend on D_f; the loop draws forget batches only.
- `remain`: ascend on D_r — reproduces the official code's bug (`train_ng` iterates
  `trainloader_rem`, docs/baselines.md "NegGrad"). Offered only to reproduce the code; not the paper's method.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from annotated_types import Interval

from ..config import MethodConfig
from ..losses import denoising_loss
from . import register
from .base import Method, TrainState


class NegGradConfig(MethodConfig):
    name: Literal["neggrad"] = "neggrad"
    #: which split is ascended: `forget` (paper) or `remain` (the official code's bug)
    data: Literal["forget", "remain"] = "forget"
    #: probability of replacing c by the null condition in the ascended loss
    cond_drop: Annotated[float, Interval(ge=0, lt=1)] = 0.0


@register
class NegGrad(Method):
    name = "neggrad"
    Config = NegGradConfig

    def __init__(self, cfg: NegGradConfig):
        super().__init__(cfg)
        self.needs_forget = cfg.data == "forget"
        self.needs_remain = cfg.data == "remain"

    def loss(self, state: TrainState, forget, remain) -> tuple[torch.Tensor, dict[str, float]]:
        batch = forget if self.cfg.data == "forget" else remain
        x0, cond = state.backbone.encode(batch)  # x0: (B, C, H, W); cond: (B,) class ids / prompt embeddings
        ascended, _ = denoising_loss(
            state.backbone, state.model, x0, cond, state.generator, cond_drop=self.cfg.cond_drop
        )
        key = "loss_f" if self.cfg.data == "forget" else "loss_r"
        return -ascended, {key: ascended.item(), "loss": -ascended.item()}
