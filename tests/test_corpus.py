"""Checks of the test-corpus generator (tests/corpus.py) itself -- not of tokshift_cli.

For every case: a plain sequential PyAV decode of the main video stream, with the
rotation and SAR applied here, reads exactly CaseInfo's numbers at CaseInfo's times, in
CaseInfo's geometry. Plus the barcode's own guarantees (rotated/mirrored -> None,
survives crop + resize + JPEG, aspect marker) and the container facts the module
docstring states (edit list discard flags, cover-art streams, rotation sign, SAR).
"""

from __future__ import annotations

from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

import corpus
from corpus import (
    CASES,
    COVER_NUMBER,
    MAX_NUMBER,
    SECOND_STREAM_OFFSET,
    draw_frame,
    measured_aspect,
    read_number,
)


@pytest.fixture(scope="session")
def built(barcode_corpus):
    """The session's corpus (conftest.barcode_corpus: built once, shared with tests/test_frames.py)."""
    return barcode_corpus


def _info(built, name):
    if name not in built:
        pytest.skip(corpus.build_corpus.skipped.get(name, "not built"))
    return built[name]


# --------------------------------------------------------------------------------------
# Barcode
# --------------------------------------------------------------------------------------

NUMBERS = [0, 1, 2, 7, 255, 256, 4095, 108_000, SECOND_STREAM_OFFSET + 3, COVER_NUMBER, MAX_NUMBER]
SIZES = [(160, 120), (120, 160), (320, 180), (96, 64), (512, 288), (64, 64), (180, 120)]


def _centre_square(img):
    h, w = img.shape[:2]
    m = min(w, h)
    y0, x0 = (h - m) // 2, (w - m) // 2
    return img[y0:y0 + m, x0:x0 + m]


def _jpeg(img, q):
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, q])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


@pytest.mark.parametrize("w,h", SIZES)
def test_barcode_roundtrip_and_orientation(w, h):
    for n in NUMBERS:
        img = draw_frame(n, w, h)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        assert read_number(img) == n
        for k in (1, 2, 3):
            assert read_number(np.rot90(img, k)) is None, (n, k)
        assert read_number(img[:, ::-1]) is None
        assert read_number(img[::-1]) is None
        t = np.transpose(img, (1, 0, 2))
        assert read_number(t) is None
        assert read_number(np.rot90(t, 2)) is None


