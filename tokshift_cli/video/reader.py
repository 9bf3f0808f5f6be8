"""Open, probe and decode videos: decord first, OpenCV as the fallback, every failure a :class:`VideoError`.

::

    with open_video("clip.mp4") as video:          # decoder="auto"
        idx = clip_indices(video.num_frames, 8, 32, 10)
        frames = video.get_frames(idx)             # uint8 [10, 8, H, W, 3] RGB, each distinct frame decoded once

Decoders (``decoder=``):

* ``"decord"``: FFmpeg through decord on the CPU; reads H.264, HEVC, VP9, AV1, MPEG-4 ... Sampled frames are
  fetched with one ``get_batch`` over the sorted distinct indices, which seeks only where it must.
* ``"opencv"``: OpenCV's FFmpeg build (no AV1 decoder in the opencv-python wheels).
* ``"auto"`` (default): decord, and OpenCV where decord cannot open or decode the file. Two known decord cases:
  some frame widths (16, 24, 32, 48, 96, 144 px: decord returns a mis-shaped buffer) and files whose frames
  decord refuses.
  :attr:`VideoReader.decoder` says which one was used and :attr:`VideoReader.fallback_reason` why.
* ``"cpu"``: the CPU chain, as ``"auto"`` is for a CPU model (decord, OpenCV fallback).
* ``"gpu"``: NVDEC, through :func:`open_video` only (it routes to :func:`tokshift_cli.video.gpu.open_video_routed`,
  whose reader returns CUDA tensors); ``open_video(path, "auto", device="cuda")`` takes the same route and falls
  back to the CPU chain where the GPU cannot decode the file. A :class:`VideoReader` is the CPU decoders only.
  This module never imports torch (decode worker processes import it); video_gpu is imported only on that route.

Frame counts. Containers can promise more frames than the file holds (a download cut short; a broken last
packet), and decord's count is the number of packets it found, so a cut-off file whose index comes first looks
like a shorter healthy one. Two checks, so that neither case passes silently:

1. At open, :func:`container_truncation` compares the container's own size fields (MP4 boxes, Matroska/WebM
   Segment, AVI RIFF) with the file size (a few header reads). A file cut short is opened with OpenCV (with
   ``decoder="auto"``: decord's failures on cut-off files vary from run to run, OpenCV's do not) and its
   decodable frames ``N`` are counted (binary search, a fresh decoder per probe). It raises
   :class:`TruncatedVideoError` ("truncated: could only decode N of M frames", M from the header) when
   ``N`` is less than ``min_decodable`` (default 90 %) of ``M``, else it opens with :attr:`num_frames` = ``N``
   and a line in ``warnings``.
2. When decoding fails anyway, the reader retries with a fresh decoder, then (``auto``) with OpenCV, then finds
   the real count ``N`` of decodable frames, lowers :attr:`num_frames` to ``N`` and raises
   :class:`TruncatedVideoError` if a requested frame lies past ``N``.
   :meth:`VideoReader.sample` turns that into a re-sample over the ``N`` frames when at least ``min_decodable``
   of the promised frames decode (what the authors' pipeline did: they sampled over the frames ffmpeg could
   extract) and notes it in ``warnings``.

A reader is not thread-safe: use one per thread (decoding several videos at once is the way to use more cores).

Known limits: rotation metadata (phone videos) is ignored, as decord does (OpenCV's auto-rotation is turned off
so both decoders give the same frames); only the first video stream is read; decord prints some errors from its
C++ side to stderr (FFmpeg's own log is silenced; files that are certainly not videos, such as images, text
and archives, are refused from their first bytes before a decoder sees them; decoding in
:mod:`tokshift_cli.video.workers` processes silences the rest).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import UsageError, VideoError

__all__ = ["VideoReader", "TruncatedVideoError", "DECODERS", "default_num_threads"]

DECODERS = ("auto", "decord", "opencv", "gpu", "cpu")
#: OpenCV: read forward (grab) instead of seeking when the next wanted frame is at most this far ahead.
_OPENCV_SEEK_GAP = 48


class TruncatedVideoError(VideoError):
    """Fewer frames decode than the container promises, and a requested frame lies past the last one."""

    def __init__(self, path: str, decodable: int, expected: int):
        self.decodable, self.expected = decodable, expected
        super().__init__(path, f"truncated: could only decode {decodable} of {expected} frames")

    def __reduce__(self):
        return (type(self), (self.path, self.decodable, self.expected))


class _DecodeFailure(Exception):
    """Internal: a backend could not produce a frame (index may be None when unknown)."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


