"""Reading and preparing frames: which files (``inputs``), which frames (``sampling``), decoding them (``reader`` on
the CPU, ``gpu`` on NVDEC, behind the ``decoders`` registry, in killable ``workers`` processes), and turning them into model views (``transforms``,
``staging``).

This package stays torch-free at import: decode worker processes import it. :func:`open_video` is the one place
that routes between the CPU and GPU readers, so neither reader imports the other's route.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["open_video"]


def open_video(path: str | os.PathLike, decoder: str = "auto", *, device: Any = None,
               num_threads: int | None = None, min_decodable: float = 0.9, stream: int | None = None) -> Any:
    """Open ``path`` (a file, or an ``http(s)://`` URL) for frame-accurate access; a context manager. Frame ``k``
    is the ``k``-th frame a player shows (:mod:`tokshift_cli.video.reader`). Raises
    :class:`~tokshift_cli.errors.VideoError` (never a decoder's own exception type) with a one-line reason: "no
    such file", "file is empty (0 bytes)", "permission denied", "not a video file (no video stream)", "not a
    video file (it is text: ...)", "truncated or incomplete MP4 ...", "no decodable frames (...)";
    :class:`~tokshift_cli.errors.UsageError` for an unknown or unavailable ``decoder``.

    ``decoder``: ``auto`` (NVDEC for a CUDA ``device`` where usable, else PyAV) or a name in
    :mod:`tokshift_cli.video.decoders` (``pyav``, ``decord``, ``gpu``, ...).
    ``stream``: the N-th video stream (default: the largest that is not cover art). ``num_threads``: decoder
    threads (None: one; several videos are decoded at once instead). ``min_decodable``: see
    :meth:`~tokshift_cli.video.reader.VideoReader.sample`. NVDEC frames are torch CUDA tensors; the GPU module,
    and with it torch, is imported only on that route."""
    from .decoders import AUTO, check_decoder, decoder_class, is_gpu

    check_decoder(decoder)
    if is_gpu(decoder) or (decoder == AUTO and device is not None and str(device).split(":")[0] == "cuda"):
        from .gpu import open_video_routed

        return open_video_routed(path, decoder, device, num_threads=num_threads, min_decodable=min_decodable,
                                 stream=stream)
    return decoder_class(decoder)(path, num_threads=num_threads, min_decodable=min_decodable, stream=stream)
