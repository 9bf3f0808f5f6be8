"""Actions in a live stream with bounded latency: a decision every hop on the newest complete window.

::

    from tokshift_cli import load_model
    from tokshift_cli.live import LiveOptions, run_live
    stats = run_live(load_model("tokshift-b16-8x224"), "rtsp://cam/stream", LiveOptions(hop="1s", duration=60),
                     on_event=print)     # {"event": "decision", "top_k": [...], "latency_s": 0.41, ...}

How a decision is placed (docs/live.md#the-decision-rule):

* the decode process (:class:`~tokshift_cli.video.live_source.LiveReader`) fills a ring with the last frames;
  a window is the model's ``T`` frames ``stride`` apart (8 x 32 for the authors' models, the stride they were
  trained with; ``stride`` smaller reacts faster but shows the model other motion than it learnt) ending at the
  newest frame, by frame number within one connection, as timeline windows are;
* decisions are due at hop marks in stream time (every ``hop`` seconds, or ``"30f"`` frames, from the first
  complete window of a connection); a decision takes the window ending at the newest frame at that moment;
* inference never queues behind the stream: when the model took longer than a hop, the marks that passed meanwhile
  are not served late: they are counted (``skipped``) and the newest complete window is classified. So the
  latency (newest frame decoded -> decision made) stays below model time + one hop, however slow the model;
* ``on_change``: only label changes, after a causal moving average over ``smooth`` decisions (timeline's
  ``smooth`` is centred: it can look ahead, live cannot) and ``threshold`` (below it the label is ``null``,
  ``"uncertain": true``).

The network call is one function, :func:`classify_window`; ``--runtime`` hands it a
:class:`~tokshift_cli.runtimes.base.RuntimeModel` instead of the torch model (the same interface).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

__all__ = ["LiveOptions", "LiveStats", "run_live", "classify_window", "STOP_REASONS"]

#: Why a run stops: the ``reason`` of the final ``stop`` event.
STOP_REASONS = ("duration", "interrupted", "source ended", "stopped")
_KEEP_LATENCIES = 100_000  # a bounded record for the percentiles (about 28 h at one decision a second)


@dataclass
class LiveOptions:
    """How ``tokshift live`` reads and decides."""

    hop: str | float = 1.0  #: seconds between decisions ("1", "0.5s") or frames ("30f")
    stride: int | None = None  #: frames between a window's frames (None: the model's, as trained)
    top_k: int = 3
    labels: str | None = None  #: restrict top-k (and --on-change) to these classes
    on_change: bool = False  #: emit label changes only
    smooth: int = 1  #: causal moving average over this many decisions (with on_change)
    threshold: float = 0.0  #: with on_change: a smoothed top-1 below this is "uncertain"
    duration: float | None = None  #: seconds of wall time after the first connection, then stop
    reconnect: bool | None = None  #: None: on for network sources, off for cameras and files
    realtime: bool = False  #: a file paced at its own timestamps
    transport: str = "tcp"  #: rtsp lower transport
    dtype: str = "float32"
    timeout: float | None = 10.0  #: seconds to open the source, and to wait for its next packet (None: no limit)
    save_views: Path | None = None  #: PNGs of every decision's frames, as the model gets them (before normalising)

    def validate(self) -> None:
        from ..timeline import parse_hop

        parse_hop(self.hop)
        if self.stride is not None and (not isinstance(self.stride, int) or self.stride < 1):
            raise UsageError(f"--stride {self.stride!r}: a whole number of frames >= 1")
        for name in ("top_k", "smooth"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} {v!r}: must be a whole number >= 1")
        if not 0 <= self.threshold <= 1:
            raise UsageError(f"--threshold {self.threshold!r}: a probability, from 0 to 1")
        if self.duration is not None and not self.duration > 0:
            raise UsageError(f"--duration {self.duration!r}: must be more than 0 seconds")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--timeout {self.timeout!r}: must be more than 0 seconds (0 on the command line: "
                             "no limit)")
        if self.transport not in ("tcp", "udp"):
            raise UsageError(f"--transport {self.transport!r}: choose tcp or udp")


@dataclass
class LiveStats:
    """What a run did so far (updated as it runs: the CLI's panel reads it)."""

    decisions: int = 0
    skipped: int = 0  #: hop marks that passed while the model was busy (stale windows never classified)
    gaps: int = 0
    frames_in: int = 0
    connections: int = 0
    started: float = field(default_factory=time.monotonic)
    latencies: deque = field(default_factory=lambda: deque(maxlen=_KEEP_LATENCIES))
    model_times: deque = field(default_factory=lambda: deque(maxlen=_KEEP_LATENCIES))
    stride: int = 0
    frames: int = 0
    reason: str = ""

    def percentile(self, q: float, values: str = "latencies") -> float | None:
        v = getattr(self, values)
        return float(np.percentile(np.asarray(v), q)) if v else None

    def summary(self) -> dict[str, Any]:
        wall = max(time.monotonic() - self.started, 1e-9)
        r = (lambda x: None if x is None else round(x, 4))
        return {"reason": self.reason, "decisions": self.decisions, "skipped": self.skipped, "gaps": self.gaps,
                "frames_in": self.frames_in, "wall_s": round(wall, 3),
                "decisions_per_s": round(self.decisions / wall, 4), "fps_in": round(self.frames_in / wall, 3),
                "latency_p50_s": r(self.percentile(50)), "latency_p95_s": r(self.percentile(95)),
                "model_p50_s": r(self.percentile(50, "model_times")),
                "model_p95_s": r(self.percentile(95, "model_times"))}


def classify_window(model: "torch.nn.Module", frames: np.ndarray, *, autocast_dtype: Any = None) -> np.ndarray:
    """One window's uint8 frames ``[T, H, W, 3]`` -> class probabilities ``[C]`` (float32): the model's centre
    crop and normalisation (:func:`~tokshift_cli.video.transforms.preprocess`), one forward pass. The one place the
    network is called."""
    from ..engine import forward_views
    from ..video.transforms import preprocess

    cfg = model.config
    device = next(model.parameters()).device
    x = preprocess(frames, int(cfg.crop_size), 1, tuple(cfg.mean), tuple(cfg.std), device=device)  # [1, T, 3, S, S]
    logits, _ = forward_views(model, x, want_features=False, autocast_dtype=autocast_dtype)
    return logits.float().softmax(-1)[0].cpu().numpy()


def _save_views(folder: Path, decision: int, frames: np.ndarray, numbers: np.ndarray, crop: int) -> None:
    """``folder/decision<d>_frame<j>_n<frame number>.png``: the centre crop of each frame, as the model gets it."""
    from PIL import Image

    from ..video.transforms import crop_offsets

    folder.mkdir(parents=True, exist_ok=True)
    top, left = crop_offsets(frames.shape[1], frames.shape[2], crop, 1)[0]
    for j, (f, n) in enumerate(zip(frames, numbers.tolist())):
        Image.fromarray(f[top:top + crop, left:left + crop]).save(folder / f"decision{decision:06d}_frame{j}_n{n}.png")


class _Changes:
    """``on_change``: the smoothed label, and whether it changed with this decision."""

    def __init__(self, smooth: int, threshold: float):
        self.recent: deque[np.ndarray] = deque(maxlen=smooth)
        self.threshold = threshold
        self.current: int | None = -1  # -1: nothing said yet; None: uncertain

    def reset(self) -> None:
        self.recent.clear()

    def update(self, probs: np.ndarray, classes: np.ndarray) -> tuple[bool, int | None, float]:
        self.recent.append(probs[classes])
        avg = np.mean(np.stack(self.recent), axis=0)
        j = int(np.argmax(avg))
        p = float(avg[j])
        label = int(classes[j]) if p >= self.threshold else None
        changed = label != self.current
        self.current = label
        return changed, label, p


def run_live(model: "torch.nn.Module", source: str, options: LiveOptions | None = None, *,
             on_event: Callable[[dict[str, Any]], None], stats: LiveStats | None = None,
             stop: threading.Event | None = None) -> LiveStats:
    """Decide on ``source`` until ``duration`` passes, ``stop`` is set, the source ends, or Ctrl-C; every event
    (``connected``, ``decision`` or ``change``, ``gap``, ``end``, and a final ``stop`` with the summary) goes to
    ``on_event`` as it happens. An unreachable source raises :class:`~tokshift_cli.errors.VideoError` (one line)."""
    from ..engine import resolve_dtype
    from ..jobs import runtime_info
    from ..timeline import parse_hop, resolve_labels
    from ..video.live_source import LiveReader, parse_source

    opt = options or LiveOptions()
    opt.validate()
    cfg = model.config
    labels = list(cfg.labels)
    classes = resolve_labels(opt.labels, labels)
    frames_t = int(cfg.num_frames)
    stride = int(opt.stride or cfg.frame_stride)
    hop_frames, hop_s = parse_hop(opt.hop)
    device = next(model.parameters()).device
    autocast = resolve_dtype(opt.dtype, device)
    src = parse_source(source, realtime=opt.realtime, transport=opt.transport)
    reconnect = src.network if opt.reconnect is None else bool(opt.reconnect)
    span = (frames_t - 1) * stride + 1
    st = stats or LiveStats()
    st.stride, st.frames = stride, frames_t
    reader = LiveReader(src, short_side=int(cfg.crop_size), capacity=span + 16, reconnect=reconnect,
                        open_timeout=opt.timeout, read_timeout=opt.timeout)
    reader.start()  # VideoError: one line
    st.started = time.monotonic()
    changes = _Changes(opt.smooth, opt.threshold)
    ring = reader.ring
    seg, mark0, next_k = -2, 0.0, 0
    closed: set[int] = set()  # connections that ended (gap or end events)
    st.reason = "stopped"

    emit = on_event
    try:
        while True:
            _pass_events(reader, st, closed, emit)
            st.frames_in = ring.received
            if stop is not None and stop.is_set():
                st.reason = "stopped"
                break
            if opt.duration is not None and time.monotonic() - st.started >= opt.duration:
                st.reason = "duration"
                break
            info = ring.newest_info()
            if info is None or info[0] < span - 1:  # no window yet in this connection
                if reader.finished.is_set() and not reader.events_pending():
                    st.reason = "source ended"
                    break
                ring.wait(0.1)
                continue
            n, pts, cap, s = info
            if s != seg:  # a new connection: hop marks start at its first complete window
                seg, next_k, mark0 = s, 0, (n if hop_frames else pts)
                changes.reset()
            k_now = (n - mark0) // hop_frames if hop_frames else int(math.floor((pts - mark0) / hop_s + 1e-9))
            if k_now < next_k:
                if reader.finished.is_set() and not reader.events_pending():
                    st.reason = "source ended"
                    break
                ring.wait(0.1)
                continue
            if s in closed and time.monotonic() - cap > (hop_s or 1.0):
                # the connection ended (gap or end) while the model was busy: its last window is stale, not a
                # decision about now; counted as skipped
                st.skipped += int(k_now - next_k + 1)
                next_k = k_now + 1
                if reader.finished.is_set():
                    st.reason = "source ended"
                    break
                continue
            w = ring.window(frames_t, stride, end=n)
            if w is None:
                continue
            skipped = int(k_now - next_k)
            st.skipped += skipped
            next_k = k_now + 1
            ev, probs = _decide(model, w, opt, st, classes=classes, labels=labels, autocast=autocast, span=span,
                                skipped=skipped)
            if opt.on_change and not _as_change(ev, changes, probs, classes, labels):
                continue
            emit(ev)
    except KeyboardInterrupt:
        st.reason = "interrupted"
        raise
    finally:
        reader.close()
        for ev in reader.events():
            if ev["event"] == "gap":
                st.gaps += 1
            emit(ev)
        st.frames_in = ring.received
        emit({"event": "stop", "time": time.time(), **st.summary(), **runtime_info(model)})
    return st


def _pass_events(reader: Any, st: LiveStats, closed: set[int], emit: Callable[[dict[str, Any]], None]) -> None:
    """The reader's pending events (connected, gap, end) counted in ``st``, ended connections noted in
    ``closed``, each handed to ``emit``."""
    for ev in reader.events():
        if ev["event"] == "connected":
            st.connections += 1
        elif ev["event"] == "gap":
            st.gaps += 1
        if ev["event"] in ("gap", "end"):
            closed.add(ev.get("segment"))
        emit(ev)


def _decide(model: "torch.nn.Module", w: Any, opt: LiveOptions, st: LiveStats, *, classes: np.ndarray,
            labels: list[str], autocast: Any, span: int, skipped: int) -> tuple[dict[str, Any], np.ndarray]:
    """Classify the window ``w``: the ``decision`` event and the class probabilities (counted in ``st``, the
    views saved with ``--save-views``)."""
    from ..timeline import top_k_of

    cfg = model.config
    t0 = time.monotonic()
    probs = classify_window(model, w.frames, autocast_dtype=autocast)
    done = time.monotonic()
    latency = done - float(w.capture[-1])
    st.decisions += 1
    st.latencies.append(latency)
    st.model_times.append(done - t0)
    if opt.save_views is not None:
        _save_views(Path(opt.save_views), st.decisions - 1, w.frames, w.numbers, int(cfg.crop_size))
    dur = (float(w.pts[-1] - w.pts[0]) / max(span - 1, 1)) if span > 1 else 0.0
    ev: dict[str, Any] = {
        "event": "decision", "time": time.time(), "segment": int(w.segment),
        "start_s": round(float(w.pts[0]), 6), "end_s": round(float(w.pts[-1]) + dur, 6),
        "frame_indices": w.numbers.tolist(), "timestamps": [round(float(t), 6) for t in w.pts],
        "top_k": top_k_of(probs, classes, labels, opt.top_k),
        "latency_s": round(latency, 4), "model_s": round(done - t0, 4), "skipped": skipped,
        "skipped_total": st.skipped,
    }
    return ev, probs


def _as_change(ev: dict[str, Any], changes: _Changes, probs: np.ndarray, classes: np.ndarray,
               labels: list[str]) -> bool:
    """``--on-change``: ``ev`` made a ``change`` event when the smoothed label changed (True), else False."""
    changed, label, p = changes.update(probs, classes)
    if not changed:
        return False
    ev["event"] = "change"
    ev["label"] = labels[label] if label is not None else None
    ev["index"] = label
    ev["probability"] = round(p, 6)
    ev["uncertain"] = label is None
    return True
