"""`tokshift classify`: parse, call :func:`tokshift_cli.engine.classify`, render tables or JSON."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import NoVideosError
from .options import (DEFAULT_RUNTIME, BatchSizeOpt, CacheDirOpt, DtypeOpt, JsonOpt, ListOpt, LocalFilesOnlyOpt,
                      OverwriteOpt, PathsArg, RuntimeOpt, TOP_K, TokenOpt, TopKOpt)
from .app import (DecoderOpt, DeviceOpt, EXIT_FAILED_INPUTS, EXIT_OK, ModelOpt, NamespaceOpt, RevisionOpt, SamplingOpt,
                  StreamOpt, TimeoutOpt, ViewsOpt, WorkersOpt, app, load_for_inference, progress_bar, resolve_timeout,
                  run_guarded, say, stderr, stdout)

AggregateOpt = Annotated[str, typer.Option(help="How the views make a video's scores: probs (mean of per-view "
                                           "probabilities) or logits (mean of per-view logits, then softmax: the "
                                           "authors' test rule).")]


@app.command()
def classify(
    paths: PathsArg = None,  # type: ignore[assignment]
    model: ModelOpt = "tokshift-b16-8x224",
    revision: RevisionOpt = None,
    hub_namespace: NamespaceOpt = None,
    cache_dir: CacheDirOpt = None,
    token: TokenOpt = None,
    local_files_only: LocalFilesOnlyOpt = False,
    top_k: TopKOpt = TOP_K,
    views: ViewsOpt = "1x1",
    sampling: SamplingOpt = "centred",
    aggregate: AggregateOpt = "probs",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    runtime: RuntimeOpt = DEFAULT_RUNTIME,
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = 2,
    decoder: DecoderOpt = "auto",
    stream: StreamOpt = None,
    timeout: TimeoutOpt = None,
    list_file: ListOpt = None,
    json_out: JsonOpt = False,
    out: Annotated[Optional[Path], typer.Option(help="Also write the JSON document to this file.")] = None,
    overwrite: OverwriteOpt = False,
    save_views: Annotated[Optional[Path], typer.Option(
        help="Write every view the model gets as PNG files under this folder: <video stem>/clip<c>_crop<k>_"
             "frame<j>_idx<frame index>.png, the pixels after resize and crop.", show_default=False)] = None,
) -> None:
    """Top-k Kinetics-400 labels for videos, as tables or JSON. Paths may be http(s):// URLs."""

    def body() -> int:
        from ..engine import ClassifyOptions, classify_document
        from ..engine import classify as run_classify
        from ..engine import resolve_device
        from ..outputs import check_output_path, ensure_output_folder, to_json
        from ..video.inputs import expand_inputs
        from .render import classification_table, summary_line, video_heading

        opts = ClassifyOptions(views=views, top_k=top_k, batch_size=batch_size, workers=workers, decoder=decoder,
                               dtype=dtype, timeout=resolve_timeout(timeout, workers), sampling=sampling,
                               aggregate=aggregate, stream=stream, save_views=save_views)
        opts.validate(resolve_device(device))  # every bad option is exit 2 before the model loads
        if save_views is not None:
            ensure_output_folder(save_views)
        if out is not None:
            check_output_path(out, overwrite=overwrite)
        items = expand_inputs(paths or [], list_file=list_file)
        if not items:
            raise NoVideosError("no inputs: give video files or folders (or --list FILE)")
        t0 = time.perf_counter()
        net = load_for_inference(model, revision, hub_namespace, device, dtype, runtime,
                                 cache_dir=cache_dir, token=token, local_files_only=local_files_only)
        load_s = time.perf_counter() - t0
        cfg = net.config
        if cfg.untrained:
            stderr.print("[bold red]warning:[/] this model has UNTRAINED weights: its labels mean nothing")
        item_paths = [it.path for it in items]
        pre_errors = {i: it.error for i, it in enumerate(items) if it.error}
        failed = 0
        with progress_bar(len(items), "classifying") as bar:
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
        doc = classify_document(net, opts, results, dtype=dtype, load_s=load_s, total_s=total_s)
        text = to_json(doc)
        if out is not None:
            from ..outputs import atomic_write_text

            atomic_write_text(out, text + "\n")
        if json_out:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        else:
            stderr.print(summary_line(doc), style="dim")
        return EXIT_FAILED_INPUTS if failed else EXIT_OK

    run_guarded(body)
