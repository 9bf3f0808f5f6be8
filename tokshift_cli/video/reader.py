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
import os
import shutil
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import TruncatedVideoError, UsageError, VideoError
from .decoders import AUTO, DECODERS, canonical, check_decoder
from .geometry import Geometry, rotation_from_matrix
from .index import MAX_REORDER as _MAX_REORDER
from .index import NONE as _NONE
from .index import build_index, choose_stream
from .probe import (container_truncation, decoder_path, is_url, mp4_missing_index, not_a_video, precheck,
                    unreadable_reason)

__all__ = ["VideoReader", "TruncatedVideoError", "DECODERS", "check_decoder"]


#: Seek (instead of decoding on) when the next keyframe needed is more than this many packets ahead.
_SEEK_GAP = 8
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


def _import_av() -> Any:
    import av

    return av


def _av_reason(e: BaseException) -> str:
    """An FFmpeg/PyAV error as a short reason, without the file name PyAV puts in it."""
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(msg).split("; last error log:")[0].strip().rstrip(":")[:200]


# --- the reader ---------------------------------------------------------------------------------------------


class _Missing(Exception):
    """Internal: wanted frames did not come out of the decoder."""

    def __init__(self, missing: list[int]):
        super().__init__(f"frames {missing[:6]} did not decode")
        self.missing = missing


class _OutOfOrder(Exception):
    """Internal: the decoder gave frame timestamps that go back: they are not presentation times (AVI)."""


