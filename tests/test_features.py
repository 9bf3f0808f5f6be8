"""Feature extraction: parity with the authors' features, per video/clip/frame rows, the sidecar, broken inputs,
kill -9 then --resume, torchrun and --shard + merge, all byte-identical to one uninterrupted process."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from procs import kill9_when, start  # noqa: E402
from videogen import make_empty, make_text, make_video, sample_video, truncate_file  # noqa: E402

from tokshift_cli import engine  # noqa: E402
from tokshift_cli.models.convert import convert_checkpoint  # noqa: E402
from tokshift_cli.engine import PreparedVideo, ordered_prefetch, run_views  # noqa: E402
from tokshift_cli.errors import OutputExistsError, TokShiftError, UsageError  # noqa: E402
from tokshift_cli.features import (FeatureOptions, Layout, Shard, extract_features, merge_shards,  # noqa: E402
                                   rows_from_frame_features)
from tokshift_cli.jobs import scan_journal  # noqa: E402
from tokshift_cli.video.inputs import expand_inputs  # noqa: E402
from tokshift_cli.video.sampling import Views, clip_indices  # noqa: E402
from tokshift_cli.models.weights import load_model  # noqa: E402
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED  # noqa: E402

DATA = Path(__file__).parent / "data"
#: Options shared by the reference run and every run compared with it byte for byte.
OPTS = ["--model", BUNDLED_UNTRAINED, "--device", "cpu", "--batch-size", "2", "--workers", "1", "--sampling", "authors"]


def tokshift(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "COLUMNS": "160", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tokshift_cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def _opts(**kw) -> FeatureOptions:
    """Options of these tests: the authors' clip placement (what the relations below are written for)."""
    return FeatureOptions(**{"batch_size": 2, "workers": 1, "sampling": "authors", **kw})


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_model(BUNDLED_UNTRAINED, device="cpu")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The authors' v1 small checkpoint, converted to a folder and loaded like any model reference."""
    folder = tmp_path_factory.mktemp("v1small") / "model"
    convert_checkpoint(DATA / "v1_small.pth", folder, heads=4)
    return load_model(str(folder), device="cpu")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny):
    """30 short, different videos and a text file named .mp4, plus the reference: one uninterrupted run."""
    root = tmp_path_factory.mktemp("dataset")
    vids = root / "videos"
    vids.mkdir()
    for i in range(30):
        make_video(vids / f"v{i:02d}.mp4", frames=20 + 3 * i, width=64, height=48, pattern="noise", seed=i)
    make_text(vids / "v07b.mp4")  # fails, between good ones
    paths = [it.path for it in expand_inputs([str(vids)])]
    ref = root / "ref" / "feats.npy"
    res = extract_features(tiny, paths, ref, options=_opts())
    assert res.merged and res.total_failed == 1 and res.rows == 30
    return {"dir": vids, "paths": paths, "npy": ref.read_bytes(), "json": ref.with_suffix(".json").read_bytes()}


def _same_as_reference(dataset, out: Path) -> None:
    assert out.read_bytes() == dataset["npy"], "features differ from the uninterrupted single-process run"
    assert out.with_suffix(".json").read_bytes() == dataset["json"], "sidecar differs from the reference run"
    leftovers = [p.name for p in out.parent.iterdir() if ".part" in p.name]
    assert not leftovers, leftovers


def _prepared(index: int, views: torch.Tensor, inverse, crops: int = 1) -> PreparedVideo:
    u = views.shape[0] // crops
    return PreparedVideo(index=index, path=f"v{index}", views=views, inverse=np.asarray(inverse),
                         weights=torch.ones(views.shape[0]), clip_of_view=np.repeat(np.arange(u), crops))


# --- the feature definition ------------------------------------------------------------------------------------


