"""video/reader.py: the right frames from every codec, real clips, the verified decord path, and readable errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import wave
from fractions import Fraction

import numpy as np
import pytest

from videogen import (encoder_for, make_empty, make_text, make_video, read_index, sample_video,  # noqa: E402
                      truncate_file)

from tokshift_cli.errors import TokShiftError, UsageError, VideoError  # noqa: E402
from tokshift_cli.video.sampling import clip_indices  # noqa: E402
from tokshift_cli.video import open_video  # noqa: E402
from tokshift_cli.video.reader import TruncatedVideoError, container_truncation  # noqa: E402

W, H, N = 128, 72, 40
WANT = [0, 5, 17, 39, 17, 5, 0]  # unsorted, repeated: each distinct frame is decoded once and re-expanded


def assert_one_line_error(e: BaseException, path) -> None:
    text = str(e)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    assert not re.search(r"\.cc:\d+|\[\d\d:\d\d:\d\d\]|Traceback", text), text  # no decord internals


@pytest.fixture(scope="module")
def vids(tmp_path_factory):
    return tmp_path_factory.mktemp("videos")


CODECS = [("h264", ".mp4", "yuv420p"), ("hevc", ".mp4", "yuv420p"), ("hevc", ".mkv", "yuv420p10le"),
          ("vp9", ".webm", "yuv420p"), ("av1", ".mp4", "yuv420p"), ("av1", ".mkv", "yuv420p10le"),
          ("mpeg4", ".avi", "yuv420p")]


@pytest.mark.parametrize("codec,ext,pix_fmt", CODECS, ids=[f"{c}{e}-{p}" for c, e, p in CODECS])
def test_codecs_decode_the_right_frames(vids, codec, ext, pix_fmt):
    if encoder_for(codec) is None:
        pytest.skip(f"this PyAV/FFmpeg build has no {codec} encoder")
    path = make_video(vids / f"c_{codec}_{pix_fmt}{ext}", codec=codec, width=W, height=H, frames=N, fps=25, gop=12,
                      pix_fmt=pix_fmt)
    with open_video(path) as v:
        assert v.decoder == "pyav" and v.fallback_reason is None
        assert (v.num_frames, v.width, v.height) == (N, W, H)
        assert v.fps == pytest.approx(25) and v.duration == pytest.approx(N / 25)
        assert v.info()["codec"] == codec
        frames = v.get_frames(WANT)
        assert frames.shape == (len(WANT), H, W, 3) and frames.dtype == np.uint8
        assert [read_index(f) for f in frames] == WANT
        assert v.timestamps([0, 5, 39]) == pytest.approx([0, 0.2, 1.56], abs=1e-4)


def test_pyav_and_decord_agree(vids):
    path = make_video(vids / "agree.mp4", width=W, height=H, frames=N, gop=10)
    with open_video(path, decoder="decord") as a, open_video(path, decoder="pyav") as b:
        assert (a.decoder, b.decoder) == ("decord", "pyav")
        assert (b.num_frames, b.width, b.height) == (N, W, H)
        fa, fb = a.get_frames(WANT), b.get_frames(WANT)
        assert [read_index(f) for f in fb] == WANT
        assert np.array_equal(fa, fb)  # same FFmpeg colour conversion: identical pixels


def test_rgb_channel_order(vids):
    path = make_video(vids / "rgb.mp4", width=W, height=H, frames=2, pattern="rgb", pix_fmt="yuv444p")
    for decoder in ("pyav", "decord"):
        with open_video(path, decoder=decoder) as v:
            f = v.get_frames([1])[0].astype(int)
            thirds = [f[:, k * W // 3 + 8:(k + 1) * W // 3 - 8].mean(axis=(0, 1)) for k in range(3)]
            for c in range(3):  # red | green | blue thirds
                assert np.argmax(thirds[c]) == c, (decoder, thirds)


def test_ntsc_fps_and_duration(vids):
    path = make_video(vids / "ntsc.mp4", width=W, height=H, frames=30, fps=Fraction(30000, 1001))
    with open_video(path) as v:
        assert v.fps == pytest.approx(29.97, abs=0.01)
        assert v.duration == pytest.approx(30 * 1001 / 30000, abs=1e-3)
        assert v.timestamps([29]) == pytest.approx([29 * 1001 / 30000], abs=1e-3)


def test_portrait_and_clip_sampling(vids):
    path = make_video(vids / "portrait.mp4", width=72, height=128, frames=100)
    with open_video(path) as v:
        assert (v.width, v.height) == (72, 128)
        idx = clip_indices(v.num_frames, 8, 32, 10)  # 100 < 256: ten identical wrapped clips
        frames = v.get_frames(idx)
        assert frames.shape == (10, 8, 128, 72, 3)
        assert [read_index(f) for f in frames[3]] == [0, 32, 64, 96, 28, 60, 92, 24]
        indices, frames = v.sample(lambda n: clip_indices(n, 8, 4, 2))
        assert [read_index(f) for f in frames[1]] == list(indices[1]) and not v.warnings


def test_tiny_video_and_decords_width_bug(vids):
    path = make_video(vids / "tiny16.mp4", width=16, height=16, frames=20)
    with open_video(path) as v:
        assert v.decoder == "pyav"
        assert (v.num_frames, v.width, v.height) == (20, 16, 16)
        assert [read_index(f) for f in v.get_frames([19, 3, 3, 0])] == [19, 3, 3, 0]
    with open_video(path, decoder="decord") as v, pytest.raises(VideoError) as e:  # readable, no decord internals
        v.get_frames([0])
    assert "decord bug" in str(e.value) and "--decoder pyav" in str(e.value)
    assert_one_line_error(e.value, path)


def test_one_frame_video(vids):
    path = make_video(vids / "one.mp4", width=W, height=H, frames=1)
    with open_video(path) as v:
        assert v.num_frames == 1
        idx = clip_indices(v.num_frames, 8, 32, 10)
        frames = v.get_frames(idx)
        assert frames.shape == (10, 8, H, W, 3) and read_index(frames[9, 7]) == 0


@pytest.mark.parametrize("name,size,frames", [("bikes.mp4", (640, 272), 250), ("bigbuckbunny.mp4", (1280, 720), 132)])
def test_real_clips(name, size, frames):
    try:
        path = sample_video(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    with open_video(path) as v:
        assert (v.width, v.height, v.num_frames, v.codec) == (*size, frames, "h264")
        assert v.fps == pytest.approx(25)
        got = v.get_frames([0, frames - 1])
        assert got.shape == (2, size[1], size[0], 3)
        assert got[0].std() > 10 and not np.array_equal(got[0], got[1])


# --- broken inputs ------------------------------------------------------------------------------------------


def test_zero_byte_file(vids):
    path = make_empty(vids / "empty.mp4")
    with pytest.raises(VideoError) as e:
        open_video(path)
    assert e.value.reason == "file is empty (0 bytes)" and e.value.path == str(path)
    assert_one_line_error(e.value, path)


def test_text_named_mp4(vids):
    path = make_text(vids / "notes.mp4", "hello, not a video\n" * 30)
    with pytest.raises(VideoError) as e:
        open_video(path)
    assert e.value.reason.startswith("not a video file (it is text")
    assert_one_line_error(e.value, path)
    html = make_text(vids / "page.mp4", "<!DOCTYPE html><html><body>403 Forbidden</body></html>")
    with pytest.raises(VideoError, match="HTML page"):
        open_video(html)


def test_binary_garbage(vids):
    path = vids / "garbage.mkv"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoError) as e:
        open_video(path)
    assert "not a video file" in e.value.reason
    assert_one_line_error(e.value, path)


def test_audio_only_file(vids):
    path = vids / "sound.mp4"  # a WAV named .mp4: FFmpeg finds an audio stream and no video stream
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(b"\0\0" * 4000)
    with pytest.raises(VideoError) as e:
        open_video(path)
    assert e.value.reason == "not a video file (no video stream)"


def test_missing_directory_and_gpu(vids):
    with pytest.raises(VideoError) as e:
        open_video(vids / "nope.mp4")
    assert e.value.reason == "no such file"
    with pytest.raises(VideoError, match="is a directory"):
        open_video(vids)
    link = vids / "dangling.mp4"
    link.symlink_to(vids / "gone.mp4")
    with pytest.raises(VideoError, match="broken symbolic link"):
        open_video(link)
    path = make_video(vids / "ok.mp4", width=W, height=H, frames=2)
    with pytest.raises(UsageError, match="NVDEC"):
        open_video(path, decoder="gpu")
    with pytest.raises(UsageError, match="auto, cpu, pyav, decord, gpu"):
        open_video(path, decoder="ffmpeg")


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_permission_denied():
    """As root too: opened by an unprivileged user (tests/procs.py: setpriv), since root reads any file."""
    import tempfile
    from pathlib import Path

    from procs import python_unprivileged

    root = Path(tempfile.mkdtemp(prefix="tokshift-perm-"))
    root.chmod(0o755)
    path = make_video(root / "secret.mp4", width=W, height=H, frames=2)
    path.chmod(0)
    try:
        r = python_unprivileged("import sys\nfrom tokshift_cli.errors import VideoError\n"
                                "from tokshift_cli.video import open_video\n"
                                "try:\n    open_video(sys.argv[1])\nexcept VideoError as e:\n    print(e.reason)\n",
                                str(path))
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip() == "permission denied"
    finally:
        path.chmod(0o644)
        shutil.rmtree(root)


def test_mp4_cut_before_its_index(vids):
    full = make_video(vids / "moov_end.mp4", width=W, height=H, frames=N)  # index (moov) written last
    path = truncate_file(full, vids / "moov_end_cut.mp4", 0.6)
    with pytest.raises(VideoError) as e:
        open_video(path)
    assert "moov" in e.value.reason and "cut short" in e.value.reason
    assert_one_line_error(e.value, path)


@pytest.mark.parametrize("ext,faststart", [(".mp4", True), (".mkv", False), (".webm", False)])
def test_badly_truncated_file_is_refused(vids, ext, faststart):
    codec = "vp9" if ext == ".webm" else "h264"
    full = make_video(vids / f"long{ext}", codec=codec, width=W, height=H, frames=100, faststart=faststart,
                      pattern="noise", gop=10)
    path = truncate_file(full, vids / f"half{ext}", 0.5)
    assert container_truncation(str(path)) == (path.stat().st_size, full.stat().st_size)
    with pytest.raises(TruncatedVideoError) as e:
        open_video(path)
    m = re.fullmatch(r"truncated: could only decode (\d+) of 100 frames", e.value.reason)
    assert m and 20 <= int(m.group(1)) <= 60, e.value.reason
    assert e.value.expected == 100 and isinstance(e.value, VideoError) and isinstance(e.value, TokShiftError)
    assert_one_line_error(e.value, path)


def test_slightly_truncated_file_is_resampled(vids):
    full = make_video(vids / "nearly.mp4", width=W, height=H, frames=100, faststart=True, gop=10)
    path = truncate_file(full, vids / "nearly_cut.mp4", 0.97)
    assert container_truncation(str(path)) is not None and container_truncation(str(full)) is None
    with open_video(path) as v:
        assert any("cut short" in w for w in v.warnings)
        indices, frames = v.sample(lambda n: np.arange(n)[None])   # every frame: must hit the cut
        assert 90 <= v.num_frames < 100 and indices.shape == (1, v.num_frames)
        assert [read_index(f) for f in frames[0]] == list(range(v.num_frames))  # the right frames, all real
        assert any("only" in w and "decode" in w for w in v.warnings)
        with pytest.raises(IndexError):
            v.get_frames([99])


def test_non_utf8_name_with_spaces_and_colon(vids, tmp_path):
    src = make_video(vids / "src_name.mp4", width=W, height=H, frames=10)
    name = os.fsdecode(b"we ird:na\xffme \xe9.mp4")  # not valid UTF-8; ":" must not read as a protocol
    dst = os.path.join(str(tmp_path), name)
    shutil.copyfile(src, dst)
    for decoder in ("auto", "decord"):
        with open_video(dst, decoder=decoder) as v:
            assert v.path == dst
            assert [read_index(f) for f in v.get_frames([9, 2])] == [9, 2]


def test_index_errors_and_close(vids):
    path = make_video(vids / "idx.mp4", width=W, height=H, frames=10)
    v = open_video(path)
    with pytest.raises(IndexError):
        v.get_frames([10])
    with pytest.raises(IndexError):
        v.get_frames([-1])
    assert v.get_frames([]).shape == (0, H, W, 3)
    v.close()
    with pytest.raises(VideoError, match="closed"):
        v.get_frames([0])
    v.close()  # idempotent


def test_decord_before_torch_does_not_break_torch(tmp_path):
    """decord2 dlopens the CUDA pip wheels' libnvblas with RTLD_GLOBAL at import, which hijacked BLAS: a torch
    imported afterwards crashed in its first matmul ("[NVBLAS] CPU Blas library need to be provided", SIGSEGV).
    video.import_decord() never loads libnvblas."""
    import subprocess
    import sys

    code = ("import sys; from tokshift_cli.video import open_video\n"
            "with open_video(sys.argv[1], decoder='decord') as v: v.get_frames([0, 1])\n"
            "import torch; print(float(torch.nn.Linear(64, 64)(torch.ones(4, 64)).sum().isfinite()))\n")
    path = make_video(tmp_path / "a.mp4", width=W, height=H, frames=3)
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "1.0", (r.returncode, r.stderr[-500:])
    assert "NVBLAS" not in r.stderr


def test_import_decord_from_threads_at_once():
    """Threads that decode their first files at the same time (GPU decoding runs in threads) all get the complete
    module: never the half-initialised one another thread is still importing ("partially initialized module
    'decord' has no attribute 'VideoReader'")."""
    code = ("import threading; from tokshift_cli.video.decord_reader import import_decord\n"
            "got, go = [], threading.Barrier(4)\n"
            "def run():\n"
            "    go.wait(); got.append(hasattr(import_decord(), 'VideoReader'))\n"
            "ts = [threading.Thread(target=run) for _ in range(4)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "assert got == [True] * 4, got\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
