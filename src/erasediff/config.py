"""YAML configs -> frozen, typed dataclasses.

One experiment = one YAML file. A file may name one `base:` file (a path relative to itself) whose
keys it overrides; the merge is recursive for mappings, and lists/scalars are replaced. When a file
changes `method.name`, the base's method section is dropped (its keys belong to another method).
`--set a.b=value` overrides come last and are parsed with the same YAML rules.

Validation happens here, before any model or dataset is built: an unknown key, a wrong type, an
invalid choice or a number out of range raises `ConfigError` naming the dotted path and the valid keys,
choices or range. Ranges are declared on the fields with `typing.Annotated` and the `annotated_types`
constraints (Ge, Gt, Le, Lt, Interval, MinLen, MaxLen), e.g. `lr: Annotated[float, Gt(0)]`, and are
checked after type conversion; every float-typed key must also be finite (NaN and ±inf are refused;
a field could opt out with the `AllowNonFinite()` marker, none does). Checks across fields or
sections live in the dataclasses' `validate(path)` methods (RunConfig.validate runs last).
A YAML mapping that repeats a key is refused (PyYAML would silently keep the last one).

YAML quirks handled (DESIGN.md "Configs"): PyYAML follows YAML 1.1, so `1e-5` is read as the
*string* "1e-5" and `no`/`yes`/`on`/`off` as booleans. Our loader uses YAML 1.2 rules instead:
`1e-5` is a float, only true/false are booleans (so `no` stays a string), and a bool-typed key also
accepts yes/no/on/off. A float-typed key accepts ints and numeric strings.

Why one file over 300 lines: the schema and the engine that reads it (coercion, ranges, merging,
the YAML loader) change together; the engine is slated to move onto a maintained library (pydantic
or OmegaConf), which will shrink this file to the schema alone.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import annotated_types
import yaml
from annotated_types import Ge, Gt, Interval, MinLen

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
class AllowNonFinite:
    """`Annotated` marker: this float key accepts NaN and ±inf (by default every float must be finite)."""

    def __repr__(self) -> str:
        return "AllowNonFinite()"


#: a seed of torch.Generator; below 2**32 so the derived seeds (seed * 1_000_003 + epoch, ...) fit in 64 bits
Seed = Annotated[int, Interval(ge=0, lt=2**32)]


@dataclass(frozen=True)
class ArchConfig:
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

    def validate(self, path: str) -> None:
        n = len(self.block_out_channels)
        if not len(self.down_block_types) == n == len(self.up_block_types):
            raise ConfigError(f"config keys '{path}.block_out_channels' ({n} entries), '{path}.down_block_types' "
                              f"({len(self.down_block_types)}) and '{path}.up_block_types' ({len(self.up_block_types)}) "
                              "must have the same length (one entry per resolution)")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(f"config key '{path}.block_out_channels' entries {bad} are not divisible by "
                              f"'{path}.norm_num_groups' = {self.norm_num_groups} (GroupNorm)")


@dataclass(frozen=True)
class StableDiffusionConfig:
    """`model.backbone: stable_diffusion` only (PAPER.md §4.4-4.5): Stable Diffusion v1.4 on diffusers.

    pipeline: the diffusers pipeline (Hub id such as CompVis/stable-diffusion-v1-4, or a local folder
    with unet/ vae/ text_encoder/ tokenizer/ scheduler/) that the VAE, text encoder, tokenizer and
    scheduler come from; null = model.pretrained (then it must be a pipeline). Set it when
    model.pretrained is a UNet folder or a run directory of this project.
    surrogate_prompt: c_s of EraseDiff's SD forgetting target sg[ε_θ(z_t, t, τ(c_s))] (PAPER.md §1.2(c));
    the backbone's `other_condition`. Paper v2: "a person wearing clothes" (nudity), another Imagenette
    class (tench); official code HEAD: "a photo of a pokemon" (§7.6).
    null_prompt: the unconditional prompt of classifier-free guidance ("" as diffusers).
    latent: how an image becomes z0: `sample` draws from the VAE posterior (the official code), `mean`
    takes its mean.
    mixed_precision: `bf16` runs UNet forwards under bf16 autocast (weights and optimiser stay fp32).
    gradient_checkpointing: recompute UNet activations in backward (less memory, ~30% slower).
    vae_dtype: dtype of the frozen VAE (encode / decode only).
    """

    pipeline: Optional[str] = None
    surrogate_prompt: Optional[str] = None
    null_prompt: str = ""
    latent: Literal["sample", "mean"] = "sample"
    mixed_precision: Literal["no", "bf16"] = "no"
    gradient_checkpointing: bool = False
    vae_dtype: Literal["float32", "float16", "bfloat16"] = "float32"


@dataclass(frozen=True)
class ModelConfig:
    """Which model family and where its weights come from.

    pretrained: a run directory of this project (holds model/ and model_ema/), a diffusers model
    directory, or a Hugging Face Hub id (e.g. google/ddpm-cifar10-32). None = random init from `arch`.
    Relative paths are relative to the working directory.
    """

    backbone: Literal["class_cond", "uncond", "stable_diffusion"] = "class_cond"
    pretrained: Optional[str] = None
    arch: ArchConfig = field(default_factory=ArchConfig)
    #: which parameters train. `full` everywhere; `xattn` (cross-attention attn2, ESD-x / EraseDiff-x),
    #: `noxattn` (all but attn2, time embedding and output layers, ESD-u / EraseDiff-u), `selfattn` (attn1):
    #: stable_diffusion only (backbones/stable_diffusion.py has the exact name filters)
    trainable: Literal["full", "xattn", "noxattn", "selfattn"] = "full"
    sd: StableDiffusionConfig = field(default_factory=StableDiffusionConfig)

    def validate(self, path: str) -> None:
        a, where = self.arch, f"{path}.arch"
        if self.backbone == "class_cond":  # ClassConditionalUNet splits every attention block into heads
            attn = [c for c, t in zip(a.block_out_channels, a.down_block_types) if t.startswith("Attn")]
            attn += [c for c, t in zip(reversed(a.block_out_channels), a.up_block_types) if t.startswith("Attn")]
            attn += [a.block_out_channels[-1]] if a.mid_block_attention else []
            bad = sorted({c for c in attn if c % a.attention_head_dim})
            if bad:
                raise ConfigError(f"config key '{where}.attention_head_dim' = {a.attention_head_dim} must divide the "
                                  f"channels of every attention block (got blocks of {bad} channels)")


@dataclass(frozen=True)
class DiffusionConfig:
    """Forward process (PAPER.md §1): linear betas 1e-4 -> 0.02 over T = 1000 for DDPM/CIFAR10."""

    num_train_timesteps: Annotated[int, Ge(1)] = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: Annotated[float, Interval(gt=0, lt=1)] = 1e-4
    beta_end: Annotated[float, Interval(gt=0, lt=1)] = 0.02

    def validate(self, path: str) -> None:
        if not self.beta_start < self.beta_end:
            raise ConfigError(f"config key '{path}.beta_start' must be < '{path}.beta_end' "
                              f"(got {self.beta_start} >= {self.beta_end})")


@dataclass(frozen=True)
class DataConfig:
    """Dataset and forget/remain split.

    forget_classes: the classes of D_f; empty = no forgetting (pretraining on everything).
    forget_ratio: the official code's subsampling of D_f (`unl_ratio`, PAPER.md §2.4); None keeps all.
    attribute, attribute_file: `celebahq` only. Images are labelled 1 when they have `attribute` (a
    column of the CelebA(-HQ) annotation file, e.g. Eyeglasses) and 0 otherwise, so forget_classes: [1]
    forgets the attribute. attribute_file defaults to <root>/CelebAMask-HQ-attribute-anno.txt.
    remain_source: where D_r comes from. `real` = the dataset's remaining classes; `generated` = the
    "no access to D_r" setting of PAPER.md §4.1 (generative replay): before the first step the
    pretrained model samples `remain_generated` images spread evenly over the remaining classes
    (rounded up to a multiple of their number; EMA weights if sample.use_ema, the sample section's
    sampler and seed), and those are D_r. Needs a conditional model.
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
    forget_classes: tuple[Annotated[int, Ge(0)], ...] = ()
    forget_ratio: Optional[Annotated[float, Interval(gt=0, le=1)]] = None
    batch_size: Annotated[int, Ge(1)] = 128
    forget_batch_size: Optional[Annotated[int, Ge(1)]] = None
    num_workers: Annotated[int, Ge(0)] = 0

    def validate(self, path: str) -> None:
        if self.dataset == "celebahq" and not self.attribute:
            raise ConfigError(f"config key '{path}.attribute' is required for dataset celebahq (e.g. Eyeglasses: a "
                              "column of the annotation file)")
        if self.dataset != "celebahq" and (self.attribute or self.attribute_file):
            raise ConfigError(f"config keys '{path}.attribute' / '{path}.attribute_file' apply to dataset celebahq only "
                              f"(dataset is {self.dataset})")
        repeated = sorted({c for c in self.forget_classes if self.forget_classes.count(c) > 1})
        if repeated:
            raise ConfigError(f"config key '{path}.forget_classes' lists {repeated} more than once "
                              f"(got {list(self.forget_classes)})")
        self._resolve_forget_prompts(path)

    def _resolve_forget_prompts(self, path: str) -> None:
        """prompt_folder: `prompts` is required; `forget_prompts` become their indices in `forget_classes`."""
        if self.dataset != "prompt_folder":
            if self.prompts or self.forget_prompts:
                raise ConfigError(f"config keys '{path}.prompts' / '{path}.forget_prompts' apply to dataset prompt_folder "
                                  f"only (dataset is {self.dataset})")
            return
        if not self.prompts:
            raise ConfigError(f"config key '{path}.prompts' is required for dataset prompt_folder: the list of prompts "
                              "(an image's label = the index of its manifest prompt)")
        if len(set(self.prompts)) != len(self.prompts):
            raise ConfigError(f"config key '{path}.prompts' lists a prompt more than once")
        unknown = [p for p in self.forget_prompts if p not in self.prompts]
        if unknown:
            raise ConfigError(f"config key '{path}.forget_prompts': {unknown} not in {path}.prompts {list(self.prompts)}")
        ids = tuple(self.prompts.index(p) for p in self.forget_prompts)
        if ids and self.forget_classes and tuple(self.forget_classes) != ids:
            raise ConfigError(f"config keys '{path}.forget_prompts' (indices {list(ids)}) and '{path}.forget_classes' "
                              f"{list(self.forget_classes)} disagree: set only forget_prompts")
        if ids:  # frozen dataclass: the resolved ids are set once, here
            object.__setattr__(self, "forget_classes", ids)


