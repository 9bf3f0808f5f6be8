"""A loaded torch model -> the same model run by another runtime (:func:`runtime_model`)."""

from __future__ import annotations

import copy

import torch

from ..errors import UsageError
from . import get_runtime
from .base import RuntimeModel


def precision_of(dtype: str | None) -> str:
    """``--dtype`` spelling -> precision name (float32 | bfloat16 | float16 | int8)."""
    d = (dtype or "float32").lower()
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "auto": "float32"}.get(d, d)


def runtime_model(model: torch.nn.Module, runtime: str, precision: str = "float32", *,
                  threads: int | None = None) -> RuntimeModel:
    """``model`` (a float32 :class:`~tokshift_cli.models.tokshift.TokShiftViT` on the CPU) run by ``runtime`` at
    ``precision``: converted once per weights/frames/version (:mod:`.cache`), then compiled here."""
    from .cache import converted

    rt = get_runtime(runtime)
    if precision not in rt.precisions or precision == "int8":
        offered = ", ".join(p for p in rt.precisions if p != "int8")
        extra = " (int8 needs calibration: `tokshift export MODEL --format ... --precision int8 --calibrate DATA`)"
        raise UsageError(f"--runtime {runtime} runs {offered} here, not {precision}"
                         f"{extra if precision == 'int8' else ''}")
    rt.require()
    if next(model.parameters()).device.type != "cpu":
        raise UsageError(f"--runtime {runtime} runs on the CPU: use --device cpu (or --runtime torch)")
    folder, sha = converted(model, rt)
    network = rt.load(folder, precision, threads=threads)
    return RuntimeModel(network, copy.deepcopy(model.head), copy.deepcopy(model.fc_norm), model.config,
                        runtime=rt.name, precision=precision, graph_sha256=sha,
                        resolved=getattr(model, "resolved", None))
