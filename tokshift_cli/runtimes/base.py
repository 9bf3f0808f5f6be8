"""The runtime interface and :class:`RuntimeModel`, the drop-in for the torch model that the tasks already take.

A :class:`Runtime` turns the exportable network (:class:`~.graph.FrameFeatures`) into model files in its format
(:meth:`Runtime.convert`), and model files into a callable (:meth:`Runtime.load`): float32 clips
``[B, T, 3, H, W]`` -> float32 per-frame features ``[B, T, C]``. :class:`RuntimeModel` wraps that callable with the
model's ``config``, its float32 head and ``resolved``, so ``engine``, ``features``, ``evaluate`` and ``timeline``
run it unchanged: only the network call differs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError

#: A loaded network: float32 clips [B, T, 3, H, W] (numpy) -> float32 features [B, T, C] (numpy).
Network = Callable[[np.ndarray], np.ndarray]


class RuntimeMissingError(WeightsError):
    """A runtime's package is not installed (exit 3, like any model that cannot be loaded)."""


class Runtime:
    """One way to run the network. Subclasses set the class attributes and implement the methods."""

    name: str = ""
    package: str = ""  #: the pip package that provides it
    fmt: str | None = None  #: ``tokshift export --format`` value whose files it reads (None: not exportable)
    files: tuple[str, ...] = ()  #: the model files :meth:`convert` writes
    precisions: tuple[str, ...] = ("float32",)  #: what :meth:`load` runs
    exact: tuple[str, ...] = ("float32",)  #: precisions whose logits match torch's at that precision

    def missing(self) -> str | None:
        """None when usable here, else one line saying what to install."""
        try:
            self._import()
        except ImportError as e:
            return f"the {self.name} runtime needs `pip install {self.package}` ({e})"
        return None

    def require(self) -> None:
        why = self.missing()
        if why is not None:
            raise RuntimeMissingError(why)

    def version(self) -> str:
        return str(getattr(self._import(), "__version__", "?"))

    def _import(self) -> Any:
        raise NotImplementedError

    def convert(self, net: nn.Module, example: torch.Tensor, folder: Path) -> None:
        """Write ``net`` (float32, dynamic batch, the example's T/H/W) as this runtime's files in ``folder``."""
        raise NotImplementedError

    def load(self, folder: Path, precision: str, *, threads: int | None = None) -> Network:
        raise NotImplementedError

    def quantize(self, folder: Path, calibration: list[np.ndarray], out: Path) -> None:
        """int8: quantize the float32 files of ``folder`` into ``out`` with these calibration batches."""
        raise WeightsError(f"{self.name}: int8 is not offered by this runtime")


def file_sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class RuntimeModel(nn.Module):
    """The torch model's interface over a runtime's network: ``forward_frame_features`` runs the runtime,
    ``forward_head_from_frame_features`` the float32 head (in torch, never under autocast). Its state dict holds
    the head and ``graph_sha256`` (the model files' hash), so resume fingerprints see which graph ran."""

    def __init__(self, network: Network, head: nn.Module, fc_norm: nn.Module, config: Any, *, runtime: str,
                 precision: str, graph_sha256: str, resolved: Any = None, export: dict[str, Any] | None = None):
        super().__init__()
        self.network = network
        self.head = head.float().eval()
        self.fc_norm = fc_norm.float().eval()
        self.register_buffer("graph_sha256", torch.tensor(list(bytes.fromhex(graph_sha256)), dtype=torch.uint8))
        self.config = config
        self.resolved = resolved
        self.runtime = runtime
        self.precision = precision
        self.export = export
        self.eval()

    def forward_frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips ``[B, T, 3, H, W]`` -> final-norm [CLS] of every frame ``[B, T, C]`` (float32), by the runtime."""
        if x.ndim != 5:
            raise ValueError(f"expected clips [B, T, 3, H, W], got shape {tuple(x.shape)}")
        a = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(np.asarray(self.network(a), dtype=np.float32))

    def forward_head_from_frame_features(self, frame_features: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            return self.head(self.fc_norm(frame_features.float())).mean(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_frame_features(x).mean(1)

    def forward_logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.forward_frame_features(x)
        return self.forward_head_from_frame_features(feats), feats.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head_from_frame_features(self.forward_frame_features(x))

    def extra_repr(self) -> str:
        return f"runtime={self.runtime}, precision={self.precision}"
