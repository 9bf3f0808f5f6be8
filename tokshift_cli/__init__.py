"""tokshift-cli: Kinetics-400 video classification and features with the TokShift transformer.

Importing the package is cheap (no torch); the heavy names below load on first use::

    from tokshift_cli import load_model
    model = load_model("tokshift-b16-8x224")
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "load_model": "models.weights",
    "resolve_model": "models.weights",
    "TokShiftConfig": "models.config",
    "TokShiftViT": "models.tokshift",
    "create_model": "models.tokshift",
    "convert_checkpoint": "models.convert",
    "open_video": "video",
    "clip_indices": "video.sampling",
    "Views": "video.sampling",
    "preprocess": "video.transforms",
    "classify": "engine",
    "extract_features": "features",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
