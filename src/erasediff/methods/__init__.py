"""Registry of unlearning methods: `method.name` in a config picks the class and its config type.

Adding a method = one file here that defines a `Method` subclass with its `Config` (a
`config.MethodConfig` whose `name` is `Literal["<name>"]`) and decorates it with `@register`, plus one
YAML. The loop and config.py do not change: the `method` section's type is built from this registry.
"""

from __future__ import annotations

from ..config import MethodConfig
from ..registry import Registry
from .base import Method, MethodData, TrainState

_REGISTRY = Registry("method", MethodConfig)
METHODS: dict[str, type[Method]] = _REGISTRY.entries
register = _REGISTRY.register
get_method = _REGISTRY.get
method_configs = _REGISTRY.configs
_REGISTRY.import_all(__name__, __path__, skip=("base",))

__all__ = ["METHODS", "Method", "MethodData", "TrainState", "get_method", "method_configs", "register"]
