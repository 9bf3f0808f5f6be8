"""Reading and preparing frames: which files (``inputs``), which frames (``sampling``), decoding them (``reader`` on
the CPU, ``gpu`` on NVDEC, in killable ``workers`` processes), and turning them into model views (``transforms``,
``staging``).

This package stays torch-free at import: decode worker processes import it. :func:`open_video` is the one place
that routes between the CPU and GPU readers, so neither reader imports the other's route.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["open_video"]


def open_video(path: str | os.PathLike, decoder: str = "auto", *, device: Any = None,
               num_threads: int | None = None, min_decodable: float = 0.9) -> Any:
    """Open ``path`` for frame-accurate random access; a context manager. Raises :class:`~tokshift_cli.errors.VideoError`
    (never a decoder's own exception type) with a one-line reason: "no such file", "file is empty (0 bytes)",
    "permission denied", "not a video file (no video stream)", "not a video file (it is text: ...)",
    "truncated or incomplete MP4 ...", "no decodable frames (...)"; :class:`~tokshift_cli.errors.UsageError` for an
    unknown or unavailable ``decoder``. ``num_threads``: decoder threads (None: one; 0: FFmpeg's automatic choice).
    ``min_decodable``: see :meth:`~tokshift_cli.video.reader.VideoReader.sample`.

    ``device``: where the frames go (the model's device; None: the CPU). ``"gpu"``, and ``"auto"`` with a CUDA
    device, follow :func:`tokshift_cli.video.gpu.open_video_routed`: NVDEC where usable, and then the reader's
    frames are torch CUDA tensors; otherwise a :class:`~tokshift_cli.video.reader.VideoReader` with numpy frames.
    The GPU module, and with it torch, is imported only on that route."""
    if decoder == "gpu" or (decoder == "auto" and device is not None and str(device).split(":")[0] == "cuda"):
        from .gpu import open_video_routed

        return open_video_routed(path, decoder, device, num_threads=num_threads, min_decodable=min_decodable)
    from .reader import VideoReader

    return VideoReader(path, decoder, num_threads=num_threads, min_decodable=min_decodable)
