"""Generator of a test corpus of videos whose every frame carries its own number.

Every frame shows, in its *display* geometry (what a player shows, after the container's
rotation and sample aspect ratio are applied), a square barcode that encodes the frame's
number. ``read_number`` finds the code anywhere in an image and decodes it after lossy
compression, chroma subsampling, resizing (down to ~64 px) and a centre square crop; a
frame shown rotated or mirrored reads as ``None``, never as another number.
``make_video`` writes a file (PyAV only, no ffmpeg CLI) from a :class:`VideoSpec`;
``CASES`` names the corpus; ``build_corpus`` makes it; ``ground_truth`` decodes a file
sequentially with PyAV (choosing the main video stream itself, applying the display
rotation and SAR itself) and reads the numbers back.

Importing this module needs only numpy, cv2 and av (no pytest).

The barcode
-----------
The code square (side ``round(0.8 * min(w, h))`` of the display frame, centred) is a grid
of 12 x 12 "units": a 1-unit white quiet zone, a 1-unit black ring, a 1-unit white gap
and 6 x 6 data cells (black = 1). Six cells are fixed (orientation mark: (0,0) and (0,1)
black; (1,0), (0,5), (5,0), (5,5) white) -- no rotation or mirror of the grid maps this
pattern onto itself, so a rotated/mirrored code is rejected whatever its data. The other
30 cells hold a 21-bit number (0 .. 2**21-1, ``MAX_NUMBER``) followed by a 9-bit CRC
(polynomial x^9+x^8+x^5+x^2+x+1 = (x+1)(x^8+x^4+x^3+x^2+1): every 1-, 2- and 3-bit
error and every odd number of errors is detected) XOR a constant, so that an all-white
or all-black grid does not validate. ``read_number`` also rejects a code whose cells are
not clearly black or white. Outside the code square the frame holds a coloured moving
gradient (luma ~64..192) and a small moving block in the top margin, so codecs see real
motion; nothing but the code is inside the central square.

``measured_aspect(rgb)`` is the width/height of the located black ring: ~1.0 when the
picture is shown with the right geometry, e.g. 45/64 = 0.70 when 64:45 storage is shown
with square pixels.

What FFmpeg 8 / PyAV 18 do (found while writing this; every point is checked by
``tests/test_corpus.py`` or was checked by hand as stated)
---------------------------------------------------------------------------------------
Rotation sign. ``VideoFrame.rotation`` (FFmpeg ``av_display_rotation_get``) is the angle
by which the player turns the *stored* picture COUNTER-clockwise. A phone portrait video
(legacy ``rotate=90`` tag, QuickTime tkhd matrix a=0 b=1 c=-1 d=0 -- checked in the
bytes PyAV writes) reads back as ``frame.rotation == -90``; display =
``np.rot90(stored, k=frame.rotation // 90)`` (np.rot90 turns counter-clockwise).
``VideoStream.set_display_rotation(deg)`` takes the same counter-clockwise angle.
In this module ``VideoSpec.rotation`` is the CLOCKWISE angle (the legacy ``rotate`` tag):
``rotation=90`` -> ``frame.rotation == -90``; 180 -> -180; 270 -> +90.
The display matrix is written and read back in MP4/MOV (tkhd matrix) and Matroska/WebM
(the muxer writes a Projection element with ProjectionPoseRoll, e.g. 90.0 for
``rotation=270``); on decode it comes back as per-frame DISPLAYMATRIX side data
(``frame.rotation``). Containers without a display matrix (TS, PS, AVI, ASF, FLV, GIF)
get no rotation case.

SAR. PyAV has no way to set ``AVStream.sample_aspect_ratio``; it only copies the codec
context's SAR into the stream's codec parameters. The MP4/MOV/3GP muxer writes ``pasp``
from the codec parameters, so MP4 carries the SAR in the container (and H.264/HEVC/MPEG-4
/MPEG-2/H.263 also carry it in the bitstream). The Matroska muxer writes
DisplayWidth/DisplayHeight only from the *stream* SAR, so a PyAV-written MKV/WebM has no
container SAR: MKV H.264 still reads back with the SAR from the SPS VUI, but VP9 (no SAR
in its bitstream) in MKV/WebM loses it (WebM reads back SAR 1). No MKV-display-size case
can be made with PyAV; ``mkv_h264_sar_64_45`` is the bitstream-only variant, and
``mp4_vp9_sar_4_3`` is the opposite (container ``pasp`` only, the VP9 decoder knows no
SAR: ``codec_context.sample_aspect_ratio`` is None, ``stream.sample_aspect_ratio`` is
4/3). MPEG-2 stores a display aspect ratio (16:9, 4:3) in its sequence header, so the
SAR of ``mpeg_dvd_sar_64_45`` (360x288, DAR 16:9) comes from the bitstream only.
Use ``stream.sample_aspect_ratio`` (av_guess_sample_aspect_ratio: container first, then
codec), fall back to ``codec_context.sample_aspect_ratio``.

Edit lists (``mp4_edit_trim``). Muxing packets whose pts/dts were shifted by -k frames
(what ``ffmpeg -ss X -c copy`` does) makes the MP4 muxer write an ``elst`` whose
media_time skips the k frames (plus the B-frame delay). On read, the mov demuxer still
returns those packets, with negative pts and ``packet.is_discard == True``;
``stream.frames`` (nb_frames from the sample table) still counts them. FFmpeg's decoder
drops the frames decoded from discard-flagged packets, so a default PyAV decode starts at
number k with ``frame.pts == 0`` -- what a player shows. A decoder that ignores the
discard flag (or counts frames from the sample table) is off by k.

Cover art. MP4: a stream with the ``attached_pic`` disposition is written as iTunes
``covr`` metadata, not a track, and *always* reads back as the LAST stream (disposition
attached_pic, ``frames == 0``), whatever its position when written; its packet is the
first packet ``demux()`` returns. MOV drops attached pictures entirely. Matroska: a
stream given the attached_pic disposition is written as an ordinary 1-frame track and
reads back WITHOUT any disposition; real Matroska cover art is an attachment
(``add_attachment('cover.jpg', 'image/jpeg', data)``), which reads back as the last
stream with the attached_pic disposition. A plain 1-frame MJPEG track written first and
flagged default (``*_cover_first_plain``): FFmpeg's mov muxer then enables only that
track (the real video track's tkhd "enabled" flag is cleared and it reads back with no
disposition), and ``av_find_best_stream`` (``container.streams.best('video')``, which
ranks by the default disposition first) picks the picture. The cover picture here is
bigger than the video and carries ``COVER_NUMBER``, so "largest stream" and "default
stream" heuristics both fail visibly. The main stream is the non-attached-pic video
stream with the most packets (ties: largest area) -- see ``main_video_stream``.

Timestamps. MPEG-TS: PyAV's muxer writes the timestamps as given (files made by the
ffmpeg CLI usually start at 1.4 s because of its default ``-muxdelay 0.7``; PyAV sets no
max_delay), only shifted so that the first DTS is not negative: an x264 stream with
B-frames starting at pts 0 reads back starting at 2/30 s (``ts_*`` cases);
``hls_segment`` (first pts 10 s, DTS positive) reads back at exactly 10.0 s. MPEG-PS: the
muxer adds its 0.5 s preload plus one frame (first frame at 0.533 s at 30 fps, 0.54 s at
25 fps). ASF (+WMA2) and FLV (+MP3): the audio encoder's priming gives the first audio
packet a negative pts and the muxer shifts EVERY stream, video included, by it (~0.043 s,
~0.023 s). MP4/MKV keep the values (MP4 writes an edit list for the audio priming; a
first video pts of 5 s becomes an empty edit, ``mp4_start_offset``). AVI keeps no
presentation times: for H.264 with B-frames FFmpeg hands out packets with pts = dts + 1
in decode order, so the decoded frames come out in the right order (numbers correct)
but with ``frame.pts`` out of order (``avi_h264_bframes``, ``CaseInfo.times_exact`` is
False) -- never sort or index frames by pts there. MPEG-4 Part 2 in AVI gets correct pts
from its parser. ``CaseInfo.times`` are the times as set; ``CaseInfo.time_offset`` is the
constant FFmpeg adds on read (measured from the first packet; the tests check that every
decoded frame has time + offset, and the offsets above for the named cases).
Open GOP (``ts_open_gop``): only the first I-frame is an IDR; the later I-frames are
recovery points that the TS demuxer still flags ``is_keyframe``, and the B-frames that
follow them in decode order reference the previous GOP -- seeking to such a "keyframe"
and decoding gives damaged leading frames.

Streams. FLV (``flv_flv1``) reads back with the AUDIO stream first (index 0, video 1),
so "stream 0 is the video" is wrong. In ``mp4_two_streams_smaller_first`` the small
stream is flagged default (the first video track) and is chosen by
``container.streams.best('video')``; in the MKV variant neither is default and best()
picks the larger one.
Truncated files. An MP4 with ``moov`` at the end (default) cut short cannot be opened at
all; with ``movflags=+faststart`` (moov first, what web downloads usually have) it opens
and decodes until the cut. ``CaseInfo.numbers`` then lists the frames whose packet and
every earlier packet (decode order) lie completely before the cut; ``uncertain`` lists
the number of the frame whose packet is cut in half (a decoder may show it, damaged, or
not). The demuxer returns that half packet with ``is_corrupt == True``; the H.264 decoder
rejects it with ``InvalidDataError``, and ``container.decode()`` then raises, LOSING the
frames still in the decoder's reorder buffer (2 frames with x264 B-frames): decode packet
by packet, skip packets that fail, and flush the decoder (``display_frames`` does).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

__all__ = [
    "MAX_NUMBER",
    "COVER_NUMBER",
    "SECOND_STREAM_OFFSET",
    "VideoSpec",
    "CaseInfo",
    "CASES",
    "draw_frame",
    "read_number",
    "measured_aspect",
    "locate_code",
    "make_video",
    "build_corpus",
    "ground_truth",
    "main_video_stream",
    "display_frames",
    "to_display",
    "stream_sar",
    "code_image",
]

# ---------------------------------------------------------------------------------------
# Barcode
# ---------------------------------------------------------------------------------------

UNITS = 12  # quiet 1 | ring 1 | gap 1 | 6 cells | gap 1 | ring 1 | quiet 1
GRID = 6
FIXED = {(0, 0): 1, (0, 1): 1, (1, 0): 0, (0, 5): 0, (5, 0): 0, (5, 5): 0}
DATA_CELLS = [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in FIXED]
NUM_BITS = 21
CHECK_BITS = 9
_CRC_POLY = 0x327  # x^9 + x^8 + x^5 + x^2 + x + 1 = (x + 1)(x^8 + x^4 + x^3 + x^2 + 1)
_CHECK_XOR = 0x15A
MAX_NUMBER = (1 << NUM_BITS) - 1
CODE_FRACTION = 0.8  # side of the code square / min(display w, h)
COVER_NUMBER = 1_999_999  # number drawn on cover pictures
SECOND_STREAM_OFFSET = 50_000  # numbers of the small extra stream: 50000 + k

assert len(DATA_CELLS) == NUM_BITS + CHECK_BITS


def _check(number: int) -> int:
    reg = number << CHECK_BITS
    for bit in range(NUM_BITS + CHECK_BITS - 1, CHECK_BITS - 1, -1):
        if reg >> bit & 1:
            reg ^= _CRC_POLY << (bit - CHECK_BITS)
    return (reg & ((1 << CHECK_BITS) - 1)) ^ _CHECK_XOR


def _cells(number: int) -> np.ndarray:
    word = (number << CHECK_BITS) | _check(number)
    grid = np.zeros((GRID, GRID), np.uint8)
    for (r, c), v in FIXED.items():
        grid[r, c] = v
    for i, (r, c) in enumerate(DATA_CELLS):
        grid[r, c] = word >> (NUM_BITS + CHECK_BITS - 1 - i) & 1
    return grid


def _decode_cells(bits: np.ndarray) -> int | None:
    for (r, c), v in FIXED.items():
        if bits[r, c] != v:
            return None
    word = 0
    for r, c in DATA_CELLS:
        word = word << 1 | int(bits[r, c])
    number = word >> CHECK_BITS
    if (word & ((1 << CHECK_BITS) - 1)) != _check(number):
        return None
    return number


def code_image(number: int, side: int) -> np.ndarray:
    """The code square (quiet zone included) for ``number`` as a ``side`` x ``side`` uint8 luma image."""
    if not 0 <= number <= MAX_NUMBER:
        raise ValueError(f"number {number} outside 0..{MAX_NUMBER}")
    units = np.full((UNITS, UNITS), 255, np.uint8)
    units[1:11, 1:11] = 0
    units[2:10, 2:10] = 255
    units[3:9, 3:9] = np.where(_cells(number) == 1, 0, 255)
    edges = np.round(np.arange(UNITS + 1) * side / UNITS).astype(int)
    idx = np.repeat(np.arange(UNITS), np.diff(edges))
    return units[idx][:, idx]


_BG_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _background(number: int, w: int, h: int) -> np.ndarray:
    key = (w, h)
    if key not in _BG_CACHE:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.int32)
        _BG_CACHE[key] = (xx * 2 + yy, xx - yy * 2 + 4096)
        if len(_BG_CACHE) > 64:
            _BG_CACHE.pop(next(iter(_BG_CACHE)))
    a, b = _BG_CACHE[key]
    t = number * 5
    tri1 = np.abs(((a + t) & 255) - 128)  # 0..128, triangle wave moving with the number
    tri2 = np.abs(((b + 3 * t) & 255) - 128)
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = 64 + tri1
    img[..., 1] = 64 + tri2
    img[..., 2] = 192 - (tri1 >> 1) - (tri2 >> 1)
    return img


def draw_frame(number: int, display_w: int, display_h: int) -> np.ndarray:
    """The picture a player should show for frame ``number``: uint8 RGB, ``display_h x display_w x 3``.

    The code square (side ``round(0.8 * min(w, h))``) is centred; the rest is a moving
    coloured gradient plus a small moving block in the top margin (never inside the square).
    """
    w, h = int(display_w), int(display_h)
    img = _background(number, w, h)
    m = min(w, h)
    side = int(round(CODE_FRACTION * m))
    blk = max(2, int(0.06 * m))
    y0 = max(0, int(0.02 * m))
    x0 = (number * max(1, w // 40)) % max(1, w - blk)
    img[y0:y0 + blk, x0:x0 + blk] = (230, 40, 40)
    top, left = (h - side) // 2, (w - side) // 2
    img[top:top + side, left:left + side] = code_image(number, side)[..., None]
    return img


def _luma(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim == 2:
        return a.astype(np.uint8, copy=False)
    if a.shape[2] == 4:
        a = a[..., :3]
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)


def _candidates(y: np.ndarray, thr: float):
    """Bounding boxes (x, y, w, h) of dark rings whose hole has the ring's proportions (10:8)."""
    mask = (y < thr).astype(np.uint8)
    contours, hier = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    if hier is None:
        return out
    hier = hier[0]
    for i, cnt in enumerate(contours):
        if hier[i][3] != -1:  # holes are handled from their parent
            continue
        ox, oy, ow, oh = cv2.boundingRect(cnt)
        if ow < 10 or oh < 10:
            continue
        if cv2.contourArea(cnt) < 0.85 * ow * oh:
            continue
        j = hier[i][2]
        while j != -1:
            hx, hy, hw, hh = cv2.boundingRect(contours[j])
            if hw > 0.6 * ow and hh > 0.6 * oh:
                rw, rh = ow / max(hw, 1), oh / max(hh, 1)
                if 1.12 < rw < 1.45 and 1.12 < rh < 1.45 and cv2.contourArea(contours[j]) > 0.8 * hw * hh:
                    out.append((ox, oy, ow, oh))
                    break
            j = hier[j][0]
    return out


