"""What happens when in a long video: model windows every hop, their labels, segments, and the files that show them.

::

    from tokshift_cli import load_model
    from tokshift_cli.timeline import TimelineOptions, timeline
    res = timeline(load_model("tokshift-b16-8x224"), ["match.mp4"], TimelineOptions(hop="4s", smooth=3),
                   out="match.timeline.json", plot="match.png")
    res.docs[0]["segments"]       # [{"start_s", "end_s", "label", "index", "probability", "windows", "uncertain"}]

Definitions (docs/timeline.md has the pictures):

* **Window**: one model clip, the model's ``T`` frames ``stride`` apart (8 x 32 frames: ~8.5 s at 30 fps), placed
  every ``hop`` (default: half a window's span, 128 frames for 8x32; ``"4.5"`` or ``"4.5s"`` seconds placed by
  the frames' timestamps, ``"100f"`` frames); the last window ends at the file's last frame. ``start_s`` is its
  first frame's presentation time, ``end_s`` its last frame's time plus that frame's duration (to the next
  frame), both from frame 0, so variable frame rates are exact. Centre crop (``1x1``).
* **Segments**: time order, never overlapping, covering the first window's start to the last window's end. Each
  window owns the time nearer its centre than its neighbours' (half way between centres); consecutive windows
  with the same top-1 (after an optional moving average of the probabilities over ``smooth`` windows) form a
  segment with the mean probability of its label (raw, over its windows). Shorter than ``min_segment`` seconds
  or below ``threshold``: ``"uncertain": true``. ``labels`` restricts top-k and segments to those classes
  (probabilities stay the model's, not renormalised).

Cost: a file is decoded once, in order, in a killable worker process (:mod:`tokshift_cli.video.stream`), in
chunks of a few windows (bounded memory whatever the length); each chunk's frames are resized once
(:func:`tokshift_cli.engine.finish_video`) and windows go through the model in padded batches
(:func:`tokshift_cli.engine.run_views`), so a window's probabilities never depend on batching.
Resume (:mod:`tokshift_cli.jobs`): a killed run continues from its last journalled window with ``resume=True``
and writes byte-identical outputs (docs/timeline.md, Resume).
"""

from __future__ import annotations

import contextlib
import csv as _csv
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .. import __version__
from ..errors import OutputExistsError, UsageError, VideoError
from ..jobs import JobFiles, JournalWriter, Shard, file_identity, inputs_hash, iter_records, model_info, preflight, \
    remove_parts, weights_hash
from ..outputs import atomic_open, atomic_write_text, display_path, to_json, unique_stems
from .render import VideoTimeline, format_time, smooth_windows

if TYPE_CHECKING:
    import torch

__all__ = ["TimelineOptions", "TimelineResult", "timeline", "parse_hop", "resolve_labels", "make_segments",
           "window_edges", "smooth_windows", "top_k_of", "format_time", "VideoTimeline", "FORMAT"]

FORMAT = "tokshift-timeline"
FORMAT_VERSION = 1
#: Bytes of decoded + resized frames one chunk of windows may hold (chunks are also at most _MAX_CHUNK windows).
_CHUNK_BYTES = 64 << 20
_MAX_CHUNK = 8
_log = logging.getLogger("tokshift_cli")


# --- options -------------------------------------------------------------------------------------------------


def parse_hop(text: str | float | int | None) -> tuple[int | None, float | None]:
    """``--hop``: ``(frames, None)`` for ``"128f"``, ``(None, seconds)`` for ``"4.5"`` / ``"4.5s"``, ``(None,
    None)`` for None (the default: half a window's span)."""
    if text is None:
        return None, None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), "s"
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(f|s)?\s*", str(text), re.IGNORECASE)
        if not m:
            raise UsageError(f"--hop {text!r}: give seconds (4.5 or 4.5s) or frames (128f)")
        value, unit = float(m.group(1)), (m.group(2) or "s").lower()
    if unit == "f":
        if value != int(value) or value < 1:
            raise UsageError(f"--hop {text!r}: a number of frames must be a whole number >= 1 (e.g. 128f)")
        return int(value), None
    if not value > 0:
        raise UsageError(f"--hop {text!r}: must be more than 0 seconds")
    return None, value


