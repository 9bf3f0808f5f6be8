"""Which frames to decode: the TokShift authors' dense test-time sampling, and the ``--views`` option.

The authors test every video with ``clips`` temporal clips x ``crops`` spatial crops ("10x3" = 30 views) and
average the logits over the views. A clip is ``frames`` frames taken every ``stride`` frames ("8x32": 8 frames,
stride 32, spanning 256 frames). Their ``read_clip`` (``data/dataset.py`` of VideoNetworks/TokShift-Transformer)
places the clips like this, for a video of ``n`` decodable frames::

    max_bound = max(n - frames * stride + 1, 1)
    tick      = n / clips                                   # a float, as in their code
    start_i   = clip(int(i * tick), 0, max_bound)           # i = 0 .. clips-1
    start_i   = 0 for every clip when max_bound == 1        # video shorter than one clip span
    frame_j   = (start_i + stride * j) mod n                # j = 0 .. frames-1, 0-based here

What that means for short and tiny videos (kept on purpose, so that scores match the authors'):

* A video with ``n <= frames * stride`` frames (256 for 8x32: about 10 s at 25 fps) has ``max_bound == 1``,
  so all ``clips`` clips start at frame 0 and are identical; frames past the end wrap around to the start
  (for n = 250: 0, 32, ..., 224; for n = 100: 0, 32, 64, 96, 28, 60, 92, 24). :func:`unique_clips` lets a caller
  compute such a clip once instead of ``clips`` times.
* A 1-frame video gives all-zero indices: every view sees the same single frame.
* Longer videos: clip ``i`` starts at ``int(i * n / clips)``, clamped to ``max_bound``; late clips can coincide
  (n = 1000, 8x32x10: the last two both start at 745 and end at frame 969). Only videos shorter than one clip
  span wrap around.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

__all__ = ["Views", "clip_indices", "unique_clips", "VALID_CROPS"]

#: Spatial crops per clip the authors' test augmentation supports here: 1 (centre) or 3 (centre, left, right).
VALID_CROPS = (1, 3)

_VIEWS_RE = re.compile(r"^\s*(\d+)\s*[xX\u00d7*]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Views:
    """Test-time views: ``clips`` temporal clips x ``crops`` spatial crops (the paper's "10x3")."""

    clips: int
    crops: int

    def __post_init__(self) -> None:
        if not isinstance(self.clips, int) or isinstance(self.clips, bool) or self.clips < 1:
            raise UsageError(f"views: the number of clips must be a positive integer, got {self.clips!r}")
        if self.crops not in VALID_CROPS:
            raise UsageError(f"views: the number of crops must be 1 (centre) or 3 (centre, left, right), "
                             f"got {self.crops!r}")

    @classmethod
    def parse(cls, text: str | "Views") -> "Views":
        """``"10x3"`` -> ``Views(10, 3)``; also accepts ``10X3``, ``10×3`` and ``10*3``."""
        if isinstance(text, Views):
            return text
        m = _VIEWS_RE.match(str(text))
        if not m:
            raise UsageError(f"--views {text!r}: expected CLIPSxCROPS, e.g. 1x1, 10x1 or 10x3 "
                             f"(the paper tests with 10x3)")
        return cls(int(m.group(1)), int(m.group(2)))

    @property
    def num_views(self) -> int:
        return self.clips * self.crops

    def __str__(self) -> str:
        return f"{self.clips}x{self.crops}"


def clip_indices(num_video_frames: int, frames: int, stride: int, clips: int) -> np.ndarray:
    """0-based frame indices ``[clips, frames]`` (int64) of the authors' dense test sampling (module docstring).

    ``num_video_frames`` must be the number of *decodable* frames (the authors counted extracted JPEGs).
    """
    n = int(num_video_frames)
    for name, value in (("num_video_frames", n), ("frames", frames), ("stride", stride), ("clips", clips)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    max_bound = max(n - frames * stride + 1, 1)
    if max_bound == 1:
        starts = np.zeros(clips, dtype=np.int64)
    else:
        tick = 1.0 * n / clips  # float arithmetic exactly as theirs: int(i * tick), not i * n // clips
        starts = np.clip(np.array([int(i * tick) for i in range(clips)], dtype=np.int64), 0, max_bound)
    offsets = np.arange(frames, dtype=np.int64) * stride
    return (starts[:, None] + offsets[None, :]) % n


def unique_clips(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``indices`` [clips, frames] in first-seen order, and ``inverse`` [clips] with
    ``unique[inverse] == indices``: compute each distinct clip once, then expand its outputs with ``inverse``.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2:
        raise ValueError(f"indices must be [clips, frames], got shape {indices.shape}")
    seen: dict[bytes, int] = {}
    order: list[int] = []
    inverse = np.empty(len(indices), dtype=np.int64)
    for i, row in enumerate(indices):
        key = row.tobytes()
        if key not in seen:
            seen[key] = len(order)
            order.append(i)
        inverse[i] = seen[key]
    return indices[order], inverse
