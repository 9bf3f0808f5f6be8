"""Is a relevance map faithful to the model? Deletion and insertion curves against random orders; which moments
mattered, by occluding one sampled frame at a time.

* Deletion (Petsiuk et al., RISE, 2018): patches are masked in order of relevance, most relevant first, over all
  frames of a view at once (the maps are joint over the clip); the target's probability is read after each step.
  A faithful map makes it fall fast: a small area under the curve. Insertion starts from the all-masked view and
  reveals patches in the same order: a large area. Both are compared with the mean of ``random_orders`` random
  orders (seeds 0, 1, ...): ``deletion_ratio = area / random area`` (< 1 beats random), ``insertion_ratio``
  likewise (> 1 beats random). A masked patch is set to 0 in normalised units (the normalisation's mean colour).
* Per-moment importance: each sampled frame in turn is replaced by the mean of its neighbouring sampled frames
  (one neighbour at the clip's ends) and the drop of the target's probability is recorded (negative: that frame
  argued against the target).

Every forward here is the fast inference path (``forward_frame_features`` + head under ``inference_mode``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["OCCLUSION", "MASK", "probabilities", "frame_importance", "Curves", "deletion_insertion"]

OCCLUSION = "each sampled frame replaced by the mean of its neighbouring sampled frames (one at the clip ends)"
MASK = "patches set to 0 in normalised units (the normalisation mean colour)"


def probabilities(model: torch.nn.Module, views: torch.Tensor, target: int, *, batch_size: int = 8) -> np.ndarray:
    """Softmax probability of ``target`` for each clip of ``views`` ``[M, T, 3, S, S]`` (``batch_size`` a call)."""
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, views.shape[0], batch_size):
            x = views[i:i + batch_size].to(device=device, dtype=torch.float32)
            logits = model.forward_head_from_frame_features(model.forward_frame_features(x)).float()
            out.append(logits.softmax(-1)[:, target].cpu())
    return torch.cat(out).numpy().astype(np.float64)


def frame_importance(model: torch.nn.Module, view: torch.Tensor, target: int, base: float, *,
                     batch_size: int = 8) -> np.ndarray:
    """Drop of the target's probability ``[T]`` when each frame of ``view`` ``[T, 3, S, S]`` is occluded
    (:data:`OCCLUSION`); ``base`` is the probability of the intact view."""
    t = view.shape[0]
    occluded = view.unsqueeze(0).repeat(t, 1, 1, 1, 1)
    for j in range(t):
        nb = [k for k in (j - 1, j + 1) if 0 <= k < t]
        occluded[j, j] = view[nb].mean(0) if nb else 0.0
    return base - probabilities(model, occluded, target, batch_size=batch_size)


@dataclass
class Curves:
    """One view's deletion and insertion curves (target probability at each fraction of patches)."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    random_deletion: np.ndarray  #: mean over the random orders
    random_insertion: np.ndarray

    @staticmethod
    def area(y: np.ndarray, x: np.ndarray) -> float:
        return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)

    def to_dict(self) -> dict[str, Any]:
        f = self.fractions
        d, i = self.area(self.deletion, f), self.area(self.insertion, f)
        rd, ri = self.area(self.random_deletion, f), self.area(self.random_insertion, f)
        return {"fractions": np.round(f, 4).tolist(),
                "deletion": np.round(self.deletion, 5).tolist(), "insertion": np.round(self.insertion, 5).tolist(),
                "random_deletion": np.round(self.random_deletion, 5).tolist(),
                "random_insertion": np.round(self.random_insertion, 5).tolist(),
                "deletion_area": round(d, 5), "random_deletion_area": round(rd, 5),
                "deletion_ratio": round(d / rd, 4) if rd > 0 else None,
                "insertion_area": round(i, 5), "random_insertion_area": round(ri, 5),
                "insertion_ratio": round(i / ri, 4) if ri > 0 else None,
                "beats_random": bool(d < rd and i > ri)}


def _masked(view: torch.Tensor, order: np.ndarray, counts: list[int], patch: int, *, reveal: bool) -> torch.Tensor:
    """``len(counts)`` copies of ``view`` ``[T, 3, S, S]``: copy k has the first ``counts[k]`` patches of ``order``
    masked (deletion) or only those revealed (insertion)."""
    t, _, s, _ = view.shape
    side = s // patch
    out = []
    for c in counts:
        keep = torch.zeros(t * side * side) if reveal else torch.ones(t * side * side)
        keep[torch.from_numpy(order[:c].copy())] = 1.0 if reveal else 0.0
        m = keep.view(t, 1, side, 1, side, 1).expand(t, 1, side, patch, side, patch).reshape(t, 1, s, s)
        out.append(view * m.to(device=view.device, dtype=view.dtype))
    return torch.stack(out)


def deletion_insertion(model: torch.nn.Module, view: torch.Tensor, relevance_map: torch.Tensor, target: int, *,
                       steps: int = 8, random_orders: int = 3, batch_size: int = 8) -> Curves:
    """Deletion and insertion curves of one view ``[T, 3, S, S]`` for its map ``[T, h, w]`` (most relevant
    first; ties in a fixed order) and for ``random_orders`` random orders (see the module docstring). ``steps``
    intervals: ``steps + 1`` points from 0 to all patches. The two ends are shared by every order: the intact
    view and the all-masked one are computed once."""
    patch = view.shape[-1] // relevance_map.shape[-1]
    total = relevance_map.numel()
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = [int(round(f * total)) for f in fractions]
    inner = counts[1:-1]
    score = relevance_map.detach().float().reshape(-1).numpy()
    orders = [np.argsort(-score, kind="stable")]
    orders += [np.random.default_rng(seed).permutation(total) for seed in range(random_orders)]
    batch = [view.unsqueeze(0), torch.zeros_like(view).unsqueeze(0)]  # intact, all masked
    for order in orders:
        batch.append(_masked(view, order, inner, patch, reveal=False))
        batch.append(_masked(view, order, inner, patch, reveal=True))
    p = probabilities(model, torch.cat(batch), target, batch_size=batch_size)
    intact, blank = p[0], p[1]
    k = len(inner)
    curves = []
    for j in range(len(orders)):
        off = 2 + 2 * k * j
        dele = np.concatenate([[intact], p[off:off + k], [blank]])
        ins = np.concatenate([[blank], p[off + k:off + 2 * k], [intact]])
        curves.append((dele, ins))
    rd = np.mean([c[0] for c in curves[1:]], axis=0) if random_orders else np.full_like(fractions, np.nan)
    ri = np.mean([c[1] for c in curves[1:]], axis=0) if random_orders else np.full_like(fractions, np.nan)
    return Curves(fractions, curves[0][0], curves[0][1], rd, ri)
