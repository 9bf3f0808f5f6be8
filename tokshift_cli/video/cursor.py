"""The packet cursor under :class:`tokshift_cli.video.reader.VideoReader`: one PyAV stream's demuxer and decoder.

It puts the demuxer at a packet of the index (reading on without decoding, a container seek verified by the
packets that follow it, or a fresh start), feeds packets from there and yields the decoded frames in output
order, leaving out non-reference frames nobody asked for. Timestamps decide which frames are kept:
:class:`tokshift_cli.video.sweep.FrameSweep` does that. The reader's module docstring has the whole method.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .index import NONE as _NONE
from .index import FrameIndex
from .opening import _import_av

__all__ = ["PacketCursor"]

#: Seek (instead of decoding on) when the next keyframe needed is more than this many packets ahead.
_SEEK_GAP = 8


class _Missing(Exception):
    """Internal: wanted frames did not come out of the decoder."""

    def __init__(self, missing: list[int]):
        super().__init__(f"frames {missing[:6]} did not decode")
        self.missing = missing


class _OutOfOrder(Exception):
    """Internal: the decoder gave frame timestamps that go back: they are not presentation times (AVI)."""


class _Desync(Exception):
    """Internal: after a container seek the demuxer gave packets the index does not have there (MPEG-PS)."""


class PacketCursor:
    """Where the demuxer and the decoder of one video stream are, against its packet index.

    ``container``/``stream``: the open PyAV container and its chosen video stream (both replaced when the file
    has to be opened again: ``reopen()`` gives a fresh container); ``index``: the stream's packet index;
    ``num_threads``: decoder threads. ``seekable`` turns False once a container seek landed off the index: from
    then on the file is read on from the start."""

    def __init__(self, container: Any, stream: Any, index: FrameIndex, num_threads: int,
                 reopen: Callable[[], Any]):
        self.container = container
        self.stream = stream
        self.index = index
        self.num_threads = num_threads
        self.stream_index = list(container.streams.video).index(stream)
        self._reopen = reopen
        self.pos_by_ts: dict[tuple[int, int], int] | None = None
        self.seekable = True  # container seeks land where the index says (else: read on from the start)

    def reset(self) -> None:
        """Forget the decoder's position: the next wanted frame seeks."""
        self._demuxer: Iterator[Any] | None = None
        self._pending: Any = None  # a packet pulled from the demuxer, not yet fed: the one at _next_pos
        self._next_pos = 0  # decode position of the next packet to feed
        self._clean_from: int | None = None  # keyframe the decoder has run from without a gap (None: not running)
        self._last_out: int | None = None  # timestamp of the last frame the decoder gave
        self._fed_wants: set[int] = set()  # frames whose packets were fed without skipping
        self._outq: deque[Any] = deque()  # decoded frames not handed out yet
        self._eof = False
        cc = self.stream.codec_context
        if not cc.is_open:  # threads can only be set before the first decode
            cc.thread_count, cc.thread_type = self.num_threads, "SLICE"
        with contextlib.suppress(Exception):
            cc.flush_buffers()

    def seek(self, target: int) -> None:
        """Put the demuxer at packet ``target`` (a keyframe) with a flushed decoder: read on without decoding
        when it is near, else a container seek verified by the packets that follow (matched by their
        timestamps), else from the start."""
        cc = self.stream.codec_context
        with contextlib.suppress(Exception):
            cc.flush_buffers()
        cc.skip_frame = "DEFAULT"
        forward = self._demuxer is not None and self._next_pos <= target
        read_on = forward and (target <= self._next_pos + 4 * _SEEK_GAP or not self.seekable)
        if not (read_on and self.skip_to(target)):
            if not (target > 0 and self.seekable and self.container_seek(target)):
                self.rewind()
                if not self.skip_to(target):
                    raise _Missing([])
        self._clean_from, self._last_out, self._eof = target, None, False
        self._fed_wants = set()
        self._outq.clear()

    def container_seek(self, target: int) -> bool:
        idx = self.index
        dts, pts = int(idx.packet_dts[target]), int(idx.packet_pts[target])
        ts = dts if dts != _NONE else pts
        if ts == _NONE:
            return False
        try:
            self.container.seek(ts, stream=self.stream, backward=True)
        except Exception:
            return False
        self._demuxer, self._pending = self.container.demux(self.stream), None
        return self.resync(target)

    def rewind(self) -> None:
        """Demuxer at packet 0: a seek to the start when the first packet that follows is packet 0, else a fresh
        open of the file (always right)."""
        with contextlib.suppress(Exception):
            self.container.seek(0, stream=self.stream, backward=True)
            self._demuxer, self._pending = self.container.demux(self.stream), None
            if self.resync(0):
                return
        with contextlib.suppress(Exception):
            self.container.close()
        self.container = self._reopen()
        self.stream = list(self.container.streams.video)[self.stream_index]
        for other in self.container.streams:
            if other.index != self.stream.index:
                other.discard = _import_av().stream.Discard.all
        cc = self.stream.codec_context
        if not cc.is_open:
            cc.thread_count, cc.thread_type = self.num_threads, "SLICE"
        self._demuxer, self._pending, self._next_pos = self.container.demux(self.stream), None, 0

    def resync(self, target: int) -> bool:
        """After a container seek: find where the demuxer landed from the first packet it gives (matched by
        timestamps to the index) and read on to ``target``. False when it landed after it, or nowhere known."""
        packet = self.raw_next()
        pos = self.locate(packet) if packet is not None else None
        if pos is None or pos > target:
            return False
        self._pending, self._next_pos = packet, pos
        return self.skip_to(target)

    def skip_to(self, target: int) -> bool:
        """Read packets without decoding until the next one to feed is ``target``; False at the end of the file
        or when the packet there is not the index's."""
        while self._next_pos < target:
            if self.next_packet() is None:
                return False
        if self._pending is None:
            self._pending = self.raw_next()
        return self._pending is not None and self.locate(self._pending) == target

    def locate(self, packet: Any) -> int | None:
        """Decode position of a demuxed packet, by its (dts, pts) in the index."""
        if self.pos_by_ts is None:
            idx = self.index
            self.pos_by_ts = {}
            for i, key in enumerate(zip(idx.packet_dts.tolist(), idx.packet_pts.tolist())):
                self.pos_by_ts.setdefault(key, i)
        key = (_NONE if packet.dts is None else int(packet.dts), _NONE if packet.pts is None else int(packet.pts))
        return self.pos_by_ts.get(key)

    def raw_next(self) -> Any:
        while True:
            try:
                packet = next(self._demuxer)  # type: ignore[arg-type]
            except StopIteration:
                return None
            except Exception:  # av.error.*: the rest of the file cannot be read
                return None
            if packet.size:
                return packet

    def next_packet(self) -> Any:
        """The packet at ``_next_pos`` (advancing it), or None at the end. Raises :class:`_Desync` when it is not
        the packet the index has there (its timestamps differ): only container seeks get there."""
        packet, self._pending = self._pending, None
        if packet is None:
            packet = self.raw_next()
        if packet is not None:
            idx, p = self.index, self._next_pos
            key = (_NONE if packet.dts is None else int(packet.dts), _NONE if packet.pts is None else int(packet.pts))
            if p >= len(idx.packet_pts) or key != (int(idx.packet_dts[p]), int(idx.packet_pts[p])):
                raise _Desync()
            self._next_pos += 1
        return packet

    def frames(self, want_pts: set[int], skip: bool) -> Iterator[Any]:
        """Feed packets from the current position; yield decoded frames in output order. ``skip``: a packet of a
        frame not in ``want_pts`` is decoded only when other frames reference it (``skip_frame = NONREF``)."""
        cc = self.stream.codec_context
        if not skip:
            cc.skip_frame = "DEFAULT"
        while True:
            while self._outq:  # popped before it is yielded: a consumer that stops keeps the rest for later
                yield self._outq.popleft()
            if self._eof:
                return
            packet = self.next_packet()
            if packet is None:
                self._eof = True
                cc.skip_frame = "DEFAULT"
                self._outq.extend(self.safe_decode(None))
            else:
                wanted = packet.pts is not None and int(packet.pts) in want_pts
                if wanted:
                    self._fed_wants.add(int(packet.pts))
                if skip:
                    cc.skip_frame = "DEFAULT" if wanted else "NONREF"
                self._outq.extend(self.safe_decode(packet))

    def safe_decode(self, packet: Any) -> list[Any]:
        try:
            return list(self.stream.codec_context.decode(packet))
        except Exception:  # a damaged packet: FFmpeg conceals what it can; missing frames are found by timestamp
            return []

    def can_continue(self, k: int, start: int) -> bool:
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
