"""The `tokshift` command line: parse arguments, call the library, render. No logic lives here.

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
import time
from pathlib import Path
from typing import Annotated, Any, Callable, NoReturn, Optional

import typer
from rich.console import Console

from . import __version__
from .errors import (ModelDownloadError, ModelNotFoundError, NoVideosError, OutputError, TokShiftError,
                     WeightsError)

EXIT_OK, EXIT_FAILED_INPUTS, EXIT_USAGE, EXIT_MODEL, EXIT_OUTPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

app = typer.Typer(
    name="tokshift",
    help="Classify videos, extract features and benchmark with the TokShift transformer (Kinetics-400).",
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

    from .outputs import display_path

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
DecoderOpt = Annotated[str, typer.Option(help="auto (NVDEC when the model runs on CUDA and a GPU decoder is usable, "
                                         "else CPU), cpu, gpu (NVDEC or an error), decord, opencv.")]
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


def _load(model: str, revision: str | None, hub_namespace: str | None, device: str, dtype: str | None = None):
    """Load a model; with a reduced-precision ``dtype``, cast its weights once (faster than autocast alone)."""
    from .engine import resolve_device, resolve_dtype
    from .model import cast_for_inference
    from .weights import load_model

    dev = resolve_device(device)
    quiet_hub_logging()
    net = load_model(model, device=dev, revision=revision, hub_namespace=hub_namespace)
    reduced = resolve_dtype(dtype, dev) if dtype is not None else None
    return cast_for_inference(net, reduced) if reduced is not None else net


def _progress(total: int, description: str):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[failed]} failed"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=stderr, transient=True, disable=total <= 1, redirect_stdout=False,
                    redirect_stderr=False)


# --- commands -------------------------------------------------------------------------------------------------


@app.command()
def classify(
    paths: Annotated[list[str], typer.Argument(help="Video files and/or folders (searched recursively).",
                                               show_default=False)] = None,  # type: ignore[assignment]
    model: ModelOpt = "tokshift-b16-8x224",
    revision: RevisionOpt = None,
    hub_namespace: NamespaceOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many labels per video.")] = 5,
    views: ViewsOpt = "1x1",
    device: DeviceOpt = "auto",
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 (CPU/GPU autocast) or float16 (GPU), or auto "
                                       "(float16 on CUDA, float32 on CPU).")] = "float32",
    batch_size: Annotated[Optional[int], typer.Option(
        min=1, help="Views per model call, across videos (default: 2 on a CPU, where larger batches are slower "
                    "per clip; 8 on a GPU).")] = None,
    workers: WorkersOpt = 2,
    decoder: DecoderOpt = "auto",
    timeout: TimeoutOpt = None,
    list_file: Annotated[Optional[Path], typer.Option("--list", help="A file with one video path per line.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Also write the JSON document to this file.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
) -> None:
    """Top-k Kinetics-400 labels for videos, as tables or JSON."""

    def body() -> int:
        from .engine import ClassifyOptions
        from .engine import classify as run_classify
        from .inputs import expand_inputs
        from .outputs import check_output_path, classification_table, summary_line, to_json, video_heading
        from .sampling import Views
        from .engine import resolve_device
        from .video_gpu import check_decoder_request
        from .weights import model_info_line

        v = Views.parse(views)
        check_decoder_request(decoder, resolve_device(device))  # bad --decoder, or gpu without one: exit 2
        if out is not None:
            check_output_path(out, overwrite=overwrite)
        items = expand_inputs(paths or [], list_file=list_file)
        if not items:
            raise NoVideosError("no inputs: give video files or folders (or --list FILE)")
        t0 = time.perf_counter()
        net = _load(model, revision, hub_namespace, device, dtype)
        load_s = time.perf_counter() - t0
        cfg = net.config
        if cfg.untrained:
            stderr.print("[bold red]warning:[/] this model has UNTRAINED weights: its labels mean nothing")
        opts = ClassifyOptions(views=v, top_k=top_k, batch_size=batch_size, workers=workers, decoder=decoder,
                               dtype=dtype, timeout=resolve_timeout(timeout, workers))
        item_paths = [it.path for it in items]
        pre_errors = {i: it.error for i, it in enumerate(items) if it.error}
        failed = 0
        with _progress(len(items), "classifying") as bar:
            task = bar.add_task("classifying", total=len(items), failed=0)

            def on_result(r: dict[str, Any]) -> None:
                nonlocal failed
                if r["error"]:
                    failed += 1
                    say(f"{r['video']}: {r['error']}")
                bar.update(task, advance=1, failed=failed)
                if not json_out:
                    if not r["error"]:
                        stdout.print(video_heading(r["video"]), soft_wrap=True)
                        stdout.print(classification_table(r, untrained=cfg.untrained))
                        stdout.print()

            t1 = time.perf_counter()
            results = run_classify(net, item_paths, opts, errors=pre_errors, on_result=on_result)
            total_s = time.perf_counter() - t1
        doc = {
            "tool_version": __version__,
            "model": model_info_line(net.resolved),
            "views": str(v),
            "frames": cfg.num_frames,
            "stride": cfg.frame_stride,
            "crop_size": cfg.crop_size,
            "device": str(next(net.parameters()).device),
            "dtype": dtype,
            "results": results,
            "timings": {"load_model_s": round(load_s, 3), "total_s": round(total_s, 3),
                        "videos_per_s": round(len(results) / total_s, 4) if total_s > 0 else None},
        }
        text = to_json(doc)
        if out is not None:
            from .outputs import atomic_write_text

            atomic_write_text(out, text + "\n")
        if json_out:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        else:
            stderr.print(summary_line(doc), style="dim")
        return EXIT_FAILED_INPUTS if failed else EXIT_OK

    run_guarded(body)


@app.command()
def models(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the model zoo: names, the paper's top-1 and GFLOPs, and where the weights come from."""
    from .outputs import to_json
    from .zoo import ZOO

    if json_out:
        rows = [{"name": e.name, "description": e.description, "top1": e.top1, "gflops_paper": e.gflops_paper,
                 "gmacs_v2": e.gmacs_v2, "frames": e.arch["num_frames"], "resolution": e.arch["img_size"],
                 "hub_repo": e.hub_repo(), "original_url": e.original_url} for e in ZOO.values()]
        sys.stdout.write(to_json(rows) + "\n")
        return
    from rich.table import Table

    t = Table(title="TokShift model zoo (Kinetics-400, 10x3 views)", title_justify="left")
    right = {"justify": "right", "no_wrap": True}
    for col, kw in [("name", {"no_wrap": True}), ("frames", right), ("px", right), ("top-1", right),
                    ("GFLOPs", right), ("Hub repo", {"overflow": "fold"})]:
        t.add_column(col, **kw)
    for e in ZOO.values():
        t.add_row(e.name, str(e.arch["num_frames"]), str(e.arch["img_size"]), f"{e.top1:.2f}",
                  f"{e.gflops_paper:g}", e.hub_repo())
    stdout.print(t)
    stdout.print("No TokShift weights are on the Hub yet: a zoo name falls back to the authors' Google Drive "
                 "release (URLs: `tokshift models --json`).", style="dim")
    stdout.print("GFLOPs as in the paper (v1 table, attention matmuls not counted). "
                 "`tokshift bench --arch NAME` measures them.", style="dim")


