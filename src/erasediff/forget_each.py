"""`forget-each`: unlearn every class on its own from the same base model, for several seeds and methods,
and tabulate class × method (docs/experiments.md "Forget each digit").

A forgetting result on one class can be a property of that class (a digit whose samples the judge keeps
reading as the class however noisy they get), so this command runs one config on every class. For each
seed s the base model (`pretrain.yaml`, seed s), the judge (classifier.seed = s) and every unlearning run
(seed s) are seeded together; the evaluation noise (`sample.seed`) is the same for every row.

Layout under the output folder (every stage is reused when finished and resumed when interrupted):
  seed<s>/base/                       the base model (a `train` run of pretrain.yaml)
  seed<s>/classifier/                 the judge (`train-classifier`)
  seed<s>/class<c>/<method>/          the unlearning run forgetting [c]; its eval/ holds the evaluation
  seed<s>/class<c>/artifacts/         what `precompute` made for it (SA's Fisher, SalUn's mask, BlindSpot's proxy)
  seed<s>/class<c>/unscrubbed/eval/   the base model scored with c as the forgotten class
  forget_each.md / .json / .png       the tables, every cell's numbers, and the forgotten class's samples

Why one file over 300 lines: it is the whole experiment (plan and its checks, the stages, the tables and
the grid); the stages themselves are the project's train / precompute / evaluate functions.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ConfigError
from .experiment import load_config
from .files import atomic_write_text, write_json
from .tables import markdown_table

#: the methods `forget-each` runs when none are named: EraseDiff, the two simple baselines and the
#: baselines that forget digit 0 on the digits configs (docs/baselines.md)
DEFAULT_METHODS = ("erasediff", "so", "finetune", "selective_amnesia", "salun", "blindspot")
#: YAML files of a config folder that are not unlearning methods (nor are *_proxy.yaml and eval_*.yaml)
NOT_METHODS = {"base", "pretrain", "retrain"}
#: the evaluation groups every cell needs (docs/evaluation.md)
EVAL_METRICS = ("classifier", "robust_forgetting")
#: when a (class, seed) counts as forgotten (docs/experiments.md "Forget each digit"): the judge's
#: probability of the class and the share of in-distribution images of it are both low, and the other
#: classes are still generated
FORGOTTEN = {"p_f": 0.10, "p_f_in_dist": 0.05, "acc_remain": 0.90}
#: (key, header, lower is better for forgetting / quality, number format)
COLUMNS = (
    ("p_f", "p_f ↓", True, "{:.3f}"),
    ("p_f_in_dist", "p_f_in_dist ↓", True, "{:.3f}"),
    ("fd_f", "fd_f ↑", False, "{:.0f}"),
    ("acc_remain", "acc_remain ↑", False, "{:.3f}"),
    ("fd_remain", "fd_remain ↓", True, "{:.1f}"),
)
UNSCRUBBED = "unscrubbed"


@dataclass(frozen=True)
class Plan:
    """What `forget-each` runs: checked completely before anything is trained."""

    config_dir: Path
    out: Path
    methods: tuple[str, ...]
    classes: tuple[int, ...]
    seeds: tuple[int, ...]
    overrides: tuple[str, ...]  # --set items of every config (base model, judge, evaluations, unlearning runs)
    scoped: tuple[tuple[str, str], ...] = ()  # (scope, item): scope pretrain, eval, unlearn or a method
    device: str | None = None

    def seed_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}"

    def class_dir(self, seed: int, c: int) -> Path:
        return self.seed_dir(seed) / f"class{c}"

    def method_config(self, m: str) -> Path:
        return self.config_dir / f"{m}.yaml"

    def _items(self, *scopes: str) -> list[str]:
        """The unscoped --set items, then those of `scopes` in order, then --device."""
        return [*self.overrides, *(item for scope in scopes for sc, item in self.scoped if sc == scope),
                *([f"device={self.device}"] if self.device else [])]

    def cell_overrides(self, seed: int, c: int, m: str) -> list[str]:
        """The --set items of method m's run unlearning class c (its own YAML underneath)."""
        return [*self._items("unlearn", m), f"seed={seed}", f"data.forget_classes=[{c}]",
                f"model.pretrained={self.seed_dir(seed) / 'base'}"]

    def base_config(self, seed: int) -> RunConfig:
        return load_config(self.config_dir / "pretrain.yaml", [*self._items("pretrain"), f"seed={seed}"])

    def judge_config(self, seed: int) -> RunConfig:
        return load_config(self.config_dir / "pretrain.yaml", [*self._items("pretrain"), f"classifier.seed={seed}"])

    def eval_config(self, seed: int, c: int) -> RunConfig:
        """One evaluation config for every row of class c (pretrain.yaml's sample / evaluate sections and
        the eval: items), so every model of a class is scored on the same noise."""
        cfg = load_config(self.config_dir / "pretrain.yaml", [*self._items("eval"), f"data.forget_classes=[{c}]"])
        metrics = tuple(dict.fromkeys((*cfg.evaluate.metrics, *EVAL_METRICS)))
        return cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"metrics": metrics})})


