"""`time-to-forget`: the stopping rule, the fixed evaluation noise, precompute counted in the time, the table,
and the command end to end on tiny models."""

import json
import time

import pytest
import torch
from helpers import SMOKE, TINY, tiny_config

from erasediff.errors import ConfigError, RunStopped
from erasediff.forget_each import FORGOTTEN, forgotten
from erasediff.time_to_forget import (
    Judge,
    cell_record,
    eval_images,
    main,
    make_setup,
    render,
    run_cell,
    table_rows,
    train_until_forgotten,
)

GOOD = {"p_f": 0.05, "p_f_in_dist": 0.0, "acc_remain": 0.95}  # forgotten by every measure
KEPT = {"p_f": 0.90, "p_f_in_dist": 0.80, "acc_remain": 0.97}
BROKEN = {"p_f": 0.02, "p_f_in_dist": 0.0, "acc_remain": 0.50}  # "forgotten" by destroying the rest: not forgotten


class FakeClock:
    """process / wall clock that only moves when told: a step costs 1 s, a check 100 s."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t, self.t


def fake_cell(sequence, clk, fail_at=None):
    """(step, check, counter): step advances the clock by 1 (RunStopped at step `fail_at`), check returns the
    next metrics of `sequence` (the last repeats) and advances the clock by 100."""
    count = {"steps": 0, "checks": 0}

    def step():
        if fail_at is not None and count["steps"] == fail_at:
            raise RunStopped("non-finite loss")
        count["steps"] += 1
        clk.t += 1.0

    def check():
        i = min(count["checks"], len(sequence) - 1)
        count["checks"] += 1
        clk.t += 100.0
        return dict(sequence[i])

    return step, check, count


def test_criterion_is_forget_each():
    assert forgotten(GOOD) and not forgotten(KEPT) and not forgotten(BROKEN)
    assert not forgotten({**GOOD, "p_f_in_dist": FORGOTTEN["p_f_in_dist"] + 0.01})


def test_stops_at_first_forgotten_check_and_excludes_check_time():
    clk = FakeClock()
    step, check, count = fake_cell([KEPT, BROKEN, GOOD, KEPT], clk)
    out = train_until_forgotten(step, check, check_every=5, max_steps=50, clock=clk)
    # checks at 0 (kept), 5 (acc_remain broken), 10 (forgotten): no step after it
    assert [c["step"] for c in out["checks"]] == [0, 5, 10]
    assert [c["forgotten"] for c in out["checks"]] == [False, False, True]
    assert out["reached"] and out["steps_to_target"] == 10 and count["steps"] == 10 and out["stopped"] == "forgotten"
    # training time = 10 steps of 1 s; the three checks' 300 s are apart
    assert out["train"]["cpu_s"] == 10.0 and out["checks"][-1]["train_cpu_s"] == 10.0
    assert out["eval"] == {"cpu_s": 300.0, "wall_s": 300.0, "checks": 3}


def test_already_forgotten_base_stops_at_step_zero():
    clk = FakeClock()
    step, check, count = fake_cell([GOOD], clk)
    out = train_until_forgotten(step, check, check_every=5, max_steps=50, clock=clk)
    assert out["steps_to_target"] == 0 and count["steps"] == 0


def test_never_reached_reports_best_and_spent():
    clk = FakeClock()
    seq = [KEPT, {"p_f": 0.30, "p_f_in_dist": 0.40, "acc_remain": 0.96}, {"p_f": 0.50, "p_f_in_dist": 0.10,
                                                                         "acc_remain": 0.99}, BROKEN]
    step, check, count = fake_cell(seq, clk)
    out = train_until_forgotten(step, check, check_every=5, max_steps=12, clock=clk)
    assert [c["step"] for c in out["checks"]] == [0, 5, 10, 12]  # the last block is shorter
    assert not out["reached"] and out["steps_to_target"] is None and out["steps_run"] == 12 == count["steps"]
    assert out["stopped"] == "max_steps"
    rec = cell_record(3, "selective_amnesia", out, {"cpu_s": 7.0, "wall_s": 7.0}, {"cpu_s": 1.0, "wall_s": 1.0}, {}, "x")
    assert rec["cpu_s_to_target"] is None and rec["cpu_s_total"] == 7.0 + 1.0 + 12.0
    assert rec["best"]["p_f"] == {"value": 0.02, "step": 12}
    assert rec["best"]["p_f_in_dist"] == {"value": 0.0, "step": 12}
    assert rec["best"]["acc_remain"] == {"value": 0.99, "step": 10}


def test_diverged_run_ends_with_a_check_of_the_model_as_it_is():
    clk = FakeClock()
    step, check, _ = fake_cell([KEPT], clk, fail_at=7)
    out = train_until_forgotten(step, check, check_every=5, max_steps=50, clock=clk)
    assert out["stopped"] == "diverged" and "non-finite" in out["error"]
    assert [c["step"] for c in out["checks"]] == [0, 5, 7] and out["steps_run"] == 7 and not out["reached"]


def _record(c, m, sequence, pre_cpu, check_every=25, max_steps=100):
    clk = FakeClock()
    step, check, _ = fake_cell(sequence, clk)
    loop = train_until_forgotten(step, check, check_every=check_every, max_steps=max_steps, clock=clk)
    return cell_record(c, m, loop, {"cpu_s": pre_cpu, "wall_s": pre_cpu}, {"cpu_s": 0.0, "wall_s": 0.0}, {}, m)


def test_table_rendering():
    settings = {"check_every": 25, "max_steps": 100, "n_forget": 40, "n_other": 10}
    cells = {"0": {"erasediff": _record(0, "erasediff", [KEPT, KEPT, GOOD], 0.0),              # 50 steps = 50 s
                   "selective_amnesia": _record(0, "selective_amnesia", [KEPT] * 3 + [GOOD], 75.0),  # 75 + 75
                   "finetune": _record(0, "finetune", [KEPT], 0.0)},                            # never: 100 s
             "8": {"selective_amnesia": _record(8, "selective_amnesia", [GOOD], 30.0)}}       # no EraseDiff cell
    result = {"classes": [0, 8], "methods": ["erasediff", "selective_amnesia", "finetune"], "settings": settings,
              "forgotten_if": FORGOTTEN, "reference": "erasediff", "cells": cells}
    rows = table_rows(result)
    assert rows[0][:7] == ["erasediff", "0", "50", "50.0", "0.0", "1.00", "50"]
    assert rows[0][7:] == ["0.050", "0.000", "0.950", "target (step 50)"]
    assert rows[1][:7] == ["selective_amnesia", "0", "75", "150.0", "75.0", "3.00", "150"]
    assert rows[2][:7] == ["finetune", "0", "not reached (> 100)", "> 100.0", "0.0", "> 2.00", "> 100"]
    assert rows[2][7:] == ["0.900 @0", "0.800 @0", "0.970 @0", "best of 5 checks"]
    assert rows[3] == ["erasediff", "8", *["–"] * 9]  # a cell not run
    assert rows[4][:6] == ["selective_amnesia", "8", "0", "30.0", "30.0", "–"]  # no reference to divide by
    text = render(result)
    assert "| method | class | steps to target | CPU s to target (process, 1 thread) |" in text
    assert "| selective_amnesia | 0 | 75 | 150.0 | 75.0 | 3.00 |" in text
    assert "| finetune | 0/1 | – |" in text and "| selective_amnesia | 2/2 | 90.0 |" in text
    assert "time.process_time()" in text and "p_f ≤ 0.1" in text


# ------------------------------------------------------------------------------ on tiny real models
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny base model (4 steps) and judge (1 epoch), made once: (base dir, judge dir)."""
    from erasediff.classifier_training import train_eval_classifier
    from erasediff.loop import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ttf")
    train(tiny_config("pretrain"), root / "base", training_only=True, progress=False)
    train_eval_classifier(tiny_config("erasediff"), root / "judge", progress=False)
    return root / "base", root / "judge"


