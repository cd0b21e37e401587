"""Weight distance (WD) of an unlearned model to the Retrain model (the paper's Table 3, after Tarun et al. 2023a).

The paper's exact formula is UNCONFIRMED (its values ≈ 1.35 for every method suggest a normalised
norm); docs/evaluation.md recommends reporting both the raw L2 distance ‖θ − θ_retrain‖₂ and the relative
one ‖θ − θ_retrain‖₂ / ‖θ_retrain‖₂, over the parameters the two models share.
"""

from __future__ import annotations

from typing import Mapping

import torch

from erasediff.errors import ErasediffError


def _tensors(model_or_state_dict, what: str) -> dict[str, torch.Tensor]:
    """Floating-point tensors by name: a module's parameters, or a state dict's float entries."""
    if isinstance(model_or_state_dict, torch.nn.Module):
        return {name: p.detach() for name, p in model_or_state_dict.named_parameters()}
    if isinstance(model_or_state_dict, Mapping):
        return {name: t.detach() for name, t in model_or_state_dict.items()
                if isinstance(t, torch.Tensor) and t.is_floating_point()}
    raise ErasediffError(f"{what} must be an nn.Module or a state dict (got {type(model_or_state_dict).__name__})")


def weight_distance(model_or_state_dict_a, reference) -> dict:
    """L2 distance of model a's weights to the reference's (the Retrain model), over matching tensors.

    Both arguments are an nn.Module (its named parameters) or a state dict (its floating-point
    tensors). Tensors are matched by name and must have equal shapes; the rest is skipped and counted.
    Computed in float64 on CPU. Returns {"l2": ‖a − b‖₂, "relative_l2": ‖a − b‖₂ / ‖b‖₂,
    "n_params": number of scalars compared, "n_tensors": tensors compared, "n_unmatched": tensors of
    a plus tensors of the reference left out}.
    """
    a, b = _tensors(model_or_state_dict_a, "model a"), _tensors(reference, "the reference")
    shared = sorted(n for n in set(a) & set(b) if a[n].shape == b[n].shape)
    if not shared:
        same_name = sorted(set(a) & set(b))
        detail = (f"{len(same_name)} names match but every shape differs, e.g. '{same_name[0]}': "
                  f"{tuple(a[same_name[0]].shape)} vs {tuple(b[same_name[0]].shape)}") if same_name else (
                  f"no parameter name matches (a has e.g. {sorted(a)[:2]}, the reference {sorted(b)[:2]})")
        raise ErasediffError(f"weight distance: nothing to compare, {detail}")
    sq_diff = sq_ref = 0.0
    n_params = 0
    for name in shared:
        x, y = a[name].to("cpu", torch.float64), b[name].to("cpu", torch.float64)
        sq_diff += float(((x - y) ** 2).sum())
        sq_ref += float((y ** 2).sum())
        n_params += y.numel()
    if sq_ref == 0.0:
        raise ErasediffError("weight distance: the reference's matching weights are all zero, relative L2 is undefined")
    l2 = sq_diff ** 0.5
    return {"l2": l2, "relative_l2": l2 / sq_ref ** 0.5, "n_params": n_params, "n_tensors": len(shared),
            "n_unmatched": len(a) + len(b) - 2 * len(shared)}