def default_num_threads() -> int:
    """Decoder threads per open video: 1. Frame-threaded decoding adds a decoder delay of one frame per thread,
    paid again after every seek, so sampled (seeking) reads gain little from threads; the engine decodes
    several videos at once instead. See the module docstring of ``bench`` for measurements."""
    return 1


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


def _first_line(e: BaseException) -> str:
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


# --- FFmpeg log levels --------------------------------------------------------------------------------------

_quiet_lock = threading.Lock()
_quieted = False


def _quiet_ffmpeg() -> None:
    """Silence FFmpeg's own log in decord and OpenCV (their errors become VideoError reasons instead)."""
    global _quieted
    with _quiet_lock:
        if _quieted:
            return
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when OpenCV first opens a video
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")  # its "[ WARN:0] ... can't open" lines
        try:
            decord = import_decord()
            decord.logging.set_level(decord.logging.QUIET)
        except Exception:  # decord missing or broken: the decord backend will say so
            pass
        try:
            import cv2

            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except Exception:
            pass
        _quieted = True


# --- file checks --------------------------------------------------------------------------------------------


def _precheck(path: str) -> bytes:
    """Fail early, with a human reason, on paths no decoder can read; return the file's first bytes."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise VideoError(path, f"broken symbolic link (points to {os.readlink(path)!r}, which does not exist)")
        raise VideoError(path, "no such file")
    except PermissionError:
        raise VideoError(path, "permission denied")
    except OSError as e:
        raise VideoError(path, (e.strerror or str(e)).lower())
    if stat.S_ISDIR(st.st_mode):
        raise VideoError(path, "is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        raise VideoError(path, "not a regular file (pipes and devices cannot be seeked)")
    if st.st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            return f.read(512)
    except PermissionError:
        raise VideoError(path, "permission denied")
    except OSError as e:
        raise VideoError(path, f"cannot read ({(e.strerror or str(e)).lower()})")


#: Magic numbers of common files that are certainly not videos: refused before any decoder sees them (faster,
#: a clearer reason, and no decoder error lines on stderr).
_NOT_VIDEO_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x7fELF", "a program (ELF)"),
)


def _not_a_video(head: bytes) -> str | None:
    """A reason when the first bytes prove the file is no video (an image, a document, text), else None."""
    for magic, what in _NOT_VIDEO_MAGIC:
        if head.startswith(magic):
            return f"not a video file (it is {what})"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "not a video file (it is a WebP image)"
    if head.startswith(b"YUV4MPEG2"):  # raw video with a text header
        return None
    reason = _unreadable_reason(head)
    return reason if "(it is" in reason else None


def _unreadable_reason(head: bytes) -> str:
    """Why FFmpeg could not open a file, guessed from its first bytes."""
    lower = head.lstrip().lower()
    if lower.startswith((b"<!doctype html", b"<html")):
        return "not a video file (it is an HTML page: a failed download?)"
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text[:200]):
            first = text.strip().splitlines()[0][:40] if text.strip() else ""
            return f"not a video file (it is text: {first!r})"
    if head[4:8] == b"ftyp":
        return ("truncated or incomplete MP4: its index (moov atom) is missing, so the download or recording was "
                "probably cut short")
    return "not a video file, or a format/codec FFmpeg cannot read"


def _read_vint(f: Any, is_id: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at the file position: (value, length); None at EOF or when invalid."""
    first = f.read(1)
    if not first:
        return None
    b0 = first[0]
    length = next((k + 1 for k in range(8) if b0 & (0x80 >> k)), 0)
    if not length:
        return None
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = b0 if is_id else b0 & (0xFF >> length)
    for b in rest:
        value = (value << 8) | b
    if not is_id and value == (1 << (7 * length)) - 1:
        value = -1  # "unknown size" (live streams)
    return value, length


_MP4_TOP_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"uuid", b"moof", b"mfra",
                  b"meta", b"styp", b"sidx", b"pdin", b"prft", b"emsg", b"mvex")


