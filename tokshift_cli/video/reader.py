"""Frame-accurate decoding with PyAV (FFmpeg's own API): frame ``k`` is the ``k``-th frame a player shows.

::

    with open_video("clip.mp4") as video:             # tokshift_cli.video.open_video
        idx = clip_indices(video.num_frames, 8, 32, 10)
        frames = video.get_frames(idx)                # uint8 [10, 8, H, W, 3] RGB, as stored
        video.geometry                                # sample aspect ratio and rotation to show them

How a frame is found (docs/video.md has the reasons):

1. **Index.** The chosen stream's packets are demuxed (no decoding) and their presentation timestamps sorted:
   that is the display order. Packets the container hides (an MP4 edit list's trimmed head: FFmpeg flags them
   ``discard``) are fed to the decoder but are not frames of the video. Corrupt packets (a file cut mid-packet)
   are not frames either.
2. **Seek, decode, keep by timestamp.** For each wanted frame the reader starts at the last keyframe (in
   decode order) at or before it whose timestamp is not later (open-GOP leading pictures need the keyframe
   before), decodes forward and keeps exactly the frames whose timestamps are wanted. Seeking is a container
   seek verified by the packets that follow it (matched by their timestamps), or reading forward without
   decoding where the container cannot seek accurately. Non-reference frames that are not wanted are not
   decoded at all (FFmpeg's ``skip_frame``), which never changes a wanted frame.
3. **When timestamps cannot be trusted** (missing, repeated, or jumping back: concatenated transport streams),
   frames are identified by their rank in one full decode instead, and ``warnings`` says so.

Streams: attached pictures (cover art) and one-frame still tracks are left out (unless nothing else is there),
then the largest video stream wins, the default flag breaking ties; ``stream=`` chooses (the N-th video stream,
0-based, as FFmpeg's ``v:N``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import TruncatedVideoError, UsageError, VideoError
from .decoders import AUTO, DECODERS, canonical, check_decoder
from .cursor import PacketCursor, _Missing, _OutOfOrder
from .opening import _av_reason, _open_container, open_stream, probe_geometry
from .probe import container_truncation, decoder_path, is_url, precheck
from .sweep import FrameSweep

__all__ = ["VideoReader", "TruncatedVideoError", "DECODERS", "check_decoder"]


#: URLs: seconds to connect, and seconds a read may wait for data.
URL_TIMEOUT = 30.0


class _ReaderLifetime:
    """What every reader shares: a temporary folder (ASCII links for odd names) to release, index checks, and
    use as a context manager. Subclasses set ``path``, ``num_frames`` and implement ``_release``."""

    _tmpdir: str | None = None
    num_frames: int = 0
    path: str = ""

    def _checked_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``indices`` as a flat int64 array, or IndexError naming the file and the valid range."""
        flat = np.asarray(indices, dtype=np.int64).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_frames):
            bad = flat[(flat < 0) | (flat >= self.num_frames)]
            raise IndexError(f"{self.path}: frame index {int(bad[0])} is outside 0..{self.num_frames - 1}")
        return flat

    def _release(self) -> None:
        pass

    def close(self) -> None:
        self._release()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# --- the reader ---------------------------------------------------------------------------------------------


class _Recounted(Exception):
    """Internal: frames are now identified by decode rank and their count changed: draw the indices again."""