def test_rows_equal_the_authors_features_on_the_fixture(small):
    """The engine path (padded batches, per-frame features, row reduction) against the authors' `features`:
    final-norm [CLS] averaged over T, computed by their own code on the same input."""
    fx = np.load(DATA / "v1_small_io.npz")
    x = torch.from_numpy(fx["input"])  # [2, 8, 3, 32, 32]: two clips of one "video"
    (out,) = run_views(small, [_prepared(0, x, [0, 1])], batch_size=3, want_features=True, want_logits=False,
                       pad_batches=True)
    per_clip = rows_from_frame_features(out.features, crops=1, inverse=[0, 1], per="clip")
    per_video = rows_from_frame_features(out.features, crops=1, inverse=[0, 1], per="video")
    per_frame = rows_from_frame_features(out.features, crops=1, inverse=[0, 1], per="frame")
    assert per_clip.shape == (2, 64) and per_video.shape == (1, 64) and per_frame.shape == (16, 64)
    assert np.abs(per_clip - fx["features"]).max() < 1e-4
    assert np.abs(per_video[0] - fx["features"].mean(0)).max() < 1e-4
    assert np.abs(per_frame.reshape(2, 8, 64).mean(1) - fx["features"]).max() < 1e-4
    with torch.inference_mode():
        assert np.abs(per_clip - small.forward_features(x).numpy()).max() < 1e-6
    # the two clips as two crops of one clip: the row is their average; a duplicated clip repeats its row
    crops = rows_from_frame_features(out.features, crops=2, inverse=[0, 0], per="clip")
    assert crops.shape == (2, 64) and np.array_equal(crops[0], crops[1])
    assert np.abs(crops[0] - fx["features"].mean(0)).max() < 1e-4


def test_padded_batches_make_rows_independent_of_batching(small):
    """Same bytes for a video whatever shared its batch or where the run started (resume, shard): every model
    call has exactly batch_size views."""
    g = torch.Generator().manual_seed(0)
    counts = [3, 1, 2, 4, 1, 2]
    vids = [torch.randn(n, 8, 3, 32, 32, generator=g) for n in counts]
    shapes = []
    orig = small.forward_frame_features

    def spy(x):
        shapes.append(x.shape[0])
        return orig(x)

    def run(idx, bs):
        small.forward_frame_features = spy
        try:
            outs = run_views(small, [_prepared(i, vids[i], range(counts[i])) for i in idx], batch_size=bs,
                             want_features=True, want_logits=False, pad_batches=True)
            return {o.video.index: o.features.numpy().tobytes() for o in outs}
        finally:
            del small.forward_frame_features

    full = run(range(6), 4)
    resumed = run(range(2, 6), 4)
    strided = run([1, 3, 5], 4)
    assert set(shapes) == {4}
    assert all(resumed[i] == full[i] for i in resumed)
    assert all(strided[i] == full[i] for i in strided)


def test_per_video_clip_frame_on_real_videos(tiny, tmp_path):
    """Rows per video/clip/frame: shapes, how they relate, duplicate clips, the sidecar; and a clip row equals
    forward_features of that clip's preprocessed views averaged over the crops."""
    from tokshift_cli.video.transforms import preprocess
    from tokshift_cli.video import open_video

    long = make_video(tmp_path / "long.mp4", frames=300, width=80, height=48, pattern="noise", seed=3)
    bikes = sample_video("bikes.mp4")
    paths = [str(long), str(bikes)]
    rows, sides = {}, {}
    for per in ("video", "clip", "frame"):
        out = tmp_path / per / "f.npy"
        res = extract_features(tiny, paths, out, options=_opts(views=Views(3, 3), per=per, batch_size=4))
        assert res.merged and res.total_failed == 0
        rows[per] = np.load(out)
        sides[per] = json.loads(out.with_suffix(".json").read_text())
    assert rows["video"].shape == (2, 64) and rows["clip"].shape == (6, 64) and rows["frame"].shape == (48, 64)
    assert np.abs(rows["clip"].reshape(2, 3, 64).mean(1) - rows["video"]).max() < 1e-6
    assert np.abs(rows["frame"].reshape(6, 8, 64).mean(1) - rows["clip"]).max() < 1e-6
    # 300 frames, 3 clips of 8x32: starts 0, 45, 45 (the authors' clamp): clips 1 and 2 are the same clip;
    # bikes has 250 < 256 frames: all three clips start at 0 and wrap around
    assert np.array_equal(rows["clip"][1], rows["clip"][2]) and not np.array_equal(rows["clip"][0], rows["clip"][1])
    assert np.array_equal(rows["clip"][3], rows["clip"][5])

    s = sides["frame"]
    assert s["per"] == "frame" and s["views"] == "3x3" and s["shape"] == [48, 64] and s["failures"] == []
    assert s["model"]["ref"] == BUNDLED_UNTRAINED and s["model"]["untrained"] is True and s["config"]["embed_dim"] == 64
    assert len(s["model"]["weights_sha256"]) == 64 and s["inputs"]["count"] == 2 and s["dtype"] == "float32"
    idx = clip_indices(300, 8, 32, 3)
    r = s["rows"][9]  # long.mp4, clip 1, frame 1
    assert (r["row"], r["video"], r["video_index"], r["clip"], r["frame"]) == (9, str(long), 0, 1, 1)
    assert r["decoder"] == "pyav"  # which decoder read the video, per row
    assert r["frame_indices"] == [int(idx[1, 1])] and r["timestamps"][0] == pytest.approx(idx[1, 1] / 25, abs=1e-3)
    c = sides["clip"]["rows"][4]
    assert c["video"] == str(bikes) and c["clip"] == 1 and c["frame"] is None
    assert c["frame_indices"] == clip_indices(250, 8, 32, 3)[1].tolist() and len(c["timestamps"]) == 8
    v = sides["video"]["rows"][0]
    assert v["clip"] is None and v["frame_indices"] == idx.tolist()

    with open_video(long) as video:
        frames = video.get_frames(idx[0])
    x = preprocess(frames, 224, 3)  # [3 crops, 8, 3, 224, 224]
    with torch.inference_mode():
        expected = tiny.forward_features(x).mean(0).numpy()
    assert np.abs(rows["clip"][0] - expected).max() < 1e-5


