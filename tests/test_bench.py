"""`bench`: every config in its own process, ratios to the Finetune row, refusals before any work."""

import json

import pytest
from helpers import SMOKE, TINY

from erasediff.bench import bench_table, run_bench
from erasediff.cli import main
from erasediff.errors import ErasediffError


def _row(config: str, method: str, sec: float, mem: float, fb: float = 1.0, f: float = 0.0,
         fwd: float = 0.01) -> dict:
    return {"config": config, "method": method, "sec_per_step": sec,
            "peak_memory_mib": {"value": mem, "kind": "cuda_max_allocated"},
            "fwd_bwd_per_step": fb, "fwd_per_step": f, "sec_per_forward": fwd}


def test_floor_ratio_is_the_step_over_its_passes():
    from erasediff.bench import floor_ratio

    finetune = _row("a/finetune.yaml", "finetune", 0.1, 1.0)
    # 3 fwd+bwd (0.3 s at Finetune's 0.1 s each) and 2 no-grad forwards of 0.02 s: floor 0.34 s
    erasediff = _row("a/erasediff.yaml", "erasediff", 0.374, 1.0, fb=3.0, f=2.0, fwd=0.02)
    assert floor_ratio(erasediff, finetune) == pytest.approx(1.1)
    assert floor_ratio(finetune, finetune) == pytest.approx(1.0)
    cells = bench_table([finetune, erasediff]).splitlines()[3].split("|")
    assert cells[8:10] == [" 3.00 + 2.00 ", " 1.10 "]


def test_table_ratios_are_to_the_finetune_row_wherever_it_is():
    rows = [_row("a/erasediff.yaml", "erasediff", 0.3, 300.0), _row("a/finetune.yaml", "finetune", 0.1, 200.0)]
    lines = bench_table(rows).splitlines()
    assert "× finetune" in lines[0]
    assert lines[2].split("|")[1:7] == [" erasediff ", " erasediff ", " 0.3000 ", " 3.00 ", " 300.0 ", " 1.50 "]
    assert lines[3].split("|")[4] == " 1.00 " and lines[3].split("|")[6] == " 1.00 "
    # without a Finetune row the first row is the reference, and the header says so
    lines = bench_table(rows[:1] + [_row("b/neggrad.yaml", "neggrad", 0.6, 150.0)]).splitlines()
    assert "× erasediff" in lines[0] and lines[3].split("|")[4] == " 2.00 " and lines[3].split("|")[6] == " 0.50 "


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "base"
    assert main(["train", "--config", str(SMOKE / "pretrain.yaml"), *[a for s in TINY for a in ("--set", s)],
                 "--set", "train.steps=1", "--output-dir", str(out), "--no-progress"]) == 0
    return out


def test_bench_runs_each_method_in_its_own_process_and_writes_once(tiny_base, tmp_path, capsys):
    # a Finetune config with a 32x larger batch: its own process, so its peak is not the other's
    big = tmp_path / "finetune_big.yaml"
    big.write_text(f"base: {SMOKE / 'finetune.yaml'}\ndata:\n  batch_size: 512\n")
    configs = [str(big), str(SMOKE / "erasediff.yaml"), str(SMOKE / "finetune.yaml")]
    overrides = [*TINY, f"model.pretrained={tiny_base}"]
    overrides.remove("data.batch_size=16")
    overrides.append("data.forget_batch_size=16")
    out = tmp_path / "out"
    args = ["bench", "--config", *configs, *[a for s in overrides for a in ("--set", s)], "--warmup", "1",
            "--steps", "2", "--output-dir", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "× finetune" in printed and f"wrote {out}" in printed
    payload = json.loads((out / "bench.json").read_text())
    rows = payload["rows"]
    assert [r["method"] for r in rows] == ["finetune", "erasediff", "finetune"]
    assert payload["steps"] == 2 and all(r["sec_per_step"] > 0 for r in rows)
    assert rows[1]["trainable_params"] == rows[2]["trainable_params"] > 0
    # the rows the hooks counted, in batches of data.batch_size (B = 128 here, B_f = 16): Finetune one fwd+bwd;
    # EraseDiff (random-label target, 2 inner steps every 2 outer steps) over the 2 timed steps: L_r (2 × 128)
    # and L_f (2 × 16) with gradients, L_f's target (2 × 16) without, and one inner loop (2 forget batches with
    # gradients + their targets) -> (256 + 32 + 32) / 256 = 1.25 fwd+bwd and (32 + 32) / 256 = 0.25 forwards
    assert (rows[2]["fwd_bwd_per_step"], rows[2]["fwd_per_step"]) == (1.0, 0.0)
    assert (rows[1]["fwd_bwd_per_step"], rows[1]["fwd_per_step"]) == (1.25, 0.25)
    assert all(r["sec_per_forward"] > 0 for r in rows)
    assert all(r["peak_memory_mib"]["kind"] == "cpu_peak_rss" for r in rows)
    # peak RSS never falls within a process: sharing one, the later small run would report at least the big one's
    assert rows[0]["peak_memory_mib"]["value"] > rows[2]["peak_memory_mib"]["value"]
    assert (out / "bench.md").read_text() == bench_table(rows)
    # a second run into the same folder is refused, nothing is changed
    before = (out / "bench.json").read_text()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err and (out / "bench.json").read_text() == before


def test_bench_refuses_bad_input_before_starting(tmp_path):
    with pytest.raises(ErasediffError, match="no_such_key"):
        run_bench([str(SMOKE / "finetune.yaml")], ["train.no_such_key=1"])
    with pytest.raises(ErasediffError, match="--steps"):
        run_bench([str(SMOKE / "finetune.yaml")], [], steps=0)
    with pytest.raises(ErasediffError):
        run_bench([str(tmp_path / "missing.yaml")], [])


def test_prefixed_overrides_reach_only_their_config(tmp_path):
    from erasediff.bench import split_overrides

    configs = ["a/finetune.yaml", "b/selective_amnesia.yaml"]
    got = split_overrides(configs, ["seed=3", "selective_amnesia:method.fisher=f.safetensors"])
    assert got == [["seed=3"], ["seed=3", "method.fisher=f.safetensors"]]
    with pytest.raises(ErasediffError, match="valid prefixes: finetune, selective_amnesia"):
        split_overrides(configs, ["salun:method.mask=m"])
    # the method-only key would be unknown to finetune's method section: the prefix is what makes it valid
    with pytest.raises(ErasediffError, match="fisher"):
        run_bench([str(SMOKE / "finetune.yaml")], ["method.fisher=f.safetensors"])


def test_sample_mode_measures_images_per_second_with_the_config_precision(tmp_path):
    configs = [str(SMOKE / "finetune.yaml")]
    overrides = [*TINY, "sample.batch_size=2", "sample.steps=2"]
    rows, table = run_bench(configs * 2, overrides + ["finetune:sample.mixed_precision=no"], warmup=1,
                            sample_images=4, output_dir=str(tmp_path / "s"), progress=False)
    assert [r["images"] for r in rows] == [4, 4] and all(r["images_per_s"] > 0 for r in rows)
    assert rows[0]["sampler"] == "DDIM 2 steps, guidance 2.0, batch 2" and rows[0]["mixed_precision"] == "no"
    assert "images/s" in table.splitlines()[0]
    assert json.loads((tmp_path / "s" / "bench.json").read_text())["sample_images"] == 4
    with pytest.raises(ErasediffError, match="--sample-images"):
        run_bench(configs, [], sample_images=-1)
