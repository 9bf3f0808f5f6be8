"""The one place the CLI turns ``--model``/``--runtime``/``--dtype`` into something the tasks run
(:func:`load_for_run`): a torch model, the same model on another runtime (:func:`.build.runtime_model`), or an
exported folder (:func:`.export.load_exported`)."""

from __future__ import annotations

from typing import Any


from ..errors import UsageError
from . import CHOICES
from .build import precision_of, runtime_model


def load_for_run(ref: str, *, revision: str | None, hub_namespace: str | None, device: str,
                 dtype: str | None, runtime: str | None, precision: str | None = None, **hub: Any) -> Any:
    """The model a command runs: ``ref`` resolved (an exported folder loads through its runtime), on
    ``runtime`` (``auto``: :mod:`.auto`; None: torch, or an exported folder's own) at ``dtype``. Torch models go
    through :func:`~tokshift_cli.models.tokshift.cast_for_inference` (bfloat16: weights cast once; float32, also
    for ``dtype`` None where the task may autocast: linear layers on the faster GEMM). ``precision`` (default ``dtype``) is what a
    non-torch runtime runs. Every result has ``runtime`` and ``precision`` attributes for the JSON. ``hub``:
    ``cache_dir``, ``token``, ``local_files_only`` for huggingface_hub."""
    import torch

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
    net = load_model(ref, device=dev, revision=revision, hub_namespace=hub_namespace, **hub)
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
    net = cast_for_inference(net, reduced or torch.float32)  # float32: the faster GEMM (models.kernels)
    net.runtime = "torch"  # its precision: the weights' dtype (jobs.runtime_info); autocast is the task's option
    return net
