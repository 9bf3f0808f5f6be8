"""Frames onto the model's device: pinned-memory uploads and side CUDA streams (no-ops on a CPU).

Both decode routes use this: frames decoded on the CPU (worker processes) are uploaded here for a CUDA model, and
the GPU decoder's threads queue their work on a side stream with :class:`StreamStage`. See docs/gpu.md.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from ..errors import GpuUnavailableError  # noqa: F401 (raised here; importable from here as before)

__all__ = ["GpuUnavailableError", "upload_frames", "StreamStage", "wait_ready", "CudaPrefetcher", "cuda_reason",
           "cuda_device"]


def cuda_device(device: torch.device | str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def cuda_reason(device: torch.device | str) -> str | None:
    """Why frames cannot be put on ``device`` by a GPU decoder (None: they can)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return (f"the model runs on the {dev.type.upper() if dev.type == 'cpu' else dev.type} and GPU decoding "
                "delivers frames in CUDA memory (use --device cuda)")
    if not torch.backends.cuda.is_built():
        return f"this torch ({torch.__version__}) was built without CUDA"
    if not torch.cuda.is_available():
        return (f"CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}, sees no "
                "CUDA device or driver)")
    n = torch.cuda.device_count()
    if dev.index is not None and dev.index >= n:
        return f"{dev} does not exist (this machine has {n} CUDA device{'s' if n != 1 else ''})"
    return None


# --- host -> device -----------------------------------------------------------------------------------------


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def upload_frames(frames: np.ndarray | torch.Tensor, device: torch.device | str, *,
                  non_blocking: bool = True) -> torch.Tensor:
    """uint8 frames (numpy or a CPU tensor) -> a tensor on ``device``; a tensor already there is returned as is.

    CPU ``device``: ``torch.from_numpy`` (no copy for a contiguous array). CUDA: the frames are copied into
    pinned memory (torch's caching host allocator, reused across calls), then to the device with
    ``non_blocking=True`` on the **current** stream: the call returns before the copy ends, and work queued on
    that stream later sees the frames. Use it inside :class:`StreamStage` to keep the copy off the model's
    stream. uint8 goes over the bus (4x less than float32); resize and normalise on the GPU afterwards
    (:func:`~.transforms.preprocess`). Raises :class:`GpuUnavailableError` for a CUDA device without CUDA."""
    dev = torch.device(device)
    if isinstance(frames, torch.Tensor):
        t = frames
    else:
        arr = np.asarray(frames)
        if arr.dtype != np.uint8:
            raise TypeError(f"frames must be uint8, got {arr.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8, got {t.dtype}")
    if _same_device(t.device, dev):
        return t
    if dev.type != "cuda":
        return t.to(dev)
    why = cuda_reason(dev)
    if why is not None:
        raise GpuUnavailableError(why)
    if t.device.type == "cuda":  # another GPU
        return t.to(dev, non_blocking=non_blocking)
    if non_blocking and not t.is_pinned():
        staged = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        staged.copy_(t)
        t = staged
    return t.to(dev, non_blocking=non_blocking)


_side = threading.local()


def _side_stream(dev: torch.device) -> "torch.cuda.Stream":
    """This thread's side stream on ``dev`` (one per worker thread and device, kept for the thread's life)."""
    streams = getattr(_side, "streams", None)
    if streams is None:
        streams = _side.streams = {}
    s = streams.get(dev)
    if s is None:
        s = streams[dev] = torch.cuda.Stream(dev)
    return s


class StreamStage:
    """Queue one video's GPU work (upload, GPU decode, preprocess) on this thread's side CUDA stream, so that it
    overlaps the model running on the consumer's stream. After the ``with`` block, :attr:`ready` is a CUDA event
    the consumer waits on with :func:`wait_ready` before reading the results. On a CPU device: a no-op,
    ``ready`` stays None.

    ::

        stage = StreamStage(device)
        with stage:                                       # in the decode worker thread
            views = preprocess(upload_frames(raw, device), ...)
        item.views, item.ready = views, stage.ready
        ...
        wait_ready(item.ready, item.views)                # in the consumer thread, before using item.views
    """

    def __init__(self, device: torch.device | str):
        dev = cuda_device(device)
        self.stream = _side_stream(dev) if dev.type == "cuda" else None
        self.ready: "torch.cuda.Event | None" = None
        self._ctx: Any = None

    def __enter__(self) -> "StreamStage":
        if self.stream is not None:
            self._ctx = torch.cuda.stream(self.stream)
            self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.stream is not None:
            self._ctx.__exit__(*exc)
            self.ready = torch.cuda.Event()
            self.ready.record(self.stream)


def wait_ready(ready: "torch.cuda.Event | None", *tensors: torch.Tensor | None) -> None:
    """In the consuming thread: make its current stream wait (on the GPU, the CPU does not block) for the work
    :class:`StreamStage` recorded, and tell the caching allocator that ``tensors`` (made on the side stream) are
    now used on this stream too (``Tensor.record_stream``), so their memory is not reused while it still reads
    them. ``ready=None`` (a CPU stage): nothing to do."""
    if ready is None:
        return
    dev = next((t.device for t in tensors if isinstance(t, torch.Tensor) and t.is_cuda), None)
    stream = torch.cuda.current_stream(dev)
    stream.wait_event(ready)
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_cuda:
            t.record_stream(stream)


T = TypeVar("T")
U = TypeVar("U")


def _cuda_tensors(obj: Any) -> list[torch.Tensor]:
    """The CUDA tensors an item holds (itself, a tuple/list of them, or its attributes, e.g. a dataclass)."""
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_cuda else []
    if isinstance(obj, (list, tuple)):
        return [x for x in obj if isinstance(x, torch.Tensor) and x.is_cuda]
    values = vars(obj).values() if hasattr(obj, "__dict__") else ()
    return [v for v in values if isinstance(v, torch.Tensor) and v.is_cuda]


class CudaPrefetcher(Generic[T, U]):
    """``fn(item)`` for each item, run on a side CUDA stream ``depth`` items ahead of the consumer.

    For frames decoded on the CPU (in worker processes: :mod:`tokshift_cli.video.workers`) when the model runs on
    CUDA: ``fn`` uploads them (:func:`upload_frames`) and preprocesses them on the GPU. Its kernels are queued on
    the side stream before the consumer queues the model for the previous item on its own stream, so the GPU
    runs both at once. Each result is handed over with :func:`wait_ready` (the consumer's stream waits for it on
    the GPU; its CUDA tensors are marked as used there) before it is yielded. Order is kept. On a CPU device it
    is a plain ``map`` (one item ahead).

    ::

        for prepared in CudaPrefetcher(ordered_decode(paths, ...), to_views, device):
            ...                                  # prepared.views is ready on this thread's current stream
    """

    def __init__(self, items: Iterable[T], fn: Callable[[T], U], device: torch.device | str, *, depth: int = 1):
        self.items, self.fn, self.device, self.depth = items, fn, torch.device(device), max(0, int(depth))

    def __iter__(self) -> Iterator[U]:
        pending: deque[tuple[U, Any]] = deque()
        for item in self.items:
            stage = StreamStage(self.device)
            with stage:
                out = self.fn(item)
            pending.append((out, stage.ready))
            while len(pending) > self.depth:
                yield self._hand_over(*pending.popleft())
        while pending:
            yield self._hand_over(*pending.popleft())

    @staticmethod
    def _hand_over(out: U, ready: Any) -> U:
        wait_ready(ready, *_cuda_tensors(out))
        return out