def _setup(tiny, out, methods, **kw):
    base, judge = tiny
    args = {"check_every": 1, "max_steps": 2, "n_forget": 4, "n_other": 2, **kw}
    return make_setup(SMOKE, base, judge, out, methods, [0], overrides=TINY, **args)


def test_every_check_sees_the_same_noise(tiny, tmp_path):
    from erasediff.build import build_run
    from erasediff.evaluate import evaluate
    from erasediff.experiment import load_config

    setup = _setup(tiny, tmp_path / "out", ["erasediff"])
    cfg = load_config(setup.method_config("erasediff"), setup.cell_overrides(0, "erasediff"))
    assert cfg.model.pretrained == str(tiny[0]) and list(cfg.data.forget_classes) == [0]
    eval_cfg = setup.eval_config(0)
    run = build_run(cfg, progress=False)
    run.state.model.train()
    first, labels = eval_images(eval_cfg, run, 10)
    again, labels2 = eval_images(eval_cfg, run, 10)
    assert torch.equal(first, again) and torch.equal(labels, labels2)  # unchanged model: the same images
    assert (labels == 0).sum() == 4 and (labels == 5).sum() == 2
    # ... and the very images `evaluate` draws for the saved base model (the same noise as every evaluation)
    _, ref, ref_labels = evaluate(eval_cfg, str(tiny[0]), classifier_dir=str(tiny[1]), progress=False)
    assert torch.equal(ref_labels, labels) and torch.allclose(ref, first, atol=1e-5)
    # a check does not disturb training: the same steps with and without checks in between
    twin = build_run(cfg, progress=False)
    twin.state.model.train()
    for _ in range(2):
        run.step()
        eval_images(eval_cfg, run, 10)
        twin.step()
    assert all(torch.equal(a, b) for a, b in zip(run.state.params, twin.state.params))
    after, _ = eval_images(eval_cfg, run, 10)
    assert not torch.equal(after, first)  # the check sees the model change