@dataclass(frozen=True)
class TrainConfig:
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


@dataclass(frozen=True)
class SampleConfig:
    """Sampling for grids and evaluation (PAPER.md §4.1: SA/EraseDiff use w = 2 in the "1+w" form).

    guidance_convention: "sa" = (1+w)·ε(x,c) − w·ε(x,∅) (SA / official code, default);
    "diffusers" = ε(x,∅) + w·(ε(x,c) − ε(x,∅)). SA's w = 2 equals diffusers' w = 3.
    ddpm_variance: "fixed_large" (β_t, SA's `fixedlarge`) or "fixed_small" (posterior β̃_t).
    clip_denoised: clip the predicted x̂0 to [-1, 1] inside every step (diffusers' `clip_sample`). Off
    by default, as SA's "generalized" sampler; it rescues short-trained models whose trajectories
    diverge (the digits demo: 34% of 25-step DDIM samples blow up to saturated noise without it, none
    with it), but hurts at 50–100 DDIM steps with guidance (CPU-NOTES.md).
    seed: the evaluation generator's seed, separate from the run seed, so every method is scored on
    the same noise.
    Ranges: steps in [1, diffusion.num_train_timesteps] (DDIM steps; the DDPM sampler always runs
    all T); eta in [0, 1] (diffusers' DDIM turns NaN above 1); guidance >= 0 (0 = the conditional
    prediction alone in the "sa" convention, the unconditional one in "diffusers"; negative scales
    push towards the null condition and are refused); batch_size, grid_per_class >= 1; seed in
    [0, 2**32).
    """

    sampler: Literal["ddim", "ddpm"] = "ddim"
    steps: Annotated[int, Ge(1)] = 100
    eta: Annotated[float, Interval(ge=0, le=1)] = 0.0
    guidance: Annotated[float, Ge(0)] = 2.0
    guidance_convention: Literal["sa", "diffusers"] = "sa"
    ddpm_variance: Literal["fixed_large", "fixed_small"] = "fixed_large"
    clip_denoised: bool = False
    use_ema: bool = True
    seed: Seed = 1234
    batch_size: Annotated[int, Ge(1)] = 250
    grid_per_class: Annotated[int, Ge(1)] = 8