@pytest.mark.parametrize("w,h", SIZES)
def test_barcode_survives_crop_resize_jpeg(w, h):
    for n in NUMBERS:
        sq = _centre_square(draw_frame(n, w, h))
        for side in (224, 64):
            interp = cv2.INTER_AREA if side < sq.shape[0] else cv2.INTER_LINEAR
            r = cv2.resize(sq, (side, side), interpolation=interp)
            assert read_number(r) == n, (n, side)
            assert read_number(_jpeg(r, 40)) == n, (n, side, "jpeg40")
        # the whole frame resized so that its short side is 64, with JPEG
        s = 64 / min(w, h)
        small = cv2.resize(draw_frame(n, w, h), (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        assert read_number(_jpeg(small, 40)) == n


def test_barcode_checksum_rejects_cell_errors():
    # flipping any 1, 2 or 3 data cells (or any fixed cell) never yields a number
    from itertools import combinations

    for n in (0, 1, 12345, 108_000, MAX_NUMBER):
        cells = corpus._cells(n)
        assert corpus._decode_cells(cells) == n
        for r, c in list(corpus.FIXED):
            bad = cells.copy()
            bad[r, c] ^= 1
            assert corpus._decode_cells(bad) is None
        for k in (1, 2, 3):
            for combo in combinations(corpus.DATA_CELLS, k):
                bad = cells.copy()
                for r, c in combo:
                    bad[r, c] ^= 1
                assert corpus._decode_cells(bad) is None, (n, combo)
    assert corpus._decode_cells(np.zeros((6, 6), np.uint8)) is None
    assert corpus._decode_cells(np.ones((6, 6), np.uint8)) is None


def test_barcode_rejects_noise_and_blank():
    rng = np.random.default_rng(0)
    for i in range(60):
        g = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        g = cv2.GaussianBlur(g, (0, 0), 0.5 + i / 15)
        assert read_number(g) is None
    assert read_number(np.zeros((64, 64, 3), np.uint8)) is None
    assert read_number(np.full((64, 64, 3), 128, np.uint8)) is None


def test_barcode_reads_in_any_position():
    # read_number locates the code itself: shifted, padded, scaled
    img = draw_frame(4242, 160, 120)
    canvas = np.full((300, 400, 3), 90, np.uint8)
    canvas[150:270, 30:190] = img
    assert read_number(canvas) == 4242
    assert read_number(cv2.resize(img, (97, 73), interpolation=cv2.INTER_AREA)) == 4242


def test_measured_aspect():
    for w, h in SIZES:
        assert abs(measured_aspect(draw_frame(3, w, h)) - 1) < 0.05
        sq = cv2.resize(_centre_square(draw_frame(3, w, h)), (64, 64), interpolation=cv2.INTER_AREA)
        assert abs(measured_aspect(sq) - 1) < 0.05
    # 16:9 display stored at 360x288 (SAR 64:45) and shown with square pixels
    disp = draw_frame(9, 512, 288)
    stored = cv2.resize(disp, (360, 288), interpolation=cv2.INTER_AREA)
    assert read_number(stored) == 9
    assert abs(measured_aspect(stored) - 45 / 64) < 0.03
    for sar in (Fraction(4, 3), Fraction(8, 9), Fraction(16, 15)):
        d = draw_frame(1, 240, 180)
        st = cv2.resize(d, (round(240 / sar), 180), interpolation=cv2.INTER_AREA)
        assert abs(measured_aspect(st) - 1 / float(sar)) < 0.03
        assert abs(measured_aspect(st) - 1) > 0.05  # clearly off when uncorrected
    assert measured_aspect(np.full((50, 50, 3), 128, np.uint8)) is None


def test_display_size_and_code_in_central_square():
    img = draw_frame(77, 320, 180)
    box = corpus.locate_code(img)
    x, y, w, h = box
    side = 0.8 * 180
    assert (320 - side) / 2 <= x and x + w <= (320 + side) / 2
    assert (180 - side) / 2 <= y and y + h <= (180 + side) / 2


# --------------------------------------------------------------------------------------
# Every case
# --------------------------------------------------------------------------------------


def _frames(info):
    return list(corpus.display_frames(info.path, info.main_stream))


@pytest.mark.parametrize("name", list(CASES))
def test_case(built, name):
    info = _info(built, name)
    if not info.readable:
        with pytest.raises(av.error.FFmpegError):
            av.open(str(info.path))
        assert info.numbers == []
        return
    frames = _frames(info)
    got = got_all = [read_number(img) for img, _ in frames]
    times = [float(f.time) for _, f in frames]
    if info.uncertain:
        keep = [i for i, g in enumerate(got) if g not in info.uncertain and not (g is None and i == len(got) - 1)]
        assert len(got) - len(keep) <= len(info.uncertain)
        got = [got[i] for i in keep]
        times = [times[i] for i in keep]
    assert got == info.numbers, name
    assert len(info.times) == len(info.numbers)
    # timestamps: as written, plus the documented constant that FFmpeg adds on read
    tol = 0.0015 if info.spec.container in ("mkv", "webm", "asf", "flv") else 1e-4
    if info.spec.container == "gif":
        tol = 0.006
    if info.times_exact:
        for t_read, t_set in zip(times, info.times):
            assert abs(t_read - (t_set + info.time_offset)) <= tol, (name, t_read, t_set, info.time_offset)
    else:  # AVI + H.264 B-frames: right order, but frame pts out of order (module docstring)
        assert times != sorted(times)

    # geometry: stored size, rotation, SAR, display size, aspect marker
    img0, f0 = frames[0]
    assert (f0.width, f0.height) == info.stored_size
    assert (img0.shape[1], img0.shape[0]) == info.display_size
    assert f0.rotation == info.ffmpeg_rotation
    with av.open(str(info.path)) as c:
        st = c.streams[info.main_stream]
        assert corpus.stream_sar(st) in (info.sar, None if info.sar == 1 else info.sar)
    for img, _ in frames[:: max(1, len(frames) // 5)]:
        assert abs(measured_aspect(img) - 1) < 0.05
    # what a model pipeline does to a decoded frame: centre square crop, resize, JPEG
    for k in range(0, len(frames), max(1, len(frames) // 3)):
        sq = _centre_square(frames[k][0])
        for side in (224, 64):
            interp = cv2.INTER_AREA if side < sq.shape[0] else cv2.INTER_LINEAR
            r = _jpeg(cv2.resize(sq, (side, side), interpolation=interp), 40)
            assert read_number(r) == got_all[k], (name, k, side)
    if info.rotation:  # a reader that ignores the display matrix reads nothing, not a wrong number
        assert read_number(f0.to_ndarray(format="rgb24")) is None
    if info.sar != 1:
        raw = f0.to_ndarray(format="rgb24")
        a = measured_aspect(raw)
        assert abs(a - 1 / float(info.sar)) < 0.04
    if info.has_audio:
        with av.open(str(info.path)) as c:
            assert len(c.streams.audio) == 1


def test_corpus_has_required_cases(built):
    required = """ts_x264_default ts_gop30 hls_segment mpeg_ps_mpeg2 asf_wmv2 mp4_edit_trim mp4_cover_first_attached
    mp4_cover_first_plain mkv_cover_last mp4_two_streams_smaller_first mp4_h264 mov_h264 mkv_h264_bframes mp4_hevc
    webm_vp9 webm_av1 avi_mjpeg flv_flv1 3gp_h263 gif_anim mp4_rot90 mp4_rot180 mp4_rot270 mov_rot90 mkv_rot270
    mpeg_dvd_sar_64_45 mp4_hdv_sar_4_3 mp4_sar_8_9 mp4_60fps mp4_120fps mp4_1fps mkv_vfr mp4_with_audio
    mp4_cut_98""".split()
    assert set(required) <= set(CASES)
    # the build time (sum of build_seconds) is not asserted: a wall-clock bound flakes on a loaded machine


# --------------------------------------------------------------------------------------
# Container facts stated in the module docstring
# --------------------------------------------------------------------------------------


def test_edit_list_discard(built):
    info = _info(built, "mp4_edit_trim")
    k = info.spec.edit_trim
    with av.open(str(info.path)) as c:
        st = c.streams.video[0]
        assert st.frames == info.spec.frames  # sample table counts the hidden frames
        pk = [p for p in c.demux(st) if p.size]
    assert sum(p.is_discard for p in pk) == k
    assert all(p.pts < 0 for p in pk if p.is_discard)
    assert all(p.pts >= 0 for p in pk if not p.is_discard)
    assert info.numbers[0] == k and info.times[0] == 0
    data = info.path.read_bytes()
    assert b"elst" in data


def test_rotation_sign_in_mp4_bytes(built):
    # VideoSpec.rotation=90 (clockwise, phone portrait) -> tkhd matrix a=0 b=1 c=-1 d=0, frame.rotation -90
    import struct

    info = _info(built, "mp4_rot90")
    data = info.path.read_bytes()
    i = data.find(b"tkhd") + 4
    ver = data[i]
    base = i + 4 + (20 if ver == 0 else 32) + 8 + 8
    a, b, _u, c, d = struct.unpack(">5i", data[base:base + 20])
    assert (a, b, c, d) == (0, 1 << 16, -(1 << 16), 0)
    assert info.ffmpeg_rotation == -90
    # Matroska: Projection (0x7670) with ProjectionPoseRoll (0x7675) = 90.0 for rotation=270
    mkv = _info(built, "mkv_rot270").path.read_bytes()
    i = mkv.find(b"\x76\x75\x88")
    assert mkv.find(b"\x76\x70") >= 0 and i >= 0
    assert struct.unpack(">d", mkv[i + 3:i + 11])[0] == 90.0


def test_cover_streams(built):
    mp4a = _info(built, "mp4_cover_first_attached")
    with av.open(str(mp4a.path)) as c:
        v = c.streams.video
        assert len(v) == 2
        assert int(v[-1].disposition) & 1024  # attached_pic reads back LAST in MP4
        assert v[-1].codec_context.width > v[0].codec_context.width
        assert mp4a.main_stream == 0
        assert next(iter(c.demux())).stream.index == v[-1].index  # the cover packet comes first
    mp4p = _info(built, "mp4_cover_first_plain")
    with av.open(str(mp4p.path)) as c:
        v = c.streams.video
        assert v[0].codec_context.name == "mjpeg" and v[0].frames == 1
        assert int(v[0].disposition) & 1 and not int(v[1].disposition) & 1
        assert c.streams.best("video").index == 0  # av_find_best_stream picks the picture
        assert mp4p.main_stream == 1
    mkvl = _info(built, "mkv_cover_last")
    with av.open(str(mkvl.path)) as c:
        v = c.streams.video
        assert int(v[-1].disposition) & 1024 and mkvl.main_stream == 0
    mkvp = _info(built, "mkv_cover_first_plain")
    with av.open(str(mkvp.path)) as c:
        assert c.streams.best("video").index == 0 and mkvp.main_stream == 1
    for info in (mp4a, mp4p, mkvl, mkvp):
        with av.open(str(info.path)) as c:
            cover = [s for s in c.streams.video if s.index != info.main_stream][0]
            idx = cover.index
        assert corpus.ground_truth(info.path, idx) == [COVER_NUMBER]


def test_two_streams(built):
    for name in ("mp4_two_streams_smaller_first", "mkv_two_streams_smaller_first"):
        info = _info(built, name)
        assert info.main_stream == 1
        small = corpus.ground_truth(info.path, 0)
        assert small == [SECOND_STREAM_OFFSET + i for i in range(info.spec.frames)]
    with av.open(str(built["mp4_two_streams_smaller_first"].path)) as c:
        assert c.streams.best("video").index == 0  # the default-chosen stream is the small one


def test_truncated_cases(built):
    cut = _info(built, "mp4_cut_60")
    assert 0 < len(cut.numbers) < cut.spec.frames
    moov_end = _info(built, "mp4_cut_98_moov_end")
    assert not moov_end.readable


def test_vfr_times_irregular(built):
    info = _info(built, "mkv_vfr")
    d = np.diff(info.times)
    assert d.min() < 0.04 and d.max() > 0.09
    assert abs(info.times[-1] * 30 - (len(info.times) - 1)) > 10  # index != time * fps


def test_sar_carried(built):
    expect = {"mp4_hdv_sar_4_3": (Fraction(4, 3), Fraction(4, 3)), "mp4_sar_8_9": (Fraction(8, 9), Fraction(8, 9)),
              "mpeg_dvd_sar_64_45": (Fraction(64, 45), Fraction(64, 45)),
              "mkv_h264_sar_64_45": (Fraction(64, 45), Fraction(64, 45)),
              "mp4_vp9_sar_4_3": (Fraction(4, 3), None), "3gp_h263": (Fraction(12, 11), Fraction(12, 11))}
    for name, (stream_sar, codec_sar) in expect.items():
        info = _info(built, name)
        with av.open(str(info.path)) as c:
            st = c.streams[info.main_stream]
            assert st.sample_aspect_ratio == stream_sar, name
            assert st.codec_context.sample_aspect_ratio == codec_sar, name
    assert b"pasp" in _info(built, "mp4_hdv_sar_4_3").path.read_bytes()


def test_time_offsets(built):
    # what FFmpeg adds to the timestamps as written (see the module docstring)
    expect = {"ts_x264_default": 2 / 30, "ts_gop30": 2 / 30, "hls_segment": 0.0, "mpeg_ps_mpeg2": 0.5 + 1 / 30,
              "mpeg_dvd_sar_64_45": 0.5 + 1 / 25, "mp4_h264": 0.0, "mp4_edit_trim": 0.0, "mp4_start_offset": 0.0,
              "mkv_h264_bframes": 0.0, "avi_mjpeg": 0.0, "gif_anim": 0.0}
    for name, off in expect.items():
        info = _info(built, name)
        assert abs(info.time_offset - off) < 1e-3, (name, info.time_offset)
    assert _info(built, "hls_segment").times[0] == 10.0
    assert _info(built, "mp4_start_offset").times[0] == 5.0
    # an audio encoder's priming (negative first audio pts) shifts every stream in ASF and FLV
    assert 0.01 < _info(built, "asf_wmv2").time_offset < 0.1
    assert 0.01 < _info(built, "flv_flv1").time_offset < 0.1
