"""`tokshift explain`: parse, call :func:`tokshift_cli.explain.job.explain_videos`, render a line per video or
JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import NoVideosError, UsageError
from .options import (BatchSizeOpt, CacheDirOpt, JsonOpt, ListOpt, LocalFilesOnlyOpt, OverwriteOpt, PathsArg,
                      ResumeOpt, TokenOpt)
from .app import (EXIT_FAILED_INPUTS, EXIT_OK, DecoderOpt, DeviceOpt, ModelOpt, NamespaceOpt, RevisionOpt,
                  SamplingOpt, StreamOpt, TimeoutOpt, ViewsOpt, WorkersOpt, app, load_for_inference, progress_bar,
                  resolve_timeout, run_guarded, say, stderr)


@app.command()
def explain(
    paths: PathsArg = None,  # type: ignore[assignment]
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for explain.json and, per video, <stem>.png "
                                      "(contact sheet), <stem>.mp4 (overlay video) and <stem>.npy "
                                      "(--save-arrays).", show_default=False)] = None,  # type: ignore[assignment]
    model: ModelOpt = "tokshift-b16-8x224",
    revision: RevisionOpt = None,
    hub_namespace: NamespaceOpt = None,
    cache_dir: CacheDirOpt = None,
    token: TokenOpt = None,
    local_files_only: LocalFilesOnlyOpt = False,
    target: Annotated[str, typer.Option(help="The class to explain: top1 (each video's top class), a label, "
                                        "or a class index.")] = "top1",
    method: Annotated[str, typer.Option(help="chefer (gradient-weighted attention relevance, followed through "
                                        "the token shift) or rollout (attention rollout: no backward pass, "
                                        "cheaper, less faithful).")] = "chefer",
    views: ViewsOpt = "1x1",
    sampling: SamplingOpt = "centred",
    steps: Annotated[int, typer.Option(min=2, help="Deletion/insertion curve steps (fractions of patches).")] = 8,
    random_orders: Annotated[int, typer.Option(min=1, help="Random orders the curves are compared with.")] = 3,
    device: DeviceOpt = "auto",
    batch_size: BatchSizeOpt = None,
    workers: WorkersOpt = 2,
    decoder: DecoderOpt = "auto",
    stream: StreamOpt = None,
    timeout: TimeoutOpt = None,
    list_file: ListOpt = None,
    save_arrays: Annotated[bool, typer.Option("--save-arrays", help="Also write each video's relevance maps as "
                                              "<stem>.npy, float32 [views, frames, h, w] (one value a patch).")
                           ] = False,
    json_out: JsonOpt = False,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Which pixels and which moments made the prediction: relevance maps, frame importance and their
    faithfulness, as a contact sheet, an overlay video and JSON. Float32, torch models only."""

    def body() -> int:
        from ..engine import resolve_device
        from ..explain.job import ExplainOptions, check_torch_model, explain_videos
        from ..outputs import to_json
        from ..video.inputs import expand_inputs
        from ..video.gpu import check_decoder_request

        if out is None:
            raise UsageError("--out DIR is required: explain writes pictures and explain.json there")
        opts = ExplainOptions(views=views, sampling=sampling, stream=stream, target=target, method=method,
                              steps=steps, random_orders=random_orders, batch_size=batch_size, workers=workers,
                              decoder=decoder, timeout=resolve_timeout(timeout, workers), save_arrays=save_arrays)
        opts.validate()
        check_decoder_request(decoder, resolve_device(device))
        check_torch_model(model)
        items = expand_inputs(paths or [], list_file=list_file)
        if not items:
            raise NoVideosError("no inputs: give video files or folders (or --list FILE)")
        net = load_for_inference(model, revision, hub_namespace, device,
                                 cache_dir=cache_dir, token=token, local_files_only=local_files_only)
        if net.config.untrained:
            stderr.print("[bold red]warning:[/] this model has UNTRAINED weights: its labels mean nothing")
        errors = {i: it.error for i, it in enumerate(items) if it.error}
        failed = 0
        with progress_bar(len(items), "explaining") as bar:
            task = bar.add_task("explaining", total=len(items), failed=0)

            def on_result(r: dict[str, Any]) -> None:
                nonlocal failed
                if r["error"]:
                    failed += 1
                    say(f"{r['video']}: {r['error']}")
                elif not json_out:
                    f = r["faithfulness"]
                    say(f"{r['video']}: {r['target']['label']} {r['target']['probability']:.1%}; deletion "
                        f"{f['deletion_ratio']} x random, insertion {f['insertion_ratio']} x random"
                        + ("" if f["beats_random"] else " (does NOT beat random)"))
                bar.update(task, advance=1, failed=failed)

            run = explain_videos(net, [it.path for it in items], out, opts, errors=errors, resume=resume,
                                 overwrite=overwrite, on_result=on_result)
        if run.skipped_complete and not json_out:
            say(f"{out / 'explain.json'}: complete already (--resume): nothing to do")
        if json_out:
            sys.stdout.write(to_json(run.doc) + "\n")
            sys.stdout.flush()
        else:
            say(f"{len(run.doc['results'])} videos explained into {out} ({run.failed} failed)", style="dim")
        return EXIT_FAILED_INPUTS if run.failed else EXIT_OK

    run_guarded(body)
