"""Inception Score (Salimans et al. 2016): IS = exp(E_x KL(p(y|x) ‖ p(y))), in [1, number of classes].

High when each image is classified confidently (low-entropy p(y|x)) and the classes are balanced
(high-entropy p(y)). As usual the images are cut into `splits` parts, a score is computed per part
and the mean and standard deviation over parts are reported. docs/evaluation.md lists IS among SA's CIFAR10
metrics (guided-diffusion's `evaluator.py`, on the real folder by mistake: see `quirks.EvalQuirks`).

The default classifier is torchvision's ImageNet Inception-v3 (IMAGENET1K_V1 weights, downloaded on
first use). guided-diffusion's TF graph has 1008 outputs and cuts into parts of 5000 images, so its
numbers differ slightly; any `logits_fn` may be passed instead.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from erasediff.errors import ErasediffError

from .fid import extract_features

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class InceptionLogits(torch.nn.Module):
    """A torchvision Inception-v3 as a logits function: images (B, C, H, W) in [-1, 1] -> logits (B, 1000).

    Maps to [0, 1], repeats a grey channel to RGB, resizes bilinearly to 299x299 and applies the
    ImageNet normalisation the torchvision weights were trained with (the network's own
    `transform_input` then re-maps it as those weights expect).
    """

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() + 1.0) / 2.0  # [-1, 1] -> [0, 1]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        mean = x.new_tensor(_IMAGENET_MEAN)[None, :, None, None]
        std = x.new_tensor(_IMAGENET_STD)[None, :, None, None]
        return self.net((x - mean) / std)


def inception_logits_fn(device: str | torch.device | None = None) -> InceptionLogits:
    """torchvision's inception_v3 with IMAGENET1K_V1 weights (downloaded on first use), eval mode, on `device`."""
    from torchvision.models import Inception_V3_Weights, inception_v3

    weights = Inception_V3_Weights.IMAGENET1K_V1
    try:
        net = inception_v3(weights=weights)
    except OSError as exc:
        raise ErasediffError(f"could not fetch torchvision's Inception-v3 weights ({weights.url}): "
                             f"{type(exc).__name__}: {exc}; put the file into {torch.hub.get_dir()}/checkpoints") from exc
    model = InceptionLogits(net)
    return model if device is None else model.to(device)


def inception_score_from_logits(logits, splits: int = 10) -> dict:
    """IS of logits (N, K) (any classifier's; softmax is applied here): {"is_mean", "is_std", "splits", "n"}.

    The N rows are cut, in order, into `splits` parts of near-equal size (no row dropped); std is the
    population standard deviation over parts, as in the original implementation.
    """
    logits = logits if isinstance(logits, torch.Tensor) else torch.from_numpy(np.asarray(logits))
    if logits.dim() != 2 or len(logits) == 0:
        raise ErasediffError(f"Inception Score needs non-empty (N, K) logits (got shape {tuple(logits.shape)})")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= len(logits):
        raise ErasediffError(f"splits must be an int in 1..N = 1..{len(logits)} (got {splits!r})")
    logp = torch.log_softmax(logits.detach().double().cpu(), dim=1)  # (N, K) log p(y|x)
    scores = []
    for part in torch.tensor_split(logp, splits):
        log_py = torch.logsumexp(part, dim=0) - np.log(len(part))  # (K,) log of the part's mean p(y)
        p = part.exp()
        terms = torch.where(p > 0, p * (part - log_py[None, :]), torch.zeros_like(p))  # 0·log 0 = 0
        kl = terms.sum(dim=1)  # (n_part,) KL(p(y|x) ‖ p(y)) in nats
        scores.append(float(kl.mean().exp()))
    return {"is_mean": float(np.mean(scores)), "is_std": float(np.std(scores)), "splits": splits, "n": len(logits)}


def inception_score(images: torch.Tensor | None = None, *, logits=None,
                    logits_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    splits: int = 10, batch_size: int = 250) -> dict:
    """Inception Score of images (N, C, H, W) in [-1, 1], or of precomputed `logits` (N, K).

    logits_fn: images -> logits (B, K); default `inception_logits_fn()` (ImageNet Inception-v3, built
    only when images are given and no logits_fn is). Returns {"is_mean", "is_std", "splits", "n"}.
    """
    if (images is None) == (logits is None):
        raise ErasediffError("inception_score takes either images or logits (exactly one of them)")
    if logits is None:
        fn = logits_fn if logits_fn is not None else inception_logits_fn(images.device)
        logits = torch.from_numpy(extract_features(fn, images, batch_size))
    return inception_score_from_logits(logits, splits)
