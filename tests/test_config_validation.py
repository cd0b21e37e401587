"""Range, finiteness and duplicate-key validation of configs, at load time (before any model is built).

Every bad value must raise ConfigError with one line naming the dotted key; every documented edge value
must load and land in the config unchanged; every shipped experiment file must still load.
"""

import math
import re
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from erasediff.config import (
    RunConfig,
    SampleConfig,
    TrainConfig,
    apply_overrides,
    build_dataclass,
    load_yaml_tree,
    yaml_load,
)
from erasediff.errors import ConfigError
from erasediff.experiment import build_run_config, load_config
from erasediff.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "DDPM" / "configs" / "digits" / "smoke"
SD_SMOKE = REPO / "StableDiffusion" / "configs" / "smoke"
#: a smoke config of every method (ESD exists for Stable Diffusion only; loading it builds nothing)
METHOD_CONFIG = {
    "erasediff": SMOKE / "erasediff.yaml",
    "finetune": SMOKE / "finetune.yaml",
    "neggrad": SMOKE / "neggrad.yaml",
    "blindspot": SMOKE / "blindspot.yaml",
    "salun": SMOKE / "salun.yaml",
    "selective_amnesia": SMOKE / "selective_amnesia.yaml",
    "esd": SD_SMOKE / "esd_u.yaml",
}


def test_every_method_has_a_smoke_config():
    assert set(METHOD_CONFIG) == set(METHODS)
    for name, path in METHOD_CONFIG.items():
        assert load_config(path).method.name == name


def bad(override: str, key: str | None = None, config: str = "erasediff"):
    """A (config, override, key the error must name) case; the key defaults to the override's."""
    key = key or override.split("=", 1)[0]
    return pytest.param(METHOD_CONFIG[config], override, key, id=f"{config}:{override}")