def resolve_labels(names: Sequence[str] | str | None, labels: Sequence[str]) -> np.ndarray:
    """Class indices of ``names`` (``--labels a,b,c``: names as the model spells them, any case, or class
    indices); every class for None. A UsageError names an unknown label and the nearest ones."""
    if names is None:
        return np.arange(len(labels), dtype=np.int64)
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise UsageError("--labels: give one or more class names, separated by commas")
    by_name = {lab.lower(): i for i, lab in enumerate(labels)}
    out: list[int] = []
    for n in names:
        if n.lower() in by_name:
            i = by_name[n.lower()]
        elif n.isdigit() and int(n) < len(labels):
            i = int(n)
        else:
            import difflib

            near = difflib.get_close_matches(n.lower(), list(by_name), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(labels[by_name[x]]) for x in near)}?" if near else \
                " (`tokshift models --labels` lists them)"
            raise UsageError(f"--labels: the model has no class {n!r}{hint}")
        if i not in out:
            out.append(i)
    return np.asarray(out, dtype=np.int64)


@dataclass
class TimelineOptions:
    """How windows are placed and read. Everything that changes an output is in the resume fingerprint."""

    hop: str | float | None = None  #: seconds ("4.5", "4.5s") or frames ("128f"); None: half a window's span
    top_k: int = 5  #: labels kept per window (5, as classify)
    smooth: int = 1  #: moving average of the probabilities over this many windows before the top-1 (1: none)
    min_segment: float = 0.0  #: seconds; shorter segments are "uncertain"
    threshold: float = 0.0  #: segments whose mean probability is lower are "uncertain"
    labels: Sequence[str] | str | None = None  #: restrict top-k and segments to these classes
    all_probs: bool = False  #: every window's full probability vector in the JSON ("probs")
    #: windows per model call (every call is padded to this size, so results never depend on batching); None:
    #: the device's default (:func:`tokshift_cli.engine.default_batch_size`)
    batch_size: int | None = None
    dtype: str = "float32"  #: model autocast: float32 | bfloat16 | float16 (CUDA) | auto
    workers: int = 1  #: decode worker processes (1: one pass in order; 0: decode in this process)
    timeout: float | None = None  #: seconds one chunk of windows may take to decode (None: no bound)
    stream: int | None = None  #: the N-th video stream (None: the main one)
    #: --render: the annotated video's height at most (smaller videos keep theirs; 0: the source's): encoding
    #: 720p and up on 2 CPU cores costs more than the 10 s per minute of video --render is meant to add
    render_height: int = 360
    #: windows per decode task (None: as many as fit in 64 MB of frames, at most 8); env TOKSHIFT_TIMELINE_CHUNK
    chunk_windows: int | None = field(default_factory=lambda: int(os.environ["TOKSHIFT_TIMELINE_CHUNK"])
                                      if os.environ.get("TOKSHIFT_TIMELINE_CHUNK") else None)
    #: seconds between journal commits; env TOKSHIFT_COMMIT_INTERVAL
    commit_interval: float = field(default_factory=lambda: float(os.environ.get("TOKSHIFT_COMMIT_INTERVAL", "1.0")))

    def validate(self) -> None:
        parse_hop(self.hop)
        for name in ("top_k", "smooth"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} {v!r}: must be a whole number >= 1")
        if not self.min_segment >= 0:
            raise UsageError(f"--min-segment {self.min_segment!r}: must be 0 or more seconds")
        if not 0 <= self.threshold <= 1:
            raise UsageError(f"--threshold {self.threshold!r}: a probability, from 0 to 1")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise UsageError(f"--batch-size {self.batch_size!r}: must be a positive integer")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--timeout {self.timeout!r}: must be a positive number of seconds")
        if not isinstance(self.render_height, int) or self.render_height < 0:
            raise UsageError(f"--render-height {self.render_height!r}: a height in pixels (0: the source's)")
        if self.chunk_windows is not None and self.chunk_windows < 1:
            raise UsageError(f"chunk_windows {self.chunk_windows!r}: must be >= 1")


@dataclass
class TimelineResult:
    """What a call of :func:`timeline` did."""

    videos: int = 0
    ok: int = 0  #: videos read to the end
    failed: int = 0  #: videos without any window (cannot be opened or decoded)
    incomplete: int = 0  #: videos whose frames stopped decoding part-way (windows before that are kept)
    windows: int = 0  #: windows computed in this call
    resumed_windows: int = 0  #: windows an interrupted run had computed already
    skipped_complete: bool = False  #: resume found the outputs complete: nothing was done
    wall_s: float = 0.0
    model_s: float = 0.0  #: time inside the model
    decode_s: float = 0.0  #: decode time summed over the workers
    outputs: list[Path] = field(default_factory=list)  #: files written
    docs: list[dict[str, Any]] = field(default_factory=list)  #: per-video documents (when ``keep_results``)


# --- windows -> segments ---------------------------------------------------------------------------------------


