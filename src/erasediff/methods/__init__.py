"""Registry of unlearning methods: `method.name` in a config picks the class and its config type.

Adding a method = one file here that defines a `Method` subclass with its `Config` (a
`config.MethodConfig` whose `name` is `Literal["<name>"]`) and decorates it with `@register`, plus one
YAML. The loop and config.py do not change: the `method` section's type is built from this registry.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field

from ..config import MethodConfig
from ..errors import ConfigError
from .base import Method, MethodData, TrainState

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, MethodConfig)
            and config.model_fields["name"].default == cls.name):
        raise TypeError(f"method {cls.name!r}: Config must be a MethodConfig whose `name` defaults to {cls.name!r}")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}' (config key 'method.name'); valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_configs() -> Any:
    """The type of the config's `method` section: the registered methods' configs as a pydantic
    discriminated union on `name`, so `method.name` decides which keys are valid."""
    return Annotated[Union[tuple(m.Config for m in METHODS.values())], Field(discriminator="name")]


def _import_all() -> None:
    """Import every module of this package: each registers its method on import."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = ["METHODS", "Method", "MethodData", "TrainState", "get_method", "method_configs", "register"]
