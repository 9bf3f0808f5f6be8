"""`tokshift extract-features`: parse, call :mod:`tokshift_cli.features`, render."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import (DEFAULT_RUNTIME, BatchSizeOpt, CacheDirOpt, DtypeOpt, ListOpt, LocalFilesOnlyOpt, OverwriteOpt,
                      PathsArg, ResumeOpt, RuntimeOpt, ShardOpt, TokenOpt, choice)
from .app import (DecoderOpt, DeviceOpt, EXIT_FAILED_INPUTS, EXIT_OK, ModelOpt, NamespaceOpt, RevisionOpt, SamplingOpt,
                  StreamOpt, TimeoutOpt, ViewsOpt, WorkersOpt, app, progress_bar, resolve_timeout, run_guarded, say,
                  stderr)
from ..errors import NoVideosError, UsageError


def _rank_prefix(rank: int | None) -> str:
    return f"[rank {rank}] " if rank is not None else ""


def summary(res: Any, *, shard_only: bool) -> str:
    parts = []
    if res.skipped_complete:
        return f"{res.out or res.sidecar}: complete already (--resume): nothing to do"
    done_now = res.ok + res.failed - res.resumed
    if shard_only:
        parts.append(f"shard {res.shard}: {res.ok} ok, {res.failed} failed, {res.rows} rows")
    else:
        failed = res.total_failed
        parts.append(f"{res.total_videos - failed} videos ok, {failed} failed, {res.rows} rows x {res.width}")
    if res.resumed:
        parts.append(f"{res.resumed} done before (--resume)")
    if res.wall_s > 0 and done_now > 0:
        parts.append(f"{res.wall_s:.1f} s, {done_now / res.wall_s:.2f} videos/s, {res.clips / res.wall_s:.1f} clips/s, "
                     f"model busy {min(res.model_s / res.wall_s, 1):.0%}")
    text = "; ".join(parts)
    if res.merged:
        targets = [str(p) for p in (res.out, res.sidecar) if p is not None]
        text += f" -> {' + '.join(targets)}"
    return text


@app.command("extract-features")
def extract_features(
    paths: PathsArg = None,  # type: ignore[assignment]
    out: Annotated[Optional[Path], typer.Option(help="Features file (.npy); the sidecar .json goes beside it.",
                                                show_default=False)] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out-dir", help="Write one .npy per video into this folder "
                                                    "instead (sidecar: features.json).", show_default=False)] = None,
    model: ModelOpt = "tokshift-b16-8x224",
    revision: RevisionOpt = None,
    hub_namespace: NamespaceOpt = None,
    cache_dir: CacheDirOpt = None,
    token: TokenOpt = None,
    local_files_only: LocalFilesOnlyOpt = False,
    views: ViewsOpt = "1x1",
    sampling: SamplingOpt = "centred",
    per: Annotated[str, typer.Option(help="video: one row per video (mean over views and frames); clip: one row "
                                     "per temporal clip; frame: one row per sampled frame.")] = "video",
    dtype: DtypeOpt = "float32",
    runtime: RuntimeOpt = DEFAULT_RUNTIME,
    save_dtype: Annotated[str, typer.Option("--save-dtype", callback=choice("--save-dtype", ("float32", "float16")),
                                            help="Stored dtype of the features: float32 or float16.")] = "float32",
    compute_dtype: Annotated[Optional[str], typer.Option("--compute-dtype", hidden=True, show_default=False,
                                                         help="Deprecated: --dtype.")] = None,
    list_file: ListOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = 2,
    decoder: DecoderOpt = "auto",
    stream: StreamOpt = None,
    timeout: TimeoutOpt = None,
    shard: ShardOpt = None,
) -> None:
    """Embeddings (final-norm [CLS]) for many videos, streamed to .npy: resumable, sharded, torchrun-aware."""

    def body() -> int:
        from .app import load_for_inference
        from ..engine import resolve_device, resolve_dtype
        from ..features import FeatureOptions, Layout, Shard, check_outputs, init_distributed, video_file_names
        from ..jobs import rank_device, share_size, under_torchrun
        from ..features import extract_features as run_extract
        from ..video.inputs import expand_inputs

        precision = dtype
        if compute_dtype is not None:
            say("warning: --compute-dtype is deprecated and goes in the next release: --dtype is the model "
                "precision in every command (the stored dtype is --save-dtype)", style="yellow")
            precision = compute_dtype
        opts = FeatureOptions(views=views, per=per, dtype=save_dtype, compute_dtype=precision,
                              batch_size=batch_size, workers=workers, decoder=decoder,
                              timeout=resolve_timeout(timeout, workers), sampling=sampling, stream=stream)
        opts.validate()
        layout = Layout(out, out_dir)
        sh = Shard.parse(shard)
        torchrun = under_torchrun()
        if torchrun and sh.count > 1:
            raise UsageError("--shard cannot be combined with torchrun: under torchrun every rank is a shard")
        items = expand_inputs(paths or [], list_file=list_file)
        if not items:
            raise NoVideosError("no inputs: give video files or folders (or --list FILE)")
        item_paths = [it.path for it in items]
        pre_errors = {i: it.error for i, it in enumerate(items) if it.error}
        dev = resolve_device(device)
        if precision in ("float16", "fp16") and dev.type != "cuda" and compute_dtype is None:
            raise UsageError("--dtype float16: --dtype is the model precision (float16 needs CUDA); for features "
                             "stored as float16 use --save-dtype float16")
        resolve_dtype(precision, dev)  # a bad --dtype is exit 2 before the model loads
        dist = init_distributed(dev.type) if torchrun else None
        rank = dist.rank if dist is not None else None
        try:
            dev_str = rank_device(dev, dist)
            if dist is None:  # fail fast (exit 4) before loading a model; extract_features checks again
                names = video_file_names(item_paths) if layout.mode == "dir" else None
                check_outputs(layout, sh, resume=resume, overwrite=overwrite, file_names=names,
                              will_merge=sh.count == 1)
            from ..video.gpu import check_decoder_request

            check_decoder_request(decoder, dev_str)  # before the model loads; same answer on every rank: exit 2
            t0 = time.perf_counter()
            load = lambda: load_for_inference(model, revision, hub_namespace, dev_str, runtime=runtime,
                                              precision=precision, cache_dir=cache_dir, token=token, local_files_only=local_files_only)  # noqa: E731
            net = dist.agree(load) if dist is not None else load()
            load_s = time.perf_counter() - t0
            show = dist is None or dist.is_main
            if net.config.untrained and show:
                stderr.print("[bold red]warning:[/] this model has UNTRAINED weights: its features mean nothing")
            my_total = share_size(len(items), sh, dist)
            failed = 0
            clips = 0
            t_start = time.perf_counter()
            with progress_bar(my_total if show else 0, "extracting") as bar:
                task = bar.add_task("extracting", total=my_total, failed=0)

                def on_video(info: dict[str, Any]) -> None:
                    nonlocal failed, clips
                    if info["error"]:
                        failed += 1
                        say(f"{_rank_prefix(rank)}{info['video']}: {info['error']}")
                    clips += info["clips"]
                    rate = clips / max(time.perf_counter() - t_start, 1e-9)
                    bar.update(task, advance=1, failed=failed, description=f"extracting {rate:.1f} clips/s")

                def on_start(already_done: int) -> None:
                    if already_done:
                        bar.update(task, completed=already_done)

                try:
                    res = run_extract(net, item_paths, out, out_dir=out_dir, options=opts, errors=pre_errors,
                                      resume=resume, overwrite=overwrite, shard=sh if dist is None else None,
                                      dist=dist, on_video=on_video, on_start=on_start)
                except KeyboardInterrupt:
                    stderr.print("progress saved: run the same command with --resume to continue", style="yellow")
                    raise
            if show:
                say(summary(res, shard_only=not res.merged and not res.skipped_complete))
                if not res.merged and not res.skipped_complete and dist is None:
                    target = out if out is not None else out_dir
                    say(f"when all {sh.count} shards are done: tokshift merge {target} --shards {sh.count}")
                stderr.print(f"model loaded in {load_s:.1f} s", style="dim")
            if dist is not None and not dist.is_main:
                return EXIT_OK  # rank 0 reports for the job
            failures = res.total_failed if (res.merged or res.skipped_complete) else res.failed
            return EXIT_FAILED_INPUTS if failures else EXIT_OK
        finally:
            if dist is not None:
                dist.close()

    run_guarded(body)
