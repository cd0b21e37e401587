"""Baselines (docs/baselines.md): NegGrad ascends, BlindSpot distils from a frozen proxy, SO = L_r + λL_f."""

import json
from pathlib import Path

import pytest
import torch
from helpers import REPO, SMOKE, TINY, tiny_config
from safetensors.torch import load_file

from erasediff.build import build_run
from erasediff.cli import main
from erasediff.errors import ConfigError
from erasediff.experiment import load_config
from erasediff.losses import denoising_loss, uniform_target_loss
from erasediff.methods.blindspot import feature_modules

CONFIGS = REPO / "DDPM" / "configs"
BASELINES = ("neggrad", "blindspot_proxy", "blindspot", "retrain", "finetune", "so")


def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def fixed_loss(run, batch, seed: int = 123) -> float:
    """L on `batch` with fixed noise and timesteps (cond_drop 0), without touching the run's generator."""
    x0, cond = run.state.backbone.encode(batch)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return denoising_loss(run.state.backbone, run.state.model, x0, cond, gen)[0].item()


# ------------------------------------------------------------------------------------------ NegGrad
@pytest.mark.parametrize("split", ["forget", "remain"])
def test_neggrad_step_ascends_the_loss_of_its_split(tmp_path, split):
    run = build_run(tiny_config("neggrad", f"method.data={split}"))
    drawn = {"forget": run.data.forget, "remain": run.data.remain}
    assert drawn[split] is not None and drawn["remain" if split == "forget" else "forget"] is None
    assert run.method.needs_forget == (split == "forget") and run.method.needs_remain == (split == "remain")
    batch = next(drawn[split])
    before = fixed_loss(run, batch)
    logs = run.method.update(run.state, *((batch, None) if split == "forget" else (None, batch)))
    assert logs["loss"] < 0 and logs["loss_f" if split == "forget" else "loss_r"] == pytest.approx(-logs["loss"])
    assert fixed_loss(run, batch) > before  # one step of ascent on the same batch and noise


@pytest.mark.parametrize("name", BASELINES)
def test_shipped_baseline_configs_validate(name):
    digits = load_config(CONFIGS / "digits" / f"{name}.yaml")
    smoke = load_config(SMOKE / f"{name}.yaml")
    cifar = load_config(CONFIGS / "cifar10" / f"{name}_airplane.yaml")
    for cfg in (digits, smoke, cifar):
        assert cfg.data.forget_classes == (0,)
        assert cfg.method.name == {"retrain": "finetune", "blindspot_proxy": "finetune", "so": "erasediff"}.get(name, name)
    assert smoke.train.steps <= 5 < digits.train.steps
    from_scratch = name in ("retrain", "blindspot_proxy")
    assert (cifar.model.pretrained is None) == from_scratch and digits.model.pretrained is None
    if name == "retrain":  # as many steps as the Unscrubbed model
        assert digits.train.steps == load_config(CONFIGS / "digits" / "pretrain.yaml").train.steps
        assert cifar.train.steps == load_config(CONFIGS / "cifar10" / "pretrain.yaml").train.steps
    if name == "blindspot":  # the proxy: precompute trains the shorter proxy config into the artifacts dir
        for cfg, d, suffix in ((digits, "digits", ""), (smoke, "digits/smoke", ""), (cifar, "cifar10", "_airplane")):
            assert cfg.method.proxy is None and cfg.method.at_weight == 0.0
            assert Path(cfg.method.proxy_config) == (CONFIGS / d / f"blindspot_proxy{suffix}.yaml").relative_to(REPO)
            proxy = load_config(REPO / cfg.method.proxy_config)
            assert proxy.model.pretrained is None and proxy.data.forget_classes == cfg.data.forget_classes
            if cfg is not smoke:  # half as long as Retrain
                assert proxy.train.steps < load_config(CONFIGS / d / f"retrain{suffix}.yaml").train.steps
    if name == "so":  # the single-objective ablation: EraseDiff without the inner loop
        assert digits.method.inner_steps == cifar.method.inner_steps == 0
    if name == "neggrad":
        assert cifar.method.data == "forget"


# ---------------------------------------------------------------------------------------- BlindSpot
@pytest.fixture(scope="module")
def proxy_dir(tmp_path_factory):
    """A tiny random-init model saved as a diffusers model directory (the same init as seed 0 runs)."""
    root = tmp_path_factory.mktemp("proxy")
    run = build_run(tiny_config("blindspot_proxy"))
    run.state.model.save_pretrained(root / "model")
    return root / "model"


def blindspot_run(tmp_path, proxy_dir, *overrides):
    cfg = tiny_config("blindspot", f"method.proxy={proxy_dir}", *overrides)
    return build_run(cfg)


def test_blindspot_forget_term_vanishes_when_the_proxy_is_the_model(tmp_path, proxy_dir):
    run = blindspot_run(tmp_path, proxy_dir, f"model.pretrained={proxy_dir}")
    parts, p_f = run.method.terms(run.state, next(run.data.forget), next(run.data.remain))
    assert p_f == pytest.approx(13 / (13 + 16))
    assert parts["loss_f"].item() == 0.0  # target = own prediction at the same x_t, t, c
    g_f = torch.autograd.grad(parts["loss_f"], run.state.params, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in g_f)
    g_r = torch.autograd.grad(parts["loss_r"], run.state.params, allow_unused=True)
    assert any(g is not None and g.any() for g in g_r)


