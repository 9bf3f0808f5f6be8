"""Dataset-scale feature extraction: streamed to disk, resumable after a crash, sharded across processes.

A feature is the model's pre-head embedding: the final-norm [CLS] token of every frame
(:meth:`~tokshift_cli.models.tokshift.TokShiftViT.forward_frame_features`), reduced per ``per``:

* ``video`` (default): one row per video, the mean over every view (clip x crop) and frame; identical clips (a
  short video wraps around, see :mod:`tokshift_cli.video.sampling`) count with their multiplicity;
* ``clip``: one row per temporal clip, duplicates included, in clip order, averaged over crops and frames; for a
  clip this is ``model.forward_features`` averaged over its crops;
* ``frame``: one row per sampled frame (clip-major), averaged over crops.

Rows stream to disk as videos finish and a run survives crashes, resumes and shards through :mod:`tokshift_cli.jobs`
(fsync'ed journal, ``--resume``, ``--shard I/N``, torchrun); :func:`merge_shards` streams the part files back
into input order: the final ``.npy`` (an ``.npy`` header, then the rows) and its JSON sidecar, each written
atomically.

Row bytes never depend on batching: the engine pads every model call to ``batch_size`` views
(``run_views(pad_batches=True)``) and the per-video reductions are done in float64 with a fixed order of
additions, so an interrupted-and-resumed run, a sharded run and a plain run write byte-identical files.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from . import __version__
from .errors import OutputExistsError, TokShiftError, UsageError
from .jobs import (DistContext, JobFiles, JournalState, JournalWriter, Shard, check_outputs, complete_shards,
                   file_identity,
                   init_distributed, inputs_hash, merged_records, model_info, preflight, remove_parts, weights_hash)
from .outputs import atomic_open, display_path, unique_stems
from .video.sampling import Views

if TYPE_CHECKING:
    import torch

__all__ = ["FeatureOptions", "FeatureResult", "Shard", "extract_features", "merge_shards", "rows_from_frame_features",
           "init_distributed", "DistContext", "check_outputs", "PER_CHOICES", "STORE_DTYPES"]

FORMAT = "tokshift-features"
FORMAT_VERSION = 1
PER_CHOICES = ("video", "clip", "frame")
#: Stored dtypes: always little-endian, whatever the machine.
STORE_DTYPES = {"float32": "<f4", "float16": "<f2"}
_COPY_CHUNK = 16 << 20


# --- options and results ---------------------------------------------------------------------------------------


@dataclass
class FeatureOptions:
    """What to extract and how. Everything that changes the bytes of the output is in the resume fingerprint."""

    views: Views = field(default_factory=lambda: Views(1, 1))
    per: str = "video"  #: video | clip | frame
    dtype: str = "float32"  #: stored dtype: float32 | float16
    compute_dtype: str = "float32"  #: model autocast: float32 | bfloat16 | float16 (CUDA) | auto
    #: views per model call (every call is padded to exactly this many); None: the device's default
    #: (:func:`tokshift_cli.engine.default_batch_size`: 2 on a CPU, 8 on a GPU)
    batch_size: int | None = None
    workers: int = 2  #: decoding worker processes ahead of the model (0: decode in this process)
    decoder: str = "auto"
    timeout: float | None = None  #: seconds one file may take to decode (None: no bound; the CLI's default: 300)
    sampling: str = "centred"  #: where clips sit in a video: centred | authors (:mod:`tokshift_cli.video.sampling`)
    stream: int | None = None  #: the N-th video stream (None: the main one)
    #: seconds between journal commits (fsync of the rows, then of the journal); env TOKSHIFT_COMMIT_INTERVAL
    commit_interval: float = field(default_factory=lambda: float(os.environ.get("TOKSHIFT_COMMIT_INTERVAL", "1.0")))

    def validate(self) -> None:
        self.views = Views.parse(self.views)
        if self.per not in PER_CHOICES:
            raise UsageError(f"--per {self.per!r}: choose one of {', '.join(PER_CHOICES)}")
        if self.dtype not in STORE_DTYPES:
            raise UsageError(f"--dtype {self.dtype!r}: choose float32 or float16")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise UsageError(f"--batch-size {self.batch_size!r}: must be a positive integer")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--timeout {self.timeout!r}: must be a positive number of seconds")
        from .video.decoders import check_decoder
        from .video.sampling import check_sampling

        self.sampling = check_sampling(self.sampling)
        check_decoder(self.decoder)


@dataclass
class FeatureResult:
    """What a call of :func:`extract_features` (or :func:`merge_shards`) did."""

    out: Path | None  #: the final .npy (None in --out-dir mode, or when only a shard ran)
    out_dir: Path | None
    sidecar: Path | None  #: the final .json (None when only a shard ran)
    shard: "Shard"
    merged: bool  #: the final files were written by this call
    videos: int = 0  #: inputs in this shard (all inputs when not sharded)
    ok: int = 0
    failed: int = 0
    rows: int = 0
    width: int = 0
    resumed: int = 0  #: videos already done by an earlier, interrupted run
    skipped_complete: bool = False  #: --resume found the output complete already: nothing was done
    wall_s: float = 0.0
    model_s: float = 0.0  #: time inside the model (busy fraction = model_s / wall_s)
    decode_s: float = 0.0  #: decode + preprocess time summed over the decode workers
    clips: int = 0  #: temporal clips processed in this call
    total_videos: int = 0  #: inputs over all shards
    total_failed: int = 0  #: failures over all shards (known once merged)


# --- rows ------------------------------------------------------------------------------------------------------


def _ordered_mean(x: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` by adding slices in index order: the same bits whatever the memory layout or
    threads (numpy's pairwise/SIMD reductions give no such promise)."""
    x = np.moveaxis(x, axis, 0)
    acc = np.array(x[0], dtype=np.float64, copy=True)
    for k in range(1, x.shape[0]):
        acc += x[k]
    return acc / x.shape[0]


