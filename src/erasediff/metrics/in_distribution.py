"""Forgetting as a judge that noise cannot fool: judged as the class *and* inside the real class (docs/evaluation.md).

p_f alone asks a small classifier about images that may be far from anything it was trained on; a
noise-like sample that keeps a trace of the class's structure can be read as that class with high
confidence. This measure counts an image of the forgotten class c only when
- the judge's top-1 class is c, and
- its judge features lie inside the real class: the distance to its k-th nearest real training image
  of class c is at most the `quantile` (0.99) of the same distance for real *held-out* images of c.

So real held-out digits pass (99 % by construction of the threshold), pure noise and heavily noised
digits fail, and a model that still draws the class passes. Lower is better after unlearning.
"""

from __future__ import annotations

import torch

from .precision_recall import knn_radii


def in_distribution_forgetting(
    gen_logits: torch.Tensor, gen_features: torch.Tensor, c: int, real_features: torch.Tensor,
    held_out_features: torch.Tensor, k: int = 3, quantile: float = 0.99,
) -> dict[str, float]:
    """Share of generated images of class c judged as c and inside the real class (see module docstring).

    gen_logits (N, K), gen_features (N, D): the judge on the images generated for c; real_features (M, D):
    real training images of c; held_out_features (H, D): real held-out images of c (the threshold).
    Returns p_f_in_dist (the share), in_dist_f (the share inside the class whatever the judge says) and
    knn_threshold (the feature distance the threshold came to).
    """
    real = real_features.double()
    threshold = float(torch.quantile(knn_radii(held_out_features.double(), k, reference=real), quantile))
    inside = knn_radii(gen_features.double(), k, reference=real) <= threshold
    judged = gen_logits.argmax(dim=1) == c
    return {
        "p_f_in_dist": float((judged & inside).double().mean()),
        "in_dist_f": float(inside.double().mean()),
        "knn_threshold": threshold,
    }
