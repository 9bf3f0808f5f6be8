"""What happens when in long videos: windows every hop and segments (:mod:`.windows`), and the pictures of a
timeline (:mod:`.render`).

Importing the package is cheap; each name below loads its module on first use, so
``from tokshift_cli.timeline import parse_hop`` keeps working.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "parse_hop": "windows",
    "resolve_labels": "windows",
    "TimelineOptions": "windows",
    "TimelineResult": "windows",
    "window_edges": "windows",
    "top_k_of": "windows",
    "make_segments": "windows",
    "TimelineFiles": "windows",
    "doc_json": "windows",
    "csv_rows": "windows",
    "timeline": "windows",
    "plot_timeline": "render",
    "render_video": "render",
    "smooth_windows": "render",
    "format_time": "render",
    "VideoTimeline": "render",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
