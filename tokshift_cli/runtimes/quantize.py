"""int8 with an accuracy gate: NNCF post-training quantization on the user's clips, checked on held-out ones.

``DATA`` is labelled videos as ``evaluate`` reads them (:func:`tokshift_cli.evaluate.datasets.load_labelled`). Every
``round(1 / holdout)``-th video is held out; the others are calibration clips, sampled and preprocessed as the model
samples them (2 clips per video, centre crop). NNCF ``quantize`` runs with ``model_type=TRANSFORMER`` (SmoothQuant
on the linear layers' inputs; softmax and layer norms stay float) and the patch embedding's convolution kept in
float: quantizing the pixels themselves cost 12.5 points of top-1 on a brightness task trained here
(docs/performance.md), keeping that one layer (~1 % of the FLOPs) float cost none. Then the torch float32 model and
the int8 network classify the held-out videos (1 clip, as ``classify``'s default): the export is refused when int8's
top-1 is more than ``max_drop`` points below float32's (:class:`~.check.ExportRefused`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import UsageError
from .base import Runtime

CALIBRATION_VIEWS = "2x1"


def quantize_gated(model: torch.nn.Module, rt: Runtime, src: Path, out: Path, data: str, *, max_drop: float,
                   holdout: float, workers: int = 1, progress: Callable[[str], None] | None = None
                   ) -> dict[str, Any]:
    """Quantize the float32 files in ``src`` into ``out`` and gate them; the report's ``int8`` section."""
    from ..evaluate.datasets import load_labelled, match_labels
    from .check import ExportRefused, as_logits, compare, decode_views

    say = progress or (lambda m: None)
    labelled = load_labelled(data)
    index = match_labels(labelled, model.config.labels)
    items = [it for it in labelled.items if it.error is None]
    every = max(2, round(1 / holdout)) if holdout > 0 else 0
    held = [it for i, it in enumerate(items) if every and i % every == every - 1]
    calib = [it for it in items if it not in held]
    if not held or not calib:
        raise UsageError(f"--calibrate {data}: {len(items)} readable videos; int8 needs some to calibrate and "
                         f"some held out (--holdout {holdout}) to check its accuracy")
    say(f"calibrating on {len(calib)} videos")
    batches = [v[i:i + 1].numpy().copy() for _, v, err in decode_views(model, [it.path for it in calib],
                                                                       CALIBRATION_VIEWS, workers=workers)
               if v is not None for i in range(v.shape[0])]
    if not batches:
        raise UsageError(f"--calibrate {data}: no calibration video could be decoded")
    import contextlib
    import io
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout: ours is the JSON's
        rt.quantize(src, batches, out)
    say(f"checking int8 on {len(held)} held-out videos")
    int8 = as_logits(rt.load(out, "int8"), model.head.float())
    decoded = [(p, v) for p, v, err in decode_views(model, [it.path for it in held], "1x1", workers=workers)
               if v is not None]
    label_of = {it.path: index[it.label] for it in held}
    f_ok = q_ok = same = 0
    for p, v in decoded:
        ref, got = compare(model, int8, v)
        pf, pq = int(ref.mean(0).argmax()), int(got.mean(0).argmax())
        f_ok += pf == label_of[p]
        q_ok += pq == label_of[p]
        same += pf == pq
    n = max(1, len(decoded))
    rep = {"method": "nncf.quantize(model_type=TRANSFORMER), patch embedding float", "calibration_videos": len(calib),
           "calibration_clips": len(batches), "holdout_videos": len(decoded),
           "top1_float32": 100.0 * f_ok / n, "top1_int8": 100.0 * q_ok / n, "agreement": 100.0 * same / n,
           "max_drop": float(max_drop)}
    rep["drop"] = rep["top1_float32"] - rep["top1_int8"]
    rep["passed"] = rep["drop"] <= max_drop
    if not rep["passed"]:
        raise ExportRefused(f"export refused: int8 top-1 {rep['top1_int8']:.1f} % vs float32 "
                            f"{rep['top1_float32']:.1f} % on {len(decoded)} held-out videos (agreement "
                            f"{rep['agreement']:.1f} %): {rep['drop']:.1f} points lost, more than --max-drop "
                            f"{max_drop:g}; nothing was written")
    return rep

