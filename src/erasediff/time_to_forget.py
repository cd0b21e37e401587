"""`time-to-forget`: the compute each unlearning method needs, from the same base model, until the forgotten
class counts as forgotten while the other classes stay intact (the paper's speed claim, measured to a target
rather than per step: docs/experiments.md; `bench` gives the per-step side of it).

Per (class, method): the method's artifacts are precomputed (`precompute.precompute`, in this process: SA's
Fisher, SalUn's mask, BlindSpot's proxy `train` run), the run is built (`build.build_run`: SA's replay and
EraseDiff-GR's generated D_r are sampled there) and trained with `Run.step`; every `check_every` steps (and
at step 0) the model samples a fixed small evaluation set (`prepare.sample_as_configured`: the config's
`sample` section and evaluation seed, so every check and every method see the same noise) and the judge
scores it with the evaluation's own functions (`evaluate.classifier_metrics`, `evaluate.robust_forgetting`).
The cell stops at the first check where `forget_each.forgotten` holds (p_f, p_f_in_dist low, acc_remain
high) or at `max_steps`.

Time is the process's CPU time (`time.process_time`, torch at one thread), which other jobs on the same
cores barely change; wall time is recorded beside it. "To target" = precompute + setup + training steps up
to the stopping check; the checks themselves are timed apart and not counted.

Layout under the output folder (finished cells are reused when the same command runs again):
  class<c>/<method>/artifacts/        what `precompute` made for this cell (precompute.json: its times)
  class<c>/<method>/                  the model at the stopping check (model/, model_ema/, COMPLETE),
                                      metrics.json (the cell's record) and eval/metrics.json (its last check)
  time_to_forget.json / .md           every check of every cell; the table

Why one file over 300 lines: it is the whole experiment (its checks, the timed loop, the tables and the
command line); the work itself is the project's precompute / build_run / Run.step / evaluation functions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, ErasediffError, RunStopped
from .experiment import load_config
from .files import atomic_write_text, write_json
from .forget_each import (
    DEFAULT_METHODS,
    FORGOTTEN,
    available_methods,
    forgotten,
    split_overrides,
)
from .tables import markdown_table

#: the reference every method's time is divided by
REFERENCE = "erasediff"
#: the metrics a check keeps (every float the evaluation gives is kept; these are the table's)
SHOWN = ("p_f", "p_f_in_dist", "acc_remain")
#: per metric: True when lower is better (for "best reached")
LOWER_BETTER = {"p_f": True, "p_f_in_dist": True, "acc_remain": False, "fd_f": False, "fd_remain": True}
JSON, MD = "time_to_forget.json", "time_to_forget.md"
PRECOMPUTE_TIMES = "precompute.json"


def clock() -> tuple[float, float]:
    """(process CPU seconds, wall seconds) now."""
    return time.process_time(), time.perf_counter()


# ------------------------------------------------------------------------------------------- what runs
@dataclass(frozen=True)
class Setup:
    """What `time-to-forget` runs: checked completely before anything is computed."""

    config_dir: Path
    base: Path
    classifier: Path
    out: Path
    methods: tuple[str, ...]
    classes: tuple[int, ...]
    check_every: int
    max_steps: int
    n_forget: int
    n_other: int
    seed: int
    overrides: tuple[str, ...] = ()  # --set items of every config
    scoped: tuple[tuple[str, str], ...] = ()  # (scope, item): eval, unlearn or a method stem
    device: str | None = None

    def cell_dir(self, c: int, m: str) -> Path:
        return self.out / f"class{c}" / m

    def method_config(self, m: str) -> Path:
        return self.config_dir / f"{m}.yaml"

    def _items(self, *scopes: str) -> list[str]:
        return [*self.overrides, *(item for scope in scopes for sc, item in self.scoped if sc == scope),
                *([f"device={self.device}"] if self.device else [])]

    def cell_overrides(self, c: int, m: str) -> list[str]:
        """The --set items of method m's run forgetting class c from the base model (its YAML underneath)."""
        return [*self._items("unlearn", m), f"seed={self.seed}", f"data.forget_classes=[{c}]",
                f"model.pretrained={self.base}"]

    def eval_config(self, c: int):
        """The evaluation config of class c (pretrain.yaml's sample section + eval: items, as forget-each):
        n_forget images of c, n_other of every other class, on the sample section's evaluation seed."""
        return load_config(self.config_dir / "pretrain.yaml",
                           [*self._items("eval"), f"data.forget_classes=[{c}]", f"evaluate.n_forget={self.n_forget}",
                            f"evaluate.n_per_class={self.n_other}"])

    def settings(self) -> dict[str, Any]:
        """What a finished cell must have been made with to be reused."""
        return {"config_dir": str(self.config_dir), "base": str(self.base), "classifier": str(self.classifier),
                "check_every": self.check_every, "max_steps": self.max_steps, "n_forget": self.n_forget,
                "n_other": self.n_other, "seed": self.seed, "overrides": list(self.overrides),
                "scoped": [list(s) for s in self.scoped], "device": self.device}


