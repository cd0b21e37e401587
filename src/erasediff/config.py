"""YAML configs -> frozen, typed pydantic models (docs/architecture.md, "Configs").

One experiment = one YAML file. A file may name one `base:` file (a path relative to itself) whose
keys it overrides; the merge is recursive for mappings, and lists/scalars are replaced. When a file
changes `method.name`, the base's method section is dropped (its keys belong to another method).
`--set a.b=value` overrides come last and are parsed with the same YAML rules.

Validation happens here, before any model or dataset is built, by pydantic v2: every section is a
frozen `Section` model that refuses unknown keys (`extra="forbid"`) and non-finite floats
(`allow_inf_nan=False`); ranges are `annotated_types` constraints in `Annotated` (Ge, Gt, Interval,
MinLen), which pydantic enforces natively; checks across keys are `model_validator`s that raise
ValueError with their one-line message. `method` is a discriminated union on `method.name` of the
configs that the method modules register (erasediff.methods: a new method is one file plus one YAML).
A failure becomes ONE ConfigError line naming the dotted key, the value and the valid choices, range
or keys (with a close-match hint for a misspelt key): `_message` translates pydantic's errors.

YAML quirks: PyYAML follows YAML 1.1, so `1e-5` is read as the *string* "1e-5" and `no`/`yes`/`on`/
`off` as booleans. Our loader uses YAML 1.2 rules instead: `1e-5` is a float and only true/false are
booleans (so `no` stays a string). A bool-typed key accepts pydantic's boolean words (yes/no, on/off,
true/false, 1/0); a number key accepts ints and numeric strings but never a boolean. A YAML mapping
that repeats a key is refused (PyYAML would silently keep the last one).

Why one file over 300 lines: it is the whole schema (every section's documented keys, ranges and
cross-key checks), plus the small parts pydantic does not provide: the YAML 1.2 reader, `base:`
includes with `--set` overrides, and the one-line wording of pydantic's errors.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Optional, Union

import yaml
from annotated_types import Ge, Gt, Interval, Le, Lt, MinLen
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import ConfigError, first_line


# --------------------------------------------------------------------------------------------- YAML
class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (true/false only) and floats (`1e-5` is a float)."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
            |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _refuse_duplicate_keys(loader: _Yaml12Loader, node: yaml.Node, path: str, source: str, seen: set[int]) -> None:
    """ConfigError at the first mapping of the composed `node` tree that holds a key twice.

    Keys are compared as the Python values they load as (the dict would keep only the last one);
    `<<` merge keys are exempt, since overriding a merged key is what they are for.
    """
    if id(node) in seen:  # an alias of a node already walked (or a recursive structure)
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(loader, item, f"{path}[{i}]", source, seen)
    elif isinstance(node, yaml.MappingNode):
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                _refuse_duplicate_keys(loader, value_node, path, source, seen)
                continue
            child = f"{path}.<complex key>" if path else "<complex key>"
            if isinstance(key_node, yaml.ScalarNode):  # scalars load as hashable values
                key = loader.construct_object(key_node)
                child = f"{path}.{key}" if path else str(key)
                line = key_node.start_mark.line + 1
                if key in lines:
                    where = f"line {line}" if lines[key] == line else f"lines {lines[key]} and {line}"
                    raise ConfigError(f"{source}: duplicate key '{child}' ({where}); each key may appear once "
                                      "per mapping")
                lines[key] = line
            _refuse_duplicate_keys(loader, value_node, child, source, seen)


def yaml_load(text: str, source: str = "config text", path: str = "") -> Any:
    """Parse YAML text with YAML 1.2 scalar rules (see module docstring).

    A mapping with a repeated key raises ConfigError "<source>: duplicate key '<path>.<key>' (lines ...)";
    `path` is the dotted key the document sits under (for `--set a.b=...` values).
    """
    loader = _Yaml12Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(loader, node, path, source, set())
        loader.constructed_objects = {}
        return loader.construct_document(node)
    finally:
        loader.dispose()


def yaml_dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


# ------------------------------------------------------------------------------------ config schema
def _mentions_bool(tp: Any) -> bool:
    """Whether type hint `tp` (through Optional, Annotated, tuple) admits a bool."""
    return tp is bool or any(_mentions_bool(arg) for arg in typing.get_args(tp))


class Section(BaseModel):
    """A config section: frozen (hashable, compared by value); unknown keys and NaN/±inf refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, data: Any) -> Any:
        """Refuse true/false (alone or in a list) for a key whose type has no bool: pydantic's lax mode
        would read `steps: true` as 1. The error carries the key, as a model validator's has no field."""
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                items = value if isinstance(value, list) else [value]
                hit = next((i for i, v in enumerate(items) if isinstance(v, bool)), None)
                if field is not None and hit is not None and not _mentions_bool(field.annotation):
                    raise PydanticCustomError("bool_not_number", "a boolean where no boolean is valid", {
                        "key": key, "index": hit if isinstance(value, list) else None, "value": items[hit]})
        return data


#: a seed of torch.Generator; below 2**32 so the derived seeds (seed * 1_000_003 + epoch, ...) fit in 64 bits
Seed = Annotated[int, Interval(ge=0, lt=2**32)]