def window_edges(start_s: np.ndarray, end_s: np.ndarray) -> np.ndarray:
    """``[W + 1]`` edges of the time each window owns: the first window's start, the midpoints between window
    centres, the last window's end. Window ``w`` owns ``[edges[w], edges[w + 1])``."""
    start_s, end_s = np.asarray(start_s, np.float64), np.asarray(end_s, np.float64)
    if start_s.size == 0:
        return np.zeros(0)
    c = (start_s + end_s) / 2
    return np.concatenate([start_s[:1], (c[:-1] + c[1:]) / 2, end_s[-1:]])


def top_k_of(probs: np.ndarray, classes: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The ``k`` most probable of ``classes`` for one window's probabilities (ties: lower class index first)."""
    p = np.asarray(probs)[classes]
    order = np.argsort(-p, kind="stable")[:k]
    return [{"label": labels[int(classes[j])], "index": int(classes[j]), "probability": round(float(p[j]), 6)}
            for j in order]


def make_segments(start_s: np.ndarray, end_s: np.ndarray, probs: np.ndarray, labels: Sequence[str], *,
                  classes: np.ndarray | None = None, smooth: int = 1, min_segment: float = 0.0,
                  threshold: float = 0.0) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Windows ``[W]`` with probabilities ``[W, C]`` -> the segments (module docstring) and, per window, the
    number of its segment."""
    w = int(np.asarray(start_s).size)
    if w == 0:
        return [], np.zeros(0, dtype=np.int64)
    classes = np.arange(probs.shape[1]) if classes is None else np.asarray(classes, dtype=np.int64)
    top = classes[np.argmax(smooth_windows(np.asarray(probs)[:, classes], smooth), axis=1)]
    edges = window_edges(start_s, end_s)
    segs: list[dict[str, Any]] = []
    seg_of = np.zeros(w, dtype=np.int64)
    a = 0
    for b in range(1, w + 1):
        if b < w and top[b] == top[a]:
            continue
        label = int(top[a])
        prob = float(np.asarray(probs[a:b, label], dtype=np.float64).mean())
        st, en = float(edges[a]), float(edges[b])
        seg_of[a:b] = len(segs)
        segs.append({"start_s": round(st, 6), "end_s": round(en, 6), "label": labels[label], "index": label,
                     "probability": round(prob, 6), "windows": [a, b - 1],
                     "uncertain": bool(en - st < min_segment or prob < threshold)})
        a = b
    return segs, seg_of


# --- files -----------------------------------------------------------------------------------------------------


class TimelineFiles(JobFiles):
    """A run's outputs (``out`` JSON Lines, ``csv``, per-video ``plot`` and ``render``) and its journal, named
    after the first output given (``timeline.json`` -> ``timeline.json.part.journal``), or kept in the user's
    cache folder when the results only go to the terminal."""

    def __init__(self, paths: Sequence[str], *, out: Path | None, csv: Path | None, plot: Path | None,
                 render: Path | None, job_key: str):
        self.out, self.csv, self.plot, self.render = out, csv, plot, render
        self.n = len(paths)
        self.stems = unique_stems(paths) if self.n > 1 else []
        named = [p for p in (out, csv, plot, render) if p is not None]
        self.private = not named
        if named:
            stem = named[0]
        else:
            cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokshift" / "timeline"
            stem = cache / job_key[:20]
        finals = [p for p in (out, csv) if p is not None]
        if self.n == 1:
            finals += [p for p in (plot, render) if p is not None]
        super().__init__(stem, finals, rows=True)

    @property
    def stamp(self) -> Path:
        """A finished run's resume fingerprint (hidden, beside the first output): a later ``--resume`` compares
        against it before calling the job complete (none of the outputs is a JSON object to hold it)."""
        return self.stem.with_name(f".{self.stem.name}.resume.json")

    def product(self, base: Path | None, k: int) -> Path | None:
        """Input ``k``'s plot or rendered video: ``base`` itself for one input, ``<base stem>-<video stem>.<ext>``
        beside it for several."""
        if base is None:
            return None
        if self.n == 1:
            return base
        return base.with_name(f"{base.stem}-{self.stems[k]}{base.suffix}")

    def per_input_files(self, file_names: Sequence[str] | None) -> list[Path]:
        if self.n == 1:
            return []
        return [p for k in range(self.n) for p in (self.product(self.plot, k), self.product(self.render, k))
                if p is not None]


# --- the journal -----------------------------------------------------------------------------------------------


def _header(model: "torch.nn.Module", paths: Sequence[str], opt: TimelineOptions, classes: np.ndarray,
            files: TimelineFiles, device: "torch.device") -> dict[str, Any]:
    cfg = model.config
    config = cfg.to_dict()
    config.pop("id2label", None)
    config.pop("tool_version", None)
    info = model_info(model)
    hop_f, hop_s = parse_hop(opt.hop)
    if hop_f is None and hop_s is None:
        hop_f = max(1, cfg.num_frames * cfg.frame_stride // 2)
    window = {"frames": int(cfg.num_frames), "stride": int(cfg.frame_stride), "span_frames":
              int(cfg.num_frames * cfg.frame_stride), "hop_frames": hop_f, "hop_s": hop_s, "crop": "centre",
              "img_size": int(cfg.img_size), "crop_size": int(cfg.crop_size)}
    view = {"top_k": int(min(opt.top_k, classes.size)), "smooth": int(opt.smooth),
            "min_segment_s": float(opt.min_segment), "threshold": float(opt.threshold),
            "labels": None if opt.labels is None else [cfg.labels[int(i)] for i in classes],
            "all_probs": bool(opt.all_probs)}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__, "model": info,
            "window": window, "view": view, "batch_size": opt.batch_size, "dtype": opt.dtype,
            "device": device.type, "stream": opt.stream, "num_classes": int(cfg.num_classes),
            "inputs": {"count": len(paths), "sha256": inputs_hash(paths)}}
    fingerprint = {k: meta[k] for k in ("tool_version", "window", "view", "batch_size", "dtype", "device",
                                        "stream", "inputs", "num_classes")}
    fingerprint["weights_sha256"] = weights_hash(model)
    fingerprint["config"] = config
    fingerprint["inputs"] = {**meta["inputs"], "identity": file_identity(paths)}
    fingerprint["products"] = {"plot": files.plot is not None, "render": files.render is not None,
                               "render_height": opt.render_height if files.render is not None else None}
    return {"journal": FORMAT, "version": FORMAT_VERSION, "shard": [0, 1], "fingerprint": fingerprint,
            "meta": meta}


@dataclass
class _Progress:
    """One input as the journal has it."""

    plan: dict[str, Any] | None = None
    windows: int = 0
    end: dict[str, Any] | None = None


def _journalled(path: Path) -> dict[int, _Progress]:
    out: dict[int, _Progress] = {}
    if not path.exists():
        return out
    for rec in iter_records(path):
        p = out.setdefault(int(rec["input"]), _Progress())
        kind = rec.get("kind")
        if kind == "plan":
            p.plan = rec
        elif kind == "windows":
            p.windows += int(rec["rows"])
        elif kind == "end":
            p.end = rec
    return out


def _read_rows(files: TimelineFiles, plan: dict[str, Any] | None, count: int, num_classes: int) -> np.ndarray:
    if plan is None or count == 0:
        return np.zeros((0, num_classes), dtype=np.float32)
    rows_path = files.rows_path(Shard())
    return np.fromfile(rows_path, dtype="<f4", count=count * num_classes,
                       offset=int(plan["rows_from"])).reshape(count, num_classes)


# --- documents -------------------------------------------------------------------------------------------------


def _document(path: str, plan: dict[str, Any] | None, end: dict[str, Any], probs: np.ndarray,
              meta: dict[str, Any], labels: Sequence[str], classes: np.ndarray) -> VideoTimeline:
    """A video's document: ``{"video", "model", "windows", "segments", ...}`` (docs/timeline.md)."""
    view, window = meta["view"], meta["window"]
    w = probs.shape[0]
    doc: dict[str, Any] = {"video": path, "model": meta["model"], "tool_version": meta["tool_version"],
                           "window": window, "view": view,
                           "video_info": plan["video_info"] if plan is not None else None,
                           "duration_s": plan["duration_s"] if plan is not None else None,
                           "error": end.get("error"), "incomplete": end.get("incomplete"), "windows": [],
                           "segments": []}
    if w == 0 or plan is None:
        return VideoTimeline(doc, probs, classes, np.zeros(0, np.int64), np.zeros(0))
    starts = np.asarray(plan["starts"][:w], dtype=np.int64)
    from ..video.stream import window_indices

    idx = window_indices(starts, window["frames"], window["stride"], plan["num_frames"])
    start_s = np.asarray(plan["start_s"][:w], dtype=np.float64)
    end_s = np.asarray(plan["end_s"][:w], dtype=np.float64)
    k = int(view["top_k"])
    for j in range(w):
        entry: dict[str, Any] = {"start_s": float(start_s[j]), "end_s": float(end_s[j]),
                                 "frame_indices": idx[j].tolist(), "top_k": top_k_of(probs[j], classes, labels, k)}
        if view["all_probs"]:
            entry["probs"] = [round(float(x), 6) for x in probs[j]]
        doc["windows"].append(entry)
    segs, seg_of = make_segments(start_s, end_s, probs, labels, classes=classes, smooth=view["smooth"],
                                 min_segment=view["min_segment_s"], threshold=view["threshold"])
    doc["segments"] = segs
    return VideoTimeline(doc, probs, classes, seg_of, window_edges(start_s, end_s))


def doc_json(doc: dict[str, Any]) -> str:
    """One video's document as one line of JSON Lines (``--json``, ``--out``)."""
    return to_json(doc, indent=None)


CSV_COLUMNS = ("video", "segment", "start_s", "end_s", "start", "end", "label", "index", "probability",
               "first_window", "last_window", "uncertain")


def csv_rows(doc: dict[str, Any]) -> Iterator[list[Any]]:
    """``--csv`` rows of one video: one per segment."""
    hours = (doc.get("duration_s") or 0) >= 3600
    for n, s in enumerate(doc["segments"]):
        yield [display_path(doc["video"]), n, f"{s['start_s']:.3f}", f"{s['end_s']:.3f}",
               format_time(s["start_s"], hours=hours), format_time(s["end_s"], hours=hours), s["label"], s["index"],
               f"{s['probability']:.6f}", s["windows"][0], s["windows"][1], int(s["uncertain"])]


# --- the run ---------------------------------------------------------------------------------------------------


def timeline(model: "torch.nn.Module", paths: Sequence[str], options: TimelineOptions | None = None, *,
             out: str | os.PathLike | None = None, csv: str | os.PathLike | None = None,
             plot: str | os.PathLike | None = None, render: str | os.PathLike | None = None,
             errors: dict[int, str] | None = None, resume: bool = False, overwrite: bool = False,
             keep_results: bool = True,
             on_progress: Callable[[dict[str, Any]], None] | None = None,
             on_result: Callable[[dict[str, Any]], None] | None = None) -> TimelineResult:
    """Timelines of ``paths`` (in order, one after another) with a loaded model; see the module docstring.

    ``out``: the per-video documents as JSON Lines (one line per input); ``csv``: one row per segment; ``plot``
    (PNG) and ``render`` (MP4) per video (for several inputs: ``<stem>-<video stem>.<ext>`` beside the name
    given). ``errors``: ``{position: reason}`` of inputs known to be bad (a missing path). ``resume``: go on from
    an interrupted run's journal. ``on_progress(info)``: when a file starts and after every chunk of windows
    (``input``, ``video``, ``windows_done``, ``windows_total``, ``position_s``, ``duration_s``); ``on_result(doc)``:
    each video's document when it is done. Returns counters, and the documents when ``keep_results``.
    """
    from ..engine import default_batch_size, resolve_dtype

    opt = options or TimelineOptions()
    opt.validate()
    cfg = model.config
    labels = cfg.labels
    classes = resolve_labels(opt.labels, labels)
    device = next(model.parameters()).device
    autocast_dtype = resolve_dtype(opt.dtype, device)
    if opt.batch_size is None:
        opt.batch_size = default_batch_size(device)
    paths = [str(p) for p in paths]
    errors = dict(errors or {})
    as_path = lambda p: Path(p) if p is not None else None  # noqa: E731
    key = hashlib.sha256((os.getcwd() + "\0" + inputs_hash(paths)).encode("utf-8", "surrogateescape")).hexdigest()
    files = TimelineFiles(paths, out=as_path(out), csv=as_path(csv), plot=as_path(plot), render=as_path(render),
                          job_key=key)
    shard = Shard()
    action, header, state = preflight(files, shard, lambda: _header(model, paths, opt, classes, files, device),
                                      kind=FORMAT, n_inputs=None, resume=resume,
                                      overwrite=overwrite or (files.private and not resume), will_merge=True,
                                      stored=lambda: json.loads(files.stamp.read_text(encoding="utf-8")))
    result = TimelineResult(videos=len(paths))
    if action == "complete":
        result.skipped_complete = True
        return result
    if action == "fresh" and not overwrite:  # preflight checks per-video files only without --resume
        for p in files.per_input_files(None):
            if p.exists():
                raise OutputExistsError(f"{p}: exists already; pass --overwrite to replace it")
    t0 = time.perf_counter()
    writer = JournalWriter(files, shard, header, state, row_dtype=np.dtype("<f4"),
                           commit_interval=opt.commit_interval)
    try:
        done = _journalled(files.journal_path(shard)) if state is not None else {}
        result.resumed_windows = sum(p.windows for p in done.values())
        if state is None or state.done is None:
            runner = _Runner(model, opt, header, files, writer, labels, classes, autocast_dtype, result,
                             on_progress, on_result, keep_results)
            with runner:
                for k, path in enumerate(paths):
                    runner.video(k, path, errors.get(k), done.get(k, _Progress()))
            writer.finish()
        else:  # the interrupted run had finished every video: only the final files are left
            for k, path in enumerate(paths):
                _replay(k, path, done.get(k, _Progress()), header, files, labels, classes, result, on_result,
                        keep_results)
    finally:
        writer.close()
        result.wall_s = time.perf_counter() - t0
    _write_finals(files, header, labels, classes, paths, result)
    if not files.private:
        atomic_write_text(files.stamp, to_json(header["fingerprint"]) + "\n")
    remove_parts(files, shard)
    return result


def _count(result: TimelineResult, doc: dict[str, Any]) -> None:
    if doc["error"] is not None:
        result.failed += 1
    elif doc["incomplete"] is not None:
        result.incomplete += 1
    else:
        result.ok += 1


def _replay(k: int, path: str, prog: _Progress, header: dict[str, Any], files: TimelineFiles,
            labels: Sequence[str], classes: np.ndarray, result: TimelineResult,
            on_result: Callable[[dict[str, Any]], None] | None, keep: bool) -> None:
    """A video the interrupted run finished: its document from the journal."""
    probs = _read_rows(files, prog.plan, prog.windows, header["meta"]["num_classes"])
    tl = _document(path, prog.plan, prog.end or {"error": "missing from the journal"}, probs, header["meta"],
                   labels, classes)
    _count(result, tl.doc)
    if keep:
        result.docs.append(tl.doc)
    if on_result is not None:
        on_result(tl.doc)


class _Runner:
    """Runs the videos of one :func:`timeline` call: a decode pool kept for the whole run, one file at a time."""

    def __init__(self, model: "torch.nn.Module", opt: TimelineOptions, header: dict[str, Any],
                 files: TimelineFiles, writer: JournalWriter, labels: Sequence[str], classes: np.ndarray,
                 autocast_dtype: Any, result: TimelineResult,
                 on_progress: Callable[[dict[str, Any]], None] | None,
                 on_result: Callable[[dict[str, Any]], None] | None, keep: bool):
        from ..engine import ViewSpec

        self.model, self.opt, self.header, self.files, self.writer = model, opt, header, files, writer
        self.labels, self.classes, self.autocast_dtype, self.result = labels, classes, autocast_dtype, result
        self.on_progress, self.on_result, self.keep = on_progress, on_result, keep
        self.cfg = model.config
        self.device = next(model.parameters()).device
        self.spec = ViewSpec.for_model(self.cfg, "1x1", stream=opt.stream)
        self.window = header["meta"]["window"]
        self.pool: Any = None
        self.seq = writer.videos  # journal records so far: the next record's number

    def __enter__(self) -> "_Runner":
        if self.opt.workers > 0:
            from ..video.workers import DecodePool, WorkerStartError

            try:
                self.pool = DecodePool(self.opt.workers)
            except WorkerStartError as e:
                _log.warning("warning: %s; decoding in the main process instead (no crash isolation, no --timeout)",
                             str(e).split("; try --workers")[0])
        return self

    def __exit__(self, *exc: object) -> None:
        from ..video.stream import close_cached

        if self.pool is not None:
            self.pool.close()
        close_cached()

    # -- tasks in the workers (or inline) -------------------------------------------------------------------
    def _tasks(self, paths: list[str], fn: Callable[..., Any], kwargs: dict[str, Any],
               on_error: Callable[[int, str, Any, float], Any], prefetch: int) -> Iterator[Any]:
        if self.pool is None:
            for i, p in enumerate(paths):
                t = time.monotonic()
                try:
                    yield fn(i, p, **kwargs)
                except VideoError as e:
                    yield on_error(i, p, e, time.monotonic() - t)
            return
        yield from self.pool.ordered(paths, fn, prefetch=prefetch, timeout=self.opt.timeout, kwargs=kwargs,
                                     on_error=on_error)

    def _add(self, path: str, record: dict[str, Any], rows: np.ndarray | None = None) -> None:
        self.writer.add(self.seq, path, record, rows)
        self.seq += 1

    # -- one video ------------------------------------------------------------------------------------------
    def video(self, k: int, path: str, pre_error: str | None, prog: _Progress) -> None:
        if prog.end is not None:  # finished by the interrupted run
            _replay(k, path, prog, self.header, self.files, self.labels, self.classes, self.result,
                    self.on_result, self.keep)
            return
        plan_rec = prog.plan
        error: str | None = pre_error
        incomplete: str | None = None
        windows = prog.windows
        if error is None:
            plan = self._plan(k, path)
            if plan.error is not None:
                error = plan.error
                if windows:  # it was read part of the way by the interrupted run: keep those windows
                    error, incomplete = None, plan.error
            else:
                fresh = self._plan_record(k, plan)
                if plan_rec is not None and (plan_rec["num_frames"] != fresh["num_frames"]
                                             or plan_rec["starts"] != fresh["starts"]):
                    raise UsageError(f"{path}: changed since the interrupted run ({fresh['num_frames']} frames now, "
                                     f"{plan_rec['num_frames']} then); run again with --overwrite (without "
                                     "--resume) to start over")
                if plan_rec is None:
                    fresh["rows_from"] = self.writer.end
                    self._add(path, fresh)
                    plan_rec = fresh
                windows, incomplete = self._windows(k, path, plan, plan_rec, windows)
                if windows == 0 and incomplete is not None:
                    error, incomplete = incomplete, None
        self.writer.commit()  # the rows are on disk before they are read back
        probs = _read_rows(self.files, plan_rec, windows, int(self.cfg.num_classes))
        end = {"kind": "end", "input": k, "error": error, "incomplete": incomplete, "windows": windows}
        tl = _document(path, plan_rec, end, probs, self.header["meta"], self.labels, self.classes)
        self._products(k, path, tl)
        self._add(path, end)
        self.writer.commit()
        _count(self.result, tl.doc)
        if self.keep:
            self.result.docs.append(tl.doc)
        if self.on_result is not None:
            self.on_result(tl.doc)

    def _plan(self, k: int, path: str) -> Any:
        from ..video.stream import WindowPlan, plan_video

        w = self.window
        kwargs = dict(frames=w["frames"], stride=w["stride"], hop_frames=w["hop_frames"], hop_s=w["hop_s"],
                      stream=self.opt.stream)
        tasks = self._tasks([path], plan_video, kwargs,
                            lambda i, p, e, dt: WindowPlan(index=i, path=p, error=e.reason, decode_s=dt), prefetch=1)
        with contextlib.closing(tasks):  # type: ignore[arg-type]
            plan = next(tasks)
        self.result.decode_s += plan.decode_s
        return plan

    def _plan_record(self, k: int, plan: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"kind": "plan", "input": k, "error": None, "num_frames": int(plan.num_frames),
                               "duration_s": float(plan.duration_s), "starts": plan.starts.tolist(),
                               "start_s": plan.start_s.tolist(), "end_s": plan.end_s.tolist(),
                               "stored_size": list(plan.stored_size), "geometry": plan.geometry.to_dict(),
                               "video_info": plan.meta}
        if plan.expected_frames is not None:
            rec["expected_frames"] = int(plan.expected_frames)
        return rec

    def _chunk_windows(self, plan: Any) -> int:
        if self.opt.chunk_windows:
            return int(self.opt.chunk_windows)
        h, w = plan.stored_size
        s = int(self.cfg.crop_size)
        per_window = self.window["frames"] * (h * w * 3 + 3 * s * s * 4)
        return int(max(1, min(_MAX_CHUNK, _CHUNK_BYTES // max(per_window, 1))))

    def _windows(self, k: int, path: str, plan: Any, plan_rec: dict[str, Any], done: int) -> tuple[int, str | None]:
        """Decode, run and journal windows ``done ..`` of one video; returns (windows journalled, why the rest
        could not be read or None)."""
        from ..engine import finish_video, run_views
        from ..video.geometry import Geometry
        from ..video.stream import WindowChunk, decode_windows, window_indices
        from ..video.workers import DecodedVideo

        total = len(plan_rec["starts"])
        info = {"input": k, "video": path, "windows_total": total, "duration_s": plan_rec["duration_s"]}

        def progress(n: int) -> None:
            if self.on_progress is not None:
                pos = plan_rec["end_s"][n - 1] if n else 0.0
                self.on_progress({**info, "windows_done": n, "position_s": pos})

        progress(done)
        if done >= total:
            return done, _cut_short(plan_rec)
        w = self.window
        chunk = self._chunk_windows(plan)
        starts = np.asarray(plan_rec["starts"], dtype=np.int64)
        n_chunks = -(-(total - done) // chunk)
        geometry = Geometry.from_dict(plan_rec["geometry"])
        kwargs = dict(starts=starts, frames=w["frames"], stride=w["stride"], num_frames=plan_rec["num_frames"],
                      first=done, chunk=chunk, stream=self.opt.stream)

        def failed(i: int, p: str, e: Any, dt: float) -> WindowChunk:
            lo = done + i * chunk
            return WindowChunk(index=i, path=p, first=lo, asked=min(chunk, total - lo), error=e.reason, decode_s=dt,
                               crashed=True)

        stop: list[str] = []

        def prepared() -> Iterator[Any]:
            tasks = self._tasks([path] * n_chunks, decode_windows, kwargs, failed,
                                prefetch=max(2, 2 * max(self.opt.workers, 1)))
            with contextlib.closing(tasks):  # type: ignore[arg-type]
                for ch in tasks:
                    self.result.decode_s += ch.decode_s
                    idx = window_indices(starts[ch.first:ch.first + ch.count], w["frames"], w["stride"],
                                         plan_rec["num_frames"])
                    d = DecodedVideo(index=ch.index, path=path, error=None if ch.count else (ch.error or "no frames"),
                                     frames=ch.frames, needed=ch.needed, frame_indices=idx, unique_indices=idx,
                                     inverse=np.arange(ch.count), geometry=geometry,
                                     meta={"first": ch.first, "count": ch.count}, decode_s=ch.decode_s)
                    yield finish_video(d, self.spec, device=self.device)
                    if ch.error is not None:
                        stop.append(ch.error)
                        return

        for o in run_views(self.model, prepared(), batch_size=self.opt.batch_size, pad_batches=True,
                           autocast_dtype=self.autocast_dtype):
            self.result.model_s += o.model_s
            n = o.video.meta["count"] if o.video.error is None else 0
            if n == 0:
                continue
            if o.video.meta["first"] != done:
                raise RuntimeError(f"timeline: chunk at window {o.video.meta['first']}, expected {done}")
            probs = o.logits.float().softmax(-1).numpy().astype("<f4", copy=False)
            self._add(path, {"kind": "windows", "input": k, "error": None, "first": done, "count": n}, probs)
            done += n
            self.result.windows += n
            progress(done)
        if stop:
            reason = stop[0]
            if plan_rec.get("expected_frames"):
                reason = (f"the file is cut short ({plan_rec['num_frames']} of {plan_rec['expected_frames']} frames "
                          f"are there) and {reason}")
            if done:
                at = format_time(plan_rec["end_s"][done - 1], hours=plan_rec["duration_s"] >= 3600)
                reason = f"{reason}; the timeline stops at {at} ({done} of {total} windows)"
            return done, reason
        return done, _cut_short(plan_rec)

    # -- per-video files ----------------------------------------------------------------------------------------
    def _products(self, k: int, path: str, tl: VideoTimeline) -> None:
        files = self.files
        if not tl.doc["windows"]:
            return
        plot_path, render_path = files.product(files.plot, k), files.product(files.render, k)
        if plot_path is None and render_path is None:
            return
        from . import render as timeline_render  # matplotlib and PyAV are imported inside its functions

        if plot_path is not None:
            timeline_render.plot_timeline(plot_path, tl, self.labels)
            self.result.outputs.append(plot_path)
        if render_path is not None:
            try:
                timeline_render.render_video(path, render_path, tl, self.labels, stream=self.opt.stream,
                                             max_height=self.opt.render_height)
                self.result.outputs.append(render_path)
            except VideoError as e:  # the timeline stands; only its video could not be made
                _log.warning("%s: no --render: %s", path, e.reason)


def _cut_short(plan: dict[str, Any]) -> str | None:
    """The one line for a file whose container promises more frames than it holds (a download cut short)."""
    cut = plan.get("expected_frames")
    if not cut:
        return None
    return (f"the file is cut short: only {plan['num_frames']} of {cut} frames are there; the timeline stops at "
            f"{format_time(plan['duration_s'], hours=plan['duration_s'] >= 3600)}")


def _write_finals(files: TimelineFiles, header: dict[str, Any], labels: Sequence[str], classes: np.ndarray,
                  paths: Sequence[str], result: TimelineResult) -> None:
    """The JSON Lines and CSV files, from the complete journal, one video at a time."""
    if files.out is None and files.csv is None:
        return
    journal = files.journal_path(Shard())
    meta = header.get("meta") or {}
    with contextlib.ExitStack() as stack:
        jf = stack.enter_context(atomic_open(files.out, "w")) if files.out is not None else None
        cf = stack.enter_context(atomic_open(files.csv, "w")) if files.csv is not None else None
        writer = _csv.writer(cf, lineterminator="\n") if cf is not None else None
        if writer is not None:
            writer.writerow(CSV_COLUMNS)
        plan: dict[str, Any] | None = None
        windows = 0
        for rec in iter_records(journal):
            kind = rec.get("kind")
            if kind == "plan":
                plan, windows = rec, 0
            elif kind == "windows":
                windows += int(rec["rows"])
            elif kind == "end":
                k = int(rec["input"])
                if plan is not None and int(plan["input"]) != k:
                    plan, windows = None, 0
                probs = _read_rows(files, plan, windows, int(meta["num_classes"]))
                doc = _document(paths[k], plan, rec, probs, meta, labels, classes).doc
                if jf is not None:
                    jf.write(doc_json(doc) + "\n")
                if writer is not None:
                    for row in csv_rows(doc):
                        writer.writerow(row)
                plan, windows = None, 0
    result.outputs += [p for p in (files.out, files.csv) if p is not None]
