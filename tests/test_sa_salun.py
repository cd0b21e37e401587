"""Selective Amnesia and SalUn (docs/baselines.md): Fisher, EWC, surrogate, replay, saliency mask, masked step."""

import json
import os

import pytest
import torch
from helpers import SMOKE, TINY, tiny_config
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from erasediff import checkpoint
from erasediff.backbones.class_cond import ClassConditionalBackbone
from erasediff.build import build_run
from erasediff.cli import main
from erasediff.errors import ErasediffError
from erasediff.experiment import config_from_text, load_config
from erasediff.methods import get_method
from erasediff.methods import salun as salun_module
from erasediff.methods.salun import compute_saliency_mask, top_fraction_mask
from erasediff.methods.selective_amnesia import (
    compute_fisher,
    fisher_diagonal,
    fisher_timestep_grid,
)

FAST_FISHER = ("method.fisher_source=real", "method.fisher_samples_per_class=1", "method.fisher_timesteps=2")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A Fisher (smoke settings: generated samples) and a mask of the tiny model, computed once."""
    d = tmp_path_factory.mktemp("files")
    compute_fisher(tiny_config("selective_amnesia"), d / "fisher.safetensors", progress=False)
    compute_saliency_mask(tiny_config("salun"), d / "mask.safetensors", progress=False)
    return d


def sa_run(files, tmp_path, *overrides):
    return build_run(tiny_config("selective_amnesia", f"method.fisher={files / 'fisher.safetensors'}",
                               f"output_root={tmp_path}", *overrides))


def salun_run(files, tmp_path, *overrides):
    return build_run(tiny_config("salun", f"method.mask={files / 'mask.safetensors'}", f"output_root={tmp_path}", *overrides))


# ------------------------------------------------------------------------------------------- Fisher
def test_fisher_matches_brute_force_per_sample_loop(monkeypatch):
    run = build_run(tiny_config("pretrain", "diffusion.num_train_timesteps=6"))
    bb, model, params = run.state.backbone, run.state.model, run.state.params
    model.eval()
    images = torch.stack([run.dataset.dataset[i][0] for i in (0, 1)])  # 2 real digits (2, 1, 16, 16)
    conds = torch.tensor([3, 7])
    grid = fisher_timestep_grid(6, 3, bb.device)  # 3 of T = 6 timesteps: gradient scale 2
    seen = []  # (x0, eps, t, cond) of every batch the Fisher pass sends through the network
    add_noise, predict = bb.add_noise, bb.predict
    monkeypatch.setattr(bb, "add_noise", lambda x0, eps, t: seen.append([x0, eps, t]) or add_noise(x0, eps, t))
    monkeypatch.setattr(bb, "predict", lambda m, xt, t, c: seen[-1].append(c) or predict(m, xt, t, c))
    fisher = fisher_diagonal(bb, model, params, images, conds, grid, chunks=2, cond_drop=0.5, reduction="sum",
                             generator=torch.Generator().manual_seed(0), progress=False)
    assert len(seen) == 4  # 2 samples x 2 chunks
    assert any(bool((r[3] == 10).any()) for r in seen)  # label dropout hit some terms (null class = 10)
    # brute force: one forward per (sample, t), plain autograd, x_t written out by hand
    abar = bb.noise_scheduler.alphas_cumprod
    brute = [torch.zeros_like(p) for p in params]
    for n in range(2):
        g = [torch.zeros_like(p) for p in params]
        records = seen[2 * n : 2 * n + 2]
        assert sorted(torch.cat([r[2] for r in records]).tolist()) == grid.tolist()  # every t once per sample
        for x0, eps, t, cond in records:
            assert torch.equal(x0[0], images[n])
            for j in range(len(t)):
                xt = abar[t[j]].sqrt() * images[n] + (1 - abar[t[j]]).sqrt() * eps[j]
                loss = 2.0 * (eps[j] - model(xt[None], t[j : j + 1], cond[j : j + 1])[0]).square().sum()
                for acc, gr in zip(g, torch.autograd.grad(loss, params, allow_unused=True)):
                    acc += 0 if gr is None else gr
        for b, gi in zip(brute, g):
            b += gi.square() / 2
    assert all(torch.allclose(f, b, rtol=1e-3, atol=1e-6 * float(b.abs().max())) for f, b in zip(fisher, brute))
    assert sum(float(f.sum()) for f in fisher) > 0


def test_compute_fisher_file_is_keyed_by_trainable_params_and_never_overwritten(files):
    path = files / "fisher.safetensors"
    run = sa_run(files, path.parent / "unused")  # build_run accepts it
    fisher = load_file(str(path))
    assert set(fisher) == set(run.state.param_names)
    assert all(fisher[n].shape == p.shape for n, p in zip(run.state.param_names, run.state.params))
    assert all(bool((f >= 0).all()) for f in fisher.values()) and any(bool((f > 0).any()) for f in fisher.values())
    with safe_open(str(path), framework="pt") as f:
        assert config_from_text(f.metadata()["config"]).method.name == "selective_amnesia"
    before = path.read_bytes()
    with pytest.raises(ErasediffError, match="already exists"):
        compute_fisher(tiny_config("selective_amnesia", *FAST_FISHER), path, progress=False)
    assert path.read_bytes() == before


@pytest.mark.parametrize("input_range", ["[0,1]", "[-1,1]"])
def test_fisher_input_range_option_changes_the_input(tmp_path, monkeypatch, input_range):
    seen = []
    real = ClassConditionalBackbone.add_noise
    monkeypatch.setattr(ClassConditionalBackbone, "add_noise", lambda self, x0, e, t: seen.append(x0) or real(self, x0, e, t))
    compute_fisher(tiny_config("selective_amnesia", *FAST_FISHER, f"method.fisher_input_range='{input_range}'"),
                   tmp_path / "f.safetensors", progress=False)
    lowest = min(float(x.min()) for x in seen)
    assert lowest >= 0.0 if input_range == "[0,1]" else lowest < -0.5  # digits have a -1 background


# ----------------------------------------------------------------------------------------------- SA
def test_ewc_is_zero_at_theta_star_and_positive_after_a_step(files, tmp_path):
    run = sa_run(files, tmp_path, "train.lr=1e-2")
    m, s = run.method, run.state
    assert m.ewc_penalty(s).item() == 0.0
    logs = m.update(s, None, next(run.data.remain))  # the replayed D_r is the loop's remain stream
    assert logs["ewc"] == 0.0 and logs["loss_f"] > 0 and logs["loss_r"] > 0
    assert m.ewc_penalty(s).item() > 0


def test_surrogate_images_are_uniform_on_minus_one_one(files, tmp_path):
    run = sa_run(files, tmp_path, "data.forget_classes=[0, 3]")
    x, c = run.method.surrogate_batch(run.state, torch.Size((512, 1, 16, 16)))
    assert x.shape == (512, 1, 16, 16) and x.min() >= -1 and x.max() <= 1
    assert x.mean().item() == pytest.approx(0.0, abs=0.01)
    assert x.var().item() == pytest.approx(1 / 3, abs=0.01)  # U[-1, 1], not N(0, 1)
    assert (x < -0.9).float().mean().item() == pytest.approx(0.05, abs=0.01)
    assert set(c.tolist()) == {0, 3}


def test_generative_replay_draws_only_remaining_classes(files, tmp_path):
    run = sa_run(files, tmp_path, "data.forget_classes=[0, 3]")
    assert run.data.forget is None  # no real D_f needed; D_r is replayed: the loop's remain stream
    replay = run.data.remain
    labels = replay._tensors[1]
    assert sorted(set(labels.tolist())) == [1, 2, 4, 5, 6, 7, 8, 9] and len(labels) == 8 * 2
    images = replay._tensors[0]
    assert images.min() >= -1 and images.max() <= 1
    assert set(next(replay)[1].tolist()) <= {1, 2, 4, 5, 6, 7, 8, 9}
    real = sa_run(files, tmp_path, "method.replay=real")
    assert real.data.remain is not None and real.data.remain._tensors is not replay._tensors
    assert len(real.data.remain.indices) > len(labels)  # the real D_r


# -------------------------------------------------------------------------------------------- SalUn
def test_top_fraction_mask_is_exact_with_ties():
    masks = top_fraction_mask([torch.ones(3), torch.tensor([[1.0, 5.0], [0.0, 1.0]])], 0.5)
    assert sum(int(k.sum()) for k in masks) == 3 and bool(masks[1][0, 1])  # 7 entries -> int(3.5) = 3
    assert masks[0].tolist() == [True, True, False]  # the ties at 1.0 in parameter order


@pytest.mark.parametrize("fraction", [0.0, 0.013, 0.5, 0.999, 1.0])
def test_top_fraction_mask_is_the_stable_sort_selection(fraction):
    g = torch.Generator().manual_seed(0)
    # many ties (rounded values), zeros and a huge value: the bisection must match a stable descending sort
    scores = [torch.randint(0, 7, (5, 9), generator=g).float() / 3, torch.zeros(4), torch.tensor([1e30, 2.0]),
              torch.rand(3, 2, 2, generator=g)]
    flat = torch.cat([s.flatten() for s in scores])
    expected = torch.zeros(flat.numel(), dtype=torch.bool)
    expected[torch.argsort(flat, descending=True, stable=True)[: int(flat.numel() * fraction)]] = True
    got = torch.cat([m.flatten() for m in top_fraction_mask(scores, fraction)])
    assert torch.equal(got, expected)


def test_saliency_mask_fraction_keys_and_guided_forward(tmp_path, monkeypatch):
    calls = []
    real = ClassConditionalBackbone.guided_eps

    def spy(self, model, xt, t, cond, sample_cfg):
        calls.append((sample_cfg.guidance, sample_cfg.guidance_convention, torch.is_grad_enabled()))
        return real(self, model, xt, t, cond, sample_cfg)

    monkeypatch.setattr(ClassConditionalBackbone, "guided_eps", spy)
    out = tmp_path / "mask.safetensors"
    info = compute_saliency_mask(tiny_config("salun", "method.mask_fraction=0.3"), out, progress=False)
    assert calls == [(2.0, "sa", True)]  # one batch, CFG w = 2 (SA convention), with gradients
    mask = load_file(str(out))
    run = build_run(tiny_config("salun", f"method.mask={out}"))
    assert set(mask) == set(run.state.param_names)
    n = sum(k.numel() for k in mask.values())
    assert info["ones"] == sum(int(k.sum()) for k in mask.values()) == int(n * 0.3)
    assert all(k.dtype == torch.bool for k in mask.values())
    with pytest.raises(ErasediffError, match="already exists"):
        compute_saliency_mask(tiny_config("salun"), out, progress=False)


@pytest.mark.parametrize("forget_loss", ["random_label", "neggrad"])
def test_salun_step_moves_only_masked_in_weights(files, tmp_path, monkeypatch, forget_loss):
    run = salun_run(files, tmp_path, "train.lr=1e-2", f"method.forget_loss={forget_loss}")
    m, s = run.method, run.state
    before = [p.detach().clone() for p in s.params]
    clip_saw_unmasked = []
    real_clip = torch.nn.utils.clip_grads_with_norm_

    def spy(params, max_norm, total_norm):
        clip_saw_unmasked.append(any(bool((p.grad[k == 0] != 0).any()) for p, k in zip(s.params, m.mask)))
        return real_clip(params, max_norm, total_norm)

    monkeypatch.setattr(salun_module.torch.nn.utils, "clip_grads_with_norm_", spy)
    logs = m.update(s, next(run.data.forget), next(run.data.remain))
    assert clip_saw_unmasked == [True]  # the mask is applied after clipping
    assert (logs["loss_f"] < 0) == (forget_loss == "neggrad")
    moved_in = 0
    for p, b, k in zip(s.params, before, m.mask):
        assert torch.equal(p[k == 0], b[k == 0])
        moved_in += int((p[k == 1] != b[k == 1]).sum())
    assert moved_in > 0


# ---------------------------------------------------------------------------- bad Fisher / mask files
@pytest.mark.parametrize("method,key", [("selective_amnesia", "fisher"), ("salun", "mask")])
def test_missing_or_mismatched_file_fails_before_writing(files, tmp_path, method, key):
    out = tmp_path / "results"

    def attempt(value):
        build_run(tiny_config(method, f"method.{key}={value}", f"output_root={out}"))

    with pytest.raises(ErasediffError, match=f"method.{key}.*not set"):
        attempt("null")
    with pytest.raises(ErasediffError, match=f"{tmp_path}/nope.safetensors"):
        attempt(tmp_path / "nope.safetensors")
    good = load_file(str(files / f"{key}.safetensors"))
    first = sorted(good)[0]
    bad = {n: t for n, t in good.items() if n != first} | {"bogus.weight": torch.zeros(2)}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ErasediffError, match=rf"{tmp_path}/bad.safetensors.*{first}.*bogus.weight"):
        attempt(tmp_path / "bad.safetensors")
    save_file(good | {first: torch.zeros(good[first].numel() + 1)}, str(tmp_path / "shape.safetensors"))
    with pytest.raises(ErasediffError, match=rf"{tmp_path}/shape.safetensors: '{first}' has shape \({good[first].numel() + 1},\)"):
        attempt(tmp_path / "shape.safetensors")
    assert not out.exists()


# ------------------------------------------------------------------------ precompute (declared artifacts)
def sets(*items: str) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def test_artifact_paths_default_to_the_experiment_folder_unless_set(tmp_path):
    sa = get_method("selective_amnesia")
    cfg = tiny_config("selective_amnesia", f"output_root={tmp_path}")
    assert sa.with_artifact_paths(cfg).method.fisher == str(tmp_path / cfg.experiment / "fisher.safetensors")
    assert sa.with_artifact_paths(cfg, tmp_path / "a").method.fisher == str(tmp_path / "a" / "fisher.safetensors")
    given = tiny_config("selective_amnesia", "method.fisher=mine.safetensors")
    assert sa.with_artifact_paths(given, tmp_path / "a").method.fisher == "mine.safetensors"
    finetune = tiny_config("finetune")
    assert get_method("finetune").with_artifact_paths(finetune, tmp_path) == finetune


def test_precompute_writes_what_unlearn_reads_and_keeps_it(tmp_path, capsys):
    art, run, base = tmp_path / "art", tmp_path / "run", tmp_path / "base"
    build_run(tiny_config("pretrain")).state.model.save_pretrained(base)  # a random-init "Unscrubbed" model
    over = [*TINY, "train.steps=1", f"model.pretrained={base}"]
    args = ["--config", str(SMOKE / "salun.yaml"), *sets(*over), "--artifacts-dir", str(art), "--no-progress"]
    assert main(["precompute", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    path = art / "salun_mask.safetensors"
    assert lines[-1] == f"wrote {path} (method.mask)" and json.loads(lines[0])["path"] == str(path)
    # the same file as computing it from the config directly
    direct = tmp_path / "direct.safetensors"
    compute_saliency_mask(load_config(SMOKE / "salun.yaml", over), direct, progress=False)
    got, want = load_file(str(path)), load_file(str(direct))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    before = path.read_bytes()
    assert main(["precompute", *args]) == 0
    assert capsys.readouterr().out.startswith(f"kept {path} (method.mask")
    assert path.read_bytes() == before
    assert main(["unlearn", *args, "--output-dir", str(run)]) == 0
    assert load_config(run / "config.resolved.yaml").method.mask == str(path)
    # without --artifacts-dir both commands use <output_root>/<experiment>
    capsys.readouterr()
    root = ["--config", str(SMOKE / "salun.yaml"), *sets(*TINY, f"output_root={tmp_path / 'res'}"), "--no-progress"]
    assert main(["precompute", *root]) == 0
    assert (tmp_path / "res" / load_config(SMOKE / "salun.yaml").experiment / "salun_mask.safetensors").is_file()


def test_precompute_of_a_method_without_artifacts_and_bad_input(tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["precompute", "--config", str(SMOKE / "erasediff.yaml"), "--artifacts-dir", str(art)]) == 0
    assert capsys.readouterr().out.strip() == "method 'erasediff' reads no precomputed files: nothing to do"
    code = main(["precompute", "--config", str(SMOKE / "selective_amnesia.yaml"), *sets("method.fisher_chunks=0"),
                 "--artifacts-dir", str(art)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: config key 'method.fisher_chunks'")
    assert not art.exists()


def test_param_file_is_never_replaced_when_it_appears_meanwhile(tmp_path, monkeypatch):
    out, real = tmp_path / "f.safetensors", checkpoint.save_file

    def racing(tensors, filename, metadata=None):  # another process finishes first
        out.write_bytes(b"theirs")
        real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", racing)
    with pytest.raises(ErasediffError, match="appeared while it was computed"):
        checkpoint.save_param_file(out, {"w": torch.ones(2)}, "config: x", "fisher")
    assert out.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["f.safetensors"]
    monkeypatch.undo()
    with pytest.raises(ErasediffError, match="already exists"):
        checkpoint.save_param_file(out, {"w": torch.ones(2)}, "config: x", "fisher")
