"""A loaded torch model -> the same model run by another runtime (:func:`runtime_model`), and the one place the
CLI turns ``--model``/``--runtime``/``--dtype`` into something the tasks run (:func:`load_for_run`)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import UsageError
from . import CHOICES, get_runtime
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


def load_for_run(ref: str, *, revision: str | None, hub_namespace: str | None, device: str,
                 dtype: str | None, runtime: str | None, precision: str | None = None) -> Any:
    """The model a command runs: ``ref`` resolved (an exported folder loads through its runtime), on
    ``runtime`` (``auto``: :mod:`.auto`; None: torch, or an exported folder's own) at ``dtype``. Torch models keep today's path (bfloat16 weights cast
    once; ``dtype`` None: float32 weights, the task may autocast). ``precision`` (default ``dtype``) is what a
    non-torch runtime runs. Every result has ``runtime`` and ``precision`` attributes for the JSON."""
    from ..engine import resolve_device, resolve_dtype
    from ..models.tokshift import cast_for_inference
    from ..models.weights import load_model
    from .export import is_export_folder, load_exported

    if runtime is not None and runtime not in CHOICES:
        raise UsageError(f"--runtime {runtime!r}: choose one of {', '.join(CHOICES)}")
    precision = precision_of(precision or dtype)
    if is_export_folder(ref):
        if revision is not None:
            raise UsageError(f"{ref!r} is an exported folder: --revision only applies to Hub and zoo models")
        return load_exported(ref, runtime=runtime or "auto", precision=precision)
    dev = resolve_device(device)
    net = load_model(ref, device=dev, revision=revision, hub_namespace=hub_namespace)
    runtime = runtime or "torch"
    if runtime == "auto":
        from .auto import choose

        runtime = choose(net, precision) if dev.type == "cpu" else "torch"
        net.auto = getattr(net, "auto_choice", None)
    if runtime != "torch":
        out = runtime_model(net, runtime, precision)
        out.auto = getattr(net, "auto_choice", None)
        return out
    reduced = resolve_dtype(dtype, dev) if dtype is not None else None
    net = cast_for_inference(net, reduced) if reduced is not None else net
    net.runtime, net.precision = "torch", precision
    return net
