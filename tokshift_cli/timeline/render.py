"""Pictures of a timeline: the ``--plot`` PNG (matplotlib) and the ``--render`` video (PyAV, H.264).

* :func:`plot_timeline`: the probability of the top classes over time, one line per class, the segments as a
  coloured ribbon above and shaded behind; time ticks every 1 s ... 1 h so a two-hour file stays readable.
  matplotlib is imported here only, with its Agg canvas (no pyplot, no display, no global state).
* :func:`render_video`: the video re-encoded (libx264, ``preset=veryfast``) with the current label and its
  probability in a box at the top left and the segments as a strip at the bottom with a play head; every frame
  keeps its presentation timestamp (same frame count and duration as the input, variable frame rates too) and
  the audio streams are copied (transcoded to AAC only where the container cannot hold them). The overlay is
  blended straight into the decoded YUV planes and the label box is drawn (PIL) once per distinct text, so a
  frame costs its decode, a few small array operations and its encode. Rotated input is turned upright.

Both write atomically (:func:`tokshift_cli.outputs.atomic_open`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import OutputError, VideoError
from ..outputs import atomic_open, display_path

__all__ = ["VideoTimeline", "format_time", "smooth_windows", "label_colours", "plot_timeline", "render_video",
           "RENDER_FORMATS", "UNCERTAIN_RGB", "h264_like"]


@dataclass
class VideoTimeline:
    """One video's timeline as :func:`tokshift_cli.timeline.timeline` makes it: its JSON document, and what the
    pictures need besides (window probabilities, segment of each window, the time each window owns)."""

    doc: dict[str, Any]
    probs: np.ndarray  #: [W, C] float32
    classes: np.ndarray  #: the classes in view
    seg_of: np.ndarray  #: [W] segment of each window
    edges: np.ndarray  #: [W + 1] time each window owns


def format_time(seconds: float, *, hours: bool | None = None) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour on, or when ``hours``)."""
    s = int(max(0.0, float(seconds)) + 1e-9)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if hours or (hours is None and h):
        return f"{h}:{m:02d}:{sec:02d}"
    return f"{m:02d}:{sec:02d}"


