"""The events of ``tokshift live`` as JSON Lines: one compact line per event, appended to ``--out`` and fsync'ed
after every line, so a killed run loses at most the line being written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from ..errors import OutputError

__all__ = ["EventFile", "event_json"]


def event_json(event: dict[str, Any]) -> str:
    """One event as one line of JSON (no newline): compact, keys in the order they were added."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class EventFile:
    """``--out FILE``: events appended (the file is created if needed, never truncated), each line fsync'ed."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f: IO[str] | None = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"--out {self.path}: cannot be opened for appending ({e.strerror or e})") from None

    def write(self, event: dict[str, Any]) -> None:
        if self._f is None:
            return
        try:
            self._f.write(event_json(event) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise OutputError(f"--out {self.path}: cannot be written ({e.strerror or e})") from None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> "EventFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