BAD = [
    # --- train
    bad("train.steps=0"), bad("train.steps=-5"), bad("train.steps=2.5"),
    bad("train.lr=0"), bad("train.lr=-1e-4"), bad("train.lr=1e999"),
    bad("train.betas=[1.0, 0.999]", "train.betas"), bad("train.betas=[0.9, -0.1]", "train.betas"),
    bad("train.betas=[0.9, 1.5]", "train.betas"), bad("train.betas=[0.9]", "train.betas"),
    bad("train.eps=0"), bad("train.eps=-1e-8"),
    bad("train.weight_decay=-0.01"),
    bad("train.warmup_steps=-1"),
    bad("train.grad_clip=0"), bad("train.grad_clip=-1.0"),
    bad("train.ema_decay=1.0001"), bad("train.ema_decay=-0.5"),
    bad("train.log_every=0"), bad("train.sample_every=-1"), bad("train.checkpoint_every=-10"),
    bad("train.nonfinite=ignore"), bad("train.nonfinite=true"),
    bad("train.checkpoint_minutes=-1"), bad("train.checkpoint_minutes=-0.5"), bad("train.checkpoint_minutes=soon"),
    bad("train.keep_checkpoints=0"), bad("train.keep_checkpoints=-2"), bad("train.keep_checkpoints=1.5"),
    # --- diffusion
    bad("diffusion.num_train_timesteps=0"),
    bad("diffusion.beta_start=0"), bad("diffusion.beta_start=-1e-4"), bad("diffusion.beta_end=1.0"),
    bad("diffusion.beta_end=2"), bad("diffusion.beta_start=0.05", "diffusion.beta_start"),  # > beta_end 0.02
    bad("diffusion.beta_end=1e-4", "diffusion.beta_start"),  # == beta_start
    bad("diffusion.num_train_timesteps=2", "sample.steps"),  # the smoke config samples 3 DDIM steps
    # --- sample
    bad("sample.steps=0"), bad("sample.steps=1001"), bad("sample.eta=-0.1"), bad("sample.eta=1.5"),
    bad("sample.guidance=-1"), bad("sample.batch_size=0"), bad("sample.grid_per_class=0"),
    bad("sample.seed=-1"), bad(f"sample.seed={2**63}"), bad("sample.seed=1e30"),
    # --- run
    bad("seed=-3"), bad(f"seed={2**64}"),
    # --- data
    bad("data.batch_size=0"), bad("data.forget_batch_size=0"), bad("data.num_workers=-1"),
    bad("data.forget_ratio=0"), bad("data.forget_ratio=1.01"), bad("data.forget_ratio=-0.5"),
    bad("data.forget_classes=[-1]", "data.forget_classes"), bad("data.forget_classes=[0, 3, 0]", "data.forget_classes"),
    bad("data.image_size=0"), bad("data.remain_generated=0"),
    # --- model.arch
    bad("model.arch.sample_size=0"), bad("model.arch.in_channels=0"), bad("model.arch.out_channels=-1"),
    bad("model.arch.num_classes=0"), bad("model.arch.layers_per_block=0"), bad("model.arch.norm_num_groups=0"),
    bad("model.arch.attention_head_dim=0"), bad("model.arch.norm_eps=0"), bad("model.arch.dropout=1.0"),
    bad("model.arch.dropout=-0.1"), bad("model.arch.freq_shift=-1"), bad("model.arch.downsample_padding=-1"),
    bad("model.arch.block_out_channels=[16, 0, 32]", "model.arch.block_out_channels"),
    bad("model.arch.block_out_channels=[]", "model.arch.block_out_channels"),
    bad("model.arch.block_out_channels=[16, 32]", "model.arch.block_out_channels"),  # 3 down / up blocks
    bad("model.arch.down_block_types=[DownBlock2D]", "model.arch.down_block_types"),
    bad("model.arch.up_block_types=[]", "model.arch.up_block_types"),
    bad("model.arch.norm_num_groups=6", "model.arch.norm_num_groups"),  # 16 and 32 are not multiples of 6
    # --- evaluate, classifier
    bad("evaluate.n_per_class=0"), bad("evaluate.n_forget=0"), bad("evaluate.metrics=[]"),
    bad("classifier.epochs=0"), bad("classifier.batch_size=0"), bad("classifier.lr=0"), bad("classifier.lr=-1"),
    bad("classifier.lr_head=0"), bad("classifier.weight_decay=-1"), bad("classifier.seed=-1"),
    # --- methods
    bad("method.lambda_value=-0.1"), bad("method.inner_steps=-1"), bad("method.inner_lr=0"),
    bad("method.inner_lr=-1e-3"), bad("method.block_size=0"), bad("method.remain_cond_drop=1.0"),
    bad("method.forget_cond_drop=-0.1"), bad("method.eta=.nan"), bad("method.eta=.inf"),
    bad("method.cond_drop=1", config="finetune"), bad("method.cond_drop=-0.2", config="finetune"),
    bad("method.cond_drop=1.0", config="neggrad"),
    bad("method.at_weight=-1", config="blindspot"), bad("method.cond_drop=1.0", config="blindspot"),
    bad("method.alpha=-1", config="salun"), bad("method.forget_cond_drop=1", config="salun"),
    bad("method.remain_cond_drop=-0.1", config="salun"), bad("method.mask_fraction=0", config="salun"),
    bad("method.mask_fraction=1.5", config="salun"), bad("method.mask_batches=0", config="salun"),
    bad("method.mask_guidance=-2", config="salun"), bad("method.mask_grad_clip=0", config="salun"),
    bad("method.lambda_ewc=-1", config="selective_amnesia"), bad("method.gamma=-0.5", config="selective_amnesia"),
    bad("method.replay_samples_per_class=0", config="selective_amnesia"),
    bad("method.fisher_samples_per_class=0", config="selective_amnesia"),
    bad("method.fisher_timesteps=0", config="selective_amnesia"),
    bad("method.fisher_timesteps=1001", config="selective_amnesia"),  # T = 1000
    bad("method.fisher_chunks=0", config="selective_amnesia"),
    bad("method.fisher_cond_drop=1.0", config="selective_amnesia"),
    bad("method.negative_guidance=-1", config="esd"), bad("method.start_guidance=-3", config="esd"),
    bad("method.ddim_steps=0", config="esd"), bad("method.ddim_steps=1001", config="esd"),
    bad("method.negative_guidance=.nan", config="esd"),
]


