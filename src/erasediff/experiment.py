"""Experiment files -> a validated RunConfig: the schema of config.py completed by the registered methods.

config.py holds the sections and the YAML rules and knows no method; the methods package imports it
(each method's config subclasses `config.MethodConfig`). This module sits above both: it gives
`RunConfig.method` its type, the registry's union typed by `method.name`, and reads experiment files.
So a new method is one file plus one YAML, and the import graph has no cycle (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig, apply_overrides, build_section, load_yaml_tree, yaml_load
from .methods import method_configs


def complete_run_config() -> None:
    """Give RunConfig its `method` type once (the registry is complete: importing .methods registered all).

    pydantic resolves the forward reference `MethodConfigs` from the namespace of the function that calls
    `model_rebuild`, i.e. the local below.
    """
    if RunConfig.__pydantic_complete__:
        return
    MethodConfigs = method_configs()  # noqa: F841 (read by model_rebuild)
    RunConfig.model_rebuild()


def build_run_config(tree: dict) -> RunConfig:
    """Validate a merged dict into a RunConfig (method section typed by `method.name`)."""
    complete_run_config()
    return build_section(RunConfig, tree)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, merge, override and validate a config file. Raises ConfigError before building anything."""
    return build_run_config(apply_overrides(load_yaml_tree(path), overrides or []))


def config_from_text(text: str) -> RunConfig:
    """Inverse of config.dump_config (config.resolved.yaml, a checkpoint's embedded config)."""
    return build_run_config(yaml_load(text))