def split_overrides(items: list[str], methods: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """--set items -> (items of every config, (scope, item) pairs). `SCOPE:KEY=VALUE` goes to one scope:
    pretrain (base model and judge), eval (every evaluation), unlearn (every unlearning run) or a method's
    file stem (its unlearning runs)."""
    plain, scoped = [], []
    scopes = ["pretrain", "eval", "unlearn", *methods]
    for item in items:
        key = item.split("=", 1)[0]
        if ":" not in key:
            plain.append(item)
            continue
        scope, rest = item.split(":", 1)
        if scope not in scopes:
            raise ConfigError(f"--set {item!r}: unknown scope {scope!r}; valid scopes: {', '.join(scopes)} "
                              "(an item without a scope applies to every config)")
        scoped.append((scope, rest))
    return plain, scoped


def available_methods(config_dir: Path) -> list[str]:
    """The unlearning method configs of a folder: its YAML stems but base / pretrain / retrain / *_proxy."""
    return sorted(p.stem for p in config_dir.glob("*.yaml")
                  if p.stem not in NOT_METHODS and not p.stem.endswith("_proxy") and not p.stem.startswith("eval_"))


def make_plan(config_dir: str | Path, out: str | Path, methods: list[str] | None, classes: list[int] | None,
              seeds: list[int], overrides: list[str], device: str | None = None) -> Plan:
    """Check everything a run needs (config files, methods, classes, seeds, every stage's config) and
    return the plan. Raises ConfigError before anything is written or built."""
    from .data import dataset_from_config
    from .methods import get_method

    config_dir = Path(config_dir)
    if not (config_dir / "pretrain.yaml").is_file():
        raise ConfigError(f"--config-dir {config_dir} has no pretrain.yaml (the base model's config); "
                          "valid: a folder like DDPM/configs/digits")
    valid = available_methods(config_dir)
    methods = list(methods or [m for m in DEFAULT_METHODS if m in valid])
    unknown = [m for m in methods if m not in valid]
    if unknown or not methods:
        raise ConfigError(f"--methods {unknown or '(none)'}: no such method config in {config_dir}; "
                          f"valid: {', '.join(valid)}")
    if len(set(methods)) != len(methods) or (classes and len(set(classes)) != len(classes)) or len(set(seeds)) != len(seeds):
        raise ConfigError("--methods, --classes and --seeds take each value once")
    if not seeds:
        raise ConfigError("--seeds needs at least one seed, e.g. --seeds 0 1")
    plain, scoped = split_overrides(overrides, methods)
    plan = Plan(config_dir, Path(out), tuple(methods), (), tuple(seeds), tuple(plain), tuple(scoped), device)
    num_classes = dataset_from_config(plan.base_config(seeds[0]).data, "test", hflip=False).num_classes
    classes = list(range(num_classes)) if classes is None else classes
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad or not classes:
        raise ConfigError(f"--classes {bad or '(none)'} out of range: valid classes are 0..{num_classes - 1}")
    plan = replace(plan, classes=tuple(classes))
    if plan.out.exists() and not plan.out.is_dir():
        raise ConfigError(f"--output-dir {plan.out} is a file, not a folder: choose another path")
    for seed in seeds:  # every config of every stage validated now, not after hours of training
        plan.base_config(seed)
        plan.judge_config(seed)
        for c in classes:
            plan.eval_config(seed, c)
            for m in methods:
                cfg = load_config(plan.method_config(m), plan.cell_overrides(seed, c, m))
                get_method(cfg.method.name)
    return plan


def _train_stage(cfg: RunConfig, run_dir: Path, **kwargs: Any) -> dict[str, Any]:
    """Train, resume (an interrupted run) or reuse (a finished one) a run directory."""
    from .loop import train
    from .rundir import CONFIG

    return train(cfg, run_dir, resume=(run_dir / CONFIG).is_file(), progress=False, **kwargs)


def _evaluate_stage(cfg: RunConfig, model: Path, out: Path, classifier: Path, forget: int) -> None:
    """Score `model` into `out` (`evaluate.evaluate_to_folder`, in memory: no sample files) plus
    forget_class.png, the forgotten class's first sample.grid_per_class images for the summary grid."""
    from torchvision.utils import save_image

    from .evaluate import evaluate, evaluate_to_folder

    def score():  # inside the folder's claim, before metrics.json marks it finished
        metrics, images, labels = evaluate(cfg, str(model), classifier_dir=str(classifier), progress=False)
        per_row = cfg.sample.grid_per_class
        save_image(images[labels == forget][:per_row], out / "forget_class.png", nrow=per_row, normalize=True,
                   value_range=(-1, 1), padding=0)
        return metrics, images, labels

    evaluate_to_folder(cfg, out, score)


@dataclass(frozen=True)
class Stage:
    label: str
    done: Path  # the file a finished stage leaves
    run: Callable[[], Any]


def stages(plan: Plan) -> list[Stage]:
    """Every stage in order: per seed the base model and the judge, then per class the unscrubbed
    evaluation and each method's precompute + unlearn + evaluation."""
    from .classifier_training import train_eval_classifier
    from .precompute import precompute
    from .rundir import FolderClaim

    def judge(seed: int, out: Path) -> None:
        with FolderClaim(out, "judge folder"):  # one process trains it; classifier.json is written last
            if not (out / "classifier.json").is_file():
                train_eval_classifier(plan.judge_config(seed), out, progress=False)

    def unscrubbed(seed: int, c: int) -> None:
        sd = plan.seed_dir(seed)
        _evaluate_stage(plan.eval_config(seed, c), sd / "base", plan.class_dir(seed, c) / UNSCRUBBED / "eval",
                        sd / "classifier", c)

    def cell(seed: int, c: int, m: str) -> None:
        cd = plan.class_dir(seed, c)
        cfg, _ = precompute(str(plan.method_config(m)), plan.cell_overrides(seed, c, m), str(cd / "artifacts"), progress=False)
        _train_stage(cfg, cd / m, require_pretrained=True)
        _evaluate_stage(plan.eval_config(seed, c), cd / m, cd / m / "eval", plan.seed_dir(seed) / "classifier", c)

    out: list[Stage] = []
    for seed in plan.seeds:
        sd = plan.seed_dir(seed)
        out.append(Stage(f"seed {seed}: base model", sd / "base" / "COMPLETE",
                         partial(_train_stage, plan.base_config(seed), sd / "base", training_only=True)))
        out.append(Stage(f"seed {seed}: judge", sd / "classifier" / "classifier.json",
                         partial(judge, seed, sd / "classifier")))
        for c in plan.classes:
            cd = plan.class_dir(seed, c)
            out.append(Stage(f"seed {seed} class {c}: unscrubbed", cd / UNSCRUBBED / "eval" / "metrics.json",
                             partial(unscrubbed, seed, c)))
            out += [Stage(f"seed {seed} class {c}: {m}", cd / m / "eval" / "metrics.json", partial(cell, seed, c, m))
                    for m in plan.methods]
    return out


def run_forget_each(plan: Plan, progress: bool = True, table_only: bool = False) -> dict[str, Any]:
    """Run every missing stage of the plan (a progress bar over stages), then write the tables.
    table_only: run nothing, tabulate what is there (missing cells show as "–")."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    every = stages(plan)
    done = sum(s.done.is_file() for s in every)
    todo = [] if table_only else [s for s in every if not s.done.is_file()]
    runs = len(plan.seeds) * len(plan.classes) * len(plan.methods)
    print(f"forget-each: {len(plan.seeds)} seed(s) x {len(plan.classes)} class(es) x {len(plan.methods)} method(s) = "
          f"{runs} unlearning runs, plus {len(plan.seeds)} base model(s) and judge(s); {done} of "
          f"{len(every)} stages already done" + (" (--table-only: running none)" if table_only else
          " (on 2 CPU cores a digits run takes ~2 min with its evaluation, docs/experiments.md)"))
    bar = tqdm(todo, disable=not progress, unit="stage")
    for stage in bar:
        bar.set_description(stage.label)
        stage.run()
    result = collect(plan)
    text = render(result)
    write_json(plan.out / "forget_each.json", result)
    atomic_write_text(plan.out / "forget_each.md", text + "\n")
    grid = write_grid(plan)
    print(text)
    print(f"\nwrote {plan.out / 'forget_each.md'}, {plan.out / 'forget_each.json'}"
          + (f" and {grid} (rows: forgotten class; columns: unscrubbed, then each method; seed {plan.seeds[0]})" if grid else "")
          + f"; {time.perf_counter() - t0:.0f} s")
    return result


def collect(plan: Plan) -> dict[str, Any]:
    """Every cell's numbers: {"rows": [unscrubbed, methods...], "classes", "seeds", "cells": {row: {seed:
    {class: {metric: value}}}}} from the evaluations on disk (missing cells are absent)."""
    rows = [UNSCRUBBED, *plan.methods]
    cells: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for row in rows:
        for seed in plan.seeds:
            for c in plan.classes:
                path = plan.class_dir(seed, c) / row / "eval" / "metrics.json"
                if path.is_file():
                    m = json.loads(path.read_text())
                    cells.setdefault(row, {}).setdefault(str(seed), {})[str(c)] = {k: m[k] for k, *_ in COLUMNS if k in m}
    return {"rows": rows, "classes": list(plan.classes), "seeds": list(plan.seeds), "cells": cells,
            "forgotten_if": FORGOTTEN}


def forgotten(m: dict[str, float]) -> bool:
    """A (class, seed) cell forgotten by both measures with the other classes intact (FORGOTTEN)."""
    return (m.get("p_f", 1.0) <= FORGOTTEN["p_f"] and m.get("p_f_in_dist", 1.0) <= FORGOTTEN["p_f_in_dist"]
            and m.get("acc_remain", 0.0) >= FORGOTTEN["acc_remain"])


def _values(result: dict[str, Any], row: str, key: str) -> list[float]:
    return [m[key] for per_seed in result["cells"].get(row, {}).values() for m in per_seed.values() if key in m]


def summary_rows(result: dict[str, Any]) -> list[list[str]]:
    """Per row: forgotten cells of all, then worst / median / best (class, seed) of every column."""
    out = []
    for row in result["rows"]:
        cells = [m for per_seed in result["cells"].get(row, {}).values() for m in per_seed.values()]
        line = [row, f"{sum(forgotten(m) for m in cells)}/{len(cells)}"]
        for key, _, lower_better, fmt in COLUMNS:
            vals = _values(result, row, key)
            if not vals:
                line.append("–")
                continue
            worst, best = (max(vals), min(vals)) if lower_better else (min(vals), max(vals))
            line.append(" / ".join(fmt.format(v) for v in (worst, statistics.median(vals), best)))
        out.append(line)
    return out


def render(result: dict[str, Any]) -> str:
    """Markdown: the summary (worst / median / best over classes and seeds), then one class × method table
    per metric, a cell holding one value per seed."""
    seeds = [str(s) for s in result["seeds"]]
    crit = FORGOTTEN
    lines = ["### Forget each class: summary over classes and seeds (worst / median / best)", "",
             markdown_table(["model", "forgotten", *(h for _, h, *_ in COLUMNS)], summary_rows(result)), "",
             (f"forgotten: p_f ≤ {crit['p_f']}, p_f_in_dist ≤ {crit['p_f_in_dist']} and acc_remain ≥ {crit['acc_remain']} "
              f"(cells of {len(result['classes'])} class(es) × {len(seeds)} seed(s); docs/experiments.md).")]
    for key, header, _, fmt in COLUMNS:
        table = []
        for c in result["classes"]:
            line = [str(c)]
            for row in result["rows"]:
                per_seed = result["cells"].get(row, {})
                line.append(" / ".join(fmt.format(per_seed[s][str(c)][key]) if key in per_seed.get(s, {}).get(str(c), {})
                                       else "–" for s in seeds))
            table.append(line)
        lines += ["", f"### {header}: one row per forgotten class, one value per seed ({' / '.join(seeds)})", "",
                  markdown_table(["class", *result["rows"]], table)]
    return "\n".join(lines)


def write_grid(plan: Plan, scale: int = 4) -> Path | None:
    """forget_each.png: for the first seed, one row per forgotten class, one panel per model (unscrubbed,
    then the methods): that class's samples after forgetting it. None when no cell is evaluated."""
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.utils import save_image

    seed, rows = plan.seeds[0], [UNSCRUBBED, *plan.methods]
    panels: dict[tuple[int, str], torch.Tensor] = {}
    for c in plan.classes:
        for row in rows:
            png = plan.class_dir(seed, c) / row / "eval" / "forget_class.png"
            if png.is_file():
                with Image.open(png) as img:  # (3, H, W) in [0, 1]
                    panels[c, row] = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).float() / 255
    if not panels:
        return None
    h, w = next(iter(panels.values())).shape[1:]
    blank, gap = torch.ones(3, h, w), torch.ones(3, h, 2)
    lines = []
    for c in plan.classes:
        parts = []
        for row in rows:
            parts += [panels.get((c, row), blank), gap]
        lines += [torch.cat(parts[:-1], dim=2), torch.ones(3, 2, sum(p.shape[2] for p in parts[:-1]))]
    grid = torch.cat(lines[:-1], dim=1)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    path = plan.out / "forget_each.png"
    save_image(grid, path)
    return path
