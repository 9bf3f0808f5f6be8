"""The inference engine: decode ahead, batch views across videos, run the model, aggregate per video.

Data path for each video: ``video`` (decode only the sampled frames) -> ``sampling`` (dense clips; identical clips
are computed once and weighted by their multiplicity) -> ``transforms`` (resize once per frame, crops are slices)
-> model (views from several videos share one batch). Decoding runs ahead of the model through a bounded queue,
so the model rarely waits on a slow file and memory stays bounded. Results come back in input order; a video
that fails carries its error and never disturbs the others.

Where decoding runs (:func:`decode_videos`, the one place it is scheduled):

* CPU decoders (the default, and always for a CPU model): killable worker processes
  (:func:`tokshift_cli.video.workers.ordered_decode`): a decoder crash or a hang past ``timeout`` costs one file. The
  uint8 frames come back to this process, where :func:`finish_video` (the tensor half: resize, crops, normalise)
  runs on the model's device; for a CUDA model the frames go up through pinned memory with ``non_blocking=True``
  (:func:`tokshift_cli.video.staging.upload_frames`) and the tensor work is queued on a side CUDA stream
  (:class:`~tokshift_cli.video.staging.StreamStage`), so it overlaps the model.
* GPU decoders (NVDEC, when :func:`tokshift_cli.video.gpu.choose_decoder` picks the GPU: ``--decoder gpu``, or
  ``auto`` with a CUDA model and a usable GPU decoder): the frames land in CUDA memory, which cannot cross a
  process boundary, so :func:`prepare_video` runs in threads of this process (:func:`ordered_prefetch`), each on
  its own side stream; a thread past ``timeout`` is abandoned (Python threads cannot be killed: it is orphaned as
  a daemon thread and replaced). The same :func:`finish_video` does the tensor half.

Either way each :class:`PreparedVideo` carries a CUDA event (``ready``) that :func:`run_views` makes the model's
stream wait on (:func:`~tokshift_cli.video.staging.wait_ready`) before it uses the views; on a CPU it is None.

Batch invariance: ``run_views(..., pad_batches=True)`` sends every model call exactly ``batch_size`` views
(zero views pad the last one), so the matrix shapes the kernels see never depend on how videos happened to
fall into batches: a row's features are the same whether the run was resumed, sharded or uninterrupted.
"""

from __future__ import annotations

import contextlib
import os
import queue as _queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from .errors import DecodeTimeoutError, TokShiftError, UsageError
from .video.sampling import Views, check_sampling
from .video.transforms import preprocess
from .video.staging import StreamStage, upload_frames, wait_ready
from .video.gpu import choose_decoder
from .video.workers import DecodedVideo, decode_clips, ordered_decode

#: What the decode worker processes run for each file (a picklable top-level function). Tests swap it for a
#: stand-in (e.g. one that hangs on some files) with monkeypatch.
DECODE_FN: Callable[..., DecodedVideo] = decode_clips


@dataclass(frozen=True)
class ViewSpec:
    """What the model sees of each video: ``views.clips`` clips of ``frames`` frames ``stride`` apart placed by
    ``sampling`` (:func:`~tokshift_cli.video.sampling.clip_indices`) in video stream ``stream`` (None: the main
    one), each shown as ``views.crops`` crops of ``crop_size`` pixels normalised by ``mean``/``std``."""

    frames: int
    stride: int
    views: Views
    crop_size: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    sampling: str = "centred"
    stream: int | None = None

    @classmethod
    def for_model(cls, config: Any, views: Views | str = "1x1", *, sampling: str = "centred",
                  stream: int | None = None) -> "ViewSpec":
        """The spec a model's config asks for (frames, stride, crop size, mean/std) with these views."""
        return cls(int(config.num_frames), int(config.frame_stride), Views.parse(views), int(config.crop_size),
                   tuple(config.mean), tuple(config.std), check_sampling(sampling), stream)

    def decode_kwargs(self) -> dict[str, Any]:
        """The arguments of :func:`~tokshift_cli.video.workers.decode_clips` (the worker half)."""
        return dict(frames=self.frames, stride=self.stride, clips=self.views.clips, sampling=self.sampling,
                    stream=self.stream)


