"""Long videos read once, in order: the windows of ``tokshift timeline`` and their frames, decoded in the killable
worker processes of :mod:`tokshift_cli.video.workers`.

A window is one model clip: ``frames`` frames ``stride`` apart, starting every hop. Two worker tasks (both
top-level, picklable and torch-free, for :meth:`~tokshift_cli.video.workers.DecodePool.ordered`)::

    plan = plan_video(i, path, frames=8, stride=32, hop_frames=128)      # open (index), place the windows
    chunk = decode_windows(c, path, starts=plan.starts, frames=8, stride=32, num_frames=plan.num_frames,
                           first=0, chunk=8)                            # windows first + 8c ... of them

Why it is cheap for a two-hour file:

* the worker keeps the file open between tasks (one file at a time per worker process), so the index is built
  once and chunk ``c + 1`` carries on decoding where chunk ``c`` stopped: one forward pass over the file with
  :meth:`~tokshift_cli.video.reader.VideoReader.iter_frames` (seeks only where its keyframe gap pays), never a
  seek per window; frames two chunks share (windows overlap) are carried over, not decoded again;
* only the frames a window uses are converted to RGB, and a chunk holds a bounded number of windows, so memory
  does not grow with the file's length.

A file whose frames stop decoding part-way (cut short, damaged) keeps the windows before the failure:
:class:`WindowChunk` says how many of its windows were decoded and why the rest were not.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ..errors import TokShiftError, VideoError
from .geometry import Geometry

__all__ = ["WindowPlan", "WindowChunk", "plan_starts", "window_indices", "window_times", "plan_video",
           "decode_windows", "close_cached"]


# --- where the windows go ----------------------------------------------------------------------------------------


def window_indices(starts: np.ndarray, frames: int, stride: int, num_frames: int) -> np.ndarray:
    """Frame indices ``[W, frames]`` of windows starting at ``starts``: ``start + stride * j``, wrapped around in a
    video shorter than one window (as :func:`~tokshift_cli.video.sampling.clip_indices` does for classify)."""
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    return (starts[:, None] + stride * np.arange(frames, dtype=np.int64)[None, :]) % max(int(num_frames), 1)


def plan_starts(timestamps: np.ndarray, frames: int, stride: int, *, hop_frames: int | None = None,
                hop_s: float | None = None) -> np.ndarray:
    """First frame of every window, ascending and distinct.

    Windows start every ``hop_frames`` frames, or at the first frame at or after every multiple of ``hop_s``
    seconds (frame timestamps, so a variable frame rate is placed by time). The last window is moved back to end
    at the last frame when the hops do not land there, so the windows reach the end of the file. A video shorter
    than one window (``(frames - 1) * stride + 1`` frames) gets one window at frame 0."""
    ts = np.asarray(timestamps, dtype=np.float64)
    n = int(ts.size)
    if (hop_frames is None) == (hop_s is None):
        raise ValueError("plan_starts: give exactly one of hop_frames and hop_s")
    last = n - 1 - (frames - 1) * stride  # the last start whose window fits
    if last <= 0:
        return np.zeros(1, dtype=np.int64)
    if hop_frames is not None:
        if hop_frames < 1:
            raise ValueError(f"hop_frames must be >= 1, got {hop_frames}")
        starts = np.arange(0, last + 1, int(hop_frames), dtype=np.int64)
    else:
        if not hop_s > 0:
            raise ValueError(f"hop_s must be > 0, got {hop_s}")
        rel = ts - ts[0]
        targets = np.arange(0.0, float(rel[last]) + hop_s / 2, hop_s)  # enough to pass the last start
        starts = np.unique(np.searchsorted(rel, targets - 1e-9, side="left"))
        starts = starts[starts <= last].astype(np.int64)
    if starts[-1] != last:
        starts = np.append(starts, np.int64(last))
    return starts


def window_times(timestamps: np.ndarray, indices: np.ndarray, last_duration: float) -> tuple[np.ndarray, np.ndarray]:
    """``(start_s, end_s)`` of each window ``[W, T]``: the timestamp of its first frame, and the timestamp of its
    last frame plus that frame's duration (up to the next frame's timestamp; ``last_duration`` for the file's
    last frame). Rounded to microseconds like :meth:`VideoReader.timestamps`."""
    ts = np.asarray(timestamps, dtype=np.float64)
    lo, hi = indices.min(axis=1), indices.max(axis=1)
    nxt = np.append(ts[1:], ts[-1] + last_duration)
    return np.round(ts[lo], 6), np.round(nxt[hi], 6)


# --- what the workers send back -----------------------------------------------------------------------------


@dataclass
class WindowPlan:
    """A file opened and its windows placed (or why it could not be opened): the result of :func:`plan_video`."""

    index: int
    path: str
    error: str | None = None
    starts: np.ndarray | None = None  #: [W] first frame of each window
    start_s: np.ndarray | None = None  #: [W] seconds from frame 0
    end_s: np.ndarray | None = None  #: [W]
    num_frames: int = 0
    duration_s: float = 0.0
    stored_size: tuple[int, int] = (0, 0)  #: (height, width) of the decoded frames
    geometry: Geometry | None = None
    #: ``video_info``: num_frames, fps, display and stored size, rotation, sar, codec, container, warnings
    meta: dict[str, Any] = field(default_factory=dict)
    #: the frame count the container promises, when the file holds fewer (cut short)
    expected_frames: int | None = None
    decode_s: float = 0.0


@dataclass
class WindowChunk:
    """The frames of windows ``first .. first + count - 1`` (:func:`decode_windows`)."""

    index: int  #: the chunk's position in its run
    path: str
    first: int = 0  #: the first window's number in the file
    asked: int = 0  #: windows the chunk was asked for
    count: int = 0  #: windows whose every frame decoded (a prefix of those asked)
    #: uint8 [F, H, W, 3] RGB as stored: the distinct frames the ``count`` windows use, ascending
    frames: np.ndarray | None = None
    needed: np.ndarray | None = None  #: [F] their frame numbers
    error: str | None = None  #: why windows ``first + count ...`` did not decode
    decode_s: float = 0.0
    crashed: bool = False  #: the worker died or was killed on this chunk


# --- the open file a worker keeps between tasks ----------------------------------------------------------------


@dataclass
class _Open:
    key: tuple[Any, ...]
    reader: Any
    frames: Iterator[tuple[int, np.ndarray]] | None = None  #: the one forward pass, where it stopped
    next_first: int = -1  #: the window the pass is ready for (a chunk starting there continues it)
    carry: dict[int, np.ndarray] = field(default_factory=dict)  #: decoded frames later windows also use


_CACHE: dict[str, _Open] = {}


def _file_key(path: str, stream: int | None) -> tuple[Any, ...]:
    try:
        st = os.stat(path)
        return (path, stream, st.st_size, st.st_mtime_ns)
    except OSError:
        return (path, stream)


def close_cached() -> None:
    """Close the file this process keeps open between tasks (the next task opens it again)."""
    old = _CACHE.pop("open", None)
    if old is not None:
        if old.frames is not None:
            with contextlib.suppress(Exception):
                old.frames.close()  # type: ignore[attr-defined]
        with contextlib.suppress(Exception):
            old.reader.close()


def _opened(path: str, stream: int | None) -> _Open:
    """The reader of ``path``, opened once per worker process and kept for the next task on the same file."""
    key = _file_key(path, stream)
    cur = _CACHE.get("open")
    if cur is not None and cur.key == key:
        return cur
    close_cached()
    from . import open_video

    # any fraction of a file cut short: the windows before the cut are worth having (the plan says what is missing)
    reader = open_video(path, decoder="pyav", min_decodable=0.0, stream=stream)
    cur = _Open(key=key, reader=reader)
    _CACHE["open"] = cur
    return cur


def _reason(e: BaseException) -> str:
    """A decode failure as the one-line reason of a result."""
    if isinstance(e, VideoError):
        return e.reason
    if isinstance(e, TokShiftError):
        return str(e)
    missing = getattr(e, "missing", None)  # the reader's internal "frames did not come out"
    if missing:
        return f"corrupt: frame {missing[0]} cannot be decoded"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"cannot be decoded ({type(e).__name__}{': ' + text if text else ''})"


# --- the tasks ---------------------------------------------------------------------------------------------------


def plan_video(index: int, path: str, *, frames: int, stride: int, hop_frames: int | None = None,
               hop_s: float | None = None, stream: int | None = None) -> WindowPlan:
    """Open ``path`` (kept open for :func:`decode_windows` in this process) and place its windows
    (:func:`plan_starts`, :func:`window_times`). Never raises for a bad file: the reason goes to ``error``."""
    t0 = time.perf_counter()
    out = WindowPlan(index=index, path=path)
    try:
        cur = _opened(path, stream)
        video = cur.reader
        n = int(video.num_frames)
        ts = np.asarray(video.timestamps(np.arange(n)), dtype=np.float64)
        fps = float(video.fps) or 0.0
        last = 1.0 / fps if fps > 0 else 0.0
        out.starts = plan_starts(ts, frames, stride, hop_frames=hop_frames, hop_s=hop_s)
        out.start_s, out.end_s = window_times(ts, window_indices(out.starts, frames, stride, n), last)
        out.num_frames = n
        out.duration_s = round(float(ts[-1] + last), 6)
        if (frames - 1) * stride + 1 > n:  # shorter than one window: its one window reads the whole file
            out.start_s[0], out.end_s[0] = round(float(ts[0]), 6), out.duration_s
        out.stored_size = (int(video.stored_height), int(video.stored_width))
        out.geometry = video.geometry
        out.meta = video.info()
        expected = int(getattr(video, "expected_frames", n))
        out.expected_frames = expected if expected > n and any("cut short" in w for w in video.warnings) else None
    except VideoError as e:
        out.error = e.reason
        close_cached()
    except TokShiftError as e:
        out.error = str(e)
        close_cached()
    except (RuntimeError, ValueError, OSError, MemoryError, IndexError) as e:  # last line of defence
        out.error = _reason(e)
        close_cached()
    out.decode_s = time.perf_counter() - t0
    return out


def decode_windows(index: int, path: str, *, starts: np.ndarray, frames: int, stride: int, num_frames: int,
                   first: int = 0, chunk: int = 8, stream: int | None = None) -> WindowChunk:
    """Decode the frames of windows ``first + index * chunk`` onwards (at most ``chunk`` of them) of a file
    planned by :func:`plan_video`. Consecutive chunks continue one forward pass. Frames that stop decoding
    end the chunk early: the windows before them are returned, ``error`` says why. Never raises for a bad file."""
    t0 = time.perf_counter()
    starts = np.asarray(starts, dtype=np.int64)
    lo = int(first) + int(index) * int(chunk)
    hi = min(lo + int(chunk), int(starts.size))
    out = WindowChunk(index=index, path=path, first=lo, asked=max(hi - lo, 0))
    if out.asked == 0:
        return out
    got: dict[int, np.ndarray] = {}
    idx = window_indices(starts[lo:hi], frames, stride, num_frames)
    done = 0
    cur: _Open | None = None
    try:
        cur = _opened(path, stream)
        if int(cur.reader.num_frames) != int(num_frames):
            raise VideoError(path, f"changed while it was being read ({cur.reader.num_frames} frames now, "
                                   f"{num_frames} when it was opened)")
        done = _pass_frames(cur, starts, idx, lo, hi, frames, stride, num_frames, got)
        if done < out.asked:  # the forward pass stopped: each window on its own, with the reader's recoveries
            cur.frames, cur.next_first, cur.carry = None, -1, {}
            for w in range(done, out.asked):
                missing = [int(f) for f in np.unique(idx[w]) if int(f) not in got]
                if missing:
                    for f, rgb in zip(missing, cur.reader.get_frames(missing)):
                        got[f] = rgb
                done = w + 1
    except Exception as e:  # noqa: BLE001 - a damaged file: the windows so far are kept, the reason reported
        out.error = _reason(e)
        close_cached()  # the reader may be in any state: a later task opens the file afresh
    out.count = done
    if done:
        needed = np.unique(idx[:done])
        try:
            out.frames = np.stack([got[int(f)] for f in needed])
            out.needed = needed
        except ValueError:
            out.count, out.frames = 0, None
            out.error = "frame size changes inside the video; re-encode it with a fixed size"
    out.decode_s = time.perf_counter() - t0
    return out


def _pass_frames(cur: _Open, starts: np.ndarray, idx: np.ndarray, lo: int, hi: int, frames: int, stride: int,
                 num_frames: int, got: dict[int, np.ndarray]) -> int:
    """Fill ``got`` with the frames of windows ``lo .. hi - 1`` from the file's forward pass (continued when
    the previous chunk ended at ``lo``, else started here); returns how many of the windows are complete."""
    if cur.frames is None or cur.next_first != lo:
        if cur.frames is not None:
            with contextlib.suppress(Exception):
                cur.frames.close()  # type: ignore[attr-defined]
        rest = np.unique(window_indices(starts[lo:], frames, stride, num_frames))
        cur.frames, cur.carry = cur.reader.iter_frames(rest), {}
    cur.next_first = -1  # until this chunk completes
    need = np.unique(idx)
    for f in need:
        if int(f) in cur.carry:
            got[int(f)] = cur.carry[int(f)]
    top = int(need[-1])
    try:
        while top not in got:
            f, rgb = next(cur.frames)
            got[f] = rgb
    except Exception:  # noqa: BLE001 - the end of the file, or frames that do not decode: see the caller
        pass
    done = 0
    while done < idx.shape[0] and all(int(f) in got for f in idx[done]):
        done += 1
    if done == idx.shape[0]:
        cur.next_first = hi
        nxt = int(starts[hi]) if hi < starts.size else None  # later windows use frames from their start on
        cur.carry = {f: rgb for f, rgb in got.items() if nxt is not None and f >= nxt}
    return done
