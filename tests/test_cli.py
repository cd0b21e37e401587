"""The command line as a user runs it: subprocess smoke runs, resume, refusals, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, SMOKE, TINY, tiny_config
from safetensors.torch import load_file

from erasediff.cli import main
from erasediff.loop import train

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "erasediff", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd or REPO, timeout=600)


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "base"
    r = cli("train", "--config", str(SMOKE / "pretrain.yaml"), *sets(*TINY, "train.steps=2"), "--output-dir", str(out),
            "--no-progress")
    assert r.returncode == 0, r.stderr
    return out, r


def test_train_two_steps_writes_everything(base_run):
    out, r = base_run
    assert f"wrote {out}" in r.stdout
    for name in ("config.resolved.yaml", "log.jsonl", "metrics.json", "model/config.json",
                 "model/diffusion_pytorch_model.safetensors", "model_ema/config.json", "samples/step_0000002.png"):
        assert (out / name).is_file(), name
    ckpt = out / "checkpoints" / "step_0000002.safetensors"
    tensors = load_file(ckpt)
    assert any(k.startswith("model.") for k in tensors) and any(k.startswith("ema.") for k in tensors)
    assert any(k.startswith("optimizer.") for k in tensors)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["method"] == "finetune"
    # Table 2's memory column: on CPU the process's peak RSS (torch alone holds well over 50 MiB)
    assert metrics["peak_memory_mib"]["kind"] == "cpu_peak_rss" and metrics["peak_memory_mib"]["value"] > 50
    assert "model:" in (out / "config.resolved.yaml").read_text()
    assert (out / "model" / "erasediff_config.yaml").read_text() == (out / "config.resolved.yaml").read_text()


def test_unlearn_evaluate_and_sample_from_a_run(base_run, tmp_path):
    base, _ = base_run
    un = tmp_path / "un"
    r = cli("unlearn", "--config", str(SMOKE / "erasediff.yaml"), *sets(*TINY, "train.steps=2", f"model.pretrained={base}"),
            "--output-dir", str(un), "--no-progress")
    assert r.returncode == 0, r.stderr
    logs = [json.loads(line) for line in (un / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in logs] == [1, 2]
    assert {"loss_r", "loss_f", "q", "lambda", "phi"} <= set(logs[0])

    clf = tmp_path / "clf"
    r = cli("train-classifier", "--config", str(SMOKE / "erasediff.yaml"), "--output-dir", str(clf), "--no-progress")
    assert r.returncode == 0, r.stderr
    r = cli("evaluate", "--config", str(SMOKE / "erasediff.yaml"), *sets(*TINY), "--model", str(un),
            "--classifier", str(clf), "--no-progress")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((un / "eval" / "metrics.json").read_text())
    assert {"p_f", "entropy_f", "acc_remain", "fd_remain"} <= set(metrics)
    # p_f is the judge's mean probability of the forgotten digit on the forget-class images it saved
    from erasediff.metrics.classifier import classifier_outputs, load_classifier
    from erasediff.sample_folders import read_samples

    n_forget = tiny_config("erasediff").evaluate.n_per_class
    images, _ = read_samples(un / "eval" / "samples", {0: n_forget}, channels=1)
    logits, _ = classifier_outputs(load_classifier(clf), images)
    assert metrics["p_f"] == pytest.approx(float(logits.softmax(-1)[:, 0].mean()), abs=1e-6)

    samples = tmp_path / "samples"
    r = cli("sample", "--config", str(SMOKE / "erasediff.yaml"), *sets(*TINY), "--model", str(un), "--output-dir",
            str(samples), "--n-per-class", "2", "--classes", "0", "5", "--no-progress")
    assert r.returncode == 0, r.stderr
    manifest = (samples / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "path,class,seed,index" and len(manifest) == 5
    assert (samples / "5" / "00001.png").is_file()


def test_existing_run_is_never_overwritten(base_run):
    out, _ = base_run
    # the lock file names its last holder (a refused process too); everything else stays untouched
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"}
    r = cli("train", "--config", str(SMOKE / "pretrain.yaml"), *sets(*TINY), "--output-dir", str(out))
    assert r.returncode == 2
    assert "holds a finished run" in r.stderr and "--resume" in r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.name != ".lock"} == before


BAD_INPUT = [
    (["train", "--config", "DDPM/configs/digits/smoke/pretrain.yaml", "--set", "train.lrr=1"],
     "unknown config key 'train.lrr'"),
    (["train", "--config", "DDPM/configs/digits/smoke/pretrain.yaml", "--set", "train.steps=abc"],
     "'train.steps' must be int"),
    (["unlearn", "--config", "DDPM/configs/digits/smoke/erasediff.yaml", "--set", "method.name=nope"],
     "unknown method 'nope'"),
    (["unlearn", "--config", "DDPM/configs/digits/smoke/erasediff.yaml", "--set", "model.pretrained=./missing/run"],
     "model path not found: ./missing/run"),
    (["unlearn", "--config", "DDPM/configs/digits/smoke/erasediff.yaml"], "needs a model to unlearn from"),
    (["train", "--config", "DDPM/configs/digits/smoke/erasediff.yaml"], "use the 'unlearn' command"),
    (["train", "--config", "DDPM/configs/digits/smoke/pretrain.yaml", "--set", "data.forget_classes=[12]"],
     "out of range"),
    (["train", "--config", "DDPM/configs/digits/smoke/pretrain.yaml", "--set", "data.dataset=mnist"],
     "must be one of: digits, cifar10, folder"),
    (["train", "--config", "no/such.yaml"], "config file not found"),
    (["train", "--config", "DDPM/configs/digits/smoke/pretrain.yaml", "--resume"], "nothing to resume"),
    (["convert", "--checkpoint", "missing/ckpt.pth"], "checkpoint not found: missing/ckpt.pth"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[m for _, m in BAD_INPUT])
def test_bad_input_one_error_line_nothing_written(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    assert main([*args, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_bad_input_exit_status_in_a_real_process(tmp_path):
    out = tmp_path / "run"
    r = cli("unlearn", "--config", str(SMOKE / "erasediff.yaml"), "--set", "method.target=gauss", "--output-dir", str(out))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: config key 'method.target' must be one of")
    assert not out.exists()


def test_help_lists_commands():
    r = cli("--help")
    for command in ("train", "unlearn", "sample", "evaluate", "train-classifier", "demo", "convert", "precompute"):
        assert command in r.stdout
    for gone in ("fisher", "saliency-mask", "nudenet", "imagenette-eval"):  # folded into precompute / evaluate
        assert f"    {gone} " not in r.stdout
    r = cli("unlearn", "--help")
    assert r.returncode == 0 and "--resume" in r.stdout


def _weights(run_dir: Path) -> dict:
    return load_file(run_dir / "model" / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("name", ["pretrain", "erasediff"])
def test_resume_equals_uninterrupted(tmp_path, base_run, name):
    extra = (f"model.pretrained={base_run[0]}",) if name == "erasediff" else ()
    # block_size 3 puts an inner loop right after the interruption point at step 3
    if name == "erasediff":
        extra += ("method.block_size=3",)
    train(tiny_config(name, "train.steps=6", *extra), tmp_path / "full", progress=False)
    train(tiny_config(name, "train.steps=3", *extra), tmp_path / "part", progress=False)
    train(tiny_config(name, "train.steps=6", *extra), tmp_path / "part", resume=True, progress=False)
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(tmp_path / "full" / "model_ema" / "diffusion_pytorch_model.safetensors")
    eb = load_file(tmp_path / "part" / "model_ema" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    log = [json.loads(line)["step"] for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert log == sorted(set(log)) and log[-1] == 6


def test_resume_refuses_a_changed_config(tmp_path):
    train(tiny_config("pretrain", "train.steps=1"), tmp_path / "r", progress=False)
    from erasediff.errors import ConfigError

    with pytest.raises(ConfigError, match="differs"):
        train(tiny_config("pretrain", "train.steps=2", "train.lr=1e-2"), tmp_path / "r", resume=True)


def test_demo_smoke_and_reuse(tmp_path):
    out = tmp_path / "demo"
    r = cli("demo", "--config-dir", str(SMOKE), "--output-dir", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for model in ("unscrubbed", "erasediff"):
        assert {"p_f", "p_f_in_dist", "fd_f", "entropy_f", "acc_remain", "fd_remain"} <= set(metrics[model])
    assert (out / "grid.png").is_file()
    assert "| Unscrubbed |" in r.stdout and "| EraseDiff |" in r.stdout
    r2 = cli("demo", "--config-dir", str(SMOKE), "--output-dir", str(out), "--no-progress")
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("reused") == 3
    again = json.loads((out / "metrics.json").read_text())
    assert again["erasediff"]["p_f"] == pytest.approx(metrics["erasediff"]["p_f"])
