"""`none`: the un-attacked prompts (docs/robustness.md). Its run is the pre-attack stage alone, so its
ASR is the pre-attack rate: how often the unlearned model shows the concept for the plain prompt."""

from __future__ import annotations

from typing import Literal

from ..config import AttackConfig
from . import register
from .base import Attack


@register
class NoAttack(Attack):
    name = "none"

    class Config(AttackConfig):
        name: Literal["none"] = "none"

    attacks_prompts = False
