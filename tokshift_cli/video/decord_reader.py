"""decord as an opt-in fast path (``--decoder decord``), never unverified.

decord counts packets and seeks by them: on MPEG-TS, MPEG-PS, ASF, edit lists and cover-art-first MP4s it returns
other frames than asked, and it turns rotated videos itself (into 4-channel frames). So a :class:`DecordReader`
opens the file with PyAV first (index, stream, geometry, cut-off checks: :class:`~.reader.VideoReader`) and
uses decord only where its packet-count seeking was verified frame by frame against barcoded test videos
(``tests/test_frames.py``): MP4/MOV/Matroska/WebM holding one video stream of H.264, HEVC, VP9 or AV1, with no
edit list and no rotation, and where decord's frame count and every frame's timestamp equal PyAV's display
order. Anywhere else it refuses the file with one line naming the reason (``--decoder pyav`` reads it): its
timestamps alone do not prove its frames (on MPEG-TS, MPEG-2 and MPEG-4 Part 2 it reports the right times and
returns other frames).
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import numpy as np

from ..errors import VideoError
from .reader import VideoReader

__all__ = ["DecordReader", "import_decord", "decord_reason", "DECORD_CONTAINERS", "DECORD_CODECS"]

#: Where decord returned exactly the frames asked for on every barcoded test video (FFmpeg format names).
DECORD_CONTAINERS = ("mov", "matroska")
DECORD_CODECS = ("h264", "hevc", "vp9", "av1")

_DECORD_NOISE = re.compile(r"\[\d\d:\d\d:\d\d\]\s*|/[\w./-]+\.(?:cc|cpp|h):\d+:\s*")
#: decord's C++ check messages, translated (first match wins).
_DECORD_MESSAGES = (
    ("avcodec_send_packet", "FFmpeg rejected a packet (corrupt or cut-off data)"),
    ("DECORDArrayCopyFromTo", "decord returned a mis-shaped frame buffer (a decord bug with some frame "
                              "widths, e.g. 16, 32, 48, 96, 144 px)"),
    ("cannot find video stream", "no video stream"),
    ("avfilter_graph_create_filter", "decord could not set up its pixel format conversion (corrupt stream "
                                     "parameters)"),
    ("Decoder not found", "no decoder for this codec in decord's FFmpeg"),
    ("Error reading", "FFmpeg could not open it"),
)


def decord_reason(e: BaseException) -> str:
    """A decoder exception as one short line, without decord's timestamps and C++ source locations."""
    text = str(e).strip() or type(e).__name__
    for needle, message in _DECORD_MESSAGES:
        if needle in text:
            return message
    lines = [_DECORD_NOISE.sub("", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    return (lines[0] if lines else type(e).__name__)[:200]


# --- importing decord safely ----------------------------------------------------------------------------------

#: Set by decode worker processes (:mod:`tokshift_cli.video.workers`), which decode on the CPU only and never run torch.
DECORD_CPU_ONLY = False
_decord_lock = threading.Lock()
_decord_module: Any = None  #: set once ``import decord`` has finished (see import_decord)


def import_decord() -> Any:
    """``import decord``, without the side effect that breaks torch.

    At import, decord2 dlopens every shared library of every ``nvidia-*`` pip package (torch's CUDA wheels) with
    RTLD_GLOBAL, libnvblas included. libnvblas then interposes the BLAS symbols of the whole process: a torch
    imported after decord crashes in its first matrix multiply ("[NVBLAS] CPU Blas library need to be
    provided", then SIGSEGV), and each process pays ~0.25 s and ~900 MB RSS for libraries a CPU decode never
    uses. Here libnvblas is never loaded; with :data:`DECORD_CPU_ONLY` (the decode workers) none of the
    ``nvidia`` pip libraries are (decord still loads the driver's libcuda/libnvcuvid where present).
    """
    global _decord_module
    import sys

    if _decord_module is not None:  # imported completely: threads never see a half-initialised module
        return _decord_module
    import ctypes
    import types

    with _decord_lock:
        if _decord_module is not None:
            return _decord_module
        if "decord" in sys.modules:  # imported by someone else (complete, or the import system waits for it)
            import decord

            _decord_module = decord
            return decord
        real_cdll = ctypes.CDLL
        stub = None

        class _NoNvblas(real_cdll):  # type: ignore[valid-type, misc]
            def __init__(self, name: Any, *args: Any, **kwargs: Any) -> None:
                if name and "libnvblas" in os.path.basename(str(name)):
                    raise OSError(f"{name}: not loaded (tokshift-cli: it breaks torch's BLAS)")
                super().__init__(name, *args, **kwargs)

        if DECORD_CPU_ONLY and "nvidia" not in sys.modules:
            stub = types.ModuleType("nvidia")  # find_spec("nvidia") then fails: decord skips the CUDA wheels
            stub.__spec__ = None
            sys.modules["nvidia"] = stub
        ctypes.CDLL = _NoNvblas  # type: ignore[misc]
        try:
            import decord
        finally:
            ctypes.CDLL = real_cdll  # type: ignore[misc]
            if stub is not None and sys.modules.get("nvidia") is stub:
                del sys.modules["nvidia"]
        _decord_module = decord
        return decord


class DecordReader(VideoReader):
    """:class:`~.reader.VideoReader` whose frames come from decord, where decord is verified to return the
    frames asked for (module docstring)."""

    decoder = "decord"

    def __init__(self, path: str | os.PathLike, *, num_threads: int | None = None, min_decodable: float = 0.9,
                 stream: int | None = None):
        super().__init__(path, "pyav", num_threads=num_threads, min_decodable=min_decodable, stream=stream)
        self._vr: Any = None
        try:
            self._verify()
        except BaseException:
            self.close()
            raise

    def _refuse(self, why: str) -> VideoError:
        return VideoError(self.path, f"decord would not return the frames asked for: {why}; read it with "
                                     "--decoder pyav")

    def _verify(self) -> None:
        if self.container_format not in DECORD_CONTAINERS:
            raise self._refuse(f"it seeks {self.container_format} files by packet count")
        if self.codec not in DECORD_CODECS:
            raise self._refuse(f"it is not verified on {self.codec} (only H.264, HEVC, VP9, AV1)")
        if len(self._container.streams.video) != 1:
            raise self._refuse("the file has several video streams and decord reads its own choice")
        if self.by_rank:
            raise self._refuse("its frames can only be identified by decoding it whole")
        if self.geometry.rotation or self.geometry.flip:
            raise self._refuse(f"it is rotated ({self.geometry.rotation} degrees), which decord applies itself")
        if self.index.hidden:
            raise self._refuse(f"the container hides {self.index.hidden} packets (an edit list), which decord shows")
        decord = import_decord()
        decord.logging.set_level(decord.logging.QUIET)
        try:
            self._vr = decord.VideoReader(self._open_path, ctx=decord.cpu(0), num_threads=self.num_threads)
        except Exception as e:
            raise VideoError(self.path, f"decord cannot open it ({decord_reason(e)})") from None
        n = len(self._vr)
        if n != self.num_frames:
            raise self._refuse(f"it counts {n} frames where {self.num_frames} are shown")
        try:
            ts = np.asarray(self._vr.get_frame_timestamp(list(range(n))))[:, 0]
        except Exception as e:
            raise self._refuse(f"it gives no timestamps ({decord_reason(e)})") from None
        ours = np.asarray(self.timestamps(range(n)))
        tol = 0.5 / self.fps if self.fps else 1e-3
        bad = np.flatnonzero(np.abs((ts - ts[0]) - ours) > tol)
        if bad.size:
            k = int(bad[0])
            raise self._refuse(f"its frame {k} is at {ts[k] - ts[0]:.3f} s, the {k}th frame shown at {ours[k]:.3f} s")

    def _decode_indices(self, uniq: np.ndarray, *, skip: bool = True) -> list[np.ndarray]:
        try:
            arr = self._vr.get_batch([int(i) for i in uniq]).asnumpy()
        except Exception as e:
            raise VideoError(self.path, f"decord: {decord_reason(e)}; read it with --decoder pyav") from None
        if arr.ndim != 4 or arr.shape[0] != len(uniq) or arr.shape[-1] != 3 \
                or arr.shape[1:3] != (self.stored_height, self.stored_width):
            raise VideoError(self.path, f"decord returned frames of shape {arr.shape[1:]} (a decord bug with some "
                                        "frame sizes); read it with --decoder pyav")
        return list(arr)

    def _release(self) -> None:
        self._vr = None
        super()._release()