@dataclass
class PreparedVideo:
    """One video's views, ready for the model (or its error)."""

    index: int  #: position in the input list
    path: str
    error: str | None = None
    views: torch.Tensor | None = None  #: [U * crops, T, 3, S, S], U = unique temporal clips
    weights: torch.Tensor | None = None  #: [U * crops] multiplicity of each view (identical clips merged)
    clip_of_view: np.ndarray | None = None  #: [U * crops] index into `unique_indices`
    frame_indices: np.ndarray | None = None  #: [clips, T] 0-based, every temporal clip (duplicates included)
    unique_indices: np.ndarray | None = None  #: [U, T]
    inverse: np.ndarray | None = None  #: [clips] -> row of unique_indices
    timestamps: np.ndarray | None = None  #: [clips, T] seconds
    decoder: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  #: video_info: frames, rate, geometry, codec, warnings
    decode_s: float = 0.0
    ready: Any = None  #: CUDA event: the views were made on a side stream (StreamStage); None on a CPU


def _on_side_stream(device: torch.device | str, fn: Callable[[], PreparedVideo]) -> PreparedVideo:
    """``fn()`` with its GPU work queued on this thread's side stream; the result carries the event run_views
    waits on (a no-op on a CPU device)."""
    stage = StreamStage(device)
    with stage:
        out = fn()
    out.ready = stage.ready
    return out


def finish_video(d: DecodedVideo, spec: ViewSpec, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, index: int | None = None) -> PreparedVideo:
    """The tensor half of :func:`prepare_video`: a decoded video's uint8 frames -> normalised views on
    ``device`` (each needed frame resized once to the display geometry; crops are slices; clips gather their
    frames)."""
    t0 = time.perf_counter()
    crops = spec.views.crops
    out = PreparedVideo(index=d.index if index is None else index, path=d.path, error=d.error, decoder=d.decoder,
                        meta=d.meta)
    if d.error is None:
        try:
            x = preprocess(upload_frames(d.frames, device), spec.crop_size, crops, spec.mean, spec.std,
                           device=device, dtype=dtype, geometry=d.geometry)  # [crops, F, 3, S, S]
            pos = torch.from_numpy(np.searchsorted(d.needed, d.unique_indices)).to(x.device)  # [U, T] -> rows
            u, t = pos.shape
            v = x[:, pos.reshape(-1)].reshape(crops, u, t, *x.shape[2:])  # [crops, U, T, 3, S, S]
            out.views = v.transpose(0, 1).reshape(u * crops, t, *x.shape[2:]).contiguous()
            counts = np.bincount(d.inverse, minlength=u).astype(np.float32)
            out.weights = torch.from_numpy(np.repeat(counts, crops))
            out.clip_of_view = np.repeat(np.arange(u), crops)
            out.frame_indices, out.unique_indices, out.inverse = d.frame_indices, d.unique_indices, d.inverse
            out.timestamps = d.timestamps
        except (RuntimeError, ValueError, MemoryError) as e:  # last line of defence
            out.error, out.views = f"{type(e).__name__}: {e}", None
    out.decode_s = d.decode_s + (time.perf_counter() - t0)
    return out


def prepare_video(index: int, path: str, spec: ViewSpec, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, decoder: str = "auto") -> PreparedVideo:
    """Decode the sampled frames of one video and turn them into normalised views (never raises VideoError),
    in this thread, following the ``--decoder`` rule for ``device`` (NVDEC frames stay on the GPU). On a CUDA
    device the work is queued on this thread's side stream and ``ready`` is set (see :func:`run_views`).
    :func:`decode_videos` runs it in threads for GPU decoding, and the same two halves with the decode in
    killable worker processes otherwise."""
    def run() -> PreparedVideo:
        d = decode_clips(index, path, decoder=decoder, device=device, **spec.decode_kwargs())
        return finish_video(d, spec, device=device, dtype=dtype)

    return _on_side_stream(device, run)