def mp4_missing_index(path: str) -> bool:
    """True when ``path`` is an MP4/MOV (it starts with an ``ftyp`` box) whose top-level boxes, read up to the
    end of the file or to where it is cut, hold no ``moov`` (the index): no decoder can read such a file (a
    recording or download cut short before the index was written). False otherwise, and when unsure."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if f.read(8)[4:8] != b"ftyp":
                return False
            pos = 0
            for _ in range(100_000):
                if pos + 8 > size:
                    return True  # the end (or the cut) reached, no moov
                f.seek(pos)
                box = f.read(16)
                n, kind = int.from_bytes(box[:4], "big"), box[4:8]
                if kind == b"moov":
                    return False
                if kind not in _MP4_TOP_BOXES:
                    return False  # not a structure we understand: no verdict
                if n == 1:
                    if len(box) < 16:
                        return True
                    n = int.from_bytes(box[8:16], "big")
                elif n == 0:  # this box runs to the end of the file
                    return True
                if n < 8:
                    return False
                pos += n
    except OSError:
        return False
    return False


def container_truncation(path: str) -> tuple[int, int] | None:
    """``(bytes_present, bytes_declared)`` when the container's own size fields say the file is cut short, else
    None. Reads a few headers only: MP4/MOV top-level boxes, the Matroska/WebM Segment, the AVI RIFF chunk.
    Decoders cannot be trusted for this: decord counts the packets that are present, so a cut-off MP4 whose
    index comes first looks like a shorter, healthy video."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
            if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
                pos = 0
                for _ in range(100_000):
                    if pos >= size:
                        return None
                    f.seek(pos)
                    box = f.read(16)
                    if len(box) < 8:
                        return size, pos + 8
                    n = int.from_bytes(box[:4], "big")
                    if n == 1:
                        if len(box) < 16:
                            return size, pos + 16
                        n = int.from_bytes(box[8:16], "big")
                    elif n == 0:  # runs to the end of the file
                        return None
                    if n < 8:
                        return None  # not a box structure we understand: no verdict
                    if pos + n > size:
                        return size, pos + n
                    pos += n
                return None
            if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska / WebM
                f.seek(0)
                header_id, header_len = _read_vint(f, True) or (0, 0)
                header_size = _read_vint(f, False)
                if header_size is None or header_size[0] < 0:
                    return None
                f.seek(4 + header_size[1] + header_size[0])
                seg_id = _read_vint(f, True)
                seg_size = _read_vint(f, False)
                if seg_id is None or seg_size is None or seg_id[0] != 0x18538067 or seg_size[0] < 0:
                    return None
                end = f.tell() + seg_size[0]
                return (size, end) if end > size else None
            if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
                end = 8 + int.from_bytes(head[4:8], "little")
                return (size, end) if end > size else None
    except OSError:
        return None
    return None


def _decoder_path(path: str) -> tuple[str, str | None]:
    """A path both decoders can take: absolute (FFmpeg never reads "name:rest" as a protocol then), and, for
    names that are not valid UTF-8 (decord encodes to UTF-8), an ASCII symlink in a temp folder.
    Returns (path, temp_dir_to_remove)."""
    full = os.path.abspath(path)
    try:
        full.encode("utf-8")
        return full, None
    except UnicodeEncodeError:
        pass
    tmp = tempfile.mkdtemp(prefix="tokshift-video-")
    ext = os.path.splitext(os.fsencode(full))[1].decode("ascii", "ignore")
    link = os.path.join(tmp, "video" + ("".join(c for c in ext if c.isalnum() or c == ".") or ".bin"))
    os.symlink(full, link)
    return link, tmp


# --- backends -----------------------------------------------------------------------------------------------


class _DecordBackend:
    name = "decord"

    def __init__(self, path: str, num_threads: int):
        decord = import_decord()  # imported here: importing tokshift_cli.video stays cheap
        self._decord = decord
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        except AssertionError as e:  # decord asserts frame count > 0
            raise _DecodeFailure(f"no frames ({_first_line(e)})")
        except Exception as e:  # DECORDError, RuntimeError("Error reading ...")
            raise _DecodeFailure(_first_line(e))
        self.num_frames = len(self._vr)
        try:
            fps = float(self._vr.get_avg_fps())
        except Exception:
            fps = 0.0
        self.fps = fps if math.isfinite(fps) and fps > 0 else 0.0

    def decode(self, indices: np.ndarray) -> np.ndarray:
        try:
            arr = self._vr.get_batch([int(i) for i in indices]).asnumpy()
        except Exception as e:
            raise _DecodeFailure(_first_line(e))
        if arr.ndim != 4 or arr.shape[0] != len(indices) or arr.shape[-1] != 3:
            # decord pads the rows of some widths and returns a mis-shaped buffer (16, 24, 32, 48, 96, 144 px seen)
            raise _DecodeFailure(f"decord returned frames of shape {arr.shape[1:]} (a decord bug with some frame "
                                 "widths)")
        return arr

    def timestamps(self, indices: np.ndarray) -> list[float]:
        try:
            return [round(float(t), 6) for t in self._vr.get_frame_timestamp([int(i) for i in indices])[:, 0]]
        except Exception:
            return [float(i) / self.fps if self.fps else float("nan") for i in indices]

    def close(self) -> None:
        self._vr = None


