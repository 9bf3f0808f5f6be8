"""Every kind of bad input, through the real CLI: each gets a result or exactly one `PATH: reason` line on stderr
plus an `error` entry in the output, the others are unaffected, no traceback ever, and the exit codes are as
documented. One folder holds every case, so each command loads its model once (the bundled untrained model).

The table in README.md ("Reliability") is this file's CASES, in words.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import av  # a core dependency: missing, the suite fails (never skips)
from procs import ctrl_c_as_a_terminal_gives_it  # noqa: E402
from videogen import (encoder_for, index_frame, make_empty, make_text, make_video, sample_video,  # noqa: E402
                      truncate_file)

from tokshift_cli.models.zoo import BUNDLED_UNTRAINED  # noqa: E402

MODEL = ["--model", BUNDLED_UNTRAINED, "--device", "cpu"]
#: Lines the CLI may print on stderr besides the per-file `PATH: reason` lines.
ALLOWED = (re.compile(r"^warning: this model has UNTRAINED weights"), re.compile(r"^\d+ classified, \d+ failed"),
           re.compile(r"^\d+ videos ok, \d+ failed"), re.compile(r"^model loaded in"))

OK = "ok"


def tokshift(*args: str, env: dict[str, str] | None = None, timeout: float = 300,
             user: str | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess; stdout/stderr as bytes (names that are not UTF-8 must survive)."""
    full_env = {**os.environ, "COLUMNS": "250", **(env or {})}
    cmd = [sys.executable, "-m", "tokshift_cli", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, env=full_env, timeout=timeout)