def smooth_windows(p: np.ndarray, n: int) -> np.ndarray:
    """Moving average over ``n`` windows (centred; fewer at the ends), float64, in a fixed order of additions."""
    p = np.asarray(p, dtype=np.float64)
    if n <= 1 or p.shape[0] <= 1:
        return p
    w = p.shape[0]
    lo = np.maximum(np.arange(w) - (n - 1) // 2, 0)
    hi = np.minimum(np.arange(w) + n // 2 + 1, w)
    cs = np.concatenate([np.zeros((1, p.shape[1])), np.cumsum(p, axis=0)])
    return (cs[hi] - cs[lo]) / (hi - lo)[:, None]


#: matplotlib's tab10, then tab20's light tones: one colour per label, in order of screen time.
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
            (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (219, 219, 141), (158, 218, 229)]
#: Labels past the palette, and uncertain segments in the rendered strip.
OTHER_RGB = (127, 127, 127)
UNCERTAIN_RGB = (90, 90, 90)
#: ``--render`` suffixes and their containers.
RENDER_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
#: Audio codecs MP4/MOV hold as they are (others are transcoded to AAC); Matroska holds them all.
_MP4_AUDIO = {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"}


def label_colours(segments: Sequence[dict[str, Any]], extra: Sequence[int] = ()) -> dict[int, tuple[int, int, int]]:
    """A colour per class index: the segments' labels by total duration (longest first), then ``extra``."""
    time_of: dict[int, float] = {}
    for s in segments:
        time_of[s["index"]] = time_of.get(s["index"], 0.0) + s["end_s"] - s["start_s"]
    order = sorted(time_of, key=lambda i: (-time_of[i], i))
    order += [int(i) for i in extra if int(i) not in time_of]
    return {i: (_PALETTE[n] if n < len(_PALETTE) else OTHER_RGB) for n, i in enumerate(order)}


def _plotted_classes(tl: VideoTimeline, limit: int) -> list[int]:
    """Classes drawn as lines: the ``--labels`` classes, else the segments' labels by screen time, then the
    classes with the highest mean probability, ``limit`` in all."""
    if tl.doc["view"].get("labels") is not None:
        return [int(c) for c in tl.classes[:limit]]
    seen: dict[int, float] = {}
    for s in tl.doc["segments"]:
        seen[s["index"]] = seen.get(s["index"], 0.0) + s["end_s"] - s["start_s"]
    order = sorted(seen, key=lambda i: (-seen[i], i))[:limit]
    if len(order) < limit:
        mean = tl.probs[:, tl.classes].astype(np.float64).mean(axis=0)
        for j in np.argsort(-mean, kind="stable"):
            c = int(tl.classes[j])
            if c not in order:
                order.append(c)
            if len(order) >= limit:
                break
    return order


def _tick_step(span_s: float, target: int = 10) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 14400):
        if span_s / step <= target:
            return float(step)
    return 28800.0


def plot_timeline(path: str | os.PathLike, tl: VideoTimeline, labels: Sequence[str], *, lines: int = 6,
                  width_in: float | None = None, dpi: int = 100) -> Path:
    """Write the ``--plot`` PNG of one video's timeline to ``path`` (atomically); returns ``path``. Past 600
    windows (~40 minutes at 8x32, 30 fps) the lines show a moving average over ``windows // 300`` windows and the
    figure widens, so a two-hour file stays readable; the segments are drawn exactly."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    doc = tl.doc
    w = len(doc["windows"])
    start = np.array([x["start_s"] for x in doc["windows"]], dtype=np.float64)
    end = np.array([x["end_s"] for x in doc["windows"]], dtype=np.float64)
    centres = (start + end) / 2
    shown = _plotted_classes(tl, lines)
    colours = label_colours(doc["segments"], shown)
    rgb = {i: tuple(v / 255 for v in c) for i, c in colours.items()}
    t0, t1 = float(tl.edges[0]) if w else 0.0, float(tl.edges[-1]) if w else 1.0
    hours = (doc.get("duration_s") or t1) >= 3600
    if width_in is None:
        width_in = 12.0 if t1 - t0 < 1800 else 16.0
    avg = w // 300 if w > 600 else 1
    if avg > 1:
        values = smooth_windows(tl.probs[:, shown], avg)
    else:
        values = tl.probs[:, shown]

    n_legend = len(shown)
    cols = min(max(n_legend, 1), 6)
    legend_rows = -(-n_legend // cols) if n_legend else 0
    height_in = 3.9 + 0.22 * legend_rows
    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    bottom = (0.55 + 0.22 * legend_rows) / height_in
    grid = fig.add_gridspec(2, 1, height_ratios=[1, 7], hspace=0.08, left=0.055, right=0.985,
                            top=1 - 0.42 / height_in, bottom=bottom)
    ribbon = fig.add_subplot(grid[0])
    ax = fig.add_subplot(grid[1], sharex=ribbon)
    for s in doc["segments"]:  # the ribbon, and the segments shaded behind the lines
        c = rgb.get(s["index"], (0.5, 0.5, 0.5))
        width = s["end_s"] - s["start_s"]
        ribbon.broken_barh([(s["start_s"], width)], (0, 1), facecolors=[c], alpha=0.35 if s["uncertain"] else 1.0,
                           hatch="///" if s["uncertain"] else None, edgecolor="white", linewidth=0.3)
        ax.axvspan(s["start_s"], s["end_s"], color=c, alpha=0.07 if s["uncertain"] else 0.13, linewidth=0)
    marker = "o" if w <= 60 else None
    for j, c in enumerate(shown):
        ax.plot(centres, values[:, j], color=rgb.get(c, (0.5, 0.5, 0.5)), linewidth=1.3 if w <= 600 else 1.0,
                marker=marker, markersize=3, label=labels[c])
    ribbon.set_yticks([])
    ribbon.tick_params(labelbottom=False, bottom=False)
    for side in ("top", "right", "left"):
        ribbon.spines[side].set_visible(False)
    ax.set_xlim(t0, t1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("probability" if avg == 1 else f"probability (mean of {avg} windows)")
    ax.grid(axis="y", alpha=0.3)
    ax.xaxis.set_major_locator(MultipleLocator(_tick_step(t1 - t0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_time(x, hours=hours)))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    model = doc.get("model") or {}
    title = f"{Path(display_path(doc['video'])).name}: {len(doc['segments'])} segments, {w} windows"
    if model.get("ref"):
        title += f"  ({model['ref']}"
        title += ", UNTRAINED: labels mean nothing)" if model.get("untrained") else ")"
    fig.suptitle(title, fontsize=11, x=0.055, ha="left")
    handles, names = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="lower center", ncol=cols, frameon=False, fontsize=9,
                   bbox_to_anchor=(0.5, 0.0))
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path


# --- --render -------------------------------------------------------------------------------------------------


def _yuv(rgb: np.ndarray, hd: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB (float, 0..255, last axis) -> limited-range Y, U, V (BT.709 for HD, else BT.601)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if hd:
        y = 16 + 0.1826 * r + 0.6142 * g + 0.0620 * b
        u = 128 - 0.1006 * r - 0.3386 * g + 0.4392 * b
        v = 128 + 0.4392 * r - 0.3989 * g - 0.0403 * b
    else:
        y = 16 + 0.2568 * r + 0.5041 * g + 0.0979 * b
        u = 128 - 0.1482 * r - 0.2910 * g + 0.4392 * b
        v = 128 + 0.4392 * r - 0.3678 * g - 0.0714 * b
    return y, u, v


def _half(x: np.ndarray) -> np.ndarray:
    """2x2 mean (chroma subsampling) of an array with even height and width."""
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4


class _Overlay:
    """The label box (one per distinct text, drawn once) and the segment strip, as YUV planes with alpha."""

    def __init__(self, width: int, height: int, tl: VideoTimeline, labels: Sequence[str]):
        from PIL import ImageFont

        self.w, self.h = width, height
        self.hd = height >= 720
        self.size = max(10, round(height / 20))
        self.font = ImageFont.load_default(size=self.size)
        self.small = ImageFont.load_default(size=max(8, round(self.size * 0.6)))
        self.margin = (max(2, height // 60) // 2) * 2
        self.boxes: dict[tuple[str, str, int], tuple[np.ndarray, ...]] = {}
        doc = tl.doc
        self.colours = label_colours(doc["segments"])
        t0, t1 = float(tl.edges[0]), float(tl.edges[-1])
        self.t0, self.t1 = t0, max(t1, t0 + 1e-6)
        self.strip_h = max(4, (height // 45) // 2 * 2)
        cols = np.zeros((width, 3), dtype=np.float64)
        x_time = t0 + (np.arange(width) + 0.5) / width * (self.t1 - t0)
        ends = np.array([s["end_s"] for s in doc["segments"]])
        seg = np.clip(np.searchsorted(ends, x_time, side="right"), 0, len(ends) - 1)
        for j, s in enumerate(doc["segments"]):
            c = UNCERTAIN_RGB if s["uncertain"] else self.colours.get(s["index"], OTHER_RGB)
            cols[seg == j] = c
        strip = np.repeat(cols[None], self.strip_h, axis=0)
        y, u, v = _yuv(strip, self.hd)
        self.strip = (y.astype(np.uint8), _half(u).astype(np.uint8), _half(v).astype(np.uint8))

    def box(self, label: str, prob: float, uncertain: bool, rgb: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
        """(Y, U, V, alpha, alpha_half) of the label box for this text, made once."""
        text = f"{label}{'?' if uncertain else ''}"
        pct = f"{prob:.0%}"
        key = (text, pct, int(uncertain))
        hit = self.boxes.get(key)
        if hit is not None:
            return hit
        from PIL import Image, ImageDraw

        pad = max(3, self.size // 3)
        tw = int(self.font.getlength(f"{text}  {pct}")) + 1
        bw = min(self.w - 2 * self.margin, tw + 2 * pad + self.size // 2)
        bh = self.size + 2 * pad + max(3, self.size // 5)
        bw, bh = max(2, bw // 2 * 2), max(2, (bh + 1) // 2 * 2)
        img = Image.new("RGBA", (bw, bh), (0, 0, 0, 0))
        d = ImageDraw.Draw(img)
        d.rounded_rectangle((0, 0, bw - 1, bh - 1), radius=max(2, pad), fill=(16, 16, 16, 175))
        d.rectangle((0, 0, max(2, self.size // 4), bh - 1), fill=(*rgb, 255))  # the label's colour
        x = self.size // 4 + pad
        d.text((x, pad), text, font=self.font, fill=(255, 255, 255, 255) if not uncertain else (200, 200, 200, 255))
        d.text((x + self.font.getlength(text + "  "), pad), pct, font=self.font, fill=(255, 220, 90, 255))
        bar_y = bh - max(3, self.size // 5) - 1
        d.rectangle((x, bar_y, x + int((bw - x - pad) * max(0.0, min(prob, 1.0))), bh - 2), fill=(*rgb, 255))
        a = np.asarray(img, dtype=np.float64)
        alpha = a[..., 3] / 255.0
        y, u, v = _yuv(a[..., :3], self.hd)
        out = (y, _half(u), _half(v), alpha, _half(alpha))
        if len(self.boxes) > 4096:
            self.boxes.clear()
        self.boxes[key] = out
        return out

    def apply(self, y: np.ndarray, u: np.ndarray, v: np.ndarray, t: float, box: tuple[np.ndarray, ...]) -> None:
        """Blend the box at the top left and paste the strip with its play head at the bottom, in place."""
        by, bu, bv, a, ah = box
        m = self.margin
        bh, bw = by.shape
        bh, bw = min(bh, self.h - m), min(bw, self.w - m)
        if bh > 1 and bw > 1:
            sl = (slice(m, m + bh), slice(m, m + bw))
            y[sl] = (y[sl] * (1 - a[:bh, :bw]) + by[:bh, :bw] * a[:bh, :bw]).astype(np.uint8)
            sc = (slice(m // 2, m // 2 + bh // 2), slice(m // 2, m // 2 + bw // 2))
            ahc = ah[:bh // 2, :bw // 2]
            u[sc] = (u[sc] * (1 - ahc) + bu[:bh // 2, :bw // 2] * ahc).astype(np.uint8)
            v[sc] = (v[sc] * (1 - ahc) + bv[:bh // 2, :bw // 2] * ahc).astype(np.uint8)
        sy, su, sv = self.strip
        sh = sy.shape[0]
        y[self.h - sh:] = sy
        u[(self.h - sh) // 2:] = su
        v[(self.h - sh) // 2:] = sv
        x = int(round((t - self.t0) / (self.t1 - self.t0) * (self.w - 1)))
        x = min(max(x, 0), self.w - 2) // 2 * 2
        y[self.h - sh - 2:, x:x + 2] = 235
        u[(self.h - sh - 2) // 2:, x // 2] = 128
        v[(self.h - sh - 2) // 2:, x // 2] = 128


def _audio_outputs(cout: Any, ains: list[Any], fmt: str) -> dict[int, tuple[Any, bool]]:
    """An output stream per audio stream: (stream, copied as is) -- copied where the container takes the codec,
    else re-encoded to AAC."""
    amap: dict[int, tuple[Any, bool]] = {}
    for a in ains:
        name = a.codec_context.name if a.codec_context is not None else ""
        copy = fmt == "matroska" or name in _MP4_AUDIO
        if copy:
            amap[a.index] = (cout.add_stream_from_template(a), True)
        else:
            out_a = cout.add_stream("aac", rate=a.codec_context.sample_rate or 48000)
            channels = a.codec_context.layout.nb_channels if a.codec_context.layout else 2
            out_a.codec_context.layout = "mono" if channels == 1 else "stereo"
            out_a.codec_context.format = "fltp"  # PyAV resamples and re-frames what it is given
            amap[a.index] = (out_a, False)
    return amap


def _mux_audio(packet: Any, out_a: Any, copy: bool, cout: Any) -> None:
    """One audio packet into the output: copied, or decoded and re-encoded (a damaged packet is left out)."""
    import av

    if copy:
        if packet.dts is None or packet.size == 0:
            return
        packet.stream = out_a
        cout.mux(packet)
        return
    try:
        for af in packet.decode():
            af.pts = None
            for p in out_a.encode(af):
                cout.mux(p)
    except av.error.FFmpegError:
        return


def _upright_planes(frame: Any, ow: int, oh: int, rot: int, flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A decoded frame as the Y, U, V planes of an ``ow`` x ``oh`` yuv420p picture, turned as a player shows it."""
    if rot % 2:
        frame = frame.reformat(width=oh, height=ow, format="yuv420p")
    else:
        frame = frame.reformat(width=ow, height=oh, format="yuv420p")
    flat = frame.to_ndarray().reshape(-1)
    pw, ph = (oh, ow) if rot % 2 else (ow, oh)
    n = pw * ph
    y = flat[:n].reshape(ph, pw)
    u = flat[n:n + n // 4].reshape(ph // 2, pw // 2)
    v = flat[n + n // 4:].reshape(ph // 2, pw // 2)
    if rot or flip:
        planes = []
        for p in (y, u, v):
            if flip:
                p = p[:, ::-1]
            planes.append(np.ascontiguousarray(np.rot90(p, rot)))
        y, u, v = planes
    return y, u, v


def h264_like(cout: Any, vin: Any, width: int, height: int, *, crf: int, preset: str) -> Any:
    """A libx264 yuv420p output stream in ``cout`` at ``width`` x ``height`` with the rate and time base of the
    source stream ``vin`` (so its timestamps carry over): the writer of ``--render`` and of explain's overlays."""
    vout = cout.add_stream("libx264", rate=vin.average_rate or vin.guessed_rate or 25)
    vout.width, vout.height, vout.pix_fmt = width, height, "yuv420p"
    vout.time_base = vin.time_base
    vout.codec_context.time_base = vin.time_base
    vout.options = {"preset": preset, "crf": str(crf)}
    return vout


def render_video(src: str, dst: str | os.PathLike, tl: VideoTimeline, labels: Sequence[str], *,
                 stream: int | None = None, preset: str = "veryfast", crf: int = 20, max_height: int = 0) -> Path:
    """Write ``src`` re-encoded with the timeline drawn on every frame to ``dst`` (atomically); see the module
    docstring. ``max_height``: scale a taller picture down to this height (0: keep the source's size). Raises
    :class:`VideoError` when ``src`` cannot be read again, :class:`OutputError` when ``dst`` cannot be written."""
    import av

    from ..video.geometry import Geometry

    dst = Path(dst)
    fmt = RENDER_FORMATS.get(dst.suffix.lower())
    if fmt is None:
        raise OutputError(f"{dst}: --render writes {', '.join(RENDER_FORMATS)} files")
    doc = tl.doc
    info = doc.get("video_info") or {}
    geometry = Geometry.from_dict(info) if info else None
    rot = geometry.quarter_turns if geometry is not None else 0
    flip = bool(geometry.flip) if geometry is not None else False
    edges, seg_of = tl.edges, tl.seg_of
    segs = doc["segments"]
    win_label = np.array([segs[int(s)]["index"] for s in seg_of], dtype=np.int64)
    win_prob = tl.probs[np.arange(len(seg_of)), win_label].astype(np.float64)
    win_unc = np.array([segs[int(s)]["uncertain"] for s in seg_of], dtype=bool)
    try:
        cin = av.open(src, "r")
    except av.error.FFmpegError as e:
        raise VideoError(src, f"cannot be read again for --render ({e})") from None
    try:
        videos = list(cin.streams.video)
        vin = videos[int(info.get("stream", stream or 0) or 0)]
        ains = list(cin.streams.audio)
        cc_in = vin.codec_context
        sw, sh = int(cc_in.width), int(cc_in.height)
        if rot % 2:
            sw, sh = sh, sw
        if max_height and sh > max_height:  # scaled down, aspect kept
            sw, sh = max(2, round(sw * max_height / sh)), max_height
        ow, oh = sw // 2 * 2, sh // 2 * 2  # yuv420p: even sizes
        with atomic_open(dst, "wb") as f:
            cout = av.open(f, "w", format=fmt)
            try:
                vout = h264_like(cout, vin, ow, oh, crf=crf, preset=preset)
                if geometry is not None and geometry.sar != 1 and not rot:
                    vout.codec_context.sample_aspect_ratio = geometry.sar
                amap = _audio_outputs(cout, ains, fmt)
                overlay = _Overlay(ow, oh, tl, labels)
                first_pts: int | None = None
                last_pts = -1
                tb = float(vin.time_base)

                def emit(frame: Any) -> None:
                    nonlocal first_pts, last_pts
                    pts = frame.pts if frame.pts is not None else last_pts + 1
                    if first_pts is None:
                        first_pts = pts
                    last_pts = pts
                    t = (pts - first_pts) * tb
                    w = int(np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(seg_of) - 1))
                    lab = int(win_label[w])
                    box = overlay.box(labels[lab], float(win_prob[w]), bool(win_unc[w]),
                                      overlay.colours.get(lab, OTHER_RGB))
                    y, u, v = _upright_planes(frame, ow, oh, rot, flip)
                    overlay.apply(y, u, v, t, box)
                    buf = np.concatenate([y.reshape(-1), u.reshape(-1), v.reshape(-1)]).reshape(oh * 3 // 2, ow)
                    out = av.VideoFrame.from_ndarray(buf, format="yuv420p")
                    out.pts, out.time_base = pts, vin.time_base
                    for p in vout.encode(out):
                        cout.mux(p)

                for packet in cin.demux(vin, *ains):
                    if packet.stream.index == vin.index:
                        try:
                            frames = packet.decode()
                        except av.error.FFmpegError:  # a damaged packet: what decodes is kept
                            continue
                        for fr in frames:
                            emit(fr)
                    elif packet.stream.index in amap:
                        _mux_audio(packet, *amap[packet.stream.index], cout)
                for out_a, copy in amap.values():
                    if not copy:
                        for p in out_a.encode(None):
                            cout.mux(p)
                for p in vout.encode(None):
                    cout.mux(p)
            finally:
                cout.close()
    except av.error.FFmpegError as e:
        raise VideoError(src, f"--render failed ({type(e).__name__}: {str(e).split('; last error log:')[0]})") \
            from None
    finally:
        cin.close()
    return dst