# --- faults ----------------------------------------------------------------------------------------------------


def test_cli_folder_with_good_and_broken_videos(tmp_path):
    vids = tmp_path / "in"
    vids.mkdir()
    make_video(vids / "a.mp4", frames=30)
    make_video(vids / "d.mkv", codec="h264", frames=30, width=80, height=64)
    make_empty(vids / "b.mp4")
    make_text(vids / "c.mp4")
    truncate_file(make_video(tmp_path / "src.mp4", frames=60), vids / "e.mp4", fraction=0.2)
    out = tmp_path / "out" / "f.npy"
    r = tokshift("extract-features", str(vids), str(tmp_path / "missing.mp4"), "--out", str(out), *OPTS,
                 "--per", "clip", "--views", "2x1")
    assert r.returncode == 1, r.stderr
    side = json.loads(out.with_suffix(".json").read_text())
    failed = {Path(f["video"]).name: f["error"] for f in side["failures"]}
    assert set(failed) == {"b.mp4", "c.mp4", "e.mp4", "missing.mp4"}, side["failures"]
    assert "empty" in failed["b.mp4"] and "not a video" in failed["c.mp4"]
    for name in failed:
        assert name in r.stderr
    arr = np.load(out)
    assert arr.shape == (4, 64) and arr.dtype == np.float32 and side["shape"] == [4, 64]
    assert [Path(x["video"]).name for x in side["rows"]] == ["a.mp4", "a.mp4", "d.mkv", "d.mkv"]
    assert side["summary"] == {"videos": 6, "ok": 2, "failed": 4, "rows": 4}
    assert sorted(p.name for p in out.parent.iterdir()) == ["f.json", "f.npy"]

    again = tokshift("extract-features", str(vids / "a.mp4"), "--out", str(out), *OPTS)
    assert again.returncode == 4 and "--overwrite" in again.stderr
    assert np.array_equal(np.load(out), arr)  # untouched


def test_bad_compute_dtype_fails_before_touching_outputs(tiny, tmp_path):
    # float16 is CUDA-only: the CLI says so before loading a model, the library before it starts over (which
    # would remove an interrupted run's progress record)
    out = tmp_path / "f.npy"
    journal = Layout(out, None).journal_path(Shard())
    journal.write_bytes(b"an interrupted run's progress\n")
    r = tokshift("extract-features", str(sample_video()), "--out", str(out), "--overwrite", "--compute-dtype",
                 "float16", *OPTS)
    assert r.returncode == 2 and "float16 is for CUDA" in r.stderr and "model loaded" not in r.stderr
    with pytest.raises(TokShiftError, match="float16 is for CUDA"):
        extract_features(tiny, [str(sample_video())], out, options=_opts(compute_dtype="float16"), overwrite=True)
    assert journal.read_bytes() == b"an interrupted run's progress\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [journal.name]


