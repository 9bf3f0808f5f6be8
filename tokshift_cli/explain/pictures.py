"""Pictures of an explanation: the contact sheet (PNG, matplotlib) and the overlay video (H.264, PyAV).

* :func:`contact_sheet`: the frames the model saw, in order, one row per view, the relevance map blended over each
  (one colour scale for the whole video, so frames compare), the per-frame importance as bars under each row,
  label and probability in the title, UNTRAINED in red where the weights are. matplotlib's Agg canvas only (no
  pyplot, no display, no global state), as for timeline's ``--plot``.
* :func:`overlay_video`: the input re-encoded (libx264, ``preset=veryfast``, ``crf`` 20, as timeline's
  ``--render``) with the heatmap blended over every frame within half a sampling gap of a sampled frame (the
  map is placed where the model's crop sits in the picture, turned upright like the model's frames); other
  frames pass unchanged. Frames keep their presentation timestamps; no audio.

Both write atomically (:func:`tokshift_cli.outputs.atomic_open`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import OutputError, VideoError
from ..outputs import atomic_open

__all__ = ["contact_sheet", "overlay_video", "heat_rgba", "colour_scale", "COLORMAP"]

COLORMAP = "inferno"


def _upsample(m: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a 2-D map (torch, align_corners=False)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def colour_scale(maps: np.ndarray | Sequence[np.ndarray]) -> float:
    """The value drawn at full colour: the 99th percentile of a video's relevance values (one hot patch does not
    wash out the rest), or their maximum where that is 0."""
    flat = np.concatenate([np.asarray(m, dtype=np.float64).reshape(-1) for m in maps]) if len(maps) else np.zeros(1)
    q = float(np.percentile(flat, 99))
    return q if q > 0 else float(flat.max())


def heat_rgba(m: np.ndarray, scale: float) -> np.ndarray:
    """A map in [0, scale] -> RGBA float ``[h, w, 4]``: the colormap's colour, opacity rising with relevance
    (transparent where there is none, so the picture shows through)."""
    from matplotlib import colormaps

    v = np.clip(m / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(m)
    rgba = colormaps[COLORMAP](v)
    rgba[..., 3] = 0.75 * v ** 0.75
    return rgba


def contact_sheet(path: str | os.PathLike, frames: np.ndarray, maps: np.ndarray, importance: np.ndarray, *,
                  title: str, untrained: bool, row_names: Sequence[str], frame_names: Sequence[Sequence[str]]
                  ) -> Path:
    """Write the contact sheet PNG: ``frames`` uint8 ``[R, T, S, S, 3]`` (the model's views), ``maps``
    ``[R, T, h, w]``, ``importance`` ``[R, T]`` (drop of the target's probability per occluded frame)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    r, t = frames.shape[:2]
    s = frames.shape[2]
    scale = colour_scale(maps)
    cell = 1.35
    fig = Figure(figsize=(max(6.0, cell * t + 1.0), (cell + 0.75) * r + 0.9), dpi=110)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2 * r, t, height_ratios=[cell, 0.55] * r, hspace=0.35, wspace=0.04,
                            left=0.06, right=0.99, top=1 - 0.75 / ((cell + 0.75) * r + 0.9), bottom=0.03)
    lim = max(1e-6, float(np.max(np.abs(importance)))) if importance.size else 1.0
    for i in range(r):
        for j in range(t):
            ax = fig.add_subplot(grid[2 * i, j])
            ax.imshow(frames[i, j], interpolation="nearest")
            ax.imshow(heat_rgba(_upsample(maps[i, j], s, s), scale), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(frame_names[i][j], fontsize=6, pad=2)
            if j == 0:
                ax.set_ylabel(row_names[i], fontsize=7)
        bx = fig.add_subplot(grid[2 * i + 1, :])
        vals = importance[i]
        bx.bar(np.arange(t), vals, color=["#d1495b" if v > 0 else "#8d99ae" for v in vals], width=0.8)
        bx.axhline(0, color="black", linewidth=0.5)
        bx.set_xlim(-0.5, t - 0.5)
        bx.set_ylim(-lim * 1.1, lim * 1.1)
        bx.set_xticks(np.arange(t))
        bx.set_xticklabels([str(j) for j in range(t)], fontsize=6)
        bx.tick_params(axis="y", labelsize=6)
        bx.set_ylabel("drop", fontsize=6)
    fig.suptitle(title, fontsize=9, color="black")
    if untrained:
        fig.text(0.99, 0.995, "UNTRAINED: labels mean nothing", ha="right", va="top", fontsize=9,
                 color="white", weight="bold", bbox=dict(facecolor="#c1121f", edgecolor="none", pad=2))
    dst = Path(path)
    with atomic_open(dst, "wb") as f:
        fig.savefig(f, format="png")
    return dst


def _placed(maps: np.ndarray, crops: int, display: tuple[int, int], crop_size: int) -> np.ndarray:
    """One sampled frame's crop maps ``[crops, h, w]`` -> a map over the whole picture at the resized display
    size (short side = ``crop_size``), each crop's map where that crop sits (the maximum where crops overlap)."""
    from ..video.transforms import crop_offsets, resize_shape

    rh, rw = resize_shape(display[1], display[0], crop_size)
    canvas = np.zeros((rh, rw), dtype=np.float32)
    for k, (top, left) in enumerate(crop_offsets(rh, rw, crop_size, crops)):
        up = _upsample(maps[k], crop_size, crop_size)
        sl = (slice(top, top + crop_size), slice(left, left + crop_size))
        canvas[sl] = np.maximum(canvas[sl], up)
    return canvas


def overlay_video(src: str, dst: str | os.PathLike, frame_maps: dict[int, np.ndarray], *, crops: int,
                  crop_size: int, video_info: dict[str, Any], max_height: int = 720, crf: int = 20,
                  preset: str = "veryfast") -> Path:
    """Write ``src`` with heatmaps blended in to ``dst`` (see the module docstring). ``frame_maps``: frame index
    -> that frame's crop maps ``[crops, h, w]``. An http(s):// ``src`` is downloaded again (video/remote.py: plain
    servers answer no range requests), read from the temporary copy, then the copy removed."""
    import av

    from ..video.geometry import Geometry
    from ..video.probe import is_url

    if is_url(src):
        import shutil

        from ..video.remote import download

        local, folder = download(src)
        try:
            return overlay_video(local, dst, frame_maps, crops=crops, crop_size=crop_size, video_info=video_info,
                                 max_height=max_height, crf=crf, preset=preset)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    dst = Path(dst)
    if not frame_maps:
        raise OutputError(f"{dst}: nothing to draw")
    geometry = Geometry.from_dict(video_info) if video_info else None
    rot = geometry.quarter_turns if geometry is not None else 0
    flip = bool(geometry.flip) if geometry is not None else False
    sampled = np.array(sorted(frame_maps), dtype=np.int64)
    gap = float(np.median(np.diff(sampled))) if sampled.size > 1 else 1.0
    reach = max(0, int(gap // 2))
    scale = colour_scale(list(frame_maps.values()))
    try:
        cin = av.open(src, "r")
    except av.error.FFmpegError as e:
        raise VideoError(src, f"cannot be read again for the overlay video ({e})") from None
    try:
        vin = cin.streams.video[int(video_info.get("stream", 0) or 0)] if video_info else cin.streams.video[0]
        w, h = int(vin.codec_context.width), int(vin.codec_context.height)
        dw, dh = (h, w) if rot % 2 else (w, h)
        if geometry is not None:
            dw, dh = geometry.display_size
        if dh > max_height:
            dw, dh = max(2, round(dw * max_height / dh)), max_height
        ow, oh = max(2, dw // 2 * 2), max(2, dh // 2 * 2)
        cache: dict[int, np.ndarray] = {}

        def overlay_for(index: int) -> np.ndarray | None:
            k = int(np.argmin(np.abs(sampled - index)))
            if abs(int(sampled[k]) - index) > reach:
                return None
            key = int(sampled[k])
            if key not in cache:
                cache.clear()
                disp = geometry.display_size if geometry is not None else (dw, dh)
                m = _placed(frame_maps[key], crops, (int(disp[0]), int(disp[1])), crop_size)
                cache[key] = heat_rgba(_upsample(m, oh, ow), scale).astype(np.float32)
            return cache[key]

        with atomic_open(dst, "wb") as f:
            _encode_overlay(cin, vin, f, size=(ow, oh), flip=flip, rot=rot, overlay_for=overlay_for, crf=crf,
                            preset=preset)
    except av.error.FFmpegError as e:
        raise VideoError(src, f"the overlay video failed ({type(e).__name__}: {e})") from None
    finally:
        cin.close()
    return dst


def _encode_overlay(cin: Any, vin: Any, f: Any, *, size: tuple[int, int], flip: bool, rot: int,
                    overlay_for: Callable[[int], np.ndarray | None], crf: int, preset: str) -> None:
    """Decode ``vin`` from ``cin``, blend each frame's heatmap (``overlay_for(frame index)``) and encode H.264
    into the open file ``f`` at ``size`` (width, height), keeping the source's timestamps."""
    import av

    from ..timeline.render import h264_like

    ow, oh = size
    cout = av.open(f, "w", format="mp4")
    try:
        vout = h264_like(cout, vin, ow, oh, crf=crf, preset=preset)
        index, last_pts = 0, -1
        for packet in cin.demux(vin):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:  # a damaged packet: what decodes is kept
                continue
            for fr in frames:
                pts = fr.pts if fr.pts is not None else last_pts + 1
                pts = max(pts, last_pts + 1)
                last_pts = pts
                rgb = _blended(_display_rgb(fr, flip=flip, rot=rot, size=size), overlay_for(index))
                out = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                out = out.reformat(format="yuv420p")
                out.pts, out.time_base = pts, vin.time_base
                for p in vout.encode(out):
                    cout.mux(p)
                index += 1
        for p in vout.encode(None):
            cout.mux(p)
    finally:
        cout.close()


def _display_rgb(fr: Any, *, flip: bool, rot: int, size: tuple[int, int]) -> np.ndarray:
    """A decoded frame as RGB the way it is shown (mirrored, turned), at ``size`` (width, height)."""
    import av

    ow, oh = size
    rgb = fr.to_ndarray(format="rgb24")
    if flip:
        rgb = rgb[:, ::-1]
    if rot:
        rgb = np.rot90(rgb, rot)
    if rgb.shape[:2] != (oh, ow):
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(
            width=ow, height=oh).to_ndarray(format="rgb24")
    return rgb


def _blended(rgb: np.ndarray, heat: np.ndarray | None) -> np.ndarray:
    """``rgb`` with the RGBA heatmap ``heat`` (values in [0, 1]) blended over it; unchanged without one."""
    if heat is None:
        return rgb
    a = heat[..., 3:4]
    return (rgb * (1 - a) + heat[..., :3] * 255.0 * a).round().clip(0, 255).astype(np.uint8)