def _burn(seconds: float) -> None:
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        pass


def test_precompute_time_is_counted(tiny, tmp_path, monkeypatch):
    import erasediff.precompute as pc

    real = pc.precompute

    def slow_precompute(*args, **kwargs):  # the real SalUn mask, plus 0.3 s of CPU
        _burn(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(pc, "precompute", slow_precompute)
    setup = _setup(tiny, tmp_path / "out", ["salun"])
    judge = Judge(setup.classifier, setup.eval_config(0), torch.device("cpu"))
    rec = run_cell(setup, 0, "salun", judge)
    pre = rec["precompute"]
    assert pre["cpu_s"] >= 0.3 and pre["artifacts"][0]["artifact"] == "mask" and not pre["partial"]
    assert (setup.cell_dir(0, "salun") / "artifacts" / "salun_mask.safetensors").is_file()
    spent = pre["cpu_s"] + rec["setup"]["cpu_s"] + rec["train"]["cpu_s"]
    assert rec["cpu_s_total"] == pytest.approx(spent) and rec["cpu_s_total"] >= 0.3 + rec["train"]["cpu_s"]
    assert rec["checks"][0]["cpu_s"] == pytest.approx(pre["cpu_s"] + rec["setup"]["cpu_s"])  # step 0: no training yet
    # an interrupted cell done again keeps the time of the precompute that made its (kept) artifacts
    (setup.cell_dir(0, "salun") / "COMPLETE").unlink()
    monkeypatch.setattr(pc, "precompute", real)
    again = run_cell(setup, 0, "salun", judge)
    assert again["precompute"]["cpu_s"] == pytest.approx(pre["cpu_s"])


def test_command_end_to_end(tiny, tmp_path, capsys):
    base, judge = tiny
    out = tmp_path / "ttf"
    args = ["--config-dir", str(SMOKE), "--base", str(base), "--classifier", str(judge), "--classes", "0",
            "--methods", "erasediff", "finetune", "--check-every", "1", "--max-steps", "2", "--eval-forget", "4",
            "--eval-per-class", "2", "--output-dir", str(out), "--no-progress", *[a for s in TINY for a in ("--set", s)]]
    assert main(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith(f"wrote {out / 'time_to_forget.md'}")
    result = json.loads((out / "time_to_forget.json").read_text())
    for m in ("erasediff", "finetune"):
        rec = result["cells"]["0"][m]
        assert rec["checks"][0]["step"] == 0 and rec["steps_run"] <= 2
        assert {"p_f", "p_f_in_dist", "acc_remain", "cpu_s", "wall_s"} <= set(rec["checks"][-1])
        cell = out / "class0" / m
        assert (cell / "model" / "config.json").is_file() and (cell / "COMPLETE").is_file()
        assert json.loads((cell / "eval" / "metrics.json").read_text())["step"] == rec["steps_run"]
    assert "| erasediff | 0 |" in (out / "time_to_forget.md").read_text()
    # a finished result is refused, not overwritten; other settings in the same folder too
    assert main(args) == 2
    assert "already holds every requested cell" in capsys.readouterr().err
    assert main([*args[:-len(TINY) * 2], "--max-steps", "3", *args[-len(TINY) * 2:]]) == 2
    assert "other settings (max_steps)" in capsys.readouterr().err


@pytest.mark.parametrize("kw, message", [
    ({"methods": ["nope"]}, "no such method config"),
    ({"classes": [10]}, "out of range"),
    ({"check_every": 0}, "--check-every must be >= 1"),
    ({"overrides": ["pretrain:train.steps=3"]}, "trains no base model"),
])
def test_bad_input_is_one_error(tiny, tmp_path, kw, message):
    base, judge = tiny
    args = {"methods": ["erasediff"], "classes": [0], "overrides": TINY, **kw}
    with pytest.raises(ConfigError, match=message):
        make_setup(SMOKE, base, judge, tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()