class ArchConfig(Section):
    """UNet architecture used when a model is built from scratch (pretraining, Retrain, BlindSpot proxy).

    For `class_cond` these are the kwargs of `ClassConditionalUNet` (SA's CIFAR10 net by default); for
    `uncond` they map onto `diffusers.UNet2DModel` (`mid_block_attention` -> `add_attention`, and
    `num_classes` is unused by the network).
    """

    sample_size: Annotated[int, Ge(1)] = 32
    in_channels: Annotated[int, Ge(1)] = 3
    out_channels: Annotated[int, Ge(1)] = 3
    num_classes: Annotated[int, Ge(1)] = 10
    block_out_channels: Annotated[tuple[Annotated[int, Ge(1)], ...], MinLen(1)] = (128, 256, 256, 256)
    layers_per_block: Annotated[int, Ge(1)] = 2
    down_block_types: Annotated[tuple[str, ...], MinLen(1)] = (
        "DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D")
    up_block_types: Annotated[tuple[str, ...], MinLen(1)] = ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    mid_block_attention: bool = True
    attention_head_dim: Annotated[int, Ge(1)] = 256
    norm_num_groups: Annotated[int, Ge(1)] = 32
    norm_eps: Annotated[float, Gt(0)] = 1e-6
    dropout: Annotated[float, Interval(ge=0, lt=1)] = 0.1
    flip_sin_to_cos: bool = False
    freq_shift: Annotated[int, Ge(0)] = 1
    downsample_padding: Annotated[int, Ge(0)] = 0

    @model_validator(mode="after")
    def _blocks_agree(self) -> ArchConfig:
        n = len(self.block_out_channels)
        if not len(self.down_block_types) == n == len(self.up_block_types):
            raise ValueError(f"config keys 'model.arch.block_out_channels' ({n} entries), 'model.arch.down_block_types' "
                             f"({len(self.down_block_types)}) and 'model.arch.up_block_types' ({len(self.up_block_types)}) "
                             "must have the same length (one entry per resolution)")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"config key 'model.arch.block_out_channels' entries {bad} are not divisible by "
                             f"'model.arch.norm_num_groups' = {self.norm_num_groups} (GroupNorm)")
        return self


class StableDiffusionConfig(Section):
    """`model.backbone: stable_diffusion` only (docs/experiments.md, Table 4 and Nudity): Stable Diffusion
    v1.4 on diffusers. Other backbones refuse keys set here (ModelConfig's check).

    pipeline: the diffusers pipeline (Hub id such as CompVis/stable-diffusion-v1-4, or a local folder
    with unet/ vae/ text_encoder/ tokenizer/ scheduler/) that the VAE, text encoder, tokenizer and
    scheduler come from; null = model.pretrained (then it must be a pipeline). Set it when
    model.pretrained is a UNet folder or a run directory of this project.
    surrogate_prompt: c_s of EraseDiff's SD forgetting target sg[ε_θ(z_t, t, τ(c_s))] (docs/method.md,
    "Stable Diffusion: the surrogate prompt": which prompt the paper and the official code use);
    the backbone's `other_condition`.
    null_prompt: the unconditional prompt of classifier-free guidance ("" as diffusers).
    latent: how an image becomes z0: `sample` draws from the VAE posterior (the official code), `mean`
    takes its mean.
    vae_dtype: dtype of the frozen VAE (encode / decode only).
    """

    pipeline: Optional[str] = None
    surrogate_prompt: Optional[str] = None
    null_prompt: str = ""
    latent: Literal["sample", "mean"] = "sample"
    vae_dtype: Literal["float32", "float16", "bfloat16"] = "float32"


class ModelConfig(Section):
    """Which model family and where its weights come from.

    pretrained: a run directory of this project (holds model/ and model_ema/), a diffusers model
    directory, or a Hugging Face Hub id (e.g. google/ddpm-cifar10-32). None = random init from `arch`.
    Relative paths are relative to the working directory.
    `trainable` other than `full` and any non-default `sd` key are stable_diffusion only (refused for
    the other backbones rather than ignored; a resolved config of theirs holds the defaults).
    Speed options (docs/speed.md; each off by default, every backbone, training and sampling):
    gradient_checkpointing recomputes the UNet's activations in backward (less memory, ~30% slower,
    the same numbers); channels_last stores the UNet's conv weights NHWC (faster convolutions on
    GPUs; float rounding only); compile runs the UNet through torch.compile (minutes of compilation
    once per process, then faster steps; float rounding only); tf32 lets CUDA matmuls and
    convolutions use TF32 on Ampere and newer GPUs (≈1e-3 relative rounding: results change at
    that level; false leaves torch's defaults).
    """

    backbone: Literal["class_cond", "uncond", "stable_diffusion"] = "class_cond"
    pretrained: Optional[str] = None
    arch: ArchConfig = ArchConfig()
    #: which parameters train. `full` everywhere; `xattn` (cross-attention attn2, ESD-x / EraseDiff-x),
    #: `noxattn` (all but attn2, time embedding and output layers, ESD-u / EraseDiff-u), `selfattn` (attn1):
    #: stable_diffusion only (backbones/stable_diffusion.py has the exact name filters)
    trainable: Literal["full", "xattn", "noxattn", "selfattn"] = "full"
    sd: StableDiffusionConfig = StableDiffusionConfig()
    gradient_checkpointing: bool = False
    channels_last: bool = False
    compile: bool = False
    tf32: bool = False

    @model_validator(mode="after")
    def _family_keys(self) -> ModelConfig:
        if self.backbone != "stable_diffusion":
            if self.trainable != "full":
                raise ValueError(f"config key 'model.trainable' = {self.trainable} applies to backbone stable_diffusion "
                                 f"only; backbone {self.backbone} trains the full model (valid: full)")
            default = StableDiffusionConfig()
            changed = [k for k in StableDiffusionConfig.model_fields if getattr(self.sd, k) != getattr(default, k)]
            if changed:
                raise ValueError(f"config key 'model.sd.{changed[0]}' applies to backbone stable_diffusion only "
                                 f"(backbone is {self.backbone})")
        a = self.arch
        if self.backbone == "class_cond":  # ClassConditionalUNet splits every attention block into heads
            attn = [c for c, t in zip(a.block_out_channels, a.down_block_types) if t.startswith("Attn")]
            attn += [c for c, t in zip(reversed(a.block_out_channels), a.up_block_types) if t.startswith("Attn")]
            attn += [a.block_out_channels[-1]] if a.mid_block_attention else []
            bad = sorted({c for c in attn if c % a.attention_head_dim})
            if bad:
                raise ValueError(f"config key 'model.arch.attention_head_dim' = {a.attention_head_dim} must divide the "
                                 f"channels of every attention block (got blocks of {bad} channels)")
        return self


