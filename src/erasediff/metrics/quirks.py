"""The peers' evaluation quirks (docs/evaluation.md "The peers' quirks as options"; docs/peers.md), each a pure function.

The standard protocol is the default everywhere; `EvalQuirks` switches each quirk on by name so that
a user can reproduce the paper's numbers or the correct ones. All image functions take and return
float tensors (N, C, H, W) in the project's range [-1, 1].

| quirk                      | peer code                                          | paper numbers          |
|----------------------------|----------------------------------------------------|------------------------|
| minmax_stretch             | SA/EraseDiff/SalUn DDPM `save_image(normalize=True)` | Table 1 FID, P, R, IS |
| bgr                        | guided-diffusion `evaluator.py` (`cv2.imread`)     | Table 1 FID, P, R, IS  |
| swap_precision_recall      | `evaluator.py <generated> <real>` argument order   | Table 1 Precision/Recall |
| is_on_reference            | the same argument order: IS of the real folder     | Table 1 (IS, not shown) |
| uint8_cast                 | EraseDiff/SalUn SD `compute-fid.py`                | Table 4 FID            |
| inception_dims = 64        | torchmetrics `FID(feature=64)` in `compute-fid.py` | Table 4 FID            |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erasediff.errors import ErasediffError


def _check(images: torch.Tensor, what: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ErasediffError(f"{what} needs a float (N, C, H, W) tensor in [-1, 1] (got {shape})")


def minmax_stretch(images: torch.Tensor) -> torch.Tensor:
    """Per-image min–max stretch to the full range, as `torchvision.utils.save_image(x, normalize=True)`.

    SA, EraseDiff and SalUn (DDPM) save every PNG, real and generated, one image per call with
    normalize=True: each image is mapped by (x − min) / max(max − min, 1e-5) over all its pixels and
    channels to [0, 1] (docs/peers.md "Selective Amnesia"), so their Table 1 FID / precision / recall are on
    stretched images. Returns the stretched images mapped back to [-1, 1]; 8-bit rounding is left to
    whoever writes the PNG.
    """
    _check(images, "minmax_stretch")
    flat = images.flatten(1)
    low = flat.min(dim=1).values[:, None, None, None]  # (N, 1, 1, 1)
    high = flat.max(dim=1).values[:, None, None, None]
    unit = (images - low) / (high - low).clamp(min=1e-5)  # [0, 1], torchvision's norm_range
    return unit * 2.0 - 1.0


def bgr(images: torch.Tensor) -> torch.Tensor:
    """Reverse the channel order (RGB <-> BGR), as reading PNGs with `cv2.imread` does.

    guided-diffusion's `evaluator.py`, used by SA/EraseDiff/SalUn for the paper's Table 1, reads both
    folders with cv2 and feeds BGR arrays to an Inception graph trained on RGB (docs/peers.md
    "Selective Amnesia"). Single-channel images are returned unchanged.
    """
    _check(images, "bgr")
    return images.flip(1)


def uint8_cast(images: torch.Tensor) -> torch.Tensor:
    """What `tensor.to(torch.uint8)` does to images in [-1, 1], returned as [-1, 1] floats again.

    EraseDiff's and SalUn's SD `compute-fid.py` normalise both the real and the generated Imagenette
    images to [-1, 1] and then cast them to uint8 before torchmetrics' FID (docs/peers.md, SalUn issues
    #18/#23; docs/evaluation.md; the paper's Table 4). The cast truncates toward zero and wraps modulo 256: values in
    (−1, 1) become 0, exactly 1.0 becomes 1 and exactly −1.0 becomes 255 (stated here explicitly, since
    a float-to-uint8 cast of a negative value is undefined in C). So the images collapse to the
    intensities {0, 1, 255} of 255; returned as v / 127.5 − 1, i.e. {−1, −0.992, 1}.
    """
    _check(images, "uint8_cast")
    wrapped = torch.trunc(images).to(torch.int64).remainder(256)  # the uint8 values 0..255
    return wrapped.to(images.dtype) / 127.5 - 1.0


def swap_precision_recall(metrics: dict) -> dict:
    """A copy of `metrics` with "precision" and "recall" exchanged.

    guided-diffusion's `evaluator.py` takes the reference batch first and the samples second, but the
    SA/EraseDiff READMEs call it as `evaluator.py <generated_dir> <real_dir>`, so its printed
    "Precision" is the standard recall and vice versa (docs/evaluation.md "The peers' quirks as options"): the paper's Table 1
    (unscrubbed P 0.392, R 0.787) most likely reports them in that order.
    """
    if "precision" not in metrics or "recall" not in metrics:
        raise ErasediffError(f"swap_precision_recall needs 'precision' and 'recall' keys (got {sorted(metrics)})")
    return {**metrics, "precision": metrics["recall"], "recall": metrics["precision"]}


@dataclass(frozen=True)
class EvalQuirks:
    """Which peer quirks to reproduce; all off (the standard protocol) by default.

    minmax_stretch, uint8_cast, bgr: image transforms, applied by `apply` to real and generated images
    alike (as the peers do), in the order the peers' pipelines meet them: stretch when a PNG is saved,
    uint8 cast when tensors are prepared, BGR when a PNG is read. No peer combines the first two.
    swap_precision_recall: report precision/recall in `evaluator.py`'s printed order (`apply_metrics`).
    is_on_reference: compute the Inception Score on the real reference images instead of the
    generated ones, as `evaluator.py <generated> <real>` does (the evaluation code picks the set).
    inception_dims: 2048 (standard FID) or 64 (torchmetrics `feature=64`, the paper's Table 4); pass it
    to `fid.inception_extractor`.

    `EvalQuirks.sa_table1()` and `EvalQuirks.sd_table4()` give the settings that reproduce the paper.
    """

    minmax_stretch: bool = False
    uint8_cast: bool = False
    bgr: bool = False
    swap_precision_recall: bool = False
    is_on_reference: bool = False
    inception_dims: int = 2048

    @classmethod
    def sa_table1(cls) -> "EvalQuirks":
        """SA / EraseDiff DDPM CIFAR10 protocol (the paper's Table 1): stretch, BGR, swapped P/R, IS on real."""
        return cls(minmax_stretch=True, bgr=True, swap_precision_recall=True, is_on_reference=True)

    @classmethod
    def sd_table4(cls) -> "EvalQuirks":
        """EraseDiff / SalUn Imagenette FID protocol (the paper's Table 4): uint8 cast, 64-d features."""
        return cls(uint8_cast=True, inception_dims=64)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The enabled image quirks applied to images (N, C, H, W) in [-1, 1]; unchanged if none is on."""
        _check(images, "EvalQuirks.apply")
        if self.minmax_stretch:
            images = minmax_stretch(images)
        if self.uint8_cast:
            images = uint8_cast(images)
        if self.bgr:
            images = bgr(images)
        return images

    def apply_metrics(self, metrics: dict) -> dict:
        """`metrics` with precision/recall swapped if swap_precision_recall is on; unchanged otherwise."""
        return swap_precision_recall(metrics) if self.swap_precision_recall else dict(metrics)