def default_methods(config_dir: Path) -> list[str]:
    """forget-each's methods (EraseDiff, SO, Finetune, SA, SalUn, BlindSpot) present in the folder: Finetune
    stays as the control that is not expected to forget; NegGrad and EraseDiff-GR only when named."""
    valid = available_methods(config_dir)
    return [m for m in DEFAULT_METHODS if m in valid]


def make_setup(config_dir: str | Path, base: str | Path, classifier: str | Path, out: str | Path,
               methods: list[str] | None = None, classes: list[int] | None = None, *, check_every: int = 25,
               max_steps: int = 600, n_forget: int = 40, n_other: int = 10, seed: int = 0,
               overrides: list[str] | None = None, device: str | None = None) -> Setup:
    """Check every input (folders, models, methods, classes, numbers, every config) and return the setup.
    Raises ErasediffError before anything is written or built."""
    from .checkpoint import resolve_pretrained
    from .data import dataset_from_config
    from .methods import get_method
    from .metrics import load_classifier

    config_dir = Path(config_dir)
    if not (config_dir / "pretrain.yaml").is_file():
        raise ConfigError(f"--config-dir {config_dir} has no pretrain.yaml (its sample / evaluate sections make the "
                          "evaluation config); valid: a folder like DDPM/configs/digits")
    valid = available_methods(config_dir)
    methods = list(methods or default_methods(config_dir))
    unknown = [m for m in methods if m not in valid]
    if unknown or not methods:
        raise ConfigError(f"--methods {unknown or '(none)'}: no such method config in {config_dir}; valid: {', '.join(valid)}")
    if len(set(methods)) != len(methods) or (classes and len(set(classes)) != len(classes)):
        raise ConfigError("--methods and --classes take each value once")
    for name, value in (("--check-every", check_every), ("--max-steps", max_steps), ("--eval-forget", n_forget),
                        ("--eval-per-class", n_other)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1 (got {value})")
    plain, scoped = split_overrides(list(overrides or []), methods)
    if any(scope == "pretrain" for scope, _ in scoped):
        raise ConfigError("--set pretrain:...: time-to-forget trains no base model (it starts from --base); valid "
                          "scopes: eval, unlearn or a method")
    base = Path(base).resolve()
    if not base.is_dir():
        raise ConfigError(f"--base {base} not found: pass a finished base model run (e.g. results/demo/base)")
    resolve_pretrained(str(base))  # a complete run directory or a model folder, else one error line
    classifier = Path(classifier).resolve()
    load_classifier(classifier)  # names what is missing
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file, not a folder: choose another path")
    setup = Setup(config_dir, base, classifier, out, tuple(methods), (), check_every, max_steps, n_forget, n_other,
                  seed, tuple(plain), tuple(scoped), device)
    num_classes = dataset_from_config(setup.eval_config(0).data, "test", hflip=False).num_classes
    classes = list(range(num_classes)) if classes is None else list(classes)
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or not classes:
        raise ConfigError(f"--classes {bad or '(none)'} out of range: valid classes are 0..{num_classes - 1}")
    setup = Setup(config_dir, base, classifier, out, tuple(methods), tuple(classes), check_every, max_steps, n_forget,
                  n_other, seed, tuple(plain), tuple(scoped), device)
    for c in classes:  # every config validated now, not after an hour of training
        setup.eval_config(c)
        for m in methods:
            get_method(load_config(setup.method_config(m), setup.cell_overrides(c, m)).method.name)
    return setup


# ------------------------------------------------------------------------------------- the evaluation
class Judge:
    """The classifier and the real images' features, loaded once; `score` gives a check's metrics with the
    evaluation's own functions (p_f, entropy_f, acc_f, acc_remain, fd_remain; p_f_in_dist, in_dist_f, fd_f)."""

    def __init__(self, classifier_dir: Path, eval_cfg, device):

        from .data import dataset_from_config, images_of_classes
        from .metrics import classifier_outputs, load_classifier

        self.device = device
        self.classifier = load_classifier(classifier_dir).to(device)
        e = eval_cfg.evaluate
        real = dataset_from_config(eval_cfg.data, e.real_split, hflip=False)
        self.held = dataset_from_config(eval_cfg.data, "test" if e.real_split == "train" else "train", hflip=False)
        self.num_classes = real.num_classes
        images, labels = images_of_classes(real, list(range(real.num_classes)))
        _, self.real_feats = classifier_outputs(self.classifier, images.to(device))
        self.real_labels = labels.to(device)

    def score(self, images, labels, forget: list[int]) -> dict[str, float]:
        import torch
        from scipy.linalg import LinAlgWarning

        from .evaluate import classifier_metrics, robust_forgetting
        from .metrics import classifier_outputs

        logits, feats = classifier_outputs(self.classifier, images.to(self.device))
        labels_d = labels.to(self.device)
        remain = ~torch.isin(self.real_labels, torch.tensor(forget, device=self.device))
        with warnings.catch_warnings():  # fewer images than feature dimensions: a singular covariance in the
            warnings.simplefilter("ignore", LinAlgWarning)  # Fréchet distances (fd_remain, fd_f), said per check
            m = classifier_metrics(logits, feats, labels_d, forget, self.real_feats[remain])
            m.update(robust_forgetting(self.classifier, logits, feats, labels_d, self.real_feats, self.real_labels,
                                       self.held, forget, self.device))
        return {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}


def eval_images(eval_cfg, run, num_classes: int):
    """The fixed evaluation set of the run's current model: `evaluate.sample_counts` images per class on the
    sample section's evaluation noise (EMA weights when sample.use_ema and the run keeps an EMA), grouped as
    `evaluate` groups them. Returns (images (N, C, H, W) in [-1, 1], labels (N,))."""
    import torch

    from .evaluate import sample_counts
    from .prepare import sample_as_configured

    s = run.state
    groups: dict[int, list[int]] = {}
    for c, n in sample_counts(eval_cfg, num_classes).items():
        groups.setdefault(n, []).append(c)
    parts = [sample_as_configured(eval_cfg, s.backbone, s.model, s.ema, cs, n, progress=False) for n, cs in groups.items()]
    return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


# ------------------------------------------------------------------------------------- the timed loop
def train_until_forgotten(step: Callable[[], Any], check: Callable[[], dict[str, float]], *, check_every: int,
                          max_steps: int, clock: Callable[[], tuple[float, float]] = clock,
                          on_check: Callable[[dict[str, Any]], None] | None = None,
                          on_steps: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Check at step 0, then `check_every` steps between checks (the last block may be shorter), stopping at
    the first check where `forget_each.forgotten` holds or after `max_steps` steps. A step that stops the run
    (RunStopped: a non-finite loss) ends the cell after one last check of the model as it is.

    Every check records its step and the training time spent until then (`train_cpu_s`, `train_wall_s`);
    the checks' own time is summed apart (`eval`). Returns {checks, reached, steps_to_target, steps_run,
    stopped (forgotten | max_steps | diverged), error, train {cpu_s, wall_s}, eval {cpu_s, wall_s, checks}}.
    """
    spent = {"train_cpu": 0.0, "train_wall": 0.0, "eval_cpu": 0.0, "eval_wall": 0.0}
    checks: list[dict[str, Any]] = []
    done, stopped, error = 0, "max_steps", None

    def evaluate_now() -> bool:
        c0, w0 = clock()
        metrics = dict(check())
        c1, w1 = clock()
        spent["eval_cpu"] += c1 - c0
        spent["eval_wall"] += w1 - w0
        record = {"step": done, "train_cpu_s": spent["train_cpu"], "train_wall_s": spent["train_wall"], **metrics,
                  "forgotten": forgotten(metrics)}
        checks.append(record)
        if on_check is not None:
            on_check(record)
        return record["forgotten"]

    hit = evaluate_now()
    while not hit and done < max_steps:
        block = min(check_every, max_steps - done)
        c0, w0 = clock()
        before = done
        try:
            for _ in range(block):
                step()
                done += 1
        except RunStopped as exc:
            stopped, error = "diverged", str(exc)
        c1, w1 = clock()
        spent["train_cpu"] += c1 - c0
        spent["train_wall"] += w1 - w0
        if on_steps is not None:
            on_steps(done - before)
        if done > checks[-1]["step"]:
            hit = evaluate_now()
        if stopped == "diverged":
            break
    if hit:
        stopped = "forgotten"
    return {"checks": checks, "reached": hit, "steps_to_target": done if hit else None, "steps_run": done,
            "stopped": stopped, "error": error,
            "train": {"cpu_s": spent["train_cpu"], "wall_s": spent["train_wall"]},
            "eval": {"cpu_s": spent["eval_cpu"], "wall_s": spent["eval_wall"], "checks": len(checks)}}


def best_values(checks: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per metric, the best value over the checks and the step it came at (metrics may peak at different
    steps)."""
    out = {}
    for key, lower in LOWER_BETTER.items():
        vals = [(ch[key], ch["step"]) for ch in checks if ch.get(key) is not None]
        if vals:
            value, step = (min if lower else max)(vals, key=lambda v: v[0])
            out[key] = {"value": value, "step": step}
    return out


def cell_record(c: int, m: str, loop: dict[str, Any], precompute: dict[str, Any], setup_t: dict[str, float],
                settings: dict[str, Any], config: str) -> dict[str, Any]:
    """The cell's record: the loop's outcome with the precompute and setup times added to the training time
    ("to target": up to the stopping check; `*_total`: all that was spent, for a cell that never got there)."""
    before_cpu = precompute["cpu_s"] + setup_t["cpu_s"]
    before_wall = precompute["wall_s"] + setup_t["wall_s"]
    for ch in loop["checks"]:
        ch["cpu_s"] = before_cpu + ch["train_cpu_s"]
        ch["wall_s"] = before_wall + ch["train_wall_s"]
    last = loop["checks"][-1]
    rec = {"class": c, "method": m, "config": config, **{k: loop[k] for k in
           ("reached", "steps_to_target", "steps_run", "stopped", "error")},
           "cpu_s_to_target": last["cpu_s"] if loop["reached"] else None,
           "wall_s_to_target": last["wall_s"] if loop["reached"] else None,
           "cpu_s_total": last["cpu_s"], "wall_s_total": last["wall_s"],
           "precompute": precompute, "setup": setup_t, "train": loop["train"], "eval": loop["eval"],
           "at_target": {k: v for k, v in last.items() if k not in ("forgotten",)} if loop["reached"] else None,
           "best": best_values(loop["checks"]), "checks": loop["checks"], "settings": settings}
    return rec


# ----------------------------------------------------------------------------------------- one cell
def _timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    c0, w0 = clock()
    value = fn()
    c1, w1 = clock()
    return value, {"cpu_s": c1 - c0, "wall_s": w1 - w0}


def run_cell(setup: Setup, c: int, m: str, judge: Judge, bar=None) -> dict[str, Any]:
    """Precompute, build and train method m forgetting class c until forgotten (or max_steps), timed; save the
    model at the stopping check into the cell folder with its record. Returns the record."""
    from .build import build_run
    from .config import dump_config
    from .precompute import precompute
    from .rundir import COMPLETE, CONFIG

    cell = setup.cell_dir(c, m)
    arts, times = cell / "artifacts", cell / PRECOMPUTE_TIMES
    recorded = json.loads(times.read_text()) if times.is_file() else None
    partial = recorded is None and arts.is_dir() and any(arts.iterdir())  # an interrupted proxy run resumes
    (cfg, made), pre_t = _timed(lambda: precompute(str(setup.method_config(m)), setup.cell_overrides(c, m), str(arts),
                                                   progress=False))
    if recorded is not None:  # made by an earlier, interrupted invocation: its times, not the reuse's
        pre = recorded
    else:
        pre = {**pre_t, "artifacts": made, "partial": partial}
        if made:
            cell.mkdir(parents=True, exist_ok=True)
            write_json(times, pre)
    run, setup_t = _timed(lambda: build_run(cfg, progress=False))
    run.state.model.train()
    eval_cfg = setup.eval_config(c)

    def show(record: dict[str, Any]) -> None:
        if bar is not None:
            bar.set_postfix({k: f"{record[k]:.3f}" for k in SHOWN if k in record} | {"step": record["step"]})

    loop = train_until_forgotten(run.step, lambda: judge.score(*eval_images(eval_cfg, run, judge.num_classes), [c]),
                                 check_every=setup.check_every, max_steps=setup.max_steps, on_check=show,
                                 on_steps=(bar.update if bar is not None else None))
    if bar is not None:
        bar.update(setup.max_steps - loop["steps_run"])  # a cell that stopped early leaves its remaining steps
    rec = cell_record(c, m, loop, pre, setup_t, setup.settings(), str(setup.method_config(m)))
    cell.mkdir(parents=True, exist_ok=True)
    run.save_models(cell)  # the model at the stopping check: `evaluate --model CELL` scores it in full
    atomic_write_text(cell / CONFIG, dump_config(cfg))
    (cell / "eval").mkdir(exist_ok=True)
    write_json(cell / "eval" / "metrics.json", {**loop["checks"][-1], "model": str(cell)})
    write_json(cell / "metrics.json", rec)
    write_json(cell / COMPLETE, {"steps": loop["steps_run"], "time_to_forget": True})
    return rec


def finished_cell(setup: Setup, c: int, m: str) -> dict[str, Any] | None:
    """The record of a cell finished by an earlier invocation with the same settings (None: not finished);
    ErasediffError when it was made with other settings."""
    cell = setup.cell_dir(c, m)
    if not ((cell / "COMPLETE").is_file() and (cell / "metrics.json").is_file()):
        return None
    rec = json.loads((cell / "metrics.json").read_text())
    if rec.get("settings") != setup.settings():
        diff = sorted(k for k, v in setup.settings().items() if rec.get("settings", {}).get(k) != v)
        raise ErasediffError(f"{cell} holds a result made with other settings ({', '.join(diff)}): results are never "
                             "overwritten; choose another --output-dir")
    return rec


# ------------------------------------------------------------------------------------------- the whole
def run_time_to_forget(setup: Setup, progress: bool = True) -> dict[str, Any]:
    """Every missing cell (class × method) in order, then the json and the table; the output folder is
    claimed for the whole run. A folder whose json already holds every requested cell is refused."""
    import torch
    from tqdm.auto import tqdm

    from .device import resolve_device
    from .prepare import prepare_model
    from .rundir import FolderClaim

    torch.set_num_threads(1)  # process CPU time = the compute of one core's work
    t0 = clock()
    with FolderClaim(setup.out, "output folder"):  # may also hold the base model and judge (the smoke script)
        done = {(c, m): finished_cell(setup, c, m) for c in setup.classes for m in setup.methods}
        todo = [key for key, rec in done.items() if rec is None]
        if not todo and (setup.out / JSON).is_file():
            raise ErasediffError(f"{setup.out / JSON} already holds every requested cell (results are never "
                                 "overwritten): choose another --output-dir, or add classes / methods to extend it")
        print(f"time-to-forget: {len(setup.classes)} class(es) x {len(setup.methods)} method(s), {len(done) - len(todo)} "
              f"already done; a check every {setup.check_every} steps (max {setup.max_steps}) on {setup.n_forget} "
              f"images of the forgotten class + {setup.n_other} of every other")
        eval0 = setup.eval_config(setup.classes[0])
        device = resolve_device(eval0.device)
        judge = Judge(setup.classifier, eval0, device)
        if todo:  # load the base once untimed: one-off imports and file caches are no method's cost
            prepare_model(eval0.model_copy(update={"model": eval0.model.model_copy(
                update={"pretrained": str(setup.base)})}), device)
        bar = tqdm(total=len(todo) * setup.max_steps, unit="step", disable=not progress)
        for c, m in todo:
            bar.set_description(f"class {c} {m}")
            rec = done[c, m] = run_cell(setup, c, m, judge, bar)
            bar.write(f"class {c} {m}: " + (f"forgotten at step {rec['steps_to_target']}, {rec['cpu_s_to_target']:.1f} "
                                            "CPU s" if rec["reached"] else
                                            f"{'diverged' if rec['stopped'] == 'diverged' else 'not forgotten'} after {rec['steps_run']} steps, "
                                            f"{rec['cpu_s_total']:.1f} CPU s")
                      + f" (precompute + setup {rec['precompute']['cpu_s'] + rec['setup']['cpu_s']:.1f} s)")
            write_json(setup.out / JSON, collect(setup, done))  # every finished cell is kept at once
        bar.close()
        result = collect(setup, done)
        text = render(result)
        write_json(setup.out / JSON, result)
        atomic_write_text(setup.out / MD, text + "\n")
    t1 = clock()
    print(text)
    print(f"\nwrote {setup.out / MD}, {setup.out / JSON} and each cell's model at its stopping check in "
          f"{setup.out}/class<c>/<method>/; {t1[1] - t0[1]:.0f} s wall, {t1[0] - t0[0]:.0f} s process CPU")
    return result


def collect(setup: Setup, done: dict[tuple[int, str], dict[str, Any] | None]) -> dict[str, Any]:
    cells: dict[str, dict[str, Any]] = {}
    for (c, m), rec in done.items():
        if rec is not None:
            cells.setdefault(str(c), {})[m] = rec
    return {"classes": list(setup.classes), "methods": list(setup.methods), "settings": setup.settings(),
            "forgotten_if": FORGOTTEN, "reference": REFERENCE, "cells": cells}


# ------------------------------------------------------------------------------------------- the table
def _f(v: float | None, fmt: str = "{:.3f}") -> str:
    return "–" if v is None else fmt.format(v)


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """One row per (class, method) cell: steps and CPU seconds to target, ratio to the reference method of
    the same class, and p_f / p_f_in_dist / acc_remain at the target (or the best each reached)."""
    rows = []
    for c in result["classes"]:
        per = result["cells"].get(str(c), {})
        ref = per.get(result.get("reference", REFERENCE))
        ref_cpu = ref["cpu_s_to_target"] if ref is not None and ref["reached"] else None
        for m in result["methods"]:
            rec = per.get(m)
            if rec is None:
                rows.append([m, str(c), *["–"] * 9])
                continue
            pre = rec["precompute"]["cpu_s"] + rec["setup"]["cpu_s"]
            if rec["reached"]:
                steps, cpu, wall = str(rec["steps_to_target"]), _f(rec["cpu_s_to_target"], "{:.1f}"), _f(
                    rec["wall_s_to_target"], "{:.0f}")
                ratio = _f(rec["cpu_s_to_target"] / ref_cpu, "{:.2f}") if ref_cpu else "–"
                vals = [_f(rec["at_target"].get(k)) for k in SHOWN]
                at = f"target (step {rec['steps_to_target']})"
            else:
                why = "diverged" if rec["stopped"] == "diverged" else "not reached"
                steps = f"{why} (> {rec['steps_run']})"
                cpu, wall = f"> {rec['cpu_s_total']:.1f}", f"> {rec['wall_s_total']:.0f}"
                ratio = f"> {rec['cpu_s_total'] / ref_cpu:.2f}" if ref_cpu else "–"
                vals = [f"{_f(rec['best'][k]['value'])} @{rec['best'][k]['step']}" if k in rec["best"] else "–"
                        for k in SHOWN]
                at = f"best of {len(rec['checks'])} checks"
            if rec["precompute"].get("partial"):
                pre_s = f"{pre:.1f}*"
            else:
                pre_s = f"{pre:.1f}"
            rows.append([m, str(c), steps, cpu, pre_s, ratio, wall, *vals, at])
    return rows


def render(result: dict[str, Any]) -> str:
    s, crit = result["settings"], result["forgotten_if"]
    header = ["method", "class", "steps to target", "CPU s to target (process, 1 thread)", "of which precompute + setup",
              f"× {result.get('reference', REFERENCE)}", "wall s to target", "p_f ↓", "p_f_in_dist ↓", "acc_remain ↑",
              "values at"]
    rows = table_rows(result)
    criterion = (f"Forgotten: p_f ≤ {crit['p_f']}, p_f_in_dist ≤ {crit['p_f_in_dist']} and acc_remain ≥ "
                 f"{crit['acc_remain']} (forget-each's criterion), checked at step 0 and every {s['check_every']} steps "
                 f"up to {s['max_steps']} on the same noise: {s['n_forget']} images of the forgotten class and "
                 f"{s['n_other']} of every other class.")
    timing = ("CPU s: time.process_time() of this single-threaded process (the primary number: other jobs on the "
              "cores barely change it), from the method's precompute (SA's Fisher, SalUn's mask, BlindSpot's proxy "
              "run) and setup (model load, SA's replay / GR's generated D_r sampling) through its training steps up "
              "to the stopping check; the checks' own sampling and scoring are not counted (time_to_forget.json: "
              "`eval`). Wall s: the same span on the clock, which other jobs do change.")
    missed = ("Not reached: `>` the compute spent in max steps; the values are the best of each metric over the "
              "checks, with the step it came at (possibly different checks).")
    lines = ["### Time to forget: compute until the forgotten class counts as forgotten", "",
             markdown_table(header, rows), "", criterion, timing, missed]
    if any("*" in r[4] for r in rows):
        lines.append("*: the precompute was resumed from an interrupted run, its time is only the resumed part.")
    summary = []
    for m in result["methods"]:
        recs = [result["cells"][str(c)][m] for c in result["classes"] if m in result["cells"].get(str(c), {})]
        hit = [r["cpu_s_to_target"] for r in recs if r["reached"]]
        summary.append([m, f"{len(hit)}/{len(recs)}", _f(statistics.median(hit) if hit else None, "{:.1f}")])
    lines += ["", markdown_table(["method", "classes forgotten", "median CPU s to target (forgotten ones)"], summary)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- command line
def cmd_time_to_forget(args: argparse.Namespace) -> None:
    setup = make_setup(args.config_dir, args.base, args.classifier, args.output_dir, args.methods, args.classes,
                       check_every=args.check_every, max_steps=args.max_steps, n_forget=args.eval_forget,
                       n_other=args.eval_per_class, seed=args.seed, overrides=args.overrides, device=args.device)
    run_time_to_forget(setup, progress=not args.no_progress)


def add_parser(subparsers) -> None:
    """The `time-to-forget` subcommand (for cli.build_parser's subparsers)."""
    p = subparsers.add_parser(
        "time-to-forget", help="compute each unlearning method needs until the class is forgotten (precompute included)",
        description="from one base model and one judge: per class and method, precompute what the method reads, then "
        "train it, checking every N steps on a fixed small evaluation set (same noise for every check and method) "
        "until forget-each's criterion holds (p_f, p_f_in_dist low; acc_remain high) or max steps; reports steps and "
        "process CPU seconds to target and their ratio to EraseDiff. Writes OUTPUT/time_to_forget.md and .json; "
        "finished cells are reused when the same command runs again.")
    p.add_argument("--config-dir", default="DDPM/configs/digits",
                   help="folder with pretrain.yaml and one YAML per method (default DDPM/configs/digits)")
    p.add_argument("--base", required=True, help="the finished base model run to unlearn from, e.g. results/demo/base")
    p.add_argument("--classifier", required=True, help="the judge's folder (train-classifier), e.g. results/demo/classifier")
    p.add_argument("--classes", type=int, nargs="+", help="the classes to forget, one at a time (default: all)")
    p.add_argument("--methods", nargs="+", help="method configs of the folder by file stem (default: erasediff so "
                   "finetune selective_amnesia salun blindspot; finetune is the control that should not forget)")
    p.add_argument("--check-every", type=int, default=25, help="training steps between checks (default 25)")
    p.add_argument("--max-steps", type=int, default=600, help="steps after which a cell is 'not reached' (default 600)")
    p.add_argument("--eval-forget", type=int, default=40, help="evaluation images of the forgotten class (default 40)")
    p.add_argument("--eval-per-class", type=int, default=10, help="evaluation images of every other class (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the unlearning runs (the evaluation noise is the "
                   "config's sample.seed; default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in every config; SCOPE:KEY=VALUE in one scope: eval (the evaluation "
                   "config), unlearn (every unlearning run) or a method, e.g. --set erasediff:train.lr=1e-4 (repeatable)")
    p.add_argument("--output-dir", default="results/time_to_forget")
    p.add_argument("--device", help="auto | cpu | cuda (CPU time is the measure: cpu)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=cmd_time_to_forget)


def main(argv: list[str] | None = None) -> int:
    """`python -m erasediff.time_to_forget ARGS` = `python -m erasediff time-to-forget ARGS`."""
    parser = argparse.ArgumentParser(prog="erasediff")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["time-to-forget", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.func(args)
    except ErasediffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
