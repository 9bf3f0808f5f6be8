"""Accuracy on a labelled set (:mod:`.accuracy`), read from folders, lists or CSVs (:mod:`.datasets`) and scored
by :mod:`.metrics` (torch-free).

Importing the package is cheap; each name below loads its module on first use, so
``from tokshift_cli.evaluate import EvalOptions`` keeps working.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "EvalOptions": "accuracy",
    "EvalResult": "accuracy",
    "ReportFiles": "accuracy",
    "evaluate": "accuracy",
    "merge_evaluation": "accuracy",
    "build_report": "accuracy",
    "write_predictions": "accuracy",
    "plot_confusion": "accuracy",
    "read_label_map_option": "accuracy",
    "load_labelled": "datasets",
    "Outcome": "metrics",
    "compute_metrics": "metrics",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
