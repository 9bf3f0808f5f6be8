"""Every option two commands share, written once as a Typer ``Annotated`` alias (huggingface_hub's
``cli/_cli_utils.py`` pattern): one name, one help text, one check. A command declares ``views: ViewsOpt = "1x1"``;
the default stays beside the command, and is the same everywhere unless docs/architecture.md's vocabulary table
says why not. Values with a fixed set of choices are checked here, at parse time, so a typo is exit 2 in a
fraction of a second, before torch is imported."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from ..video.decoders import DECODERS, decoder_help

#: The defaults two or more commands share (the vocabulary table in docs/architecture.md lists them).
TOP_K = 5
WORKERS = 2
#: Seconds one file may take to decode before its worker is killed and the file reported as failed (--timeout).
DEFAULT_TIMEOUT_S = 300.0
#: ``--dtype``: the model's precision, in every command (``fp32``/``bf16``/``fp16`` accepted as short forms).
PRECISIONS = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")
SAMPLINGS = ("centred", "authors")


def choice(option: str, values: tuple[str, ...], hint: Callable[[str], str] | None = None) -> Callable[[str], str]:
    """A parse-time check: ``value`` must be one of ``values`` (else a usage error naming them)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in values:
            extra = hint(value) if hint is not None else ""
            raise typer.BadParameter(f"{value!r}: choose one of {', '.join(values)}{extra}", param_hint=option)
        return value

    return check


def _decoder_hint(value: str) -> str:
    return " (OpenCV decoding was replaced by PyAV, which reads the same files frame-accurately)" \
        if value == "opencv" else ""


PathsArg = Annotated[list[str], typer.Argument(help="Video files and/or folders (searched recursively); http(s):// "
                                               "URLs too.", show_default=False)]
ListOpt = Annotated[Optional[Path], typer.Option("--list", help="A file with one video path per line ('-': standard "
                                                 "input).", show_default=False)]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Zoo name, Hub repo org/name[@revision], a local "
                                       "folder, or a .safetensors file with config.json beside it.")]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit sha).",
                                                    show_default=False, rich_help_panel="Hub")]
NamespaceOpt = Annotated[Optional[str], typer.Option("--hub-namespace", envvar="TOKSHIFT_HUB_NAMESPACE",
                                                     help="Hub namespace that zoo names resolve in.",
                                                     show_default=False, rich_help_panel="Hub")]
CacheDirOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Hub cache folder (default: "
                                                   "huggingface_hub's, HF_HUB_CACHE).", show_default=False,
                                                   rich_help_panel="Hub")]
TokenOpt = Annotated[Optional[str], typer.Option("--token", help="Hub token for private or gated repos (default: "
                                                 "HF_TOKEN or `hf auth login`'s).", show_default=False,
                                                 rich_help_panel="Hub")]
LocalFilesOnlyOpt = Annotated[bool, typer.Option("--local-files-only", help="Use only what is cached; never "
                                                 "download (as HF_HUB_OFFLINE=1).", rich_help_panel="Hub")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", callback=choice("--dtype", PRECISIONS),
                                       help="Model precision: float32, bfloat16 (weights cast once; fast on CPUs "
                                            "with AVX512-BF16 or AMX, and on GPUs), float16 (CUDA) or auto.")]
ViewsOpt = Annotated[str, typer.Option(help="CLIPSxCROPS: temporal clips x spatial crops (1 or 3). 10x3 is the "
                                       "paper's protocol.")]
SamplingOpt = Annotated[str, typer.Option(callback=choice("--sampling", SAMPLINGS),
                                          help="Where clips sit: centred (each in the middle of its 1/CLIPS "
                                               "segment, as MMAction2 tests) or authors (the paper's rule: clip i "
                                               "starts at int(i * N / CLIPS); 1x1 looks at the first frames).")]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many labels per video (per window in "
                                      "timeline).")]
BatchSizeOpt = Annotated[Optional[int], typer.Option(
    min=1, show_default=False, help="Views per model call, across videos (padded to this size, so results do not "
                                    "depend on batching). Default: 2 on a CPU, 8 on a GPU.")]
WorkersOpt = Annotated[int, typer.Option(min=0, help="Decoding worker processes running ahead of the model "
                                         "(0 = decode in the main process).")]
DecoderOpt = Annotated[str, typer.Option(callback=choice("--decoder", DECODERS, _decoder_hint), help=decoder_help())]
StreamOpt = Annotated[Optional[int], typer.Option(
    min=0, show_default=False, help="Read the N-th video stream (0-based, as FFmpeg's v:N). Default: the "
                                    "largest that is not cover art or a still picture.")]
TimeoutOpt = Annotated[Optional[float], typer.Option(
    min=0, show_default=False,
    help=f"Seconds one file may take to decode; past that its worker process is killed and the file is "
         f"reported as failed. Default {DEFAULT_TIMEOUT_S:g} (with --workers 0: no limit); 0 = no limit.")]
RuntimeOpt = Annotated[Optional[str], typer.Option(
    show_default="torch; an exported folder: its own",
    help="What runs the network: torch, openvino, onnxruntime (CPU; converted once and cached), or auto (the "
         "fastest installed one that is exact for --dtype on this CPU, measured once; docs/performance.md). An "
         "exported folder (`tokshift export`) runs on its own runtime.")]
#: --runtime's default (None: torch, or an exported folder's own runtime).
DEFAULT_RUNTIME = None
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (and discard an "
                                            "interrupted run's progress).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its progress record "
                                         "(starts fresh when there is none).")]
ShardOpt = Annotated[Optional[str], typer.Option(help="I/N: process only shard I of N (inputs I, I+N, ...); join the "
                                                 "parts with `tokshift merge`. Not needed under torchrun.",
                                                 show_default=False)]


def resolve_timeout(timeout: float | None, workers: int) -> float | None:
    """``--timeout`` as the engine takes it: None (no bound) for 0, and by default with ``--workers 0`` (a bound
    needs a worker process to kill; decoding in the main process is for debugging); otherwise the seconds given
    or :data:`DEFAULT_TIMEOUT_S`."""
    if timeout is None:
        return None if workers == 0 else DEFAULT_TIMEOUT_S
    return float(timeout) if timeout > 0 else None
