"""Live sources for ``tokshift live``: cameras, network streams and files paced at their own timestamps, decoded
in a killable process into a ring of the most recent frames.

::

    src = parse_source("rtsp://cam.local/stream", transport="tcp")    # or "/dev/video0", "0", "udp://...", a file
    with LiveReader(src, short_side=224, capacity=240, reconnect=True) as reader:
        w = reader.ring.window(frames=8, stride=32)                     # the newest complete window, or None
        reader.events()                                                  # connected / gap / end, as dicts

How it holds up:

* decoding runs in its own interpreter (a socket pair, as :mod:`tokshift_cli.video.workers`): a decoder that
  crashes or hangs costs a reconnect, never the run; the parent kills it on close, so Ctrl-C is immediate;
* the decode process scales each frame (FFmpeg's swscale, bicubic) to the model's short side at the display
  aspect, so the ring holds ``capacity`` small frames whatever the camera's resolution: memory is fixed;
* frames are numbered from 0 at each connection, in presentation order; a window is ``frames`` frames
  ``stride`` apart ending at the newest frame (as timeline windows, by frame number); a window never spans a gap;
* a network stream that drops (end of stream, read error, decoder crash, stall) is reopened with exponential
  backoff when ``reconnect`` is on; each drop is a ``gap`` event. The first connection must succeed: an
  unreachable source or an unsupported camera is a :class:`~tokshift_cli.errors.VideoError` (one line).

Cameras go through FFmpeg's v4l2 (Linux), avfoundation (macOS) and dshow (Windows) inputs; they are untested
here (no camera on the test machines). Rotation metadata is not applied to live frames.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UsageError, VideoError

__all__ = ["LiveSource", "parse_source", "FrameRing", "Window", "LiveReader", "NETWORK_SCHEMES", "live_frame_size"]

#: URL schemes read as network streams (FFmpeg protocols; srt only where FFmpeg was built with libsrt).
NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "tcp", "srt", "http", "https")
#: Timestamps that jump by more than this many seconds (or go back) start a new segment: a gap.
JUMP_S = 5.0


@dataclass(frozen=True)
class LiveSource:
    """What to open and how: ``url`` for FFmpeg, an input ``format`` (cameras), demuxer/protocol ``options``."""

    given: str  #: as the user wrote it
    url: str
    kind: str  #: camera | network | file
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    realtime: bool = False  #: pace a file at its own timestamps

    @property
    def network(self) -> bool:
        return self.kind == "network"


def parse_source(text: str, *, realtime: bool = False, transport: str = "tcp",
                 platform: str | None = None) -> LiveSource:
    """``SOURCE`` of ``tokshift live`` -> a :class:`LiveSource`; a UsageError for what cannot be a source.

    ``0``/``1``: a camera index (``/dev/videoN`` on Linux, avfoundation's index on macOS); ``/dev/videoN``;
    ``video=NAME`` (dshow, Windows); a URL with a scheme of :data:`NETWORK_SCHEMES`; a file (needs ``realtime``).
    ``transport``: rtsp's lower transport, ``tcp`` or ``udp``."""
    platform = platform or sys.platform
    s = str(text).strip()
    if transport not in ("tcp", "udp"):
        raise UsageError(f"--transport {transport!r}: choose tcp or udp")
    if not s:
        raise UsageError("SOURCE: give a camera (/dev/video0 or 0), a stream URL or a file with --realtime")
    if re.fullmatch(r"\d{1,3}", s):
        if platform.startswith("linux"):
            return LiveSource(s, f"/dev/video{int(s)}", "camera", "v4l2")
        if platform == "darwin":
            return LiveSource(s, s, "camera", "avfoundation")
        raise UsageError(f"SOURCE {s}: on this system give the camera by name, e.g. video=\"Integrated Camera\" "
                         "(`ffmpeg -list_devices true -f dshow -i dummy` lists them)")
    if s.startswith("/dev/video"):
        return LiveSource(s, s, "camera", "v4l2")
    if s.startswith("video="):
        return LiveSource(s, s, "camera", "dshow")
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", s)
    if m:
        scheme = m.group(1).lower()
        if scheme not in NETWORK_SCHEMES:
            raise UsageError(f"SOURCE {s}: unsupported URL scheme {scheme}:// (use one of "
                             f"{', '.join(x + '://' for x in NETWORK_SCHEMES)})")
        opts: dict[str, str] = {}
        if scheme in ("rtsp", "rtsps"):
            opts["rtsp_transport"] = transport
        if scheme in ("udp", "rtp"):
            opts["overrun_nonfatal"] = "1"
            opts["fifo_size"] = "1000000"
        opts["analyzeduration"] = "1000000"  # start within a second, not FFmpeg's default 5 s of probing
        return LiveSource(s, s, "network", None, opts)
    if not os.path.exists(s):
        raise UsageError(f"SOURCE {s}: no such file, camera or URL")
    if os.path.isdir(s):
        raise UsageError(f"SOURCE {s}: is a folder; live reads one source (tokshift timeline reads folders)")
    if not realtime:
        raise UsageError(f"SOURCE {s}: a file is read live only with --realtime (paced at its own timestamps); "
                         "`tokshift timeline` reads a whole file as fast as it can")
    return LiveSource(s, s, "file", None, {}, realtime=True)


def live_frame_size(width: int, height: int, sar: float, short_side: int) -> tuple[int, int]:
    """(width, height) the decode process scales a stored ``width x height`` frame to: the display aspect
    (sample aspect ratio applied), short side ``short_side``, with the authors' arithmetic (as
    :func:`~tokshift_cli.video.transforms.resize_shape`); never larger than the display size's own."""
    dw = max(1, int(round(width * (sar if sar and sar > 0 else 1.0))))
    dh = max(1, int(height))
    s = int(short_side)
    if dw > dh:
        return int(math.floor(1.0 * dw / dh * s)), s
    return s, int(math.floor(1.0 * dh / dw * s))


# --- the ring of recent frames ------------------------------------------------------------------------------------


@dataclass
class Window:
    """One model window: ``frames`` uint8 [T, H, W, 3] (a copy), their numbers, stream timestamps (seconds) and the
    monotonic time each frame left the decoder (``capture``)."""

    frames: np.ndarray
    numbers: np.ndarray
    pts: np.ndarray
    capture: np.ndarray
    segment: int  #: connection number (0 for the first)


class FrameRing:
    """The last ``capacity`` frames of the current segment, in fixed preallocated memory (a frame size change
    reallocates once). Thread-safe: the reader thread pushes, the decision loop takes windows."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = int(capacity)
        self.cond = threading.Condition()
        self.pixels: np.ndarray | None = None
        self.numbers = np.full(self.capacity, -1, dtype=np.int64)
        self.pts = np.zeros(self.capacity, dtype=np.float64)
        self.capture = np.zeros(self.capacity, dtype=np.float64)
        self.segment = -1
        self.newest = -1  #: number of the newest complete frame of the segment (-1: none)
        self.received = 0  #: frames pushed in all segments

    def start_segment(self, segment: int) -> None:
        with self.cond:
            self.segment = segment
            self.numbers[:] = -1
            self.newest = -1
            self.cond.notify_all()

    def slot_for(self, number: int, shape: tuple[int, int, int]) -> np.ndarray:
        """The (invalidated) buffer frame ``number`` is received into."""
        with self.cond:
            if self.pixels is None or self.pixels.shape[1:] != shape:
                self.pixels = np.zeros((self.capacity, *shape), dtype=np.uint8)
                self.numbers[:] = -1
            s = number % self.capacity
            self.numbers[s] = -1
            return self.pixels[s]

    def commit(self, number: int, pts: float, capture: float) -> None:
        with self.cond:
            s = number % self.capacity
            self.numbers[s], self.pts[s], self.capture[s] = number, pts, capture
            self.newest = max(self.newest, number)
            self.received += 1
            self.cond.notify_all()

    def newest_info(self) -> tuple[int, float, float, int] | None:
        """(number, pts, capture, segment) of the newest frame, or None."""
        with self.cond:
            if self.newest < 0:
                return None
            s = self.newest % self.capacity
            return int(self.newest), float(self.pts[s]), float(self.capture[s]), self.segment

    def window(self, frames: int, stride: int, end: int | None = None) -> Window | None:
        """A copy of the window of ``frames`` frames ``stride`` apart ending at frame ``end`` (default: the newest),
        or None while any of its frames is missing (the segment is younger than one window)."""
        with self.cond:
            end = self.newest if end is None else end
            if end < 0 or self.pixels is None:
                return None
            nums = end - stride * np.arange(frames - 1, -1, -1, dtype=np.int64)
            if nums[0] < 0:
                return None
            slots = nums % self.capacity
            if not np.array_equal(self.numbers[slots], nums):
                return None
            return Window(self.pixels[slots].copy(), nums, self.pts[slots].copy(), self.capture[slots].copy(),
                          self.segment)

    def wait(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait(timeout)


# --- the decode process ---------------------------------------------------------------------------------------------


def _open_reason(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "cannot connect (connection refused)"
    if isinstance(e, FileNotFoundError):
        return "not found (no such camera, file or stream)"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, (TimeoutError, socket.timeout)):
        return "no answer (timed out)"
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return f"cannot be opened ({text.splitlines()[0]})"


def _decode_stream(conn: Any, setup: dict[str, Any], segment: int) -> None:
    """One connection: open the source, send every frame (scaled) until the stream ends or fails."""
    import av

    src: LiveSource = setup["source"]
    try:
        limits = None if setup["open_timeout"] is None else (setup["open_timeout"], setup["read_timeout"])
        container = av.open(src.url, format=src.format, options=dict(src.options), timeout=limits)
    except Exception as e:  # noqa: BLE001 - any failure to open is the source's one line
        conn.send(("error", _open_reason(e)))
        return
    try:
        if not container.streams.video:
            conn.send(("error", "has no video stream"))
            return
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # frame threads would hold frames back: latency
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        conn.send(("connected", {"codec": stream.codec_context.name, "width": stream.codec_context.width,
                                 "height": stream.codec_context.height, "fps": round(rate, 3)}))
        n, t0, wall0, last = 0, None, 0.0, None
        size: tuple[int, int] | None = None
        for frame in container.decode(stream):
            t = frame.time if frame.time is not None else (n / rate)
            if t0 is None:
                t0, wall0 = t, time.monotonic()
            if src.realtime:
                delay = wall0 + (t - t0) - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            if last is not None and (t < last or t - last > JUMP_S):
                conn.send(("jump", {"from_s": last, "to_s": t}))
                return
            last = t
            capture = time.monotonic()
            if size is None:
                sar_q = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
                sar = float(sar_q) if sar_q else 1.0
                size = live_frame_size(frame.width, frame.height, sar, setup["short_side"])
            rgb = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="BICUBIC")
            arr = rgb.to_ndarray()
            conn.send(("frame", n, round(float(t - t0), 6), capture, arr.shape))
            conn.send_bytes(np.ascontiguousarray(arr).data)
            n += 1
        conn.send(("end", "the stream ended" if src.kind != "file" else "end of file"))
    except Exception as e:  # noqa: BLE001 - a read or decode error ends this connection, not the run
        conn.send(("end", f"the stream stopped ({_open_reason(e).removeprefix('cannot be opened (').rstrip(')')})"))
    finally:
        with contextlib.suppress(Exception):
            container.close()


def _live_entry() -> None:
    """``python -c 'from tokshift_cli.video.live_source import _live_entry; _live_entry()' FD``."""
    import signal

    from .workers import _Channel, _watch_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = _Channel(socket.socket(fileno=int(sys.argv[1])))
    try:
        setup = conn.recv()  # the channel's own framing: private to this socket pair (video/workers.py)
    except (EOFError, OSError):
        return
    threading.Thread(target=_watch_parent, args=(setup["parent_pid"],), daemon=True).start()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing a decoder prints may reach the parent's stdout (--json)
    if setup["quiet"]:
        os.dup2(devnull, 2)
    os.close(devnull)
    import av

    av.logging.set_level(av.logging.PANIC if setup["quiet"] else av.logging.ERROR)
    conn.send(("ready", os.getpid()))
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                return
            _decode_stream(conn, setup, int(msg[1]))
    except (EOFError, OSError):
        return


# --- the parent side ------------------------------------------------------------------------------------------------


class LiveReader:
    """A live source decoded in a killable process into :attr:`ring`; drops reconnected with backoff.

    ``events()`` returns what happened since the last call, as dicts with ``"event"``: ``connected`` (codec,
    size, fps, ``segment``), ``gap`` (``reason``; the ring restarts at the next connection), ``end`` (``reason``:
    no more frames will come). ``backoff``: (first, longest) seconds between reconnection attempts, doubling."""

    def __init__(self, source: LiveSource, *, short_side: int, capacity: int, reconnect: bool,
                 open_timeout: float | None = 10.0, read_timeout: float | None = 10.0,
                 backoff: tuple[float, float] = (0.5, 10.0), quiet: bool = True):
        self.source, self.reconnect, self.backoff = source, reconnect, backoff
        self.ring = FrameRing(capacity)
        self.setup = {"source": source, "short_side": int(short_side), "open_timeout": open_timeout,
                      "read_timeout": read_timeout, "parent_pid": os.getpid(), "quiet": quiet}
        #: no message from the decode process for this long: it is stuck in native code; killed and restarted
        self.stall_s = None if open_timeout is None or read_timeout is None else \
            float(read_timeout) + float(open_timeout) + 5.0
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.finished = threading.Event()  #: no more frames will come
        self.segment = -1
        self.gaps = 0
        self.restarts = 0
        self._proc: Any = None
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._first = threading.Event()
        self._first_error: str | None = None
        self._need_ready = True

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self, wait: bool = True) -> None:
        """Start the decode process and connect; with ``wait``, raise VideoError if the first connection fails."""
        self._spawn()
        self._thread = threading.Thread(target=self._run, name="tokshift-live-reader", daemon=True)
        self._thread.start()
        if wait:
            try:
                while not self._first.wait(0.2):
                    pass
            except BaseException:  # Ctrl-C while connecting: the decode process goes too
                self.close()
                raise
            if self._first_error is not None:
                self.close()
                raise VideoError(self.source.given, self._first_error)

    def close(self) -> None:
        self._stop.set()
        self._kill()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.finished.set()

    def __enter__(self) -> "LiveReader":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            out, self._events = self._events, []
        return out

    def events_pending(self) -> bool:
        with self._lock:
            return bool(self._events)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- the process -----------------------------------------------------------------------------------------
    def _spawn(self) -> None:
        import subprocess

        from .workers import WorkerStartError, _Channel

        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-c", "from tokshift_cli.video.live_source import _live_entry; _live_entry()",
               str(theirs.fileno())]
        here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        pythonpath = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                                          env={**os.environ, "PYTHONPATH": pythonpath})
        except OSError as e:
            ours.close()
            raise WorkerStartError(f"cannot start the decode process ({e.strerror or e})") from None
        finally:
            theirs.close()
        self._conn = _Channel(ours)
        self._need_ready = True
        self._conn.send(self.setup)

    def _kill(self) -> None:
        proc, conn = self._proc, self._conn
        if proc is not None:
            with contextlib.suppress(Exception):
                proc.kill()
            with contextlib.suppress(Exception):
                proc.wait(timeout=2)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _emit(self, event: dict[str, Any]) -> None:
        event = {"event": event.pop("event"), "time": time.time(), **event}
        with self._lock:
            self._events.append(event)

    def _recv(self) -> Any:
        """The next message, or raise EOFError (the process died) / TimeoutError (it stalled)."""
        if not self._conn.poll(self.stall_s):
            raise TimeoutError
        return self._conn.recv()

    def _run(self) -> None:
        delay = self.backoff[0]
        ever_connected = False
        try:
            while not self._stop.is_set():
                reason = self._one_connection()
                if self._stop.is_set():
                    return
                if reason is None:  # connected, then the stream ended or dropped
                    ever_connected, delay = True, self.backoff[0]
                    continue
                if not ever_connected and not self._first.is_set():
                    self._first_error = reason
                    self._first.set()
                    return
                if not self.reconnect:
                    self._emit({"event": "end", "reason": reason})
                    return
                self._stop.wait(delay)  # backoff before the next attempt (interruptible)
                delay = min(delay * 2, self.backoff[1])
        finally:
            self._first.set()
            self.finished.set()
            with self.ring.cond:
                self.ring.cond.notify_all()

    def _one_connection(self) -> str | None:
        """Ask the process to connect once and receive its frames. Returns the reason the connection failed to
        open (None: it opened, and ran until it ended; gap/end events are emitted here)."""
        if self._proc is None or self._proc.poll() is not None:
            self._kill()
            self._spawn()
            self.restarts += 1
        seg = self.segment + 1
        opened = False
        try:
            if self._need_ready:
                msg = self._recv()
                if msg[0] != "ready":
                    raise EOFError
                self._need_ready = False
            self._conn.send(("open", seg))
            while True:
                msg = self._recv()
                kind = msg[0]
                if kind == "frame":
                    _, n, pts, capture, shape = msg
                    self._recv_frame(self.ring.slot_for(n, tuple(shape)))
                    self.ring.commit(n, pts, capture)
                elif kind == "connected":
                    opened = True
                    self.segment = seg
                    self.ring.start_segment(seg)
                    self._first.set()
                    self._emit({"event": "connected", "segment": seg, **msg[1]})
                elif kind == "error":
                    return msg[1]
                elif kind in ("end", "jump"):
                    reason = msg[1] if kind == "end" else (f"timestamps jumped from {msg[1]['from_s']:.3f} s to "
                                                          f"{msg[1]['to_s']:.3f} s")
                    self._gap_or_end(reason)
                    return None
        except TimeoutError:
            reason = f"no frames for {self.stall_s or 0:g} s (decode process stalled; restarted)"
        except (EOFError, OSError):
            from .workers import signal_description

            with contextlib.suppress(Exception):
                self._proc.wait(timeout=2)
            reason = f"decode process died ({signal_description(self._proc.poll())})"
        if self._stop.is_set():
            return None
        self._kill()
        self._proc = None
        if not opened:
            return reason
        self._gap_or_end(reason)
        return None

    def _recv_frame(self, buf: np.ndarray) -> None:
        """The pixels that follow a ``frame`` message, straight into the ring's slot (no allocation)."""
        prefix = bytearray(8)
        self._conn._recv_into(memoryview(prefix))
        (n,) = struct.unpack("<Q", prefix)
        view = memoryview(buf).cast("B")
        if n != view.nbytes:
            raise EOFError(f"frame of {n} bytes for a {view.nbytes}-byte slot")
        self._conn._recv_into(view)

    def _gap_or_end(self, reason: str) -> None:
        will_retry = self.reconnect and not self._stop.is_set()
        if will_retry:
            self.gaps += 1
            self._emit({"event": "gap", "segment": self.segment, "reason": reason})
        else:
            self._emit({"event": "end", "segment": self.segment, "reason": reason})
            self._stop.set()
