"""The frames the model sees are the frames a person sees: checked through the real CLI on barcoded videos.

Every frame of every video in tests/corpus.py shows its own number as a barcode (in display geometry), in MPEG-TS
(x264 default GOP, 1 s GOP, open GOP, an HLS segment starting at 10 s), MPEG-2 PS, ASF/WMV2, MP4/MOV/MKV/WebM
(H.264, HEVC, VP9, AV1, MPEG-4), AVI (MJPEG, B-frames), FLV, 3GP, GIF; with edit lists, cover art first and last,
two video streams, rotations, non-square pixels, 1/60/120 fps, variable frame rate and files cut short.
``tokshift classify --save-views`` writes the exact pixels the model gets; reading the barcodes back from those
PNG files proves which frame, which orientation and which aspect ratio the model saw.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import corpus
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED

MODEL = ("--model", BUNDLED_UNTRAINED, "--device", "cpu")
#: Files the decoder must refuse, and why (one line each).
REFUSED = {
    "mp4_cut_60": r"truncated: could only decode \d+ of 256 frames",
    "mp4_cut_98_moov_end": r"truncated or incomplete MP4: its index \(moov atom\) is missing.*",
}


def tokshift(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tokshift_cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def view_png(folder: Path, video: str, clip: int, crop: int, frame: int, index: int) -> Path:
    return folder / Path(video).stem / f"clip{clip}_crop{crop}_frame{frame}_idx{index}.png"


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def expected_times(info: corpus.CaseInfo, indices: list[int]) -> list[float]:
    return [info.times[k] - info.times[0] for k in indices]


@pytest.fixture(scope="module")
def classified(barcode_corpus, tmp_path_factory):
    """One `tokshift classify` over the whole corpus, 2 centred clips per video, every view saved as PNG."""
    views = tmp_path_factory.mktemp("views")
    files = [str(info.path) for info in barcode_corpus.values()]
    r = tokshift("classify", *files, *MODEL, "--views", "2x1", "--json", "--save-views", str(views),
                 "--top-k", "1")
    return r, views


def test_every_frame_the_model_sees_is_the_frame_asked_for(barcode_corpus, classified):
    r, views = classified
    assert r.returncode == 1, r.stderr  # the files that must be refused fail; every other one succeeds
    results = {Path(res["video"]).stem: res for res in json.loads(r.stdout)["results"]}
    checked = 0
    for name, info in barcode_corpus.items():
        res = results[info.path.stem]
        if name in REFUSED:
            import re

            assert res["error"] is not None and re.fullmatch(REFUSED[name], res["error"]), (name, res["error"])
            continue
        assert res["error"] is None, (name, res["error"])
        vi = res["video_info"]
        assert vi["num_frames"] == len(info.numbers), name
        assert (vi["width"], vi["height"]) == info.display_size, (name, vi)
        assert (vi["stored_width"], vi["stored_height"]) == info.stored_size, (name, vi)
        assert vi["sar"] == f"{info.sar.numerator}:{info.sar.denominator}", (name, vi["sar"])
        assert vi["rotation"] == (-info.rotation) % 360, (name, vi["rotation"])
        for c, clip in enumerate(res["frame_indices"]):
            if info.times_exact:
                assert res["timestamps"][c] == pytest.approx(expected_times(info, clip), abs=2e-3), name
            for j, k in enumerate(clip):
                img = read_png(view_png(views, res["video"], c, 0, j, k))
                assert img.shape == (224, 224, 3)
                assert corpus.read_number(img) == info.numbers[k], (name, c, j, k)
                checked += 1
        aspect = corpus.measured_aspect(read_png(view_png(views, res["video"], 0, 0, 0, res["frame_indices"][0][0])))
        assert aspect == pytest.approx(1.0, abs=0.06), (name, aspect)
    assert checked >= 16 * (len(barcode_corpus) - len(REFUSED))


def test_stderr_names_each_refused_file_once(barcode_corpus, classified):
    r, _ = classified
    lines = [ln for ln in r.stderr.splitlines() if ": " in ln and "warning" not in ln and "classified" not in ln]
    for name in REFUSED:
        hits = [ln for ln in lines if ln.startswith(str(barcode_corpus[name].path) + ": ")]
        assert len(hits) == 1, (name, r.stderr)
    assert "Traceback" not in r.stderr


def test_authors_sampling_reads_the_authors_frames(barcode_corpus, tmp_path):
    """`--sampling authors`: clip i starts at int(i * N / clips) (frames 0, 32, ... for a 1x1 view)."""
    from tokshift_cli.video.sampling import clip_indices

    names = ["ts_x264_default", "mp4_edit_trim", "hls_segment", "mp4_rot90"]
    files = [str(barcode_corpus[n].path) for n in names]
    r = tokshift("classify", *files, *MODEL, "--views", "3x1", "--sampling", "authors", "--json", "--save-views",
                 str(tmp_path))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["sampling"] == "authors"
    for name, res in zip(names, doc["results"]):
        info = barcode_corpus[name]
        assert res["frame_indices"] == clip_indices(len(info.numbers), 8, 32, 3, "authors").tolist()
        for c, clip in enumerate(res["frame_indices"]):
            for j, k in enumerate(clip):
                assert corpus.read_number(read_png(view_png(tmp_path, res["video"], c, 0, j, k))) == info.numbers[k]


def test_centred_sampling_looks_at_the_middle_of_a_long_video(barcode_corpus, tmp_path):
    info = barcode_corpus["ts_x264_default"]  # 300 frames
    r = tokshift("classify", str(info.path), *MODEL, "--json")
    res = json.loads(r.stdout)["results"][0]
    assert json.loads(r.stdout)["sampling"] == "centred"
    assert res["frame_indices"] == [[22, 54, 86, 118, 150, 182, 214, 246]]  # MMAction2: int((300-256+1)/2)


def test_extract_features_sees_the_same_frames(barcode_corpus, classified, tmp_path):
    """extract-features decodes through the same path: its sidecar names the same frames, and its per-frame
    features are the model's features of the very pixels classify saved (read back from the PNG files)."""
    import torch

    from tokshift_cli.models.weights import load_model

    r_cls, views = classified
    cls = {res["video"]: res for res in json.loads(r_cls.stdout)["results"]}
    names = ["ts_gop30", "mp4_edit_trim", "mp4_cover_first_plain", "mp4_two_streams_smaller_first", "mp4_rot270",
             "mpeg_dvd_sar_64_45", "asf_wmv2", "avi_h264_bframes", "mp4_cut_98", "gif_anim"]
    files = [str(barcode_corpus[n].path) for n in names]
    out = tmp_path / "feats.npy"
    r = tokshift("extract-features", *files, "--out", str(out), *MODEL, "--views", "2x1", "--per", "frame")
    assert r.returncode == 0, r.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["sampling"] == "centred"
    feats = np.load(out)
    model = load_model(BUNDLED_UNTRAINED)
    rows = {}
    for row in side["rows"]:
        rows.setdefault(row["video"], []).append(row)
    for path in files:
        res = cls[path]
        got = rows[path]
        flat = [k for clip in res["frame_indices"] for k in clip]
        assert [g["frame_indices"][0] for g in got] == flat
        pixels = np.stack([read_png(view_png(views, path, c, 0, j, k)) for c, clip in enumerate(res["frame_indices"])
                           for j, k in enumerate(clip)])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
        with torch.inference_mode():
            ref = model.forward_frame_features(x.reshape(-1, 8, 3, 224, 224)).reshape(-1, feats.shape[1])
        mine = feats[[g["row"] for g in got]]
        assert np.abs(mine - ref.numpy()).max() < 1e-4, path