def test_blindspot_missing_proxy_fails_before_writing(tmp_path, capsys):
    out, missing = tmp_path / "run", tmp_path / "no_such_proxy"
    code = main(["unlearn", "--config", str(SMOKE / "blindspot.yaml"), *sets(*TINY, f"method.proxy={missing}",
                 f"model.pretrained={missing}"), "--output-dir", str(out), "--no-progress"])
    assert code == 2 and not out.exists()
    assert f"method.proxy '{missing}' not found" in capsys.readouterr().err
    # unset: the default place in the artifacts dir, named in the one error line
    code = main(["unlearn", "--config", str(SMOKE / "blindspot.yaml"), *sets(*TINY, f"model.pretrained={missing}"),
                 "--artifacts-dir", str(tmp_path / "art"), "--output-dir", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists() and not (tmp_path / "art").exists()
    assert err[-1].startswith(f"error: method.proxy '{tmp_path / 'art' / 'blindspot_proxy'}' not found") and len(err) == 1


def test_blindspot_proxy_is_frozen(tmp_path, proxy_dir):
    run = blindspot_run(tmp_path, proxy_dir, "seed=1")
    proxy = run.method.proxy
    before = {k: v.clone() for k, v in proxy.state_dict().items()}
    model_before = [p.detach().clone() for p in run.state.params]
    for _ in range(2):
        logs = run.method.update(run.state, next(run.data.forget), next(run.data.remain))
    assert logs["loss_f"] > 0
    assert not proxy.training and all(not p.requires_grad and p.grad is None for p in proxy.parameters())
    assert all(torch.equal(before[k], v) for k, v in proxy.state_dict().items())
    assert not all(torch.equal(a, b) for a, b in zip(model_before, run.state.params))
    assert all(id(p) not in {id(q) for q in run.state.params} for p in proxy.parameters())


def test_blindspot_attention_transfer_adds_a_positive_term(tmp_path, proxy_dir):
    run = blindspot_run(tmp_path, proxy_dir, "seed=1", "method.at_weight=2.0")  # proxy ≠ model
    forget, remain = next(run.data.forget), next(run.data.remain)
    start = run.state.generator.get_state()
    total_at, logs = run.method.loss(run.state, forget, remain)
    assert logs["loss_at"] > 0
    assert len(run.method.acts["model"]) == 0  # activations are not kept between steps
    run.state.generator.set_state(start)
    run.method.cfg = run.method.cfg.model_copy(update={"at_weight": 0.0})
    total_plain, _ = run.method.loss(run.state, forget, remain)
    assert total_at.item() - total_plain.item() == pytest.approx(logs["p_f"] * 2.0 * logs["loss_at"], rel=1e-4)
    with pytest.raises(ConfigError, match="down_blocks"):
        feature_modules(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------------------------- SO
def test_so_is_one_adam_step_on_lr_plus_lambda_lf(tmp_path):
    """EraseDiff with inner_steps 0 = Adam on ∇(L_r + λL_f); = EraseDiff with a separate inner optimiser."""
    # the uniform target, whose loss the check below recomputes (the digits recipe uses random_label)
    lam, common = 0.3, ("train.grad_clip=null", "method.shared_timesteps=true", "method.target=uniform")
    so = build_run(tiny_config("so", f"method.lambda_value={lam}", *common))
    sep = build_run(tiny_config("so", f"method.lambda_value={lam}", "method.inner_steps=2", "method.inner_optimizer=separate",
                              "method.inner_lr=0.01", *common))
    forget, remain = next(so.data.forget), next(so.data.remain)
    s, bb = so.state, so.state.backbone
    theta0 = [p.detach().clone() for p in s.params]
    # the loss written by hand with the library's losses and the generator's next draws
    start = s.generator.get_state()
    x_r, c_r = bb.encode(remain)
    x_f, c_f = bb.encode(forget)
    loss_r, t = denoising_loss(bb, s.model, x_r, c_r, s.generator)
    loss_f = uniform_target_loss(bb, s.model, x_f, c_f, t[: x_f.shape[0]], s.generator)
    grads = torch.autograd.grad(loss_r + lam * loss_f, s.params, allow_unused=True)
    s.generator.set_state(start)
    so.method.update(s, forget, remain)
    sep.method.update(sep.state, forget, remain)
    lr, eps = s.cfg.train.lr, s.cfg.train.eps
    for p, p0, g, q in zip(s.params, theta0, grads, sep.state.params):
        g = torch.zeros_like(p0) if g is None else g
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(p.detach(), p0 - lr * g / (g.abs() + eps), rtol=0, atol=1e-7)  # Adam's first step
        torch.testing.assert_close(q.detach(), p.detach(), rtol=0, atol=1e-7)
    assert all(st["step"] == 1 for st in s.optimizer.state.values())  # no inner step touched Adam


# -------------------------------------------------------------------------------------------- CLI
def test_cli_blindspot_two_stages(tmp_path):
    proxy, out = tmp_path / "proxy", tmp_path / "blindspot"
    assert main(["train", "--config", str(SMOKE / "blindspot_proxy.yaml"), *sets(*TINY, "train.steps=2"),
                 "--output-dir", str(proxy), "--no-progress"]) == 0
    assert main(["unlearn", "--config", str(SMOKE / "blindspot.yaml"), *sets(*TINY, "train.steps=2", f"method.proxy={proxy}",
                 f"model.pretrained={proxy}"), "--output-dir", str(out), "--no-progress"]) == 0
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert logs[-1]["step"] == 2 and {"loss_f", "loss_r", "p_f"} <= set(logs[-1])
    assert json.loads((out / "metrics.json").read_text())["method"] == "blindspot"
    assert Path(out / "model_ema" / "config.json").is_file()


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model_ema" / "diffusion_pytorch_model.safetensors"))


def test_precompute_trains_the_proxy_as_train_would_then_unlearn_reads_it(tmp_path, capsys):
    art, out, ref = tmp_path / "art", tmp_path / "blindspot", tmp_path / "ref_proxy"
    common = sets(*TINY, "train.steps=2")
    # the proxy's config gets the same --set items but method.* and model.pretrained
    args = ["--config", str(SMOKE / "blindspot.yaml"), *common, *sets("model.pretrained=nowhere", "method.cond_drop=0.2"),
            "--seed", "3", "--artifacts-dir", str(art), "--no-progress"]
    assert main(["precompute", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"wrote {art / 'blindspot_proxy'} (method.proxy)" and json.loads(lines[-2])["steps"] == 2
    assert main(["train", "--config", str(SMOKE / "blindspot_proxy.yaml"), *common, "--seed", "3",
                 "--output-dir", str(ref), "--no-progress"]) == 0
    capsys.readouterr()
    proxy, expected = _weights(art / "blindspot_proxy"), _weights(ref)
    assert proxy.keys() == expected.keys() and all(torch.equal(proxy[k], expected[k]) for k in proxy)
    # a second precompute keeps it; unlearn finds it through the same --artifacts-dir
    before = (art / "blindspot_proxy" / "COMPLETE").read_text()
    assert main(["precompute", *args]) == 0
    assert capsys.readouterr().out.startswith(f"kept {art / 'blindspot_proxy'}")
    assert (art / "blindspot_proxy" / "COMPLETE").read_text() == before
    args[args.index("model.pretrained=nowhere")] = f"model.pretrained={ref}"
    assert main(["unlearn", *args, "--output-dir", str(out)]) == 0
    saved = load_config(out / "config.resolved.yaml")
    assert saved.method.proxy == str(art / "blindspot_proxy") and saved.method.cond_drop == 0.2


def test_precompute_resumes_an_interrupted_proxy_run(tmp_path, capsys):
    art, ref = tmp_path / "art", tmp_path / "ref"
    args = ["--config", str(SMOKE / "blindspot.yaml"), *sets(*TINY, "train.steps=1"), "--artifacts-dir", str(art),
            "--no-progress"]
    assert main(["precompute", *args]) == 0
    (art / "blindspot_proxy" / "COMPLETE").unlink()  # as a run stopped after its step-1 checkpoint
    args[args.index("train.steps=1")] = "train.steps=3"
    capsys.readouterr()
    assert main(["precompute", *args]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-2])
    assert info["resumed"] is True and info["steps"] == 3
    assert main(["train", "--config", str(SMOKE / "blindspot_proxy.yaml"), *sets(*TINY, "train.steps=3"),
                 "--output-dir", str(ref), "--no-progress"]) == 0
    assert json.loads((art / "blindspot_proxy" / "COMPLETE").read_text())["steps"] == 3
    proxy, expected = _weights(art / "blindspot_proxy"), _weights(ref)
    assert all(torch.equal(proxy[k], expected[k]) for k in expected)  # resumed = uninterrupted


def test_precompute_refuses_a_proxy_config_of_other_forget_classes(tmp_path, capsys):
    art = tmp_path / "art"
    other = REPO / "DDPM" / "configs" / "digits_2_8" / "smoke" / "blindspot_proxy.yaml"  # trains without 2 and 8
    code = main(["precompute", "--config", str(SMOKE / "blindspot.yaml"), *sets(*TINY, f"method.proxy_config={other}"),
                 "--artifacts-dir", str(art), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not art.exists() and len(err) == 1
    assert err[0].startswith("error: method.proxy_config") and "[2, 8]" in err[0] and "forgets [0]" in err[0]
    code = main(["precompute", "--config", str(SMOKE / "blindspot.yaml"), *sets(*TINY, "method.proxy_config=null"),
                 "--artifacts-dir", str(art), "--no-progress"])
    assert code == 2 and "config key 'method.proxy_config' is not set" in capsys.readouterr().err and not art.exists()
