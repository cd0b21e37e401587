"""The Imagenette metrics of Stable Diffusion class forgetting: the paper's Table 4 (docs/experiments.md
"Table 4"; docs/evaluation.md "Stable Diffusion metrics"). `evaluate` computes them as the metric
groups `imagenette_accuracy` and `fid` of a stable_diffusion config; the images are its samples
(`data.imagenette.read_generated`), the real ones `data.imagenette.RealImagenette`.

- accuracy: the share of the images of each class whose top-1 ImageNet class is that class's ImageNet
  index (`IMAGENET_INDEX`). The judge is `evaluate.classifier`: a torchvision ImageNet model name
  (`resnet50`: ResNet-50 with its DEFAULT weights IMAGENET1K_V2 and their own preprocessing, the
  paper's) or a classifier folder of this project with 1000 outputs. The paper reports it for the
  forgotten class ("tench acc", lower is better); the mean over the other classes shows what is
  kept. The official `imageclassify.py` only dumps top-5 to a CSV; the accuracy step is ours.
- FID of the remaining classes: the generated images of every class but the forgotten one against real
  images of those classes resized to the generated size, both through the image quirks (the uint8
  cast of the paper's `compute-fid.py`, `quirks.uint8_cast`), in the features of `fid.py` (pytorch-fid
  Inception 2048-d, its 64-d block for the paper's numbers, or the judge's features offline); the
  real statistics are cached by `fid.reference_statistics`.
Networks take images (B, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data.imagenette import (
    IMAGENET_INDEX,
    IMAGENETTE_CLASSES,
    GeneratedImage,
    RealImagenette,
    class_key,
    image_batches,
    image_size,
    real_batches,
    select_real,
)
from ..errors import ConfigError, DataError, ErasediffError
from .classifier import CONFIG_FILE, load_classifier
from .fid import (
    drop_shared_constants,
    extract_features,
    feature_statistics,
    fid_from_statistics,
    reference_statistics,
)
from .quirks import EvalQuirks


class TorchvisionClassifier(torch.nn.Module):
    """A torchvision ImageNet classifier with its own preprocessing: images (B, 3, H, W) in [-1, 1] -> logits (B, 1000).

    `preprocess` is the weights' `transforms()` (ResNet-50 V2: bilinear resize of the short side to
    232, center crop 224, ImageNet mean/std), applied to the batch as a [0, 1] tensor (the official
    `imageclassify.py` applies it to PIL images; the tensor resize is antialiased, so the two agree up
    to interpolation rounding).
    """

    def __init__(self, net: torch.nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.net, self.preprocess = net.eval(), preprocess

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess((images.float() + 1.0) / 2.0))  # [-1, 1] -> [0, 1] -> model input


def check_imagenet_classifier(spec: str) -> str:
    """'folder' or 'torchvision' for `evaluate.classifier` = `spec`; ConfigError naming the valid choices."""
    if Path(spec).is_dir():
        if not (Path(spec) / CONFIG_FILE).is_file():
            raise ConfigError(f"evaluate.classifier '{spec}' is a folder without {CONFIG_FILE}: expected a classifier "
                              "folder of this project or a torchvision ImageNet model name such as resnet50")
        return "folder"
    from torchvision import models

    names = models.list_models(module=models)
    if spec not in names:
        raise ConfigError(f"evaluate.classifier '{spec}' is neither a classifier folder nor a torchvision ImageNet "
                          f"model; valid names include resnet50 (the paper's), {', '.join(n for n in names[:6])}, ...")
    return "torchvision"


def imagenet_classifier(spec: str, device: str | torch.device | None = None) -> torch.nn.Module:
    """The ImageNet judge of `evaluate.classifier` (see `check_imagenet_classifier`), in eval mode on `device`.

    A torchvision name gets its DEFAULT weights (downloaded on first use; resnet50: IMAGENET1K_V2) and
    their transforms; a folder is read by `classifier.load_classifier` (its `.features` can feed the FID).
    """
    if check_imagenet_classifier(spec) == "folder":
        model = load_classifier(spec)
    else:
        from torchvision import models

        weights = models.get_model_weights(spec).DEFAULT
        try:
            net = models.get_model(spec, weights=weights)
        except (OSError, RuntimeError) as exc:
            raise ErasediffError(f"could not fetch the {spec} weights {weights.url} ({type(exc).__name__}: {exc}); put "
                                 f"the file into torch's hub cache ({torch.hub.get_dir()}/checkpoints) on a machine "
                                 "without internet") from exc
        model = TorchvisionClassifier(net, weights.transforms())
    return model.eval() if device is None else model.eval().to(device)


@torch.inference_mode()
def imagenette_accuracy(items: Sequence[GeneratedImage], forget: str, classifier: Callable[[torch.Tensor], torch.Tensor],
                        *, batch_size: int = 50, progress: bool = False) -> dict:
    """Top-1 accuracy of `classifier` on the generated images of each class (module docstring).

    items: the generated images with their classes (`read_generated`); forget: the forgotten class.
    classifier: images (B, 3, H, W) in [-1, 1] -> logits (B, 1000) over ImageNet-1k. Returns
    {"acc_<class>": share of that class's images whose argmax is its ImageNet index (for the classes
    present), "acc_forget": the forgotten class's, "acc_remain_mean": the unweighted mean over the
    other classes present, "n_<class>": image counts, "n_images", "forget"}. Images of several prompts
    of one class are pooled.
    """
    present = [c for c in IMAGENETTE_CLASSES if any(it.cls == c for it in items)]
    if forget not in present:
        raise DataError(f"no generated image of the forget class '{forget}' (classes there: {', '.join(present)})")
    param = next(classifier.parameters(), None) if isinstance(classifier, torch.nn.Module) else None
    preds = []
    for batch in image_batches([it.path for it in items], batch_size, desc="accuracy", progress=progress):
        logits = classifier(batch if param is None else batch.to(param.device))
        if logits.dim() != 2 or logits.shape[1] != 1000:
            raise ErasediffError(f"the classifier must return logits (B, 1000) over ImageNet-1k (got {tuple(logits.shape)})")
        preds.append(logits.argmax(dim=1).cpu())
    pred = torch.cat(preds)  # (N,) ImageNet indices
    target = torch.tensor([IMAGENET_INDEX[it.cls] for it in items])
    out: dict = {"forget": forget, "n_images": len(items)}
    for c in present:
        mask = target == IMAGENET_INDEX[c]
        out[f"acc_{class_key(c)}"] = float((pred[mask] == target[mask]).float().mean())
        out[f"n_{class_key(c)}"] = int(mask.sum())
    out["acc_forget"] = out[f"acc_{class_key(forget)}"]
    remain = [out[f"acc_{class_key(c)}"] for c in present if c != forget]
    out["acc_remain_mean"] = float(np.mean(remain)) if remain else None
    return out


def remaining_fid(items: Sequence[GeneratedImage], forget: str, real: RealImagenette,
                  extractor: Callable[[torch.Tensor], torch.Tensor], extractor_id: str, quirks: EvalQuirks,
                  cache_dir, *, max_real: Optional[int] = None, batch_size: int = 50, progress: bool = False) -> dict:
    """FID of the generated images not of class `forget` against real images of the other classes.

    The real set: `select_real` (all, or `max_real` class-balanced), resized and center-cropped to the
    generated size; both sets go through `quirks.apply` before `extractor` (images (B, 3, H, W) in
    [-1, 1] -> (B, D)). The real statistics are cached in `cache_dir` under a key naming the source,
    the forget class, the size, the count and the quirks. Returns {"fid", "fid_features" (the
    extractor id), "fid_quirks", "fid_n_generated", "fid_n_real", "fid_dims", "fid_real"}.
    """
    gen = [it.path for it in items if it.cls != forget]
    if len(gen) < 2:
        raise DataError(f"{len(gen)} generated images of classes other than '{forget}'; the FID needs >= 2")
    size = image_size(gen[0])
    refs = [r for _, r in select_real(real.items, forget, max_real)]
    tags = sorted(name for name in ("minmax_stretch", "uint8_cast", "bgr") if getattr(quirks, name))
    key = (f"imagenette-remaining/{real.describe}/forget={class_key(forget)}/size={size[0]}x{size[1]}/n={len(refs)}"
           f"/quirks={','.join(tags)}")

    def real_images():
        return (quirks.apply(b) for b in real_batches(real, refs, size, batch_size, progress=progress))

    mu_r, sigma_r = reference_statistics(key, real_images, extractor, extractor_id, cache_dir, batch_size=batch_size)
    feats = np.concatenate([extract_features(extractor, quirks.apply(b), batch_size)  # (N, D)
                            for b in image_batches(gen, batch_size, desc="generated", progress=progress)])
    fid = fid_from_statistics(*drop_shared_constants(*feature_statistics(feats), mu_r, sigma_r))
    return {"fid": fid, "fid_features": extractor_id, "fid_quirks": tags, "fid_n_generated": len(feats),
            "fid_n_real": len(refs), "fid_dims": int(feats.shape[1]), "fid_real": real.describe}
