"""The shared pieces of the `tokshift` commands: the Typer app, common options, exit codes, error handling.

Heavy imports (torch, timm, decord) happen inside the commands, so `tokshift --help` stays instant.

Exit codes (documented in the README):
  0  every input succeeded
  1  at least one input failed (its error is in the output; the others have results)
  2  usage error (bad option, no inputs)
  3  the model could not be resolved, downloaded or loaded
  4  an output could not be written (exists without --overwrite, folder not creatable or writable, disk full)
  70 an internal error (a bug; `tokshift --debug ...` shows the traceback)
  130 interrupted (Ctrl-C)
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any, Callable, NoReturn, Optional

import typer
from rich.console import Console

from .. import __version__
from ..errors import ModelDownloadError, ModelNotFoundError, OutputError, TokShiftError, WeightsError

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE, EXIT_MODEL, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

app = typer.Typer(
    name="tokshift",
    help="Classify, evaluate, fine-tune, follow over time, embed and benchmark videos with the TokShift transformer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

stdout = Console(soft_wrap=False)
stderr = Console(stderr=True)
_state: dict[str, Any] = {"debug": False}


def fail(message: str, code: int) -> NoReturn:
    """Print one line on stderr and exit."""
    stderr.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def exit_code_for(error: TokShiftError) -> int:
    if isinstance(error, (ModelNotFoundError, ModelDownloadError, WeightsError)):
        return EXIT_MODEL
    if isinstance(error, OutputError):  # exists without --overwrite, folder not creatable or writable, disk full
        return EXIT_OUTPUT
    return EXIT_USAGE  # UsageError, NoVideosError, ConversionError, and any other TokShiftError


def _debug_traceback() -> None:
    """--debug: the full traceback on stderr (the exit code stays the documented one)."""
    if _state["debug"]:
        import traceback

        sys.stderr.write(traceback.format_exc())
        sys.stderr.flush()


def _hard_exit(code: int) -> NoReturn:
    """Exit now, skipping interpreter finalisation. After Ctrl-C, decode threads may still be inside native
    code (decord's C++ threads): finalising the interpreter around them aborts the process ("terminate called
    without an active exception", exit -6) instead of exiting 130. Outputs are closed already: atomic writes
    removed their temporary files and the features journal was committed while the exception unwound."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def run_guarded(fn: Callable[[], int]) -> None:
    """Run a command body: TokShiftError -> one line + its exit code; Ctrl-C -> 130; a bug -> one line + 70.
    No traceback unless --debug (which adds it, keeping the exit code)."""
    try:
        code = fn()
    except typer.Exit:
        raise
    except TokShiftError as e:
        _debug_traceback()
        fail(_escape(str(e)), exit_code_for(e))
    except KeyboardInterrupt:
        _debug_traceback()
        stderr.print("interrupted", style="yellow")
        if _state.get("owns_process"):  # the console entry point; never when embedded (CliRunner, notebooks)
            _hard_exit(EXIT_INTERRUPTED)
        raise typer.Exit(EXIT_INTERRUPTED)
    except Exception as e:  # a bug of ours: say so, in one line, unless --debug
        _debug_traceback()
        fail(_escape(f"internal error: {type(e).__name__}: {e} (re-run with `tokshift --debug ...` for the "
                     "traceback and report it)"), 70)
    raise typer.Exit(code)


def _escape(s: str) -> str:
    """A message for rich: markup escaped, and file names that are not UTF-8 shown with \\xNN escapes."""
    from rich.markup import escape

    from ..outputs import display_path

    return escape(display_path(s))


def say(message: str, style: str | None = None) -> None:
    """One line on stderr that may hold file names: printed as it is (no markup, no highlighting, non-UTF-8 bytes
    as \\xNN) and never folded at the terminal's width, so a path stays whole for copy and grep."""
    stderr.print(_escape(message), style=style, highlight=False, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        stdout.print(f"tokshift-cli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    _state["debug"] = debug


# --- shared options -------------------------------------------------------------------------------------------

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Zoo name, Hub repo org/name[@revision], a local "
                                       "folder, or a .safetensors file with config.json beside it.")]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Hub revision (branch, tag or commit sha).")]
NamespaceOpt = Annotated[Optional[str], typer.Option("--hub-namespace", envvar="TOKSHIFT_HUB_NAMESPACE",
                                                     help="Hub namespace that zoo names resolve in.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")]
ViewsOpt = Annotated[str, typer.Option(help="CLIPSxCROPS: temporal clips x spatial crops (1 or 3). "
                                       "10x3 is the paper's protocol.")]
WorkersOpt = Annotated[int, typer.Option(min=0, help="Decoding worker processes running ahead of the model "
                                         "(0 = decode in the main process).")]
DecoderOpt = Annotated[str, typer.Option(help="auto (NVDEC when the model runs on CUDA and the file suits it, else "
                                         "PyAV), cpu or pyav (PyAV: frame-accurate, FFmpeg's own API), decord "
                                         "(only where verified, else an error naming why), gpu (NVDEC or an "
                                         "error).")]
SamplingOpt = Annotated[str, typer.Option(help="Where clips sit: centred (each in the middle of its 1/CLIPS "
                                          "segment, as MMAction2 tests) or authors (the paper's rule: clip i "
                                          "starts at int(i * N / CLIPS); 1x1 looks at the first frames).")]
StreamOpt = Annotated[Optional[int], typer.Option(
    min=0, show_default=False, help="Read the N-th video stream (0-based, as FFmpeg's v:N). Default: the "
                                    "largest that is not cover art or a still picture.")]
RuntimeOpt = Annotated[Optional[str], typer.Option(
    show_default="torch; an exported folder: its own",
    help="What runs the network: torch, openvino, onnxruntime (CPU; converted once and cached), or auto (the "
         "fastest installed one that is exact for --dtype on this CPU, measured once; docs/performance.md). An "
         "exported folder (`tokshift export`) runs on its own runtime.")]
#: --runtime's default (None: torch, or an exported folder's own runtime).
DEFAULT_RUNTIME = None
#: Seconds one file may take to decode before its worker is killed and the file reported as failed (--timeout).
DEFAULT_TIMEOUT_S = 300.0
TimeoutOpt = Annotated[Optional[float], typer.Option(
    min=0, show_default=False,
    help=f"Seconds one file may take to decode; past that its worker process is killed and the file is "
         f"reported as failed. Default {DEFAULT_TIMEOUT_S:g} (with --workers 0: no limit); 0 = no limit.")]


def resolve_timeout(timeout: float | None, workers: int) -> float | None:
    """``--timeout`` as the engine takes it: None (no bound) for 0, and by default with ``--workers 0`` (a bound
    needs a worker process to kill; decoding in the main process is for debugging); otherwise the seconds given
    or :data:`DEFAULT_TIMEOUT_S`."""
    if timeout is None:
        return None if workers == 0 else DEFAULT_TIMEOUT_S
    return float(timeout) if timeout > 0 else None


def quiet_hub_logging() -> None:
    """huggingface_hub logs its own retries as warnings on stderr ("Error while downloading from ...", "Trying to
    resume download...", "Retrying in 1s [Retry 1/5]"), a dozen lines before the outcome, which the CLI reports
    itself as one line. So the CLI sets huggingface_hub's logger to errors only, unless ``--debug`` is given or
    ``HF_HUB_VERBOSITY`` is set (huggingface_hub's own setting: ``HF_HUB_VERBOSITY=warning`` brings them back).
    Our own messages do not go through that logger."""
    if _state["debug"] or os.environ.get("HF_HUB_VERBOSITY"):
        return
    try:
        from huggingface_hub.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - a dependency
        return
    hf_logging.set_verbosity_error()


def _load(model: str, revision: str | None, hub_namespace: str | None, device: str, dtype: str | None = None,
          runtime: str | None = DEFAULT_RUNTIME, precision: str | None = None):
    """Load a model; with a reduced-precision ``dtype``, cast its weights once (faster than autocast alone). A
    ``runtime`` other than torch (or an exported folder) runs the network there at ``precision`` (default:
    ``dtype``); the result's ``runtime`` and ``precision`` say what runs (:mod:`tokshift_cli.runtimes.load`)."""
    from ..runtimes.load import load_for_run

    quiet_hub_logging()
    return load_for_run(model, revision=revision, hub_namespace=hub_namespace, device=device, dtype=dtype,
                        runtime=runtime, precision=precision)


def _progress(total: int, description: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=stderr, transient=True, disable=total <= 1, redirect_stdout=False,
                    redirect_stderr=False)


# --- commands -------------------------------------------------------------------------------------------------