def assert_config_error(path, overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    assert f"'{key}" in message, f"{message!r} does not name {key!r}"
    return message


@pytest.mark.parametrize("path, override, key", BAD)
def test_bad_value_is_refused_naming_the_key(path, override, key):
    message = assert_config_error(path, [override], key)
    assert message.startswith("config key"), message


def test_messages_state_the_range_and_the_value():
    base = METHOD_CONFIG["erasediff"]
    cases = {
        "train.lr=-1": "config key 'train.lr' must be > 0 (got -1.0)",
        "train.lr=.nan": "config key 'train.lr' must be a finite number (got nan)",
        "train.ema_decay=2": "config key 'train.ema_decay' must be in [0, 1] or null (got 2.0)",
        "train.steps=0": "config key 'train.steps' must be >= 1 (got 0)",
        "model.arch.dropout=1": "config key 'model.arch.dropout' must be in [0, 1) (got 1.0)",
        "data.forget_ratio=0": "config key 'data.forget_ratio' must be in (0, 1] or null (got 0.0)",
    }
    for override, expected in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(base, [override])
        assert str(info.value) == expected


def test_type_errors_keep_their_wording():
    # the range checks come after type conversion: a wrong type is still reported as a wrong type
    with pytest.raises(ConfigError, match=r"config key 'train\.steps' must be int \(got 'many'\)"):
        load_config(METHOD_CONFIG["erasediff"], ["train.steps=many"])
    with pytest.raises(ConfigError, match=r"config key 'train\.grad_clip' must be float or null \(got 'big'\)"):
        load_config(METHOD_CONFIG["erasediff"], ["train.grad_clip=big"])
    with pytest.raises(ConfigError, match=r"'train\.nonfinite' must be one of: stop, skip_step"):
        load_config(METHOD_CONFIG["erasediff"], ["train.nonfinite=halt"])


# ------------------------------------------------------------------------------------- edge values
def good(override: str, expected, attr: str | None = None, config: str = "erasediff"):
    attr = attr or override.split("=", 1)[0]
    return pytest.param(METHOD_CONFIG[config], override, attr, expected, id=f"{config}:{override}")


GOOD = [
    good("train.steps=1", 1), good("train.ema_decay=1.0", 1.0), good("train.ema_decay=0", 0.0),
    good("train.ema_decay=null", None), good("train.grad_clip=null", None), good("train.grad_clip=1e-6", 1e-6),
    good("train.checkpoint_every=0", 0), good("train.sample_every=0", 0), good("train.warmup_steps=0", 0),
    good("train.weight_decay=0", 0.0), good("train.betas=[0, 0.999999]", (0.0, 0.999999)),
    good("train.lr=1e-12", 1e-12), good("train.lr='3e-4'", 3e-4), good("train.log_every=1", 1),
    good("train.nonfinite=skip_step", "skip_step"), good("train.nonfinite=stop", "stop"),
    good("train.checkpoint_minutes=0", 0.0), good("train.checkpoint_minutes=2.5", 2.5),
    good("train.keep_checkpoints=1", 1), good("train.keep_checkpoints=5", 5),
    good("diffusion.num_train_timesteps=3", 3),  # == sample.steps of the smoke config
    good("diffusion.beta_end=0.999", 0.999),
    good("sample.steps=1000", 1000), good("sample.steps=1", 1), good("sample.eta=1.0", 1.0), good("sample.eta=0", 0.0),
    good("sample.guidance=0", 0.0), good("sample.seed=0", 0), good(f"sample.seed={2**32 - 1}", 2**32 - 1),
    good("seed=0", 0), good("seed=123456789", 123456789),
    good("data.forget_ratio=1.0", 1.0), good("data.forget_ratio=null", None), good("data.forget_ratio=1e-3", 1e-3),
    good("data.num_workers=0", 0), good("data.forget_batch_size=1", 1), good("data.forget_classes=[]", ()),
    good("data.forget_classes=[9, 0]", (9, 0)), good("data.image_size=null", None),
    good("model.arch.dropout=0", 0.0), good("model.arch.freq_shift=0", 0),
    good("evaluate.n_forget=1", 1), good("classifier.lr_head=null", None), good("classifier.weight_decay=0", 0.0),
    good("method.lambda_value=0", 0.0), good("method.inner_steps=0", 0), good("method.inner_lr=null", None),
    good("method.eta=-0.5", -0.5), good("method.block_size=1", 1), good("method.forget_cond_drop=0.99", 0.99),
    good("method.cond_drop=0", 0.0, config="finetune"), good("method.at_weight=0", 0.0, config="blindspot"),
    good("method.mask_fraction=1.0", 1.0, config="salun"), good("method.mask_grad_clip=null", None, config="salun"),
    good("method.mask_guidance=0", 0.0, config="salun"),
    good("method.fisher_timesteps=1000", 1000, config="selective_amnesia"),
    good("method.lambda_ewc=0", 0.0, config="selective_amnesia"),
    good("method.ddim_steps=1000", 1000, config="esd"), good("method.start_guidance=0", 0.0, config="esd"),
]


def dotted(cfg, attr: str):
    for part in attr.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("path, override, attr, expected", GOOD)
def test_edge_value_is_accepted(path, override, attr, expected):
    value = dotted(load_config(path, [override]), attr)
    assert value == expected and type(value) is type(expected)


def test_new_train_keys_defaults():
    train = load_config(METHOD_CONFIG["erasediff"]).train
    assert (train.nonfinite, train.checkpoint_minutes, train.keep_checkpoints) == ("stop", 10.0, 2)
    assert isinstance(train.checkpoint_minutes, float)


# ----------------------------------------------------------------------------- NaN and infinities
def float_keys(cls, prefix: str) -> list[str]:
    """Dotted keys of the float-typed fields of config section `cls` (nested sections, tuple entries as [i])."""
    out = []
    for name, field in cls.model_fields.items():
        out += _float_paths(field.annotation, f"{prefix}{name}")
    return out


def _float_paths(tp, path: str) -> list[str]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _float_paths(typing.get_args(tp)[0], path)
    if origin in (typing.Union, types.UnionType):
        return [p for a in typing.get_args(tp) if a is not type(None) for p in _float_paths(a, path)]
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return _float_paths(args[0], f"{path}[0]")
        return [p for i, a in enumerate(args) for p in _float_paths(a, f"{path}[{i}]")]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return float_keys(tp, f"{path}.")
    return [path] if tp is float else []


def override_for(key: str, value: str, path: Path) -> list[str]:
    """`--set` strings setting `key` (maybe `a.b[i]`) to the YAML `value`; the other list entries stay valid."""
    if not key.endswith("]"):
        return [f"{key}={value}"]
    name, index = key[:-1].split("[")
    items = [repr(v) for v in dotted(load_config(path), name)] or ["0.5"]
    items[int(index)] = value
    return [f"{name}=[{', '.join(items)}]"]


TRAIN_SAMPLE_FLOATS = float_keys(TrainConfig, "train.") + float_keys(SampleConfig, "sample.")


def test_float_key_discovery_sees_the_known_keys():
    # guards the parametrisation below against silently testing nothing
    assert {"train.lr", "train.eps", "train.betas[0]", "train.betas[1]", "train.weight_decay", "train.grad_clip",
            "train.ema_decay", "train.checkpoint_minutes", "sample.eta", "sample.guidance"} <= set(TRAIN_SAMPLE_FLOATS)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN", "+.inf", "'nan'", "'-inf'", "1e400"])
@pytest.mark.parametrize("key", TRAIN_SAMPLE_FLOATS)
def test_nonfinite_train_and_sample_floats_are_refused(key, value):
    path = METHOD_CONFIG["erasediff"]
    message = assert_config_error(path, override_for(key, value, path), key)
    assert "finite" in message, message


def every_float_key() -> list[tuple[Path, str]]:
    cases = [(METHOD_CONFIG["erasediff"], k) for k in float_keys(RunConfig, "") if not k.startswith("method")]
    for name, path in METHOD_CONFIG.items():
        cases += [(path, k) for k in float_keys(METHODS[name].Config, "method.")]
    return cases


@pytest.mark.parametrize("path, key", every_float_key(), ids=lambda v: v if isinstance(v, str) else v.stem)
def test_nan_is_refused_for_every_float_key_of_every_section(path, key):
    for value in (".nan", "-.inf"):
        assert_config_error(path, override_for(key, value, path), key)


# --------------------------------------------------------------------------------- property tests
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

TREE = load_yaml_tree(METHOD_CONFIG["erasediff"])


def build(*overrides: str):
    return build_run_config(apply_overrides(TREE, list(overrides)))


def accepted(*overrides: str) -> bool:
    try:
        build(*overrides)
    except ConfigError:
        return False
    return True


FINITE = st.floats(allow_nan=False, allow_infinity=False)


def test_apply_overrides_leaves_its_input_alone():
    # the property tests below reuse one tree: a bad value must not stay behind in it
    before = repr(TREE)
    assert not accepted("train.lr=-1", "sample.eta=7", "model.arch.dropout=2")
    assert repr(TREE) == before and accepted()


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(x=FINITE)
def test_property_float_ranges(x):
    v = repr(x)
    assert accepted(f"train.lr={v}") == (x > 0)
    assert accepted(f"train.ema_decay={v}") == (0 <= x <= 1)
    assert accepted(f"train.betas=[{v}, 0.9]") == (0 <= x < 1)
    assert accepted(f"sample.eta={v}") == (0 <= x <= 1)
    assert accepted(f"data.forget_ratio={v}") == (0 < x <= 1)
    assert accepted(f"train.checkpoint_minutes={v}") == (x >= 0)
    assert accepted(f"method.eta={v}")  # EraseDiff's η: any finite value
    if x > 0:
        assert build(f"train.lr={v}").train.lr == x


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(n=st.integers(min_value=-(2**70), max_value=2**70))
def test_property_int_ranges(n):
    assert accepted(f"train.steps={n}") == (n >= 1)
    assert accepted(f"train.keep_checkpoints={n}") == (n >= 1)
    assert accepted(f"train.checkpoint_every={n}") == (n >= 0)
    assert accepted(f"seed={n}") == (0 <= n < 2**32)
    assert accepted(f"sample.steps={n}") == (1 <= n <= 1000)
    assert accepted(f"data.forget_classes=[{n}]") == (n >= 0)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(start=st.floats(1e-6, 0.5), end=st.floats(1e-6, 0.5))
def test_property_beta_order(start, end):
    ok = accepted(f"diffusion.beta_start={start!r}", f"diffusion.beta_end={end!r}")
    assert ok == (start < end)


# ---------------------------------------------------------------------------------- duplicate keys
def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def smoke_child(tmp_path: Path, body: str, name: str = "dup.yaml") -> Path:
    return write(tmp_path, name, f"base: {SMOKE / 'erasediff.yaml'}\n{body}")


@pytest.mark.parametrize("body, key, lines", [
    ("train:\n  lr: 1e-4\n  steps: 2\n  lr: 1e-3\n", "train.lr", "lines 3 and 5"),
    ("seed: 1\nseed: 2\n", "seed", "lines 2 and 3"),
    ("train:\n  lr: 1e-4\ntrain:\n  steps: 2\n", "train", "lines 2 and 4"),
    ("model:\n  arch:\n    dropout: 0.1\n    dropout: 0.2\n", "model.arch.dropout", "lines 4 and 5"),
    ("method:\n  block_size: 2\n  block_size: 2\n", "method.block_size", "lines 3 and 4"),  # even when equal
    ("data:\n  forget_classes: [0]\n  'forget_classes': [1]\n", "data.forget_classes", "lines 3 and 4"),
    ("train: {lr: 1e-4, lr: 1e-3}\n", "train.lr", "line 2"),
])
def test_duplicate_yaml_keys_are_refused(tmp_path, body, key, lines):
    path = smoke_child(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and f"duplicate key '{key}'" in message and lines in message, message


def test_duplicate_key_in_a_base_file_is_refused(tmp_path):
    base = write(tmp_path, "base.yaml", "experiment: x\nmethod:\n  name: finetune\ntrain:\n  steps: 3\n  steps: 4\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match=re.escape(f"config file {base}: duplicate key 'train.steps' (lines 5 and 6)")):
        load_config(child)


def test_duplicate_key_in_a_set_value_is_refused():
    with pytest.raises(ConfigError, match=r"--set .*duplicate key 'model\.arch\.dropout'"):
        load_config(METHOD_CONFIG["erasediff"], ["model.arch={dropout: 0.1, dropout: 0.2}"])


def test_the_same_key_in_different_mappings_and_merge_keys_are_fine(tmp_path):
    # a child overriding its base and YAML `<<` merges are not duplicates
    path = smoke_child(tmp_path, "defaults: &d {lr: 2e-4, steps: 2}\ntrain:\n  <<: *d\n  lr: 3e-4\n")
    tree = load_yaml_tree(path)
    assert tree["train"]["lr"] == 3e-4 and tree["train"]["steps"] == 2
    path = smoke_child(tmp_path, "train:\n  lr: 3e-4\nsample:\n  seed: 5\nclassifier:\n  seed: 6\n", "ok.yaml")
    cfg = load_config(path)
    assert (cfg.train.lr, cfg.sample.seed, cfg.classifier.seed) == (3e-4, 5, 6)


def test_yaml_load_still_parses_plain_documents():
    assert yaml_load("") is None
    assert yaml_load("a: [1, {b: 2}]\nc: 1e-5\n") == {"a": [1, {"b": 2}], "c": 1e-5}
    with pytest.raises(ConfigError, match=r"duplicate key 'a\[1\]\.b'"):
        yaml_load("a: [1, {b: 2, b: 3}]\n")


# --------------------------------------------------------------------------------- non-string keys
@pytest.mark.parametrize("body, where", [
    ("1: x\n", "<root>"), ("train:\n  1: x\n", "train"), ("model:\n  arch:\n    null: 3\n", "model.arch"),
    ("train:\n  true: 1\n", "train"), ("method:\n  2.5: 1\n", "method"),
])
def test_non_string_key_is_a_config_error(tmp_path, body, where):
    with pytest.raises(ConfigError, match=rf"in '{where}'.*valid keys here"):
        load_config(smoke_child(tmp_path, body))


def test_non_string_key_in_build_dataclass():
    with pytest.raises(ConfigError, match="not a name"):
        build_dataclass(TrainConfig, {("a", "b"): 1}, "train")
    with pytest.raises(ConfigError, match=r"'method\.name' is required.*got \[1\]"):
        build_run_config({"experiment": "x", "method": {"name": [1]}})


# ------------------------------------------------------------------------------- shipped configs
def experiment_files() -> list[Path]:
    """Every shipped YAML whose `base:` chain names a method (base.yaml files are completed by others)."""
    paths = sorted([*REPO.glob("DDPM/configs/**/*.yaml"), *REPO.glob("StableDiffusion/configs/**/*.yaml")])
    return [p for p in paths if "method" in load_yaml_tree(p)]


def test_experiment_file_discovery():
    files = experiment_files()
    assert len(files) >= 60
    assert any("StableDiffusion" in str(p) for p in files)


@pytest.mark.parametrize("path", experiment_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_experiment_config_loads(path):
    cfg = load_config(path)
    assert cfg.train.steps >= 1 and math.isfinite(cfg.train.lr)
    assert cfg.sample.steps <= cfg.diffusion.num_train_timesteps


# ------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("override, key", [("train.lr=.nan", "train.lr"), ("train.keep_checkpoints=0",
                                                                           "train.keep_checkpoints")])
def test_cli_refuses_before_writing(tmp_path, monkeypatch, capsys, override, key):
    from erasediff.cli import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    rc = main(["train", "--config", str(SMOKE / "pretrain.yaml"), "--set", override, "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: config key '{key}'"), err
    assert not out.exists()
