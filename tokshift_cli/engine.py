"""The inference engine: decode ahead, batch views across videos, run the model, aggregate per video.

Data path for each video: ``video`` (decode only the sampled frames) -> ``sampling`` (dense clips; identical clips
are computed once and weighted by their multiplicity) -> ``transforms`` (resize once per frame, crops are slices)
-> model (views from several videos share one batch). Decoding runs in worker threads ahead of the model through
a bounded queue, so the model rarely waits on a slow file and memory stays bounded. Results come back in input
order; a video that fails carries its error and never disturbs the others.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from .errors import TokShiftError, VideoError
from .sampling import Views, clip_indices, unique_clips
from .transforms import preprocess
from .video import open_video


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
    meta: dict[str, Any] = field(default_factory=dict)  #: num_frames, fps, width, height, codec
    decode_s: float = 0.0


def prepare_video(index: int, path: str, *, frames: int, stride: int, views: Views, crop_size: int,
                  mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32, decoder: str = "auto") -> PreparedVideo:
    """Decode the sampled frames of one video and turn them into normalised views (never raises VideoError)."""
    t0 = time.perf_counter()
    out = PreparedVideo(index=index, path=path)
    try:
        with open_video(path, decoder=decoder) as video:
            idx = clip_indices(video.num_frames, frames, stride, views.clips)
            uniq, inverse = unique_clips(idx)
            needed = np.unique(uniq)
            raw = video.get_frames(needed.tolist())
            ts = np.asarray(video.timestamps(needed.tolist()), dtype=np.float64)
            out.decoder = video.decoder
            out.meta = {"num_frames": int(video.num_frames), "fps": float(video.fps),
                        "width": int(video.width), "height": int(video.height),
                        "codec": getattr(video, "codec", None)}
        # Resize every needed frame once; crops are slices of it; clips gather their frames.
        x = preprocess(torch.from_numpy(np.ascontiguousarray(raw)), crop_size, views.crops, mean, std,
                       device=device, dtype=dtype)  # [crops, F, 3, S, S]
        pos = torch.from_numpy(np.searchsorted(needed, uniq)).to(x.device)  # [U, T] -> rows of x
        u, t = pos.shape
        v = x[:, pos.reshape(-1)].reshape(views.crops, u, t, *x.shape[2:])  # [crops, U, T, 3, S, S]
        out.views = v.transpose(0, 1).reshape(u * views.crops, t, *x.shape[2:]).contiguous()
        counts = np.bincount(inverse, minlength=u).astype(np.float32)
        out.weights = torch.from_numpy(np.repeat(counts, views.crops))
        out.clip_of_view = np.repeat(np.arange(u), views.crops)
        out.frame_indices, out.unique_indices, out.inverse = idx, uniq, inverse
        out.timestamps = ts[np.searchsorted(needed, idx)]
    except VideoError as e:
        out.error = e.reason
    except TokShiftError as e:
        out.error = str(e)
    except (RuntimeError, ValueError, OSError, MemoryError) as e:  # last line of defence: one file, one error
        out.error = f"{type(e).__name__}: {e}"
    out.decode_s = time.perf_counter() - t0
    return out


def ordered_prefetch(fn: Callable[[int, str], PreparedVideo], paths: Sequence[str], *, workers: int,
                     prefetch: int) -> Iterator[PreparedVideo]:
    """Run ``fn`` over ``paths`` in worker threads, at most ``prefetch`` ahead, yielding in input order."""
    if workers <= 0:
        for i, p in enumerate(paths):
            yield fn(i, p)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokshift-decode") as pool:
        pending: deque[Future[PreparedVideo]] = deque()
        it = iter(enumerate(paths))
        for i, p in it:
            pending.append(pool.submit(fn, i, p))
            if len(pending) >= max(prefetch, 1):
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, *nxt))
            yield result


@dataclass
class ViewOutputs:
    """Model outputs for all views of one video."""

    video: PreparedVideo
    logits: torch.Tensor | None = None  #: [V, classes] float32
    features: torch.Tensor | None = None  #: [V, T, C] float32 (per-frame final-norm [CLS])
    model_s: float = 0.0


def forward_views(model: torch.nn.Module, x: torch.Tensor, *, want_features: bool,
                  autocast_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One batch of views [B, T, 3, S, S] -> (logits [B, K], per-frame features [B, T, C] or None)."""
    ctx = (torch.autocast(device_type=x.device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else _nullcontext())
    with torch.inference_mode(), ctx:
        feats = model.forward_frame_features(x)  # [B, T, C]
        logits = model.forward_head_from_frame_features(feats)  # [B, K]
    return logits.float(), (feats.float() if want_features else None)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def run_views(model: torch.nn.Module, prepared: Iterable[PreparedVideo], *, batch_size: int,
              want_features: bool = False, autocast_dtype: torch.dtype | None = None,
              on_done: Callable[[ViewOutputs], None] | None = None) -> Iterator[ViewOutputs]:
    """Batch the views of consecutive videos together; yield each video's outputs, in input order."""
    device = next(model.parameters()).device
    queue: deque[tuple[PreparedVideo, int]] = deque()  # (video, next view to send)
    open_: deque[ViewOutputs] = deque()  # videos whose views are (partly) in flight, in order
    collected: dict[int, list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
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
            x = torch.cat(parts) if len(parts) > 1 else parts[0]
            t0 = time.perf_counter()
            logits, feats = forward_views(model, x.to(device, non_blocking=True), want_features=want_features,
                                          autocast_dtype=autocast_dtype)
            dt = time.perf_counter() - t0
            logits, feats = logits.cpu(), (feats.cpu() if feats is not None else None)
            off = 0
            total = x.shape[0]
            for vid_index, n in owners:
                collected.setdefault(vid_index, []).append(
                    (logits[off:off + n], feats[off:off + n] if feats is not None else None))
                for o in open_:
                    if o.video.index == vid_index:
                        o.model_s += dt * n / total
                        break
                off += n
        yield from drain()

    def drain() -> Iterator[ViewOutputs]:
        while open_:
            o = open_[0]
            v = o.video
            if v.error is None:
                done = sum(p[0].shape[0] for p in collected.get(v.index, []))
                if done < v.views.shape[0]:
                    return
                parts = collected.pop(v.index)
                o.logits = torch.cat([p[0] for p in parts])
                o.features = torch.cat([p[1] for p in parts]) if want_features else None
                v.views = None  # free the pixels as soon as the model is done with them
            open_.popleft()
            if on_done is not None:
                on_done(o)
            yield o

    for vid in prepared:
        open_.append(ViewOutputs(video=vid))
        if vid.error is None:
            queue.append((vid, 0))
            queued_views += vid.views.shape[0]
        yield from flush(force=False)
    yield from flush(force=True)


def aggregate_probabilities(out: ViewOutputs) -> torch.Tensor:
    """Softmax per view, averaged over every view of the protocol (identical clips counted with multiplicity)."""
    probs = out.logits.float().softmax(-1)
    w = out.video.weights.to(probs.dtype)
    return (probs * w[:, None]).sum(0) / w.sum()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TokShiftError(f"--device {device}: CUDA is not available here (torch {torch.__version__}, "
                            f"cuda={torch.version.cuda}); use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--dtype`` (None = plain float32)."""
    if dtype in ("float32", "fp32"):
        return None
    if dtype in ("bfloat16", "bf16"):
        return torch.bfloat16
    if dtype in ("float16", "fp16"):
        if device.type == "cpu":
            raise TokShiftError("--dtype float16 is for CUDA; on the CPU use bfloat16 or float32")
        return torch.float16
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else None
    raise TokShiftError(f"--dtype {dtype}: expected auto, float32, bfloat16 or float16")


@dataclass
class ClassifyOptions:
    views: Views = field(default_factory=lambda: Views(1, 1))
    top_k: int = 5
    batch_size: int = 8
    workers: int = 2
    decoder: str = "auto"
    dtype: str = "float32"


def classify(model: torch.nn.Module, paths: Sequence[str], options: ClassifyOptions | None = None, *,
             errors: dict[int, str] | None = None,
             on_result: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Classify videos with a loaded model; return one result dict per path, in order.

    ``errors`` maps input positions to an error found before decoding (e.g. a missing path); those entries are
    reported as failures without being opened. ``on_result`` is called as each result is ready (progress bars).
    """
    opt = options or ClassifyOptions()
    cfg = model.config
    device = next(model.parameters()).device
    autocast_dtype = resolve_dtype(opt.dtype, device)
    errors = errors or {}
    labels = cfg.labels
    top_k = max(1, min(opt.top_k, cfg.num_classes))

    def prep(i: int, p: str) -> PreparedVideo:
        if i in errors:
            return PreparedVideo(index=i, path=p, error=errors[i])
        return prepare_video(i, p, frames=cfg.num_frames, stride=cfg.frame_stride, views=opt.views,
                             crop_size=cfg.crop_size, mean=cfg.mean, std=cfg.std,
                             device=device, decoder=opt.decoder)

    results: list[dict[str, Any]] = []
    stream = ordered_prefetch(prep, paths, workers=opt.workers, prefetch=max(2, 2 * opt.workers))
    for out in run_views(model, stream, batch_size=opt.batch_size, autocast_dtype=autocast_dtype):
        v = out.video
        r: dict[str, Any] = {"video": v.path, "top_k": [], "frame_indices": None, "decoder": v.decoder,
                             "error": v.error}
        if v.error is None:
            probs = aggregate_probabilities(out)
            p, k = probs.topk(top_k)
            r["top_k"] = [{"label": labels[int(j)], "index": int(j), "probability": float(q)}
                          for q, j in zip(p.tolist(), k.tolist())]
            r["frame_indices"] = v.frame_indices.tolist()
            r["timestamps"] = np.round(v.timestamps, 4).tolist()
            r["video_info"] = v.meta
            r["timings"] = {"decode_s": round(v.decode_s, 4), "model_s": round(out.model_s, 4)}
        results.append(r)
        if on_result is not None:
            on_result(r)
    return results
