"""`tokshift evaluate`: parse, call :func:`tokshift_cli.evaluate.evaluate`, render the summary."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import (DEFAULT_RUNTIME, TOP_K, BatchSizeOpt, CacheDirOpt, DtypeOpt, JsonOpt, LocalFilesOnlyOpt,
                      OverwriteOpt, ResumeOpt, RuntimeOpt, ShardOpt, TokenOpt, TopKOpt)
from .render import percent
from .app import (DecoderOpt, DeviceOpt, EXIT_FAILED_INPUTS, EXIT_OK, ModelOpt, NamespaceOpt, RevisionOpt, SamplingOpt,
                  StreamOpt, TimeoutOpt, ViewsOpt, WorkersOpt, app, load_for_inference, progress_bar, resolve_timeout,
                  run_guarded, say, stderr, stdout)
from .classify import AggregateOpt


@app.command()
def evaluate(
    data: Annotated[str, typer.Argument(help="Labelled videos: a folder with a sub-folder per class, a list file "
                                             "('path label' lines), a CSV with path and label columns, or the "
                                             "Kinetics annotation CSV (with --root).", show_default=False)],
    root: Annotated[Optional[Path], typer.Option(help="Folder the list's or CSV's paths are relative to (default: "
                                                      "the list's folder); the Kinetics videos' folder.",
                                                 show_default=False)] = None,
    label_map: Annotated[Optional[Path], typer.Option(help="Map data label names to model labels: JSON "
                                                           "{\"name\": \"model label\"} or 'name,model label' lines.",
                                                      show_default=False)] = None,
    model: ModelOpt = "tokshift-b16-8x224",
    revision: RevisionOpt = None,
    hub_namespace: NamespaceOpt = None,
    cache_dir: CacheDirOpt = None,
    token: TokenOpt = None,
    local_files_only: LocalFilesOnlyOpt = False,
    views: ViewsOpt = "1x1",
    sampling: SamplingOpt = "centred",
    aggregate: AggregateOpt = "probs",
    top_k: TopKOpt = TOP_K,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    runtime: RuntimeOpt = DEFAULT_RUNTIME,
    workers: WorkersOpt = 2,
    decoder: DecoderOpt = "auto",
    stream: StreamOpt = None,
    timeout: TimeoutOpt = None,
    json_out: JsonOpt = False,
    out: Annotated[Optional[Path], typer.Option(help="Write the report (JSON) to this file, atomically; its progress "
                                                     "record beside it makes --resume possible.")] = None,
    predictions: Annotated[Optional[Path], typer.Option(help="Write one CSV row per video (path, label, top-k, "
                                                              "correct@1, error).", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write the confusion matrix as a PNG (rows normalised).",
                                                 show_default=False)] = None,
    failed_as_wrong: Annotated[bool, typer.Option(help="Count videos that cannot be scored as wrong (default: "
                                                       "reported apart).")] = False,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    shard: ShardOpt = None,
) -> None:
    """Accuracy on a labelled video set: top-1, top-k, mean class accuracy, per class, confusion."""

    def body() -> int:
        from ..evaluate.datasets import load_labelled
        from ..engine import resolve_device
        from ..evaluate.accuracy import EvalOptions, read_label_map_option
        from ..evaluate.accuracy import evaluate as run_evaluate
        from ..jobs import Shard, init_distributed, rank_device, share_size
        from ..outputs import check_output_path, to_json
        from .render import evaluation_summary

        opts = EvalOptions(views=views, sampling=sampling, aggregate=aggregate, top_k=top_k, batch_size=batch_size,
                           workers=workers, decoder=decoder, stream=stream, dtype=dtype,
                           timeout=resolve_timeout(timeout, workers), failed_as_wrong=failed_as_wrong,
                           label_map=read_label_map_option(label_map))
        dev = resolve_device(device)
        opts.validate(dev)  # every bad option is exit 2 before the model loads
        sh = Shard.parse(shard)
        for path in (p for p in (predictions, plot) if p is not None):
            check_output_path(path, overwrite=overwrite)
        labelled = load_labelled(data, root=root)  # a bad list: exit 2 before the model loads
        dist = init_distributed(dev.type) if sh.count == 1 else None
        try:
            dev_str = rank_device(dev, dist)
            load = lambda: load_for_inference(model, revision, hub_namespace, dev_str, dtype, runtime,
                                              cache_dir=cache_dir, token=token, local_files_only=local_files_only)  # noqa: E731
            net = dist.agree(load) if dist is not None else load()
            show = dist is None or dist.is_main
            if net.config.untrained and show:
                stderr.print("[bold red]warning:[/] this model has UNTRAINED weights: its accuracy means nothing")
            state = {"n": 0, "hit1": 0, "hitk": 0, "failed": 0}
            total = share_size(len(labelled), sh, dist)
            t0 = time.perf_counter()
            with progress_bar(total if show else 0, "evaluating") as bar:
                task = bar.add_task("evaluating", total=total, failed=0)

                def on_start(done: int, _total: int) -> None:
                    bar.update(task, completed=done)

                def on_video(rec: dict[str, Any]) -> None:
                    if rec["error"]:
                        state["failed"] += 1
                        say(f"{rec['video']}: {rec['error']}")
                    else:
                        state["n"] += 1
                        idx = [e["index"] for e in rec["top_k"]]
                        state["hit1"] += idx[0] == rec["label_index"]
                        state["hitk"] += rec["label_index"] in idx
                    n = max(state["n"], 1)
                    bar.update(task, advance=1, failed=state["failed"],
                               description=f"evaluating: top-1 {percent(state['hit1'] / n)} "
                                           f"top-{top_k} {percent(state['hitk'] / n)}")

                res = run_evaluate(net, labelled, opts, out=out, resume=resume, overwrite=overwrite,
                                   shard=sh if dist is None else None, dist=dist, predictions=predictions,
                                   plot=plot, on_video=on_video, on_start=on_start)
            wall = time.perf_counter() - t0
            if not show:
                return EXIT_OK
            if res.report is None:
                say(f"shard {sh}: {res.videos} videos, {res.failed} failed; when all {sh.count} shards are done: "
                    f"tokshift merge {out} --shards {sh.count}")
                return EXIT_FAILED_INPUTS if res.failed else EXIT_OK
            report = res.report
            if json_out:
                sys.stdout.write(to_json(report) + "\n")
                sys.stdout.flush()
            else:
                for renderable in evaluation_summary(report):
                    stdout.print(renderable)
            if res.skipped_complete:
                say(f"{out}: complete already (--resume): nothing to do")
                return EXIT_FAILED_INPUTS if report["counts"]["failed"] else EXIT_OK
            scored = max(res.videos - res.resumed, 0)
            say(f"{report['counts']['scored']} videos scored, {report['counts']['failed']} failed"
                + (f" ({res.resumed} done before the resume)" if res.resumed else "")
                + (f"; {scored / wall:.2f} videos/s" if scored and wall > 0 else "")
                + (f"; report: {out}" if out is not None else ""), style="dim")
            return EXIT_FAILED_INPUTS if report["counts"]["failed"] else EXIT_OK
        finally:
            if dist is not None:
                dist.close()

    run_guarded(body)
