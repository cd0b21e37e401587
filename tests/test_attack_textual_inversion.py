"""The `textual_inversion` attack (Concept Inversion, Pham et al. 2024) on the tiny pipeline: the learned token
lowers the attacked model's denoising loss, the attacked prompt's embeddings, resuming from the saved token,
the CLI end to end and its one-line errors."""

import os
from pathlib import Path

import pytest
import sd_fixtures
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from erasediff.attacks import get_attack
from erasediff.attacks.context import AttackContext
from erasediff.attacks.textual_inversion import TextualInversion
from erasediff.cli import main
from erasediff.data.prompts import PromptRow
from erasediff.experiment import load_config
from erasediff.generate import load_pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")
tiny_pipeline = sd_fixtures.tiny_pipeline  # the session fixture: a tiny random SD pipeline folder
CONFIGS = Path(__file__).resolve().parents[1] / "StableDiffusion" / "configs"
SMOKE = str(CONFIGS / "smoke" / "erasediff_u.yaml")  # robustness.concept: nudity (one token of the tiny tokenizer)
SMOKE_TI = str(CONFIGS / "smoke" / "attacks" / "textual_inversion.yaml")


@pytest.fixture(scope="module")
def ctx(tiny_pipeline, tmp_path_factory):
    """An AttackContext on the tiny pipeline (its own UNet attacked) with 3 random target images per prompt."""
    images = sd_fixtures.write_image_folder(tmp_path_factory.mktemp("ti_targets"), {"nudity": 3, "naked": 3})
    cfg = load_config(SMOKE, [f"model.pretrained={tiny_pipeline}"], (SMOKE_TI,))
    pipe = load_pipeline(str(tiny_pipeline), None, torch.float32, cfg.generate.scheduler)
    targets = {k: sorted(images.glob(f"{k}_*.png")) for k in (0, 1)}
    return AttackContext(cfg, pipe, torch.device("cpu"), lambda paths: [], targets)


ROWS = [PromptRow("nudity", 400, None, 0), PromptRow("naked", 410, None, 1)]


def _attack(ctx, **keys) -> TextualInversion:
    return get_attack("textual_inversion")(ctx.cfg.attack.model_copy(update=keys))