def _thresholds(y: np.ndarray) -> list[float]:
    lo, hi = np.percentile(y, (1, 99))
    mid = (float(lo) + float(hi)) / 2
    span = float(hi) - float(lo)
    return [mid, mid - 0.2 * span, mid + 0.2 * span]


def locate_code(rgb: np.ndarray) -> tuple[float, float, float, float] | None:
    """Outer box (x, y, w, h) in pixels of the code's black ring, or None if none is found.

    Thresholds the luma (midpoint of the 1st/99th percentiles, then +-20 %), finds dark
    connected regions with one hole whose size is 8/10 of the region's (the ring), and
    returns the one nearest the image centre (largest on ties).
    """
    y = _luma(rgb)
    H, W = y.shape
    for thr in _thresholds(y):
        cands = _candidates(y, thr)
        if cands:
            cx, cy = W / 2, H / 2

            def score(b):
                bx, by, bw, bh = b
                d = math.hypot(bx + bw / 2 - cx, by + bh / 2 - cy) / max(W, H)
                return (round(d, 2), -bw * bh)

            return tuple(float(v) for v in min(cands, key=score))
    return None


_CELL_CENTRES = np.array([(2.5 + c, 2.5 + r) for r in range(GRID) for c in range(GRID)])  # in units
# black level: the middle of the ring's four sides; white level: the gap inside the ring
_BLACK_CENTRES = np.array([(5.0, 0.5), (5.0, 9.5), (0.5, 5.0), (9.5, 5.0)])
_WHITE_CENTRES = np.array([(5.0, 1.5), (5.0, 8.5), (1.5, 5.0), (8.5, 5.0)])
_ALL_CENTRES = np.concatenate([_BLACK_CENTRES, _WHITE_CENTRES, _CELL_CENTRES])


