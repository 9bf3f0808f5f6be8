"""`tokshift timeline`: parse, call :func:`tokshift_cli.timeline.timeline`, render segment tables and strips."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import (DEFAULT_RUNTIME, TOP_K, BatchSizeOpt, CacheDirOpt, DtypeOpt, JsonOpt, ListOpt,
                      LocalFilesOnlyOpt, OverwriteOpt, PathsArg, ResumeOpt, RuntimeOpt, TokenOpt, TopKOpt)
from .app import (DEFAULT_TIMEOUT_S, DeviceOpt, EXIT_FAILED_INPUTS, EXIT_OK, ModelOpt, NamespaceOpt, RevisionOpt,
                  StreamOpt, app, load_for_inference, resolve_timeout, run_guarded, say, stderr, stdout)
from ..errors import NoVideosError, UsageError

ChunkTimeoutOpt = Annotated[Optional[float], typer.Option(
    "--timeout", min=0, show_default=False,
    help=f"Seconds opening a file, or decoding one chunk of its windows (a few windows), may take; past that the "
         f"worker process is killed and the rest of that file is reported as failed (its windows so far are kept). "
         f"Default {DEFAULT_TIMEOUT_S:g} (with --workers 0: no limit); 0 = no limit.")]


def segment_table(doc: dict[str, Any], colours: dict[int, tuple[int, int, int]]):
    """A rich Table of one video's segments: start, end, length, label, mean probability, windows."""
    from rich.table import Table
    from rich.text import Text

    from ..timeline.windows import format_time

    hours = (doc.get("duration_s") or 0) >= 3600
    caption = None
    if (doc.get("model") or {}).get("untrained"):
        caption = "UNTRAINED demo weights: these labels mean nothing (the pipeline works)"
    table = Table(caption=caption, caption_style="bold red", show_edge=False, pad_edge=False)
    for name, justify in (("start", "right"), ("end", "right"), ("length", "right"), ("label", "left"),
                          ("probability", "right"), ("windows", "right")):
        table.add_column(name, justify=justify, style="dim" if name in ("length", "windows") else None)
    for s in doc["segments"]:
        colour = colours.get(s["index"])
        swatch = Text("█ ", style=f"rgb({colour[0]},{colour[1]},{colour[2]})" if colour else "dim")
        label = Text(s["label"] + (" (uncertain)" if s["uncertain"] else ""), style="dim" if s["uncertain"] else "")
        a, b = s["windows"]
        table.add_row(format_time(s["start_s"], hours=hours), format_time(s["end_s"], hours=hours),
                      f"{s['end_s'] - s['start_s']:.1f} s", swatch + label, f"{s['probability']:.1%}",
                      f"{a}-{b}" if b > a else str(a))
    return table


def timeline_strip(doc: dict[str, Any], colours: dict[int, tuple[int, int, int]], width: int):
    """The whole timeline as one line of ``width`` coloured blocks (uncertain segments shaded), then a legend."""
    from rich.text import Text

    from ..timeline.windows import format_time

    segs = doc["segments"]
    line = Text()
    if not segs:
        return line
    t0, t1 = segs[0]["start_s"], segs[-1]["end_s"]
    hours = (doc.get("duration_s") or 0) >= 3600
    head, tail = format_time(t0, hours=hours) + " ", " " + format_time(t1, hours=hours)
    cells = max(8, width - len(head) - len(tail))
    ends = [s["end_s"] for s in segs]
    import bisect

    line.append(head, style="dim")
    for j in range(cells):
        t = t0 + (j + 0.5) / cells * (t1 - t0)
        s = segs[min(bisect.bisect_right(ends, t), len(segs) - 1)]
        c = colours.get(s["index"], (127, 127, 127))
        line.append("░" if s["uncertain"] else "█", style=f"rgb({c[0]},{c[1]},{c[2]})")
    line.append(tail, style="dim")
    legend = Text()
    for index, c in list(colours.items())[:8]:
        name = next((s["label"] for s in segs if s["index"] == index), None)
        if name is not None:
            legend.append("█ ", style=f"rgb({c[0]},{c[1]},{c[2]})")
            legend.append(name + "   ")
    return Text("\n").join([line, legend])


