"""Mixed precision, gradient accumulation and experiment tracking of the loop (docs/distributed.md)."""

from __future__ import annotations

import json

import pytest
import torch

from erasediff.build import build_run
from erasediff.cli import main
from erasediff.errors import ConfigError
from erasediff.loop import train
from erasediff.samplers import sample_classes
from helpers import SMOKE, tiny_config


def steps(cfg, n: int = 3) -> tuple[torch.Tensor, list[dict]]:
    """(the trainable weights flattened, the logs) after n steps of the loop's step, no run folder."""
    run = build_run(cfg, progress=False)
    logs = []
    for _ in range(n):
        logs.append(run.step())
    return torch.cat([p.detach().flatten().double() for p in run.state.params]), logs


def start_weights(cfg) -> torch.Tensor:
    return torch.cat([p.detach().flatten().double() for p in build_run(cfg, progress=False).state.params])


@pytest.mark.parametrize("config,extra", [
    ("finetune", []),
    ("erasediff", ["method.lambda_mode=fixed"]),  # the inner loop and the outer step both micro-batched
    ("neggrad", []),
])
@pytest.mark.parametrize("k", [2, 4])
def test_k_micro_batches_give_the_step_of_one_batch(config, extra, k):
    one, logs1 = steps(tiny_config(config, *extra))
    acc, logs_k = steps(tiny_config(config, *extra, f"train.grad_accum_steps={k}"))
    start = start_weights(tiny_config(config, *extra))
    assert not torch.equal(one, start)
    # float32 rounding only (Adam's first steps move every weight by ~lr, whatever the size of its gradient,
    # so rounding of near-zero gradients shows up at ~1e-4 of the update); a wrong split would be O(1)
    assert float((acc - one).norm() / (one - start).norm()) <= 1e-3
    assert float((acc - one).norm() / one.norm()) <= 1e-5
    for a, b in zip(logs1, logs_k):  # the logged losses are the whole batch's
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key


def test_a_batch_that_does_not_split_is_refused_before_anything_is_built():
    with pytest.raises(ConfigError, match="does not split into train.grad_accum_steps=3"):
        build_run(tiny_config("finetune", "train.grad_accum_steps=3"))  # 16 images


@pytest.mark.parametrize("mode", ["paper", "cosine"])
def test_automatic_lambda_refuses_accumulation_with_one_line(tmp_path, capsys, mode):
    out = tmp_path / "run"
    code = main(["unlearn", "--config", str(SMOKE / "erasediff.yaml"), "--set", f"method.lambda_mode={mode}",
                 "--set", "train.grad_accum_steps=2", "--set", "device=cpu", "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:")
    assert "grad_accum_steps" in err[0] and "full gradients g_r and g_q" in err[0]
    assert not out.exists()


def test_the_old_sd_precision_key_names_where_it_moved():
    with pytest.raises(ConfigError, match="'model.sd.mixed_precision' has moved: set train.mixed_precision"):
        tiny_config("finetune", "model.sd.mixed_precision=bf16")


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite_and_close_to_float32(mode):
    w32, logs32 = steps(tiny_config("finetune"))
    wmp, logsmp = steps(tiny_config("finetune", f"train.mixed_precision={mode}"))
    start = start_weights(tiny_config("finetune"))
    for a, b in zip(logs32, logsmp):
        assert all(torch.isfinite(torch.tensor(v)) for v in b.values())
        # autocast rounds the forwards only: measured within 0.05% of float32 over these steps
        assert b["loss_r"] == pytest.approx(a["loss_r"], rel=0.01)
    assert "amp_skipped" not in logsmp[-1]
    moved32, movedmp = (w32 - start).norm(), (wmp - start).norm()
    assert float(movedmp / moved32) == pytest.approx(1.0, rel=0.1)  # the same size of update


def test_fp16_scaler_state_is_checkpointed_and_resumed(tmp_path):
    cfg = tiny_config("finetune", "train.mixed_precision=fp16", "train.steps=2", "train.checkpoint_every=1",
                      "sample.steps=2", "sample.grid_per_class=1")
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["mixed_precision"] == "fp16"
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 3})})
    resumed = train(longer, tmp_path / "run", resume=True, progress=False)
    assert resumed["steps"] == 3 and all(torch.isfinite(torch.tensor(v)) for v in resumed["final_logs"].values())


def test_sampling_precision_is_its_own_setting():
    cfg = tiny_config("finetune", "sample.steps=2")
    run = build_run(cfg, progress=False)
    s = run.state
    x32, _ = sample_classes(s.backbone, s.model, [0, 1], 2, s.backbone.sample_shape, cfg.sample, progress=False)
    bf = cfg.sample.model_copy(update={"mixed_precision": "bf16"})
    xbf, _ = sample_classes(s.backbone, s.model, [0, 1], 2, s.backbone.sample_shape, bf, progress=False)
    assert x32.dtype == xbf.dtype == torch.float32 and torch.isfinite(xbf).all()
    diff = float((x32 - xbf).abs().max())
    assert 0 < diff < 0.25  # bf16 forwards: close, not identical


def test_tensorboard_receives_the_scalars_of_log_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config("erasediff", "train.log_with=[tensorboard]", "sample.steps=2", "sample.grid_per_class=1")
    train(cfg, tmp_path / "run", progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    for key in ("loss_r", "loss_f", "lambda", "q"):
        scalars = events.Scalars(key)
        assert [e.step for e in scalars] == [r["step"] for r in logged]
        assert [e.value for e in scalars] == pytest.approx([r[key] for r in logged], rel=1e-6, abs=1e-7)
    assert (tmp_path / "run" / "losses.png").is_file()


def test_every_run_draws_its_losses(tmp_path):
    from PIL import Image

    cfg = tiny_config("finetune", "sample.steps=2", "sample.grid_per_class=1")
    summary = train(cfg, tmp_path / "run", progress=False)
    with Image.open(summary["losses_png"]) as im:
        assert im.size[0] > 300 and im.size[1] > 200
