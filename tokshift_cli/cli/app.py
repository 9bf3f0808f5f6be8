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
from .group import TokshiftGroup, errors, fail_line  # noqa: F401

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE, EXIT_MODEL, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

app = typer.Typer(
    name="tokshift",
    help="Classify, evaluate, fine-tune, follow over time, embed and benchmark videos with the TokShift transformer.",
    cls=TokshiftGroup,
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,  # plain help (cli/group.py): nothing cut at 80 columns
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120},
)

stdout = Console(soft_wrap=False)
stderr = Console(stderr=True)  #: progress and notes; silent with -q
state: dict[str, Any] = {"debug": False, "quiet": False}
_state = state  # the old name, for code written against it


def fail(message: str, code: int) -> NoReturn:
    """Print one line on stderr and exit."""
    fail_line(message)
    raise typer.Exit(code)


def exit_code_for(error: TokShiftError) -> int:
    if isinstance(error, (ModelNotFoundError, ModelDownloadError, WeightsError)):
        return EXIT_MODEL
    if isinstance(error, OutputError):  # exists without --overwrite, folder not creatable or writable, disk full
        return EXIT_OUTPUT
    return EXIT_USAGE  # UsageError, NoVideosError, ConversionError, and any other TokShiftError


def _debug_traceback() -> None:
    """--debug: the full traceback on stderr (the exit code stays the documented one)."""
    if state["debug"]:
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
        if state.get("owns_process"):  # the console entry point; never when embedded (CliRunner, notebooks)
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
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors (also accepted after the "
                                        "command).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes on stderr; errors "
                                        "still print (also accepted after the command).")] = False,
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    state["debug"] = debug
    state["quiet"] = quiet
    stderr.quiet = quiet


# --- shared options: written once in cli/options.py (imported here too, for code that reads them from app) ---

from .options import (BatchSizeOpt, CacheDirOpt, DEFAULT_TIMEOUT_S, DecoderOpt, DeviceOpt, DtypeOpt, JsonOpt, ListOpt,
                      LocalFilesOnlyOpt, ModelOpt, NamespaceOpt, OverwriteOpt, PathsArg, ResumeOpt, RevisionOpt,
                      RuntimeOpt, SamplingOpt, ShardOpt, StreamOpt, TimeoutOpt, TokenOpt, TopKOpt, ViewsOpt,
                      WorkersOpt, resolve_timeout)
from .options import DEFAULT_RUNTIME


def quiet_hub_logging() -> None:
    """huggingface_hub logs its own retries as warnings on stderr ("Error while downloading from ...", "Trying to
    resume download...", "Retrying in 1s [Retry 1/5]"), a dozen lines before the outcome, which the CLI reports
    itself as one line. So the CLI sets huggingface_hub's logger to errors only, unless ``--debug`` is given or
    ``HF_HUB_VERBOSITY`` is set (huggingface_hub's own setting: ``HF_HUB_VERBOSITY=warning`` brings them back).
    Our own messages do not go through that logger."""
    if state["debug"] or os.environ.get("HF_HUB_VERBOSITY"):
        return
    try:
        from huggingface_hub.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - a dependency
        return
    hf_logging.set_verbosity_error()


def load_for_inference(model: str, revision: str | None, hub_namespace: str | None, device: str,
                       dtype: str | None = None, runtime: str | None = DEFAULT_RUNTIME, precision: str | None = None,
                       **hub: Any):
    """The model a command runs (:func:`tokshift_cli.runtimes.load.load_for_run`): a torch model in ``dtype``
    (reduced precision: weights cast once; float32: linear layers on the faster GEMM of this CPU,
    :func:`tokshift_cli.models.kernels.linear_backend`), the same network on another ``runtime``, or an exported
    folder. ``hub``: ``cache_dir``, ``token``, ``local_files_only`` for huggingface_hub (None/False: defaults)."""
    from ..runtimes.load import load_for_run

    quiet_hub_logging()
    hub = {k: v for k, v in hub.items() if v not in (None, False)}
    return load_for_run(model, revision=revision, hub_namespace=hub_namespace, device=device, dtype=dtype,
                        runtime=runtime, precision=precision, **hub)


def progress_bar(total: int, description: str):
    """The progress bar every long command shows on stderr (off for one item, and with -q)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=stderr, transient=True, disable=total <= 1, redirect_stdout=False,
                    redirect_stderr=False)


# --- commands -------------------------------------------------------------------------------------------------


_load = load_for_inference  # old names, for code written against them
_progress = progress_bar