def _import_cv2() -> Any:
    _quiet_ffmpeg()
    import cv2

    return cv2


class _OpenCVBackend:
    name = "opencv"

    def __init__(self, path: str, num_threads: int):
        cv2 = self._cv2 = _import_cv2()
        params = [cv2.CAP_PROP_N_THREADS, num_threads] if num_threads > 0 else []
        try:
            cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG, params)
        except Exception as e:  # cv2.error
            raise _DecodeFailure(_first_line(e))
        if not cap.isOpened():
            raise _DecodeFailure("OpenCV could not open it")
        cap.set(cv2.CAP_PROP_ORIENTATION_AUTO, 0)  # like decord, so that both decoders give the same frames
        self._cap = cap
        self._pos = 0  # index of the frame the next read() returns
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and 0 < fps < 10000 else 0.0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if n <= 0:  # no count in the header (some streams): count by reading
            n = 0
            while cap.grab():
                n += 1
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self.num_frames = n

    def _read(self, index: int) -> np.ndarray:
        cap, cv2 = self._cap, self._cv2
        gap = index - self._pos
        if gap < 0 or gap > _OPENCV_SEEK_GAP:
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            self._pos = index
        else:
            for _ in range(gap):
                if not cap.grab():
                    raise _DecodeFailure(f"OpenCV could not decode frame {self._pos}", self._pos)
                self._pos += 1
        ok, frame = cap.read()
        if not ok or frame is None:
            raise _DecodeFailure(f"OpenCV could not decode frame {index}", index)
        self._pos = index + 1
        if frame.ndim == 2:
            return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def decode(self, indices: np.ndarray) -> np.ndarray:
        frames = [self._read(int(i)) for i in indices]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise _DecodeFailure(f"frame size changes inside the video ({sorted(shapes)})")
        return np.stack(frames) if frames else np.empty((0, 0, 0, 3), np.uint8)

    def timestamps(self, indices: np.ndarray) -> list[float]:
        return [float(i) / self.fps if self.fps else float("nan") for i in indices]

    def close(self) -> None:
        if getattr(self, "_cap", None) is not None:
            self._cap.release()
            self._cap = None


_BACKENDS: dict[str, Callable[[str, int], Any]] = {"decord": _DecordBackend, "opencv": _OpenCVBackend}

_FOURCC_CODECS = {
    "avc1": "h264", "h264": "h264", "x264": "h264", "avc3": "h264",
    "hev1": "hevc", "hvc1": "hevc", "hevc": "hevc", "h265": "hevc",
    "vp90": "vp9", "vp09": "vp9", "vp80": "vp8", "vp08": "vp8",
    "av01": "av1", "mp4v": "mpeg4", "fmp4": "mpeg4", "xvid": "mpeg4", "divx": "mpeg4", "dx50": "mpeg4",
    "mjpg": "mjpeg", "mpg1": "mpeg1video", "mpg2": "mpeg2video", "wmv3": "wmv3", "wvc1": "vc1", "theo": "theora",
}


# --- the reader ---------------------------------------------------------------------------------------------


