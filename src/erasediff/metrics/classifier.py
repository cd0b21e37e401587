"""The evaluation classifiers and the forget-class metrics computed from their outputs (docs/evaluation.md).

After unlearning class c_f, images generated for c_f should stop looking like c_f to an independent
classifier, trained on real images only. Two architectures:
- `DigitsCNN`: on the offline digits data (1x16x16 in [-1, 1], 10 classes), a small CNN.
- `ResNetClassifier`: SA's CIFAR10 judge (docs/evaluation.md "Evaluation judges"), a torchvision
  ResNet34, ImageNet-pretrained, fc -> Linear(512, 10) with xavier init, fine-tuned on images resized
  to 224 px and normalised with mean = std = 0.5, i.e. the [-1, 1] range the project already uses.
  The resize is inside the model, so callers pass generated 32 px images as they are.
Both take images (B, C, H, W) in [-1, 1] and have `.features` (penultimate vector) and `.head`. From
the logits on generated images come p_f (mean softmax probability of c_f, lower is better),
entropy_f (mean entropy in nats, at most ln K) and acc_f (share whose argmax is c_f); the features
feed the Fréchet distance (`fid.py`).

Why one file over 300 lines: both judges, their training loop, their save/load format and the metrics
on their outputs must agree on one input convention; they change together.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from tqdm.auto import tqdm

from erasediff.errors import ErasediffError

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
ARCHS = ("digits_cnn", "resnet34")
_ARCH_KEYS = ("in_channels", "image_size", "num_classes", "feature_dim")  # DigitsCNN's constructor arguments
_RESNET_KEYS = ("num_classes", "input_size")  # ResNetClassifier's


class DigitsCNN(nn.Module):
    """Small CNN for 1x16x16 digits in [-1, 1]: two conv+ReLU+pool stages, a feature layer, a linear head.

    image_size must be divisible by 4 (two 2x2 poolings).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 16, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        if image_size < 4 or image_size % 4:
            raise ErasediffError(f"DigitsCNN needs image_size divisible by 4 and >= 4 (got {image_size})")
        self.config = {"arch": "digits_cnn", "in_channels": in_channels, "image_size": image_size,
                       "num_classes": num_classes, "feature_dim": feature_dim}
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.feature_dim = feature_dim  # width of `features`
        self.embed = nn.Sequential(nn.Linear(64 * (image_size // 4) ** 2, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations: x (B, C, H, W) in [-1, 1] -> (B, feature_dim) float."""
        return self.embed(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: x (B, C, H, W) in [-1, 1] -> (B, num_classes) float."""
        return self.head(self.features(x))


class ResNetClassifier(ResNet):
    """SA's CIFAR10 evaluation classifier: torchvision ResNet34 with a num_classes fc, resizing its input.

    Input: images (B, 3, H, W) in [-1, 1] at any size; they are resized bilinearly to input_size
    (224, as SA's `transforms.Resize((224, 224))`; antialiased when shrinking) and fed on as they are,
    since SA normalises with mean = std = 0.5, which is the [-1, 1] range. Parameter names are
    torchvision's, so SA's `cifar10_resnet34.pth` state dict loads with `load_state_dict`.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 224):
        super().__init__(BasicBlock, [3, 4, 6, 3], num_classes=num_classes)  # the resnet34 layout
        if isinstance(input_size, bool) or not isinstance(input_size, int) or input_size < 32:
            raise ErasediffError(f"ResNetClassifier input_size must be an int >= 32 (got {input_size!r})")
        self.config = {"arch": "resnet34", "num_classes": num_classes, "input_size": input_size}
        self.input_size = input_size
        self.feature_dim = self.fc.in_features  # width of `features` (512)
        nn.init.xavier_uniform_(self.fc.weight)  # SA's fc initialisation

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 512-d features: x (B, 3, H, W) in [-1, 1] -> (B, 512) float."""
        if x.shape[1] != 3:
            raise ErasediffError(f"ResNetClassifier takes 3-channel images (got {x.shape[1]} channels)")
        if x.shape[-2:] != (self.input_size, self.input_size):
            shrink = x.shape[-1] > self.input_size
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=shrink)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) from `features`."""
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: x (B, 3, H, W) in [-1, 1] -> (B, num_classes) float."""
        return self.fc(self.features(x))


def _imagenet_resnet34_state() -> dict:
    """torchvision's ImageNet ResNet34 weights (IMAGENET1K_V1, what SA's `pretrained=True` loads), without fc."""
    from torchvision.models import ResNet34_Weights

    weights = ResNet34_Weights.IMAGENET1K_V1
    try:
        state = weights.get_state_dict(progress=True)
    except OSError as exc:
        raise ErasediffError(f"could not fetch the ImageNet ResNet34 weights ({weights.url}): {type(exc).__name__}: "
                             f"{exc}; put the file into {torch.hub.get_dir()}/checkpoints, or set "
                             "classifier.pretrained: false") from exc
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def build_classifier(arch: str = "digits_cnn", *, in_channels: int = 1, image_size: int = 16, num_classes: int = 10,
                     input_size: int | None = None, pretrained: bool = False) -> nn.Module:
    """A fresh evaluation classifier for images (in_channels, image_size, image_size) in [-1, 1].

    digits_cnn: `DigitsCNN` (input_size and pretrained do not apply). resnet34: `ResNetClassifier`
    with input_size (None = 224, SA's) and, if pretrained, the ImageNet body weights (downloaded on
    first use) under a freshly initialised fc. Uses the global RNG for initialisation.
    """
    if arch == "digits_cnn":
        if input_size is not None and input_size != image_size:
            raise ErasediffError(f"digits_cnn reads images at their own size ({image_size}); input_size applies to "
                                 f"resnet34 only (got {input_size})")
        if pretrained:
            raise ErasediffError("digits_cnn has no pretrained weights; pretrained applies to resnet34 only")
        return DigitsCNN(in_channels, image_size, num_classes)
    if arch == "resnet34":
        if in_channels != 3:
            raise ErasediffError(f"resnet34 takes RGB images (3 channels); these have {in_channels}")
        model = ResNetClassifier(num_classes, 224 if input_size is None else input_size)
        if pretrained:
            missing, unexpected = model.load_state_dict(_imagenet_resnet34_state(), strict=False)
            if unexpected or sorted(missing) != ["fc.bias", "fc.weight"]:
                raise ErasediffError(f"ImageNet ResNet34 weights do not fit: missing {missing}, "
                                     f"unexpected {unexpected}")
        return model
    raise ErasediffError(f"unknown classifier arch {arch!r}: valid archs are {', '.join(ARCHS)}")


def _random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (SA's RandomHorizontalFlip for CIFAR10)."""
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


def _random_shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift every image by its own random (dy, dx) in {-1, 0, 1}^2, filling with background (-1).

    Digits are not mirror-symmetric, so shifts are the only augmentation (no flips).
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dy, dx = (torch.randint(0, 3, (2, b), generator=generator)).to(x.device)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, :, None]  # (B, H, 1)
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # advanced indices first: (B, H, W, C) -> (B, C, H, W)


def _check_images(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ErasediffError(f"{what} must be a non-empty (N, C, H, W) tensor (got {shape})")


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, *, epochs: int = 30, batch_size: int = 128, lr: float = 1e-3,
    seed: int = 0, augment: bool = True, progress: bool = True,
    in_channels: int = 1, image_size: int = 16, num_classes: int = 10,
    arch: str = "digits_cnn", input_size: int | None = None, pretrained: bool = False,
    lr_head: float | None = None, weight_decay: float = 0.0, device: str | torch.device | None = None,
) -> nn.Module:
    """Train an evaluation classifier (`build_classifier(arch, ...)`) with Adam on real images; eval mode.

    images: (N, C, H, W) float in [-1, 1]; labels: (N,) int64 in [0, num_classes). Training runs on
    `device` (default: the images' device), one batch at a time. augment: digits_cnn shifts by ±1 px
    (digits must not be mirrored), resnet34 flips horizontally (SA). lr_head: the fc/head learning
    rate (None = lr); SA's CIFAR10 recipe is lr 1e-5, lr_head 1e-4, weight_decay 5e-4, 10 epochs,
    batch 128. Initialisation, shuffling and augmentation are fixed by `seed` and leave the caller's
    global RNG untouched, so the evaluation classifier is reproducible (a pretrained body is fixed
    by its weights).
    """
    _check_images(images, "classifier training images")
    if images.shape[1:] != (in_channels, image_size, image_size):
        raise ErasediffError(f"classifier training images have shape {tuple(images.shape[1:])}; "
                             f"expected ({in_channels}, {image_size}, {image_size})")
    if labels.shape != (len(images),):
        raise ErasediffError(f"labels must have shape ({len(images)},) to match the images (got {tuple(labels.shape)})")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ErasediffError(f"labels must lie in 0..{num_classes - 1} (got {int(labels.min())}..{int(labels.max())})")
    if epochs < 1 or batch_size < 1:
        raise ErasediffError(f"epochs and batch_size must be >= 1 (got epochs={epochs}, batch_size={batch_size})")
    device = torch.device(device) if device is not None else images.device
    labels = labels.to(dtype=torch.int64)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        model = build_classifier(arch, in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                                 input_size=input_size, pretrained=pretrained).to(device)
    head = model.fc if isinstance(model, ResNetClassifier) else model.head
    head_ids = {id(p) for p in head.parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    head_lr = lr if lr_head is None else lr_head
    opt = torch.optim.Adam([{"params": body}, {"params": list(head.parameters()), "lr": head_lr}],
                           lr=lr, weight_decay=weight_decay)
    augment_fn = _random_hflip if arch == "resnet34" else _random_shift
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in tqdm(range(epochs), desc="classifier", unit="epoch", disable=not progress):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            x = images[idx.to(images.device)].to(device)
            x = augment_fn(x, generator) if augment else x
            loss = F.cross_entropy(model(x), labels[idx.to(labels.device)].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def save_classifier(model: nn.Module, directory, *, extra: dict | None = None) -> None:
    """Write directory/classifier.safetensors (weights and buffers) and directory/classifier.json.

    The JSON holds `arch` and the constructor arguments (`model.config`) and, at top level, the keys
    of `extra` (e.g. test_acc).
    """
    extra = dict(extra or {})
    reserved = {"arch", *_ARCH_KEYS, *_RESNET_KEYS}
    clash = sorted(set(extra) & reserved)
    if clash:
        raise ErasediffError(f"extra keys {clash} clash with the classifier's constructor arguments {sorted(reserved)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps({**model.config, **extra}, indent=2) + "\n")


def load_classifier(directory) -> nn.Module:
    """Load a classifier written by `save_classifier`, on CPU and in eval mode (never downloads weights).

    A classifier.json without `arch` (written before ResNet support) is a digits_cnn.
    """
    directory = Path(directory)
    missing = [p for p in (directory / CONFIG_FILE, directory / WEIGHTS_FILE) if not p.is_file()]
    if missing:
        raise ErasediffError(f"classifier not found: {missing[0]} is missing "
                             f"(train one with `erasediff train-classifier` or pass its directory)")
    model = _build_saved(directory)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return model.eval()


def _build_saved(directory: Path) -> nn.Module:
    """The untrained network that directory/classifier.json describes."""
    config = json.loads((directory / CONFIG_FILE).read_text())
    arch = config.get("arch", "digits_cnn")
    if arch == "digits_cnn":
        return DigitsCNN(**{k: config[k] for k in _ARCH_KEYS if k in config})
    if arch == "resnet34":
        return ResNetClassifier(**{k: config[k] for k in _RESNET_KEYS if k in config})
    raise ErasediffError(f"{directory / CONFIG_FILE} names classifier arch {arch!r}; valid archs are {', '.join(ARCHS)}")


def classifier_feature_dim(directory) -> int:
    """The width of `features` of the classifier saved in `directory`, from its classifier.json alone (the
    network is built on the meta device: no weights read, nothing allocated)."""
    with torch.device("meta"):
        return int(_build_saved(Path(directory)).feature_dim)


@torch.inference_mode()
def classifier_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, K), features (N, D)) of images (N, C, H, W) in [-1, 1], batched on the model's device.

    `model` is a `DigitsCNN`, a `ResNetClassifier` (features = the pooled 512-d vector; the resize to
    its input size happens inside) or any module with `.features` and a `.head` on those features, so
    each batch goes through the network once.
    """
    _check_images(images, "classifier input images")
    device = next(model.parameters()).device
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        f = model.features(images[start:start + batch_size].to(device))
        feats.append(f)
        logits.append(model.head(f))
    return torch.cat(logits), torch.cat(feats)


def forgetting_metrics(logits: torch.Tensor, forget_class: int) -> dict:
    """p_f, entropy_f (nats) and acc_f of logits (N, K) of images generated for `forget_class`.

    Returns {"p_f", "entropy_f", "acc_f": float, "n": int}; lower p_f / acc_f and higher entropy mean
    more forgetting.
    """
    if logits.dim() != 2 or len(logits) == 0:
        raise ErasediffError(f"forgetting metrics need non-empty (N, K) logits (got shape {tuple(logits.shape)})")
    if not 0 <= forget_class < logits.shape[1]:
        raise ErasediffError(f"forget_class {forget_class} out of range: valid classes are 0..{logits.shape[1] - 1}")
    logp = torch.log_softmax(logits.double(), dim=1)
    p = logp.exp()
    return {
        "p_f": float(p[:, forget_class].mean()),
        "entropy_f": float(-(p * logp).sum(dim=1).mean()),
        "acc_f": float((logits.argmax(dim=1) == forget_class).double().mean()),
        "n": len(logits),
    }


def accuracy_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Argmax accuracy of logits (N, K) against labels (N,): {"acc", "per_class": {str(c): acc_c}, "n"}."""
    if logits.dim() != 2 or len(logits) == 0 or labels.shape != (len(logits),):
        raise ErasediffError(f"accuracy needs non-empty (N, K) logits and (N,) labels "
                             f"(got {tuple(logits.shape)} and {tuple(labels.shape)})")
    labels = labels.to(logits.device)
    correct = (logits.argmax(dim=1) == labels).double()
    per_class = {str(c): float(correct[labels == c].mean()) for c in labels.unique(sorted=True).tolist()}
    return {"acc": float(correct.mean()), "per_class": per_class, "n": len(logits)}
