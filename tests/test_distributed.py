"""Data parallelism on CPU: two processes (torchrun, gloo) give the step of one (docs/distributed.md).

One launch of two processes runs every method (and its precomputed artifact) on the tiny digits model
with a global batch of 16 (8 per process); the same commands run in one process here. After 5 steps
the weights must agree to 1e-5 relative, the artifacts must match, and every process must hold the
same weights and see the same λ at every step. A second launch is killed after step 3 and resumed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from erasediff.build import build_run
from erasediff.cli import main
from helpers import REPO, SMOKE, TINY, tiny_config

pytestmark = pytest.mark.slow  # two launches of two processes: ~1 min on 2 cores (make test-slow)

STEPS = 5
COMMON = [*TINY, f"train.steps={STEPS}", "train.log_every=1", "sample.steps=2", "sample.grid_per_class=1",
          "train.checkpoint_minutes=0"]
FAST_FISHER = ["method.fisher_source=real", "method.fisher_samples_per_class=1", "method.fisher_timesteps=2"]
# name -> (command, smoke config, extra --set items, artifact key or None)
RUNS = {
    "finetune": ("train", "finetune", [], None),
    "erasediff": ("unlearn", "erasediff", ["method.lambda_mode=fixed"], None),
    "erasediff_paper": ("unlearn", "erasediff", ["method.lambda_mode=paper"], None),
    "selective_amnesia": ("unlearn", "selective_amnesia", FAST_FISHER, "fisher.safetensors"),
    "salun": ("unlearn", "salun", [], "salun_mask.safetensors"),
    "blindspot": ("unlearn", "blindspot", ["data.forget_batch_size=6"], "blindspot_proxy"),  # 13 does not split
}


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def commands(out: Path, base: Path) -> list[list[str]]:
    """The argv lists of every run (and its `precompute` first) into `out`."""
    cmds = []
    for name, (command, config, extra, artifact) in RUNS.items():
        cfg = str(SMOKE / f"{config}.yaml")
        sets = _sets([*COMMON, *extra, f"model.pretrained={base}"])
        art = ["--artifacts-dir", str(out / f"{name}_artifacts")]
        if artifact is not None:
            cmds.append(["precompute", "--config", cfg, *sets, *art, "--no-progress"])
        cmds.append([command, "--config", cfg, *sets, *([] if command == "train" else art), "--output-dir",
                     str(out / name), "--no-progress"])
    return cmds


def launch(tmp: Path, cmds: list[list[str]], record: Path, *extra: str) -> subprocess.CompletedProcess:
    """torchrun --standalone --nproc_per_node 2 tests/dist_driver.py (gloo on CPU, one thread each)."""
    (tmp / "cmds.json").write_text(json.dumps(cmds))
    record.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "tests" / "dist_driver.py"), str(tmp / "cmds.json"), str(record), *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def records(record: Path, rank: int) -> list[dict]:
    return [json.loads(line) for line in (record / f"rank{rank}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one-process folder, two-process folder, record folder, the base model) after both ran everything."""
    tmp = tmp_path_factory.mktemp("dist")
    base = tmp / "base"
    build_run(tiny_config("pretrain")).state.model.save_pretrained(base)  # a random-init "pretrained" model
    one, two = tmp / "one", tmp / "two"
    for argv in commands(one, base):
        assert main(argv) == 0, argv
    done = launch(tmp, commands(two, base), tmp / "record")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return one, two, tmp / "record", base


def flat(folder: Path) -> torch.Tensor:
    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    return torch.cat([weights[k].flatten().double() for k in sorted(weights)])


