"""A registry of named components whose config section is typed by `name`: the methods (`method.name`)
and the attacks (`attack.name`). One implementation for both (docs/architecture.md "Adding a method",
"Adding an attack"): a component is one file that registers its class, plus one YAML.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Annotated, Any, Union

from pydantic import Field

from .errors import ConfigError


class Registry:
    """Classes with a `name` and a `Config` (a subclass of `config_base` whose `name` defaults to the
    class's), by name. `kind` names them in messages ("method" -> "unknown method 'x' (config key
    'method.name'); valid methods: ...")."""

    def __init__(self, kind: str, config_base: type):
        self.kind, self.config_base = kind, config_base
        self.entries: dict[str, type] = {}

    def register(self, cls: type) -> type:
        config = getattr(cls, "Config", None)
        if not (isinstance(config, type) and issubclass(config, self.config_base)
                and config.model_fields["name"].default == cls.name):
            raise TypeError(f"{self.kind} {cls.name!r}: Config must be a {self.config_base.__name__} whose `name` "
                            f"defaults to {cls.name!r}")
        self.entries[cls.name] = cls
        return cls

    def get(self, name: str) -> type:
        if name not in self.entries:
            raise ConfigError(f"unknown {self.kind} '{name}' (config key '{self.kind}.name'); valid {self.kind}s: "
                              f"{', '.join(sorted(self.entries))}")
        return self.entries[name]

    def configs(self) -> Any:
        """The type of the config section: the registered configs as a pydantic discriminated union on
        `name`, so `<kind>.name` decides which keys are valid."""
        return Annotated[Union[tuple(c.Config for c in self.entries.values())], Field(discriminator="name")]

    def import_all(self, package: str, path: list[str], skip: tuple[str, ...]) -> None:
        """Import every module of `package` (at `path`) but `skip`: each registers its class on import."""
        for info in pkgutil.iter_modules(path):
            if info.name not in skip:
                importlib.import_module(f"{package}.{info.name}")