def test_skipping_non_reference_frames_never_changes_a_frame(barcode_corpus):
    """skip_frame=NONREF for the frames between wanted ones: the wanted frames are bit-identical to a full
    decode, on every file."""
    from tokshift_cli.video import open_video

    for name, info in barcode_corpus.items():
        if name in REFUSED:
            continue
        with open_video(info.path) as v:
            idx = np.unique(np.r_[np.arange(3, v.num_frames, 37), v.num_frames - 1])
            v.get_frames(idx)  # an AVI with B-frames turns to identifying frames by decode rank here
            v._reset_decoder()
            skipped = np.stack(v._decode_indices(idx, skip=True))
            v._reset_decoder()
            full = np.stack(v._decode_indices(idx, skip=False))
            assert np.array_equal(skipped, full), name
            assert [corpus.read_number(corpus.to_display(f, info.sar, info.ffmpeg_rotation)) for f in full] \
                == [info.numbers[k] for k in idx], name


def test_decord_is_used_only_where_it_is_right(barcode_corpus):
    """--decoder decord: every file either reads exactly the frames asked for or is refused with one line."""
    from tokshift_cli.errors import VideoError
    from tokshift_cli.video import open_video

    accepted, refused = [], []
    for name, info in barcode_corpus.items():
        try:
            with open_video(info.path, decoder="decord") as v:
                idx = np.unique(np.r_[np.arange(0, v.num_frames, 9), v.num_frames - 1])
                frames = v.get_frames(idx)
        except VideoError as e:
            assert "\n" not in e.reason
            refused.append(name)
            continue
        got = [corpus.read_number(corpus.to_display(f, info.sar, info.ffmpeg_rotation)) for f in frames]
        assert got == [info.numbers[k] for k in idx], name
        accepted.append(name)
    assert "mp4_h264" in accepted and "webm_vp9" in accepted
    assert {"ts_x264_default", "ts_gop30", "hls_segment", "mpeg_ps_mpeg2", "mp4_edit_trim", "mp4_rot90",
            "mp4_cover_first_plain", "mp4_two_streams_smaller_first", "mp4_mpeg4"} <= set(refused)