def test_training_lowers_the_attacked_models_denoising_loss(ctx):
    atk = _attack(ctx, steps=100, lr=0.05, batch_size=4, flip_p=0.0, templates=("a photo of a {}",))
    placeholder = atk.initializer_id(ctx)
    assert placeholder == ctx.prompt_tokens(ctx.tokenize("nudity"))[0]  # null initializer = robustness.concept
    table = ctx.token_table.detach()
    # a FIXED evaluation set: every target latent 8 times, with its own t and noise
    g = torch.Generator().manual_seed(123)
    z0 = ctx.latents_of(ctx.targets[0] + ctx.targets[1]).repeat(8, 1, 1, 1)
    t = torch.randint(0, ctx.num_train_timesteps, (len(z0),), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    ids, mask = atk.layout(ctx, ["a photo of a ", ""], placeholder)

    def loss(v):
        with torch.no_grad():
            return ctx.denoising_loss(z0, ctx.encode(ids, atk.embeds(table, ids, mask, v)), t, noise).item()

    v0 = table[placeholder].float().clone()
    atk.prepare(ctx, ROWS)
    before, after = loss(v0), loss(atk.embedding)
    print(f"denoising loss: initial token {before:.6f}, learned {after:.6f}; "
          f"{atk.report['seconds_per_step']:.4f} s/step")
    assert after < before
    assert torch.equal(ctx.token_table.detach(), table)  # the text encoder's table is untouched
    state = atk.state_dict()
    assert state["embedding"].shape == (table.shape[1],) and float(state["images"]) == 6
    again = _attack(ctx)
    again.load_state_dict(state)
    assert torch.equal(again.embedding, atk.embedding) and again.report == pytest.approx(atk.report)


def test_attacked_prompt_holds_the_learned_token_at_the_placeholder(ctx):
    table = ctx.token_table.detach()
    v = torch.randn(table.shape[1], generator=torch.Generator().manual_seed(0))
    atk = _attack(ctx)
    atk.load_state_dict({"embedding": v})
    placeholder = atk.initializer_id(ctx)
    row = PromptRow("an image of a church", 1, None, 7)
    adv = atk.attack(ctx, row, oracle=None, generator=torch.Generator())
    assert adv.text == "<ti-token> an image of a church" and adv.info["learned_positions"] == [1]
    # the ids are those of the prompt with the word in front, spelt as the initializer
    assert torch.equal(adv.input_ids, ctx.assemble([placeholder, *ctx.prompt_tokens(ctx.tokenize(row.prompt))]))
    assert adv.token_embeds.shape == (len(adv.input_ids), table.shape[1])
    assert torch.equal(adv.token_embeds[1], v)
    others = torch.arange(len(adv.input_ids)) != 1
    assert torch.equal(adv.token_embeds[others], table[adv.input_ids][others])
    # the context's hook is exact: the table's own rows give the plain encoding
    ids = adv.input_ids
    with torch.no_grad():
        assert torch.equal(ctx.encode(ids, table[ids]), ctx.encode(ids))
        assert not torch.allclose(ctx.encode(ids, adv.token_embeds), ctx.encode(ids))
    # a suffix template, and a prompt too long for L: text is dropped, the word stays
    suffix = _attack(ctx, prompt_template="{prompt}, {token}")
    suffix.load_state_dict({"embedding": v})
    long = suffix.adversarial(ctx, " ".join(["photo"] * 40))
    L = ctx.tokenizer.model_max_length
    assert long.input_ids[L - 2] == placeholder and torch.equal(long.token_embeds[L - 2], v)
    assert long.input_ids[-1] == ctx.tokenizer.eos_token_id
    # a training template tokenised by parts = the whole text with the word spelt as the initializer
    for template, prompt in (("a photo of a {}", "x"), ("{} {prompt}", "an image of a tench"),
                             ("the {}, {prompt}!", "wearing clothes")):
        parts = [p.replace("{prompt}", prompt) for p in template.split("{}")]
        ids, mask = atk.layout(ctx, parts, placeholder)
        assert torch.equal(ids, ctx.tokenize(template.replace("{}", "nudity").replace("{prompt}", prompt)))
        assert mask.sum() == 1 and ids[mask].item() == placeholder


def _cli(pipeline, out, *sets):
    args = ["attack", "--config", SMOKE, "--attack", SMOKE_TI, "--set", f"model.pretrained={pipeline}",
            "--set", "robustness.max_prompts=2", "--set", "robustness.attack_all=true",
            "--model", str(pipeline), "--output-dir", str(out), "--no-progress"]
    return args + [a for s in sets for a in ("--set", s)]


def test_cli_end_to_end_and_resume_loads_the_token(tiny_pipeline, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ti"
    assert main(_cli(tiny_pipeline, out)) == 0
    assert "textual_inversion: ASR" in capsys.readouterr().out
    for name in ("metrics.json", "manifest.csv", "attack_state.safetensors", "attack.json"):
        assert (out / name).is_file(), name
    state = load_file(str(out / "attack_state.safetensors"))
    assert state["embedding"].shape == (32,) and {"loss_first", "loss_last", "seconds"} <= set(state)
    first = {}
    for case in (0, 1):
        path = out / "adversarial" / f"{case}.safetensors"
        tensors = load_file(str(path))
        assert tensors["token_embeds"].shape == (16, 32)  # L = the tiny tokenizer's 16, D = 32
        assert torch.equal(tensors["token_embeds"][1], state["embedding"])
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["text"] == "<ti-token> nudity"
        first[case] = tensors["token_embeds"]
    # resume: a run interrupted after `prepare` (prompt 1 not done) loads the token and never trains again
    saved = (out / "attack_state.safetensors").read_bytes()
    for path in (out / "metrics.json", out / "records" / "1.json", out / "adversarial" / "1.safetensors"):
        path.unlink()

    def no_training(self, ctx, rows):
        raise AssertionError("prepare() ran again on resume")

    monkeypatch.setattr(TextualInversion, "prepare", no_training)
    assert main(_cli(tiny_pipeline, out)) == 0
    assert (out / "attack_state.safetensors").read_bytes() == saved
    assert torch.equal(load_file(str(out / "adversarial" / "1.safetensors"))["token_embeds"], first[1])
    assert (out / "metrics.json").is_file()


@pytest.mark.parametrize("setting, message", [
    ('attack.templates=["a photo of a {}", "a photo"]', "'attack.templates': every template needs '{}'"),
    ("attack.prompt_template=<w> {prompt}", "'attack.prompt_template' needs '{token}'"),
    ("robustness.concept=null", "set robustness.concept"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tiny_pipeline, tmp_path, capsys, setting, message):
    out = tmp_path / "never"
    assert main(_cli(tiny_pipeline, out, setting)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not out.exists()
