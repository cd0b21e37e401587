"""`forget-each` (docs/experiments.md "Forget each digit"): every class forgotten on its own from one base per
seed, the class x method table, reuse of finished stages, and its checks of bad input."""

import json

import pytest
from helpers import SMOKE, TINY

from erasediff.cli import main
from erasediff.config import RunConfig
from erasediff.experiment import config_from_text
from erasediff.forget_each import (
    FORGOTTEN,
    forgotten,
    make_plan,
    render,
    split_overrides,
    summary_rows,
)

TINY_SETS = [a for item in TINY for a in ("--set", item)]


def _run(out, *extra):
    return main(["forget-each", "--config-dir", str(SMOKE), "--output-dir", str(out), "--no-progress", *TINY_SETS, *extra])


def _resolved(run_dir) -> RunConfig:
    return config_from_text((run_dir / "config.resolved.yaml").read_text())


def test_forget_each_two_classes_smoke(tmp_path, capsys):
    out = tmp_path / "fe"
    assert _run(out, "--classes", "0", "2", "--seeds", "3", "--methods", "erasediff", "blindspot") == 0
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1].startswith(f"wrote {out / 'forget_each.md'}")
    sd = out / "seed3"
    base = _resolved(sd / "base")
    assert base.seed == 3
    assert json.loads((sd / "classifier" / "classifier.json").read_text())["test_acc"] > 0
    for c in (0, 2):
        for m in ("erasediff", "blindspot"):
            run = sd / f"class{c}" / m
            cfg = _resolved(run)
            # each run forgets its class alone, from this seed's base model, with this seed
            assert list(cfg.data.forget_classes) == [c]
            assert cfg.seed == 3 and cfg.model.pretrained == str(sd / "base") and cfg.method.name == m
            ev = json.loads((run / "eval" / "metrics.json").read_text())
            assert {"p_f", "p_f_in_dist", "fd_f", "acc_remain", "fd_remain"} <= set(ev)
            assert (run / "eval" / "forget_class.png").is_file()
        # BlindSpot's proxy is trained on D_r of this class: it lives with the class
        proxy = _resolved(sd / f"class{c}" / "artifacts" / "blindspot_proxy")
        assert list(proxy.data.forget_classes) == [c] and proxy.seed == 3
        unscrubbed = json.loads((sd / f"class{c}" / "unscrubbed" / "eval" / "metrics.json").read_text())
        assert unscrubbed["model"] == str(sd / "base")
    result = json.loads((out / "forget_each.json").read_text())
    assert result["rows"] == ["unscrubbed", "erasediff", "blindspot"]
    assert set(result["cells"]["erasediff"]["3"]) == {"0", "2"}
    table = (out / "forget_each.md").read_text()
    assert "| class | unscrubbed | erasediff | blindspot |" in table
    assert (out / "forget_each.png").is_file()

    # the same command again reuses every stage: nothing is retrained or re-evaluated
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    assert _run(out, "--classes", "0", "2", "--seeds", "3", "--methods", "erasediff", "blindspot") == 0
    assert "8 of 8 stages already done" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # --table-only tabulates what exists and runs nothing: class 5 shows as missing
    assert _run(out, "--classes", "0", "2", "5", "--seeds", "3", "--methods", "erasediff", "--table-only") == 0
    assert not (sd / "class5").exists()
    assert "| 5 | – | – |" in (out / "forget_each.md").read_text()


def test_plan_seeds_base_judge_and_unlearning_together(tmp_path):
    plan = make_plan(SMOKE, tmp_path / "fe", ["erasediff", "so"], [1, 7], [0, 5],
                     [*TINY, "unlearn:train.steps=9", "so:train.lr=0.5", "pretrain:train.steps=6",
                      "eval:sample.guidance=0"], "cpu")
    assert plan.base_config(5).seed == 5 and plan.judge_config(5).classifier.seed == 5
    assert plan.base_config(5).train.steps == 6
    ed = plan.cell_overrides(5, 7, "erasediff")
    so = plan.cell_overrides(5, 7, "so")
    assert "seed=5" in ed and "data.forget_classes=[7]" in ed and "train.steps=9" in ed
    assert "train.lr=0.5" in so and "train.lr=0.5" not in ed
    ev = plan.eval_config(5, 7)
    assert ev.sample.guidance == 0 and list(ev.data.forget_classes) == [7]
    assert {"classifier", "robust_forgetting"} <= set(ev.evaluate.metrics)
    # the evaluation noise is the config's, the same for every seed of the experiment
    assert plan.eval_config(0, 7).sample.seed == ev.sample.seed
    assert not (tmp_path / "fe").exists()