class _Bar:
    """A progress bar on stderr: the position in the current file (mm:ss of hh:mm:ss), windows/s and the ETA;
    several inputs add a files count. Never on stdout."""

    def __init__(self, n_files: int):
        from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn)

        self.n = n_files
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[where]}"),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=stderr, transient=True, redirect_stdout=False, redirect_stderr=False)
        self.task: Any = None
        self.current = -1
        self.t_start = time.perf_counter()
        self.windows = 0
        self.last_done = 0

    def __enter__(self) -> "_Bar":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def update(self, info: dict[str, Any]) -> None:
        from ..outputs import display_path
        from ..timeline.windows import format_time

        hours = info["duration_s"] >= 3600
        if info["input"] != self.current:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.current = info["input"]
            name = Path(display_path(info["video"])).name
            prefix = f"[{info['input'] + 1}/{self.n}] " if self.n > 1 else ""
            self.task = self.progress.add_task(f"{prefix}{name[:40]}", total=max(info["duration_s"], 1e-6),
                                               where="", rate="")
            self.last_done = info["windows_done"]
        else:
            self.windows += info["windows_done"] - self.last_done
            self.last_done = info["windows_done"]
        rate = self.windows / max(time.perf_counter() - self.t_start, 1e-9)
        where = f"{format_time(info['position_s'], hours=hours)} / {format_time(info['duration_s'], hours=hours)}"
        self.progress.update(self.task, completed=info["position_s"], where=where,
                             rate=f"{rate:.2f} windows/s" if self.windows else "")