def rows_from_frame_features(frame_features: "np.ndarray | torch.Tensor", *, crops: int, inverse: Sequence[int],
                             per: str) -> np.ndarray:
    """Per-frame features of a video's distinct clips -> its feature rows (float32).

    ``frame_features``: ``[U * crops, T, C]``, distinct clip-major (clip 0 crop 0, clip 0 crop 1, ...), as the
    engine produces them; ``inverse`` ``[clips]``: which distinct clip each temporal clip is
    (:func:`~tokshift_cli.video.sampling.unique_clips`). Returns ``[1, C]`` (video), ``[clips, C]`` (clip) or
    ``[clips * T, C]`` (frame). Reductions run in float64 in a fixed order, so the result is deterministic.
    """
    if per not in PER_CHOICES:
        raise ValueError(f"per must be one of {PER_CHOICES}, got {per!r}")
    f = frame_features.detach().cpu().numpy() if hasattr(frame_features, "detach") else np.asarray(frame_features)
    if f.ndim != 3 or f.shape[0] % crops:
        raise ValueError(f"frame features must be [U * crops, T, C] with crops={crops}, got {f.shape}")
    inverse = np.asarray(inverse, dtype=np.int64)
    v, t, c = f.shape
    per_frame = _ordered_mean(f.astype(np.float64).reshape(v // crops, crops, t, c), axis=1)  # [U, T, C]
    if per == "frame":
        return per_frame[inverse].reshape(-1, c).astype(np.float32)
    per_clip = _ordered_mean(per_frame, axis=1)[inverse]  # [clips, C]
    if per == "clip":
        return per_clip.astype(np.float32)
    return _ordered_mean(per_clip, axis=0)[None].astype(np.float32)


def _row_meta(rec: dict[str, Any], per: str) -> Iterator[dict[str, Any]]:
    """Sidecar entries (without the row number) of one journalled video."""
    fi, ts = rec["frame_indices"], rec["timestamps"]
    base = {"video": display_path(rec["video"]), "video_index": rec["i"], "decoder": rec.get("decoder")}
    if per == "video":
        yield {**base, "clip": None, "frame": None, "frame_indices": fi, "timestamps": ts}
    elif per == "clip":
        for c in range(len(fi)):
            yield {**base, "clip": c, "frame": None, "frame_indices": fi[c], "timestamps": ts[c]}
    else:
        for c in range(len(fi)):
            for j in range(len(fi[c])):
                yield {**base, "clip": c, "frame": j, "frame_indices": [fi[c][j]], "timestamps": [ts[c][j]]}


# --- files -----------------------------------------------------------------------------------------------------


class Layout(JobFiles):
    """Where a run's files go: ``--out FILE.npy`` (one array) or ``--out-dir DIR`` (one .npy per video)."""

    def __init__(self, out: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None):
        if (out is None) == (out_dir is None):
            raise UsageError("give exactly one of --out FILE.npy and --out-dir DIR")
        self.out = Path(out) if out is not None else None
        self.out_dir = Path(out_dir) if out_dir is not None else None
        if self.out is not None:
            if self.out.suffix.lower() != ".npy":
                raise UsageError(f"--out {self.out}: the features file must end in .npy (the sidecar is written "
                                 f"beside it as {self.out.with_suffix('.json').name})")
            if self.out.is_dir():
                raise OutputExistsError(f"--out {self.out}: is a folder; give a file name, e.g. {self.out / 'feats.npy'}"
                                        " (or use --out-dir for one file per video)")
        stem = self.out if self.out is not None else self.out_dir / "features"
        super().__init__(stem, [p for p in (self.out, self.sidecar) if p is not None], rows=self.out is not None)

    @property
    def mode(self) -> str:
        return "npy" if self.out is not None else "dir"

    @property
    def sidecar(self) -> Path:
        return self.out.with_suffix(".json") if self.out is not None else self.out_dir / "features.json"

    def per_input_files(self, file_names: Sequence[str] | None) -> list[Path]:
        return [self.out_dir / n for n in file_names] if self.mode == "dir" and file_names else []


def video_file_names(paths: Sequence[str]) -> list[str]:
    """``--out-dir`` file names: the video's stem + ``.npy`` (:func:`~tokshift_cli.outputs.unique_stems`: a stem
    shared by several inputs gets a short hash of the path, so names are unique and do not depend on which other
    videos failed)."""
    return [f"{s}.npy" for s in unique_stems(paths, reserved=("features",))]


def _headers(model: "torch.nn.Module", paths: Sequence[str], layout: Layout, options: FeatureOptions,
             shard: Shard) -> dict[str, Any]:
    """The journal header: ``meta`` (what the sidecar says once) and the ``fingerprint`` resume checks."""
    cfg = model.config
    device = next(model.parameters()).device
    config = cfg.to_dict()
    config.pop("id2label", None)  # 400 class names are not what a features file is about
    config.pop("tool_version", None)
    info = model_info(model)
    info["weights_sha256"] = weights_hash(model)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__,
        "model": info, "config": config,
        "views": str(options.views), "per": options.per, "dtype": options.dtype,
        "compute_dtype": options.compute_dtype, "batch_size": options.batch_size, "decoder": options.decoder,
        "sampling": options.sampling, "stream": options.stream,
        "device": device.type, "dim": int(cfg.embed_dim), "width": int(cfg.embed_dim),  # width: the old key
        "layout": "one array" if layout.mode == "npy" else "one .npy per video",
        "inputs": {"count": len(paths), "sha256": inputs_hash(paths)},
    }
    fingerprint = {k: meta[k] for k in ("tool_version", "views", "sampling", "stream", "per", "dtype", "compute_dtype",
                                        "batch_size", "decoder", "device", "width", "layout", "inputs")}
    fingerprint["weights_sha256"] = info["weights_sha256"]
    fingerprint["config"] = config
    fingerprint["inputs"] = {**meta["inputs"], "identity": file_identity(paths)}
    return {"journal": FORMAT, "version": FORMAT_VERSION, "shard": [shard.index, shard.count],
            "fingerprint": fingerprint, "meta": meta, "width": int(cfg.embed_dim), "dtype": options.dtype}


def _stored_fingerprint(layout: Layout) -> dict[str, Any] | None:
    """The resume fingerprint a finished run's sidecar records (None: none)."""
    return json.loads(layout.sidecar.read_text(encoding="utf-8")).get("fingerprint")


# --- extraction ------------------------------------------------------------------------------------------------


def _run_shard(model: "torch.nn.Module", paths: Sequence[str], layout: Layout, shard: Shard,
               options: FeatureOptions, header: dict[str, Any], state: JournalState | None,
               errors: dict[int, str], file_names: list[str] | None, autocast_dtype: "torch.dtype | None",
               on_video: Callable[[dict[str, Any]], None] | None, result: FeatureResult) -> None:
    from .engine import ViewSpec, decode_videos, run_views

    cfg = model.config
    device = next(model.parameters()).device
    positions = list(shard.positions(len(paths)))
    done = state.videos if state is not None else 0
    todo = positions[done:]
    writer = JournalWriter(layout, shard, header, state, row_dtype=np.dtype(STORE_DTYPES[header["dtype"]]),
                           commit_interval=options.commit_interval)
    views = options.views

    t0 = time.perf_counter()
    try:
        stream = decode_videos([paths[gi] for gi in todo], ViewSpec.for_model(cfg, views, sampling=options.sampling,
                                                                               stream=options.stream),
                               device=device, decoder=options.decoder, workers=options.workers,
                               timeout=options.timeout, errors={k: errors[gi] for k, gi in enumerate(todo)
                                                                if gi in errors},
                               indices=todo, batch_size=options.batch_size)
        for out in run_views(model, stream, batch_size=options.batch_size, want_features=True, want_logits=False,
                             pad_batches=True, autocast_dtype=autocast_dtype):
            v = out.video
            rows = None
            record: dict[str, Any] = {"error": v.error}
            if v.error is None:
                rows = rows_from_frame_features(out.features, crops=views.crops, inverse=v.inverse, per=options.per)
                record.update(
                    clips=int(v.frame_indices.shape[0]),
                    frame_indices=v.frame_indices.tolist(),
                    timestamps=np.round(v.timestamps, 6).tolist(),
                    video_info=v.meta, decoder=v.decoder)
            if rows is not None and layout.mode == "dir":  # one .npy per video, written before its journal line
                with atomic_open(layout.out_dir / file_names[v.index], "wb") as f:
                    np.save(f, np.ascontiguousarray(rows.astype(writer.row_dtype, copy=False)), allow_pickle=False)
                record["file"] = file_names[v.index]
                writer.add(v.index, v.path, record, n_rows=len(rows))
            else:
                writer.add(v.index, v.path, record, rows)
            result.model_s += out.model_s
            result.decode_s += v.decode_s
            result.clips += record.get("clips", 0)
            if on_video is not None:
                on_video({"index": v.index, "video": v.path, "error": v.error, "rows": 0 if rows is None else len(rows),
                          "clips": record.get("clips", 0), "decode_s": v.decode_s, "model_s": out.model_s,
                          "rank": shard.index})
        writer.finish()
    finally:
        writer.close()  # Ctrl-C: what is done stays journalled, --resume goes on from there
        result.wall_s += time.perf_counter() - t0
    result.ok, result.failed, result.rows = writer.ok, writer.failed, writer.rows


def extract_features(model: "torch.nn.Module", paths: Sequence[str], out: str | os.PathLike | None = None, *,
                     out_dir: str | os.PathLike | None = None, options: FeatureOptions | None = None,
                     errors: dict[int, str] | None = None, resume: bool = False, overwrite: bool = False,
                     shard: Shard | str | None = None, dist: DistContext | None = None,
                     keep_parts: bool = False,
                     on_video: Callable[[dict[str, Any]], None] | None = None,
                     on_start: Callable[[int], None] | None = None) -> FeatureResult:
    """Extract features of ``paths`` (in that order) with a loaded model into ``out`` (.npy + .json sidecar) or
    ``out_dir`` (one .npy per video + ``features.json``); see the module docstring.

    ``errors`` maps input positions to an error found before decoding (a missing path); those inputs are
    recorded as failures. ``shard`` (``"i/n"``): run only that shard and leave its part files for
    :func:`merge_shards`. ``dist``: the torchrun context (:func:`init_distributed`): this rank runs its shard, and
    rank 0 merges once every rank is done. ``resume``: continue from the progress record of an interrupted run
    (started fresh when there is none). ``on_video`` gets a dict per finished video (progress bars).
    """
    opt = options or FeatureOptions()
    opt.validate()
    from .engine import default_batch_size, resolve_dtype

    device = next(model.parameters()).device
    autocast_dtype = resolve_dtype(opt.compute_dtype, device)  # a bad one fails before any file is touched
    if opt.batch_size is None:  # resolved before the resume fingerprint, which records it
        opt.batch_size = default_batch_size(device)
    layout = Layout(out, out_dir)
    if dist is not None and shard is not None and Shard.parse(shard).count > 1:
        raise UsageError("--shard cannot be combined with torchrun: under torchrun every rank is a shard already")
    sh = dist.shard if dist is not None else Shard.parse(shard)
    merge_here = sh.count == 1 or dist is not None
    paths = [str(p) for p in paths]
    errors = dict(errors or {})
    file_names = video_file_names(paths) if layout.mode == "dir" else None
    result = FeatureResult(out=None, out_dir=layout.out_dir, sidecar=None, shard=sh, merged=False,
                           videos=len(sh.positions(len(paths))), width=int(model.config.embed_dim),
                           total_videos=len(paths))

    def check() -> tuple[str, dict[str, Any], JournalState | None]:
        return preflight(layout, sh, lambda: _headers(model, paths, layout, opt, sh), kind=FORMAT,
                         n_inputs=len(paths), resume=resume, overwrite=overwrite, will_merge=merge_here,
                         file_names=file_names, stored=lambda: _stored_fingerprint(layout))

    action, header, state = dist.agree(check) if dist is not None else check()
    if action == "complete":
        result.skipped_complete = True
        result.out, result.sidecar = layout.out, layout.sidecar
        with contextlib.suppress(OSError, ValueError, KeyError):
            summary = json.loads(layout.sidecar.read_text(encoding="utf-8"))["summary"]
            result.total_failed = summary["failed"]
            result.rows = summary["rows"]
        return result
    result.resumed = state.videos if state is not None else 0
    if on_start is not None:
        on_start(result.resumed)

    shard_error: tuple[str, str] | None = None
    if state is not None and state.done is not None:  # this shard finished before: only the merge is left
        result.ok, result.failed, result.rows = state.ok, state.failed, state.rows
    else:
        try:
            _run_shard(model, paths, layout, sh, opt, header, state, errors, file_names, autocast_dtype, on_video,
                       result)
        except TokShiftError as e:
            if dist is None:
                raise
            shard_error = (type(e).__name__, str(e))
        except Exception as e:
            if dist is None:
                raise
            shard_error = (type(e).__name__, f"{type(e).__name__}: {e}")

    if dist is not None:
        reports = dist.gather({"error": shard_error, "failed": result.failed})
        bad = [(r, rep["error"]) for r, rep in enumerate(reports) if rep["error"] is not None]
        if bad:
            r, (kind, msg) = bad[0]
            raise TokShiftError(f"rank {r} did not finish its shard ({msg}); its progress is saved: run the same "
                                "command again with --resume")
        if not dist.is_main:
            result.total_failed = sum(rep["failed"] for rep in reports)
            return result
    if not merge_here:
        return result
    merged = merge_shards(layout.out, out_dir=layout.out_dir, shards=sh.count, overwrite=True,
                          keep_parts=keep_parts, _layout=layout)
    result.merged = True
    result.out, result.sidecar = merged.out, merged.sidecar
    result.total_failed = merged.total_failed
    if dist is not None:
        result.rows = merged.rows
    return result


# --- merging ---------------------------------------------------------------------------------------------------


def merge_shards(out: str | os.PathLike | None = None, *, out_dir: str | os.PathLike | None = None, shards: int = 1,
                 overwrite: bool = False, keep_parts: bool = False, _layout: Layout | None = None) -> FeatureResult:
    """Join the complete part files of ``shards`` shards into the final output, in input order, streaming.

    Every shard must be complete and have the same fingerprint (model, options, input list). The final ``.npy``
    and sidecar appear atomically; the part files are removed afterwards unless ``keep_parts``.
    """
    layout = _layout or Layout(out, out_dir)
    states = complete_shards(layout, shards, FORMAT, overwrite=overwrite)
    parts = [Shard(i, shards) for i in range(shards)]
    first = states[0].header
    rpaths = [layout.rows_path(sh) for sh in parts]
    for rp, st in zip(rpaths, states):
        if rp is not None and (not rp.exists() or rp.stat().st_size < st.done["end"]):
            raise UsageError(f"{rp}: missing or shorter than its journal says; run that shard again with --resume")

    meta = first["meta"]
    width = int(first["width"])
    dtype = np.dtype(STORE_DTYPES[first["dtype"]])
    total_rows = sum(st.done["rows"] for st in states)
    total_videos = int(meta["inputs"]["count"])
    n_ok = sum(st.done["ok"] for st in states)
    n_failed = sum(st.done["failed"] for st in states)
    per = meta["per"]
    sidecar_head = {**meta, "fingerprint": first["fingerprint"], "shape": [total_rows, width],
                    "file": layout.out.name if layout.out is not None else None,
                    "summary": {"videos": total_videos, "ok": n_ok, "failed": n_failed, "rows": total_rows}}

    failures: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        npy = stack.enter_context(atomic_open(layout.out, "wb")) if layout.out is not None else None
        side = stack.enter_context(atomic_open(layout.sidecar, "w"))
        if npy is not None:
            np.lib.format.write_array_header_1_0(
                npy, {"descr": dtype.str, "fortran_order": False, "shape": (total_rows, width)})
        head = json.dumps(sidecar_head, indent=2, ensure_ascii=False, allow_nan=False)
        side.write(head[:-2] + ',\n  "rows": [')  # the streamed rows go in before the closing brace
        rows_in = [stack.enter_context(open(rp, "rb")) if rp is not None else None for rp in rpaths]
        row = 0
        sep = "\n"
        row_bytes = width * dtype.itemsize
        for rec in merged_records(states, total_videos):
            gi, s = rec["i"], rec["i"] % shards
            if rec["error"] is not None:
                failures.append({"video": display_path(rec["video"]), "video_index": gi, "error": rec["error"]})
                continue
            if npy is not None:
                left = rec["rows"] * row_bytes
                while left:
                    chunk = rows_in[s].read(min(left, _COPY_CHUNK))
                    if not chunk:
                        raise UsageError(f"{rpaths[s]}: ends early; run that shard again with --resume")
                    npy.write(chunk)
                    left -= len(chunk)
            for k, entry in enumerate(_row_meta(rec, per)):
                entry = {"row": row, **entry}
                if layout.mode == "dir":
                    entry["file"], entry["file_row"] = rec["file"], k
                side.write(sep + "    " + json.dumps(entry, ensure_ascii=False, allow_nan=False))
                sep = ",\n"
                row += 1
        if row != total_rows:
            raise UsageError(f"the journals promise {total_rows} rows but describe {row}: the part files are damaged")
        side.write("\n  ],\n  \"failures\": [")
        side.write(",".join("\n    " + json.dumps(f, ensure_ascii=False) for f in failures))
        side.write("\n  ]\n}\n" if failures else "]\n}\n")
    if not keep_parts:
        for sh in parts:
            remove_parts(layout, sh)
    return FeatureResult(out=layout.out, out_dir=layout.out_dir, sidecar=layout.sidecar, shard=Shard(), merged=True,
                         videos=total_videos, ok=n_ok, failed=n_failed, rows=total_rows, width=width,
                         total_videos=total_videos, total_failed=n_failed)