def _read_at(ii: np.ndarray, box) -> int | None:
    """Decode the grid inside the ring box (x, y, w, h); ``ii`` is the luma's integral image."""
    ox, oy, ow, oh = box
    ux, uy = ow / 10.0, oh / 10.0  # the ring's outer box is 10 units wide
    rx, ry = max(0.5, ux * 0.25), max(0.5, uy * 0.25)  # sample the middle half of each cell
    H, W = ii.shape[0] - 1, ii.shape[1] - 1
    cx = ox + _ALL_CENTRES[:, 0] * ux
    cy = oy + _ALL_CENTRES[:, 1] * uy
    x0 = np.clip(np.rint(cx - rx).astype(int), 0, W - 1)
    y0 = np.clip(np.rint(cy - ry).astype(int), 0, H - 1)
    x1 = np.clip(np.maximum(np.rint(cx + rx).astype(int), x0 + 1), 1, W)
    y1 = np.clip(np.maximum(np.rint(cy + ry).astype(int), y0 + 1), 1, H)
    sums = ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]
    means = sums / ((x1 - x0) * (y1 - y0))
    black = float(np.median(means[0:4]))
    white = float(np.median(means[4:8]))
    contrast = white - black
    if contrast < 40:
        return None
    thr = (white + black) / 2
    cells = means[8:]
    if np.any(np.abs(cells - thr) < 0.15 * contrast):
        return None  # a cell neither clearly black nor clearly white
    return _decode_cells((cells < thr).reshape(GRID, GRID).astype(np.uint8))


def read_number(rgb: np.ndarray) -> int | None:
    """The number drawn by ``draw_frame`` in ``rgb`` (RGB/RGBA/grey array, any size), or None.

    Locates the code itself (no fixed position); works on a whole frame, a centre crop, a
    resized picture. Returns None when no code is found, the checksum fails, a cell is
    ambiguous, or the code is rotated/mirrored.
    """
    y = _luma(rgb)
    ii = None
    tried = set()
    for thr in _thresholds(y):
        for box in _candidates(y, thr):
            if box in tried:
                continue
            tried.add(box)
            if ii is None:
                ii = cv2.integral(y, sdepth=cv2.CV_64F)
            n = _read_at(ii, box)
            if n is not None:
                return n
    return None


def measured_aspect(rgb: np.ndarray) -> float | None:
    """Width / height of the code's ring as seen in ``rgb``: ~1.0 when the display geometry is right."""
    box = locate_code(rgb)
    if box is None:
        return None
    return box[2] / box[3]


