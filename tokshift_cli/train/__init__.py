"""Fine-tuning TokShift: the loop (:mod:`.loop`), its data (:mod:`.data`), the starting model (:mod:`.model`),
checkpoints (:mod:`.checkpoint`) and the run folder's files (:mod:`.files`).

Importing the package is cheap; each name below loads its module on first use, so
``from tokshift_cli.train import TrainOptions`` keeps working.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "TrainOptions": "loop",
    "default_lr": "loop",
    "resolve_precision": "loop",
    "make_scheduler": "loop",
    "TrainResult": "loop",
    "train": "loop",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
