"""`precompute`: the artifacts a method reads at setup, made from the config its `unlearn` run will use.

A method declares them (`Method.artifacts`, docs/architecture.md): SA's Fisher, SalUn's saliency mask,
BlindSpot's stage-1 proxy. Each lives at the path of a method config key; an unset key means
`<artifacts dir>/<default name>`, with the artifacts dir from `--artifacts-dir` (default
`<output_root>/<experiment>`), and `unlearn` resolves it the same way, so `precompute` then `unlearn`
with the same config, --set items and --artifacts-dir meet at the same files.

What is already there is kept, never recomputed or overwritten: a file is written whole or not at all
(`checkpoint.save_param_file`); a run (the proxy) that was interrupted is resumed, one that finished is
kept. A run artifact is `train` on the YAML its method config names, with this command's --set items
except method.* (it has its own method) and model.pretrained (it trains from its own config's start).
Every input is checked before the first computation starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ConfigError
from .experiment import load_config
from .loop import train
from .methods import get_method
from .methods.base import Artifact
from .rundir import COMPLETE, CONFIG


def run_overrides(overrides: list[str]) -> list[str]:
    """The --set items (KEY=VALUE) that apply to an artifact's own `train` run too: all but method.* and
    model.pretrained."""
    def key(item: str) -> str:
        return item.split("=", 1)[0].strip()

    return [o for o in overrides if not (key(o) in ("method", "model.pretrained") or key(o).startswith("method."))]


def artifact_run_config(cfg: RunConfig, art: Artifact, overrides: list[str]) -> RunConfig:
    """The config of the `train` run that makes `art` (art.train_config names its YAML); ConfigError when it
    is unset or does not train on this config's dataset without its forget classes."""
    path = getattr(cfg.method, art.train_config)
    if path is None:
        raise ConfigError(
            f"config key 'method.{art.train_config}' is not set: name the YAML of the run that makes method.{art.key} "
            f"({art.description}), e.g. DDPM/configs/digits/blindspot_proxy.yaml, or set method.{art.key} to one"
        )
    run_cfg = load_config(path, run_overrides(overrides))
    ours = (run_cfg.data.dataset, sorted(run_cfg.data.forget_classes))
    theirs = (cfg.data.dataset, sorted(cfg.data.forget_classes))
    if ours != theirs:
        raise ConfigError(
            f"method.{art.train_config} {path} trains on dataset '{ours[0]}' without classes {ours[1]}, but this "
            f"config forgets {theirs[1]} of '{theirs[0]}': name a config with the same data.dataset and "
            "data.forget_classes"
        )
    return run_cfg


def run_status(out: Path) -> str:
    """What `precompute` does with a run artifact at `out`: 'kept' (a finished run, or a model folder given
    by the user), 'resume' (an interrupted run of this project) or 'new' (claim_run_dir refuses junk)."""
    if (out / COMPLETE).is_file():
        return "kept"
    if (out / CONFIG).is_file():
        return "resume"
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new"
    return "kept"


def precompute(config: str, overrides: list[str], artifacts_dir: str | None = None,
               progress: bool = True) -> tuple[RunConfig, list[dict[str, Any]]]:
    """Make every missing artifact of the config's method. Returns (the config with its artifact paths
    resolved, one summary per declared artifact: `artifact` (the key), `path`, and `kept: True` or what
    its computation reported)."""
    cfg = load_config(config, overrides)
    method_cls = get_method(cfg.method.name)
    cfg = method_cls.with_artifact_paths(cfg, artifacts_dir)
    plan = []
    for art in method_cls.artifacts:  # every input checked before the first (minutes-long) computation
        out = Path(getattr(cfg.method, art.key))
        if art.compute is not None:
            plan.append((art, out, "kept" if out.is_file() else "new", None))
        else:
            status = run_status(out)
            plan.append((art, out, status, None if status == "kept" else artifact_run_config(cfg, art, overrides)))
    results = []
    for art, out, status, run_cfg in plan:
        if status == "kept":
            info: dict[str, Any] = {"kept": True}
        elif art.compute is not None:
            info = art.compute(cfg, out, progress)
        else:
            summary = train(run_cfg, out, resume=status == "resume", training_only=True, progress=progress)
            info = {"steps": summary["steps"], "wall_time_s": summary["wall_time_s"], "resumed": status == "resume"}
        results.append({"artifact": art.key, **info, "path": str(out)})
    return cfg, results
