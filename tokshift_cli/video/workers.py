"""Decoding in worker processes that can be killed: a crash or a hang in a native decoder costs one file.

Decoders are native code (FFmpeg under PyAV, or decord). A corrupt file can make them segfault, abort, or loop
forever; in a thread that takes the whole run down or stalls it (a Python thread cannot be killed). Here each
file is decoded in a separate, warm worker process::

    for d in ordered_decode(paths, decode_clips, workers=2, prefetch=4, timeout=60,
                            kwargs=dict(frames=8, stride=32, clips=1)):
        d.frames        # uint8 [F, H, W, 3] RGB (the distinct sampled frames), or d.error: "PATH: reason" material

Contract (the same as :func:`tokshift_cli.engine.ordered_prefetch`, plus isolation):

* results come back in input order, at most ``prefetch`` files ahead of the consumer (bounded memory);
* ``timeout``: seconds one file may take, counted from when a worker starts it. A worker past it is killed
  (SIGKILL) and replaced; that file gets a :class:`~tokshift_cli.errors.DecodeTimeoutError`
  ("timed out: decoding took longer than N s (--timeout)");
* a worker that dies (segfault, abort, ``os._exit``, killed by the OOM killer) gives its file a
  :class:`~tokshift_cli.errors.DecoderCrashedError` ("decoder crashed (signal 11 SIGSEGV)") and is replaced;
  the other files are unaffected;
* a :class:`~tokshift_cli.errors.VideoError` raised by ``decode_fn`` is that file's failure; any other exception
  is a bug and is re-raised in the consumer (as ``ordered_prefetch`` does).

Failures become results through ``on_error(index, path, error, elapsed_s)`` (default: a :class:`DecodedVideo`
carrying ``error.reason``), so the consumer sees exactly one item per input.

Why processes, how frames travel, and what the workers never do: docs/reliability.md#how-decoding-is-isolated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DecoderCrashedError, DecodeTimeoutError, TokShiftError, VideoError, WorkerStartError
from .geometry import Geometry

__all__ = ["DecodedVideo", "decode_clips", "decode_indexed", "decode_failure", "ordered_decode", "DecodePool", "WorkerStartError",
           "signal_description"]

#: Seconds a new worker may take to import its decoders and say it is ready.
_START_TIMEOUT = 120.0


# --- what a worker computes ------------------------------------------------------------------------------------


@dataclass
class DecodedVideo:
    """The decoded, sampled frames of one video (or its error): everything before the tensor work.

    ``frames[k]`` is frame number ``needed[k]``; clip ``c`` of the protocol uses frames ``frame_indices[c]``
    (``np.searchsorted(needed, frame_indices)`` gives their rows). Identical clips (short videos wrap around)
    appear once in ``unique_indices``; ``inverse`` maps each clip to its row there.
    """

    index: int
    path: str
    error: str | None = None
    #: uint8 [F, H, W, 3] RGB, the distinct needed frames in ascending order (a CUDA torch tensor when decoded on
    #: the GPU, in the parent process only: see ``decode_clips(device=)``)
    frames: Any = None
    needed: np.ndarray | None = None  #: [F] 0-based frame numbers of ``frames``
    frame_indices: np.ndarray | None = None  #: [clips, T] every temporal clip, duplicates included
    unique_indices: np.ndarray | None = None  #: [U, T]
    inverse: np.ndarray | None = None  #: [clips] -> row of ``unique_indices``
    timestamps: np.ndarray | None = None  #: [clips, T] seconds
    decoder: str | None = None
    #: ``video_info``: num_frames, fps, display and stored size, rotation, sar, codec, container, warnings
    meta: dict[str, Any] = field(default_factory=dict)
    geometry: Geometry | None = None  #: how ``frames`` (as stored) are shown
    decode_s: float = 0.0
    crashed: bool = False  #: the worker died or was killed on this file (error says how)


def decode_clips(index: int, path: str, *, frames: int, stride: int, clips: int, decoder: str = "auto",
                 min_decodable: float = 0.9, device: Any = None, sampling: str = "centred",
                 stream: int | None = None) -> DecodedVideo:
    """Open ``path``, draw ``clips`` x ``frames`` frame indices (``stride`` apart, placed by ``sampling``:
    :func:`~tokshift_cli.video.sampling.clip_indices`) and decode each distinct frame once. Exactly the decode
    half of ``engine.prepare_video`` (same indices, same frames, same metadata), so the engine keeps the tensor
    half (resize, crop, normalise on the model's device).

    Never raises for a bad file: the reason goes to ``error``. Picklable and torch-free: it runs in a worker.
    ``device``: the model's device, for the ``--decoder`` rule (:func:`tokshift_cli.video.open_video`). Workers
    leave it None (CPU decoders, numpy frames); the engine passes it when it decodes on the GPU in its own
    threads, and then ``frames`` is a CUDA tensor.
    """
    from .sampling import clip_indices

    return decode_indexed(index, path, lambda n: clip_indices(n, frames, stride, clips, sampling), decoder=decoder,
                          min_decodable=min_decodable, device=device, stream=stream)


def decode_indexed(index: int, path: str, indices_of: Callable[[int], np.ndarray], *, decoder: str = "auto",
                   min_decodable: float = 0.9, device: Any = None, stream: int | None = None) -> DecodedVideo:
    """Open ``path`` and decode once each distinct frame of the clips ``indices_of(num_frames)`` names
    (``[clips, T]`` 0-based frame numbers); what :func:`decode_clips` and the training clips share. Never raises
    for a bad file: the reason goes to ``error``."""
    from .sampling import unique_clips
    from . import open_video

    t0 = time.perf_counter()
    out = DecodedVideo(index=index, path=path)
    try:
        with open_video(path, decoder=decoder, device=device, min_decodable=min_decodable,
                        stream=stream) as video:
            # sample() re-draws over the frames that really decode when the file is shorter than its header says
            needed, raw = video.sample(lambda n: np.unique(indices_of(n)))
            idx = indices_of(video.num_frames)
            uniq, inverse = unique_clips(idx)
            ts = np.asarray(video.timestamps(needed.tolist()), dtype=np.float64)
            out.decoder = video.decoder
            out.meta = video.info()
            out.geometry = video.geometry
        out.frames = np.ascontiguousarray(raw) if isinstance(raw, np.ndarray) else raw  # NVDEC: a CUDA tensor
        out.needed = np.asarray(needed, dtype=np.int64)
        out.frame_indices, out.unique_indices, out.inverse = idx, uniq, inverse
        out.timestamps = ts[np.searchsorted(out.needed, idx)]
    except VideoError as e:
        out.error = e.reason
    except TokShiftError as e:
        out.error = str(e)
    except (RuntimeError, ValueError, OSError, MemoryError, IndexError) as e:  # last line of defence
        out.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
    out.decode_s = time.perf_counter() - t0
    return out


def decode_failure(index: int, path: str, error: VideoError, elapsed: float) -> DecodedVideo:
    """The default ``on_error``: a :class:`DecodedVideo` that carries the failure."""
    return DecodedVideo(index=index, path=path, error=error.reason, decode_s=elapsed,
                        crashed=isinstance(error, (DecoderCrashedError, DecodeTimeoutError)))


# --- signals and exit codes ------------------------------------------------------------------------------------


def signal_description(exitcode: int | None) -> str:
    """A worker's exit status in words: "signal 11 SIGSEGV", "exit code 3"."""
    if exitcode is None:
        return "no exit status"
    if exitcode < 0:
        num = -exitcode
        try:
            name = signal.Signals(num).name
        except ValueError:
            name = "unknown signal"
        extra = {"SIGKILL": ": killed, by the out-of-memory killer?", "SIGABRT": ": aborted",
                 "SIGBUS": ": bus error"}.get(name, "")
        return f"signal {num} {name}{extra}"
    return f"exit code {exitcode}"


# --- the wire: a socket pair, length-prefixed frames, pixel buffers in memfds --------------------------------

#: Buffers at least this large travel as a memfd (Linux: the worker writes the pixels once, the parent maps the
#: same pages: no copy through the socket); smaller ones, and every buffer where memfd is missing, inline.
_MEMFD_MIN = 64 * 1024
_HAVE_MEMFD = hasattr(os, "memfd_create") and hasattr(socket, "send_fds")


class _Channel:
    """One end of a worker's socket pair: pickled messages and raw buffers as ``<u64 length><bytes>`` frames;
    file descriptors ride along with a frame (SCM_RIGHTS)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        with contextlib.suppress(OSError):  # fewer, larger copies for frames of a few MB
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def poll(self, timeout: float | None = 0.0) -> bool:
        import select

        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    def send_bytes(self, data: bytes | memoryview, fds: Sequence[int] = ()) -> None:
        prefix = struct.pack("<Q", memoryview(data).nbytes)
        if fds:
            socket.send_fds(self.sock, [prefix], list(fds))
        else:
            self.sock.sendall(prefix)
        self.sock.sendall(data)

    def _recv_into(self, view: memoryview) -> None:
        while view.nbytes:
            n = self.sock.recv_into(view)
            if n == 0:
                raise EOFError("the other end closed the connection")
            view = view[n:]

    def recv_bytes(self, into: bytearray | None = None, maxfds: int = 0) -> tuple[bytearray, list[int]]:
        prefix = bytearray(8)
        fds: list[int] = []
        got = 0
        if maxfds:
            data, fds, _, _ = socket.recv_fds(self.sock, 8, maxfds)
            if not data:
                raise EOFError("the other end closed the connection")
            prefix[:len(data)] = data
            got = len(data)
        self._recv_into(memoryview(prefix)[got:])
        (n,) = struct.unpack("<Q", prefix)
        buf = into if into is not None and len(into) == n else bytearray(n)
        self._recv_into(memoryview(buf))
        return buf, fds

    def send(self, obj: Any) -> None:
        self.send_bytes(pickle.dumps(obj, protocol=5))

    def recv(self) -> Any:
        return pickle.loads(self.recv_bytes()[0])


# --- the worker process ----------------------------------------------------------------------------------------


def _watch_parent(parent_pid: int) -> None:
    """Exit when the parent is gone (even after its ``kill -9``), also while a decode is stuck."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(0)


def _worker_entry() -> None:
    """``python -c 'from tokshift_cli.video.workers import _worker_entry; _worker_entry()' FD``: one worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    conn = _Channel(socket.socket(fileno=int(sys.argv[1])))
    try:
        setup = conn.recv()
    except (EOFError, OSError):
        return
    threading.Thread(target=_watch_parent, args=(setup["parent_pid"],), daemon=True).start()
    for p in reversed(setup["sys_path"]):  # the parent's import path (test modules, editable installs)
        if p not in sys.path:
            sys.path.insert(0, p)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing a decoder prints may reach the parent's stdout (--json)
    if setup["quiet"]:
        os.dup2(devnull, 2)
    else:
        import faulthandler

        faulthandler.enable()  # --debug: a native crash prints its Python stack
    os.close(devnull)
    from . import decord_reader

    decord_reader.DECORD_CPU_ONLY = True  # no CUDA wheels in a CPU decode worker (decord_reader.import_decord)
    with contextlib.suppress(Exception):  # warm: the first file should not pay for the imports
        import importlib

        for name in ("av", f"{__package__}.reader"):
            importlib.import_module(name)
    try:
        conn.send(("ready", os.getpid()))
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg is None:
                return
            task, call = msg
            try:
                fn, index, path, kwargs = pickle.loads(call)  # here, so that an import error is the task's error
                result = ("ok", fn(index, path, **kwargs))
            except VideoError as e:
                result = ("video_error", e)
            except BaseException as e:  # a bug in fn: the parent re-raises it
                result = ("exception", _portable_exception(e))
            _send_result(conn, task, result)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return  # the parent went away


def _portable_exception(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a RuntimeError with its text; the worker's traceback as a note."""
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        pickle.loads(pickle.dumps(e))
        out = e
    except Exception:
        out = RuntimeError(f"{type(e).__name__}: {e}")
    with contextlib.suppress(Exception):
        out.__traceback__ = None
        notes = list(getattr(out, "__notes__", []))
        out.__notes__ = notes + [f"in the decode worker (pid {os.getpid()}):\n{tb}"]
    return out


def _send_result(conn: _Channel, task: int, result: tuple[str, Any]) -> None:
    """Pickle protocol 5 with the pixel buffers out of band: large ones in memfds, the rest as raw frames."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        payload = pickle.dumps(result, protocol=5, buffer_callback=buffers.append)
    except Exception as e:  # an unpicklable result: a bug in fn
        buffers = []
        payload = pickle.dumps(("exception", RuntimeError(f"the decode result cannot be pickled: {e}")), protocol=5)
    raws = [b.raw() for b in buffers]
    kinds, fds = [], []
    try:
        for r in raws:
            if _HAVE_MEMFD and r.nbytes >= _MEMFD_MIN:
                fd = os.memfd_create("tokshift-frames", getattr(os, "MFD_CLOEXEC", 0))
                fds.append(fd)
                view = r.cast("B")
                while view.nbytes:
                    view = view[os.write(fd, view):]
                kinds.append(("fd", r.nbytes))
            else:
                kinds.append(("inline", r.nbytes))
        conn.send_bytes(pickle.dumps((task, kinds, len(payload)), protocol=5), fds=fds)
    finally:
        for fd in fds:  # sent (the parent holds its own copies) or failed: ours are not needed
            os.close(fd)
    conn.send_bytes(payload)
    for r, (kind, _) in zip(raws, kinds):
        if kind == "inline":
            conn.send_bytes(r)


def _recv_result(conn: _Channel) -> tuple[int, tuple[str, Any]]:
    import mmap

    head, fds = conn.recv_bytes(maxfds=64)
    try:
        task, kinds, _ = pickle.loads(head)
        payload, _ = conn.recv_bytes()
        bufs: list[Any] = []
        fd_iter = iter(fds)
        for kind, n in kinds:
            if kind == "fd":
                fd = next(fd_iter)
                # a private (copy-on-write) mapping of the worker's pages: writable here, no copy made
                bufs.append(mmap.mmap(fd, n, flags=mmap.MAP_PRIVATE) if n else bytearray(0))
            else:
                bufs.append(conn.recv_bytes()[0])
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    return task, pickle.loads(payload, buffers=bufs)


# --- the pool --------------------------------------------------------------------------------------------------


class _Worker:
    __slots__ = ("proc", "conn", "task", "started", "pid")

    def __init__(self, proc: Any, conn: Any):
        self.proc, self.conn = proc, conn
        self.task: int | None = None
        self.started = 0.0
        self.pid: int = proc.pid

    @property
    def exitcode(self) -> int | None:
        return self.proc.poll()


class DecodePool:
    """``workers`` warm decode processes. Use :func:`ordered_decode`, or ``with DecodePool(n) as pool:
    pool.ordered(...)`` to reuse the processes over several runs. ``worker_pids`` (for tests and monitoring)."""

    def __init__(self, workers: int, *, quiet: bool = True):
        if workers < 1:
            raise ValueError("DecodePool needs at least one worker")
        if os.name != "posix":
            raise WorkerStartError("decode worker processes need a POSIX system here; use --workers 0")
        self.size = workers
        self.quiet = quiet
        self._workers: list[_Worker] = []
        self.restarts = 0
        self._closed = False
        self._start(workers)

    # -- processes ---------------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        """A fresh interpreter (never a fork of this torch-running process) on one end of a socket pair."""
        import subprocess

        ours, theirs = socket.socketpair()
        cmd = [sys.executable, "-c", "from tokshift_cli.video.workers import _worker_entry; _worker_entry()",
               str(theirs.fileno())]
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding tokshift_cli/
        pythonpath = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
        try:
            proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if self.quiet else None,
                                    close_fds=True, env={**os.environ, "PYTHONPATH": pythonpath})
        except OSError as e:
            ours.close()
            theirs.close()
            raise WorkerStartError(f"cannot start a decode worker process ({e.strerror or e}); "
                                   "try --workers 0") from None
        theirs.close()
        conn = _Channel(ours)
        w = _Worker(proc, conn)
        with contextlib.suppress(OSError):
            conn.send({"parent_pid": os.getpid(), "sys_path": list(sys.path), "quiet": self.quiet})
        return w

    def _await_ready(self, w: _Worker) -> None:
        msg: Any = None
        if w.conn.poll(_START_TIMEOUT):
            with contextlib.suppress(EOFError, OSError, pickle.UnpicklingError):
                msg = w.conn.recv()
        if msg and msg[0] == "ready":
            return
        code = w.exitcode
        how = signal_description(code) if code is not None else f"no answer in {_START_TIMEOUT:g} s"
        self._discard(w)
        raise WorkerStartError(f"a decode worker process died while starting ({how}); "
                               "try --workers 0 to decode in the main process")

    def _start(self, n: int) -> None:
        new = [self._spawn() for _ in range(n)]
        try:
            for w in new:
                self._await_ready(w)
        except BaseException:
            for w in new:
                self._discard(w)
            raise
        self._workers.extend(new)

    def _discard(self, w: _Worker) -> None:
        """Kill (if alive), reap and forget one worker."""
        with contextlib.suppress(Exception):
            if w.proc.poll() is None:
                w.proc.kill()
            w.proc.wait(timeout=5)
        with contextlib.suppress(Exception):
            w.conn.close()
        if w in self._workers:
            self._workers.remove(w)

    def _top_up(self) -> None:
        """Start workers until the pool has its size again (after a run that was stopped early)."""
        if not self._closed and len(self._workers) < self.size:
            self._start(self.size - len(self._workers))

    def _replace(self, w: _Worker) -> None:
        self._discard(w)
        self.restarts += 1
        if not self._closed:
            self._start(1)

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None]

    def busy_pids(self) -> dict[int, int]:
        """``{input index: worker pid}`` of the files being decoded right now."""
        return {w.task: w.pid for w in list(self._workers) if w.task is not None and w.pid is not None}

    def close(self) -> None:
        """Stop every worker: idle ones are asked to exit, busy ones are killed."""
        if self._closed:
            return
        self._closed = True
        for w in list(self._workers):
            if w.task is None:
                with contextlib.suppress(Exception):
                    w.conn.send(None)
            else:
                with contextlib.suppress(Exception):
                    w.proc.kill()
        deadline = time.monotonic() + 2.0
        for w in list(self._workers):
            with contextlib.suppress(Exception):
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            self._discard(w)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one ordered run ---------------------------------------------------------------------------------
    def ordered(self, paths: Sequence[str], decode_fn: Callable[..., Any] = decode_clips, *,
                prefetch: int | None = None, timeout: float | None = None,
                kwargs: Mapping[str, Any] | None = None, errors: Mapping[int, str] | None = None,
                on_error: Callable[[int, str, VideoError, float], Any] = decode_failure) -> Iterator[Any]:
        """Decode ``paths`` with ``decode_fn(i, paths[i], **kwargs)`` in the workers; yield in input order.
        See :func:`ordered_decode` for the arguments."""
        if self._closed:
            raise RuntimeError("the DecodePool is closed")
        run = _Run(self, list(paths), decode_fn, dict(kwargs or {}), dict(errors or {}), on_error,
                   max(prefetch or 2 * self.size, 1), timeout)
        return run.results()


class _Run:
    """One ordered pass over ``paths``: a dispatcher thread feeds the workers and collects results, timeouts
    and crashes; the consumer takes results in order. Shared state is guarded by ``cond``."""

    def __init__(self, pool: DecodePool, paths: list[str], fn: Callable[..., Any], kwargs: dict[str, Any],
                 errors: dict[int, str], on_error: Callable[[int, str, VideoError, float], Any],
                 prefetch: int, timeout: float | None):
        self.pool, self.paths, self.fn, self.kwargs = pool, paths, fn, kwargs
        self.errors, self.on_error, self.prefetch, self.timeout = errors, on_error, prefetch, timeout
        self.cond = threading.Condition()
        self.done: dict[int, tuple[str, Any]] = {}  # index -> ("ok", value) | ("raise", exception)
        self.consumed = 0
        self.next_submit = 0
        self.stop = False
        self.fatal: BaseException | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full pipe: the dispatcher is awake already
            os.write(self._wake_w, b"x")

    def _fail(self, w: _Worker, error: VideoError) -> None:
        i = w.task
        elapsed = time.monotonic() - w.started
        w.task = None
        self._put(i, ("ok", self.on_error(i, self.paths[i], error, elapsed)))

    def _put(self, i: int, item: tuple[str, Any]) -> None:
        with self.cond:
            self.done[i] = item
            self.cond.notify_all()

    def _dispatch(self) -> None:
        from multiprocessing.connection import wait

        pool = self.pool
        pool._top_up()
        n = len(self.paths)
        while True:
            with self.cond:
                if self.stop:
                    return
                limit = min(n, self.consumed + self.prefetch)
            for w in list(pool._workers):  # hand files to idle workers
                while w.task is None and self.next_submit < limit:
                    i = self.next_submit
                    self.next_submit += 1
                    if i in self.errors:  # known before decoding (a missing path): no worker needed
                        self._put(i, ("ok", self.on_error(i, self.paths[i], VideoError(self.paths[i],
                                                                                        self.errors[i]), 0.0)))
                        continue
                    call = pickle.dumps((self.fn, i, self.paths[i], self.kwargs), protocol=5)  # fn: top-level
                    try:
                        w.conn.send((i, call))
                    except (BrokenPipeError, ConnectionResetError, OSError):  # died while idle
                        w.task, w.started = i, time.monotonic()
                        with contextlib.suppress(Exception):
                            w.proc.wait(timeout=1)
                        self._fail(w, DecoderCrashedError(self.paths[i], "decoder crashed "
                                                          f"({signal_description(w.exitcode)})"))
                        pool._replace(w)
                        break
                    w.task, w.started = i, time.monotonic()
            busy = [w for w in pool._workers if w.task is not None]
            if not busy:
                if self.next_submit >= n:
                    return  # everything is handed out and back
                wait([self._wake_r], timeout=1.0)  # waiting for the consumer to make room
                self._drain_wake()
                continue
            wait_for: float | None = None
            if self.timeout is not None:
                now = time.monotonic()
                wait_for = max(0.0, min(w.started + self.timeout - now for w in busy))
            objs: list[Any] = [self._wake_r]
            objs += [w.conn for w in busy]  # a worker that dies closes its end: readable (EOF)
            ready = wait(objs, timeout=wait_for)
            if self._wake_r in ready:
                self._drain_wake()
            for w in busy:
                if w.conn in ready:
                    self._collect(w)
                elif self.timeout is not None and time.monotonic() - w.started >= self.timeout:
                    if w.conn.poll(0):  # it finished just now
                        self._collect(w)
                        continue
                    with contextlib.suppress(Exception):
                        w.proc.kill()
                    self._fail(w, DecodeTimeoutError(self.paths[w.task], "timed out: decoding took longer "
                                                     f"than {self.timeout:g} s (--timeout)"))
                    pool._replace(w)

    def _collect(self, w: _Worker) -> None:
        """Read a finished worker's result; a worker that died gets its file a crash error and a successor."""
        i = w.task
        try:
            if not w.conn.poll(0):
                raise EOFError
            task, (kind, value) = _recv_result(w.conn)
        except (EOFError, OSError, pickle.UnpicklingError):
            with contextlib.suppress(Exception):
                w.proc.wait(timeout=5)
            code = w.exitcode
            self._fail(w, DecoderCrashedError(self.paths[i], f"decoder crashed ({signal_description(code)})"))
            self.pool._replace(w)
            return
        w.task = None
        if task != i:  # cannot happen: one task per worker
            raise RuntimeError(f"decode worker answered task {task}, expected {i}")
        if kind == "ok":
            self._put(i, ("ok", value))
        elif kind == "video_error":
            self._put(i, ("ok", self.on_error(i, self.paths[i], value, time.monotonic() - w.started)))
        else:
            self._put(i, ("raise", value))

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass

    def _thread_main(self) -> None:
        try:
            self._dispatch()
        except BaseException as e:  # a WorkerStartError, or a bug: hand it to the consumer
            with self.cond:
                self.fatal = e
                self.cond.notify_all()

    def results(self) -> Iterator[Any]:
        thread = threading.Thread(target=self._thread_main, name="tokshift-decode-dispatch", daemon=True)
        thread.start()
        try:
            for i in range(len(self.paths)):
                with self.cond:
                    while i not in self.done and self.fatal is None:
                        if not thread.is_alive() and i not in self.done:
                            break
                        self.cond.wait(0.5)
                    item = self.done.pop(i, None)
                    if item is None:
                        raise self.fatal or RuntimeError("the decode dispatcher stopped early")
                    self.consumed = i + 1
                self._wake()
                kind, value = item
                if kind == "raise":
                    raise value
                yield value
        finally:
            with self.cond:
                self.stop = True
            self._wake()
            thread.join(timeout=10)
            for w in list(self.pool._workers):  # stopped early: kill what is still decoding unread files
                if w.task is not None:
                    self.pool._discard(w)  # the next run on this pool starts a fresh one (_top_up)
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)


