"""Experiment files -> a validated RunConfig: the schema of config.py completed by the registered methods.

config.py holds the sections and the YAML rules and knows no method; the methods package imports it
(each method's config subclasses `config.MethodConfig`). This module sits above both: it gives
`RunConfig.method` its type, the registry's union typed by `method.name` (and `RunConfig.attack` the
attacks registry's, typed by `attack.name`), and reads experiment files. So a new method or attack is
one file plus one YAML, and the import graph has no cycle (docs/architecture.md).
"""

from __future__ import annotations

from pathlib import Path

from .config import RunConfig, apply_overrides, build_section, load_yaml_tree, merge_trees, yaml_load
from .attacks import attack_configs
from .methods import method_configs


def complete_run_config() -> None:
    """Give RunConfig its `method` and `attack` types once (the registries are complete: importing .methods
    and .attacks registered all).

    pydantic resolves the forward references `MethodConfigs` and `AttackConfigs` from the namespace of the
    function that calls `model_rebuild`, i.e. the locals below.
    """
    if RunConfig.__pydantic_complete__:
        return
    MethodConfigs = method_configs()  # noqa: F841 (read by model_rebuild)
    AttackConfigs = attack_configs()  # noqa: F841 (read by model_rebuild)
    RunConfig.model_rebuild()


def build_run_config(tree: dict) -> RunConfig:
    """Validate a merged dict into a RunConfig (method section typed by `method.name`)."""
    complete_run_config()
    return build_section(RunConfig, tree)


def load_config(path: str | Path, overrides: list[str] | None = None, layers: tuple[str | Path, ...] = ()) -> RunConfig:
    """Read, merge, override and validate a config file. Raises ConfigError before building anything.

    layers: further YAML files merged over it in order, before the overrides (`attack --attack FILE`
    lays an attack's YAML over a concept's config)."""
    tree = load_yaml_tree(path)
    for layer in layers:
        tree = merge_trees(tree, load_yaml_tree(layer))
    return build_run_config(apply_overrides(tree, overrides or []))


def config_from_text(text: str) -> RunConfig:
    """Inverse of config.dump_config (config.resolved.yaml, a checkpoint's embedded config)."""
    return build_run_config(yaml_load(text))