def test_timeout_skips_a_hanging_decode(tiny, tmp_path, monkeypatch):
    """A decode that never returns costs one orphaned thread, not the run (here inside shard 0 of 2, so the
    timed-out video's place in the shard and in the input list differ)."""
    a, b, hang, c = (make_video(tmp_path / f"{n}.mp4", frames=20, pattern="noise", seed=k)
                     for k, n in enumerate(["a", "b", "hang", "c"]))
    import workerfns  # decode_clips, except that files named hang* never finish: a decoder stuck for good

    monkeypatch.setattr(engine, "DECODE_FN", workerfns.decode_or_hang)
    paths = [str(a), str(b), str(hang), str(c)]
    out = tmp_path / "f.npy"
    t0 = time.monotonic()
    extract_features(tiny, paths, out, options=_opts(timeout=1.5), shard="0/2")
    elapsed = time.monotonic() - t0
    extract_features(tiny, paths, out, options=_opts(timeout=1.5), shard="1/2")
    res = merge_shards(out, shards=2)
    side = json.loads((tmp_path / "f.json").read_text())
    assert res.total_failed == 1 and np.load(out).shape == (3, 64)
    (fail,) = side["failures"]
    assert (fail["video"], fail["video_index"]) == (str(hang), 2) and "timed out" in fail["error"]
    assert [r["video_index"] for r in side["rows"]] == [0, 1, 3]
    assert elapsed < 120  # a decode that is never given up on never returns; the timeout itself shows above


def test_ordered_prefetch_timeout_keeps_order_and_replaces_stuck_workers():
    stop = threading.Event()

    def fn(i, p):
        if p == "hang":
            stop.wait(30)
        return i

    out = list(ordered_prefetch(fn, ["a", "hang", "b", "hang", "c"], workers=1, prefetch=3, timeout=2.0,
                                on_timeout=lambda i, p, e: f"timeout {i}"))
    stop.set()
    # no clock: without the timeout the stuck calls would return their index after 30 s, not "timeout i"
    assert out == [0, "timeout 1", 2, "timeout 3", 4]


# --- crash and resume ------------------------------------------------------------------------------------------


def test_kill9_then_resume_is_byte_identical(dataset, tmp_path):
    out = tmp_path / "feats.npy"
    journal = Path(f"{out}.part.journal")
    args = ["extract-features", str(dataset["dir"]), "--out", str(out), *OPTS]
    kill9_when(start(args, env={"TOKSHIFT_COMMIT_INTERVAL": "0", "COLUMNS": "160"}),
               lambda: journal.exists() and journal.read_bytes().count(b"\n") - 1 >= 6)
    assert not out.exists() and not out.with_suffix(".json").exists()
    state = scan_journal(journal)
    assert 6 <= state.videos < 31, state.videos

    again = tokshift(*args)
    assert again.returncode == 4 and "--resume" in again.stderr  # progress is never silently discarded
    r = tokshift(*args, "--resume")
    assert r.returncode == 1, r.stderr  # one input (the text file) fails
    assert f"{state.videos} done before" in r.stderr
    _same_as_reference(dataset, out)


def test_interrupted_run_with_torn_files_resumes_identically(tiny, dataset, tmp_path):
    """Ctrl-C mid-run, then the worst a crash leaves: rows past the last commit and a half-written journal line.
    A resume with other options is refused; with the same options the result is byte-identical."""
    out = tmp_path / "feats.npy"
    seen = []

    def interrupt(info):
        seen.append(info)
        if len(seen) == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(tiny, dataset["paths"], out, options=_opts(), on_video=interrupt)
    rows, journal = Path(f"{out}.part.rows"), Path(f"{out}.part.journal")
    state = scan_journal(journal)
    assert state.videos == 9 and not out.exists()
    with open(rows, "ab") as f:
        f.write(b"\x01" * 1000)
    with open(journal, "ab") as f:
        f.write(b'{"i": 9, "video": "x", "rows": 1, "en')

    with pytest.raises(UsageError, match="per"):
        extract_features(tiny, dataset["paths"], out, options=_opts(per="clip"), resume=True)
    with pytest.raises(UsageError, match="inputs"):
        extract_features(tiny, dataset["paths"][:-1], out, options=_opts(), resume=True)
    with pytest.raises(OutputExistsError):
        extract_features(tiny, dataset["paths"], out, options=_opts())
    res = extract_features(tiny, dataset["paths"], out, options=_opts(), resume=True)
    assert res.resumed == 9 and res.merged
    _same_as_reference(dataset, out)
    done = extract_features(tiny, dataset["paths"], out, options=_opts(), resume=True)
    assert done.skipped_complete and done.total_failed == 1


# --- scale out -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(dataset, tmp_path):
    out = tmp_path / "feats.npy"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "tokshift_cli", "extract-features", str(dataset["dir"]), "--out", str(out), *OPTS]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"})
    assert r.returncode != 0  # rank 0 exits 1: one input failed (torchrun reports it as a failed worker)
    assert "30 videos ok, 1 failed" in r.stderr, r.stderr[-3000:]
    assert r.stderr.count("videos ok") == 1  # only rank 0 prints the summary
    _same_as_reference(dataset, out)


