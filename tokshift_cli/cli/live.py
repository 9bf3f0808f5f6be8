"""`tokshift live`: parse, call :func:`tokshift_cli.live.run_live`, render a live panel, lines or JSON Lines."""

from __future__ import annotations

import sys
import time
from collections import deque
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .app import (EXIT_FAILED_INPUTS, EXIT_OK, DeviceOpt, ModelOpt, NamespaceOpt, RevisionOpt, app, load_for_inference,
                  run_guarded, say, stderr, stdout)
from .options import DEFAULT_RUNTIME, DtypeOpt, RuntimeOpt


class _Panel:
    """What the live panel shows: the current label and probability, a strip of recent labels, latency, skipped
    windows, gaps, frames in and decisions out per second."""

    def __init__(self, stats: Any, untrained: bool, strip: int = 40):
        self.stats, self.untrained = stats, untrained
        self.recent: deque[tuple[int, str]] = deque(maxlen=strip)
        self.top: list[dict[str, Any]] = []
        self.latency: float | None = None
        self.note = "connecting..."
        self.stream_s = 0.0
        self._rate: deque[tuple[float, int, int]] = deque(maxlen=20)

    def update(self, ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind in ("decision", "change"):
            self.top = ev["top_k"]
            self.latency = ev["latency_s"]
            self.stream_s = ev["end_s"]
            lab = ev.get("label", self.top[0]["label"]) if kind == "change" else self.top[0]["label"]
            idx = ev.get("index", self.top[0]["index"]) if kind == "change" else self.top[0]["index"]
            self.recent.append((-1 if idx is None else int(idx), lab or "uncertain"))
            self.note = ""
        elif kind == "connected":
            self.note = f"connected: {ev['codec']} {ev['width']}x{ev['height']} {ev['fps']:g} fps"
        elif kind == "gap":
            self.note = f"gap: {ev['reason']}; reconnecting"
            self.recent.append((-2, "gap"))
        elif kind == "end":
            self.note = f"end: {ev['reason']}"

    def render(self):
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        from ..timeline.render import label_colours

        st = self.stats
        now = time.monotonic()
        self._rate.append((now, st.frames_in, st.decisions))
        t0, f0, d0 = self._rate[0]
        dt = max(now - t0, 1e-9)
        fps_in = (st.frames_in - f0) / dt if dt > 0.5 else 0.0
        dps = (st.decisions - d0) / dt if dt > 0.5 else 0.0
        head = Text()
        if self.top:
            head.append(f"{self.top[0]['label']}", style="bold")
            head.append(f"  {self.top[0]['probability']:.1%}")
            for t in self.top[1:]:
                head.append(f"   {t['label']} {t['probability']:.1%}", style="dim")
        else:
            head.append("waiting for the first window...", style="dim")
        segs = [{"index": i, "start_s": float(k), "end_s": k + 1.0} for k, (i, _) in enumerate(self.recent) if i >= 0]
        colours = label_colours(segs) if segs else {}
        strip = Text()
        for i, _ in self.recent:
            c = colours.get(i)
            strip.append("|" if i == -2 else ("░" if i == -1 else "█"),
                         style=f"rgb({c[0]},{c[1]},{c[2]})" if c else "red" if i == -2 else "dim")
        grid = Table.grid(padding=(0, 2))
        p50, p95 = st.percentile(50), st.percentile(95)
        lat = "-" if self.latency is None else f"{self.latency * 1000:.0f} ms (p50 {p50 * 1000:.0f}, p95 " \
                                               f"{p95 * 1000:.0f})"
        grid.add_row(Text("latency", style="dim"), lat, Text("skipped windows", style="dim"), str(st.skipped))
        grid.add_row(Text("frames in", style="dim"), f"{fps_in:.1f} /s", Text("decisions", style="dim"),
                     f"{st.decisions} ({dps:.2f} /s)")
        grid.add_row(Text("stream", style="dim"), f"{self.stream_s:.1f} s", Text("gaps", style="dim"), str(st.gaps))
        parts = [head, strip, grid]
        if self.note:
            parts.append(Text(self.note, style="yellow"))
        title = f"tokshift live: {st.frames} frames {st.stride} apart"
        if self.untrained:
            title += " (UNTRAINED demo weights)"
        from rich.console import Group

        return Panel(Group(*parts), title=title, title_align="left")


@app.command()
def live(
    source: Annotated[str, typer.Argument(help="A camera (/dev/video0, or an index: 0), a stream URL (rtsp://, "
                                          "rtmp://, udp://, tcp://, srt://, http(s):// MPEG-TS or HLS), or a file "
                                          "with --realtime.", show_default=False)],
    model: ModelOpt = "tokshift-b16-8x224",
    revision: RevisionOpt = None,
    hub_namespace: NamespaceOpt = None,
    hop: Annotated[str, typer.Option(help="Time between decisions: seconds (1 or 1s) or frames (30f). When the "
                                     "model is slower, stale windows are skipped (counted), never queued.")] = "1",
    stride: Annotated[Optional[int], typer.Option(
        min=1, show_default=False, help="Frames between a window's frames. Default: the model's (32 for the "
                                        "authors' models, as trained); smaller reacts faster but departs from "
                                        "training.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per decision.")] = 3,
    labels: Annotated[Optional[str], typer.Option(help="Comma-separated class names: top-k only among them.",
                                                  show_default=False)] = None,
    on_change: Annotated[bool, typer.Option("--on-change", help="Report label changes only (after --smooth and "
                                            "--threshold).")] = False,
    smooth: Annotated[int, typer.Option(min=1, help="With --on-change: average the probabilities over the last "
                                        "N decisions.")] = 1,
    threshold: Annotated[float, typer.Option(min=0, max=1, help="With --on-change: a label below this "
                                             "probability is reported as uncertain.")] = 0.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print only JSON Lines on stdout: one event per "
                                           "decision, gap and connection.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Append the same JSON Lines to this file (fsync'ed after "
                                                "each line).", show_default=False)] = None,
    duration: Annotated[Optional[float], typer.Option(min=0, show_default=False,
                                                      help="Stop after this many seconds.")] = None,
    reconnect: Annotated[Optional[bool], typer.Option(
        "--reconnect/--no-reconnect", show_default=False,
        help="Reopen a dropped stream with backoff (default: on for network sources).")] = None,
    realtime: Annotated[bool, typer.Option("--realtime", help="Read a file at its own pace (its timestamps), "
                                           "as if it were live.")] = False,
    transport: Annotated[str, typer.Option(help="rtsp:// transport: tcp or udp.")] = "tcp",
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to wait for the source to open, or for its "
                                           "next packet (then it counts as dropped); 0 = no limit.")] = 10.0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "float32",
    runtime: RuntimeOpt = DEFAULT_RUNTIME,
    save_views: Annotated[Optional[Path], typer.Option(
        help="Write each decision's frames as the model gets them (centre crop, before normalising): "
             "decision<d>_frame<j>_n<frame number>.png under this folder.", show_default=False)] = None,
) -> None:
    """Recognise actions in a live stream: a decision every hop on the newest window, latency bounded."""

    def body() -> int:
        from ..engine import resolve_device, resolve_dtype
        from ..live import EventFile, LiveOptions, LiveStats, event_json, run_live
        from ..video.live_source import parse_source

        opts = LiveOptions(hop=hop, stride=stride, top_k=top_k, labels=labels, on_change=on_change, smooth=smooth,
                           threshold=threshold, duration=duration, reconnect=reconnect, realtime=realtime,
                           transport=transport, dtype=dtype, timeout=timeout or None, save_views=save_views)
        opts.validate()
        parse_source(source, realtime=realtime, transport=transport)  # a bad SOURCE is exit 2 before the model
        resolve_dtype(dtype, resolve_device(device))
        net = load_for_inference(model, revision, hub_namespace, device, dtype, runtime)
        if net.config.untrained:
            stderr.print("[bold red]warning:[/] this model has UNTRAINED weights: its labels mean nothing")
        stats = LiveStats()
        panel_console = stderr if json_out else stdout
        panel = _Panel(stats, bool(net.config.untrained)) if panel_console.is_terminal else None
        log = EventFile(out) if out is not None else None
        ended: list[str] = []

        def on_event(ev: dict[str, Any]) -> None:
            if log is not None:
                log.write(ev)
            if ev["event"] == "end":
                ended.append(ev["reason"])
            if json_out:
                sys.stdout.write(event_json(ev) + "\n")
                sys.stdout.flush()
            if panel is not None:
                panel.update(ev)
                if live_view is not None:
                    live_view.update(panel.render())
                return
            if json_out:
                if ev["event"] in ("gap", "end"):
                    say(f"{source}: {ev['event']}: {ev['reason']}")
                return
            kind = ev["event"]
            if kind in ("decision", "change"):
                t = ev["top_k"][0]
                label = ev.get("label", t["label"]) if kind == "change" else t["label"]
                prob = ev.get("probability", t["probability"]) if kind == "change" else t["probability"]
                stdout.print(f"{time.strftime('%H:%M:%S', time.localtime(ev['time']))}  "
                             f"{ev['end_s']:9.2f} s  {label or 'uncertain'}  {prob:.1%}  latency "
                             f"{ev['latency_s'] * 1000:.0f} ms" + (f"  skipped {ev['skipped']}" if ev["skipped"]
                                                                    else ""), highlight=False, soft_wrap=True)
            elif kind in ("gap", "end"):
                say(f"{source}: {kind}: {ev['reason']}")

        live_view = None
        try:
            if panel is not None:
                from rich.live import Live

                live_view = Live(panel.render(), console=panel_console, refresh_per_second=4,
                                 get_renderable=panel.render, transient=False)
                live_view.start()
            run_live(net, source, opts, on_event=on_event, stats=stats)
        finally:
            if live_view is not None:
                live_view.stop()
            if log is not None:
                log.close()
        s = stats.summary()
        p50, p95 = s["latency_p50_s"], s["latency_p95_s"]
        say(f"{s['decisions']} decisions in {s['wall_s']:.1f} s ({s['decisions_per_s']:.2f}/s), {s['skipped']} "
            f"windows skipped, {s['gaps']} gaps; latency p50 "
            f"{'-' if p50 is None else f'{p50 * 1000:.0f} ms'}, p95 {'-' if p95 is None else f'{p95 * 1000:.0f} ms'}",
            style="dim")
        failed = any(not r.startswith(("end of file", "the stream ended")) for r in ended)
        return EXIT_FAILED_INPUTS if failed else EXIT_OK

    run_guarded(body)
