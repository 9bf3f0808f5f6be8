"""The ``--decoder`` registry: one entry per decoder, read by :func:`tokshift_cli.video.open_video`, by the CPU/GPU
rule (:mod:`tokshift_cli.video.gpu`) and by the CLI's ``--decoder`` help. Imports nothing heavy; each decoder's
module is imported only when a file is opened with it (timm's ``reader_factory`` pattern).

Adding a decoder: a module with a reader class (the interface of :class:`tokshift_cli.video.reader.VideoReader`:
``get_frames``, ``sample``, ``timestamps``, ``info``, a context manager), and one :func:`register` line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any

from ..errors import UsageError

__all__ = ["Decoder", "register", "DECODERS", "AUTO", "CPU_DEFAULT", "check_decoder", "decoder_class",
           "decoder_help", "is_gpu"]

AUTO = "auto"
#: What ``auto`` decodes with on a CPU (and what ``cpu`` names).
CPU_DEFAULT = "pyav"


@dataclass(frozen=True)
class Decoder:
    """A ``--decoder`` value: ``target`` is "module:ClassName" inside :mod:`tokshift_cli.video` (a reader class,
    or for ``gpu`` the routing function); ``aliases`` are other names for it."""

    name: str
    target: str
    help: str
    aliases: tuple[str, ...] = ()
    gpu: bool = False


_REGISTRY: dict[str, Decoder] = {}
_ALIASES: dict[str, str] = {}
#: Names that existed once: the reason they are refused, said with the refusal.
_RETIRED = {"opencv": "OpenCV decoding was replaced by PyAV, which reads the same files frame-accurately"}


def register(decoder: Decoder) -> Decoder:
    _REGISTRY[decoder.name] = decoder
    for alias in decoder.aliases:
        _ALIASES[alias] = decoder.name
    return decoder


register(Decoder("pyav", "reader:VideoReader", "PyAV by timestamp: frame-accurate on every container",
                 aliases=("cpu",)))
register(Decoder("decord", "decord_reader:DecordReader", "decord, only where it agrees with PyAV (else an error "
                 "naming why)"))
register(Decoder("gpu", "gpu:open_video_routed", "NVDEC, or an error", gpu=True))


def names() -> tuple[str, ...]:
    """Every accepted ``--decoder`` value: ``auto``, the decoders and their aliases."""
    return (AUTO, *_ALIASES, *_REGISTRY)


#: ``--decoder`` values, in the order the help lists them.
DECODERS = names()


def canonical(decoder: str) -> str:
    """``cpu`` -> ``pyav``; ``auto`` and decoder names as they are (check first)."""
    return _ALIASES.get(decoder, decoder)


def check_decoder(decoder: str) -> str:
    """``decoder`` if it is a ``--decoder`` value, else a UsageError naming the choices."""
    if decoder != AUTO and canonical(decoder) not in _REGISTRY:
        hint = f" ({_RETIRED[decoder]})" if decoder in _RETIRED else ""
        raise UsageError(f"--decoder {decoder!r}: choose one of {', '.join(names())}{hint}")
    return decoder


def is_gpu(decoder: str) -> bool:
    spec = _REGISTRY.get(canonical(decoder))
    return spec is not None and spec.gpu


def decoder_class(decoder: str) -> Any:
    """The reader class (or routing function) of a CPU ``decoder``; ``auto`` means :data:`CPU_DEFAULT`."""
    spec = _REGISTRY[canonical(CPU_DEFAULT if decoder == AUTO else check_decoder(decoder))]
    module, _, attr = spec.target.partition(":")
    return getattr(import_module(f".{module}", __package__), attr)


def decoder_help() -> str:
    """The ``--decoder`` option's help, from the registry."""
    parts = [f"{AUTO} (NVDEC when the model runs on CUDA and the file suits it, else {CPU_DEFAULT})"]
    for d in _REGISTRY.values():
        alias = f" (also {', '.join(d.aliases)})" if d.aliases else ""
        parts.append(f"{d.name}{alias}: {d.help}")
    return "; ".join(parts) + "."
