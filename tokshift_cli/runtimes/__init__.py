"""How the network runs: a registry of runtimes (torch, OpenVINO, ONNX Runtime) behind one interface.

Like timm's ``reader_factory``: each runtime is one module, imported only when it is asked for, and a new one is
one module plus one line in :data:`RUNTIMES`. A runtime runs only the network: clips ``[B, T, 3, H, W]`` (what
:func:`tokshift_cli.engine.run_views` sends) -> per-frame features ``[B, T, C]``; decoding, sampling,
preprocessing, batching, the head and aggregation stay the engine's and the model's (:class:`.base.RuntimeModel`
is a drop-in for the torch model). The token shift runs inside the exported graph (:mod:`.graph`).

Modules: :mod:`.base` (the interface, the drop-in model), :mod:`.graph` (the exportable network), :mod:`.cache`
(converted graphs on disk), :mod:`.build` (a torch model on another runtime), :mod:`.load` (what a command runs),
:mod:`.auto` (``--runtime auto``), :mod:`.export` (``tokshift export`` folders), :mod:`.check` (parity clips),
:mod:`.quantize` (int8 with an accuracy gate), :mod:`.compare` (``bench --runtime all``).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Runtime

#: name -> module (in this package) defining ``RUNTIME``; the order is the order of ``bench --runtime all``.
RUNTIMES: dict[str, str] = {
    "torch": "torch_runtime",
    "openvino": "openvino_runtime",
    "onnxruntime": "onnxruntime_runtime",
}
#: What ``--runtime`` takes: a runtime name or ``auto`` (:mod:`.auto`).
CHOICES = (*RUNTIMES, "auto")
#: Precisions a runtime may offer, in the order they are shown.
PRECISIONS = ("float32", "bfloat16", "int8")


def get_runtime(name: str) -> "Runtime":
    """The runtime called ``name`` (its module imported now); :class:`UsageError` for an unknown name."""
    if name not in RUNTIMES:
        raise UsageError(f"--runtime {name!r}: choose one of {', '.join(CHOICES)}")
    return import_module(f".{RUNTIMES[name]}", __name__).RUNTIME


def installed() -> list[str]:
    """Names of the runtimes whose packages import here."""
    return [n for n in RUNTIMES if get_runtime(n).missing() is None]


def check_runtime(name: str) -> None:
    """:class:`UsageError` when ``name`` is not a known choice."""
    if name not in CHOICES:
        raise UsageError(f"--runtime {name!r}: choose one of {', '.join(CHOICES)}")