@pytest.mark.parametrize("args, message", [
    (["--methods", "erasediff", "nosuch"], "valid: "),
    (["--classes", "0", "12"], "valid classes are 0..9"),
    (["--set", "nosuch:train.lr=1"], "valid scopes: pretrain, eval, unlearn"),
    (["--set", "train.nosuch=1"], "train.nosuch"),
    (["--methods", "so", "so"], "each value once"),
])
def test_bad_input_one_error_line_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "fe"
    assert _run(out, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not out.exists()


def test_missing_pretrain_config(tmp_path, capsys):
    assert main(["forget-each", "--config-dir", str(tmp_path), "--output-dir", str(tmp_path / "fe")]) == 2
    assert "has no pretrain.yaml" in capsys.readouterr().err


def test_split_overrides_keeps_values_with_colons():
    plain, scoped = split_overrides(["model.pretrained=hub:org/x", "erasediff:train.lr=1"], ["erasediff"])
    assert plain == ["model.pretrained=hub:org/x"] and scoped == [("erasediff", "train.lr=1")]


def _cell(p_f, p_in=0.0, acc=0.95, fd_f=100.0, fd_r=10.0):
    return {"p_f": p_f, "p_f_in_dist": p_in, "fd_f": fd_f, "acc_remain": acc, "fd_remain": fd_r}


def test_forgotten_needs_both_measures_and_the_other_classes():
    assert forgotten(_cell(0.05))
    assert not forgotten(_cell(FORGOTTEN["p_f"] + 0.01))           # the judge still reads the class
    assert not forgotten(_cell(0.05, p_in=FORGOTTEN["p_f_in_dist"] + 0.01))  # real-looking images of it remain
    assert not forgotten(_cell(0.05, acc=FORGOTTEN["acc_remain"] - 0.01))    # the rest was damaged
    assert not forgotten({"p_f": 0.0})  # a missing measure never counts as forgotten


def test_table_layout_and_summary():
    result = {"rows": ["unscrubbed", "erasediff"], "classes": [0, 1, 2], "seeds": [0, 1], "cells": {
        "unscrubbed": {"0": {"0": _cell(0.9), "1": _cell(0.8), "2": _cell(0.95)}},
        "erasediff": {"0": {"0": _cell(0.01), "1": _cell(0.5), "2": _cell(0.02, acc=0.5)},
                      "1": {"0": _cell(0.03)}},
    }}
    text = render(result)
    lines = text.splitlines()
    # per metric: one row per class, one column per model, one value per seed ("–" where missing)
    start = lines.index(next(line for line in lines if line.startswith("### p_f ↓")))
    assert lines[start + 2] == "| class | unscrubbed | erasediff |"
    assert lines[start + 4] == "| 0 | 0.900 / – | 0.010 / 0.030 |"
    assert lines[start + 5] == "| 1 | 0.800 / – | 0.500 / – |"
    summary = {row[0]: row for row in summary_rows(result)}
    # forgotten: class 0 in both seeds; class 1 keeps p_f 0.5; class 2 loses acc_remain
    assert summary["erasediff"][1] == "2/4"
    # p_f worst / median / best over the 4 (class, seed) cells; acc_remain worst is the lowest
    assert summary["erasediff"][2] == "0.500 / 0.025 / 0.010"
    assert summary["erasediff"][5] == "0.500 / 0.950 / 0.950"
    assert summary["unscrubbed"][1] == "0/3"