@dataclass(frozen=True)
class EvaluateConfig:
    """What `evaluate` measures (PAPER.md §5) and on how many generated images.

    n_per_class: images per remaining class (Table 1 FID: 5000); n_forget: images per forgotten class
    (Table 1 classifier set: 500; None = n_per_class). metrics, any of:
      classifier        p_f, entropy_f, acc_f over the forgotten classes; acc_remain and fd_remain (the
                        Fréchet distance in the classifier's feature space) over the remaining ones
      per_class_fd      that Fréchet distance for every class separately (fd_class_<c>; Table 3 on digits)
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
    """

    n_per_class: Annotated[int, Ge(1)] = 100
    n_forget: Optional[Annotated[int, Ge(1)]] = None
    classifier: Optional[str] = None
    real_split: Literal["train", "test"] = "train"
    metrics: Annotated[tuple[Literal["classifier", "per_class_fd", "fid", "per_class_fid", "precision_recall",
                                     "inception_score", "weight_distance"], ...], MinLen(1)] = ("classifier",)
    fid_features: Literal["inception", "inception64", "classifier"] = "inception"
    fid_cache: str = "results/fid_stats"
    quirks: tuple[Literal["minmax_stretch", "bgr", "uint8_cast", "swap_precision_recall", "is_on_reference"], ...] = ()


