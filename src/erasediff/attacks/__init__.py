"""Registry of concept-restoration attacks: `attack.name` in a config picks the class and its config type.

Adding an attack = one file here that defines an `Attack` subclass with its `Config` (a
`config.AttackConfig` whose `name` is `Literal["<name>"]`) and decorates it with `@register`, plus one
YAML (StableDiffusion/configs/attacks/). The `attack` command and config.py do not change: the
`attack` section's type is built from this registry, as the `method` section's is from the methods'.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from ..config import AttackConfig
from ..errors import ConfigError
from .base import Adversarial, Attack

ATTACKS: dict[str, type[Attack]] = {}


def register(cls: type[Attack]) -> type[Attack]:
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, AttackConfig)
            and config.model_fields["name"].default == cls.name):
        raise TypeError(f"attack {cls.name!r}: Config must be an AttackConfig whose `name` defaults to {cls.name!r}")
    ATTACKS[cls.name] = cls
    return cls


def get_attack(name: str) -> type[Attack]:
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack '{name}' (config key 'attack.name'); valid attacks: {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]


def attack_configs() -> Any:
    """The type of the config's `attack` section: the registered attacks' configs as a pydantic
    discriminated union on `name`, so `attack.name` decides which keys are valid."""
    return Annotated[Union[tuple(a.Config for a in ATTACKS.values())], Field(discriminator="name")]


def _import_all() -> None:
    """Import every module of this package: each registers its attack on import."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("base", "context"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = ["ATTACKS", "Adversarial", "Attack", "attack_configs", "get_attack", "register"]
