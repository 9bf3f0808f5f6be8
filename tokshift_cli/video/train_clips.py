"""The worker half of training data: one training clip per video, from a start drawn by the parent.

``tokshift train`` draws every random choice of a clip in the parent process from a generator seeded by
(seed, epoch, video), so a run is reproducible whatever the number of decode workers. The start of the clip is
one of those draws, but where it lands depends on the video's frame count, which only the worker learns when it
opens the file: the parent sends a fraction ``u`` in [0, 1) per video and :func:`train_clip_indices` turns it into
frame numbers. Torch-free: it runs in the killable decode workers (:mod:`tokshift_cli.video.workers`).

The authors' training clip (``read_random_clip`` in ``data/dataset.py`` of VideoNetworks/TokShift-Transformer):
``frames`` frames ``stride`` apart from a random start in ``[0, N - frames * stride]``; a video shorter than
the span starts at 0 and wraps around (``(start + stride * j) mod N``). Their ``randint(0, max_bound - 1)`` never
picks the last possible start; here every start is possible.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .workers import DecodedVideo, decode_indexed

__all__ = ["train_clip_indices", "decode_train_clip"]


def train_clip_indices(num_video_frames: int, frames: int, stride: int, start_u: float) -> np.ndarray:
    """0-based frame indices ``[1, frames]`` (int64) of a training clip whose start is the fraction ``start_u``
    (in [0, 1)) of the possible starts ``0 .. max(N - frames * stride, 0)`` (module docstring)."""
    n = int(num_video_frames)
    if n < 1 or frames < 1 or stride < 1:
        raise ValueError(f"num_video_frames, frames and stride must be >= 1, got {n}, {frames}, {stride}")
    if not 0.0 <= start_u < 1.0:
        raise ValueError(f"start_u must be in [0, 1), got {start_u}")
    starts = max(n - frames * stride, 0) + 1
    start = min(int(start_u * starts), starts - 1)
    return ((start + np.arange(frames, dtype=np.int64) * stride) % n)[None, :]


def decode_train_clip(index: int, path: str, *, frames: int, stride: int, starts: Sequence[float],
                      decoder: str = "auto", min_decodable: float = 0.9, stream: int | None = None) -> DecodedVideo:
    """Decode the training clip of ``path`` that starts at fraction ``starts[index]``: the distinct frames
    (ascending ``needed``) and ``frame_indices`` ``[1, T]``, with the geometry to show them. Never raises for a
    bad file (``error`` says why). ``starts``: one fraction per input of the decode run (a short list: the parent
    sends runs of a few thousand videos), so one worker call needs nothing but its index."""
    u = float(starts[index])
    return decode_indexed(index, path, lambda n: train_clip_indices(n, frames, stride, u), decoder=decoder,
                          min_decodable=min_decodable, stream=stream)
