"""Which frames to decode: dense T x S clips placed by a rule (``--sampling``), and the ``--views`` option.

A clip is ``frames`` frames taken every ``stride`` frames ("8x32": 8 frames, stride 32, spanning 256 frames);
``clips`` temporal clips x ``crops`` spatial crops make the views ("10x3" = 30 views). Two rules place the clips
in a video of ``n`` frames (docs/video.md shows both):

* ``centred`` (the default): clip ``i`` sits in the middle of the ``i``-th of ``clips`` equal segments of the
  video, as MMAction2's ``SampleFrames`` test mode places it (``avg = (n - frames * stride + 1) / clips``,
  ``start_i = int(i * avg + avg / 2)``); a 1x1 view of an hour-long file looks at its middle.
* ``authors``: the TokShift authors' ``read_clip`` (``data/dataset.py`` of VideoNetworks/TokShift-Transformer):
  ``start_i = clip(int(i * n / clips), 0, max(n - frames * stride + 1, 1))``, so a 1x1 view starts at frame 0.
  It reproduces the paper and the authors' fixtures exactly.

Both: a video with ``n <= frames * stride - 1`` frames (``authors``: ``n <= frames * stride``) starts every clip
at 0, and frames past the end wrap around (``frame_j = (start + stride * j) mod n``): for n = 250 at 8x32, 0, 32,
..., 224; for n = 100, 0, 32, 64, 96, 28, 60, 92, 24. Identical clips are computed once (:func:`unique_clips`). A
1-frame video gives all-zero indices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError

__all__ = ["Views", "clip_indices", "unique_clips", "VALID_CROPS", "SAMPLING_RULES", "check_sampling"]

#: Spatial crops per clip the authors' test augmentation supports here: 1 (centre) or 3 (centre, left, right).
VALID_CROPS = (1, 3)

#: ``--sampling`` rules (module docstring); the first is the default.
SAMPLING_RULES = ("centred", "authors")

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


def check_sampling(rule: str) -> str:
    """``rule`` if it is a ``--sampling`` rule ("centered" is read as "centred"), else a UsageError."""
    rule = "centred" if rule == "centered" else rule
    if rule not in SAMPLING_RULES:
        raise UsageError(f"--sampling {rule!r}: choose centred (clips in the middle of equal segments, the default) "
                         "or authors (the paper's: clip i starts at int(i * N / clips))")
    return rule


def clip_indices(num_video_frames: int, frames: int, stride: int, clips: int, sampling: str = "authors"
                 ) -> np.ndarray:
    """0-based frame indices ``[clips, frames]`` (int64) of dense test-time clips placed by ``sampling``
    (module docstring). ``num_video_frames`` must be the number of decodable frames (the authors counted
    extracted JPEGs)."""
    n = int(num_video_frames)
    for name, value in (("num_video_frames", n), ("frames", frames), ("stride", stride), ("clips", clips)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    span = frames * stride
    if check_sampling(sampling) == "centred":
        avg = (n - span + 1) / float(clips)  # MMAction2 SampleFrames._get_test_clips
        if n > span - 1:
            starts = (np.arange(clips) * avg + avg / 2.0).astype(np.int64)
        else:
            starts = np.zeros(clips, dtype=np.int64)
    else:
        max_bound = max(n - span + 1, 1)
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