@dataclass(frozen=True)
class ClassifierConfig:
    """Training of the evaluation classifier (`train-classifier`), on the data section's train split.

    arch: `digits_cnn` (the small CNN, CPU) or `resnet34` (SA's CIFAR10 judge, PEERS.md §1: ImageNet
    ResNet34 fine-tuned at 224 px; SA's recipe is epochs 10, batch_size 128, lr 1e-5, lr_head 1e-4,
    weight_decay 5e-4, augment true).
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

    def validate(self, path: str) -> None:
        if self.image_size is not None and self.arch != "resnet34":
            raise ConfigError(f"config key '{path}.image_size' applies to arch resnet34 only (arch is {self.arch})")


@dataclass(frozen=True)
class RunConfig:
    """One experiment. seed in [0, 2**32) (derived seeds such as seed * 1_000_003 + epoch must fit torch's
    64-bit generator seed). A method config may define `check_run(run, path)` for checks that need the
    other sections (e.g. a step count bounded by diffusion.num_train_timesteps); `validate` calls it."""

    experiment: str
    method: Any  # a method's own config dataclass, chosen by `method.name` (see erasediff.methods)
    seed: Seed = 0
    output_root: str = "results"
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)

    def validate(self, path: str) -> None:
        T = self.diffusion.num_train_timesteps
        if self.sample.steps > T:
            raise ConfigError(f"config key 'sample.steps' must be <= diffusion.num_train_timesteps = {T} "
                              f"(got {self.sample.steps})")
        check_run = getattr(self.method, "check_run", None)
        if check_run is not None:
            check_run(self, "method")

    def run_dir(self) -> Path:
        """results/<experiment>/<method>/seed<k> (DESIGN.md "Checkpoints and outputs")."""
        return Path(self.output_root) / self.experiment / self.method.name / f"seed{self.seed}"


# ------------------------------------------------------------------------------------------ coercion
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _bounds(constraint: Any) -> list[tuple[str, Any]] | None:
    """(operator, bound) pairs of an annotated_types bound constraint; None for other metadata."""
    if isinstance(constraint, Interval):
        pairs = [(">", constraint.gt), (">=", constraint.ge), ("<", constraint.lt), ("<=", constraint.le)]
        return [(op, b) for op, b in pairs if b is not None]
    for cls, op, attr in ((Gt, ">", "gt"), (Ge, ">=", "ge"), (annotated_types.Lt, "<", "lt"),
                          (annotated_types.Le, "<=", "le")):
        if isinstance(constraint, cls):
            return [(op, getattr(constraint, attr))]
    return None


_OPS = {">": lambda v, b: v > b, ">=": lambda v, b: v >= b, "<": lambda v, b: v < b, "<=": lambda v, b: v <= b}


def _describe_bounds(pairs: list[tuple[str, Any]]) -> str:
    """`>= 1`, or `in [0, 1)` for a lower and an upper bound."""
    lower = [(op, b) for op, b in pairs if op[0] == ">"]
    upper = [(op, b) for op, b in pairs if op[0] == "<"]
    if len(lower) == 1 and len(upper) == 1:
        (lo_op, lo), (hi_op, hi) = lower[0], upper[0]
        return f"in {'[' if lo_op == '>=' else '('}{lo}, {hi}{']' if hi_op == '<=' else ')'}"
    return " and ".join(f"{op} {b}" for op, b in pairs)


def _check_constraints(value: Any, metadata: tuple, path: str, nullable: bool) -> None:
    """Check the annotated_types constraints of an `Annotated` field on the coerced `value`."""
    or_null = " or null" if nullable else ""
    for constraint in metadata:
        pairs = _bounds(constraint)
        if pairs is not None:
            if not all(_OPS[op](value, b) for op, b in pairs):
                raise ConfigError(f"config key '{path}' must be {_describe_bounds(pairs)}{or_null} (got {value!r})")
        elif isinstance(constraint, annotated_types.MinLen):
            if len(value) < constraint.min_length:
                need = "not be empty" if constraint.min_length == 1 else f"have at least {constraint.min_length} entries"
                raise ConfigError(f"config key '{path}' must {need} (got {list(value)!r})")
        elif isinstance(constraint, annotated_types.MaxLen):
            if len(value) > constraint.max_length:
                raise ConfigError(f"config key '{path}' must have at most {constraint.max_length} entries "
                                  f"(got {list(value)!r})")
        elif isinstance(constraint, (annotated_types.BaseMetadata, annotated_types.GroupedMetadata)):
            # a constraint this engine cannot check must not pass silently (a schema bug, not a user error)
            raise TypeError(f"config key '{path}': unsupported constraint {constraint!r}")


def _coerce(value: Any, tp: Any, path: str, *, finite: bool = True, nullable: bool = False) -> Any:
    """`value` converted to type `tp` and checked against its constraints, or ConfigError.

    finite: float values must be finite (an `AllowNonFinite()` marker in `Annotated` turns it off);
    nullable: the key also accepts null (only used to word the error).
    """
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *metadata = typing.get_args(tp)
        finite = finite and not any(isinstance(m, AllowNonFinite) for m in metadata)
        out = _coerce(value, base, path, finite=finite, nullable=nullable)
        if out is not None:
            _check_constraints(out, tuple(metadata), path, nullable)
        return out
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], path, finite=finite, nullable=nullable or type(None) in args)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{path}' must be one of: {', '.join(map(str, choices))} (got {value!r})")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}' must be a list (got {value!r})")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]", finite=finite) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"config key '{path}' must be a list of {len(args)} values (got {value!r})")
        return tuple(_coerce(v, a, f"{path}[{i}]", finite=finite) for i, (v, a) in enumerate(zip(value, args)))
    if is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+", value.strip()):
            return int(value)
    elif tp is float:
        number = None
        try:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                number = float(value)
            elif isinstance(value, str):
                number = float(value)
        except ValueError:
            pass
        except OverflowError:  # an int beyond the float range
            number = math.inf
        if number is not None:
            if finite and not math.isfinite(number):
                raise ConfigError(f"config key '{path}' must be a finite number (got {value!r})")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    or_null = " or null" if nullable else ""
    raise ConfigError(f"config key '{path}' must be {_type_name(tp)}{or_null} (got {value!r})")


def _unknown_key_error(key: str, path: str, valid: list[str]) -> ConfigError:
    where = f"{path}.{key}" if path else key
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{where}'{hint}; valid keys here: {', '.join(valid)}")


def build_dataclass(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a mapping, validating keys and types recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{path or '<root>'}' must be a mapping (got {data!r})")
    hints = typing.get_type_hints(cls, include_extras=True)  # keep Annotated[...] constraints
    valid = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"config key {key!r} in '{path or '<root>'}' is not a name ({type(key).__name__}); "
                              f"valid keys here: {', '.join(valid)}")
        if key not in valid:
            raise _unknown_key_error(str(key), path, valid)
        kwargs[key] = _coerce(value, hints[key], f"{path}.{key}" if path else key)
    missing = [
        f.name for f in fields(cls)
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f" in '{path}'" if path else ""
        raise ConfigError(f"missing required config key(s){where}: {', '.join(missing)}")
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check(path)
    return obj


# ----------------------------------------------------------------------------------------- loading
def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if key == "method" and isinstance(value, dict) and isinstance(out.get("method"), dict):
            if "name" in value and value["name"] != out["method"].get("name"):
                out["method"] = dict(value)
                continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
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
    return _merge(load_yaml_tree(path.parent / base, (*_seen, resolved)), data)


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


def build_run_config(tree: dict) -> RunConfig:
    """Validate a merged dict into a RunConfig (method section typed by `method.name`)."""
    from .methods import method_config_class  # late import: methods import config types

    tree = dict(tree)
    method = tree.pop("method", None)
    if not isinstance(method, dict) or not isinstance(method.get("name"), str):
        from .methods import METHODS

        got = "" if not isinstance(method, dict) or "name" not in method else f" (got {method['name']!r})"
        raise ConfigError(f"config key 'method.name' is required: a method name{got}; valid methods: "
                          f"{', '.join(sorted(METHODS))}")
    # built first, then handed to RunConfig as it is (`method: Any`), so RunConfig.validate sees it
    tree["method"] = build_dataclass(method_config_class(method["name"]), method, "method")
    return build_dataclass(RunConfig, tree)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, merge, override and validate a config file. Raises ConfigError before building anything."""
    return build_run_config(apply_overrides(load_yaml_tree(path), overrides or []))


def to_dict(cfg: Any) -> Any:
    """Dataclass -> plain YAML/JSON-able dict (tuples become lists)."""
    if is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML text (written as config.resolved.yaml and into checkpoints)."""
    return yaml_dump(to_dict(cfg))


def config_from_text(text: str) -> RunConfig:
    """Inverse of dump_config."""
    return build_run_config(yaml_load(text))
