"""The evaluation classifier and the forget-class metrics computed from its outputs (PAPER.md §5).

After unlearning class c_f, images generated for c_f should stop looking like c_f to an independent
classifier. On the offline digits data (1x16x16 in [-1, 1], 10 classes) that classifier is the small
CNN below, trained on real images only. From its logits on generated images come
p_f (mean softmax probability of c_f, lower is better), entropy_f (mean entropy in nats, at most ln K)
and acc_f (share whose argmax is c_f); its penultimate features feed the Fréchet distance (`fid.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from erasediff.errors import ErasediffError

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
_ARCH_KEYS = ("in_channels", "image_size", "num_classes", "feature_dim")


class DigitsCNN(nn.Module):
    """Small CNN for 1x16x16 digits in [-1, 1]: two conv+ReLU+pool stages, a feature layer, a linear head.

    image_size must be divisible by 4 (two 2x2 poolings).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 16, num_classes: int = 10, feature_dim: int = 128):
        super().__init__()
        if image_size < 4 or image_size % 4:
            raise ErasediffError(f"DigitsCNN needs image_size divisible by 4 and >= 4 (got {image_size})")
        self.config = {"in_channels": in_channels, "image_size": image_size,
                       "num_classes": num_classes, "feature_dim": feature_dim}
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.embed = nn.Sequential(nn.Linear(64 * (image_size // 4) ** 2, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations: x (B, C, H, W) in [-1, 1] -> (B, feature_dim) float."""
        return self.embed(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: x (B, C, H, W) in [-1, 1] -> (B, num_classes) float."""
        return self.head(self.features(x))


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
) -> DigitsCNN:
    """Train a `DigitsCNN` with Adam on real images; returns it in eval mode.

    images: (N, C, H, W) float in [-1, 1]; labels: (N,) int64 in [0, num_classes). Training runs on the
    images' device. Initialisation, shuffling and augmentation are fixed by `seed` and leave the
    caller's global RNG untouched, so the evaluation classifier is reproducible.
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
    device = images.device
    labels = labels.to(device=device, dtype=torch.int64)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        model = DigitsCNN(in_channels, image_size, num_classes).to(device)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in tqdm(range(epochs), desc="classifier", unit="epoch", disable=not progress):
        order = torch.randperm(len(images), generator=generator).to(device)
        for start in range(0, len(images), batch_size):
            idx = order[start:start + batch_size]
            x = _random_shift(images[idx], generator) if augment else images[idx]
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def save_classifier(model: DigitsCNN, directory, *, extra: dict | None = None) -> None:
    """Write directory/classifier.safetensors (weights) and directory/classifier.json.

    The JSON holds the constructor arguments and, at top level, the keys of `extra` (e.g. test_acc).
    """
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(_ARCH_KEYS))
    if clash:
        raise ErasediffError(f"extra keys {clash} clash with the classifier's constructor arguments {list(_ARCH_KEYS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps({**model.config, **extra}, indent=2) + "\n")


def load_classifier(directory) -> DigitsCNN:
    """Load a classifier written by `save_classifier`, on CPU and in eval mode."""
    directory = Path(directory)
    missing = [p for p in (directory / CONFIG_FILE, directory / WEIGHTS_FILE) if not p.is_file()]
    if missing:
        raise ErasediffError(f"classifier not found: {missing[0]} is missing "
                             f"(train one with `erasediff train-classifier` or pass its directory)")
    config = json.loads((directory / CONFIG_FILE).read_text())
    model = DigitsCNN(**{k: config[k] for k in _ARCH_KEYS if k in config})
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return model.eval()


@torch.inference_mode()
def classifier_outputs(model: nn.Module, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, K), features (N, D)) of images (N, C, H, W) in [-1, 1], batched on the model's device.

    `model` is a `DigitsCNN` (or any module with `.features` and a `.head` on those features), so each
    batch goes through the network once.
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