def test_stream_option_reads_the_stream_asked_for(barcode_corpus, tmp_path):
    info = barcode_corpus["mp4_two_streams_smaller_first"]
    r = tokshift("classify", str(info.path), *MODEL, "--stream", "0", "--json", "--save-views", str(tmp_path))
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["video_info"]["stream"] == 0
    k = res["frame_indices"][0][2]
    assert corpus.read_number(read_png(view_png(tmp_path, res["video"], 0, 0, 2, k))) == 50000 + k
    r = tokshift("classify", str(info.path), *MODEL, "--stream", "5", "--json")  # per file: others may have it
    assert r.returncode == 1 and f"{info.path}: --stream 5: the file has 2 video streams (0..1)" in r.stderr


def test_each_input_as_given_gets_its_own_result(barcode_corpus, tmp_path):
    info = barcode_corpus["mp4_h264"]
    link = tmp_path / "link.mp4"
    link.symlink_to(info.path)
    r = tokshift("classify", str(info.path), str(info.path), str(link), *MODEL, "--json")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert [res["video"] for res in results] == [str(info.path), str(info.path), str(link)]
    assert results[0]["top_k"] == results[1]["top_k"] == results[2]["top_k"]


# --- URLs -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_server(barcode_corpus, tmp_path_factory):
    """A plain HTTP server on 127.0.0.1 serving a copy of some corpus files and an HTML page."""
    root = tmp_path_factory.mktemp("www")
    for name in ("mp4_h264", "ts_gop30", "mp4_rot90"):
        shutil.copy(barcode_corpus[name].path, root / barcode_corpus[name].path.name)
    (root / "page.mp4").write_text("<!DOCTYPE html><html><body>login required</body></html>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))

    class Quiet(handler.func):  # type: ignore[name-defined]
        def log_message(self, *args):  # noqa: D401
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_urls_are_read_frame_accurately_with_one_line_errors(barcode_corpus, http_server, tmp_path):
    good = [f"{http_server}/{barcode_corpus[n].path.name}" for n in ("mp4_h264", "ts_gop30", "mp4_rot90")]
    missing = f"{http_server}/nothing_here.mp4"
    refused = f"http://127.0.0.1:{free_port()}/clip.mp4"
    html = f"{http_server}/page.mp4"
    r = tokshift("classify", *good, missing, refused, html, *MODEL, "--json", "--save-views", str(tmp_path),
                 "--timeout", "60")
    assert r.returncode == 1, r.stderr
    results = json.loads(r.stdout)["results"]
    for url, name, res in zip(good, ("mp4_h264", "ts_gop30", "mp4_rot90"), results):
        assert res["error"] is None and res["video"] == url, res
        info = barcode_corpus[name]
        for j, k in enumerate(res["frame_indices"][0]):
            assert corpus.read_number(read_png(view_png(tmp_path, url, 0, 0, j, k))) == info.numbers[k]
    errors = {res["video"]: res["error"] for res in results[3:]}
    assert errors[missing] == "not found (HTTP 404)"
    assert errors[refused].startswith("cannot connect")
    assert "not a video" in errors[html]
    for url in (missing, refused, html):
        assert sum(line.startswith(url + ": ") for line in r.stderr.splitlines()) == 1
