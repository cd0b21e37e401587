"""Improved precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models"), k = 3, on feature vectors.

Each set's manifold is the union of balls around its points, the radius of a point being the distance
to its k-th nearest neighbour within the same set (the point itself excluded). Precision = share of
generated points inside the real manifold (quality); recall = share of real points inside the
generated manifold (coverage). This is what OpenAI guided-diffusion's `evaluator.py` computes, which
SA / SalUn / EraseDiff use for the paper's Table 1 (`ManifoldEstimator`, nhood_sizes (3,)); that script
prints the two swapped when called as the peers' READMEs call it (see `quirks.swap_precision_recall`).

Distances are Euclidean, computed block-wise with `torch.cdist` on the features' device: memory is
O(batch_size × N), never N × N.
"""

from __future__ import annotations

import numpy as np
import torch

from erasediff.errors import ErasediffError


def _as_features(features, what: str, device: torch.device | None) -> torch.Tensor:
    """(N, D) torch tensor or array-like -> float32 tensor (N, D) on `device` (default: where it is)."""
    x = features if isinstance(features, torch.Tensor) else torch.from_numpy(np.asarray(features))
    if x.dim() != 2:
        raise ErasediffError(f"{what} must be a 2-D (N, D) array (got shape {tuple(x.shape)})")
    x = x.detach().to(device=device or x.device, dtype=torch.float32)
    if not torch.isfinite(x).all():
        raise ErasediffError(f"{what} contain NaN or infinite values")
    return x


def knn_radii(features: torch.Tensor, k: int = 3, batch_size: int = 1024,
              reference: torch.Tensor | None = None) -> torch.Tensor:
    """Distance of every row of features (N, D) to its k-th nearest other row: (N,).

    Without `reference`: among the rows themselves, the (k+1)-th smallest distance of a row to all rows,
    its zero self-distance being the first (as guided-diffusion's `ManifoldEstimator`); exact duplicates
    count as neighbours at distance 0. With `reference` (M, D): the k-th smallest distance to its rows
    (query points that are not among them, e.g. held-out or generated images).
    """
    ref = features if reference is None else reference
    rank = k + 1 if reference is None else k
    if len(ref) < rank:
        raise ErasediffError(f"k-nearest-neighbour radii with k={k} need more than {rank - 1} reference feature "
                             f"vectors (got {len(ref)})")
    radii = torch.empty(len(features), dtype=features.dtype, device=features.device)
    for start in range(0, len(features), batch_size):
        block = torch.cdist(features[start:start + batch_size], ref)  # (B, M) Euclidean distances
        radii[start:start + batch_size] = torch.kthvalue(block, rank, dim=1).values
    return radii


def _inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(len(points),) bool: whether each point lies in some ball (centre_j, radius_j), borders included."""
    inside = torch.empty(len(points), dtype=torch.bool, device=points.device)
    for start in range(0, len(points), batch_size):
        block = torch.cdist(points[start:start + batch_size], centres)  # (B, N_centres)
        inside[start:start + batch_size] = (block <= radii[None, :]).any(dim=1)
    return inside


def precision_recall(real_features, fake_features, k: int = 3, batch_size: int = 1024,
                     device: str | torch.device | None = None) -> dict:
    """Improved precision and recall of fake_features (N_f, D) against real_features (N_r, D).

    Accepts torch tensors or numpy arrays (e.g. Inception pool_3 features from `fid.extract_features`).
    k: neighbourhood size (3 in the paper and in guided-diffusion's evaluator); each set needs > k rows.
    batch_size: rows per distance block (memory batch_size × max(N_r, N_f) floats).
    Returns {"precision", "recall": float in [0, 1], "k", "n_real", "n_fake": int}.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ErasediffError(f"k must be a positive int (got {k!r})")
    if batch_size < 1:
        raise ErasediffError(f"batch_size must be >= 1 (got {batch_size})")
    dev = torch.device(device) if device is not None else None
    real = _as_features(real_features, "real_features", dev)
    fake = _as_features(fake_features, "fake_features", dev or real.device)
    if real.shape[1] != fake.shape[1]:
        raise ErasediffError(f"feature dimensions differ: real_features has D={real.shape[1]}, "
                             f"fake_features has D={fake.shape[1]}")
    for name, x in (("real_features", real), ("fake_features", fake)):
        if len(x) <= k:
            raise ErasediffError(f"precision/recall with k={k} needs more than {k} rows in {name} (got {len(x)})")
    real_radii = knn_radii(real, k, batch_size)
    fake_radii = knn_radii(fake, k, batch_size)
    precision = _inside(fake, real, real_radii, batch_size).double().mean()
    recall = _inside(real, fake, fake_radii, batch_size).double().mean()
    return {"precision": float(precision), "recall": float(recall), "k": k, "n_real": len(real), "n_fake": len(fake)}