class _ReaderLifetime:
    """What every reader shares: the decoding backend and a temporary folder (ASCII links for odd names) to
    release, index checks, and use as a context manager. Subclasses set ``_backend``, ``_tmpdir``, ``path``,
    ``num_frames`` and ``_check_open``."""

    _backend: Any = None
    _tmpdir: str | None = None

    def _checked_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``indices`` as a flat int64 array, or IndexError naming the file and the valid range."""
        flat = np.asarray(indices, dtype=np.int64).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.num_frames):
            bad = flat[(flat < 0) | (flat >= self.num_frames)]
            raise IndexError(f"{self.path}: frame index {int(bad[0])} is outside 0..{self.num_frames - 1}")
        return flat

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class VideoReader(_ReaderLifetime):
    """One open video. Use :func:`open_video`. Attributes: ``path`` (as given), ``decoder`` ("decord" |
    "opencv"), ``num_frames`` (decodable frames, as far as known), ``reported_frames`` (what the demuxer said at
    open), ``fps``, ``duration`` (``num_frames / fps`` seconds), ``width``, ``height``, ``codec`` (probed on
    first access), ``fallback_reason`` and ``warnings``."""

    def __init__(self, path: str | os.PathLike, decoder: str = "auto", *, num_threads: int | None = None,
                 min_decodable: float = 0.9):
        self._backend: Any = None
        self._tmpdir: str | None = None
        self.path = os.fspath(path) if not isinstance(path, bytes) else os.fsdecode(path)
        if decoder not in DECODERS:
            raise UsageError(f"decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
        if decoder == "gpu":  # open_video() routes "gpu" to video_gpu; a VideoReader is the CPU decoders only
            raise UsageError("decoder 'gpu' (NVDEC): a VideoReader decodes on the CPU; use "
                             "open_video(path, 'gpu', device='cuda')")
        if decoder == "cpu":
            decoder = "auto"  # the CPU chain: decord, OpenCV fallback
        self.requested_decoder = decoder
        self.num_threads = default_num_threads() if num_threads is None else int(num_threads)
        self.min_decodable = float(min_decodable)
        self.fallback_reason: str | None = None
        self.warnings: list[str] = []
        self._container_frames: int | None = None
        self._codec: str | None = None
        self._cut: tuple[int, int] | None = None
        _quiet_ffmpeg()
        head = _precheck(self.path)
        self._open_path, self._tmpdir = _decoder_path(self.path)
        try:
            self._open(head)
        except BaseException:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------------------------
    def _open(self, head: bytes) -> None:
        sniffed = _not_a_video(head)
        if sniffed:
            raise VideoError(self.path, sniffed)
        if mp4_missing_index(self._open_path):
            raise VideoError(self.path, _unreadable_reason(head))
        self._cut = container_truncation(self._open_path)
        order = ["decord", "opencv"] if self.requested_decoder == "auto" else [self.requested_decoder]
        if self._cut is not None and self.requested_decoder == "auto":
            # decord is not deterministic on cut-off files (which frames fail varies from run to run, measured
            # on MP4/H.264); OpenCV reads them the same way every time
            order = ["opencv", "decord"]
        failures: list[str] = []
        no_video_stream = opened = False
        for name in order:
            try:
                backend = _BACKENDS[name](self._open_path, self.num_threads)
            except ImportError as e:
                failures.append(f"{name} is not installed ({e})")
                continue
            except _DecodeFailure as e:
                msg = str(e)
                no_video_stream |= "video stream" in msg.lower()
                failures.append(f"{name}: {msg}")
                continue
            opened = True
            # Probe frame 0: proves the stream decodes (and catches decord's small-frame bug), gives the size.
            try:
                if backend.num_frames < 1:
                    raise _DecodeFailure("no frames")
                frame0 = backend.decode(np.array([0]))[0]
            except _DecodeFailure as e:
                backend.close()
                failures.append(f"{name}: {e}")
                continue
            self._backend = backend
            self.height, self.width = int(frame0.shape[0]), int(frame0.shape[1])
            self.reported_frames = self.num_frames = int(backend.num_frames)
            self.fps = float(backend.fps)
            if failures:
                self.fallback_reason = "; ".join(failures)
            elif name == "opencv" and self._cut is not None and self.requested_decoder == "auto":
                self.fallback_reason = "the file is cut short: OpenCV reads cut-off files deterministically"
            self._check_truncation()
            return
        if no_video_stream:
            raise VideoError(self.path, "not a video file (no video stream)")
        if opened:
            raise VideoError(self.path, "no decodable frames (" + "; ".join(failures) + ")")
        reason = _unreadable_reason(head)
        if reason.startswith("not a video file, or"):
            reason += " (" + "; ".join(failures) + ")"
        raise VideoError(self.path, reason)

    def _check_truncation(self) -> None:
        """A container cut short: count the frames that really decode (a binary search, a few probes); refuse
        the file when fewer than ``min_decodable`` of the promised frames are left, else sample over those
        (:attr:`num_frames` becomes their count) and say so in :attr:`warnings`."""
        cut = self._cut
        if cut is None:
            return
        present, declared = cut
        expected = self.expected_frames
        decodable = self._count_decodable(self._backend.name)
        if decodable < self.min_decodable * expected:
            raise TruncatedVideoError(self.path, decodable, expected)
        self.num_frames = min(self.num_frames, decodable)
        self.warnings.append(f"the file is cut short ({present} of {declared} bytes): only {decodable} of "
                             f"{expected} frames decode; sampled from those")

    # -- properties ----------------------------------------------------------------------------------------
    @property
    def decoder(self) -> str:
        return self._backend.name if self._backend is not None else "closed"

    @property
    def duration(self) -> float:
        """Seconds: ``num_frames / fps`` (nominal; NaN when the file has no frame rate)."""
        return self.num_frames / self.fps if self.fps > 0 else float("nan")

    @property
    def codec(self) -> str:
        """Codec name ("h264", "hevc", "vp9", "av1", ...; "unknown"), probed with OpenCV on first access."""
        if self._codec is None:
            self._probe_container()
        return self._codec or "unknown"

    def _probe_container(self) -> None:
        """OpenCV's view of the container: codec FourCC and the header's frame count (or its estimate)."""
        self._codec, self._container_frames = "unknown", None
        try:
            cv2 = _import_cv2()
            cap = cv2.VideoCapture(self._open_path, cv2.CAP_FFMPEG)
            try:
                if cap.isOpened():
                    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC) or 0)
                    tag = fourcc.to_bytes(4, "little").decode("latin-1").strip("\x00 ").lower() if fourcc > 0 else ""
                    self._codec = _FOURCC_CODECS.get(tag, tag or "unknown")
                    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
                    self._container_frames = n if n > 0 else None
            finally:
                cap.release()
        except Exception:
            pass

    # -- decoding ------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._backend is None:
            raise VideoError(self.path, "the video is closed")

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode frames by 0-based index: uint8 ``[*indices.shape, H, W, 3]`` RGB.

        Each distinct index is decoded once, in ascending order (repeated/wrapped indices are copies).
        Raises :class:`TruncatedVideoError` when an index lies past the frames that really decode (then
        :attr:`num_frames` holds the real count), :class:`VideoError` on other decode failures and
        ``IndexError`` for indices outside ``[0, num_frames)``.
        """
        self._check_open()
        idx = np.asarray(indices, dtype=np.int64)
        flat = self._checked_indices(idx)
        uniq, inverse = np.unique(flat, return_inverse=True)
        frames = self._decode_unique(uniq)
        if len(uniq) != flat.size or not np.array_equal(uniq, flat):  # re-expand duplicates / restore order
            frames = frames[inverse.reshape(-1)]
        return frames.reshape(*idx.shape, *frames.shape[1:])

    def _decode_unique(self, uniq: np.ndarray) -> np.ndarray:
        if uniq.size == 0:
            return np.empty((0, self.height, self.width, 3), np.uint8)
        try:
            frames = self._backend.decode(uniq)
        except _DecodeFailure as e:
            frames = self._recover(uniq, e)
        if frames.shape[1:] != (self.height, self.width, 3):
            raise VideoError(self.path, f"frame size changes inside the video ({frames.shape[1]}x{frames.shape[2]} "
                                        f"after {self.height}x{self.width}); re-encode it with a fixed size")
        return frames

    def _recover(self, todo: np.ndarray, failure: _DecodeFailure) -> np.ndarray:
        """A decode failed: retry with a fresh decoder, fall back to OpenCV, else find how many frames really
        decode and report truncation or corruption."""
        name = self._backend.name
        error = f"{name}: {failure}"
        # 1. a decoder's state after an error is undefined, and decord fails transiently on some damaged files:
        #    once more with a fresh one
        try:
            fresh = _BACKENDS[name](self._open_path, self.num_threads)
        except _DecodeFailure as e:
            error = f"{error}; re-open: {e}"
        else:
            self._backend.close()
            self._backend = fresh
            try:
                return fresh.decode(todo)
            except _DecodeFailure as e:
                error = f"{error}; again: {e}"
        # 2. decord failed twice: OpenCV, when the decoder is "auto"
        if self.requested_decoder == "auto" and name != "opencv":
            frames = self._switch_to_opencv(todo, error)
            if frames is not None:
                return frames
            error = f"{error}; opencv: {self._last_opencv_error}"
        # 3. how many frames really decode?
        decodable = self._count_decodable(name)
        if decodable == 0:
            raise VideoError(self.path, f"no decodable frames ({error})")
        if decodable < self.num_frames:
            self.num_frames = decodable
            if int(todo.max()) >= decodable:
                raise TruncatedVideoError(self.path, decodable, self.expected_frames)
        raise VideoError(self.path, f"corrupt: frames {_fmt_indices(todo)} cannot be decoded ({error})")

    _last_opencv_error: str = ""

    def _switch_to_opencv(self, todo: np.ndarray, why: str) -> np.ndarray | None:
        other = None
        try:
            other = _BACKENDS["opencv"](self._open_path, self.num_threads)
            frames = other.decode(todo)
            if frames.shape[1:3] != (self.height, self.width):
                raise _DecodeFailure(f"frames of size {frames.shape[1:3]}, not {(self.height, self.width)}")
        except (_DecodeFailure, ImportError) as e:
            self._last_opencv_error = str(e)
            if other is not None:
                # keep OpenCV for what follows: it is deterministic where decord is not (cut-off files)
                self._backend.close()
                self._backend, self.fallback_reason = other, why
            return None
        self._backend.close()
        self._backend, self.fallback_reason = other, why
        return frames

    def _count_decodable(self, name: str) -> int:
        """The length of the decodable prefix: binary search, each probe with a fresh decoder. With
        ``decoder="auto"`` the probes use OpenCV (deterministic on cut-off files, where decord's failures vary
        from run to run); a decord probe counts as failed only when three fresh decoders fail."""
        if self.requested_decoder == "auto":
            name = "opencv"
        attempts = 3 if name == "decord" else 1

        def ok(k: int) -> bool:
            for _ in range(attempts):
                backend = None
                try:
                    backend = _BACKENDS[name](self._open_path, self.num_threads)
                    if k >= backend.num_frames:
                        return False
                    backend.decode(np.array([k]))
                    return True
                except (_DecodeFailure, ImportError):
                    continue
                finally:
                    if backend is not None:
                        backend.close()
            return False

        lo, hi = 0, self.num_frames  # invariant: frames < lo decode (lo = 0: none known); frame hi does not
        if ok(hi - 1):
            return hi
        hi -= 1
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid):
                lo = mid + 1
            else:
                hi = mid
        return lo

    @property
    def container_frames(self) -> int | None:
        """Frame count the container header promises (OpenCV's reading; an estimate for MKV/WebM)."""
        if self._codec is None:
            self._probe_container()
        return self._container_frames

    def sample(self, sampler: Callable[[int], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``indices = sampler(num_frames)``, then their frames. If the file turns out shorter than its header
        says and at least ``min_decodable`` of the promised frames decode, the indices are drawn again over the
        frames that do (a line goes to :attr:`warnings`); otherwise :class:`TruncatedVideoError` propagates.
        Returns ``(indices, frames)``."""
        n = self.num_frames
        indices = np.asarray(sampler(n))
        try:
            frames = self.get_frames(indices)
        except TruncatedVideoError:
            frames = None
        if frames is not None and self.num_frames == n:
            return indices, frames
        # Decoding found fewer frames than the count the indices were drawn for.
        decodable, expected = self.num_frames, self.expected_frames
        if decodable < self.min_decodable * expected:
            raise TruncatedVideoError(self.path, decodable, expected)
        self.warnings.append(f"the header promises {expected} frames but only {decodable} decode; "
                             f"sampled from those {decodable}")
        indices = np.asarray(sampler(decodable))
        return indices, self.get_frames(indices)

    @property
    def expected_frames(self) -> int:
        """The most frames any header promised: decord's count at open, or the container's (OpenCV) count."""
        return max(self.reported_frames, self.container_frames or 0)

    def timestamps(self, indices: Sequence[int] | np.ndarray) -> list[float]:
        """Presentation time (seconds) of each frame index (decord: from the stream's timestamps; OpenCV:
        ``index / fps``)."""
        self._check_open()
        return self._backend.timestamps(self._checked_indices(indices))

    def __repr__(self) -> str:
        return (f"VideoReader({self.path!r}, decoder={self.decoder!r}, frames={self.num_frames}, "
                f"fps={self.fps:g}, size={getattr(self, 'width', '?')}x{getattr(self, 'height', '?')})")


def _fmt_indices(idx: np.ndarray, limit: int = 6) -> str:
    items = [str(int(i)) for i in idx[:limit]]
    return ", ".join(items) + (", ..." if len(idx) > limit else "")