def decode_videos(paths: Sequence[str], spec: ViewSpec, *, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, decoder: str = "auto", workers: int = 2,
                  timeout: float | None = None, errors: dict[int, str] | None = None,
                  indices: Sequence[int] | None = None, batch_size: int = 1) -> Iterator[PreparedVideo]:
    """:func:`prepare_video` over ``paths``, in input order, decoding ahead of the model.

    ``batch_size``: the views per model call; enough videos are decoded ahead to fill the next call while the
    current one runs (:func:`prefetch_depth`), so a batch never waits on decodes that could have overlapped.

    CPU decoders: in ``workers`` killable processes (:func:`tokshift_cli.video.workers.ordered_decode`: a decoder
    crash or a hang past ``timeout`` costs one file, never the run), each running :data:`DECODE_FN`
    (:func:`tokshift_cli.video.workers.decode_clips`); the tensor work (:func:`finish_video`) runs here, on the
    model's device (a side CUDA stream for a CUDA model). GPU decoders (:func:`tokshift_cli.video.gpu.choose_decoder`
    says "gpu" for ``decoder`` and ``device``): :func:`prepare_video` in ``workers`` threads of this process
    (CUDA frames cannot leave it), a thread past ``timeout`` abandoned. ``errors``: ``{position: reason}`` known
    before decoding. ``indices``: the ``PreparedVideo.index`` of each path (default: its position). Raises
    :class:`~tokshift_cli.video.staging.GpuUnavailableError` for ``decoder="gpu"`` without a usable GPU decoder."""
    if indices is not None and len(indices) != len(paths):
        raise ValueError("decode_videos: indices and paths differ in length")
    use, _ = choose_decoder(decoder, device)
    ahead = prefetch_depth(batch_size, spec.views, workers)
    errors = errors or {}

    def index_of(k: int) -> int:
        return k if indices is None else indices[k]

    if use == "gpu":
        def prep(k: int, path: str) -> PreparedVideo:
            if k in errors:
                return PreparedVideo(index=index_of(k), path=path, error=errors[k])
            return prepare_video(index_of(k), path, spec, device=device, dtype=dtype, decoder=decoder)

        yield from ordered_prefetch(prep, paths, workers=workers, prefetch=ahead, timeout=timeout,
                                    on_timeout=lambda k, p, dt: timed_out_video(index_of(k), p, dt))
        return
    stream = ordered_decode(paths, DECODE_FN, workers=workers, prefetch=ahead, timeout=timeout,
                            kwargs=dict(decoder=decoder, **spec.decode_kwargs()), errors=errors)
    for d in stream:
        yield _on_side_stream(device, lambda d=d: finish_video(d, spec, device=device, dtype=dtype,
                                                                index=index_of(d.index)))


