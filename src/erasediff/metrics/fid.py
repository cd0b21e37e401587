"""Fréchet distance between two sets of feature vectors (the FID formula on any feature extractor).

FID fits a Gaussian to each set of features and compares them:
d² = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^{1/2}). The extractor is an argument: Inception-v3 pool
features for FID proper, the digits classifier's `.features` for the offline setup. The matrix square
root is pytorch-fid's (`calculate_frechet_distance`), so numbers match the reference implementation.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from erasediff.errors import ErasediffError


def _as_matrix(features, what: str = "features") -> np.ndarray:
    """features (N, D) torch tensor or array-like -> float64 numpy (N, D)."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    arr = np.asarray(features, dtype=np.float64)
    if arr.ndim != 2:
        raise ErasediffError(f"{what} must be a 2-D (N, D) array (got shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ErasediffError(f"{what} contain NaN or infinite values")
    return arr


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D), float64, of features (N, D); needs N >= 2."""
    arr = _as_matrix(features)
    if len(arr) < 2:
        raise ErasediffError(f"feature statistics need at least 2 feature vectors (got {len(arr)})")
    return arr.mean(axis=0), np.cov(arr, rowvar=False).reshape(arr.shape[1], arr.shape[1])


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance (squared-feature units) between features_a (N_a, D) and features_b (N_b, D).

    Accepts torch tensors or numpy arrays. Each set needs >= 2 rows; a reliable estimate needs many
    more rows than D, since the covariances are estimated from the samples. Dimensions constant at the
    same value in both sets are dropped first (they contribute exactly 0).
    """
    a, b = _as_matrix(features_a, "features_a"), _as_matrix(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ErasediffError(f"feature dimensions differ: features_a has D={a.shape[1]}, features_b has D={b.shape[1]}")
    if min(len(a), len(b)) < 2:
        raise ErasediffError(f"the Fréchet distance needs at least 2 feature vectors per set (got {len(a)} and {len(b)})")
    # A dimension that holds one and the same value in both sets (e.g. a dead ReLU unit) adds exactly 0 to
    # d² but makes the covariances singular, which sqrtm warns about; dropping it leaves d² unchanged.
    keep = ~((np.ptp(a, axis=0) == 0) & (np.ptp(b, axis=0) == 0) & (a[0] == b[0]))
    if keep.any():
        a, b = a[:, keep], b[:, keep]
    mu_a, sigma_a = feature_statistics(a)
    mu_b, sigma_b = feature_statistics(b)
    with warnings.catch_warnings():
        # pytorch-fid 0.3 passes sqrtm(disp=False), deprecated since SciPy 1.16; the result is unaffected.
        warnings.filterwarnings("ignore", message="The `disp` argument is deprecated", category=DeprecationWarning)
        return float(calculate_frechet_distance(mu_a, sigma_a, mu_b, sigma_b))


def _device_of(extractor: Callable) -> torch.device | None:
    """The device of the module behind `extractor` (a module or one of its bound methods), if any."""
    owner = extractor if isinstance(extractor, torch.nn.Module) else getattr(extractor, "__self__", None)
    if isinstance(owner, torch.nn.Module):
        param = next(owner.parameters(), None)
        return None if param is None else param.device
    return None


@torch.inference_mode()
def extract_features(extractor: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     batch_size: int = 256) -> np.ndarray:
    """Features of images (N, C, H, W) as float64 numpy (N, D), computed in batches.

    `extractor` maps a batch to (B, D) (or (B, D, 1, 1) like pytorch-fid's Inception; trailing
    dimensions are flattened). Batches are moved to the extractor's device when it is a module or a
    method of one.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ErasediffError(f"images must be a non-empty (N, C, H, W) tensor (got {shape})")
    device = _device_of(extractor)
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        out.append(extractor(batch if device is None else batch.to(device)).flatten(1).double().cpu())
    return torch.cat(out).numpy()