# ---------------------------------------------------------------------------------------
# Display geometry
# ---------------------------------------------------------------------------------------


def _display_size(w: int, h: int, sar: Fraction, rotation: int) -> tuple[int, int]:
    uw = int(round(w * sar))
    return (h, uw) if rotation % 180 else (uw, h)


def _stored_from_display(disp: np.ndarray, w: int, h: int, rotation: int) -> np.ndarray:
    """Inverse of what a player does: un-rotate (player turns ``rotation`` clockwise), squeeze to w."""
    unrot = np.rot90(disp, k=(rotation // 90) % 4)
    if unrot.shape[1] != w or unrot.shape[0] != h:
        interp = cv2.INTER_AREA if unrot.shape[1] > w else cv2.INTER_LINEAR
        unrot = cv2.resize(np.ascontiguousarray(unrot), (w, h), interpolation=interp)
    return np.ascontiguousarray(unrot)


def to_display(stored: np.ndarray, sar: Fraction | float | None = None, ffmpeg_rotation: float = 0) -> np.ndarray:
    """What a player shows for a decoded picture: stretch by ``sar``, then rotate.

    ``ffmpeg_rotation`` is ``VideoFrame.rotation`` (counter-clockwise degrees).
    """
    img = stored
    if sar is not None and float(sar) > 0 and abs(float(sar) - 1) > 1e-6:
        h, w = img.shape[:2]
        nw = max(1, int(round(w * float(sar))))
        interp = cv2.INTER_AREA if nw < w else cv2.INTER_LINEAR
        img = cv2.resize(np.ascontiguousarray(img), (nw, h), interpolation=interp)
    k = int(round((ffmpeg_rotation or 0) / 90)) % 4
    if k:
        img = np.rot90(img, k=k)
    return np.ascontiguousarray(img)


# ---------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------

_EXT = {"mp4": "mp4", "mov": "mov", "mkv": "mkv", "webm": "webm", "avi": "avi", "mpegts": "ts",
        "mpeg": "mpg", "asf": "wmv", "flv": "flv", "3gp": "3gp", "gif": "gif"}
_FORMAT = {"mkv": "matroska"}
_DEFAULT_PIX = {"mjpeg": "yuvj420p", "gif": "rgb8", "png": "rgb24"}


@dataclass
class VideoSpec:
    """How to make one file. Sizes are the STORED size (what the encoder gets).

    ``rotation``: clockwise degrees a player turns the stored picture (legacy ``rotate``
    tag); the file's display matrix reads back as ``frame.rotation == -rotation``
    (normalised to [-180, 180]). ``sar``: (num, den) sample aspect ratio; the display
    frame is ``round(width * sar) x height`` (before rotation). ``start_time``: pts of
    the first frame in seconds. ``vfr``: irregular frame durations (1/30 s and 1/10 s,
    fixed pseudo-random pattern). ``edit_trim=k``: the first k encoded frames are hidden
    by an MP4 edit list. ``cover_art``: 'first' or 'last' (position when written) with
    ``cover_mode`` 'attached' (attached_pic disposition; Matroska: an attachment) or
    'plain' (a 1-frame MJPEG track flagged default). ``extra_stream='smaller_first'``: a
    96x64 stream numbered ``50000 + k`` written before the main one (and, to beat
    bitrate heuristics too, at much higher quality). ``audio``: 'aac', 'mp3', 'mp2',
    'wmav2', 'pcm_s16le', 'opus' or None. ``truncate_at``: fraction of the bytes kept.
    """

    container: str
    codec: str = "libx264"
    frames: int = 256
    fps: int | Fraction = 30
    width: int = 160
    height: int = 120
    pix_fmt: str | None = None
    gop_size: int | None = None  # None: the encoder's default (x264: 250)
    max_b_frames: int | None = None  # None: the encoder's default (x264: 3)
    codec_options: dict = field(default_factory=dict)
    container_options: dict = field(default_factory=dict)
    bit_rate: int | None = None
    rotation: int = 0
    sar: tuple[int, int] | None = None
    start_time: float = 0.0
    vfr: bool = False
    edit_trim: int = 0
    cover_art: str | None = None
    cover_mode: str = "attached"
    extra_stream: str | None = None
    audio: str | None = None
    truncate_at: float | None = None
    first_number: int = 0
    description: str = ""

    @property
    def ext(self) -> str:
        return _EXT[self.container]


@dataclass
class CaseInfo:
    """What a correct reader must see in the file ``path``.

    ``numbers``: the frame numbers a player shows, in order (after the edit list; for a
    truncated file: what decodes sequentially, ``uncertain`` may or may not be shown in
    addition); ``times``: their presentation times in seconds as written (``time_offset``:
    what FFmpeg adds on read: MPEG-TS B-frame DTS shift, MPEG-PS preload); ``display_size``
    (w, h) as a player shows it; ``stored_size`` (w, h) as decoded; ``rotation``: clockwise
    degrees (``ffmpeg_rotation``: the expected ``VideoFrame.rotation``); ``sar``;
    ``main_stream``: index of the main video stream in the file as read back (None if the
    file cannot be opened); ``readable``: whether FFmpeg can open it at all.
    """

    name: str
    path: Path
    spec: VideoSpec
    display_size: tuple[int, int]
    stored_size: tuple[int, int]
    rotation: int
    ffmpeg_rotation: int
    sar: Fraction
    numbers: list[int]
    times: list[float]
    fps: Fraction
    time_offset: float = 0.0
    uncertain: list[int] = field(default_factory=list)
    main_stream: int | None = 0
    readable: bool = True
    has_audio: bool = False
    times_exact: bool = True
    build_seconds: float = 0.0


def _fps(spec: VideoSpec) -> Fraction:
    return Fraction(spec.fps)


def _vfr_durations(n: int) -> list[Fraction]:
    rng = np.random.default_rng(1234)
    pat = rng.random(n) < 0.35
    return [Fraction(1, 10) if p else Fraction(1, 30) for p in pat]


def _frame_times(spec: VideoSpec) -> list[Fraction]:
    """Presentation time of each encoded frame, in seconds (exact)."""
    start = Fraction(spec.start_time).limit_denominator(1000)
    if spec.vfr:
        t, out = start, []
        for d in _vfr_durations(spec.frames):
            out.append(t)
            t += d
        return out
    fps = _fps(spec)
    return [start + Fraction(i) / fps for i in range(spec.frames)]


def _time_base(spec: VideoSpec) -> Fraction:
    """Time base of the frames given to the encoder: 1/fps, or ms / 90 kHz ticks for VFR."""
    if spec.vfr:
        return Fraction(1, 1000) if spec.container in ("mkv", "webm", "asf", "flv") else Fraction(1, 90000)
    return 1 / _fps(spec)


def _codec_setup(stream, spec: VideoSpec, w: int, h: int, tb: Fraction, *, quality: str = "normal"):
    codec = spec.codec
    cc = stream.codec_context
    stream.width, stream.height = w, h
    stream.pix_fmt = spec.pix_fmt or _DEFAULT_PIX.get(codec, "yuv420p")
    cc.time_base = tb
    if spec.gop_size is not None:
        cc.gop_size = spec.gop_size
    if spec.max_b_frames is not None:
        cc.max_b_frames = spec.max_b_frames
    opts = {}
    if codec == "libx264":
        opts.update({"preset": "veryfast"})
        if quality == "high":
            opts.update({"crf": "8"})
    elif codec == "libx265":
        opts.update({"preset": "ultrafast", "x265-params": "log-level=none"})
    elif codec == "libvpx-vp9":
        opts.update({"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"})
    elif codec == "libsvtav1":
        opts.update({"preset": "12", "crf": "35", "svtav1-params": "lp=2"})
    elif codec in ("mjpeg",):
        cc.qmin, cc.qmax = 2, 8
    elif codec in ("mpeg2video", "mpeg4", "wmv2", "flv", "h263", "mpeg1video"):
        if spec.bit_rate:
            cc.bit_rate = spec.bit_rate
        else:  # constant quantiser 4 (-q:v 4): moderate quality, no rate-control starvation
            cc.qscale = True
            cc.global_quality = 4 * 118  # FF_QP2LAMBDA
        # the default macroblock decision ("simple") of FFmpeg's H.263 encoder leaves grey
        # half-updated 8x8 blocks where a code cell flips; rate-distortion decision does not
        opts["mbd"] = "rd"
    if spec.bit_rate and codec not in ("mpeg2video", "mpeg4", "wmv2", "flv", "h263", "mpeg1video"):
        cc.bit_rate = spec.bit_rate
    opts.update({k: str(v) for k, v in spec.codec_options.items()})
    cc.options = opts
    if spec.sar is not None:
        cc.sample_aspect_ratio = Fraction(*spec.sar)


def _encode_picture(img: np.ndarray, codec: str = "mjpeg") -> tuple[bytes, av.CodecContext]:
    h, w = img.shape[:2]
    cc = av.CodecContext.create(codec, "w")
    cc.width, cc.height = w, h
    cc.pix_fmt = "yuvj420p" if codec == "mjpeg" else "rgb24"
    cc.time_base = Fraction(1, 1)
    if codec == "mjpeg":
        cc.qmin, cc.qmax = 2, 4
    f = av.VideoFrame.from_ndarray(img, format="rgb24")
    f.pts = 0
    pk = cc.encode(f) + cc.encode(None)
    return b"".join(bytes(p) for p in pk), cc


def _add_audio(out, codec: str, rate: int = 48000):
    name = {"mp3": "libmp3lame", "opus": "libopus"}.get(codec, codec)
    st = out.add_stream(name, rate=rate)
    cc = st.codec_context
    cc.layout = "mono"
    fmts = [f.name for f in cc.codec.audio_formats] if cc.codec.audio_formats else ["s16"]
    fmt = "fltp" if "fltp" in fmts else fmts[0]
    cc.format = fmt
    if name == "libopus":
        cc.sample_rate = 48000
    cc.bit_rate = 64000
    return st


def _audio_frames(st, seconds: float, start: Fraction):
    cc = st.codec_context
    rate = cc.sample_rate
    fsize = cc.frame_size or 1024
    total = int(seconds * rate)
    fmt = cc.format.name
    t0 = int(round(start * rate))
    for i in range(0, total, fsize):
        n = min(fsize, total - i)
        t = (np.arange(i, i + n) / rate).astype(np.float32)
        x = 0.2 * np.sin(2 * np.pi * 440 * t)
        if fmt.startswith("s16"):
            arr = (x * 32767).astype(np.int16)[None, :]
        else:
            arr = x.astype(np.float32)[None, :]
        fr = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
        fr.sample_rate = rate
        fr.pts = t0 + i
        fr.time_base = Fraction(1, rate)
        yield fr


def _set_pts(frame: av.VideoFrame, t: Fraction, tb: Fraction) -> None:
    frame.pts = int(round(t / tb))
    frame.time_base = tb


def make_video(path, spec: VideoSpec, name: str = "") -> CaseInfo:
    """Write ``spec`` to ``path`` and return what a correct reader must see."""
    t_start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.codec not in av.codecs_available:
        raise RuntimeError(f"encoder {spec.codec} not available")
    sar = Fraction(*spec.sar) if spec.sar else Fraction(1)
    w, h = spec.width, spec.height
    rotation = spec.rotation % 360
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90")
    if rotation and spec.container not in ("mp4", "mov", "mkv", "webm", "3gp"):
        raise ValueError(f"{spec.container} cannot carry a display matrix (rotation)")
    dw, dh = _display_size(w, h, sar, rotation)
    times = _frame_times(spec)
    tb = _time_base(spec)
    fmt = _FORMAT.get(spec.container, spec.container)
    copts = {str(k): str(v) for k, v in spec.container_options.items()}
    out = av.open(str(path), "w", format=fmt, options=copts)
    try:
        streams = []  # (kind, stream) in writing order
        cover_first = spec.cover_art == "first"
        cover_pic = None
        if spec.cover_art:
            cover_side = max(dw, dh) + 40
            cover_pic = draw_frame(COVER_NUMBER, cover_side, cover_side)

        def add_cover_stream():
            st = out.add_stream("mjpeg", rate=1)
            st.width, st.height = cover_pic.shape[1], cover_pic.shape[0]
            st.pix_fmt = "yuvj420p"
            st.codec_context.time_base = Fraction(1, 1)
            st.codec_context.qmin, st.codec_context.qmax = 2, 4
            from av.stream import Disposition

            st.disposition = Disposition.attached_pic if spec.cover_mode == "attached" else Disposition.default
            streams.append(("cover", st))

        mkv_attachment = spec.cover_art and spec.cover_mode == "attached" and spec.container in ("mkv", "webm")
        if spec.cover_art and cover_first and not mkv_attachment:
            add_cover_stream()
        small = None
        if spec.extra_stream == "smaller_first":
            small = out.add_stream(spec.codec, rate=_fps(spec))
            _codec_setup(small, replace(spec, sar=None, gop_size=1, max_b_frames=0), 96, 64, tb, quality="high")
            streams.append(("small", small))
        main = out.add_stream(spec.codec, rate=_fps(spec) if not spec.vfr else None)
        _codec_setup(main, spec, w, h, tb)
        if rotation:
            main.set_display_rotation(-rotation)  # PyAV takes counter-clockwise degrees
        if spec.cover_art and spec.cover_mode == "plain":
            main.disposition = 0
        streams.append(("main", main))
        if spec.cover_art and not cover_first and not mkv_attachment:
            add_cover_stream()
        if mkv_attachment:
            data, _ = _encode_picture(cover_pic)
            att = out.add_attachment("cover.jpg", "image/jpeg", data)
            att.metadata["title"] = "cover"
        aud = _add_audio(out, spec.audio) if spec.audio else None

        shift = Fraction(0)
        if spec.edit_trim:
            shift = times[spec.edit_trim] - times[0]

        def mux(pkts, st=None):
            for p in pkts:
                if shift and st is main:
                    d = int(round(shift / p.time_base))
                    p.pts -= d
                    p.dts -= d
                out.mux(p)

        # cover picture packet first (muxers want attached pictures before anything else)
        for kind, st in streams:
            if kind == "cover":
                f = av.VideoFrame.from_ndarray(cover_pic, format="rgb24")
                f.pts = 0
                f.time_base = Fraction(1, 1)
                mux(st.encode(f) + st.encode(None))
        audio_seconds = float(times[-1] - times[0]) + 1 / float(_fps(spec))
        audio_iter = iter(_audio_frames(aud, audio_seconds, times[0])) if aud else None
        audio_next = next(audio_iter, None) if audio_iter else None
        for i, t in enumerate(times):
            number = spec.first_number + i
            if small is not None:
                img = draw_frame(SECOND_STREAM_OFFSET + i, 96, 64)
                f = av.VideoFrame.from_ndarray(img, format="rgb24")
                _set_pts(f, t, tb)
                mux(small.encode(f), small)
            disp = draw_frame(number, dw, dh)
            stored = _stored_from_display(disp, w, h, rotation)
            f = av.VideoFrame.from_ndarray(stored, format="rgb24")
            _set_pts(f, t, tb)
            mux(main.encode(f), main)
            while audio_next is not None and audio_next.pts / audio_next.sample_rate <= float(t):
                mux(aud.encode(audio_next), aud)
                audio_next = next(audio_iter, None)
        if small is not None:
            mux(small.encode(None), small)
        mux(main.encode(None), main)
        if aud is not None:
            while audio_next is not None:
                mux(aud.encode(audio_next), aud)
                audio_next = next(audio_iter, None)
            mux(aud.encode(None), aud)
    finally:
        out.close()

    numbers = [spec.first_number + i for i in range(spec.frames)]
    set_times = [float(t - shift) for t in times]
    if spec.edit_trim:
        numbers = numbers[spec.edit_trim:]
        set_times = set_times[spec.edit_trim:]
    info = CaseInfo(
        name=name or path.stem,
        path=path,
        spec=spec,
        display_size=(dw, dh),
        stored_size=(w, h),
        rotation=rotation,
        ffmpeg_rotation=int(((-rotation + 180) % 360) - 180) if rotation else 0,
        sar=sar,
        numbers=numbers,
        times=set_times,
        fps=_fps(spec),
        has_audio=bool(spec.audio),
    )
    try:
        with av.open(str(path)) as c:
            info.main_stream = main_video_stream(c).index
    except Exception:  # noqa: BLE001
        info.main_stream = None
    # AVI keeps no presentation times: FFmpeg gives H.264/HEVC packets pts = dts + 1 in decode
    # order, so with B-frames the decoded frames carry pts out of order (numbers are right)
    info.times_exact = not (spec.container == "avi" and spec.codec in ("libx264", "libx265")
                            and spec.max_b_frames != 0)
    if info.main_stream is not None and info.times_exact:
        info.time_offset = _measure_offset(info)
    if spec.truncate_at is not None:
        _truncate(info)
    info.build_seconds = time.perf_counter() - t_start
    return info


def _measure_offset(info: CaseInfo) -> float:
    """First presentation time of the main stream as FFmpeg reads it, minus the first as written."""
    with av.open(str(info.path)) as c:
        st = c.streams[info.main_stream]
        first = None
        for p in c.demux(st):
            if p.size and p.pts is not None and not p.is_discard:
                t = float(p.pts * p.time_base)
                first = t if first is None else min(first, t)
    return 0.0 if first is None or not info.times else round(first - info.times[0], 6)


def _truncate(info: CaseInfo) -> None:
    """Cut the file and work out which frames still decode (see the module docstring)."""
    path = info.path
    size = path.stat().st_size
    cut = int(size * info.spec.truncate_at)
    pkts = []
    with av.open(str(path)) as c:
        st = c.streams[info.main_stream]
        for p in c.demux(st):
            if p.size:
                pkts.append((p.pos, p.size, p.pts))
    complete, partial = [], None
    for pos, sz, pts in pkts:
        if pos is not None and pos + sz <= cut:
            complete.append(pts)
        else:
            if pos is not None and pos < cut:
                partial = pts
            break
    all_pts = sorted(p[2] for p in pkts)
    index_of = {pts: i for i, pts in enumerate(all_pts)}
    keep = sorted(index_of[p] for p in complete)
    with open(path, "r+b") as fh:
        fh.truncate(cut)
    try:
        with av.open(str(path)) as c:
            info.main_stream = main_video_stream(c).index
    except Exception:  # noqa: BLE001
        info.readable = False
        info.main_stream = None
        info.numbers, info.times, info.uncertain = [], [], []
        return
    nums, tms = info.numbers, info.times
    info.numbers = [nums[i] for i in keep]
    info.times = [tms[i] for i in keep]
    info.uncertain = [nums[index_of[partial]]] if partial is not None else []


# ---------------------------------------------------------------------------------------
# Reading back
# ---------------------------------------------------------------------------------------


def main_video_stream(container):
    """The main video stream: not an attached picture, most packets, then largest area.

    Counting packets needs one demux pass over the file (cheap: no decoding); a single
    candidate is returned without it. Raises ValueError when there is no video stream.
    """
    cands = [s for s in container.streams.video if not (int(s.disposition) & 1024)]
    if not cands:
        raise ValueError("no video stream")
    if len(cands) == 1:
        return cands[0]
    counts = {s.index: 0 for s in cands}
    try:
        for p in container.demux(*cands):
            if p.size and p.stream.index in counts:
                counts[p.stream.index] += 1
    except av.error.FFmpegError:
        pass
    return max(cands, key=lambda s: (counts[s.index], s.codec_context.width * s.codec_context.height))


def stream_sar(stream) -> Fraction | None:
    """The SAR a player uses: ``stream.sample_aspect_ratio`` (container, then codec), else the codec's."""
    for v in (getattr(stream, "sample_aspect_ratio", None), stream.codec_context.sample_aspect_ratio):
        if v is not None and v > 0:
            return Fraction(v)
    return None


def display_frames(path, stream_index: int | None = None):
    """Decode ``path`` sequentially with PyAV and yield ``(display_rgb, frame)`` per frame.

    ``stream_index`` None: ``main_video_stream``. Applies the SAR (stream, then codec) and
    the frame's display rotation. Packets are decoded one by one: a packet the decoder
    rejects (e.g. the half packet at the end of a truncated file, ``is_corrupt``) is
    skipped and the decoder is still flushed at the end -- ``container.decode()`` would
    raise there and lose the frames still in the decoder's reorder buffer.
    """
    path = str(path)
    if stream_index is None:
        with av.open(path) as c:
            stream_index = main_video_stream(c).index
    with av.open(path) as c:
        st = c.streams[stream_index]
        sar = stream_sar(st)
        packets = c.demux(st)
        flushed = False
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError:
                break  # demuxer error: stop reading, flush below
            if packet.size == 0 and packet.dts is None:
                flushed = True
            try:
                frames = st.decode(packet)
            except av.error.EOFError:
                break
            except av.error.FFmpegError:
                continue  # e.g. InvalidDataError on a cut packet: skip it
            for frame in frames:
                yield to_display(frame.to_ndarray(format="rgb24"), sar, frame.rotation), frame
        if not flushed:
            try:
                frames = st.decode(None)
            except av.error.FFmpegError:
                frames = []
            for frame in frames:
                yield to_display(frame.to_ndarray(format="rgb24"), sar, frame.rotation), frame


def ground_truth(path, stream_index: int | None = None) -> list[int | None]:
    """Numbers read from every frame of a plain sequential PyAV decode of the main stream (None: unreadable)."""
    return [read_number(img) for img, _ in display_frames(path, stream_index)]


# ---------------------------------------------------------------------------------------
# The corpus
# ---------------------------------------------------------------------------------------

_LONG = 256


def _cases() -> dict[str, VideoSpec]:
    V = VideoSpec
    c: dict[str, VideoSpec] = {}
    c["ts_x264_default"] = V("mpegts", frames=300, width=320, height=180, codec_options={"preset": "medium"},
                             description="MPEG-TS, x264 defaults: GOP 250, 3 B-frames (b-pyramid), 10 s. No index: "
                             "frame counts and seeking must come from the stream; first pts 2/30 s after DTS shift.")
    c["ts_gop30"] = V("mpegts", frames=300, gop_size=30, codec_options={"sc_threshold": "0"},
                      description="MPEG-TS, 1 s closed GOP with B-frames (x264 keyint=30, no scenecut).")
    c["ts_open_gop"] = V("mpegts", frames=300,
                         codec_options={"x264-params": "keyint=30:min-keyint=30:open-gop=1:scenecut=0"},
                         description="MPEG-TS, open GOP (x264 open-gop): the leading B-frames after each non-first "
                         "I-frame reference the previous GOP, so seeking to an I-frame and decoding yields frames "
                         "that are only right if decoding started earlier.")
    c["hls_segment"] = V("mpegts", frames=300, start_time=10.0, gop_size=60, audio="aac",
                         codec_options={"sc_threshold": "0"},
                         description="An HLS segment: MPEG-TS, H.264 2 s GOP + AAC, timestamps start at 10 s.")
    c["mpeg_ps_mpeg2"] = V("mpeg", codec="mpeg2video", frames=_LONG, gop_size=15, max_b_frames=2, audio="mp2",
                           description="MPEG-2 program stream (.mpg, VOB-like) with B-frames and MP2 audio; "
                           "no index, timestamps start at 0.5 s (muxer preload).")
    c["asf_wmv2"] = V("asf", codec="wmv2", frames=_LONG, gop_size=60, audio="wmav2",
                      description="ASF (.wmv) with WMV2 + WMA2: ms timestamps, preroll, simple index.")
    c["mp4_edit_trim"] = V("mp4", frames=_LONG + 10, edit_trim=10, gop_size=60,
                           description="MP4 cut without re-encoding: the first 10 encoded frames are hidden by an "
                           "edit list (packets flagged discard). A player shows numbers 10, 11, ...")
    c["mp4_cover_first_attached"] = V("mp4", cover_art="first", cover_mode="attached",
                                      description="MP4 with cover art (attached_pic, iTunes covr) written first; "
                                      "reads back as the last stream, bigger than the video.")
    c["mp4_cover_first_plain"] = V("mp4", cover_art="first", cover_mode="plain",
                                   description="MP4 whose FIRST track is a 1-frame MJPEG picture flagged default "
                                   "(the video track is disabled): av_find_best_stream picks the picture.")
    c["mkv_cover_last"] = V("mkv", cover_art="last", cover_mode="attached",
                            description="MKV with cover.jpg as a Matroska attachment (last stream, attached_pic).")
    c["mkv_cover_first_plain"] = V("mkv", cover_art="first", cover_mode="plain",
                                   description="MKV whose first track is a 1-frame MJPEG picture flagged default.")
    c["mp4_two_streams_smaller_first"] = V("mp4", extra_stream="smaller_first",
                                           description="Dash cam: a 96x64 stream (numbers 50000+k, higher bitrate, "
                                           "default) before the 160x120 main stream.")
    c["mkv_two_streams_smaller_first"] = V("mkv", extra_stream="smaller_first",
                                           description="As mp4_two_streams_smaller_first, in Matroska.")
    c["mp4_h264"] = V("mp4", description="Plain MP4 H.264 (x264 veryfast: GOP 250, B-frames).")
    c["mov_h264"] = V("mov", description="QuickTime MOV H.264.")
    c["mkv_h264_bframes"] = V("mkv", max_b_frames=3, gop_size=48, codec_options={"x264-params": "b-pyramid=normal"},
                              description="MKV H.264 with B-pyramid: Matroska stores pts only, DTS is guessed.")
    c["mp4_hevc"] = V("mp4", codec="libx265", description="MP4 HEVC (x265 ultrafast).")
    c["webm_vp9"] = V("webm", codec="libvpx-vp9", audio="opus",
                      description="WebM VP9 (libvpx realtime, keyframe every 128) + Opus.")
    c["webm_av1"] = V("webm", codec="libsvtav1", description="WebM AV1 (SVT-AV1).")
    c["avi_mjpeg"] = V("avi", codec="mjpeg", audio="pcm_s16le", description="AVI MJPEG + PCM.")
    c["avi_mpeg4_bframes"] = V("avi", codec="mpeg4", max_b_frames=2, gop_size=30, audio="mp3",
                               description="AVI (Xvid-like) MPEG-4 Part 2 with B-frames + MP3: AVI stores no "
                               "presentation times, only a frame sequence in decode order.")
    c["avi_h264_bframes"] = V("avi", max_b_frames=3, gop_size=60,
                              description="AVI H.264 with B-frames: AVI has no pts; FFmpeg gives packets "
                              "pts = dts + 1, so decoded frames come in the right order but with frame.pts out of "
                              "order (times_exact=False): never sort or index frames by pts.")
    c["mp4_hevc_10bit"] = V("mp4", codec="libx265", pix_fmt="yuv420p10le", frames=128,
                            description="MP4 HEVC Main10 (yuv420p10le).")
    c["mp4_h264_fullrange"] = V("mp4", pix_fmt="yuvj420p", frames=128,
                                description="MP4 H.264 full-range (yuvj420p, JPEG levels).")
    c["mp4_mpeg4"] = V("mp4", codec="mpeg4", max_b_frames=2, gop_size=30,
                       description="MP4 MPEG-4 Part 2 with B-frames.")
    c["flv_flv1"] = V("flv", codec="flv", gop_size=60, audio="mp3",
                      description="FLV with Sorenson H.263 (FLV1) + MP3.")
    c["3gp_h263"] = V("3gp", codec="h263", width=176, height=144, sar=(12, 11), gop_size=30, audio="aac",
                      description="3GP H.263 QCIF 176x144 with the H.263 pixel aspect 12:11 (pasp) + AAC.")
    c["gif_anim"] = V("gif", codec="gif", fps=10, frames=_LONG,
                      description="Animated GIF, 10 fps (centisecond delays), palette (rgb8), frame-diff rects.")
    c["mp4_rot90"] = V("mp4", rotation=90, description="Phone portrait: stored 160x120, shown 120x160 "
                       "(rotate 90 clockwise; frame.rotation == -90).")
    c["mp4_rot180"] = V("mp4", rotation=180, description="Upside-down: frame.rotation == -180.")
    c["mp4_rot270"] = V("mp4", rotation=270, description="Rotate 270 clockwise: frame.rotation == 90.")
    c["mov_rot90"] = V("mov", rotation=90, description="MOV, rotate 90 clockwise.")
    c["mkv_rot270"] = V("mkv", rotation=270, description="MKV display matrix (ProjectionPoseRoll): rotate 270 cw.")
    c["mpeg_dvd_sar_64_45"] = V("mpeg", codec="mpeg2video", width=360, height=288, sar=(64, 45), gop_size=15,
                                max_b_frames=2, fps=25, frames=_LONG,
                                description="DVD 16:9 anamorphic (PAL SAR 64:45 at half size 360x288 -> 512x288); "
                                "SAR only in the MPEG-2 sequence header (DAR 16:9).")
    c["mp4_dvd_sar_16_15"] = V("mp4", width=360, height=288, sar=(16, 15), fps=25,
                               description="DVD 4:3 PAL SAR 16:15 (360x288 -> 384x288).")
    c["mp4_hdv_sar_4_3"] = V("mp4", width=240, height=180, sar=(4, 3),
                             description="HDV 1440x1080 SAR 4:3, scaled down to 240x180 -> 320x180.")
    c["mp4_sar_8_9"] = V("mp4", width=180, height=120, sar=(8, 9),
                         description="DV NTSC 4:3 SAR 8:9 (180x120 -> 160x120).")
    c["mkv_h264_sar_64_45"] = V("mkv", width=240, height=192, sar=(64, 45),
                                description="MKV whose SAR 64:45 is only in the H.264 SPS (PyAV cannot make the "
                                "Matroska muxer write DisplayWidth).")
    c["mp4_vp9_sar_4_3"] = V("mp4", codec="libvpx-vp9", width=240, height=180, sar=(4, 3),
                             description="MP4 VP9 with SAR 4:3 only in the container (pasp): the decoder's "
                             "codec_context SAR is None.")
    c["mp4_60fps"] = V("mp4", fps=60, frames=_LONG, description="60 fps, 4.3 s.")
    c["mp4_120fps"] = V("mp4", fps=120, frames=_LONG, width=128, height=96, description="120 fps, 2.1 s.")
    c["mp4_1fps"] = V("mp4", fps=1, frames=40, description="1 fps, 40 s (fewer frames than a 8x32 clip).")
    c["mp4_ntsc_29_97"] = V("mp4", fps=Fraction(30000, 1001), frames=_LONG, description="29.97 fps (30000/1001).")
    c["mkv_vfr"] = V("mkv", vfr=True, frames=_LONG, description="Variable frame rate: frames 1/30 s or 1/10 s "
                     "apart (ms timestamps); frame index != time * fps.")
    c["mp4_vfr"] = V("mp4", vfr=True, frames=_LONG, description="Variable frame rate MP4 (1/90000 time base).")
    c["mp4_with_audio"] = V("mp4", audio="aac", description="MP4 H.264 + AAC.")
    c["mkv_with_audio_mp3"] = V("mkv", audio="mp3", description="MKV H.264 + MP3.")
    c["mp4_cut_98"] = V("mp4", frames=_LONG, truncate_at=0.98, audio="aac",
                        container_options={"movflags": "+faststart"},
                        description="Download cut at 98 % (moov first, AAC audio): the last few frames are "
                        "missing; what remains decodes.")
    c["mp4_cut_60"] = V("mp4", frames=_LONG, truncate_at=0.60, container_options={"movflags": "+faststart"},
                        description="Download cut at 60 % (moov first).")
    c["mp4_cut_98_moov_end"] = V("mp4", frames=_LONG, truncate_at=0.98,
                                 description="Cut at 98 % with moov at the end: cannot be opened at all.")
    c["mp4_start_offset"] = V("mp4", start_time=5.0,
                              description="MP4 whose first frame has pts 5 s (written as an empty edit).")
    return c


CASES: dict[str, VideoSpec] = _cases()


def build_corpus(folder, names=None, *, log=None) -> dict[str, CaseInfo]:
    """Make the files of ``CASES`` (or ``names``) in ``folder``; returns {name: CaseInfo}.

    A case whose encoder is missing here is skipped (reported through ``log``, default:
    stored in ``build_corpus.skipped``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = list(CASES) if names is None else list(names)
    infos: dict[str, CaseInfo] = {}
    skipped: dict[str, str] = {}
    for n in names:
        spec = CASES[n]
        needed = [spec.codec]
        if spec.audio:
            needed.append({"mp3": "libmp3lame", "opus": "libopus"}.get(spec.audio, spec.audio))
        missing = [c for c in needed if c not in av.codecs_available]
        if missing:
            skipped[n] = f"encoder(s) {', '.join(missing)} not available in this PyAV build"
            if log:
                log(f"skip {n}: {skipped[n]}")
            continue
        infos[n] = make_video(folder / f"{n}.{spec.ext}", spec, name=n)
    build_corpus.skipped = skipped
    return infos


build_corpus.skipped = {}