def prefetch_depth(batch_size: int, views: Views, workers: int) -> int:
    """Videos to decode ahead of the model: the most one model call can take (``batch_size`` views, a video
    giving at least ``views.crops`` of them when all its clips coincide), plus one per worker so the next call's
    videos are decoding while this one runs; never fewer than ``2 * workers``. Bounded, so memory stays flat."""
    per_call = -(-max(1, batch_size) // max(1, views.crops))
    return max(2, 2 * workers, per_call + max(1, workers))


def default_batch_size(device: torch.device | str) -> int:
    """Views per model call when none is given: 2 on a CPU (larger batches are slower per clip there: the
    activations of one 8-frame ViT-B clip already exceed the caches; see README, Performance), 8 on a GPU."""
    return 2 if torch.device(device).type == "cpu" else 8


T_ = TypeVar("T_")


class _Task(Generic[T_]):
    """One call of the prefetch function, run by a worker thread."""

    __slots__ = ("args", "done", "lock", "started_at", "result", "exc", "orphaned")

    def __init__(self, args: tuple[Any, ...]):
        self.args = args
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.started_at: float | None = None
        self.result: T_ | None = None
        self.exc: BaseException | None = None
        self.orphaned = False


def _worker(fn: Callable[..., Any], tasks: "_queue.Queue[_Task[Any] | None]") -> None:
    while True:
        task = tasks.get()
        if task is None:
            return
        with task.lock:
            task.started_at = time.monotonic()
        try:
            task.result = fn(*task.args)
        except BaseException as e:  # handed to the consumer, which re-raises it in its own thread
            task.exc = e
        with task.lock:  # the consumer decides "done" or "orphaned" under the same lock: never both
            task.done.set()
            orphaned = task.orphaned
        if orphaned:  # the consumer gave up on this task and started a replacement worker: retire
            return


def ordered_prefetch(fn: Callable[[int, str], T_], paths: Sequence[str], *, workers: int, prefetch: int,
                     timeout: float | None = None,
                     on_timeout: Callable[[int, str, float], T_] | None = None) -> Iterator[T_]:
    """Run ``fn(i, paths[i])`` in worker threads, at most ``prefetch`` calls ahead, yielding in input order.

    ``timeout``: seconds one call may run (counted from when a worker starts it). A call that takes longer is
    abandoned: ``on_timeout(i, path, elapsed)`` is yielded in its place, its thread is orphaned (daemon threads
    never block the interpreter's exit) and a new worker replaces it, so a decoder that hangs costs one thread,
    never the run. :func:`decode_videos` uses it for GPU decoding (CUDA frames cannot leave this process); CPU
    decoding runs in killable processes (:func:`tokshift_cli.video.workers.ordered_decode`, the same contract).
    ``workers <= 0`` and no timeout: run inline, in order.
    """
    if workers <= 0 and timeout is None:
        for i, p in enumerate(paths):
            yield fn(i, p)
        return
    workers = max(workers, 1)
    if timeout is not None and on_timeout is None:
        raise ValueError("ordered_prefetch: a timeout needs on_timeout to build the result of a timed-out call")
    tasks: "_queue.Queue[_Task[T_] | None]" = _queue.Queue()
    live = 0

    def spawn() -> None:
        nonlocal live
        threading.Thread(target=_worker, args=(fn, tasks), daemon=True, name="tokshift-decode").start()
        live += 1

    pending: deque[_Task[T_]] = deque()
    it = iter(enumerate(paths))

    def submit() -> bool:
        nxt = next(it, None)
        if nxt is None:
            return False
        task: _Task[T_] = _Task(nxt)
        pending.append(task)
        tasks.put(task)
        return True

    try:
        for _ in range(min(workers, max(len(paths), 1))):
            spawn()
        while len(pending) < max(prefetch, 1) and submit():
            pass
        while pending:
            task = pending[0]
            result: Any = None
            timed_out = False
            while not task.done.is_set():
                if timeout is None:
                    task.done.wait()
                    break
                with task.lock:
                    started = task.started_at
                if started is None:  # queued behind other calls: its clock has not started yet
                    task.done.wait(min(timeout, 1.0))
                    continue
                remaining = started + timeout - time.monotonic()
                if remaining > 0:
                    task.done.wait(remaining)
                    continue
                with task.lock:
                    if not task.done.is_set():
                        task.orphaned = True
                        timed_out = True
                if timed_out:
                    result = on_timeout(task.args[0], task.args[1], time.monotonic() - started)
                    spawn()  # the stuck thread keeps its slot until it returns (maybe never): replace it
                break
            pending.popleft()
            if not timed_out:
                if task.exc is not None:
                    raise task.exc
                result = task.result
            submit()
            yield result
    finally:
        while True:  # stopped early (an error, or the consumer closed us): drop the calls nobody will read
            try:
                tasks.get_nowait()
            except _queue.Empty:
                break
        for _ in range(live):  # every worker that is not stuck picks one up and returns
            tasks.put(None)


@dataclass
class ViewOutputs:
    """Model outputs for all views of one video."""

    video: PreparedVideo
    logits: torch.Tensor | None = None  #: [V, classes] float32
    features: torch.Tensor | None = None  #: [V, T, C] float32 (per-frame final-norm [CLS])
    model_s: float = 0.0


def forward_views(model: torch.nn.Module, x: torch.Tensor, *, want_features: bool,
                  autocast_dtype: torch.dtype | None, want_logits: bool = True
                  ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One batch of views [B, T, 3, S, S] -> (logits [B, K] or None, per-frame features [B, T, C] or None)."""
    ctx = (torch.autocast(device_type=x.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with torch.inference_mode(), ctx:
        feats = model.forward_frame_features(x)  # [B, T, C]
        logits = model.forward_head_from_frame_features(feats) if want_logits else None  # [B, K]
    return (logits.float() if logits is not None else None), (feats.float() if want_features else None)


def run_views(model: torch.nn.Module, prepared: Iterable[PreparedVideo], *, batch_size: int,
              want_features: bool = False, want_logits: bool = True, pad_batches: bool = False,
              autocast_dtype: torch.dtype | None = None,
              on_done: Callable[[ViewOutputs], None] | None = None) -> Iterator[ViewOutputs]:
    """Batch the views of consecutive videos together; yield each video's outputs, in input order.

    ``pad_batches``: every model call gets exactly ``batch_size`` views (the last one is padded with zero
    views whose outputs are dropped), so each view's result cannot depend on which other views shared its batch
    (see the module docstring). Costs at most one partly wasted batch per run.
    """
    device = next(model.parameters()).device
    queue: deque[tuple[PreparedVideo, int]] = deque()  # (video, next view to send)
    open_: deque[ViewOutputs] = deque()  # videos whose views are (partly) in flight, in order
    by_index: dict[int, ViewOutputs] = {}
    collected: dict[int, list[tuple[torch.Tensor | None, torch.Tensor | None]]] = {}
    queued_views = 0

    def flush(force: bool) -> Iterator[ViewOutputs]:
        nonlocal queued_views
        while queued_views >= batch_size or (force and queued_views > 0):
            parts, owners = [], []
            room = batch_size
            while room and queue:
                vid, start = queue[0]
                n = min(room, vid.views.shape[0] - start)
                parts.append(vid.views[start:start + n])
                owners.append((vid.index, n))
                room -= n
                queued_views -= n
                if start + n == vid.views.shape[0]:
                    queue.popleft()
                else:
                    queue[0] = (vid, start + n)
            if pad_batches and room:
                parts.append(parts[0].new_zeros((room, *parts[0].shape[1:])))
            x = torch.cat(parts) if len(parts) > 1 else parts[0]
            t0 = time.perf_counter()
            logits, feats = forward_views(model, x.to(device, non_blocking=True), want_features=want_features,
                                          autocast_dtype=autocast_dtype, want_logits=want_logits)
            logits = logits.cpu() if logits is not None else None
            feats = feats.cpu() if feats is not None else None
            dt = time.perf_counter() - t0
            off = 0
            total = sum(n for _, n in owners)
            for vid_index, n in owners:
                collected.setdefault(vid_index, []).append(
                    (logits[off:off + n] if logits is not None else None,
                     feats[off:off + n] if feats is not None else None))
                by_index[vid_index].model_s += dt * n / total
                off += n
        yield from drain()

    def drain() -> Iterator[ViewOutputs]:
        while open_:
            o = open_[0]
            v = o.video
            if v.error is None:
                parts = collected.get(v.index, [])
                done = sum((p[0] if p[0] is not None else p[1]).shape[0] for p in parts)
                if done < v.views.shape[0]:
                    return
                collected.pop(v.index, None)
                o.logits = torch.cat([p[0] for p in parts]) if want_logits else None
                o.features = torch.cat([p[1] for p in parts]) if want_features else None
                v.views = None  # free the pixels as soon as the model is done with them
            open_.popleft()
            by_index.pop(v.index, None)
            if on_done is not None:
                on_done(o)
            yield o

    for vid in prepared:
        o = ViewOutputs(video=vid)
        open_.append(o)
        by_index[vid.index] = o
        if vid.error is None:
            wait_ready(vid.ready, vid.views)  # the model's stream waits (on the GPU) for the views; CPU: no-op
            queue.append((vid, 0))
            queued_views += vid.views.shape[0]
        yield from flush(force=False)
    yield from flush(force=True)


#: ``--aggregate`` rules: how the views of a video make its scores (the first is the default).
AGGREGATES = ("probs", "logits")


def aggregate_scores(out: ViewOutputs, rule: str = "probs") -> torch.Tensor:
    """Class probabilities ``[C]`` of a video from its views' logits (identical clips counted with their
    multiplicity). ``probs``: softmax per view, then the weighted mean; ``logits``: the weighted mean of the
    logits, then a softmax (the TokShift authors' test rule: they average logits over views)."""
    if rule not in AGGREGATES:
        raise UsageError(f"--aggregate {rule!r}: choose probs (mean of per-view probabilities) or logits (mean "
                         "of per-view logits, the authors' rule)")
    w = out.video.weights.to(torch.float32)
    logits = out.logits.float()
    if rule == "logits":
        return ((logits * w[:, None]).sum(0) / w.sum()).softmax(-1)
    return (logits.softmax(-1) * w[:, None]).sum(0) / w.sum()


def aggregate_probabilities(out: ViewOutputs) -> torch.Tensor:
    """Softmax per view, averaged over every view of the protocol (``aggregate_scores(out, "probs")``)."""
    return aggregate_scores(out, "probs")


def available_devices() -> list[str]:
    """The ``--device`` values this machine can run: cpu, each CUDA device, mps where PyTorch has it."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU. Anything but auto, cpu, cuda, cuda:N
    and mps, or a device this machine lacks, is a :class:`UsageError` naming ``--device`` and what is here."""
    text = str(device).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = ", ".join(["auto", *available_devices()])
    m = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", text)
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise UsageError(f"--device {device}: expected auto, cpu, cuda, cuda:N or mps (this machine has: {here})")
    dev = torch.device(text)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                         f"cuda={torch.version.cuda}); this machine has: {here}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s): {here}")
    if dev.type == "mps" and "mps" not in available_devices():
        raise UsageError(f"--device {device}: MPS (Apple GPU) is not available here; this machine has: {here}")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--dtype`` (None = plain float32)."""
    if dtype in ("float32", "fp32"):
        return None
    if dtype in ("bfloat16", "bf16"):
        return torch.bfloat16
    if dtype in ("float16", "fp16"):
        if device.type == "cpu":
            raise UsageError("--dtype float16 is for CUDA; on the CPU use bfloat16 or float32")
        return torch.float16
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else None
    raise UsageError(f"--dtype {dtype}: expected auto, float32, bfloat16 or float16")


def timed_out_video(index: int, path: str, elapsed: float) -> PreparedVideo:
    """The result recorded for a video whose decode exceeded the per-file time limit."""
    err = DecodeTimeoutError(path, f"timed out: decoding took longer than {elapsed:.1f} s (--timeout)")
    return PreparedVideo(index=index, path=path, error=err.reason, decode_s=elapsed)


@dataclass
class ClassifyOptions:
    views: Views = field(default_factory=lambda: Views(1, 1))
    top_k: int = 5
    batch_size: int | None = None  #: views per model call (None: :func:`default_batch_size` for the device)
    workers: int = 2  #: decoding worker processes ahead of the model (0: decode in this process)
    decoder: str = "auto"  #: auto | cpu | pyav | decord | gpu (the rule: video.gpu.choose_decoder)
    dtype: str = "float32"
    timeout: float | None = None  #: seconds one file may take to decode (None: no bound; the CLI's default: 300)
    sampling: str = "centred"  #: where clips sit: centred | authors (video.sampling)
    aggregate: str = "probs"  #: how views make a video's scores: probs | logits (:func:`aggregate_scores`)
    stream: int | None = None  #: the N-th video stream (None: the main one)
    save_views: str | os.PathLike | None = None  #: write every view the model gets as PNG files here

    def spec(self, config: Any) -> ViewSpec:
        return ViewSpec.for_model(config, self.views, sampling=self.sampling, stream=self.stream)

    def validate(self, device: torch.device | str | None = None) -> "ClassifyOptions":
        """Check every option before any work (a bad one is a :class:`~tokshift_cli.errors.UsageError`, exit 2):
        views, sampling, aggregate, dtype and decoder for ``device`` (``--decoder gpu`` without a GPU decoder)."""
        from .video.gpu import check_decoder_request

        self.views = Views.parse(self.views)
        self.sampling = check_sampling(self.sampling)
        if self.aggregate not in AGGREGATES:
            raise UsageError(f"--aggregate {self.aggregate!r}: choose probs (mean of per-view probabilities) or "
                             "logits (mean of per-view logits, the authors' rule)")
        if device is not None:
            resolve_dtype(self.dtype, torch.device(device))
        check_decoder_request(self.decoder, device)
        return self


def video_result(out: ViewOutputs, labels: Sequence[str], *, top_k: int, aggregate: str = "probs"
                 ) -> tuple[dict[str, Any], torch.Tensor | None]:
    """One video's entry of ``classify``'s results, and its class probabilities (None when it failed): the one
    place a video's scores are made, so ``evaluate`` reports exactly what ``classify`` does."""
    v = out.video
    r: dict[str, Any] = {"video": v.path, "top_k": [], "frame_indices": None, "decoder": v.decoder, "error": v.error}
    if v.error is not None:
        return r, None
    probs = aggregate_scores(out, aggregate)
    p, k = probs.topk(min(top_k, probs.numel()))
    r["top_k"] = [{"label": labels[int(j)], "index": int(j), "probability": float(q)}
                  for q, j in zip(p.tolist(), k.tolist())]
    r["frame_indices"] = v.frame_indices.tolist()
    # a clip that reads a frame more than once: the video is shorter than one clip, its frames repeat
    fi = np.asarray(v.frame_indices).reshape(len(v.frame_indices), -1)
    r["frames_repeat"] = bool(any(np.unique(row).size < row.size for row in fi))
    r["timestamps"] = np.round(v.timestamps, 4).tolist()
    r["video_info"] = v.meta
    r["timings"] = {"decode_s": round(v.decode_s, 4), "model_s": round(out.model_s, 4)}
    return r, probs


def score_videos(model: torch.nn.Module, paths: Sequence[str], options: ClassifyOptions, *,
                 errors: dict[int, str] | None = None, indices: Sequence[int] | None = None
                 ) -> Iterator[ViewOutputs]:
    """Every video's views through the model, in input order (:class:`ViewOutputs`, logits per view). Model calls
    are padded to exactly ``batch_size`` views, so a video's logits do not depend on which other videos shared
    its calls: ``classify`` of one video and ``evaluate`` of a set that holds it give the same bits."""
    device = next(model.parameters()).device
    autocast_dtype = resolve_dtype(options.dtype, device)
    batch_size = options.batch_size or default_batch_size(device)
    spec = options.spec(model.config)
    stream = decode_videos(paths, spec, device=device, decoder=options.decoder, workers=options.workers,
                           timeout=options.timeout, errors=errors or {}, indices=indices, batch_size=batch_size)
    if options.save_views is not None:
        stream = save_views_of(stream, options.save_views, spec, paths if indices is None else None)
    yield from run_views(model, stream, batch_size=batch_size, autocast_dtype=autocast_dtype, pad_batches=True)


def save_views_of(stream: Iterable[PreparedVideo], folder: str | os.PathLike, spec: ViewSpec,
                  paths: Sequence[str] | None = None) -> Iterator[PreparedVideo]:
    """Pass ``stream`` through, first writing every view of each video as PNG files:
    ``folder/<video stem>/clip<c>_crop<k>_frame<j>_idx<frame index>.png``, un-normalised, exactly the pixels the
    model gets after resize and crop (``<video stem>`` gets a short hash where two inputs share a stem)."""
    from PIL import Image

    from .outputs import unique_stems

    root = Path(folder)
    names: dict[int, str] = dict(enumerate(unique_stems(paths))) if paths is not None else {}
    mean = torch.tensor(spec.mean).view(1, 1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 1, 3, 1, 1)
    for v in stream:
        if v.error is None and v.views is not None:
            wait_ready(v.ready, v.views)
            pixels = ((v.views.float().cpu() * std + mean) * 255.0).round_().clamp_(0, 255).to(torch.uint8)
            d = root / names.get(v.index, unique_stems([v.path])[0])
            d.mkdir(parents=True, exist_ok=True)
            crops = spec.views.crops
            for c, u in enumerate(v.inverse.tolist()):
                for k in range(crops):
                    view = pixels[u * crops + k]  # [T, 3, S, S]
                    for j, fi in enumerate(v.frame_indices[c].tolist()):
                        Image.fromarray(view[j].permute(1, 2, 0).numpy()).save(
                            d / f"clip{c}_crop{k}_frame{j}_idx{fi}.png")
        yield v


def classify(model: torch.nn.Module, paths: Sequence[str], options: ClassifyOptions | None = None, *,
             errors: dict[int, str] | None = None,
             on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Classify videos with a loaded model; return one result dict per path, in order.

    ``errors`` maps input positions to an error found before decoding (e.g. a missing path); those entries are
    reported as failures without being opened. ``on_result`` is called as each result is ready (progress bars).
    """
    opt = (options or ClassifyOptions()).validate(next(model.parameters()).device)
    cfg = model.config
    top_k = max(1, min(opt.top_k, cfg.num_classes))
    results: list[dict[str, Any]] = []
    for out in score_videos(model, paths, opt, errors=errors):
        r, _ = video_result(out, cfg.labels, top_k=top_k, aggregate=opt.aggregate)
        results.append(r)
        if on_result is not None:
            on_result(r)
    return results


def classify_document(model: torch.nn.Module, options: ClassifyOptions, results: list[dict[str, Any]], *,
                      dtype: str, load_s: float, total_s: float) -> dict[str, Any]:
    """The ``tokshift classify --json`` document: the settings, the model, every result, the timings."""
    from . import __version__
    from .jobs import runtime_info
    from .models.weights import model_info_line

    cfg = model.config
    n_ok = sum(1 for r in results if not r.get("error"))  # the rate is of videos classified, never of failures
    return {
        "tool_version": __version__,
        "model": model_info_line(model.resolved),
        "views": str(options.views),
        "sampling": options.sampling,
        "aggregate": options.aggregate,
        "frames": cfg.num_frames,
        "stride": cfg.frame_stride,
        "img_size": cfg.img_size,
        "crop_size": cfg.crop_size,  # the old key, for one release
        "device": str(next(model.parameters()).device),
        "dtype": dtype,
        **runtime_info(model),
        "results": results,
        "timings": {"load_model_s": round(load_s, 3), "total_s": round(total_s, 3),
                    "videos_per_s": round(n_ok / total_s, 4) if total_s > 0 and n_ok else None},
    }
