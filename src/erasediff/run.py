"""A built run and the loop that trains it: steps, logs, grids, checkpoints, models, signals.

`Run.execute` trains in a claimed run directory (rundir.claim_run_dir) and owns what docs/reliability.md
promises of a run: a non-finite loss or gradient stops the run or skips the update (train.nonfinite)
and is never saved; SIGINT / SIGTERM save a checkpoint at the next step boundary; checkpoints are
verified and the previous ones kept; timing accumulates over resumed parts; COMPLETE is written last.
Under a launcher every process runs `execute` (the same steps on its share of each batch) and only the
main one writes; the decisions that end or checkpoint a run are taken jointly (docs/distributed.md).

Why one file over 300 lines: the run's state, its checkpoint round trip and the loop that uses them
are one unit; split, each half would reach into the other's fields.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from .checkpoint import (
    CorruptCheckpoint,
    checkpoint_path,
    prune_checkpoints,
    read_checkpoint,
    save_checkpoint,
    unpack_checkpoint,
)
from .config import RunConfig, dump_config
from .data import LabeledImages
from .errors import ErasediffError, Interrupted, NonFiniteStep, RunStopped
from .files import atomic_write_text, fix_modes, json_text, write_json
from .methods import Method, MethodData, TrainState
from .rundir import COMPLETE, CONFIG, RunDirView, checkpoints_newest_first
from .samplers import sample_classes
from .tracking import Trackers, plot_losses


def peak_memory_mib(device: torch.device) -> dict[str, Any]:
    """Peak memory of the training steps (the paper's Table 2 "Memory"): on CUDA the peak of allocated tensors
    since the loop started (torch.cuda.max_memory_allocated); on CPU the process's peak resident set size
    (everything the process ever held, setup included: an upper bound)."""
    if device.type == "cuda":
        return {"value": round(torch.cuda.max_memory_allocated(device) / 2**20, 1), "kind": "cuda_max_allocated"}
    import resource

    return {"value": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "kind": "cpu_peak_rss"}


@dataclass
class Run:
    """A built run (model, optimiser, data, method); `execute` trains it in a claimed run directory."""

    cfg: RunConfig
    state: TrainState
    method: Method
    data: MethodData
    dataset: LabeledImages
    skipped_steps: int = 0  # updates dropped by train.nonfinite: skip_step
    sessions: list[dict[str, Any]] = field(default_factory=list)  # earlier parts of a resumed run

    # ----------------------------------------------------------------------------- bookkeeping
    def _states(self) -> dict[str, Any]:
        s = self.state
        rng = {"torch": torch.get_rng_state(), "generator": s.generator.get_state()}
        if s.procs.world > 1:  # each process's global RNG (dropout, augmentation), one row per process
            rng["torch_processes"] = torch.stack(s.procs.gather_object(torch.get_rng_state()))
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        states = {
            "model": {n: p for n, p in s.model.state_dict().items()},
            "optimizer": s.optimizer.state_dict(),
            "lr_scheduler": s.lr_scheduler.state_dict(),
            "rng": rng,
            "method": self.method.state_dict(),
            "data": {k: it.state_dict() for k, it in (("forget", self.data.forget), ("remain", self.data.remain)) if it},
        }
        if s.ema is not None:
            states["ema"] = dict(zip(s.param_names, s.ema.shadow))
            states["ema_updates"] = s.ema.num_updates
        if s.scaler is not None:
            states["grad_scaler"] = s.scaler.state_dict()
        return states

    def _check_finite(self) -> None:
        """Nothing non-finite is ever saved (the net under the per-step guard): RunStopped otherwise."""
        s = self.state
        tensors = [*s.params, *(s.ema.shadow if s.ema is not None else [])]
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            raise RunStopped(f"the weights became non-finite by step {s.step}; nothing was saved at that step "
                             "(the last good checkpoint stays): lower train.lr or set train.nonfinite: skip_step")

    def save(self, run_dir: Path, session: dict[str, Any]) -> Path:
        """Checkpoint the step just finished; `session`: this process's part of the run so far. Called by
        every process (they hand their RNG states to the main one, which writes)."""
        self._check_finite()
        path = checkpoint_path(run_dir, self.state.step)
        states = self._states()
        if self.state.procs.is_main:
            extra = {"loop": json.dumps({"skipped_steps": self.skipped_steps, "sessions": [*self.sessions, session]})}
            save_checkpoint(path, step=self.state.step, config_yaml=dump_config(self.cfg), states=states, extra=extra)
            prune_checkpoints(run_dir, keep=self.cfg.train.keep_checkpoints)
        return path

    def restore(self, checkpoints: list[Path]) -> Path:
        """Load the newest checkpoint that reads back exactly; a damaged one is named and the previous used."""
        for path in checkpoints:
            try:
                meta, tensors = read_checkpoint(path)  # one read: verified tensors and the loop's metadata
            except CorruptCheckpoint as exc:
                print(f"warning: {exc}; falling back to the previous checkpoint", file=sys.stderr)
                continue
            step, _, states = unpack_checkpoint(meta, tensors)
            self._load_states(step, states)
            loop = json.loads(meta.get("loop", "{}"))
            self.skipped_steps = int(loop.get("skipped_steps", 0))
            self.sessions = list(loop.get("sessions", []))
            return path
        raise ErasediffError(f"no readable checkpoint among {[p.name for p in checkpoints]} in {checkpoints[0].parent}:"
                             " pass --resume only after removing them (the run restarts from step 0)")

    def _load_states(self, step: int, states: dict[str, Any]) -> None:
        s = self.state
        s.model.load_state_dict(states["model"])
        s.optimizer.load_state_dict(states["optimizer"])
        s.lr_scheduler.load_state_dict(states["lr_scheduler"])
        if s.ema is not None:
            s.ema.load_shadow([states["ema"][n] for n in s.param_names])
            s.ema.num_updates = int(states["ema_updates"])
        torch.set_rng_state(states["rng"]["torch"])
        per_process = states["rng"].get("torch_processes")
        if per_process is not None and per_process.shape[0] == s.procs.world:
            torch.set_rng_state(per_process[s.procs.rank].clone())
        s.generator.set_state(states["rng"]["generator"])
        if "cuda" in states["rng"]:
            torch.cuda.set_rng_state_all(states["rng"]["cuda"])
        for key, it in (("forget", self.data.forget), ("remain", self.data.remain)):
            if it is not None:
                it.load_state_dict(states["data"][key])
        self.method.load_state_dict(states["method"])
        if s.scaler is not None and "grad_scaler" in states:
            s.scaler.load_state_dict({k: v.item() if isinstance(v, torch.Tensor) else v
                                      for k, v in states["grad_scaler"].items()})
        s.step = step

    def sample_grid(self, path: Path) -> Path:
        """One row per class (grid_per_class images each), EMA weights if configured, eval noise."""
        s, cfg = self.state, self.cfg
        classes = list(range(min(self.dataset.num_classes, 10)))
        use_ema = s.ema is not None and cfg.sample.use_ema
        ctx = s.ema.swapped() if use_ema else nullcontext()
        with ctx:  # the one sampler, in the backbone's space (pixels, or latents it decodes)
            images, _ = sample_classes(s.backbone, s.model, classes, cfg.sample.grid_per_class, s.backbone.sample_shape,
                                       cfg.sample, progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_image(make_grid(images, nrow=cfg.sample.grid_per_class, normalize=True, value_range=(-1, 1)), tmp,
                   format="png")
        os.replace(tmp, path)
        return path

    def save_models(self, run_dir: Path) -> None:
        """model/ (and model_ema/) as save_pretrained folders; the caller writes COMPLETE after them."""
        self._check_finite()
        s, text = self.state, dump_config(self.cfg)
        folders = [("model", nullcontext())]
        if s.ema is not None:
            folders.append(("model_ema", s.ema.swapped()))
        for name, ctx in folders:
            with ctx:
                s.model.save_pretrained(run_dir / name)
            atomic_write_text(run_dir / name / "erasediff_config.yaml", text)
            fix_modes(run_dir / name)

    # -------------------------------------------------------------------------------- the loop
    def step(self) -> dict[str, float]:
        """One outer step: draw the D_f / D_r batches the method uses, update (under train.mixed_precision
        autocast), EMA; returns its logs.

        A non-finite loss or gradient norm (detected before the optimiser step, `NonFiniteStep`) stops
        the run (RunStopped) or, under train.nonfinite: skip_step, drops this update (no optimiser, LR or
        EMA step; the batches are consumed) and counts it.
        """
        s = self.state
        forget = next(self.data.forget) if self.data.forget is not None else None
        remain = next(self.data.remain) if self.data.remain is not None else None
        try:
            with s.autocast():  # train.mixed_precision (the backward passes leave it: TrainState.backward)
                logs = self.method.update(s, forget, remain)
        except NonFiniteStep as exc:
            s.optimizer.zero_grad(set_to_none=True)
            if self.cfg.train.nonfinite == "stop":
                raise RunStopped(f"non-finite loss or gradient at step {s.step + 1} ({exc}): the run stopped before "
                                 "applying it (lower train.lr, or set train.nonfinite: skip_step to drop such "
                                 "updates)") from None
            self.skipped_steps += 1
            s.step += 1
            return {**exc.parts, "skipped": 1.0}
        if s.ema is not None:
            s.ema.update()
        s.step += 1
        return logs

    def execute(self, where: RunDirView, progress: bool = True) -> dict[str, Any]:
        """Train in the claimed run directory `where` (resuming what it holds) and write the run's files.

        SIGINT / SIGTERM end the run at the next step boundary with a checkpoint (Interrupted); a
        checkpoint is also written every train.checkpoint_every steps and every train.checkpoint_minutes.
        Every process calls this; the main one writes (and alone shows the progress bar).
        """
        cfg, s, t = self.cfg, self.state, self.cfg.train
        main = s.procs.is_main
        run_dir = where.path
        if where.resume and where.checkpoints:
            self.restore(where.checkpoints)
        if main:
            if where.complete is not None:  # extending a finished run: it is no model until it finishes again
                (run_dir / COMPLETE).unlink()
            atomic_write_text(run_dir / CONFIG, dump_config(cfg))
            _cut_log(run_dir / "log.jsonl", s.step)
        device = s.backbone.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start, t0 = s.step, time.perf_counter()
        last_save = t0

        def session() -> dict[str, Any]:
            return {"from_step": start, "to_step": s.step, "wall_time_s": round(time.perf_counter() - t0, 2)}

        last: dict[str, float] = {}
        bar = tqdm(total=t.steps, initial=start, desc=f"{cfg.method.name}", unit="step", disable=not (progress and main))
        s.model.train()
        trackers = Trackers(t.log_with, run_dir, f"{cfg.experiment}/{cfg.method.name}/seed{cfg.seed}",
                            cfg.model_dump(mode="json"), resume_step=s.step) if main and t.log_with else None
        log_file = (run_dir / "log.jsonl").open("a") if main else None
        try:
            with _StopSignals() as stop:
                while s.step < t.steps:
                    try:
                        last = self.step()
                    except RunStopped as exc:
                        bar.close()
                        found = checkpoints_newest_first(run_dir)
                        where_ = (f"the last good checkpoint {found[0]} stays" if found else
                                  "no checkpoint was written yet: --resume starts it again from step 0")
                        raise RunStopped(f"{exc}; {where_}") from None
                    bar.update(1)
                    if s.step % t.log_every == 0 or s.step == t.steps or "skipped" in last:
                        record = {"step": s.step, "lr": s.lr_scheduler.get_last_lr()[0], **last}
                        if log_file is not None:
                            log_file.write(json_text(record) + "\n")
                            log_file.flush()
                        if trackers is not None:
                            trackers.log({k: v for k, v in record.items() if k != "step"}, s.step)
                        bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in ("loss_r", "loss_f", "loss", "lambda")})
                    if main and t.sample_every and s.step % t.sample_every == 0 and s.step < t.steps:
                        self.sample_grid(run_dir / "samples" / f"step_{s.step:07d}.png")
                    timed = bool(t.checkpoint_minutes) and time.perf_counter() - last_save >= 60 * t.checkpoint_minutes
                    # one decision for all processes: a signal reached one of them, the main one's clock is due
                    signum, timed = s.procs.max_ints([stop.signum or 0, int(timed and main)])
                    due = (t.checkpoint_every and s.step % t.checkpoint_every == 0) or timed
                    if signum or (due and s.step < t.steps):
                        path = self.save(run_dir, session())
                        last_save = time.perf_counter()
                        if signum:
                            bar.close()
                            raise Interrupted(f"stopped by {signal.Signals(signum).name} at step {s.step} of {t.steps}: "
                                              f"checkpoint {path}", signum)
        finally:
            if log_file is not None:
                log_file.close()
            if trackers is not None:
                trackers.close()
            if main:
                plot_losses(run_dir / "log.jsonl", run_dir / "losses.png")
        bar.close()
        this = session()
        ckpt = self.save(run_dir, this)
        sessions = [*self.sessions, this]
        wall = sum(p["wall_time_s"] for p in sessions)
        trained = sum(p["to_step"] - p["from_step"] for p in sessions)
        summary = {
            "method": cfg.method.name,
            "experiment": cfg.experiment,
            "seed": cfg.seed,
            "steps": s.step,
            "steps_this_session": s.step - start,
            "wall_time_s": round(wall, 2),
            "sec_per_step": round(wall / max(1, trained), 4),
            "sessions": sessions,
            "num_processes": s.procs.world,
            "mixed_precision": t.mixed_precision,
            "grad_accum_steps": t.grad_accum_steps,
            "skipped_steps": self.skipped_steps,
            "peak_memory_mib": peak_memory_mib(device),
            "final_logs": last,
            "checkpoint": str(ckpt),
            "model_dir": str(run_dir / "model"),
            "ema_model_dir": str(run_dir / "model_ema") if s.ema is not None else None,
            "losses_png": str(run_dir / "losses.png"),
        }
        if main:
            self.save_models(run_dir)
            summary["sample_grid"] = str(self.sample_grid(run_dir / "samples" / f"step_{s.step:07d}.png"))
            write_json(run_dir / "metrics.json", summary)
            write_json(run_dir / COMPLETE, {"steps": s.step, "finished": datetime.now(timezone.utc).isoformat()})
        s.procs.barrier()  # every process returns once the run's files exist
        return summary


def _cut_log(path: Path, step: int) -> None:
    """Keep the log lines of steps <= `step` (a resumed run repeats the steps after its checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines(keepends=True)
            if line.endswith("\n") and _log_step(line) is not None and _log_step(line) <= step]
    atomic_write_text(path, "".join(kept))


def _log_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a kill


class _StopSignals:
    """SIGINT / SIGTERM set `signum`; the loop saves and stops at the next step boundary. A second signal
    stops at once (KeyboardInterrupt), as users expect from a second Ctrl-C. Only in the main thread."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this step "
              "(send it again to stop at once)", file=sys.stderr)

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