# --- the corpus -----------------------------------------------------------------------------------------------


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        s.layout = "mono"
        for i in range(20):
            fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = 16000, i * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def vfr_pts_ms(k: int) -> int:
    """Presentation time of frame k in the variable-frame-rate case: steps of 70 ms and 20 ms, alternating."""
    return (k // 2) * 90 + (70 if k % 2 else 0)


def _vfr(path: Path, frames: int = 40) -> Path:
    with av.open(str(path), "w") as c:
        s = c.add_stream(encoder_for("h264"), rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            fr = av.VideoFrame.from_ndarray(index_frame(i, 64, 48), format="rgb24")
            fr.pts, fr.time_base = vfr_pts_ms(i), Fraction(1, 1000)
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _avi_wrong_count(src: Path, dst: Path, count: int) -> Path:
    """An AVI whose headers (avih dwTotalFrames, strh dwLength) claim ``count`` frames."""
    b = bytearray(src.read_bytes())
    i, j = b.find(b"avih"), b.find(b"strh")
    struct.pack_into("<I", b, i + 8 + 16, count)
    struct.pack_into("<I", b, j + 8 + 32, count)
    dst.write_bytes(bytes(b))
    return dst


def _bitflip(src: Path, dst: Path, n: int = 40, seed: int = 0) -> Path:
    """Flip ``n`` bytes in the last two thirds of the file (the coded frames, not the headers)."""
    data = bytearray(src.read_bytes())
    rng = np.random.default_rng(seed)
    for k in rng.integers(len(data) // 3, len(data), n):
        data[k] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def _image(path: Path, ext: str) -> Path:
    import cv2

    img = (np.arange(48 * 64 * 3) % 255).astype(np.uint8).reshape(48, 64, 3)
    path.write_bytes(cv2.imencode(ext, img)[1].tobytes())
    return path


def engine_decodes_in_processes() -> bool:
    """Whether the engine decodes in tokshift_cli.video.workers processes (where a native decoder crash costs one
    file) rather than in threads (where it costs the run)."""
    import inspect

    from tokshift_cli import engine

    return "ordered_decode" in inspect.getsource(engine)


def build_corpus(root: Path) -> tuple[list[str], dict[str, tuple[str, object]]]:
    """Make every case under ``root``; return (CLI arguments, {display path: (kind, expectation)}).

    kind "ok": a result is expected (expectation: a check function or None); kind "error": a regex the reason
    must match (fullmatch).
    """
    src = root / "src"
    src.mkdir()
    d = root / "videos"
    d.mkdir()
    cases: dict[str, tuple[str, object]] = {}

    def case(path: Path | str, kind: str, expect: object = None) -> None:
        cases[os.fsencode(path).decode("utf-8", "backslashreplace")] = (kind, expect)

    cut_src = make_video(src / "cut_src.mp4", frames=60, gop=10, faststart=True, pattern="noise", seed=1)
    case(make_video(d / "ok.mp4", frames=30), OK)
    for pct in (10, 50):
        case(truncate_file(cut_src, d / f"cut_{pct}.mp4", pct / 100), "error",
             r"truncated: could only decode \d+ of 60 frames")
    case(truncate_file(cut_src, d / "cut_98.mp4", 0.98), OK,
         lambda r: any("cut short" in w for w in r["video_info"]["warnings"]) and r["video_info"]["num_frames"] < 60)
    moov_last = make_video(src / "moov_last.mp4", frames=40)  # index written at the end
    case(truncate_file(moov_last, d / "cut_before_index.mp4", 0.6), "error",
         r"truncated or incomplete MP4: its index \(moov atom\) is missing, so the download or recording was "
         r"probably cut short")
    mkv = make_video(src / "cut_src.mkv", frames=60, gop=10, pattern="noise", seed=2)
    case(truncate_file(mkv, d / "cut_50.mkv", 0.5), "error", r"truncated: could only decode \d+ of 60 frames")
    case(_bitflip(cut_src, d / "bitflipped.mp4"), OK)  # FFmpeg conceals the damaged blocks: a result
    case(make_empty(d / "zero_bytes.mp4"), "error", r"file is empty \(0 bytes\)")
    case(make_text(d / "text.mp4"), "error", r"not a video file \(it is text: 'this is not a video'\)")
    case(make_text(d / "html_page.mp4", "<!DOCTYPE html><html><body>403</body></html>"), "error",
         r"not a video file \(it is an HTML page: a failed download\?\)")
    case(_image(d / "jpeg_image.mp4", ".jpg"), "error", r"not a video file \(it is a JPEG image\)")
    case(_image(d / "png_image.mp4", ".png"), "error", r"not a video file \(it is a PNG image\)")
    case(_audio_only(d / "audio_only.mp4"), "error", r"not a video file \(no video stream\)")
    case(make_video(d / "one_frame.mp4", frames=1), OK,
         lambda r: r["frame_indices"] == [[0] * 8] * 2 and r["video_info"]["num_frames"] == 1)
    case(make_video(d / "tiny_16x16.mp4", width=16, height=16, frames=10), OK,
         lambda r: (r["video_info"]["width"], r["video_info"]["height"]) == (16, 16)
         and r["frame_indices"] == [[0, 2, 4, 6, 8, 0, 2, 4]] * 2)  # 10 frames, stride 32: wraps modulo 10
    case(make_video(d / "wide_1024x32.mp4", width=1024, height=32, frames=10), OK,
         lambda r: (r["video_info"]["width"], r["video_info"]["height"]) == (1024, 32))
    case(make_video(d / "portrait_48x128.mp4", width=48, height=128, frames=10), OK,
         lambda r: (r["video_info"]["width"], r["video_info"]["height"]) == (48, 128))
    if encoder_for("hevc"):
        case(make_video(d / "hevc_10bit.mkv", codec="hevc", pix_fmt="yuv420p10le", frames=10), OK,
             lambda r: r["video_info"]["codec"] == "hevc")
    case(make_video(d / "h264_444.mp4", pix_fmt="yuv444p", frames=10), OK)
    case(_vfr(d / "vfr.mkv"), OK,  # sampled by frame number (as the authors); timestamps are the real ones
         lambda r: r["timestamps"][0] == pytest.approx([vfr_pts_ms(k) / 1000 for k in r["frame_indices"][0]],
                                                       abs=2e-3))
    avi = make_video(src / "counted.avi", codec="mpeg4", frames=30)
    for claim in (300, 5):  # the header claims 300 (or 5) frames; 30 are there
        case(_avi_wrong_count(avi, d / f"header_says_{claim}.avi", claim), OK,
             lambda r: r["video_info"]["num_frames"] == 30 and max(r["frame_indices"][0]) < 30)
    spaced = d / "sub folder" / "name with  spaces.mp4"
    spaced.parent.mkdir()
    case(shutil.copyfile(d / "ok.mp4", spaced), OK)
    raw = os.fsencode(d) + b"/caf\xe9 \xff.mp4"  # Latin-1 bytes: not UTF-8
    shutil.copyfile(d / "ok.mp4", raw)
    case(os.fsdecode(raw), OK)
    raw_bad = os.fsencode(d) + b"/broken \xfe.mp4"
    open(raw_bad, "wb").close()
    case(os.fsdecode(raw_bad), "error", r"file is empty \(0 bytes\)")
    os.symlink(d / "gone.mp4", d / "broken_link.mp4")
    case(d / "broken_link.mp4", "error", r"broken symbolic link \(points to '.*gone\.mp4', which does not exist\)")
    os.symlink("self_loop.mp4", d / "self_loop.mp4")
    case(d / "self_loop.mp4", "error", r"symbolic link loop \(too many levels of symbolic links\)")
    (d / "sub folder" / "back_up").symlink_to(d, target_is_directory=True)  # a folder loop: walked once
    import workerfns

    # decord aborts the process on this file (tests/test_workers.py: one failed file with --decoder decord);
    # PyAV reads its 40 frames, whatever the index claims
    case(workerfns.huge_frame_count_mp4(d / "huge_frame_count.mp4", src), OK,
         lambda r: r["video_info"]["num_frames"] == 40)
    missing = root / "missing.mp4"
    case(missing, "error", r"no such file or directory")
    empty = root / "no_videos"
    empty.mkdir()
    (empty / "notes.txt").write_text("no videos here\n")
    case(empty, "error", r"no video files \(extensions: \.mp4 \.mkv \.webm \.avi \.mov and \d+ more; name a file "
                         r"to read it whatever its extension\)")
    return [str(d), str(missing), str(empty)], cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    args, cases = build_corpus(root)
    return root, args, cases


def stderr_lines(r: subprocess.CompletedProcess) -> list[str]:
    text = r.stderr.decode("utf-8")  # must be valid UTF-8: undecodable names are escaped
    return [ln for ln in text.splitlines() if ln.strip()]


def check_stderr(r: subprocess.CompletedProcess, failures: dict[str, str]) -> None:
    """Exactly one `PATH: reason` line per failed input, nothing else but the allowed lines, no traceback."""
    lines = stderr_lines(r)
    assert "Traceback" not in "\n".join(lines)
    error_lines = [ln for ln in lines if not any(p.match(ln) for p in ALLOWED)]
    assert sorted(error_lines) == sorted(f"{v}: {e}" for v, e in failures.items()), "\n".join(lines)


@pytest.fixture(scope="module")
def classified(corpus):
    root, args, cases = corpus
    out = root / "results" / "classify.json"  # the folder does not exist yet: created
    r = tokshift("classify", *args, *MODEL, "--views", "2x1", "--json", "--out", str(out), "--timeout", "60")
    return r, out


def test_classify_every_case(corpus, classified):
    root, args, cases = corpus
    r, out = classified
    assert r.returncode == 1, r.stderr.decode()
    stdout = r.stdout.decode("utf-8")  # valid UTF-8, whatever the file names
    doc = json.loads(stdout)
    assert json.loads(out.read_bytes().decode("utf-8")) == doc
    results = {res["video"]: res for res in doc["results"]}
    assert len(results) == len(doc["results"]) == len(cases), sorted(set(results) ^ set(cases))
    failures = {}
    for video, (kind, expect) in cases.items():
        res = results[video]
        if kind == OK:
            assert res["error"] is None, (video, res["error"])
            assert len(res["top_k"]) == 5 and res["decoder"] == "pyav"
            assert expect is None or expect(res), (video, res)
        else:
            assert res["error"] is not None and res["top_k"] == [], (video, res)
            assert re.fullmatch(expect, res["error"]), (video, res["error"])
            failures[video] = res["error"]
    check_stderr(r, failures)


def test_classify_non_utf8_names(corpus, classified):
    """Names that are not UTF-8: `video` holds the printable form (\\xNN), `video_bytes_b64` the exact bytes."""
    root, args, cases = corpus
    doc = json.loads(classified[0].stdout)
    odd = [res for res in doc["results"] if "\\x" in res["video"]]
    assert {Path(res["video"]).name for res in odd} == {"caf\\xe9 \\xff.mp4", "broken \\xfe.mp4"}
    for res in odd:
        raw = base64.b64decode(res["video_bytes_b64"])
        assert os.path.lexists(raw) and raw.decode("utf-8", "backslashreplace") == res["video"]
    assert all("video_bytes_b64" not in res for res in doc["results"] if "\\x" not in res["video"])


def test_extract_features_every_case(corpus, classified):
    """The same inputs through extract-features: the same failures with the same reasons, rows for the rest."""
    root, args, cases = corpus
    out = root / "feats" / "f.npy"
    r = tokshift("extract-features", *args, *MODEL, "--views", "2x1", "--out", str(out), "--timeout", "60")
    assert r.returncode == 1, r.stderr.decode()
    side = json.loads(out.with_suffix(".json").read_bytes().decode("utf-8"))
    failures = {f["video"]: f["error"] for f in side["failures"]}
    expected_fail = {v for v, (kind, _) in cases.items() if kind != OK}
    assert set(failures) == expected_fail
    class_doc = json.loads(classified[0].stdout)
    assert failures == {res["video"]: res["error"] for res in class_doc["results"] if res["error"]}
    ok_videos = [v for v, (kind, _) in cases.items() if kind == OK]
    assert sorted({row["video"] for row in side["rows"]}) == sorted(ok_videos)
    arr = np.load(out)
    assert arr.shape[0] == len(ok_videos) and np.isfinite(arr).all()
    check_stderr(r, failures)


# --- exit codes -------------------------------------------------------------------------------------------------


def test_exit_0_all_good_and_folder_loop_walked_once(tmp_path):
    top = tmp_path / "clean"
    make_video(top / "sub" / "b.mp4", frames=5) if (top / "sub").mkdir(parents=True) is None else None
    make_video(top / "a.mp4", frames=5)
    (top / "sub" / "up").symlink_to(top, target_is_directory=True)  # a loop: sub/up/sub/up/...
    r = tokshift("classify", str(top), *MODEL, "--json")
    assert r.returncode == 0, r.stderr.decode()
    assert [res["video"] for res in json.loads(r.stdout)["results"]] == [str(top / "a.mp4"), str(top / "sub" / "b.mp4")]
    assert [ln for ln in stderr_lines(r) if not any(p.match(ln) for p in ALLOWED)] == []


def test_exit_4_output_parent_is_a_file(tmp_path):
    (tmp_path / "a_file").write_text("x")
    ok = make_video(tmp_path / "ok.mp4", frames=5)
    r = tokshift("classify", str(ok), *MODEL, "--out", str(tmp_path / "a_file" / "res.json"))
    assert r.returncode == 4
    lines = stderr_lines(r)
    assert lines == [f"error: {tmp_path / 'a_file'}: cannot create the output folder ({tmp_path / 'a_file'} is a "
                     "file, not a folder)"], lines


def test_debug_shows_the_traceback_and_keeps_the_exit_code(tmp_path):
    ok = make_video(tmp_path / "ok.mp4", frames=5)
    plain = tokshift("classify", str(ok), "--model", str(tmp_path / "no-such-model"))
    debug = tokshift("--debug", "classify", str(ok), "--model", str(tmp_path / "no-such-model"))
    assert plain.returncode == debug.returncode == 3
    assert b"Traceback" not in plain.stderr and len(stderr_lines(plain)) == 1
    assert b"Traceback" in debug.stderr and b"ModelNotFoundError" in debug.stderr


def test_exit_130_on_ctrl_c(tmp_path):
    """SIGINT mid-run: "interrupted", exit 130, no traceback, and no partial --out file."""
    bikes = sample_video("bikes.mp4")
    vids = tmp_path / "v"
    vids.mkdir()
    for i in range(40):  # copies, not links (links to one file count once)
        shutil.copyfile(bikes, vids / f"b{i:02d}.mp4")
    out = tmp_path / "res.json"
    proc = subprocess.Popen([sys.executable, "-m", "tokshift_cli", "classify", str(vids), *MODEL, "--views", "10x3",
                             "--json", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=ctrl_c_as_a_terminal_gives_it)
    deadline = time.monotonic() + 120
    seen = b""
    while b"UNTRAINED" not in seen and time.monotonic() < deadline:  # the model is loaded: the run is on
        seen += proc.stderr.read1(4096) if hasattr(proc.stderr, "read1") else proc.stderr.read(1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=60)
    err = (seen + rest).decode()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err and stdout == b""
    assert not out.exists() and not list(tmp_path.glob(".res.json.*"))


# --- permissions (need a user that is not root) --------------------------------------------------------------

NOBODY = "65534"


def _can_run_as_nobody() -> str | None:
    if os.name != "posix" or shutil.which("setpriv") is None:
        return "setpriv is not available"
    if os.geteuid() != 0:
        return None  # not root: plain chmod works, see the tests
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable,
                            "-c", "import tokshift_cli.cli"], capture_output=True)
    return None if probe.returncode == 0 else f"cannot run the package as uid {NOBODY}: {probe.stderr[-200:]!r}"


@pytest.mark.skipif(_can_run_as_nobody() is not None, reason=str(_can_run_as_nobody()))
def test_unreadable_file_and_folder_and_unwritable_output():
    """As root, chmod does not stop reads: run the CLI as `nobody` (setpriv) on files only root may read."""
    user = NOBODY if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="tokshift-perm-"))
    try:
        root.chmod(0o755)
        ok = make_video(root / "ok.mp4", frames=5)
        secret = make_video(root / "secret.mp4", frames=5)
        secret.chmod(0o600 if user else 0o000)
        locked = root / "locked"
        locked.mkdir()
        make_video(locked / "inside.mp4", frames=5)
        locked.chmod(0o700 if user else 0o000)
        readonly = root / "readonly"
        readonly.mkdir(mode=0o755)
        if not user:
            readonly.chmod(0o555)
        home = Path(tempfile.mkdtemp(prefix="tokshift-home-"))
        home.chmod(0o777)
        env = {"HOME": str(home), "HF_HOME": str(home / "hf")}
        # --workers 0: decode in the CLI process (here its interpreter may not be executable by `nobody` again)
        r = tokshift("classify", str(ok), str(secret), str(locked), *MODEL, "--json", "--workers", "0", env=env,
                     user=user)
        assert r.returncode == 1, r.stderr.decode()
        res = {x["video"]: x["error"] for x in json.loads(r.stdout)["results"]}
        assert res == {str(ok): None, str(secret): "permission denied", str(locked): "permission denied"}
        check_stderr(r, {str(secret): "permission denied", str(locked): "permission denied"})
        w = tokshift("classify", str(ok), *MODEL, "--out", str(readonly / "res.json"), env=env, user=user)
        assert w.returncode == 4
        assert stderr_lines(w) == [f"error: {readonly}: cannot write in the output folder (permission denied)"]
        assert list(readonly.iterdir()) == []
    finally:
        for p in (root / "locked", root / "secret.mp4", root / "readonly"):
            if p.exists():
                p.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