def _inline(paths: Sequence[str], fn: Callable[..., Any], kwargs: Mapping[str, Any], errors: Mapping[int, str],
            on_error: Callable[[int, str, VideoError, float], Any]) -> Iterator[Any]:
    for i, p in enumerate(paths):
        if i in errors:
            yield on_error(i, p, VideoError(p, errors[i]), 0.0)
            continue
        t0 = time.monotonic()
        try:
            yield fn(i, p, **kwargs)
        except VideoError as e:
            yield on_error(i, p, e, time.monotonic() - t0)


def ordered_decode(paths: Sequence[str], decode_fn: Callable[..., Any] = decode_clips, *, workers: int = 2,
                   prefetch: int | None = None, timeout: float | None = None,
                   kwargs: Mapping[str, Any] | None = None, errors: Mapping[int, str] | None = None,
                   on_error: Callable[[int, str, VideoError, float], Any] = decode_failure,
                   quiet: bool = True, fallback: bool = True) -> Iterator[Any]:
    """Decode ``paths`` in ``workers`` killable processes; yield one result per path, in input order.

    ``decode_fn(index, path, **kwargs)``: a picklable top-level function (it runs in a worker; default
    :func:`decode_clips`). ``prefetch``: how many files may be decoded ahead of the consumer (default
    ``2 * workers``). ``timeout``: seconds per file, then the worker is killed and the file fails with
    :class:`DecodeTimeoutError`. ``errors``: ``{index: reason}`` of inputs known to be bad (never sent to a
    worker). ``on_error(index, path, error, elapsed_s)`` builds the result of a failed file (default
    :func:`decode_failure`). ``workers <= 0`` and no timeout: decode inline, without isolation.
    ``quiet``: the workers' stderr goes to /dev/null (the decoders' own error lines). ``fallback``: when worker
    processes cannot be started at all, log one warning (logger ``tokshift_cli``) and decode inline instead of
    raising :class:`WorkerStartError`. The processes start when iteration starts and stop when it ends (or the
    iterator is closed).
    """
    kwargs, errors = dict(kwargs or {}), dict(errors or {})
    if workers <= 0 and timeout is None:
        yield from _inline(paths, decode_fn, kwargs, errors, on_error)
        return
    if not paths:
        return
    try:
        pool = DecodePool(max(1, min(workers, len(paths))), quiet=quiet)
    except WorkerStartError as e:
        if not fallback:
            raise
        # a sandbox without process creation, an interpreter this user cannot execute...: keep working
        logging.getLogger("tokshift_cli").warning(
            "warning: %s; decoding in the main process instead (no crash isolation, no --timeout)",
            str(e).split("; try --workers")[0])
        yield from _inline(paths, decode_fn, kwargs, errors, on_error)
        return
    with pool:
        yield from pool.ordered(paths, decode_fn, prefetch=prefetch or 2 * max(workers, 1), timeout=timeout,
                                kwargs=kwargs, errors=errors, on_error=on_error)
