"""Opening a video for :class:`tokshift_cli.video.reader.VideoReader`: the container, the stream, its index.

The file's first bytes are checked before FFmpeg sees it (:mod:`tokshift_cli.video.probe`), the container is
opened with PyAV, and the video stream is chosen (:func:`tokshift_cli.video.index.choose_stream`) and indexed
(:func:`tokshift_cli.video.index.build_index`): a one-frame track no flag marks as cover art is passed over for the
next one. :func:`probe_geometry` reads the shown geometry from frame 0. Errors are :class:`VideoError` lines
naming the file.
"""

from __future__ import annotations

import contextlib
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import VideoError
from .geometry import Geometry, rotation_from_matrix
from .index import FrameIndex, build_index, choose_stream
from .probe import mp4_missing_index, not_a_video, unreadable_reason

__all__ = ["open_stream", "probe_geometry"]


def _import_av() -> Any:
    import av

    return av


def _av_reason(e: BaseException) -> str:
    """An FFmpeg/PyAV error as a short reason, without the file name PyAV puts in it."""
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(msg).split("; last error log:")[0].strip().rstrip(":")[:200]


def _open_container(open_path: str, path: str, head: bytes | None) -> Any:
    """``open_path`` opened with PyAV, or a :class:`VideoError` naming ``path`` and the reason."""
    av = _import_av()
    try:
        return av.open(open_path, "r")
    except av.error.FFmpegError as e:
        reason = unreadable_reason(head or b"")
        if reason.startswith("not a video file, or"):
            reason += f" ({_av_reason(e)})"
        raise VideoError(path, reason) from None


def _rewind_container(c: Any, open_path: str, path: str) -> Any:
    """``c`` with every stream read again from the start (or the file opened again)."""
    for s in c.streams:
        s.discard = _import_av().stream.Discard.default
    try:
        c.seek(0)
    except Exception:
        c.close()
        c = _open_container(open_path, path, b"")
    return c


def open_stream(path: str, open_path: str, head: bytes | None, requested_stream: int | None
                ) -> tuple[Any, Any, FrameIndex, str | None]:
    """``(container, stream, index, stream_note)`` of ``open_path`` (``path`` as the user named it, for errors;
    ``head``: its first bytes, None for what cannot be sniffed). The container is closed on an error."""
    if head is not None:
        sniffed = not_a_video(head)
        if sniffed:
            raise VideoError(path, sniffed)
        if mp4_missing_index(open_path):
            raise VideoError(path, unreadable_reason(head))
    c = _open_container(open_path, path, head)
    try:
        passed_over: list[int] = []
        while True:
            try:
                stream, stream_note = choose_stream(c, requested_stream, exclude=passed_over)
            except LookupError:
                raise VideoError(path, "not a video file (no video stream)") from None
            try:
                index = build_index(c, stream)
            except Exception as e:  # av.error.*: an unreadable container
                raise VideoError(path, f"cannot read its packets ({_av_reason(e)})") from None
            others = len(c.streams.video) - len(passed_over) - 1
            if index.num_frames > 1 or requested_stream is not None or others == 0:
                return c, stream, index, stream_note
            passed_over.append(stream.index)  # a one-frame track (cover art no flag says): the next one
            c = _rewind_container(c, open_path, path)
    except BaseException:
        with contextlib.suppress(Exception):
            c.close()
        raise


def probe_geometry(stream: Any, frame: Any, rgb: np.ndarray) -> Geometry:
    """The geometry of ``stream`` from its decoded ``frame`` (PyAV) and that frame as RGB: stored size, sample
    aspect ratio (square pixels where none or nonsense), rotation and flip (the display matrix)."""
    sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio or Fraction(1)
    sar = Fraction(sar) if sar and Fraction(sar) > 0 else Fraction(1)
    if sar.denominator > 1000:  # 0/1 and nonsense: square pixels
        sar = sar.limit_denominator(1000)
    matrix = None
    with contextlib.suppress(Exception):
        av = _import_av()
        sd = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
        matrix = bytes(sd) if sd is not None else None
    rotation, flip = rotation_from_matrix(matrix)
    h, w = rgb.shape[:2]
    return Geometry(int(w), int(h), sar, rotation, flip)