@app.command()
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="The authors' .pth (TokShift-Transformer v1 or "
                                               "LAPS-transformer v2).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder to write config.json, model.safetensors, README.md.",
                                      show_default=False)],
    arch: Annotated[Optional[str], typer.Option(help="Zoo name giving frames, stride, fold_div, heads.")] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Frames per clip (default 8).")] = None,
    fold_div: Annotated[Optional[int], typer.Option(min=2, help="Shift fold divisor (default 4).")] = None,
    heads: Annotated[Optional[int], typer.Option(min=1, help="Attention heads (default width // 64).")] = None,
    stride: Annotated[Optional[int], typer.Option(min=1, help="Frame stride (default 32).")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Label file (JSON list/dict or one name per line) or "
                                                  "an order name: kinetics400-v2, kinetics400-alphabetical.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Convert an authors' checkpoint into a Hub-style folder (publish it with `hf upload ORG/NAME DIR`)."""

    def body() -> int:
        from .convert import convert_checkpoint

        cfg = convert_checkpoint(checkpoint, out, arch=arch, frames=frames, fold_div=fold_div, heads=heads,
                                 stride=stride, labels=labels, overwrite=overwrite)
        say(f"wrote {out}: {cfg.source.get('format')} -> width {cfg.embed_dim}, depth {cfg.depth}, "
            f"{cfg.img_size}px, {cfg.num_frames} frames, {cfg.num_classes} classes, labels {cfg.label_order}")
        return EXIT_OK

    run_guarded(body)


def _register_command_modules() -> None:
    """Commands that live in their own modules register themselves on ``app`` when imported."""
    from importlib import import_module

    for name in ("cli_features", "cli_bench"):
        try:
            import_module(f".{name}", __package__)
        except ModuleNotFoundError as e:  # a module not written yet (development); never hide other errors
            if e.name != f"{__package__}.{name}":
                raise


_register_command_modules()


def main() -> None:
    """Console-script entry point (also `python -m tokshift_cli`): this process is ours to end."""
    _state["owns_process"] = True
    app()


if __name__ == "__main__":
    main()
