"""Accuracy of a model on a labelled video set, scored exactly as ``classify`` scores each video.

::

    data = load_labelled("val.csv", root="videos/")
    result = evaluate(model, data, EvalOptions(views=Views(10, 3), sampling="authors", aggregate="logits"),
                      out="report.json")
    result.report["metrics"]["top1"]

Each video goes through :func:`tokshift_cli.engine.score_videos` and :func:`~tokshift_cli.engine.video_result`,
the code ``classify`` runs (same sampling, views, identical-clip weighting, aggregation, batch padding), so a
video's top-k in the report is what ``classify --json`` gives for it with the same options, bit for bit. Every
video's outcome is journalled as it is scored (:mod:`tokshift_cli.jobs`: fsync'ed, ``--resume`` after ``kill -9``,
``--shard I/N`` and torchrun with a merge); the report is built from the journal alone, so an interrupted and
resumed run, a sharded run and a plain run write the same bytes. Metrics: :mod:`tokshift_cli.evaluate.metrics`.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .. import __version__
from .datasets import LabelledSet, match_labels, read_label_map
from ..errors import TokShiftError, UsageError
from ..jobs import (DistContext, JobFiles, JournalState, JournalWriter, Shard, complete_shards, file_identity,
                    inputs_hash, merged_records, model_info, preflight, remove_parts, weights_hash)
from .metrics import Outcome, compute_metrics
from ..outputs import atomic_open, atomic_write_text, display_path, to_json
from ..video.sampling import Views

if TYPE_CHECKING:
    import torch

__all__ = ["EvalOptions", "EvalResult", "evaluate", "merge_evaluation", "ReportFiles", "FORMAT"]

FORMAT = "tokshift-evaluation"
FORMAT_VERSION = 1


@dataclass
class EvalOptions:
    """How videos are scored (as ``classify``'s options) and counted. Everything that changes the report is in
    the resume fingerprint."""

    views: Views = field(default_factory=lambda: Views(1, 1))
    sampling: str = "centred"
    aggregate: str = "probs"
    top_k: int = 5
    batch_size: int | None = None  #: views per model call (None: 2 on a CPU, 8 on a GPU)
    workers: int = 2
    decoder: str = "auto"
    stream: int | None = None
    dtype: str = "float32"
    timeout: float | None = None
    failed_as_wrong: bool = False  #: count videos that could not be scored as wrong (default: apart)
    label_map: dict[str, str] | None = None

    def classify_options(self) -> Any:
        from ..engine import ClassifyOptions

        return ClassifyOptions(views=Views.parse(self.views), top_k=self.top_k, batch_size=self.batch_size,
                               workers=self.workers, decoder=self.decoder, dtype=self.dtype, timeout=self.timeout,
                               sampling=self.sampling, aggregate=self.aggregate, stream=self.stream)

    def validate(self, device: Any = None) -> "EvalOptions":
        """Every option checked before any work (:meth:`tokshift_cli.engine.ClassifyOptions.validate`)."""
        checked = self.classify_options().validate(device)
        self.views, self.sampling = checked.views, checked.sampling
        return self


@dataclass
class EvalResult:
    """What :func:`evaluate` did: the report (None when only a shard ran), and the counts of this call."""

    report: dict[str, Any] | None
    shard: Shard
    videos: int = 0  #: inputs of this shard
    resumed: int = 0  #: videos an interrupted run had scored already
    failed: int = 0  #: failures in this shard
    wall_s: float = 0.0
    skipped_complete: bool = False


class ReportFiles(JobFiles):
    """``--out report.json`` and its part files (``report.json.part.journal``); without ``--out`` a temporary
    folder holds the journal (no resume)."""

    def __init__(self, out: str | os.PathLike | None):
        self.out = Path(out) if out is not None else None
        if self.out is not None and self.out.is_dir():
            from ..errors import OutputExistsError

            raise OutputExistsError(f"--out {self.out}: is a folder; give a file name, e.g. {self.out / 'report.json'}")
        self._tmp = None if self.out is not None else tempfile.mkdtemp(prefix="tokshift-evaluate-")
        stem = self.out if self.out is not None else Path(self._tmp) / "report.json"
        super().__init__(stem, [self.out] if self.out is not None else [])

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


def _stored_fingerprint(files: ReportFiles) -> dict[str, Any] | None:
    """The resume fingerprint a finished report records (None: none)."""
    import json

    return json.loads(files.out.read_text(encoding="utf-8")).get("fingerprint")


# --- the run ---------------------------------------------------------------------------------------------------


def _check_model_labels(model: "torch.nn.Module") -> None:
    cfg = model.config
    if cfg.label_order == "unknown":
        raise UsageError("the model's class order is unknown (config.json: label_order \"unknown\"), so its outputs "
                         "cannot be matched to label names; convert the checkpoint again with the order it was "
                         "trained with: tokshift convert CHECKPOINT --labels FILE --out DIR")


def _header(model: "torch.nn.Module", data: LabelledSet, label_index: dict[str, int], opt: EvalOptions,
            shard: Shard) -> dict[str, Any]:
    device = next(model.parameters()).device
    from ..engine import default_batch_size

    info = model_info(model)
    info["weights_sha256"] = weights_hash(model)
    num_classes = int(model.config.num_classes)
    options = {"views": str(Views.parse(opt.views)), "sampling": opt.sampling, "aggregate": opt.aggregate,
               "top_k": min(opt.top_k, num_classes), "batch_size": opt.batch_size or default_batch_size(device),
               "dtype": opt.dtype,
               "decoder": opt.decoder, "stream": opt.stream, "device": device.type,
               "failed_as_wrong": opt.failed_as_wrong}
    if opt.top_k > num_classes:  # top-k of k >= C classes is right by definition: capped, and said
        options["top_k_asked"] = opt.top_k
    pairs = [f"{p}\t{it.label}" for p, it in zip(data.paths, data.items)]
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__, "model": info,
            "data": {"source": display_path(data.source), "format": data.format,
                     "root": display_path(data.root) if data.root else None, "videos": len(data),
                     "sha256": inputs_hash(pairs)},
            "options": options, "label_index": label_index}
    fingerprint = {"tool_version": __version__, "weights_sha256": info["weights_sha256"], "options": options,
                   "data": {**meta["data"], "identity": file_identity(data.paths)}, "label_index": label_index}
    return {"journal": FORMAT, "version": FORMAT_VERSION, "shard": [shard.index, shard.count],
            "fingerprint": fingerprint, "meta": meta}


def evaluate(model: "torch.nn.Module", data: LabelledSet, options: EvalOptions | None = None, *,
             out: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
             shard: Shard | str | None = None, dist: DistContext | None = None,
             predictions: str | os.PathLike | None = None, plot: str | os.PathLike | None = None,
             on_video: Callable[[dict[str, Any]], None] | None = None,
             on_start: Callable[[int, int], None] | None = None) -> EvalResult:
    """Score ``data`` with ``model`` and build the report (module docstring). ``out``: the report JSON (and the
    place of the journal: needed for ``resume`` and ``shard``). ``shard`` ``"i/n"``: run that shard only (join
    with :func:`merge_evaluation`); ``dist``: torchrun, rank 0 merges. ``predictions``: a CSV with one row per
    video; ``plot``: a confusion-matrix PNG. ``on_video(record)`` as each video is scored (progress);
    ``on_start(done_before, total)`` once, after a resume is planned. Raises :class:`UsageError` before any
    decoding for labels that match no model label or a model whose class order is unknown."""
    opt = (options or EvalOptions()).validate(next(model.parameters()).device)
    _check_model_labels(model)
    label_index = match_labels(data, model.config.labels, label_map=opt.label_map)
    sh = dist.shard if dist is not None else Shard.parse(shard)
    if (resume or sh.count > 1) and out is None:
        raise UsageError("--resume and --shard need --out REPORT.json (the progress record is kept beside it)")
    files = ReportFiles(out)
    merge_here = sh.count == 1 or dist is not None
    paths = data.paths
    result = EvalResult(report=None, shard=sh, videos=len(sh.positions(len(paths))))
    t0 = time.perf_counter()
    try:
        def check() -> tuple[str, dict[str, Any], JournalState | None]:
            return preflight(files, sh, lambda: _header(model, data, label_index, opt, sh), kind=FORMAT,
                             n_inputs=len(paths), resume=resume, overwrite=overwrite, will_merge=merge_here,
                             stored=lambda: _stored_fingerprint(files))

        action, header, state = dist.agree(check) if dist is not None else check()
        if action == "complete":
            result.skipped_complete = True
            import json

            result.report = json.loads(Path(out).read_text(encoding="utf-8"))
            return result
        result.resumed = state.videos if state is not None else 0
        if on_start is not None:
            on_start(result.resumed, result.videos)
        shard_error = None
        if state is None or state.done is None:
            try:
                _run_shard(model, data, label_index, files, sh, opt, header, state, on_video, result)
            except TokShiftError as e:
                if dist is None:
                    raise
                shard_error = (type(e).__name__, str(e))
        if dist is not None:
            reports = dist.gather({"error": shard_error})
            bad = [(r, rep["error"]) for r, rep in enumerate(reports) if rep["error"] is not None]
            if bad:
                raise TokShiftError(f"rank {bad[0][0]} did not finish its shard ({bad[0][1][1]}); its progress is "
                                    "saved: run the same command again with --resume")
            if not dist.is_main:
                return result
        if merge_here:
            result.report = merge_evaluation(files, sh.count, overwrite=True, predictions=predictions, plot=plot,
                                             labels=model.config.labels)
        return result
    finally:
        result.wall_s = time.perf_counter() - t0
        files.cleanup()


def _run_shard(model: "torch.nn.Module", data: LabelledSet, label_index: dict[str, int], files: ReportFiles,
               shard: Shard, opt: EvalOptions, header: dict[str, Any], state: JournalState | None,
               on_video: Callable[[dict[str, Any]], None] | None, result: EvalResult) -> None:
    from ..engine import score_videos, video_result

    positions = list(shard.positions(len(data)))
    todo = positions[state.videos if state is not None else 0:]
    writer = JournalWriter(files, shard, header, state)
    cfg = model.config
    top_k = max(1, min(opt.top_k, cfg.num_classes))
    items = data.items
    errors = {k: items[gi].error for k, gi in enumerate(todo) if items[gi].error}
    try:
        for out in score_videos(model, [items[gi].path for gi in todo], opt.classify_options(), errors=errors,
                                indices=todo):
            gi = out.video.index
            r, _ = video_result(out, cfg.labels, top_k=top_k, aggregate=opt.aggregate)
            item = items[gi]
            record = {"label": item.label, "label_index": label_index[item.label], "error": r["error"],
                      "top_k": r["top_k"], "decoder": r["decoder"], "frame_indices": r["frame_indices"]}
            writer.add(gi, item.path, record)
            result.failed += r["error"] is not None
            if on_video is not None:
                on_video(record)
        writer.finish()
    finally:
        writer.close()


# --- the report ------------------------------------------------------------------------------------------------


def merge_evaluation(files: ReportFiles | str | os.PathLike, shards: int = 1, *, overwrite: bool = False,
                     predictions: str | os.PathLike | None = None, plot: str | os.PathLike | None = None,
                     labels: Sequence[str] | None = None, keep_parts: bool = False) -> dict[str, Any]:
    """Build the report from the complete journals of ``shards`` shards (input order), write it (``--out``)
    atomically with the predictions CSV and the confusion plot when asked, remove the part files; return it."""
    files = files if isinstance(files, ReportFiles) else ReportFiles(files)
    states = complete_shards(files, shards, FORMAT, overwrite=overwrite)
    meta = states[0].header["meta"]
    records = list(merged_records(states, int(meta["data"]["videos"])))
    if labels is None:
        labels = _labels_from(records, meta)
    report = build_report(meta, records, labels)
    report["fingerprint"] = states[0].header["fingerprint"]  # what a later --resume compares against
    if files.out is not None:
        atomic_write_text(files.out, to_json(report) + "\n")
    if predictions is not None:
        write_predictions(predictions, report)
    if plot is not None:
        plot_confusion(plot, report)
    if not keep_parts:
        for i in range(shards):
            remove_parts(files, Shard(i, shards))
    return report


def _labels_from(records: Iterable[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Class names by index from what the journal holds (``tokshift merge`` has no model loaded)."""
    names: dict[int, str] = {}
    for rec in records:
        for e in rec.get("top_k") or []:
            names[int(e["index"])] = e["label"]
    for label, idx in meta["label_index"].items():
        names.setdefault(int(idx), label)
    n = max(names) + 1 if names else 0
    return [names.get(i, f"class_{i}") for i in range(n)]


def build_report(meta: dict[str, Any], records: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """The report document: what ran, the counts and metrics, per class, the confusion matrix, every video."""
    opt = meta["options"]
    k = int(opt["top_k"])
    outcomes = [Outcome(int(r["label_index"]), None if r["error"] else tuple(int(e["index"]) for e in r["top_k"]))
                for r in records]
    m = compute_metrics(outcomes, labels, k=k, failed_as_wrong=bool(opt["failed_as_wrong"]))
    videos = []
    for r in records:
        pred = r["top_k"][0]["label"] if r["top_k"] else None
        videos.append({"video": display_path(r["video"]), "label": r["label"], "label_index": r["label_index"],
                       "model_label": labels[int(r["label_index"])], "prediction": pred,
                       "correct": (r["top_k"][0]["index"] == r["label_index"]) if r["top_k"] else None,
                       "top_k": r["top_k"], "error": r["error"]})
    notes = []
    if opt.get("top_k_asked"):
        notes.append(f"top-{opt['top_k_asked']} asked, top-{k} reported: the model has {len(labels)} classes, so "
                     f"top-{k} counts every scored video right")
    return {"format": meta["format"], "format_version": meta["format_version"],
            "tool_version": meta["tool_version"], "model": meta["model"], "data": meta["data"],
            "options": opt, **m, **({"notes": notes} if notes else {}), "videos": videos}


def write_predictions(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """One CSV row per video: path, true label, top-k labels and probabilities, correct@1, error."""
    k = int(report["options"]["top_k"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["video", "label", "correct_top1", *[c for i in range(1, k + 1) for c in (f"top{i}", f"p{i}")],
                "error"])
    for v in report["videos"]:
        tk = v["top_k"] or []
        cells = [c for i in range(k) for c in ((tk[i]["label"], f"{tk[i]['probability']:.6f}") if i < len(tk)
                                               else ("", ""))]
        w.writerow([v["video"], v["label"], "" if v["correct"] is None else int(v["correct"]), *cells,
                    v["error"] or ""])
    atomic_write_text(path, buf.getvalue())


def plot_confusion(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """The confusion matrix as a PNG, rows normalised (each true class sums to 1): cell numbers up to 30
    classes, tick labels up to 80, a plain heat map beyond (readable at Kinetics' 400)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    conf = report["confusion"]
    mat = np.asarray(conf["matrix"], dtype=np.float64)
    names = conf["labels"]
    n = len(names)
    rows = mat.sum(1, keepdims=True)
    norm = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    side = min(24.0, max(5.0, 0.28 * n + 3))
    fig, ax = plt.subplots(figsize=(side, side * 0.9), dpi=100 if n <= 100 else 150)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 80:
        ax.set_xticks(range(n), names, rotation=90, fontsize=max(4, min(9, 500 // max(n, 1))))
        ax.set_yticks(range(n), names, fontsize=max(4, min(9, 500 // max(n, 1))))
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if mat[i, j]:
                    ax.text(j, i, f"{int(mat[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    met = report["metrics"]
    k = int(report["options"]["top_k"])

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.2f} %"

    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{n} classes, {report['counts']['scored']} videos: top-1 {pct(met['top1'])}, "
                 f"top-{k} {pct(met['top' + str(k)])}")
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def read_label_map_option(path: str | os.PathLike | None) -> dict[str, str] | None:
    """``--label-map FILE`` as a dict (None without the option)."""
    return read_label_map(path) if path is not None else None
