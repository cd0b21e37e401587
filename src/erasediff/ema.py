"""Exponential moving average of the trainable parameters.

shadow ← d·shadow + (1 − d)·θ after every optimiser step, with d = `decay` (SA / EraseDiff's EMAHelper)
or, with `warmup`, d_n = min(decay, (1 + n)/(10 + n)) after n updates (the rule diffusers' `EMAModel`
always applies). Unlearning runs start from a pretrained EMA shadow, which a warm-up would overwrite
with the raw weights within a few steps, so the warm-up is off by default; short pretraining runs from
random init need it (with 0.999 and no warm-up, 45% of the shadow is still the random init after 800
steps).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


class EMA:
    def __init__(self, params: list[nn.Parameter], decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.params = params
        self.shadow = [p.detach().clone() for p in params]
        self.num_updates = 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.current_decay())
        self.num_updates += 1

    @torch.no_grad()
    def load_shadow(self, tensors: list[torch.Tensor]) -> None:
        for s, t in zip(self.shadow, tensors, strict=True):
            s.copy_(t)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Temporarily put the EMA weights into the model (no second model copy), then restore."""
        backup = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.params, backup):
                    p.copy_(b)