@pytest.mark.parametrize("name", list(RUNS))
def test_two_processes_train_the_weights_of_one(runs, name):
    one, two, _, base = runs
    a, b, start = flat(one / name / "model"), flat(two / name / "model"), flat(base)
    assert not torch.equal(a, start)  # the runs did train
    rel = float((a - b).norm() / a.norm())
    rel_update = float((a - b).norm() / (a - start).norm())
    assert rel <= 1e-5, f"{name}: ‖θ₁ − θ₂‖/‖θ₁‖ = {rel:.3g}"
    assert rel_update <= 1e-3, f"{name}: the two updates differ by {rel_update:.3g} of their size"
    m1, m2 = (json.loads((d / name / "metrics.json").read_text()) for d in (one, two))
    assert (m1["num_processes"], m2["num_processes"]) == (1, 2)
    assert m1["mixed_precision"] == m2["mixed_precision"] == "no"


def test_every_process_holds_the_same_weights_and_lambda_at_every_step(runs):
    one, two, record, _ = runs
    r0, r1 = records(record, 0), records(record, 1)
    assert len(r0) == len(r1) > 0
    for a, b in zip(r0, r1):
        assert (a["run_dir"], a["step"]) == (b["run_dir"], b["step"])
        assert a["checksum"] == b["checksum"], a["run_dir"]
        assert a["logs"] == b["logs"], a["run_dir"]  # the logged losses are the global ones on both
    paper = [r for r in r0 if r["run_dir"] == str(two / "erasediff_paper")]
    logged = [json.loads(line) for line in (one / "erasediff_paper" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in paper] == [r["step"] for r in logged] == list(range(1, STEPS + 1))
    for r, l1 in zip(paper, logged):
        assert r["logs"]["lambda"] == pytest.approx(l1["lambda"], rel=1e-5)
    assert any(r["logs"]["lambda"] != 0.1 for r in paper)  # Theorem 1's λ, not the fixed default


def test_only_the_main_process_writes(runs):
    _, two, _, _ = runs
    lines = (two / "finetune" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))  # one line per step
    assert (two / "finetune" / "losses.png").is_file() and (two / "finetune" / "COMPLETE").is_file()


def test_artifacts_are_sums_over_the_whole_forget_set(runs):
    one, two, _, _ = runs
    f1 = load_file(one / "selective_amnesia_artifacts" / "fisher.safetensors")
    f2 = load_file(two / "selective_amnesia_artifacts" / "fisher.safetensors")
    assert f1.keys() == f2.keys()
    for k in f1:  # one process's share would be about half of the sum
        torch.testing.assert_close(f2[k], f1[k], rtol=1e-5, atol=1e-12 + 1e-6 * float(f1[k].abs().max()))
    m1 = load_file(one / "salun_artifacts" / "salun_mask.safetensors")
    m2 = load_file(two / "salun_artifacts" / "salun_mask.safetensors")
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    p1 = flat(one / "blindspot_artifacts" / "blindspot_proxy" / "model")
    p2 = flat(two / "blindspot_artifacts" / "blindspot_proxy" / "model")
    assert float((p1 - p2).norm() / p1.norm()) <= 1e-5


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_one(runs, tmp_path):
    _, two, _, base = runs
    out = tmp_path / "killed"
    argv = ["train", "--config", str(SMOKE / "finetune.yaml"),
            *_sets([*COMMON, f"model.pretrained={base}", "train.checkpoint_every=2"]), "--output-dir", str(out),
            "--no-progress"]
    killed = launch(tmp_path, [argv], tmp_path / "rec1", "3")  # SIGKILL of the main process after step 3
    assert killed.returncode != 0
    assert not (out / "COMPLETE").exists() and (out / "checkpoints" / "step_0000002.safetensors").is_file()
    again = [*argv, "--resume"]
    resumed = launch(tmp_path, [again, argv], tmp_path / "rec2")  # resume; then the same run again is refused
    assert resumed.returncode != 0 and f"wrote {out}" in resumed.stdout, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    assert "exitcode  : 2" in resumed.stderr  # the refused second run: bad input on every process
    assert torch.equal(flat(out / "model"), flat(two / "finetune" / "model"))
    errors = [line for line in resumed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds a finished run" in errors[0]  # one line, from the main process
