"""A training run's logs: ``metrics.jsonl`` (one JSON line per logging step and per epoch) and, optionally,
TensorBoard. Only rank 0 writes; a resumed run first cuts the lines a killed run wrote after its last checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from .files import TrainFiles

__all__ = ["RunLog"]


class RunLog:
    """``metrics.jsonl`` (and TensorBoard with ``tensorboard``) of one run; a no-op on ranks other than 0."""

    def __init__(self, files: TrainFiles, *, main: bool, tensorboard: bool = False):
        self.files, self.main, self.tensorboard = files, main, tensorboard
        self.f: Any = None
        self.tb: Any = None

    def open(self, *, resumed_step: int, metrics_bytes: int, step: int) -> None:
        """Open for appending; a resumed run truncates to ``metrics_bytes`` (the length its checkpoint recorded)."""
        if not self.main:
            return
        path = self.files.metrics
        if resumed_step and path.exists():
            with open(path, "r+b") as f:  # lines the killed run wrote after its last checkpoint are redone
                f.truncate(metrics_bytes)
        elif path.exists() and not resumed_step:
            path.unlink()
        self.f = open(path, "ab")
        if self.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.files.tensorboard), purge_step=step or None)

    def close(self) -> None:
        if self.f is not None:
            with contextlib.suppress(OSError):
                self.f.flush()
                os.fsync(self.f.fileno())
            self.f.close()
            self.f = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def write(self, line: dict[str, Any]) -> None:
        if not self.main:
            return
        self.f.write((json.dumps(line, allow_nan=False) + "\n").encode("utf-8"))
        self.f.flush()
        if self.tb is not None:
            prefix = "train" if line["type"] == "step" else "epoch"
            for key, value in line.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch"):
                    self.tb.add_scalar(f"{prefix}/{key}", value, line["step"])

    def synced_length(self) -> int:
        """Flush and fsync ``metrics.jsonl``; its byte length, which a checkpoint records."""
        self.f.flush()
        os.fsync(self.f.fileno())
        return self.f.tell()