class DiffusionConfig(Section):
    """Forward process (docs/method.md, "Notation"): linear betas 1e-4 -> 0.02 over T = 1000 for DDPM/CIFAR10."""

    num_train_timesteps: Annotated[int, Ge(1)] = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: Annotated[float, Interval(gt=0, lt=1)] = 1e-4
    beta_end: Annotated[float, Interval(gt=0, lt=1)] = 0.02

    @model_validator(mode="after")
    def _betas_increase(self) -> DiffusionConfig:
        if not self.beta_start < self.beta_end:
            raise ValueError(f"config key 'diffusion.beta_start' must be < 'diffusion.beta_end' "
                             f"(got {self.beta_start} >= {self.beta_end})")
        return self


class DataConfig(Section):
    """Dataset and forget/remain split.

    forget_classes: the classes of D_f; empty = no forgetting (pretraining on everything).
    forget_ratio: the official code's subsampling of D_f (`unl_ratio`, docs/method.md "How the official
    code runs"); None keeps all.
    attribute, attribute_file: `celebahq` only. Images are labelled 1 when they have `attribute` (a
    column of the CelebA(-HQ) annotation file, e.g. Eyeglasses) and 0 otherwise, so forget_classes: [1]
    forgets the attribute. attribute_file defaults to <root>/CelebAMask-HQ-attribute-anno.txt.
    remain_source: where D_r comes from. `real` = the dataset's remaining classes; `generated` = the
    "no access to D_r" setting (docs/experiments.md, "No access to D_r"; generative replay): before the
    first step the pretrained model samples `remain_generated` images spread evenly over the remaining
    classes (rounded up to a multiple of their number; EMA weights if sample.use_ema, the sample
    section's sampler and seed), and those are D_r. Needs a conditional model.
    Ranges: forget_classes >= 0 without repeats, forget_ratio in (0, 1], batch sizes and
    remain_generated >= 1, num_workers >= 0.
    """

    dataset: Literal["digits", "cifar10", "folder", "celebahq", "prompt_folder"] = "digits"
    root: Optional[str] = None
    #: prompt_folder only: the prompt list; an image's label is the index of its manifest prompt here
    prompts: tuple[str, ...] = ()
    #: prompt_folder only: the prompts of D_f, resolved to their indices in `prompts` (= forget_classes)
    forget_prompts: tuple[str, ...] = ()
    attribute: Optional[str] = None
    attribute_file: Optional[str] = None
    remain_source: Literal["real", "generated"] = "real"
    remain_generated: Annotated[int, Ge(1)] = 4500
    image_size: Optional[Annotated[int, Ge(1)]] = None
    hflip: bool = False
    download: bool = True
    #: validated even when absent: forget_prompts resolve into it
    forget_classes: tuple[Annotated[int, Ge(0)], ...] = Field((), validate_default=True)
    forget_ratio: Optional[Annotated[float, Interval(gt=0, le=1)]] = None
    batch_size: Annotated[int, Ge(1)] = 128
    forget_batch_size: Optional[Annotated[int, Ge(1)]] = None
    num_workers: Annotated[int, Ge(0)] = 0

    @field_validator("forget_classes")
    @classmethod
    def _resolve_forget_prompts(cls, classes: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        """prompt_folder: `prompts` is required; `forget_prompts` become their indices (the keys above this
        one are in info.data when they are valid)."""
        dataset, prompts, forget = (info.data.get(k) for k in ("dataset", "prompts", "forget_prompts"))
        if dataset is None or prompts is None or forget is None:
            return classes  # an earlier key is invalid: pydantic reports that one
        if dataset != "prompt_folder":
            if prompts or forget:
                raise ValueError(f"config keys 'data.prompts' / 'data.forget_prompts' apply to dataset prompt_folder "
                                 f"only (dataset is {dataset})")
            return classes
        if not prompts:
            raise ValueError("config key 'data.prompts' is required for dataset prompt_folder: the list of prompts "
                             "(an image's label = the index of its manifest prompt)")
        if len(set(prompts)) != len(prompts):
            raise ValueError("config key 'data.prompts' lists a prompt more than once")
        unknown = [p for p in forget if p not in prompts]
        if unknown:
            raise ValueError(f"config key 'data.forget_prompts': {unknown} not in data.prompts {list(prompts)}")
        ids = tuple(prompts.index(p) for p in forget)
        if ids and classes and classes != ids:
            raise ValueError(f"config keys 'data.forget_prompts' (indices {list(ids)}) and 'data.forget_classes' "
                             f"{list(classes)} disagree: set only forget_prompts")
        return ids or classes

    @model_validator(mode="after")
    def _dataset_keys(self) -> DataConfig:
        if self.dataset == "celebahq" and not self.attribute:
            raise ValueError("config key 'data.attribute' is required for dataset celebahq (e.g. Eyeglasses: a "
                             "column of the annotation file)")
        if self.dataset != "celebahq" and (self.attribute or self.attribute_file):
            raise ValueError(f"config keys 'data.attribute' / 'data.attribute_file' apply to dataset celebahq only "
                             f"(dataset is {self.dataset})")
        repeated = sorted({c for c in self.forget_classes if self.forget_classes.count(c) > 1})
        if repeated:
            raise ValueError(f"config key 'data.forget_classes' lists {repeated} more than once "
                             f"(got {list(self.forget_classes)})")
        return self


class TrainConfig(Section):
    """The loop's optimiser, EMA, clipping and bookkeeping (shared by every method).

    steps >= 1; lr > 0; betas each in [0, 1); eps > 0; weight_decay >= 0; warmup_steps >= 0;
    grad_clip: max gradient norm > 0, null = no clipping; ema_decay in [0, 1], null = no EMA;
    log_every >= 1; sample_every / checkpoint_every: every that many steps, 0 = off.
    nonfinite: what the loop does when the loss or the gradient norm is NaN/inf: `stop` ends the run
    at that step (the last good checkpoint is kept), `skip_step` drops that update (the optimiser,
    EMA and weights are left unchanged) and counts it.
    checkpoint_minutes: also save a checkpoint when this many minutes (>= 0) have passed since the
    last one, so a killed run loses at most that much work; 0 = off (checkpoint_every alone).
    keep_checkpoints: how many of the newest checkpoints are kept (>= 1); keep 2 or more so the
    previous one is the fallback when the newest is corrupt.
    mixed_precision: `no` (float32), `bf16` or `fp16` autocast of the training forwards (weights,
    optimiser, EMA and losses stay float32; fp16 with dynamic loss scaling, torch.amp.GradScaler as
    accelerate uses it); the one setting for every backbone (docs/distributed.md "Mixed precision").
    fused_optimizer: Adam / AdamW's fused implementation (one kernel for every parameter; faster on
    GPUs, the same update to float rounding); false = torch's default (foreach on GPUs).
    grad_accum_steps: split each step's batch into this many micro-batches (>= 1) whose gradients add
    up to the batch's; data.batch_size stays the global batch of one optimiser step.
    log_with: experiment trackers that receive the scalars of log.jsonl: [] or any of tensorboard,
    wandb (optional extras: pip install 'erasediff[tracking]').
    """

    steps: Annotated[int, Ge(1)] = 1000
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: Annotated[float, Gt(0)] = 1e-4
    betas: tuple[Annotated[float, Interval(ge=0, lt=1)], Annotated[float, Interval(ge=0, lt=1)]] = (0.9, 0.999)
    eps: Annotated[float, Gt(0)] = 1e-8
    weight_decay: Annotated[float, Ge(0)] = 0.0
    warmup_steps: Annotated[int, Ge(0)] = 0
    grad_clip: Optional[Annotated[float, Gt(0)]] = 1.0
    ema_decay: Optional[Annotated[float, Interval(ge=0, le=1)]] = 0.9999
    ema_warmup: bool = False
    log_every: Annotated[int, Ge(1)] = 10
    sample_every: Annotated[int, Ge(0)] = 0
    checkpoint_every: Annotated[int, Ge(0)] = 0
    nonfinite: Literal["stop", "skip_step"] = "stop"
    checkpoint_minutes: Annotated[float, Ge(0)] = 10.0
    keep_checkpoints: Annotated[int, Ge(1)] = 2
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    grad_accum_steps: Annotated[int, Ge(1)] = 1
    fused_optimizer: bool = False
    log_with: tuple[Literal["tensorboard", "wandb"], ...] = ()


class SampleConfig(Section):
    """Sampling for grids and evaluation (docs/evaluation.md, "Sampling for evaluation": SA/EraseDiff
    use w = 2 in the "1+w" form).

    guidance_convention: "sa" = (1+w)·ε(x,c) − w·ε(x,∅) (SA / official code, default);
    "diffusers" = ε(x,∅) + w·(ε(x,c) − ε(x,∅)). SA's w = 2 equals diffusers' w = 3.
    ddpm_variance: "fixed_large" (β_t, SA's `fixedlarge`) or "fixed_small" (posterior β̃_t).
    clip_denoised: clip the predicted x̂0 to [-1, 1] inside every step (diffusers' `clip_sample`). Off
    by default, as SA's "generalized" sampler; it rescues short-trained models whose trajectories
    diverge (the digits demo: 34% of 25-step DDIM samples blow up to saturated noise without it, none
    with it), but hurts at 50–100 DDIM steps with guidance (docs/cpu.md).
    seed: the evaluation generator's seed, separate from the run seed, so every method is scored on
    the same noise.
    Ranges: steps in [1, diffusion.num_train_timesteps] (DDIM steps; the DDPM sampler always runs
    all T); eta in [0, 1] (diffusers' DDIM turns NaN above 1); guidance >= 0 (0 = the conditional
    prediction alone in the "sa" convention, the unconditional one in "diffusers"; negative scales
    push towards the null condition and are refused); batch_size, grid_per_class >= 1; seed in
    [0, 2**32).
    mixed_precision: autocast of the sampler's forwards (grids, evaluation, generated D_r, SA's replay):
    no (float32), bf16 or fp16 (docs/distributed.md "Mixed precision").
    """

    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: Annotated[int, Ge(1)] = 100
    eta: Annotated[float, Interval(ge=0, le=1)] = 0.0
    guidance: Annotated[float, Ge(0)] = 2.0
    guidance_convention: Literal["sa", "diffusers"] = "sa"
    ddpm_variance: Literal["fixed_large", "fixed_small"] = "fixed_large"
    clip_denoised: bool = False
    use_ema: bool = True
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: Seed = 1234
    batch_size: Annotated[int, Ge(1)] = 250
    grid_per_class: Annotated[int, Ge(1)] = 8


class EvaluateConfig(Section):
    """What `evaluate` measures (docs/evaluation.md) and on how many generated images.

    n_per_class: images per remaining class (Table 1 FID: 5000); n_forget: images per forgotten class
    (Table 1 classifier set: 500; None = n_per_class). metrics, any of:
      classifier        p_f, entropy_f, acc_f over the forgotten classes; acc_remain and fd_remain (the
                        Fréchet distance in the classifier's feature space) over the remaining ones
      per_class_fd      that Fréchet distance for every class separately (fd_class_<c>; Table 3 on digits)
      robust_forgetting for each forgotten class c: p_f_in_dist, the share of its images that the judge
                        reads as c AND whose judge features lie inside the real class (k = 3 nearest-real
                        distance below the 99th percentile of real held-out images'); in_dist_f; fd_f,
                        the Fréchet distance of c's images to its real ones (metrics/in_distribution.py)
      fid               FID of the remaining classes pooled against the real ones (features: fid_features)
      per_class_fid     FID of every class against its own real images (fid_class_<c>; Table 3)
      precision_recall  improved precision / recall, k = 3 (Kynkäänniemi 2019), remaining classes
      inception_score   IS of the generated remaining-class images
      weight_distance   L2 and relative L2 to a reference model (Retrain; `--reference`, Table 3's WD)
    fid_features: inception (pytorch-fid, 2048-d pool3, downloaded on first use), inception64 (its
    64-d first block, the torchmetrics feature=64 variant of the SD FID), classifier (the judge's
    features: offline, digits). fid_cache: folder of cached real-image statistics.
    quirks: the peers' protocol deviations to reproduce their numbers (metrics.quirks; none = the
    standard protocol): minmax_stretch + bgr + swap_precision_recall + is_on_reference = SA/EraseDiff's
    Table 1 evaluator; uint8_cast with fid_features inception64 = the Table 4 FID. Image quirks apply
    to the generated and the real images, as the peers' scripts do.
    classifier: the judge: a `train-classifier` folder; for a stable_diffusion model also a torchvision
    ImageNet model name (resnet50: ResNet-50 with its DEFAULT weights IMAGENET1K_V2 and their preprocessing).
    Stable Diffusion (docs/evaluation.md "Stable Diffusion metrics"): the images of the prompt CSV
    `prompts` are generated with the `generate` section, then the groups
      imagenette_accuracy  top-1 accuracy of the judge (1000 ImageNet classes) per Imagenette class;
                           acc_forget = the class named in data.forget_prompts (Table 4 "tench acc")
      fid                  FID of the images of the other Imagenette classes against the real images
                           `real` (null = data.root: imagenette2's train/, a folder with a manifest.csv, or
                           frgfm/imagenette), `max_real` of them (null = all; the paper: 1000)
      clip_score           100 x mean CLIP cosine of image and prompt (`clip_model`: Hub id or folder)
      nudenet              NudeNet detections of the 9 exposed classes with score >= nudenet_threshold;
                           per I2P category too when the CSV has a `categories` column
      coco_fid             FID of all generated images against the real images `real` (a folder, e.g. COCO
                           val2014) or the precomputed statistics `reference_stats` (.npz with mu, sigma)
    max_prompts: score only the first rows of `prompts` (COCO-30k / 10k subsets; null = all).
    batch_size: images per forward of the Stable Diffusion metrics' networks.
    """

    n_per_class: Annotated[int, Ge(1)] = 100
    n_forget: Optional[Annotated[int, Ge(1)]] = None
    classifier: Optional[str] = None
    real_split: Literal["train", "test"] = "train"
    metrics: Annotated[tuple[Literal["classifier", "per_class_fd", "robust_forgetting", "fid", "per_class_fid",
                                     "precision_recall",
                                     "inception_score", "weight_distance", "imagenette_accuracy", "clip_score",
                                     "nudenet", "coco_fid"], ...], MinLen(1)] = ("classifier",)
    fid_features: Literal["inception", "inception64", "classifier"] = "inception"
    fid_cache: str = "results/fid_stats"
    quirks: tuple[Literal["minmax_stretch", "bgr", "uint8_cast", "swap_precision_recall", "is_on_reference"], ...] = ()
    prompts: Optional[str] = None
    real: Optional[str] = None
    max_real: Optional[Annotated[int, Ge(2)]] = None
    clip_model: str = "openai/clip-vit-base-patch32"
    nudenet_threshold: Annotated[float, Interval(ge=0, le=1)] = 0.6
    reference_stats: Optional[str] = None
    max_prompts: Optional[Annotated[int, Ge(1)]] = None
    batch_size: Annotated[int, Ge(1)] = 50


class GenerateConfig(Section):
    """Stable Diffusion images of a prompt CSV: `generate`, and the samples `evaluate` scores for a
    stable_diffusion model (docs/evaluation.md "Sampling for evaluation": LMS, 50 steps, guidance 7.5,
    512 px, no safety checker).

    scheduler: the pipeline's scheduler; steps >= 1; guidance >= 0 (diffusers convention), or the CSV's
    guidance column where a row has one if csv_guidance; height, width: pixels, multiples of 8 (null =
    the UNet's sample_size x 8, 512 for SD v1.4); n_per_prompt: images of a row without a num_images
    column; max_per_prompt: cap on every row's count (null = none; smoke runs); batch_size: images per
    pipeline call; seed: the seed of rows without a seed column; dtype: the pipeline's weights.
    """

    scheduler: Literal["lms", "ddim", "pndm", "euler", "euler_a", "dpm"] = "lms"
    steps: Annotated[int, Ge(1)] = 50
    guidance: Annotated[float, Ge(0)] = 7.5
    csv_guidance: bool = False
    height: Optional[Annotated[int, Ge(8)]] = None
    width: Optional[Annotated[int, Ge(8)]] = None
    n_per_prompt: Annotated[int, Ge(1)] = 1
    max_per_prompt: Optional[Annotated[int, Ge(1)]] = None
    batch_size: Annotated[int, Ge(1)] = 1
    seed: Seed = 0
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"

    @model_validator(mode="after")
    def _whole_latents(self) -> GenerateConfig:
        for key in ("height", "width"):
            value = getattr(self, key)
            if value is not None and value % 8:
                raise ValueError(f"config key 'generate.{key}' must be a multiple of 8 (the VAE's scale factor) "
                                 f"or null (got {value})")
        return self


class ClassifierConfig(Section):
    """Training of the evaluation classifier (`train-classifier`), on the data section's train split.

    arch: `digits_cnn` (the small CNN, CPU) or `resnet34` (SA's CIFAR10 judge, docs/peers.md "Selective
    Amnesia": ImageNet ResNet34 fine-tuned at 224 px; SA's recipe is epochs 10, batch_size 128, lr 1e-5,
    lr_head 1e-4, weight_decay 5e-4, augment true).
    image_size: the classifier's input side; images are resized to it inside the model. resnet34 only
    (null = 224); digits_cnn reads images at the data's size.
    pretrained: resnet34 starts from torchvision's ImageNet weights (downloaded on first use); ignored
    by digits_cnn.
    lr_head: learning rate of the last (fc) layer; null = lr.
    augment: digits_cnn shifts by ±1 px, resnet34 flips horizontally (SA).
    """

    arch: Literal["digits_cnn", "resnet34"] = "digits_cnn"
    image_size: Optional[Annotated[int, Ge(32)]] = None
    pretrained: bool = True
    epochs: Annotated[int, Ge(1)] = 30
    batch_size: Annotated[int, Ge(1)] = 128
    lr: Annotated[float, Gt(0)] = 1e-3
    lr_head: Optional[Annotated[float, Gt(0)]] = None
    weight_decay: Annotated[float, Ge(0)] = 0.0
    augment: bool = True
    seed: Seed = 0

    @model_validator(mode="after")
    def _image_size_for_resnet(self) -> ClassifierConfig:
        if self.image_size is not None and self.arch != "resnet34":
            raise ValueError(f"config key 'classifier.image_size' applies to arch resnet34 only (arch is {self.arch})")
        return self


class RobustnessConfig(Section):
    """What `erasediff attack` attacks and how success is judged (docs/robustness.md): the concept's part
    of an attack run, kept in the concept's config so that a new concept needs no code.

    prompts: CSV of the prompts to attack (the prompt CSV format of `generate`: prompt, seed, guidance,
    case_number); max_prompts: only its first rows (null = all). concept: what the attacks try to bring
    back, in words (Ring-A-Bell's concept, textual inversion's placeholder initialisation), e.g. `nudity`
    or `tench`. judge: `nudenet` (success = a detection of one of `nudenet_classes` with score >=
    `nudenet_threshold`; UnlearnDiffAtk: the 9 exposed classes, 0.45) or `imagenette` (success = the top-1
    ImageNet class of `classifier` is `concept`'s, an Imagenette class name). images_per_prompt: images
    generated per prompt and attack with the row's seed; a prompt succeeds if any of them is judged as the
    concept. attack_all: also attack the prompts whose un-attacked images already succeed (false:
    UnlearnDiffAtk's protocol, those count as pre-attack successes and are not attacked).
    concept_pairs: CSV with columns `with` and `without` (the same prompt with and without the concept),
    Ring-A-Bell's concept vector. targets: folder of the ORIGINAL model's images of `prompts` (what
    `generate` writes; made there when missing), shared by the attacks that need them and by every
    attacked model (null = OUT/targets of each run).
    """

    prompts: Optional[str] = None
    max_prompts: Optional[Annotated[int, Ge(1)]] = None
    concept: Optional[str] = None
    judge: Literal["nudenet", "imagenette"] = "nudenet"
    nudenet_threshold: Annotated[float, Interval(ge=0, le=1)] = 0.45
    nudenet_classes: Annotated[tuple[str, ...], MinLen(1)] = (
        "BUTTOCKS_EXPOSED", "FEMALE_BREAST_EXPOSED", "FEMALE_GENITALIA_EXPOSED", "MALE_BREAST_EXPOSED",
        "ANUS_EXPOSED", "FEET_EXPOSED", "ARMPITS_EXPOSED", "BELLY_EXPOSED", "MALE_GENITALIA_EXPOSED")
    classifier: str = "resnet50"
    images_per_prompt: Annotated[int, Ge(1)] = 1
    attack_all: bool = False
    concept_pairs: Optional[str] = None
    targets: Optional[str] = None


def at_most_timesteps(run: "RunConfig", key: str, value: int) -> None:
    """ValueError unless `value` (a step count of config key `key`) is <= diffusion.num_train_timesteps."""
    T = run.diffusion.num_train_timesteps
    if value > T:
        raise ValueError(f"config key '{key}' must be <= diffusion.num_train_timesteps = {T} (got {value})")


class MethodConfig(Section):
    """Base of a method's own config, in its file erasediff/methods/<name>.py next to the method.

    A subclass declares `name: Literal["<name>"] = "<name>"` (the tag of the `method` union) and its keys;
    checks among them are `model_validator`s like any section's. `check_run` is for checks that need
    the other sections (e.g. a step count bounded by diffusion.num_train_timesteps).
    """

    name: str

    def check_run(self, run: RunConfig) -> None:
        """Raise ValueError (one line naming the 'method.<key>') when this config does not fit `run`."""


class AttackConfig(Section):
    """Base of an attack's own config, in its file erasediff/attacks/<name>.py next to the attack (the
    methods' pattern: `name: Literal["<name>"] = "<name>"` tags the `attack` union)."""

    name: str


class RunConfig(Section):
    """One experiment. seed in [0, 2**32) (derived seeds such as seed * 1_000_003 + epoch must fit torch's
    64-bit generator seed).

    `method` is the config of the method that `method.name` names: a discriminated union of the
    registered MethodConfig subclasses, which erasediff.experiment supplies from the methods registry;
    `attack` likewise from the attacks registry (only `erasediff attack` reads it; default `none`).
    """

    experiment: str
    method: MethodConfigs  # noqa: F821 (resolved by experiment.complete_run_config)
    seed: Seed = 0
    output_root: str = "results"
    device: str = "auto"
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    sample: SampleConfig = SampleConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    generate: GenerateConfig = GenerateConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    robustness: RobustnessConfig = RobustnessConfig()
    attack: AttackConfigs = Field(default_factory=lambda: {"name": "none"},  # noqa: F821 (experiment.complete_run_config)
                                  validate_default=True)

    @model_validator(mode="after")
    def _sections_agree(self) -> RunConfig:
        at_most_timesteps(self, "sample.steps", self.sample.steps)
        self.method.check_run(self)
        return self

    def run_dir(self) -> Path:
        """results/<experiment>/<method>/seed<k> (docs/architecture.md, "Checkpoints and outputs")."""
        return Path(self.output_root) / self.experiment / self.method.name / f"seed{self.seed}"


# -------------------------------------------------------------------------- pydantic errors -> one line
class _Key(NamedTuple):
    path: str  # dotted key, list entries as [i]
    tp: Any  # its type hint (Any where the key is unknown)
    field: Any  # its pydantic FieldInfo (None for an unknown key, a list entry's, the root's)


def _unwrap(tp: Any) -> tuple[Any, list, bool]:
    """(type, annotated_types constraints, nullable) of a type hint: Annotated and Optional removed."""
    metadata: list = []
    nullable = False
    while True:
        args = typing.get_args(tp)
        if typing.get_origin(tp) is Annotated:
            tp, metadata = args[0], metadata + list(args[1:])
        elif typing.get_origin(tp) in (Union, types.UnionType) and type(None) in args:
            rest = tuple(a for a in args if a is not type(None))
            tp, nullable = (rest[0] if len(rest) == 1 else Union[rest]), True
        else:
            return tp, metadata, nullable


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _locate(root: type[Section], prefix: str, loc: tuple) -> _Key:
    """Follow a pydantic error location through the schema. A tagged union's tag (the `loc` item after
    `method`) names the member and adds nothing to the dotted key."""
    key = _Key(prefix, root, None)
    for item in loc:
        tp = _unwrap(key.tp)[0]
        if _is_section(tp) and isinstance(item, str):
            field = tp.model_fields.get(item)
            path = f"{key.path}.{item}" if key.path else item
            if field is None:
                return _Key(path, Any, None)
            key = _Key(path, Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation,
                       field)
        elif typing.get_origin(tp) is tuple and isinstance(item, int):
            args = typing.get_args(tp)
            inner = args[0] if args[-1] is Ellipsis else args[item] if item < len(args) else Any
            key = _Key(f"{key.path}[{item}]", inner, None)
        elif key.field is not None and key.field.discriminator:
            member = [m for m in typing.get_args(tp) if m.model_fields[key.field.discriminator].default == item]
            key = key._replace(tp=member[0] if member else Any)
    return key


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _describe_bounds(metadata: list) -> str:
    """`>= 1`, or `in [0, 1)` for a lower and an upper bound (pydantic splits Interval into Ge/Lt/...)."""
    pairs = [(op, getattr(m, attr)) for m in metadata if isinstance(m, (Gt, Ge, Lt, Le, Interval))
             for attr, op in _BOUNDS if getattr(m, attr, None) is not None]
    lower = [(op, b) for op, b in pairs if op[0] == ">"]
    upper = [(op, b) for op, b in pairs if op[0] == "<"]
    if len(lower) == 1 and len(upper) == 1:
        (lo_op, lo), (hi_op, hi) = lower[0], upper[0]
        return f"in {'[' if lo_op == '>=' else '('}{lo}, {hi}{']' if hi_op == '<=' else ')'}"
    return " and ".join(f"{op} {b}" for op, b in pairs)


#: keys of earlier versions -> where their setting lives now
MOVED_KEYS = {
    "model.sd.mixed_precision": "set train.mixed_precision (training) and sample.mixed_precision (sampling), "
                                "one setting for every backbone; valid: no, bf16, fp16",
    "model.sd.gradient_checkpointing": "set model.gradient_checkpointing (every backbone); valid: true, false",
}


def _type_name(tp: Any) -> str:
    if _is_section(tp):
        return "a mapping"
    if typing.get_origin(tp) is tuple:
        return "a list"
    if typing.get_origin(tp) is Literal:
        return "one of: " + ", ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def _shown(value: Any, tp: Any) -> str:
    """The value as the user wrote it, an int in a float key as the float it became."""
    if tp is float and isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**1023:
        value = float(value)
    return repr(value)


def _hint(word: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(word, valid, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _message(errors: list[dict], root: type[Section], prefix: str) -> str:
    """One line for the first of pydantic's `errors`: the dotted key, the value, and what is valid."""
    err = errors[0]
    kind, loc, ctx, value = err["type"], err["loc"], err.get("ctx") or {}, err["input"]
    if kind == "value_error":  # a validator's message names its keys itself
        return first_line(ctx.get("error", err["msg"]))
    if kind == "bool_not_number":
        loc, value = (*loc, ctx["key"], *([] if ctx["index"] is None else [ctx["index"]])), ctx["value"]
    key = _locate(root, prefix, loc)
    tp, metadata, nullable = _unwrap(key.tp)
    parent = _locate(root, prefix, loc[:-1]) if loc else key
    where, or_null, got = f"config key '{key.path or '<root>'}'", " or null" if nullable else "", _shown(value, tp)
    if key.field is not None and key.field.discriminator:  # the method union: its tag is `method.name`
        tag_key = f"{key.path}.{key.field.discriminator}"
        tags = sorted(m.model_fields[key.field.discriminator].default for m in typing.get_args(tp))
        tag = value.get(key.field.discriminator) if isinstance(value, dict) else None
        if kind == "union_tag_invalid" and isinstance(tag, str):
            return (f"unknown {key.path} '{tag}' (config key '{tag_key}'){_hint(tag, tags)}; "
                    f"valid {key.path}s: {', '.join(tags)}")
        shown = f" (got {tag!r})" if isinstance(value, dict) and key.field.discriminator in value else ""
        return f"config key '{tag_key}' is required: a {key.path} name{shown}; valid {key.path}s: {', '.join(tags)}"
    if kind in ("extra_forbidden", "invalid_key"):  # a key the section (parent.tp) does not have
        valid = list(_unwrap(parent.tp)[0].model_fields)
        if kind == "extra_forbidden" and key.path in MOVED_KEYS:
            return f"config key '{key.path}' has moved: {MOVED_KEYS[key.path]}"
        if kind == "extra_forbidden":
            return f"unknown config key '{key.path}'{_hint(str(loc[-1]), valid)}; valid keys here: {', '.join(valid)}"
        return (f"config key {value!r} in '{parent.path or '<root>'}' is not a name ({type(value).__name__}); "
                f"valid keys here: {', '.join(valid)}")
    if kind == "too_long" or (kind == "missing" and isinstance(loc[-1], int)):  # a fixed-length list (a, b)
        at = key if kind == "too_long" else parent
        return f"config key '{at.path}' must be a list of {len(typing.get_args(_unwrap(at.tp)[0]))} values (got {value!r})"
    if kind == "missing":
        names = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == loc[:-1]]
        return f"missing required config key(s){f' in {parent.path!r}' if parent.path else ''}: {', '.join(names)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal") or (
            kind == "int_parsing_size" and _describe_bounds(metadata)):  # an integer beyond 64 bits
        return f"{where} must be {_describe_bounds(metadata)}{or_null} (got {got})"
    if kind == "finite_number" or (kind == "float_type" and isinstance(value, int)):
        return f"{where} must be a finite number (got {got})"
    if kind == "too_short":  # MinLen(1)
        return f"{where} must not be empty (got {got})"
    return f"{where} must be {_type_name(tp)}{or_null} (got {got})"  # a wrong type, or not one of the choices


def build_section(cls: type[Section], data: Any, path: str = "") -> Any:
    """Validate a mapping into section `cls` (at dotted `path`), or one-line ConfigError."""
    try:
        return cls.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise ConfigError(_message(exc.errors(include_url=False), cls, path)) from None


build_dataclass = build_section  # the engine's former name (tests)


# ----------------------------------------------------------------------------------------- loading
def merge_trees(base: dict, over: dict) -> dict:
    """`over` merged into `base` key by key; a `method` or `attack` section of another name replaces the
    base's whole section (its keys belong to the other method / attack)."""
    out = dict(base)
    for key, value in over.items():
        if key in ("method", "attack") and isinstance(value, dict) and isinstance(out.get(key), dict):
            if "name" in value and value["name"] != out[key].get("name"):
                out[key] = dict(value)
                continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = value
    return out


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: the problem and its line when PyYAML knows them."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        context = getattr(exc, "context", None)
        return f"{context + ': ' if context else ''}{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return first_line(exc)


def load_yaml_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a config file and its `base:` chain into one merged dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"config 'base:' cycle: {' -> '.join(str(p) for p in (*_seen, resolved))}")
    try:
        data = yaml_load(path.read_text(), source=f"config file {path}")
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config key 'base' in {path} must be a path (got {base!r})")
    return merge_trees(load_yaml_tree(path.parent / base, (*_seen, resolved)), data)


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings; the value is parsed as YAML (so `1e-5`, `[0, 1]`, `null` work).

    Returns a new tree; `tree` itself is left unchanged.
    """
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value (got {item!r}), e.g. --set train.lr=1e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml_load(raw, source=f"--set {item!r}", path=key.strip()) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = tree
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        if parts[-1] == "name" and parts[:-1] == ["method"] and node.get("name") != value:
            node.clear()
        node[parts[-1]] = value
    return tree


def to_dict(cfg: Section) -> dict:
    """A config (or one section) as a plain YAML/JSON-able dict in declaration order (tuples become lists)."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML text (written as config.resolved.yaml and into checkpoints)."""
    return yaml_dump(to_dict(cfg))