@app.command()
def timeline(
    paths: PathsArg = None,  # type: ignore[assignment]
    model: ModelOpt = "tokshift-b16-8x224",
    revision: RevisionOpt = None,
    hub_namespace: NamespaceOpt = None,
    cache_dir: CacheDirOpt = None,
    token: TokenOpt = None,
    local_files_only: LocalFilesOnlyOpt = False,
    hop: Annotated[Optional[str], typer.Option(
        help="Time between window starts: seconds (4.5 or 4.5s, placed by the frames' timestamps) or frames "
             "(128f). Default: half a window's span (128f for 8x32).", show_default=False)] = None,
    top_k: TopKOpt = TOP_K,
    smooth: Annotated[int, typer.Option(min=1, help="Average the probabilities over this many windows (centred) "
                                        "before taking each window's top label.")] = 1,
    min_segment: Annotated[float, typer.Option(min=0, help="Segments shorter than this many seconds are marked "
                                               "uncertain.")] = 0.0,
    threshold: Annotated[float, typer.Option(min=0, max=1, help="Segments whose mean probability is below this "
                                             "are marked uncertain.")] = 0.0,
    labels: Annotated[Optional[str], typer.Option(help="Comma-separated class names: top-k and segments only among "
                                                  "them (probabilities stay the model's).", show_default=False)
                      ] = None,
    json_out: JsonOpt = False,
    all_probs: Annotated[bool, typer.Option("--all-probs", help="Add every window's full probability vector to "
                                            "the JSON (\"probs\").")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Write the JSON Lines document to this file.",
                                                show_default=False)] = None,
    csv: Annotated[Optional[Path], typer.Option(help="Write the segments as CSV, one row per segment.",
                                                show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG plot: top classes over time, segments shaded "
                                                 "(several inputs: NAME-<video>.png).", show_default=False)] = None,
    render: Annotated[Optional[Path], typer.Option(help="Write the video re-encoded (H.264, audio kept) with the "
                                                   "current label drawn on each frame (.mp4, .mov or .mkv; "
                                                   "several inputs: NAME-<video>.mp4).", show_default=False)
                      ] = None,
    render_height: Annotated[int, typer.Option(min=0, help="--render's height at most (taller videos are scaled "
                                               "down, aspect kept; 0: the source's size, slower to encode).")
                             ] = 360,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    runtime: RuntimeOpt = DEFAULT_RUNTIME,
    workers: Annotated[int, typer.Option(min=0, help="Decode worker processes (1: one pass over each file, in "
                                         "order; 0: decode in the main process).")] = 1,
    stream: StreamOpt = None,
    timeout: ChunkTimeoutOpt = None,
    list_file: ListOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """What happens when in long videos: labels per window, segments, a plot and an annotated video."""

    def body() -> int:
        from ..engine import resolve_device, resolve_dtype
        from ..outputs import check_output_path, ensure_output_folder
        from ..timeline.windows import TimelineOptions, doc_json
        from ..timeline.windows import timeline as run_timeline
        from ..timeline.render import RENDER_FORMATS, label_colours
        from ..video.inputs import expand_inputs

        opts = TimelineOptions(hop=hop, top_k=top_k, smooth=smooth, min_segment=min_segment, threshold=threshold,
                               labels=labels, all_probs=all_probs, batch_size=batch_size, dtype=dtype,
                               workers=workers, timeout=resolve_timeout(timeout, workers), stream=stream,
                               render_height=render_height)
        opts.validate()
        if render is not None and render.suffix.lower() not in RENDER_FORMATS:
            raise UsageError(f"--render {render}: give a {', '.join(RENDER_FORMATS)} file name")
        if plot is not None and plot.suffix.lower() != ".png":
            raise UsageError(f"--plot {plot}: give a .png file name")
        items = expand_inputs(paths or [], list_file=list_file)
        if not items:
            raise NoVideosError("no inputs: give video files or folders (or --list FILE)")
        many = len(items) > 1
        for p in (out, csv, plot, render):  # before the model loads: exit 4 at once, not after an hour
            if p is None:
                continue
            if resume:
                ensure_output_folder(p.parent)
            elif many and p in (plot, render):
                ensure_output_folder(p.parent)
            else:
                check_output_path(p, overwrite=overwrite)
        resolve_dtype(dtype, resolve_device(device))  # a bad --dtype is exit 2 before the model loads
        t0 = time.perf_counter()
        net = load_for_inference(model, revision, hub_namespace, device, runtime=runtime, precision=dtype,
                                 cache_dir=cache_dir, token=token, local_files_only=local_files_only)
        load_s = time.perf_counter() - t0
        if net.config.untrained:
            stderr.print("[bold red]warning:[/] this model has UNTRAINED weights: its labels mean nothing")
        pre_errors = {i: it.error for i, it in enumerate(items) if it.error}
        width = max(40, min(stdout.width, 160))

        def on_result(doc: dict[str, Any]) -> None:
            if doc["error"] is not None:
                say(f"{doc['video']}: {doc['error']}")
            elif doc["incomplete"] is not None:
                say(f"{doc['video']}: {doc['incomplete']}")
            if json_out:
                sys.stdout.write(doc_json(doc) + "\n")
                sys.stdout.flush()
            elif doc["segments"]:
                from .render import video_heading

                colours = label_colours(doc["segments"])
                stdout.print(video_heading(doc["video"]), soft_wrap=True)
                stdout.print(segment_table(doc, colours))
                stdout.print(timeline_strip(doc, colours, width))
                stdout.print()

        with _Bar(len(items)) as bar:
            try:
                res = run_timeline(net, [it.path for it in items], opts, out=out, csv=csv, plot=plot,
                                   render=render, errors=pre_errors, resume=resume, overwrite=overwrite,
                                   keep_results=False, on_progress=bar.update, on_result=on_result)
            except KeyboardInterrupt:
                stderr.print("progress saved: run the same command with --resume to continue", style="yellow")
                raise
        if res.skipped_complete:
            say("complete already (--resume): nothing to do")
            return EXIT_OK
        parts = [f"{res.ok} complete", f"{res.incomplete} incomplete", f"{res.failed} failed"]
        if res.resumed_windows:
            parts.append(f"{res.resumed_windows} windows done before (--resume)")
        if res.windows and res.wall_s > 0:
            parts.append(f"{res.windows} windows in {res.wall_s:.1f} s ({res.windows / res.wall_s:.2f} windows/s, "
                         f"model busy {min(res.model_s / res.wall_s, 1):.0%})")
        if res.outputs:
            shown = [str(p) for p in res.outputs[:4]] + (["..."] if len(res.outputs) > 4 else [])
            parts.append("wrote " + ", ".join(shown))
        say("; ".join(parts))
        stderr.print(f"model loaded in {load_s:.1f} s", style="dim")
        return EXIT_FAILED_INPUTS if (res.failed or res.incomplete) else EXIT_OK

    run_guarded(body)
