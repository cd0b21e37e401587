"""The offline CPU demo: forgetting end to end on scikit-learn digits, nothing downloaded.

Stages (each a normal run of the project's commands, reused when already finished):
1. `base/`        pretrain the class-conditional DDPM on all ten digits      (train, finetune objective)
2. `classifier/`  train the small CNN judge on real digits                  (train-classifier)
3. `erasediff/`   unlearn digit 0 from base with EraseDiff                  (unlearn)
4. evaluate Unscrubbed (base) and EraseDiff on the same sampling noise      (evaluate)
Writes `metrics.json` and `grid.png` (one row per class: Unscrubbed left, EraseDiff right).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .classifier_training import train_eval_classifier
from .config import RunConfig
from .device import resolve_device
from .errors import ErasediffError
from .evaluate import class_rows, evaluate, save_rows_png
from .experiment import load_config
from .files import write_json
from .loop import train
from .rundir import CONFIG
from .tables import markdown_table


def _stage_run(cfg: RunConfig, run_dir: Path, progress: bool, **kwargs: Any) -> tuple[dict, bool]:
    """Run, resume or reuse one training stage (a finished run with the same config is reused; another
    config in that folder is refused). Returns (summary, reused)."""
    summary = train(cfg, run_dir, resume=(run_dir / CONFIG).is_file(), progress=progress, **kwargs)
    return summary, bool(summary.get("already_complete"))


def real_feature_floor(cfg: RunConfig, classifier_dir: Path) -> float:
    """Fréchet distance of real test vs real train remaining-class images: the best fd_remain can be."""
    from .data import images_of_classes, load_dataset
    from .metrics import classifier_outputs, frechet_distance, load_classifier

    classifier = load_classifier(classifier_dir)
    feats = []
    for split in ("test", "train"):
        data = load_dataset(cfg.data.dataset, root=cfg.data.root, split=split, image_size=cfg.data.image_size)
        remain = [c for c in range(data.num_classes) if c not in cfg.data.forget_classes]
        feats.append(classifier_outputs(classifier, images_of_classes(data, remain)[0])[1])
    return frechet_distance(*feats)


KEYS = ("p_f", "p_f_in_dist", "fd_f", "entropy_f", "acc_f", "acc_remain", "fd_remain", "train_time_s", "eval_time_s")


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    header = ["model", "p_f ↓", "p_f_in_dist ↓", "entropy_f ↑", "acc_remain ↑", "fd_remain ↓", "train time (s)",
              "eval time (s)"]
    return markdown_table(header, [[name, f"{m['p_f']:.3f}", f"{m['p_f_in_dist']:.3f}", f"{m['entropy_f']:.3f}",
                                    f"{m['acc_remain']:.3f}", f"{m['fd_remain']:.1f}", f"{m['train_time_s']:.0f}",
                                    f"{m['eval_time_s']:.0f}"]
                                   for name, m in rows.items()])


def run_demo(config_dir: Path, out: Path, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    t_start = time.perf_counter()
    for name in ("pretrain.yaml", "erasediff.yaml"):
        if not (config_dir / name).is_file():
            raise ErasediffError(f"demo config {config_dir / name} not found (pass --config-dir with pretrain.yaml and erasediff.yaml)")
    base_dir, clf_dir, un_dir = out / "base", out / "classifier", out / "erasediff"
    pre_cfg = load_config(config_dir / "pretrain.yaml", [f"device={device}"])
    un_cfg = load_config(
        config_dir / "erasediff.yaml",
        [f"device={device}", f"model.pretrained={base_dir}", f"evaluate.classifier={clf_dir}",
         "evaluate.metrics=[classifier, robust_forgetting]"],  # p_f and the measure noise cannot fool
    )
    resolve_device(device)

    print(f"[1/4] base model -> {base_dir}")
    base, reused = _stage_run(pre_cfg, base_dir, progress, training_only=True)
    print(f"      {'reused' if reused else 'trained'}: {base['steps']} steps, {base['wall_time_s']:.0f} s")

    print(f"[2/4] classifier -> {clf_dir}")
    info_file = clf_dir / "classifier.json"
    if info_file.is_file():
        clf = json.loads(info_file.read_text())
        print(f"      reused: test accuracy {clf['test_acc']:.3f}")
    else:
        clf = train_eval_classifier(un_cfg, clf_dir, progress=progress)
        print(f"      trained: test accuracy {clf['test_acc']:.3f}, {clf['train_time_s']:.0f} s")

    print(f"[3/4] EraseDiff, forget {list(un_cfg.data.forget_classes)} -> {un_dir}")
    unl, reused = _stage_run(un_cfg, un_dir, progress, require_pretrained=True)
    print(f"      {'reused' if reused else 'unlearned'}: {unl['steps']} steps, {unl['wall_time_s']:.0f} s")

    print(f"[4/4] evaluating both models on the same noise ({un_cfg.evaluate.n_per_class} images per class)")
    rows, panels = {}, []
    for name, spec, summary in (("Unscrubbed", base_dir, base), ("EraseDiff", un_dir, unl)):
        t0 = time.perf_counter()
        m, images, labels = evaluate(un_cfg, str(spec), progress=progress)
        m["eval_time_s"] = round(time.perf_counter() - t0, 2)
        m["train_time_s"] = summary["wall_time_s"]
        rows[name] = m
        panels.append(class_rows(images, labels, un_cfg.sample.grid_per_class))
    grid = save_rows_png(out / "grid.png", panels, un_cfg.sample.grid_per_class)
    floor = real_feature_floor(un_cfg, clf_dir)
    total = time.perf_counter() - t_start
    result = {
        **{key: {k: rows[name][k] for k in KEYS} for key, name in (("unscrubbed", "Unscrubbed"), ("erasediff", "EraseDiff"))},
        "classifier_test_acc": clf["test_acc"],
        "fd_real_test_vs_train": floor,
        "forget_classes": list(un_cfg.data.forget_classes),
        "n_per_class": un_cfg.evaluate.n_per_class,
        "wall_time_s": {"classifier": clf.get("train_time_s"), "demo_total_this_run": round(total, 2)},
    }
    write_json(out / "metrics.json", result)
    print()
    print(format_table(rows))
    print(f"(fd_remain floor: real test vs real train remaining digits = {floor:.1f}; classifier test accuracy "
          f"{clf['test_acc']:.3f})")
    print()
    print("one digit is one case: `python -m erasediff forget-each` forgets every digit on its own (README, "
          "\"Forget each digit\")")
    print(f"wrote {out / 'metrics.json'} and {grid} (rows = digits 0-9; left Unscrubbed, right EraseDiff); "
          f"total {total:.0f} s")
    return result
