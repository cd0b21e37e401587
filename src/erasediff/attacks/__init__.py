"""Registry of concept-restoration attacks: `attack.name` in a config picks the class and its config type.

Adding an attack = one file here that defines an `Attack` subclass with its `Config` (a
`config.AttackConfig` whose `name` is `Literal["<name>"]`) and decorates it with `@register`, plus one
YAML (StableDiffusion/configs/attacks/). The `attack` command and config.py do not change: the
`attack` section's type is built from this registry, as the `method` section's is from the methods'.
"""

from __future__ import annotations

from ..config import AttackConfig
from ..registry import Registry
from .base import Adversarial, Attack

_REGISTRY = Registry("attack", AttackConfig)
ATTACKS: dict[str, type[Attack]] = _REGISTRY.entries
register = _REGISTRY.register
get_attack = _REGISTRY.get
attack_configs = _REGISTRY.configs
_REGISTRY.import_all(__name__, __path__, skip=("base", "context"))

__all__ = ["ATTACKS", "Adversarial", "Attack", "attack_configs", "get_attack", "register"]
