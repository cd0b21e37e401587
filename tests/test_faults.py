"""Fault injection: kills, signals, corrupt checkpoints, NaN, concurrent writers (docs/reliability.md).

Commands run as a user runs them, through tests/fault_driver.py (one fault injected into a real
`python -m erasediff ...` process; forked from the pre-imported server of conftest.py, so each takes
about a second). The reference for every "resume is bit-identical" check is an uninterrupted run of
the same command in the same kind of process.
"""

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import SMOKE, TINY, tiny_config
from safetensors.torch import load_file

from erasediff.checkpoint import resolve_pretrained
from erasediff.cli import main
from erasediff.errors import ErasediffError
from erasediff.rundir import COMPLETE, FolderClaim

DRIVER = Path(__file__).resolve().parent / "fault_driver.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}
STEPS = 6
RUN = ["train", "--config", str(SMOKE / "pretrain.yaml"), "--no-progress"]
for item in (*TINY, f"train.steps={STEPS}", "train.log_every=1", "train.checkpoint_every=2", "sample.steps=2"):
    RUN += ["--set", item]


def strict_json(text: str):
    """json.loads that refuses NaN / Infinity (what Python's json writes for non-finite floats)."""
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def drive(python: str, fault: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, str(DRIVER), fault, "--", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for part in ("model", "model_ema"):
        if not (run_dir / part).is_dir():  # train.ema_decay: null
            continue
        for k, v in load_file(run_dir / part / "diffusion_pytorch_model.safetensors").items():
            out[f"{part}.{k}"] = v
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"{len(diff)} tensors differ, e.g. {diff[:3]}"


def logged_steps(run_dir: Path) -> list[int]:
    return [strict_json(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(fast_python, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    r = drive(fast_python, "none", *RUN, "--output-dir", str(out))
    assert r.returncode == 0, r.stderr
    return out


# a few kill points drawn once (fixed seed, so a failure names its step), plus every checkpoint phase
_KILL_STEPS = sorted(random.Random(11).sample(range(1, STEPS), 2))
KILLS = [f"signal:KILL:{n}" for n in _KILL_STEPS] + [
    "kill:ckpt_half:1", "kill:ckpt_written:2", "kill:ckpt_renamed:2", "kill:ckpt_prune:2", "kill:model_saved:1",
]


@pytest.mark.parametrize("fault", KILLS)
def test_kill9_then_resume_is_bit_identical(fast_python, reference, tmp_path, fault):
    out = tmp_path / "run"
    r = drive(fast_python, fault, *RUN, "--output-dir", str(out))
    assert r.returncode != 0
    assert not (out / COMPLETE).exists()
    with pytest.raises(ErasediffError, match="not complete"):  # never usable as a model half-written
        resolve_pretrained(str(out))
    again = drive(fast_python, "none", *RUN, "--output-dir", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr  # not a dead end: it says how to go on
    resumed = drive(fast_python, "none", *RUN, "--output-dir", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference, out)
    assert logged_steps(out) == list(range(1, STEPS + 1))  # no step logged twice
    metrics = strict_json((out / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and len(metrics["sessions"]) >= 1
    assert metrics["wall_time_s"] == pytest.approx(sum(s["wall_time_s"] for s in metrics["sessions"]), abs=0.05)
    assert not list(out.rglob("*.tmp"))  # the resumed run left no temporary file behind


@pytest.mark.parametrize("sig,code", [("INT", 130), ("TERM", 143)])
def test_sigint_sigterm_save_and_resume(fast_python, reference, tmp_path, sig, code):
    out = tmp_path / "run"
    r = drive(fast_python, f"signal:{sig}:3", *RUN, "--output-dir", str(out))
    assert r.returncode == code, r.stderr
    assert (out / "checkpoints" / "step_0000003.safetensors").is_file()  # saved at the step boundary
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted:") and "step 3" in last and last.endswith("--resume")
    assert "Traceback" not in r.stderr
    resumed = drive(fast_python, "none", *RUN, "--output-dir", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(reference, out)
    metrics = strict_json((out / "metrics.json").read_text())
    assert [(s["from_step"], s["to_step"]) for s in metrics["sessions"]] == [(0, 3), (3, STEPS)]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_newest_checkpoint_falls_back(fast_python, reference, tmp_path, damage):
    out = tmp_path / "run"
    r = drive(fast_python, "signal:INT:5", *RUN, "--output-dir", str(out))
    assert r.returncode == 130
    newest = out / "checkpoints" / "step_0000005.safetensors"
    assert (out / "checkpoints" / "step_0000004.safetensors").is_file()  # the previous one is kept
    data = bytearray(newest.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # overwrite bytes in the tensor data (the last tenth of the file), header intact
        for i in range(len(data) - len(data) // 10, len(data) - 10, 97):
            data[i] ^= 0xFF
    newest.write_bytes(bytes(data))
    resumed = drive(fast_python, "none", *RUN, "--output-dir", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    warning = [line for line in resumed.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(newest) in warning[0] and "falling back" in warning[0]
    assert_same_weights(reference, out)  # from step 4 to the end, as if nothing had happened


def test_every_checkpoint_corrupt_is_one_error_line(fast_python, tmp_path):
    out = tmp_path / "run"
    assert drive(fast_python, "signal:INT:3", *RUN, "--output-dir", str(out)).returncode == 130
    for p in (out / "checkpoints").glob("*.safetensors"):
        p.write_bytes(b"\x00" * 10)
    r = drive(fast_python, "none", *RUN, "--output-dir", str(out), "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: no readable checkpoint")


# ------------------------------------------------------------------------------------------ NaN
def _run(tmp_path, capsys, *overrides: str, resume: bool = False):
    args = [*RUN, "--output-dir", str(tmp_path / "run")]
    for item in overrides:
        args += ["--set", item]
    code = main([*args, "--resume"] if resume else args)
    return code, capsys.readouterr()


def _nan_at(monkeypatch, call: int):
    """The Finetune loss becomes NaN on its `call`-th evaluation (1-based)."""
    import erasediff.methods.finetune as finetune

    real, calls = finetune.denoising_loss, {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        value, t = real(*args, **kwargs)
        return (value * float("nan"), t) if calls["n"] == call else (value, t)

    monkeypatch.setattr(finetune, "denoising_loss", loss)


def test_divergence_stops_with_one_line_and_writes_no_model(tmp_path, capsys):
    code, io = _run(tmp_path, capsys, "train.lr=1e10")
    out = tmp_path / "run"
    assert code == 3
    lines = io.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: non-finite loss or gradient at step ")
    assert "no checkpoint was written yet" in lines[0]
    assert not (out / "model").exists() and not (out / COMPLETE).exists() and not (out / "metrics.json").exists()
    for line in (out / "log.jsonl").read_text().splitlines():
        strict_json(line)


def test_late_nan_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    _nan_at(monkeypatch, 5)
    code, io = _run(tmp_path, capsys)
    out = tmp_path / "run"
    assert code == 3 and "at step 5" in io.err and "step_0000004.safetensors stays" in io.err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002.safetensors",
                                                                        "step_0000004.safetensors"]
    from erasediff.checkpoint import load_checkpoint

    _, _, states = load_checkpoint(out / "checkpoints" / "step_0000004.safetensors")
    assert all(torch.isfinite(v).all() for v in states["model"].values())
    assert not (out / "model").exists()


def test_skip_step_drops_the_update_and_counts_it(tmp_path, capsys, monkeypatch):
    _nan_at(monkeypatch, 3)
    code, io = _run(tmp_path, capsys, "train.nonfinite=skip_step")
    out = tmp_path / "run"
    assert code == 0, io.err
    metrics = strict_json((out / "metrics.json").read_text())
    assert metrics["skipped_steps"] == 1 and metrics["steps"] == STEPS
    log = [strict_json(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if e.get("skipped")] == [3] and log[2]["loss_r"] is None
    w = weights(out)
    assert all(torch.isfinite(v).all() for v in w.values())


def test_skip_step_inside_erasediffs_inner_loop_restores_theta(tmp_path, monkeypatch):
    """A NaN in an inner step (Alg. 1 line 3) ends the inner loop early; θ ← φ⁰ still happens."""
    import erasediff.methods.erasediff as ed
    from erasediff.build import build_run

    run = build_run(tiny_config("erasediff", "train.nonfinite=skip_step", "method.inner_steps=2", "method.target=uniform"))
    before = [p.detach().clone() for p in run.state.params]
    real = ed.uniform_target_loss
    monkeypatch.setattr(ed, "uniform_target_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    logs = run.step()
    assert logs["skipped"] == 1.0 and run.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, run.state.params))


def test_evaluate_and_unlearn_refuse_a_nan_model(tmp_path, reference):
    from erasediff.backbones import build_backbone
    from erasediff.build import build_run
    from erasediff.checkpoint import load_eval_model
    from erasediff.device import resolve_device

    cfg = tiny_config("pretrain", f"model.pretrained={reference}")
    backbone = build_backbone(cfg, resolve_device("cpu"))
    model = backbone.load_model(str(reference / "model"))
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    model.save_pretrained(tmp_path / "nan_model")
    with pytest.raises(ErasediffError, match="non-finite weights"):
        load_eval_model(backbone, str(tmp_path / "nan_model"), use_ema=True)
    with pytest.raises(ErasediffError, match="non-finite weights"):
        build_run(tiny_config("erasediff", f"model.pretrained={tmp_path / 'nan_model'}"))


# ------------------------------------------------------------------------------ one writer per folder
def test_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    with FolderClaim(out, "run directory"):
        code, io = _run(tmp_path, capsys)
    assert code == 2
    assert io.err.strip() == (f"error: run directory {out} is in use by another process (pid {os.getpid()} on "
                              f"{os.uname().nodename}): wait for it to finish or stop it (one writer per folder)")
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
    code, io = _run(tmp_path, capsys)  # released: the folder is free again
    assert code == 0, io.err


def test_two_trains_started_together(fast_python, tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen([fast_python, str(DRIVER), "none", "--", *RUN, "--output-dir", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in use by another process" in loser or "holds a finished run" in loser
    assert logged_steps(out) == list(range(1, STEPS + 1))


def test_sample_folder_has_one_writer(fast_python, reference, tmp_path):
    folder = tmp_path / "samples"
    args = ["sample", "--config", str(SMOKE / "pretrain.yaml"), "--model", str(reference), "--output-dir",
            str(folder), "--n-per-class", "2", "--classes", "0", "1", "--no-progress", "--set", "sample.steps=2"]
    for item in TINY:
        args += ["--set", item]
    with FolderClaim(folder, "sample folder"):
        r = drive(fast_python, "none", *args)
        assert r.returncode == 2 and "is in use by another process" in r.stderr
    procs = [subprocess.Popen([fast_python, str(DRIVER), "none", "--", *args, *extra], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV)
             for extra in ([], ["--set", "sample.guidance=0.5"])]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    # the folder holds the images of exactly the sampler its sample.json names
    winner = 0 if results[0][0] == 0 else 1
    identity = strict_json((folder / "sample.json").read_text())
    assert identity["sample"]["guidance"] == (2.0 if winner == 0 else 0.5)


# ------------------------------------------------------------------------------------ bookkeeping
def test_resume_of_a_finished_run_writes_nothing_and_extending_accumulates_time(reference, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
    code, io = _run(tmp_path, capsys, resume=True)
    assert code == 0 and "already complete" in io.out
    assert {p: p.stat().st_mtime_ns for p in before} == before
    code, io = _run(tmp_path, capsys, f"train.steps={STEPS - 1}", resume=True)
    assert code == 2 and f"has already done {STEPS} steps" in io.err
    old = strict_json((out / "metrics.json").read_text())
    code, io = _run(tmp_path, capsys, f"train.steps={STEPS + 2}", resume=True)
    assert code == 0, io.err
    new = strict_json((out / "metrics.json").read_text())
    assert new["steps"] == STEPS + 2 and len(new["sessions"]) == len(old["sessions"]) + 1
    assert new["wall_time_s"] > old["wall_time_s"]
    assert logged_steps(out) == list(range(1, STEPS + 3))


def test_time_based_checkpoints(tmp_path, capsys, monkeypatch):
    """train.checkpoint_minutes saves whenever that much time has passed (a clock that jumps a minute per read)."""
    import erasediff.run as loop

    clock = {"t": 0.0}

    def fake_perf_counter():
        clock["t"] += 60.0
        return clock["t"]

    monkeypatch.setattr(loop.time, "perf_counter", fake_perf_counter)
    code, io = _run(tmp_path, capsys, "train.checkpoint_every=0", "train.checkpoint_minutes=1", "train.keep_checkpoints=9")
    assert code == 0, io.err
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert saved == [f"step_{n:07d}.safetensors" for n in range(1, STEPS + 1)]  # a minute passed before every step


def test_files_are_written_with_the_umask_mode(reference):
    mode = 0o666 & ~_umask()
    files = [*reference.glob("model*/*.safetensors"), *reference.glob("checkpoints/*"), reference / "metrics.json"]
    assert files and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(mode)}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_output_dir_that_is_a_file(tmp_path, capsys, where):
    f = tmp_path / "f"
    f.write_text("x")
    target = f if where == "file" else f / "run"
    code = main([*RUN, "--output-dir", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and str(f) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_output_dir_is_refused_before_building(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    code = main([*RUN, "--output-dir", str(ro / "run")])
    assert code == 2 and "cannot write run directory" in capsys.readouterr().err


@pytest.mark.parametrize("size", [0, 1, 2])
def test_convert_tiny_files(tmp_path, capsys, size):
    bad = tmp_path / "ckpt.pth"
    bad.write_bytes(b"\x80"[:size] + b"a"[: max(0, size - 1)])
    code = main(["convert", "--checkpoint", str(bad), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and str(bad) in err[0]
    assert not (tmp_path / "out").exists()



# ----------------------------------------------------------------- any value through any config key
def _leaf_keys(cls, prefix: str = "") -> dict[str, object]:
    """Dotted leaf keys of a config section (a pydantic model) -> their type hint."""
    from pydantic import BaseModel

    out: dict[str, object] = {}
    for name, field in cls.model_fields.items():
        tp = field.annotation
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out.update(_leaf_keys(tp, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


def _choices(tp) -> list:
    import typing

    found = []
    for arg in typing.get_args(tp) or ():
        found += _choices(arg)
    return [*typing.get_args(tp)] if typing.get_origin(tp) is typing.Literal else found


def _all_keys() -> dict[str, list]:
    """Every key of a Finetune run's config, with its valid choices (Literal types) as extra values."""
    from erasediff.config import RunConfig
    from erasediff.methods.finetune import FinetuneConfig

    keys = {k: _choices(t) for k, t in _leaf_keys(RunConfig).items() if k != "method"}
    keys.update({f"method.{k}": _choices(t) for k, t in _leaf_keys(FinetuneConfig).items() if k != "name"})
    # datasets that download or need files of the user's: not reachable offline (their errors are tested elsewhere)
    keys["data.dataset"] = ["digits", "folder", "prompt_folder"]
    # each key's value in the test's own config comes first: drawn half of the time, so that many cases are
    # valid runs (which must then complete) while the other half stress the validation
    from erasediff.config import to_dict

    flat: dict[str, object] = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            walk(v, f"{prefix}{k}.") if isinstance(v, dict) else flat.setdefault(f"{prefix}{k}", v)

    walk(to_dict(tiny_config("pretrain")), "")
    for key in keys:
        keys[key] = [flat[key], *keys[key]] if key in flat else keys[key]
    return keys


KEYS = _all_keys()
# small numbers only: a valid run must finish in seconds, and huge sizes would just be slow, not wrong
VALUES = [None, True, False, -1, 0, 1, 2, 3, -0.5, 0.5, 1.5, 1e-3, float("nan"), float("inf"), float("-inf"),
          "", "abc", "1e-3", "yes", [], [0], [1, 2], [16, 32], {"a": 1}]


def _yaml(value) -> str:
    import yaml

    if isinstance(value, float) and value != value:
        return ".nan"
    if isinstance(value, float) and abs(value) == float("inf"):
        return ".inf" if value > 0 else "-.inf"
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def test_any_value_of_any_key_is_a_run_or_one_error_line(tmp_path):
    """Random values and types through every config key: a complete run, or exit 2 with one `error:` line
    and nothing written; never a traceback (hypothesis; derandomized so CI sees the same cases)."""
    import contextlib
    import io
    import shutil
    import warnings

    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @st.composite
    def key_values(draw):
        n = draw(st.integers(1, 2))
        picked = []
        for key in draw(st.lists(st.sampled_from(sorted(KEYS)), min_size=n, max_size=n, unique=True)):
            own = KEYS[key][:1]
            picked.append((key, draw(st.one_of(st.sampled_from(own or VALUES), st.sampled_from(VALUES + KEYS[key])))))
        return picked

    seen = {"runs": 0, "errors": 0}

    @hypothesis.settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @hypothesis.given(items=key_values())
    def check(items):
        root = tmp_path / "case"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        out = root / "run"
        args = [*RUN, "--set", "train.steps=2", "--output-dir", str(out)]
        for key, value in items:
            args += ["--set", f"{key}={_yaml(value)}"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main(args)
        lines = err.getvalue().strip().splitlines()
        if code == 0:
            seen["runs"] += 1
            assert (out / COMPLETE).is_file(), items
            assert all(torch.isfinite(v).all() for v in weights(out).values()), items
        else:
            seen["errors"] += 1
            assert code == 2, (items, err.getvalue())
            assert len(lines) == 1 and lines[0].startswith("error: "), (items, err.getvalue())
            assert list(root.iterdir()) == [], (items, lines)  # nothing written

    check()
    assert seen["runs"] >= 20 and seen["errors"] >= 40, seen  # both outcomes were exercised
