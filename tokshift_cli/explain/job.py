"""`tokshift explain` over many videos: the same frames as ``classify`` (decode, sampling and views through
:mod:`tokshift_cli.engine`), the prediction from its fast path, then per video: relevance maps, per-frame
importance, faithfulness curves, the contact sheet, the overlay video and (optionally) the maps as ``.npy``.

Files in ``--out DIR``: per input ``<stem>.png``, ``<stem>.mp4`` and with ``save_arrays`` ``<stem>.npy``
(``[views, frames, h, w]`` float32, the raw relevance per patch, in the order of the JSON's ``views``); and
``explain.json``, the document of the whole run. Each per-video file is written atomically before the video's
record is journalled (:mod:`tokshift_cli.jobs`: ``explain.json.part.journal``), so ``resume`` goes on after the
last journalled video. ``explain.json`` records the run's fingerprint (weights, config, options, device type,
inputs and each local file's size), so a resume that finds it complete compares it first
(``preflight(stored=...)``): the resume contract, docs/reliability.md.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .. import __version__
from ..engine import (AGGREGATES, PreparedVideo, ViewSpec, aggregate_scores, decode_videos, default_batch_size,
                      run_views)
from ..errors import OutputExistsError, UsageError, VideoError
from ..jobs import JobFiles, JournalWriter, Shard, file_identity, inputs_hash, iter_records, model_info, preflight, \
    remove_parts, weights_hash
from ..outputs import atomic_open, atomic_write_text, to_json, unique_stems
from ..video.sampling import Views, check_sampling
from .faithfulness import MASK, OCCLUSION, deletion_insertion, frame_importance, probabilities
from .pictures import contact_sheet, overlay_video
from .relevance import relevance

__all__ = ["ExplainOptions", "ExplainFiles", "explain_videos", "resolve_target", "check_torch_model", "FORMAT",
           "EXPLAIN_METHODS"]

FORMAT = "tokshift-explain"
FORMAT_VERSION = 1
#: The CLI's --method choices (gradxinput stays a library baseline).
EXPLAIN_METHODS = ("chefer", "rollout")
SHIFT_NOTE = ("relevance is joint over all frames' tokens; each token shift is a mixing step that moves the [CLS] "
              "relevance share of the channels a frame took from t-1/t+1 to those frames (share: clamp(grad * "
              "activation, 0) of the shifted [CLS] for chefer, the channel count for rollout)")


@dataclass
class ExplainOptions:
    views: Views | str = "1x1"
    sampling: str = "centred"
    aggregate: str = "probs"
    stream: int | None = None
    target: str = "top1"  #: top1, a label, or a class index
    method: str = "chefer"
    steps: int = 8  #: deletion/insertion intervals
    random_orders: int = 3
    batch_size: int | None = None
    workers: int = 2
    decoder: str = "auto"
    timeout: float | None = None
    save_arrays: bool = False
    max_rows: int = 6  #: views drawn on the contact sheet

    def validate(self) -> "ExplainOptions":
        self.views = Views.parse(self.views)
        self.sampling = check_sampling(self.sampling)
        if self.method not in EXPLAIN_METHODS:
            raise UsageError(f"--method {self.method!r}: choose {' or '.join(EXPLAIN_METHODS)}")
        if self.aggregate not in AGGREGATES:
            raise UsageError(f"--aggregate {self.aggregate!r}: choose probs or logits")
        if self.steps < 2:
            raise UsageError(f"--steps {self.steps}: need at least 2")
        if self.random_orders < 1:
            raise UsageError(f"--random-orders {self.random_orders}: need at least 1")
        return self

    def fingerprint(self) -> dict[str, Any]:
        d = asdict(self)
        d["views"] = str(self.views)
        for k in ("workers", "timeout", "max_rows"):  # batch_size: resolved in the job's header
            d.pop(k)
        return d


def resolve_target(target: str, labels: Sequence[str]) -> int | None:
    """``top1`` -> None (each video's top class); a label name or a class index -> that index; else UsageError."""
    if target == "top1":
        return None
    if target in labels:
        return list(labels).index(target)
    if target.strip().lstrip("-").isdigit():
        i = int(target)
        if 0 <= i < len(labels):
            return i
        raise UsageError(f"--target {target}: the model has classes 0..{len(labels) - 1}")
    raise UsageError(f"--target {target!r}: not top1, a class index or one of the model's labels")


def check_torch_model(ref: str) -> None:
    """An exported folder (ONNX / OpenVINO files, no model.safetensors) is refused in one line that names the
    torch model it came from, where its config.json says so."""
    folder = Path(ref)
    if not folder.is_dir() or (folder / "model.safetensors").exists() or not (folder / "config.json").exists():
        return
    exported = [p.name for p in folder.iterdir() if p.suffix in (".onnx", ".xml", ".bin")]
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    export = cfg.get("export") if isinstance(cfg.get("export"), dict) else {}
    src = cfg.get("source") if isinstance(cfg.get("source"), dict) else {}
    source = export.get("source_model") or export.get("source") or cfg.get("source_model") or src.get("model")
    if exported or export:
        hint = f"pass --model {source}" if isinstance(source, str) and source else "pass the torch model folder"
        raise UsageError(f"--model {ref}: an exported runtime folder; explain needs the torch model (gradients "
                         f"and attention weights): {hint}")


class ExplainFiles(JobFiles):
    """``DIR/explain.json`` (final), its journal, and the per-video files."""

    def __init__(self, out: Path, paths: Sequence[str], save_arrays: bool):
        self.out = Path(out)
        self.stems = unique_stems(paths, reserved=["explain"])
        self.save_arrays = save_arrays
        super().__init__(self.out / "explain.json", [self.out / "explain.json"])

    def of(self, k: int) -> dict[str, Path]:
        s = self.stems[k]
        d = {"sheet": self.out / f"{s}.png", "video": self.out / f"{s}.mp4"}
        if self.save_arrays:
            d["arrays"] = self.out / f"{s}.npy"
        return d

    def per_input_files(self, file_names: Sequence[str] | None) -> list[Path]:
        return [p for k in range(len(self.stems)) for p in self.of(k).values()]


def _header(model: torch.nn.Module, paths: Sequence[str], opt: ExplainOptions) -> dict[str, Any]:
    config = model.config.to_dict()
    config.pop("tool_version", None)
    config.pop("id2label", None)
    device = next(model.parameters()).device
    options = {**opt.fingerprint(), "batch_size": opt.batch_size or default_batch_size(device),
               "device": device.type}  # relevance chunks are not padded: the batch size may move the last digits
    fingerprint = {"tool_version": __version__, "options": options, "weights_sha256": weights_hash(model),
                   "config": config, "inputs": {"count": len(paths), "sha256": inputs_hash(paths),
                                                "identity": file_identity(paths)}}
    return {"journal": FORMAT, "version": FORMAT_VERSION, "shard": [0, 1], "fingerprint": fingerprint}


def _stored_fingerprint(final: Path) -> dict[str, Any] | None:
    """The resume fingerprint a finished ``explain.json`` records (None: none)."""
    doc = json.loads(final.read_text(encoding="utf-8"))
    return doc.get("fingerprint") if isinstance(doc, dict) else None


def _keep_views(stream: Iterator[PreparedVideo], kept: dict[int, torch.Tensor]) -> Iterator[PreparedVideo]:
    """Pass videos through, remembering their views (run_views frees them once the model has them)."""
    for v in stream:
        if v.error is None:
            kept[v.index] = v.views
        yield v


def _pixels(views: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised views ``[V, T, 3, S, S]`` -> uint8 ``[V, T, S, S, 3]``."""
    m = torch.tensor(mean).view(1, 1, 3, 1, 1)
    s = torch.tensor(std).view(1, 1, 3, 1, 1)
    x = ((views.float().cpu() * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 1, 3, 4, 2).numpy()


def _explain_one(model: torch.nn.Module, v: PreparedVideo, views: torch.Tensor, probs: torch.Tensor,
                 target: int | None, opt: ExplainOptions, files: dict[str, Path], labels: Sequence[str],
                 untrained: bool) -> dict[str, Any]:
    cfg = model.config
    t0 = time.perf_counter()
    tgt = int(probs.argmax()) if target is None else target
    crops = opt.views.crops
    nv = views.shape[0]
    bs = opt.batch_size or default_batch_size(views.device)
    maps = torch.cat([relevance(model, views[i:i + bs], tgt, method=opt.method).maps for i in range(0, nv, bs)])
    relevance_s = time.perf_counter() - t0
    base = probabilities(model, views, tgt, batch_size=bs)
    out_views, importance = [], []
    for i in range(nv):
        imp = frame_importance(model, views[i], tgt, float(base[i]), batch_size=bs)
        curves = deletion_insertion(model, views[i], maps[i], tgt, steps=opt.steps, random_orders=opt.random_orders,
                                    batch_size=bs).to_dict()
        u = int(v.clip_of_view[i])
        fm = maps[i].sum((1, 2))
        out_views.append({"clip": u, "crop": i % crops, "frame_indices": v.unique_indices[u].tolist(),
                          "probability": round(float(base[i]), 6),
                          "frame_importance": np.round(imp, 6).tolist(),
                          "frame_relevance": np.round((fm / fm.sum().clamp(min=1e-30)).numpy(), 6).tolist(),
                          "faithfulness": curves})
        importance.append(imp)
    keys = ("deletion_area", "random_deletion_area", "insertion_area", "random_insertion_area")
    summary = {k: round(float(np.mean([ov["faithfulness"][k] for ov in out_views])), 5) for k in keys}
    d, rd, i_, ri = (summary[k] for k in keys)
    summary["deletion_ratio"] = round(d / rd, 4) if rd > 0 else None
    summary["insertion_ratio"] = round(i_ / ri, 4) if ri > 0 else None
    summary["beats_random"] = bool(d < rd and i_ > ri)
    summary["verdict"] = ("beats random orders on deletion and insertion" if summary["beats_random"] else
                          "does NOT beat random orders on " + " and ".join(
                              w for w, bad in (("deletion", d >= rd), ("insertion", i_ <= ri)) if bad)
                          + ": do not trust this map for this video")
    p = float(probs[tgt])
    label = labels[tgt]
    # pictures
    rows = min(nv, opt.max_rows)
    title = (f"{Path(v.path).name}: {label} ({p:.1%}) - {opt.method}"
             + ("" if target is None else " (target)") + ("  [UNTRAINED]" if untrained else ""))
    names = [f"clip {int(v.clip_of_view[i])} crop {i % crops}" for i in range(rows)]
    frame_names = [[f"#{fi}" for fi in v.unique_indices[int(v.clip_of_view[i])].tolist()] for i in range(rows)]
    contact_sheet(files["sheet"], _pixels(views[:rows], cfg.mean, cfg.std), maps[:rows].numpy(),
                  np.stack(importance[:rows]), title=title, untrained=untrained, row_names=names,
                  frame_names=frame_names)
    frame_maps: dict[int, np.ndarray] = {}
    for u in range(v.unique_indices.shape[0]):
        for j, fi in enumerate(v.unique_indices[u].tolist()):
            m = maps[u * crops:(u + 1) * crops, j].numpy()
            frame_maps[fi] = m if fi not in frame_maps else np.maximum(frame_maps[fi], m)
    overlay_video(v.path, files["video"], frame_maps, crops=crops, crop_size=cfg.crop_size,
                  video_info=v.meta or {})
    if "arrays" in files:
        with atomic_open(files["arrays"], "wb") as f:
            np.save(f, maps.numpy().astype(np.float32), allow_pickle=False)
    top = probs.topk(min(3, probs.numel()))
    return {"video": v.path, "error": None,
            "target": {"index": tgt, "label": label, "probability": round(p, 6),
                       "rule": "top1" if target is None else "given"},
            "top_k": [{"label": labels[int(j)], "index": int(j), "probability": round(float(q), 6)}
                      for q, j in zip(top.values.tolist(), top.indices.tolist())],
            "frame_indices": v.frame_indices.tolist(), "timestamps": np.round(v.timestamps, 4).tolist(),
            "video_info": v.meta,
            "views": out_views, "faithfulness": summary,
            "files": {k: p_.name for k, p_ in files.items()},
            "arrays": ({"file": files["arrays"].name, "shape": list(maps.shape), "dtype": "float32",
                        "axes": ["view", "frame", "patch_row", "patch_col"]} if "arrays" in files else None),
            "timings": {"decode_s": round(v.decode_s, 4), "relevance_s": round(relevance_s, 4),
                        "explain_s": round(time.perf_counter() - t0, 4)}}


@dataclass
class ExplainRun:
    doc: dict[str, Any] = field(default_factory=dict)
    failed: int = 0
    skipped_complete: bool = False
    resumed: int = 0


def explain_videos(model: torch.nn.Module, paths: Sequence[str], out: str | Path, options: ExplainOptions, *,
                   errors: dict[int, str] | None = None, resume: bool = False, overwrite: bool = False,
                   on_result: Callable[[dict[str, Any]], None] | None = None) -> ExplainRun:
    """Explain every video of ``paths`` into the folder ``out`` (module docstring); returns the run's document."""
    opt = options.validate()
    cfg = model.config
    target = resolve_target(opt.target, cfg.labels)
    paths = [str(p) for p in paths]
    errors = dict(errors or {})
    files = ExplainFiles(Path(out), paths, opt.save_arrays)
    shard = Shard()
    final = files.finals()[0]
    action, header, state = preflight(files, shard, lambda: _header(model, paths, opt), kind=FORMAT,
                                      n_inputs=len(paths), resume=resume, overwrite=overwrite, will_merge=True,
                                      file_names=None,
                                      stored=lambda: _stored_fingerprint(final))
    run = ExplainRun()
    if action == "complete":  # preflight compared explain.json's fingerprint with this run's: the same settings
        old = json.loads(final.read_text(encoding="utf-8"))
        run.doc, run.skipped_complete = old, True
        run.failed = sum(r["error"] is not None for r in old["results"])
        return run
    if action == "fresh" and not overwrite:
        for p in files.per_input_files(None):
            if p.exists():
                raise OutputExistsError(f"{p}: exists already; pass --overwrite to replace it")
    done = list(iter_records(files.journal_path(shard))) if state is not None and state.videos else []
    run.resumed = len(done)
    results: list[dict[str, Any]] = []
    for rec in done:
        rec = {k: v for k, v in rec.items() if k not in ("i", "rows", "end")}
        results.append(rec)
        if on_result is not None:
            on_result(rec)
    device = next(model.parameters()).device
    bs = opt.batch_size or default_batch_size(device)
    spec = ViewSpec.for_model(cfg, opt.views, sampling=opt.sampling, stream=opt.stream)
    todo = list(range(len(done), len(paths)))
    writer = JournalWriter(files, shard, header, state, commit_interval=0.0)
    try:
        kept: dict[int, torch.Tensor] = {}
        stream = decode_videos([paths[k] for k in todo], spec, device=device, decoder=opt.decoder,
                               workers=opt.workers, timeout=opt.timeout,
                               errors={j: errors[k] for j, k in enumerate(todo) if k in errors}, indices=todo,
                               batch_size=bs)
        for o in run_views(model, _keep_views(stream, kept), batch_size=bs, pad_batches=True):
            v = o.video
            k = v.index
            views = kept.pop(k, None)
            if v.error is not None:
                rec = {"video": paths[k], "error": v.error}
            else:
                try:
                    probs = aggregate_scores(o, opt.aggregate)
                    rec = _explain_one(model, v, views, probs, target, opt, files.of(k), cfg.labels,
                                       bool(cfg.untrained))
                except VideoError as e:  # the overlay video could not read the file again: this video's failure
                    rec = {"video": paths[k], "error": e.reason}
                except (RuntimeError, ValueError, MemoryError) as e:  # one video's failure never loses the others
                    rec = {"video": paths[k], "error": f"{type(e).__name__}: {e}"}
            writer.add(k, paths[k], dict(rec))
            results.append(rec)
            if on_result is not None:
                on_result(rec)
        writer.finish()
    finally:
        writer.close()
    run.failed = sum(r["error"] is not None for r in results)
    run.doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "tool_version": __version__,
               "model": model_info(model), "untrained": bool(cfg.untrained), "method": opt.method,
               "shift": SHIFT_NOTE if getattr(model, "shift", False) else "no token shift (plain video ViT)",
               "frame_start": ("each frame's [CLS] starts with its share of the positive target margins "
                               "logit_t[target] - mean_k logit_t[k] (uniform where none is positive)"),
               "target": opt.target, "views": str(opt.views), "sampling": opt.sampling, "aggregate": opt.aggregate,
               "frames": cfg.num_frames, "stride": cfg.frame_stride, "crop_size": cfg.crop_size,
               "patch_grid": [cfg.img_size // cfg.patch_size] * 2, "dtype": "float32",
               "occlusion": OCCLUSION, "mask": MASK, "steps": opt.steps, "random_orders": opt.random_orders,
               "device": str(device), "results": results, "fingerprint": header["fingerprint"]}
    atomic_write_text(final, to_json(run.doc) + "\n")
    remove_parts(files, shard)
    return run