def test_shards_then_merge_equal_one_process(tiny, dataset, tmp_path):
    out = tmp_path / "feats.npy"
    for i in (2, 0):
        res = extract_features(tiny, dataset["paths"], out, options=_opts(), shard=f"{i}/3")
        assert not res.merged and not out.exists()
    with pytest.raises(UsageError, match="1/3"):
        merge_shards(out, shards=3)
    extract_features(tiny, dataset["paths"], out, options=_opts(), shard="1/3")
    with pytest.raises(UsageError, match="missing"):
        merge_shards(out, shards=2)
    r = tokshift("merge", str(out), "--shards", "3")
    assert r.returncode == 1, r.stderr  # the merged output records one failed input
    _same_as_reference(dataset, out)
    assert Shard.parse("1/3").positions(7) == range(1, 7, 3)
    with pytest.raises(UsageError):
        Shard.parse("3/3")


def test_out_dir_one_file_per_video_float16(tiny, dataset, tmp_path):
    ref = np.load(io.BytesIO(dataset["npy"]))
    other = tmp_path / "other"
    other.mkdir()
    dup = make_video(other / "v00.mp4", frames=20, width=64, height=48, pattern="noise", seed=0)
    paths = dataset["paths"] + [str(dup)]
    out_dir = tmp_path / "feats"
    res = extract_features(tiny, paths, out_dir=out_dir, options=_opts(dtype="float16"))
    assert res.merged and res.total_failed == 1
    side = json.loads((out_dir / "features.json").read_text())
    assert side["dtype"] == "float16" and side["layout"] == "one .npy per video"
    files = [r["file"] for r in side["rows"]]
    assert len(set(files)) == 31 and files[1] == "v01.npy"
    assert files[0].startswith("v00-") and files[-1].startswith("v00-")  # same stem: both get a path hash
    a = np.load(out_dir / files[1])
    assert a.dtype == np.float16 and a.shape == (1, 64)
    assert np.array_equal(a[0], ref[1].astype(np.float16))
    assert np.array_equal(np.load(out_dir / files[-1]), np.load(out_dir / files[0]))  # same content, same row
    with pytest.raises(OutputExistsError):
        extract_features(tiny, paths, out_dir=out_dir, options=_opts(dtype="float16"))
    assert not list(out_dir.glob("*.journal"))
    with pytest.raises(UsageError):
        Layout(tmp_path / "x.json")


def test_usage_errors_exit_2(tmp_path):
    from typer.testing import CliRunner

    from tokshift_cli.cli import app

    video = str(make_video(tmp_path / "a.mp4", frames=10))
    runner = CliRunner()
    cases = [
        ([video], "exactly one of --out"),
        ([video, "--out", str(tmp_path / "f.npy"), "--out-dir", str(tmp_path / "d")], "exactly one of --out"),
        ([video, "--out", str(tmp_path / "f.json")], "must end in .npy"),
        ([video, "--out", str(tmp_path / "f.npy"), "--per", "scene"], "--per"),
        ([video, "--out", str(tmp_path / "f.npy"), "--shard", "2/2"], "--shard"),
        (["--out", str(tmp_path / "f.npy")], "no inputs"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["extract-features", *args, *OPTS])
        assert r.exit_code == 2 and message in r.output, (args, r.output)
    r = runner.invoke(app, ["merge", str(tmp_path / "f.npy"), "--shards", "2"])
    assert r.exit_code == 2 and "missing" in r.output
    assert not list(tmp_path.glob("f.*"))


def test_output_folder_that_cannot_be_created_is_exit_4(tmp_path):
    """A file where the output folder should be: the output error (exit 4, one line naming what is in the way),
    before the model is loaded; never the bare mkdir error "(File exists)" with the usage code."""
    from tokshift_cli.errors import OutputError
    from tokshift_cli.features import check_outputs

    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    for layout in (Layout(blocker / "f.npy"), Layout(out_dir=blocker), Layout(blocker / "sub" / "f.npy")):
        with pytest.raises(OutputError, match=r"cannot create the output folder \(.*results is a file, not a folder\)"):
            check_outputs(layout, Shard.parse(None), resume=False, overwrite=False)
    video = str(make_video(tmp_path / "a.mp4", frames=10))
    r = tokshift("extract-features", video, "--out", str(blocker / "f.npy"), "--model", "no-such-model-here")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 4 and len(lines) == 1, r.stderr
    assert lines[0] == f"error: {blocker}: cannot create the output folder ({blocker} is a file, not a folder)"
    assert "File exists" not in r.stderr
