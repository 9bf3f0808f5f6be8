"""Which decoded frames are the wanted ones, for :class:`tokshift_cli.video.reader.VideoReader`.

:class:`FrameSweep` walks sorted wanted frame indices forward through a
:class:`tokshift_cli.video.cursor.PacketCursor`, seeking to a keyframe where that pays and keeping exactly the
frames whose presentation timestamps are wanted (the reader's module docstring, step 2). Where a container seek
lands off the index it reads on from the start instead. Where timestamps cannot identify frames it decodes the
whole stream once and identifies them by their rank in that decode (step 3).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import VideoError
from .cursor import PacketCursor, _Desync, _Missing, _OutOfOrder
from .index import MAX_REORDER as _MAX_REORDER
from .index import FrameIndex

__all__ = ["FrameSweep"]


class FrameSweep:
    """Frames by display index from ``cursor``, identified by the timestamps of ``index`` (or by decode rank once
    :attr:`by_rank`). ``path`` names the file in errors; ``warnings`` (the reader's list) gets a line when frames
    turn to being identified by decode rank."""

    def __init__(self, cursor: PacketCursor, index: FrameIndex, path: str, warnings: list[str]):
        self.cursor = cursor
        self.index = index
        self.path = path
        self.warnings = warnings
        self.by_rank = False

    def sweep(self, uniq: np.ndarray, *, skip: bool = True) -> Iterator[tuple[int, Any]]:
        """Yield ``(j, frame)`` (PyAV frames) for sorted distinct frame indices ``uniq[j]``, in ascending order,
        decoding forward and seeking where it pays (the reader's module docstring, step 2). Raises
        :class:`_Missing` when a wanted frame does not come out where its timestamp says."""
        if self.by_rank:
            yield from self.sweep_by_rank(uniq)
            return
        idx = self.index
        want_pts = {int(idx.pts[k]) for k in uniq}
        j = 0
        while j < len(uniq):
            k = int(uniq[j])
            if not self.cursor.can_continue(k, idx.start_key(k)):
                self.cursor.seek(idx.start_key(k))
            wp = int(idx.pts[k])
            for f in self.cursor.frames(want_pts, skip):
                fp = f.pts if f.pts is not None else f.dts
                if fp is None:
                    continue
                fp = int(fp)
                if self.cursor._last_out is not None and fp <= self.cursor._last_out:
                    raise _OutOfOrder()
                self.cursor._last_out = fp
                if fp < wp:
                    continue
                if fp > wp:
                    raise _Missing([k])  # went past it: it never came out
                yield j, f
                j += 1
                if j == len(uniq):
                    return
                k = int(uniq[j])
                wp = int(idx.pts[k])
                if not self.cursor.can_continue(k, idx.start_key(k)):
                    break  # far ahead: seek to it rather than decode the way there
            else:
                raise _Missing([k])  # the end of the file came first

    def sweep_resynced(self, uniq: np.ndarray, *, skip: bool = True) -> Iterator[tuple[int, Any]]:
        """:meth:`sweep`; where a container seek lands off the index (:class:`_Desync`), the file is read on
        from the start instead of seeking, from then on, and the frames not yet given are decoded again."""
        done = 0
        while True:
            try:
                start = done
                for j, f in self.sweep(uniq[start:], skip=skip):
                    done = start + j + 1
                    yield start + j, f
                return
            except _Desync:
                if not self.cursor.seekable:
                    raise _Missing([int(uniq[min(done, len(uniq) - 1)])]) from None
                self.cursor.seekable = False
                self.cursor.reset()


    # -- frames identified by decode rank ----------------------------------------------------------------------
    def rank_frames(self, why: str) -> None:
        """Decode the whole stream once and identify frames by their output rank (their timestamps cannot)."""
        self.by_rank = True
        self.warnings.append(f"frames identified by decode order ({why})")
        self.cursor.reset()
        self.cursor.rewind()
        self.cursor._clean_from = 0
        pts: list[int] = []
        for f in self.cursor.frames(set(), skip=False):
            t = f.pts if f.pts is not None else f.dts
            pts.append(int(t) if t is not None else (pts[-1] + 1 if pts else 0))
        if not pts:
            raise VideoError(self.path, "no decodable frames")
        p = np.asarray(pts, dtype=np.int64)  # for timestamps only: sorted when they are a permutation (AVI with
        self.index.pts = np.sort(p) if np.unique(p).size == p.size else np.maximum.accumulate(p)  # B-frames)
        self.index.pos_of = np.arange(len(pts), dtype=np.int64)
        self.index.reliable = False
        self.cursor.reset()

    def sweep_by_rank(self, uniq: np.ndarray) -> Iterator[tuple[int, Any]]:
        self.cursor.reset()
        self.cursor.rewind()
        self.cursor._clean_from = 0
        j = rank = 0
        for f in self.cursor.frames(set(), skip=False):
            while j < len(uniq) and int(uniq[j]) == rank:
                yield j, f
                j += 1
            if j >= len(uniq):
                break
            rank += 1
        self.cursor.reset()
        if j < len(uniq):
            raise _Missing([int(x) for x in uniq[j:]])

    def count_decodable(self) -> int:
        """Frames that come out of one decode from the last keyframes to the end: the decodable prefix length."""
        idx = self.index
        lo = max(0, idx.num_frames - 4 * _MAX_REORDER)
        start = idx.start_key(lo)
        self.cursor.reset()
        self.cursor.seek(start)
        seen = {int(f.pts) for f in self.cursor.frames(set(), skip=False) if f.pts is not None}
        self.cursor.reset()
        k = idx.num_frames
        while k > 0 and int(idx.pts[k - 1]) not in seen and k - 1 >= lo:
            k -= 1
        return k