class _Desync(Exception):
    """Internal: after a container seek the demuxer gave packets the index does not have there (MPEG-PS)."""


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

    def __init__(self, path: str | os.PathLike, decoder: str = "auto", *, num_threads: int | None = None,
                 min_decodable: float = 0.9, stream: int | None = None, timeout: float | None = None):
        self._tmpdir = None
        self._container: Any = None
        self.path = os.fspath(path) if not isinstance(path, bytes) else os.fsdecode(path)
        if canonical(check_decoder(decoder)) not in (AUTO, "pyav"):
            raise UsageError(f"decoder {decoder!r}: open it with tokshift_cli.video.open_video")
        self.num_threads = 1 if num_threads is None else int(num_threads)
        self.min_decodable = float(min_decodable)
        self.requested_stream = stream
        self.warnings: list[str] = []
        self.fallback_reason: str | None = None
        self.stream_note: str | None = None
        self.by_rank = False
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

    # -- opening -------------------------------------------------------------------------------------------
    def _open(self, head: bytes | None) -> None:
        if head is not None:
            sniffed = not_a_video(head)
            if sniffed:
                raise VideoError(self.path, sniffed)
            if mp4_missing_index(self._open_path):
                raise VideoError(self.path, unreadable_reason(head))
        self._container = self._open_container(head)
        passed_over: list[int] = []
        while True:
            c = self._container
            try:
                stream, self.stream_note = choose_stream(c, self.requested_stream, exclude=passed_over)
            except LookupError:
                raise VideoError(self.path, "not a video file (no video stream)") from None
            try:
                index = build_index(c, stream)
            except Exception as e:  # av.error.*: an unreadable container
                raise VideoError(self.path, f"cannot read its packets ({_av_reason(e)})") from None
            others = len(c.streams.video) - len(passed_over) - 1
            if index.num_frames > 1 or self.requested_stream is not None or others == 0:
                break
            passed_over.append(stream.index)  # a one-frame track (cover art no flag says): the next one
            self._rewind_container()
        self._stream, self.index = stream, index
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
        self._pos_by_ts: dict[tuple[int, int], int] | None = None
        self._seekable = True  # container seeks land where the index says (else: read on from the start)
        self._reset_decoder()
        if not self.index.reliable:
            self._rank_frames(self.index.why_unreliable or "")
        try:  # frame 0 proves the stream decodes and carries the display matrix
            _, frame0 = next(self._sweep_resynced(np.array([0])))
        except (_Missing, _OutOfOrder):
            self._rank_frames("frame 0 does not decode where its timestamp says")
            _, frame0 = next(self._sweep(np.array([0])))
        self._probe_geometry(frame0, frame0.to_ndarray(format="rgb24"))
        self.num_frames = self.index.num_frames
        self._check_truncation(head)

    def _rewind_container(self) -> None:
        c = self._container
        for s in c.streams:
            s.discard = _import_av().stream.Discard.default
        try:
            c.seek(0)
        except Exception:
            c.close()
            self._container = self._open_container(b"")

    def _open_container(self, head: bytes | None) -> Any:
        av = _import_av()
        try:
            return av.open(self._open_path, "r")
        except av.error.FFmpegError as e:
            reason = unreadable_reason(head or b"")
            if reason.startswith("not a video file, or"):
                reason += f" ({_av_reason(e)})"
            raise VideoError(self.path, reason) from None

    def _probe_geometry(self, frame: Any, rgb: np.ndarray) -> None:
        stream = self._stream
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio or Fraction(1)
        sar = Fraction(sar) if sar and Fraction(sar) > 0 else Fraction(1)
        if sar.denominator > 1000:  # 0/1 and nonsense: square pixels
            sar = sar.limit_denominator(1000)
        matrix = None
        with contextlib.suppress(Exception):
            av = _import_av()
            sd = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
            matrix = bytes(sd) if sd is not None else None
        rotation, flip = rotation_from_matrix(matrix)
        h, w = rgb.shape[:2]
        self.geometry = Geometry(int(w), int(h), sar, rotation, flip)
        self.width, self.height = self.geometry.display_size
        self.stored_width, self.stored_height = int(w), int(h)

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
        s = self._stream
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
        rate = self._stream.average_rate or self._stream.guessed_rate
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

    # -- decoding ------------------------------------------------------------------------------------------
    def _reset_decoder(self) -> None:
        """Forget the decoder's position: the next wanted frame seeks."""
        self._demuxer: Iterator[Any] | None = None
        self._pending: Any = None  # a packet pulled from the demuxer, not yet fed: the one at _next_pos
        self._next_pos = 0  # decode position of the next packet to feed
        self._clean_from: int | None = None  # keyframe the decoder has run from without a gap (None: not running)
        self._last_out: int | None = None  # timestamp of the last frame the decoder gave
        self._fed_wants: set[int] = set()  # frames whose packets were fed without skipping
        self._outq: deque[Any] = deque()  # decoded frames not handed out yet
        self._eof = False
        cc = self._stream.codec_context
        if not cc.is_open:  # threads can only be set before the first decode
            cc.thread_count, cc.thread_type = self.num_threads, "SLICE"
        with contextlib.suppress(Exception):
            cc.flush_buffers()

    def _seek(self, target: int) -> None:
        """Put the demuxer at packet ``target`` (a keyframe) with a flushed decoder: read on without decoding
        when it is near, else a container seek verified by the packets that follow (matched by their
        timestamps), else from the start."""
        cc = self._stream.codec_context
        with contextlib.suppress(Exception):
            cc.flush_buffers()
        cc.skip_frame = "DEFAULT"
        forward = self._demuxer is not None and self._next_pos <= target
        read_on = forward and (target <= self._next_pos + 4 * _SEEK_GAP or not self._seekable)
        if not (read_on and self._skip_to(target)):
            if not (target > 0 and self._seekable and self._container_seek(target)):
                self._rewind()
                if not self._skip_to(target):
                    raise _Missing([])
        self._clean_from, self._last_out, self._eof = target, None, False
        self._fed_wants = set()
        self._outq.clear()

    def _container_seek(self, target: int) -> bool:
        idx = self.index
        dts, pts = int(idx.packet_dts[target]), int(idx.packet_pts[target])
        ts = dts if dts != _NONE else pts
        if ts == _NONE:
            return False
        try:
            self._container.seek(ts, stream=self._stream, backward=True)
        except Exception:
            return False
        self._demuxer, self._pending = self._container.demux(self._stream), None
        return self._resync(target)

    def _rewind(self) -> None:
        """Demuxer at packet 0: a seek to the start when the first packet that follows is packet 0, else a fresh
        open of the file (always right)."""
        with contextlib.suppress(Exception):
            self._container.seek(0, stream=self._stream, backward=True)
            self._demuxer, self._pending = self._container.demux(self._stream), None
            if self._resync(0):
                return
        with contextlib.suppress(Exception):
            self._container.close()
        self._container = self._open_container(b"")
        self._stream = list(self._container.streams.video)[self.stream_index]
        for other in self._container.streams:
            if other.index != self._stream.index:
                other.discard = _import_av().stream.Discard.all
        cc = self._stream.codec_context
        if not cc.is_open:
            cc.thread_count, cc.thread_type = self.num_threads, "SLICE"
        self._demuxer, self._pending, self._next_pos = self._container.demux(self._stream), None, 0

    def _resync(self, target: int) -> bool:
        """After a container seek: find where the demuxer landed from the first packet it gives (matched by
        timestamps to the index) and read on to ``target``. False when it landed after it, or nowhere known."""
        packet = self._raw_next()
        pos = self._locate(packet) if packet is not None else None
        if pos is None or pos > target:
            return False
        self._pending, self._next_pos = packet, pos
        return self._skip_to(target)

    def _skip_to(self, target: int) -> bool:
        """Read packets without decoding until the next one to feed is ``target``; False at the end of the file
        or when the packet there is not the index's."""
        while self._next_pos < target:
            if self._next_packet() is None:
                return False
        if self._pending is None:
            self._pending = self._raw_next()
        return self._pending is not None and self._locate(self._pending) == target

    def _locate(self, packet: Any) -> int | None:
        """Decode position of a demuxed packet, by its (dts, pts) in the index."""
        if self._pos_by_ts is None:
            idx = self.index
            self._pos_by_ts = {}
            for i, key in enumerate(zip(idx.packet_dts.tolist(), idx.packet_pts.tolist())):
                self._pos_by_ts.setdefault(key, i)
        key = (_NONE if packet.dts is None else int(packet.dts), _NONE if packet.pts is None else int(packet.pts))
        return self._pos_by_ts.get(key)

    def _raw_next(self) -> Any:
        while True:
            try:
                packet = next(self._demuxer)  # type: ignore[arg-type]
            except StopIteration:
                return None
            except Exception:  # av.error.*: the rest of the file cannot be read
                return None
            if packet.size:
                return packet

    def _next_packet(self) -> Any:
        """The packet at ``_next_pos`` (advancing it), or None at the end. Raises :class:`_Desync` when it is not
        the packet the index has there (its timestamps differ): only container seeks get there."""
        packet, self._pending = self._pending, None
        if packet is None:
            packet = self._raw_next()
        if packet is not None:
            idx, p = self.index, self._next_pos
            key = (_NONE if packet.dts is None else int(packet.dts), _NONE if packet.pts is None else int(packet.pts))
            if p >= len(idx.packet_pts) or key != (int(idx.packet_dts[p]), int(idx.packet_pts[p])):
                raise _Desync()
            self._next_pos += 1
        return packet

    def _frames(self, want_pts: set[int], skip: bool) -> Iterator[Any]:
        """Feed packets from the current position; yield decoded frames in output order. ``skip``: a packet of a
        frame not in ``want_pts`` is decoded only when other frames reference it (``skip_frame = NONREF``)."""
        cc = self._stream.codec_context
        if not skip:
            cc.skip_frame = "DEFAULT"
        while True:
            while self._outq:  # popped before it is yielded: a consumer that stops keeps the rest for later
                yield self._outq.popleft()
            if self._eof:
                return
            packet = self._next_packet()
            if packet is None:
                self._eof = True
                cc.skip_frame = "DEFAULT"
                self._outq.extend(self._safe_decode(None))
            else:
                wanted = packet.pts is not None and int(packet.pts) in want_pts
                if wanted:
                    self._fed_wants.add(int(packet.pts))
                if skip:
                    cc.skip_frame = "DEFAULT" if wanted else "NONREF"
                self._outq.extend(self._safe_decode(packet))

    def _safe_decode(self, packet: Any) -> list[Any]:
        try:
            return list(self._stream.codec_context.decode(packet))
        except Exception:  # a damaged packet: FFmpeg conceals what it can; missing frames are found by timestamp
            return []

    def _can_continue(self, k: int, start: int) -> bool:
        """Whether decoding on from the current position reaches frame ``k`` cleanly and cheaply."""
        idx = self.index
        wp = int(idx.pts[k])
        if self._clean_from is None or self._eof or self._clean_from > start:
            return False
        if self._last_out is not None and self._last_out >= wp:
            return False  # already passed
        if idx.pos_of[k] < self._next_pos and wp not in self._fed_wants:
            return False  # its packet went by (perhaps skipped)
        return start <= self._next_pos + _SEEK_GAP

    def _sweep(self, uniq: np.ndarray, *, skip: bool = True) -> Iterator[tuple[int, Any]]:
        """Yield ``(j, frame)`` (PyAV frames) for sorted distinct frame indices ``uniq[j]``, in ascending order,
        decoding forward and seeking where it pays (module docstring, step 2). Raises :class:`_Missing` when a
        wanted frame does not come out where its timestamp says."""
        if self.by_rank:
            yield from self._sweep_by_rank(uniq)
            return
        idx = self.index
        want_pts = {int(idx.pts[k]) for k in uniq}
        j = 0
        while j < len(uniq):
            k = int(uniq[j])
            if not self._can_continue(k, idx.start_key(k)):
                self._seek(idx.start_key(k))
            wp = int(idx.pts[k])
            for f in self._frames(want_pts, skip):
                fp = f.pts if f.pts is not None else f.dts
                if fp is None:
                    continue
                fp = int(fp)
                if self._last_out is not None and fp <= self._last_out:
                    raise _OutOfOrder()
                self._last_out = fp
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
                if not self._can_continue(k, idx.start_key(k)):
                    break  # far ahead: seek to it rather than decode the way there
            else:
                raise _Missing([k])  # the end of the file came first

    def _sweep_resynced(self, uniq: np.ndarray, *, skip: bool = True) -> Iterator[tuple[int, Any]]:
        """:meth:`_sweep`; where a container seek lands off the index (:class:`_Desync`), the file is read on
        from the start instead of seeking, from then on, and the frames not yet given are decoded again."""
        done = 0
        while True:
            try:
                start = done
                for j, f in self._sweep(uniq[start:], skip=skip):
                    done = start + j + 1
                    yield start + j, f
                return
            except _Desync:
                if not self._seekable:
                    raise _Missing([int(uniq[min(done, len(uniq) - 1)])]) from None
                self._seekable = False
                self._reset_decoder()

    def _decode_indices(self, uniq: np.ndarray, *, skip: bool = True) -> list[np.ndarray]:
        """RGB frames (as stored) for sorted distinct frame indices ``uniq``."""
        out: list[np.ndarray] = []
        for _, f in self._sweep_resynced(uniq, skip=skip and self.skip_unwanted):
            out.append(f.to_ndarray(format="rgb24"))
        return out

    # -- frames identified by decode rank ----------------------------------------------------------------------
    def _rank_frames(self, why: str) -> None:
        """Decode the whole stream once and identify frames by their output rank (their timestamps cannot)."""
        self.by_rank = True
        self.warnings.append(f"frames identified by decode order ({why})")
        self._reset_decoder()
        self._rewind()
        self._clean_from = 0
        pts: list[int] = []
        for f in self._frames(set(), skip=False):
            t = f.pts if f.pts is not None else f.dts
            pts.append(int(t) if t is not None else (pts[-1] + 1 if pts else 0))
        if not pts:
            raise VideoError(self.path, "no decodable frames")
        p = np.asarray(pts, dtype=np.int64)  # for timestamps only: sorted when they are a permutation (AVI with
        self.index.pts = np.sort(p) if np.unique(p).size == p.size else np.maximum.accumulate(p)  # B-frames)
        self.index.pos_of = np.arange(len(pts), dtype=np.int64)
        self.index.reliable = False
        self._reset_decoder()

    def _sweep_by_rank(self, uniq: np.ndarray) -> Iterator[tuple[int, Any]]:
        self._reset_decoder()
        self._rewind()
        self._clean_from = 0
        j = rank = 0
        for f in self._frames(set(), skip=False):
            while j < len(uniq) and int(uniq[j]) == rank:
                yield j, f
                j += 1
            if j >= len(uniq):
                break
            rank += 1
        self._reset_decoder()
        if j < len(uniq):
            raise _Missing([int(x) for x in uniq[j:]])

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
                    self._rank_frames("the decoder's frame timestamps are not in display order")
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
            decodable = self._count_decodable()
            if decodable < self.num_frames:
                self.num_frames = decodable
                raise TruncatedVideoError(self.path, decodable, self.expected_frames)
        raise VideoError(self.path, f"corrupt: frame {k} (at {t:.3f} s) cannot be decoded")

    def _count_decodable(self) -> int:
        """Frames that come out of one decode from the last keyframes to the end: the decodable prefix length."""
        idx = self.index
        lo = max(0, idx.num_frames - 4 * _MAX_REORDER)
        start = idx.start_key(lo)
        self._reset_decoder()
        self._seek(start)
        seen = {int(f.pts) for f in self._frames(set(), skip=False) if f.pts is not None}
        self._reset_decoder()
        k = idx.num_frames
        while k > 0 and int(idx.pts[k - 1]) not in seen and k - 1 >= lo:
            k -= 1
        return k

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
            for j, f in self._sweep_resynced(uniq):
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

