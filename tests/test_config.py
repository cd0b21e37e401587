"""Config loading: YAML 1.2 scalars, base includes, typed overrides, and clear errors."""

from pathlib import Path

import pytest

from erasediff.config import dump_config, yaml_load
from erasediff.errors import ConfigError
from erasediff.experiment import config_from_text, load_config

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "DDPM" / "configs" / "digits"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def minimal(tmp_path: Path, extra: str = "") -> Path:
    return write(tmp_path, "exp.yaml", "experiment: t\nmethod:\n  name: erasediff\n" + extra)


def test_yaml12_scalars():
    data = yaml_load("a: 1e-5\nb: no\nc: true\nd: 3\ne: .5\nf: -2E+3\ng: off")
    assert data == {"a": 1e-5, "b": "no", "c": True, "d": 3, "e": 0.5, "f": -2000.0, "g": "off"}
    assert isinstance(data["d"], int)


def test_float_string_and_bool_words_are_coerced(tmp_path):
    cfg = load_config(minimal(tmp_path, "train:\n  lr: 1e-5\n  ema_decay: '0.99'\ndata:\n  hflip: no\n  download: yes\n"))
    assert cfg.train.lr == pytest.approx(1e-5) and isinstance(cfg.train.lr, float)
    assert cfg.train.ema_decay == pytest.approx(0.99)
    assert cfg.data.hflip is False and cfg.data.download is True


def test_unknown_key_names_path_and_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'.*did you mean 'lr'.*valid keys"):
        load_config(minimal(tmp_path, "train:\n  lrr: 1e-4\n"))


def test_unknown_method_key_is_typed_by_method_name(tmp_path):
    # `cond_drop` is a finetune key, not an erasediff key
    with pytest.raises(ConfigError, match=r"'method\.cond_drop'.*valid keys here: name, target"):
        load_config(minimal(tmp_path, "  cond_drop: 0.1\n"))


def test_wrong_type_and_invalid_choice(tmp_path):
    with pytest.raises(ConfigError, match=r"'train\.steps' must be int \(got 'many'\)"):
        load_config(minimal(tmp_path, "train:\n  steps: many\n"))
    with pytest.raises(ConfigError, match=r"'method\.target' must be one of: uniform, random_label"):
        load_config(minimal(tmp_path, "  target: gaussian\n"))
    with pytest.raises(ConfigError, match=r"'data\.forget_classes' must be a list"):
        load_config(minimal(tmp_path, "data:\n  forget_classes: 3\n"))
    with pytest.raises(ConfigError, match=r"'method\.block_size' must be >= 1"):
        load_config(minimal(tmp_path, "  block_size: 0\n"))


def test_unknown_method_lists_methods(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown method 'erasedif'.*valid methods: .*erasediff.*finetune"):
        load_config(write(tmp_path, "x.yaml", "experiment: t\nmethod:\n  name: erasedif\n"))


def test_missing_file_and_missing_required(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="missing required config key.*experiment"):
        load_config(write(tmp_path, "x.yaml", "method:\n  name: finetune\n"))


def test_base_include_and_overrides(tmp_path):
    write(tmp_path, "base.yaml", "experiment: b\nseed: 3\ntrain:\n  lr: 2e-4\n  steps: 10\nmethod:\n  name: erasediff\n  lambda_value: 0.5\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\ntrain:\n  steps: 20\n")
    cfg = load_config(child, ["train.lr=1e-3", "method.inner_steps=5", "data.forget_classes=[2, 8]"])
    assert (cfg.seed, cfg.train.steps, cfg.train.lr) == (3, 20, 1e-3)
    assert cfg.method.lambda_value == 0.5 and cfg.method.inner_steps == 5
    assert cfg.data.forget_classes == (2, 8)
    # switching method drops the base's method keys instead of failing on them
    other = load_config(child, ["method.name=finetune"])
    assert other.method.name == "finetune"


def test_override_errors(tmp_path):
    with pytest.raises(ConfigError, match="--set expects key=value"):
        load_config(minimal(tmp_path), ["train.lr"])
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.nope'"):
        load_config(minimal(tmp_path), ["train.nope=1"])


def test_base_cycle(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_resolved_config_round_trips():
    cfg = load_config(DIGITS / "erasediff.yaml")
    assert config_from_text(dump_config(cfg)) == cfg
    assert cfg.run_dir() == Path("results/digits_forget0/erasediff/seed0")


@pytest.mark.parametrize("path", sorted(REPO.glob("DDPM/configs/**/*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_configs_validate(path):
    if path.name == "base.yaml":
        pytest.skip("base files are completed by the experiment files")
    load_config(path)


def test_booleans_are_not_numbers(tmp_path):
    # pydantic's lax mode alone would read `steps: true` as 1 step
    with pytest.raises(ConfigError, match=r"^config key 'train\.steps' must be int \(got True\)$"):
        load_config(minimal(tmp_path), ["train.steps=true"])
    with pytest.raises(ConfigError, match=r"^config key 'data\.forget_classes\[1\]' must be int \(got False\)$"):
        load_config(minimal(tmp_path), ["data.forget_classes=[0, false]"])
    assert load_config(minimal(tmp_path), ["train.ema_warmup=on"]).train.ema_warmup is True


def test_method_section_is_the_registry_union(tmp_path):
    import typing

    from erasediff.config import RunConfig
    from erasediff.methods import METHODS

    cfg = load_config(minimal(tmp_path))
    union = typing.get_args(RunConfig.model_fields["method"].annotation)
    assert set(union) == {m.Config for m in METHODS.values()} and type(cfg.method) is METHODS["erasediff"].Config
    with pytest.raises(ConfigError, match=r"unknown method 'neggrd'.*did you mean 'neggrad'\?\); valid methods: "
                                          + ", ".join(sorted(METHODS)) + "$"):
        load_config(minimal(tmp_path), ["method.name=neggrd"])


def test_stable_diffusion_keys_need_that_backbone(tmp_path):
    with pytest.raises(ConfigError, match=r"'model\.sd\.latent' applies to backbone stable_diffusion only"):
        load_config(minimal(tmp_path), ["model.sd.latent=mean"])
    with pytest.raises(ConfigError, match=r"'model\.trainable' = xattn applies to backbone stable_diffusion"):
        load_config(minimal(tmp_path), ["model.trainable=xattn"])
    sd = load_config(REPO / "StableDiffusion" / "configs" / "smoke" / "esd_x.yaml", ["model.sd.latent=mean"])
    assert (sd.model.trainable, sd.model.sd.latent) == ("xattn", "mean")


def test_configs_are_frozen_values(tmp_path):
    from pydantic import ValidationError

    a, b = load_config(minimal(tmp_path)), load_config(minimal(tmp_path))
    assert a == b and hash(a) == hash(b) and a is not b
    with pytest.raises(ValidationError, match="frozen"):
        a.train.lr = 1.0
    changed = a.model_copy(update={"seed": 5})
    assert changed != a and changed.seed == 5 and a.seed == 0
