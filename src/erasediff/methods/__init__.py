"""Registry of unlearning methods: `method.name` in a config picks the class and its config type.

Adding a method = one file here that defines a `Method` subclass with its `Config` dataclass and
decorates it with `@register`, plus one YAML. The loop does not change.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Method, MethodData, TrainState

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"unknown method '{name}' (config key 'method.name'); valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_config_class(name: str) -> type:
    return get_method(name).Config


def _import_all() -> None:
    """Import every module of this package: each registers its method on import."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()

__all__ = ["METHODS", "Method", "MethodData", "TrainState", "get_method", "method_config_class", "register"]
