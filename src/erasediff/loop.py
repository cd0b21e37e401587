"""THE training / unlearning loop, method-agnostic (docs/architecture.md "The loop").

Pretraining, Retrain, Finetune and every unlearning method are runs of this loop; a method only
decides what one step does (`Method.update`). Around it the loop owns: seeding, data iterators,
optimiser + warm-up schedule, EMA, periodic sample grids, logs, checkpoints and resume.

`train` is the one entry point: it claims the run directory (`rundir.claim_run_dir`: one writer,
new / resume / refuse decided once), checks a resume against the saved config, builds the run
(`build.build_run`: model, data, optimiser, method, writing nothing) and executes it
(`run.Run.execute`). A failure before the first step leaves nothing behind (docs/reliability.md).
Under `accelerate launch` / `torchrun` the main process claims and decides; the others follow its
decision (or fail with its error) and never write (docs/distributed.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .build import build_run
from .checkpoint import CorruptCheckpoint, checkpoint_meta
from .config import RunConfig
from .distributed import Processes, processes
from .errors import ConfigError, ErasediffError
from .experiment import config_from_text
from .methods import get_method
from .rundir import CONFIG, RunDirClaim, RunDirView, claim_run_dir
from .tracking import check_trackers


def check_command(cfg: RunConfig, *, require_pretrained: bool = False, training_only: bool = False) -> None:
    """What `train` / `unlearn` require of a config (checked before anything is claimed or built)."""
    method_cls = get_method(cfg.method.name)
    if training_only and not method_cls.training_objective:
        raise ConfigError(
            f"'train' runs a training objective (valid: finetune); method '{cfg.method.name}' is an unlearning "
            "method: use the 'unlearn' command"
        )
    if require_pretrained and cfg.model.pretrained is None:
        raise ConfigError("'unlearn' needs a model to unlearn from: set model.pretrained (a run dir, model dir or Hub id)")
    check_trackers(cfg.train.log_with)


_RESUMABLE = ("steps", "nonfinite", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints")


def check_resume(cfg: RunConfig, claim: RunDirClaim | RunDirView) -> dict[str, Any] | None:
    """Before a resumed run is built: the config must be the saved one (only train.steps, the checkpoint
    policy and device may change) and train.steps may not be below the steps already done. Returns the
    finished run's metrics when there is nothing left to do."""
    run_dir = claim.path
    saved = config_from_text((run_dir / CONFIG).read_text())
    train = saved.train.model_copy(update={k: getattr(cfg.train, k) for k in _RESUMABLE})
    if saved.model_copy(update={"train": train, "device": cfg.device}) != cfg:
        raise ConfigError(
            f"--resume: the config differs from the one saved in {run_dir / CONFIG} (only train.steps, "
            f"train.{', train.'.join(_RESUMABLE[1:])} and device may change)"
        )
    done = claim.complete.get("steps", 0) if claim.complete else 0
    for path in claim.checkpoints[:1]:
        try:
            done = max(done, int(checkpoint_meta(path)["step"]))
        except CorruptCheckpoint:
            pass  # restore names it and falls back
    if cfg.train.steps < done:
        raise ConfigError(f"--resume: train.steps is {cfg.train.steps} but {run_dir} has already done {done} steps "
                          f"(set train.steps >= {done})")
    if claim.complete is not None and cfg.train.steps == done and (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text())
    return None


def train(
    cfg: RunConfig, run_dir: str | Path | None = None, *, resume: bool = False, require_pretrained: bool = False,
    training_only: bool = False, progress: bool = True,
) -> dict[str, Any]:
    """Claim the run directory (default cfg.run_dir()), check a resume, build the run, execute it.

    Returns the run's metrics.json summary; a finished run resumed with the same train.steps returns
    its summary with `already_complete: True` and writes nothing.
    """
    check_command(cfg, require_pretrained=require_pretrained, training_only=training_only)
    procs = processes(cfg.device)
    path = Path(run_dir if run_dir is not None else cfg.run_dir())
    if procs.world == 1:
        with claim_run_dir(path, resume) as claim:
            finished = check_resume(cfg, claim) if claim.resume else None
            if finished is not None:
                return {**finished, "already_complete": True}
            run = build_run(cfg, progress=progress, procs=procs)
            return {**run.execute(claim.view(), progress=progress), "run_dir": str(claim.path)}
    return _train_processes(cfg, path, resume, progress, procs)


def _train_processes(cfg: RunConfig, path: Path, resume: bool, progress: bool, procs: Processes) -> dict[str, Any]:
    """`train` under a launcher: the main process claims the folder and decides; every process builds
    and trains its share; only the main one writes. An error of the main process's claim is raised on
    every process (the CLI prints it once, on the main one)."""
    claim, outcome = None, None
    if procs.is_main:
        try:
            claim = claim_run_dir(path, resume)
            finished = check_resume(cfg, claim) if claim.resume else None
            outcome = ("ok", claim.view(), finished)
        except ErasediffError as exc:
            if claim is not None:
                claim.__exit__(type(exc), exc, None)
            outcome = ("error", str(exc), exc.exit_code)
            procs.broadcast_object(outcome)
            raise
    outcome = procs.broadcast_object(outcome)
    if outcome[0] == "error":
        err = ErasediffError(outcome[1])
        err.exit_code = outcome[2]
        raise err
    _, view, finished = outcome
    try:
        if finished is not None:
            return {**finished, "already_complete": True}
        run = build_run(cfg, progress=progress, procs=procs)
        return {**run.execute(view, progress=progress), "run_dir": str(view.path)}
    except BaseException as exc:
        if claim is not None:
            claim.__exit__(type(exc), exc, None)
            claim = None
        raise
    finally:
        if claim is not None:
            claim.__exit__(None, None, None)
