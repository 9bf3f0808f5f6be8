"""Classification metrics of a labelled set: top-1, top-k, mean class accuracy, per class, confusion.

Definitions (docs/evaluate.md):

* **top-1** / **top-k**: the fraction of videos whose true class is the first / among the first ``k`` classes of
  their scores;
* **mean class accuracy**: the top-1 accuracy of each class present in the data (its recall), averaged over those
  classes, so a rare class weighs as much as a common one;
* **confusion**: ``matrix[i][j]`` counts videos of true class ``labels[i]`` predicted (top-1) as ``labels[j]``;
  ``labels`` are the classes that occur as a true label or as a prediction, in the model's class order.

Videos that could not be scored (not decodable, missing) are counted apart (``failed``) and are in no metric,
unless ``failed_as_wrong``: then each is a video of its class that no prediction got right (no confusion entry).
Torch-free: numbers in, numbers out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Outcome", "compute_metrics"]


@dataclass(frozen=True)
class Outcome:
    """One video: its true class index, and its predicted class indices best first (None: it failed)."""

    true: int
    ranked: tuple[int, ...] | None


def compute_metrics(outcomes: Sequence[Outcome], labels: Sequence[str], *, k: int = 5,
                    failed_as_wrong: bool = False, worst: int = 10, pairs: int = 10) -> dict[str, Any]:
    """The metrics of ``outcomes`` (module docstring). ``labels``: the model's class names by index. Returns
    ``{"counts", "metrics", "per_class", "confusion", "worst_classes", "confused_pairs"}`` (plain JSON types)."""
    scored = [o for o in outcomes if o.ranked is not None]
    failed = [o for o in outcomes if o.ranked is None]
    n = len(scored) + (len(failed) if failed_as_wrong else 0)
    hit1 = sum(1 for o in scored if o.ranked[0] == o.true)
    hitk = sum(1 for o in scored if o.true in o.ranked[:k])
    classes = sorted({o.true for o in outcomes if o.ranked is not None or failed_as_wrong})
    per_class = []
    for c in classes:
        mine = [o for o in scored if o.true == c]
        miss = sum(1 for o in failed if o.true == c)
        support = len(mine) + (miss if failed_as_wrong else 0)
        right1 = sum(1 for o in mine if o.ranked[0] == c)
        rightk = sum(1 for o in mine if c in o.ranked[:k])
        per_class.append({"label": labels[c], "index": c, "support": support, "correct": right1,
                          "accuracy": _ratio(right1, support), f"top{k}_accuracy": _ratio(rightk, support),
                          "failed": miss})
    present = [pc for pc in per_class if pc["support"] > 0]
    mean_class = float(np.mean([pc["accuracy"] for pc in present])) if present else None
    seen = sorted({o.true for o in scored} | {o.ranked[0] for o in scored})
    pos = {c: i for i, c in enumerate(seen)}
    matrix = np.zeros((len(seen), len(seen)), dtype=np.int64)
    for o in scored:
        matrix[pos[o.true], pos[o.ranked[0]]] += 1
    off = [(int(matrix[i, j]), seen[i], seen[j]) for i in range(len(seen)) for j in range(len(seen))
           if i != j and matrix[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    worst_list = sorted(present, key=lambda pc: (pc["accuracy"], -pc["support"], pc["index"]))[:worst]
    return {
        "counts": {"videos": len(outcomes), "scored": len(scored), "failed": len(failed),
                   "counted": n},
        "metrics": {"top1": _ratio(hit1, n), f"top{k}": _ratio(hitk, n), "mean_class_accuracy": mean_class,
                    "correct_top1": hit1, f"correct_top{k}": hitk},
        "per_class": per_class,
        "confusion": {"labels": [labels[c] for c in seen], "indices": seen, "matrix": matrix.tolist()},
        "worst_classes": [{"label": pc["label"], "accuracy": pc["accuracy"], "support": pc["support"]}
                          for pc in worst_list],
        "confused_pairs": [{"true": labels[t], "predicted": labels[p], "count": c} for c, t, p in off[:pairs]],
    }


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None