class VideoReader(_ReaderLifetime):
    """One open video, read with PyAV. Use :func:`tokshift_cli.video.open_video`.

    Attributes: ``path`` (as given), ``decoder`` ("pyav"), ``num_frames`` (frames shown, after edit lists),
    ``fps`` (frames over their time span), ``duration``, ``width``/``height`` (as shown), ``geometry`` (stored
    size, sample aspect ratio, rotation), ``codec``, ``container_format``, ``stream_index``, ``start_time``,
    ``warnings``, ``by_rank`` (frames identified by decode rank, not timestamps)."""

    decoder = "pyav"
    #: Leave out non-reference frames nobody asked for (``skip_frame``); False decodes every frame on the way
    #: (benchmarks compare the two: ``scripts/bench_decode.py``).
    skip_unwanted = True
    _cursor: PacketCursor | None = None  # the demuxer and decoder (tokshift_cli.video.cursor), once opened
    _sweeper: FrameSweep | None = None  # which decoded frames are wanted (tokshift_cli.video.sweep)

    def __init__(self, path: str | os.PathLike, decoder: str = "auto", *, num_threads: int | None = None,
                 min_decodable: float = 0.9, stream: int | None = None, timeout: float | None = None):
        self._tmpdir = None
        self.path = os.fspath(path) if not isinstance(path, bytes) else os.fsdecode(path)
        if canonical(check_decoder(decoder)) not in (AUTO, "pyav"):
            raise UsageError(f"decoder {decoder!r}: open it with tokshift_cli.video.open_video")
        self.num_threads = 1 if num_threads is None else int(num_threads)
        self.min_decodable = float(min_decodable)
        self.requested_stream = stream
        self.warnings: list[str] = []
        self.fallback_reason: str | None = None
        self.stream_note: str | None = None
        self._timeout = timeout or URL_TIMEOUT
        self._lock = threading.Lock()
        if is_url(self.path):  # downloaded once (video/remote.py), then read like a file
            from .remote import download

            local, self._tmpdir = download(self.path, timeout=self._timeout)
            head = precheck(local)
            self._open_path = local
        else:
            head = precheck(self.path)
            self._open_path, self._tmpdir = decoder_path(self.path)
        try:
            self._open(head)
        except (VideoError, UsageError):
            self.close()
            raise
        except Exception as e:  # FFmpeg/PyAV on a damaged file: one line, never a traceback
            self.close()
            raise VideoError(self.path, f"cannot be read ({type(e).__name__}: {_av_reason(e)})") from None
        except BaseException:
            self.close()
            raise

    @property
    def _container(self) -> Any:
        """The open PyAV container (the cursor's: it opens the file again at times); None when closed."""
        return self._cursor.container if self._cursor is not None else None

    @_container.setter
    def _container(self, value: Any) -> None:
        self._cursor.container = value  # type: ignore[union-attr]

    @property
    def by_rank(self) -> bool:
        """Whether frames are identified by their rank in one full decode (their timestamps cannot)."""
        return self._sweeper.by_rank if self._sweeper is not None else False

    # -- opening -------------------------------------------------------------------------------------------
    def _open(self, head: bytes | None) -> None:
        c, stream, index, self.stream_note = open_stream(self.path, self._open_path, head, self.requested_stream)
        self.index = index
        reopen = functools.partial(_open_container, self._open_path, self.path, b"")
        self._cursor = PacketCursor(c, stream, index, self.num_threads, reopen)
        self._sweeper = FrameSweep(self._cursor, index, self.path, self.warnings)
        if stream.codec_context is None:
            name = getattr(getattr(stream, "codec", None), "name", "?")
            raise VideoError(self.path, f"no decoder in FFmpeg for its video codec ({name})")
        self.stream_index = list(c.streams.video).index(stream)
        self.container_format = (c.format.name or "").split(",")[0]
        cc = stream.codec_context
        self.codec = (cc.codec.canonical_name or cc.codec.name) if cc.codec is not None else "unknown"
        self.time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1000)
        if self.index.num_frames == 0:
            raise VideoError(self.path, "no decodable frames (the video stream has no packets)")
        self._reset_decoder()
        if not self.index.reliable:
            self._sweeper.rank_frames(self.index.why_unreliable or "")
        try:  # frame 0 proves the stream decodes and carries the display matrix
            _, frame0 = next(self._sweeper.sweep_resynced(np.array([0])))
        except (_Missing, _OutOfOrder):
            self._sweeper.rank_frames("frame 0 does not decode where its timestamp says")
            _, frame0 = next(self._sweeper.sweep(np.array([0])))
        self.geometry = probe_geometry(self._cursor.stream, frame0, frame0.to_ndarray(format="rgb24"))
        self.width, self.height = self.geometry.display_size
        self.stored_width, self.stored_height = self.geometry.width, self.geometry.height
        self.num_frames = self.index.num_frames
        self._check_truncation(head)

    def _check_truncation(self, head: bytes | None) -> None:
        """A container cut short: refuse it when fewer than ``min_decodable`` of the promised frames are there,
        else read the frames that are and say so in :attr:`warnings`."""
        expected = self.expected_frames
        cut = container_truncation(self._open_path) if head is not None else None
        n = self.num_frames
        if cut is None:
            return
        if n < self.min_decodable * expected:
            raise TruncatedVideoError(self.path, n, expected)
        where = f" ({cut[0]} of {cut[1]} bytes)" if cut is not None else ""
        self.warnings.append(f"the file is cut short{where}: only {n} of {expected} frames decode; sampled from "
                             "those")

    @property
    def expected_frames(self) -> int:
        """The frames the container promises: its frame count, else its duration times the frame rate; never
        fewer than the frames found."""
        s = self._cursor.stream  # type: ignore[union-attr]
        n = int(s.frames or 0) - self.index.discarded  # an edit list's hidden frames are counted in the header
        if n <= 0 and s.duration and s.average_rate:
            n = int(round(float(s.duration * s.time_base) * float(s.average_rate)))
        if n <= 0 and self._container.duration and s.average_rate:
            n = int(round(self._container.duration / 1e6 * float(s.average_rate)))
        return max(n, self.index.num_frames)

    # -- times ---------------------------------------------------------------------------------------------
    @property
    def start_time(self) -> float:
        """Presentation time (seconds) of frame 0 in the container's clock."""
        return float(self.index.pts[0] * self.time_base) if self.index.reliable else 0.0

    def timestamps(self, indices: Sequence[int] | np.ndarray) -> list[float]:
        """Seconds from frame 0 to each frame's presentation time."""
        flat = self._checked_indices(indices)
        pts = self.index.pts
        return [round(float((int(pts[i]) - int(pts[0])) * self.time_base), 6) for i in flat]

    @property
    def fps(self) -> float:
        """Frames per second over the video's time span ((N - 1) / (last - first)); the stream's nominal rate for
        a single frame."""
        n = self.num_frames
        if n > 1:
            span = float((int(self.index.pts[n - 1]) - int(self.index.pts[0])) * self.time_base)
            if span > 0:
                return round((n - 1) / span, 6)
        stream = self._cursor.stream  # type: ignore[union-attr]
        rate = stream.average_rate or stream.guessed_rate
        return float(rate) if rate else 0.0

    @property
    def duration(self) -> float:
        """Seconds from the first frame's start to the last frame's end."""
        n = self.num_frames
        if n == 0 or not self.fps:
            return float("nan")
        return self.timestamps([n - 1])[0] + 1.0 / self.fps

    def info(self) -> dict[str, Any]:
        """``video_info`` of the JSON outputs: frames, rate, display and stored geometry, codec, container."""
        out = {"num_frames": int(self.num_frames), "fps": self.fps, "duration_s": round(self.duration, 6),
               **self.geometry.to_dict(), "codec": self.codec, "container": self.container_format,
               "stream": self.stream_index, "start_time_s": round(self.start_time, 6),
               "frames_by": "decode order" if self.by_rank else "timestamp"}
        if self.stream_note:
            out["stream_note"] = self.stream_note
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    # -- decoding (tokshift_cli.video.cursor and tokshift_cli.video.sweep do it) ---------------------------
    def _reset_decoder(self) -> None:
        """Forget the decoder's position: the next wanted frame seeks."""
        self._cursor.reset()

    def _decode_indices(self, uniq: np.ndarray, *, skip: bool = True) -> list[np.ndarray]:
        """RGB frames (as stored) for sorted distinct frame indices ``uniq``."""
        out: list[np.ndarray] = []
        for _, f in self._sweeper.sweep_resynced(uniq, skip=skip and self.skip_unwanted):
            out.append(f.to_ndarray(format="rgb24"))
        return out


    # -- public --------------------------------------------------------------------------------------------
    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode frames by 0-based display index: uint8 ``[*indices.shape, H, W, 3]`` RGB as stored (apply
        :attr:`geometry` to show them). Each distinct index is decoded once. Raises
        :class:`TruncatedVideoError` / :class:`VideoError` when frames cannot be decoded, ``IndexError`` for an
        index outside ``[0, num_frames)``."""
        try:
            try:
                return self._get_frames(indices)
            except _Recounted:  # frames are now counted by decode rank: the same indices once more
                return self._get_frames(indices)
        except (VideoError, IndexError):
            raise
        except Exception as e:  # FFmpeg/PyAV on a damaged file: one line, never a traceback
            raise VideoError(self.path, f"cannot be decoded ({type(e).__name__}: {_av_reason(e)})") from None

    def _get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        if self._container is None:
            raise VideoError(self.path, "the video is closed")
        idx = np.asarray(indices, dtype=np.int64)
        flat = self._checked_indices(idx)
        uniq, inverse = np.unique(flat, return_inverse=True)
        if uniq.size == 0:
            return np.empty((*idx.shape, self.stored_height, self.stored_width, 3), np.uint8)
        frames = self._decode_checked(uniq)
        if frames.shape[1:3] != (self.stored_height, self.stored_width):
            raise VideoError(self.path, f"frame size changes inside the video ({frames.shape[2]}x{frames.shape[1]} "
                                        f"after {self.stored_width}x{self.stored_height}); re-encode it with a "
                                        "fixed size")
        out = frames[inverse.reshape(-1)] if uniq.size != flat.size or not np.array_equal(uniq, flat) else frames
        return out.reshape(*idx.shape, *frames.shape[1:])

    def _decode_checked(self, uniq: np.ndarray) -> np.ndarray:
        """:meth:`_decode_indices` with the recoveries: once more without skipping, then by decode rank; frames
        that never decode make a :class:`VideoError` (or :class:`TruncatedVideoError` at the end of a file)."""
        attempts: list[Callable[[], list[np.ndarray]]] = [lambda: self._decode_indices(uniq)]
        if not self.by_rank:
            def plain() -> list[np.ndarray]:
                self._reset_decoder()
                return self._decode_indices(uniq, skip=False)

            attempts.append(plain)
        last: _Missing | None = None
        for attempt in attempts:
            try:
                try:
                    frames = attempt()
                except _OutOfOrder:
                    n = self.num_frames
                    self._sweeper.rank_frames("the decoder's frame timestamps are not in display order")
                    self.num_frames = self.index.num_frames
                    if self.num_frames != n:
                        raise _Recounted() from None
                    frames = self._decode_indices(uniq)
                shapes = {f.shape for f in frames}
                if len(shapes) > 1:
                    raise VideoError(self.path, f"frame size changes inside the video ({sorted(shapes)}); "
                                                "re-encode it with a fixed size")
                return np.stack(frames)
            except _Missing as e:
                last = e
                self._reset_decoder()
        missing = last.missing if last is not None else []
        k = missing[0] if missing else int(uniq[-1])
        t = self.timestamps([k])[0] if missing else float("nan")
        if k >= 0.9 * self.num_frames and self.num_frames > 1:
            # the last packets are there but do not decode: the real count is the decodable prefix
            decodable = self._sweeper.count_decodable()
            if decodable < self.num_frames:
                self.num_frames = decodable
                raise TruncatedVideoError(self.path, decodable, self.expected_frames)
        raise VideoError(self.path, f"corrupt: frame {k} (at {t:.3f} s) cannot be decoded")

    def sample(self, sampler: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``indices = sampler(num_frames)``, then their frames. When the last frames turn out not to decode and
        at least ``min_decodable`` of the promised frames do, the indices are drawn again over those (a line
        goes to :attr:`warnings`); otherwise :class:`TruncatedVideoError` propagates. Returns
        ``(indices, frames)``."""
        n = self.num_frames
        indices = np.asarray(sampler(n))
        try:
            return indices, self._get_frames(indices)
        except _Recounted:
            return self.sample(sampler)
        except TruncatedVideoError:
            pass
        except (VideoError, IndexError):
            raise
        except Exception as e:  # FFmpeg/PyAV on a damaged file: one line, never a traceback
            raise VideoError(self.path, f"cannot be decoded ({type(e).__name__}: {_av_reason(e)})") from None
        decodable, expected = self.num_frames, self.expected_frames
        if decodable < self.min_decodable * expected:
            raise TruncatedVideoError(self.path, decodable, expected)
        self.warnings.append(f"only {decodable} of {expected} frames decode; sampled from those {decodable}")
        indices = np.asarray(sampler(decodable))
        return indices, self.get_frames(indices)

    def iter_frames(self, indices: Sequence[int] | np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, rgb)`` for sorted distinct ``indices``, decoded in one forward pass and yielded as they come
        (memory stays flat however many there are): for long videos read in order (``timeline``). A frame that
        does not decode ends the pass with a :class:`VideoError` naming it; the frames before it were given."""
        uniq = np.unique(self._checked_indices(indices))
        try:
            for j, f in self._sweeper.sweep_resynced(uniq):
                yield int(uniq[j]), f.to_ndarray(format="rgb24")
        except (_Missing, _OutOfOrder) as e:
            k = e.missing[0] if isinstance(e, _Missing) and e.missing else None
            where = f"frame {k} (at {self.timestamps([k])[0]:.3f} s)" if k is not None else "a frame"
            raise VideoError(self.path, f"corrupt: {where} cannot be decoded in order") from None

    def _release(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
            self._container = None

    def __repr__(self) -> str:
        return (f"VideoReader({self.path!r}, frames={self.num_frames}, fps={self.fps:g}, "
                f"size={getattr(self, 'width', '?')}x{getattr(self, 'height', '?')})")

