"""``tokshift live``: actions recognised in a live stream with bounded latency (:mod:`.runner`), and the JSON Lines
file its events are appended to (:mod:`.events`)."""

from __future__ import annotations

from .events import EventFile, event_json
from .runner import LiveOptions, LiveStats, classify_window, run_live

__all__ = ["LiveOptions", "LiveStats", "run_live", "classify_window", "EventFile", "event_json"]
