"""`tokshift explain` on a model trained here whose evidence sits in a known place and known frames: the class is
the colour (red or blue) of a small square drawn only in frames 2 and 5, inside the top-left quadrant, over a
grey texture that jumps at random in every frame. The maps must put the quadrant first with clearly more than its
0.25 area share, the occlusion importance must name frames 2 and 5, and deleting patches in relevance order must
hurt more than random orders. Also: the same maps at batch 1 and batch N, a plain ViT and TokShift both explain,
and the CLI end to end (PNG, H.264 video, JSON, .npy, resume, refusals)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")
from typer.testing import CliRunner  # noqa: E402
from videogen import write_rgb_video  # noqa: E402

from tokshift_cli.cli import app  # noqa: E402
from tokshift_cli.engine import ViewSpec, decode_videos  # noqa: E402
from tokshift_cli.explain.faithfulness import deletion_insertion, frame_importance, probabilities  # noqa: E402
from tokshift_cli.explain.relevance import relevance  # noqa: E402
from tokshift_cli.models.config import TokShiftConfig  # noqa: E402
from tokshift_cli.models.tokshift import create_model  # noqa: E402
from tokshift_cli.models.weights import load_model  # noqa: E402
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED  # noqa: E402

EVIDENCE_FRAMES = (2, 5)


def square_video(path: Path, cls: int, seed: int, frames: int = 8, size: int = 64) -> Path:
    """Grey 8x8-block texture, shifted at random every frame; in frames 2 and 5 a 12x12 square (red for class 0,
    blue for 1) somewhere in the top-left 32x32 quadrant, at the left then the right of it or the reverse."""
    rng = np.random.default_rng(seed)
    tex = np.kron(rng.uniform(0.25, 0.75, (size // 4, size // 4)), np.ones((8, 8)))
    colour = np.array([[1.0, 0.15, 0.15], [0.2, 0.3, 1.0]])[cls]
    xs = [2, 18] if rng.integers(2) else [18, 2]
    y0 = int(rng.integers(2, 32 - 12 - 2))

    def frame(f: int) -> np.ndarray:
        oy, ox = rng.integers(0, size, 2)
        img = np.repeat(tex[oy:oy + size, ox:ox + size, None], 3, axis=2).copy()
        if f in EVIDENCE_FRAMES:
            x0 = xs[EVIDENCE_FRAMES.index(f)]
            img[y0:y0 + 12, x0:x0 + 12] = colour
        return (img * 255).round().astype(np.uint8)

    return write_rgb_video(path, (frame(f) for f in range(frames)), size=size)


def make_set(root: Path, per_class: int, seed: int) -> Path:
    for cls, name in enumerate(("red", "blue")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            square_video(root / name / f"{name}_{i:02d}.mp4", cls, seed + 1000 * cls + i)
    return root


def tokshift(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tokshift_cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="session")
def squares(tmp_path_factory):
    """A 2-block TokShift (width 64, 64 px, 8 frames) trained with `tokshift train` on the squares task, and
    held-out videos: {"model": folder, "val": folder}."""
    root = tmp_path_factory.mktemp("squares")
    train = make_set(root / "train", 20, seed=0)
    val = make_set(root / "val", 6, seed=500)
    out = root / "model"
    r = tokshift("train", str(train), "--out", str(out), "--model", BUNDLED_UNTRAINED, "--img-size", "64",
                 "--frames", "8", "--stride", "1", "--device", "cpu", "--dtype", "float32", "--no-flip",
                 "--no-jitter", "--short-side", "64,64", "--epochs", "8", "--batch-size", "8", "--accum-steps", "1",
                 "--optimizer", "adamw", "--lr", "2e-3", "--schedule", "cosine", "--workers", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"model": out, "val": val}


@pytest.fixture(scope="session")
def val_views(squares):
    net = load_model(str(squares["model"]))
    paths = sorted(str(p) for p in squares["val"].rglob("*.mp4"))
    vids = list(decode_videos(paths, ViewSpec.for_model(net.config, "1x1"), workers=0))
    x = torch.cat([v.views for v in vids])
    labels = torch.tensor([net.config.labels.index(Path(p).parent.name) for p in paths])
    return net, x, labels


def quadrant_shares(maps: torch.Tensor) -> torch.Tensor:
    """Relevance mass of the four quadrants of 4x4-patch maps ``[B, T, 4, 4]``, summed over frames: ``[B, 4]``
    (top-left first), each row summing to 1."""
    q = maps.reshape(maps.shape[0], -1, 2, 2, 2, 2).sum((1, 3, 5)).reshape(-1, 4)
    return q / q.sum(1, keepdim=True)


def test_the_maps_find_the_evidence_quadrant_and_frames_and_beat_random_orders(val_views):
    net, x, labels = val_views
    with torch.inference_mode():
        assert (net(x).argmax(-1) == labels).float().mean() >= 0.9  # the model learnt the task
    report = {}
    for name, kw in (("chefer", {}), ("chefer, per frame", {"follow_shift": False}),
                     ("rollout", {"method": "rollout"}), ("grad x input", {"method": "gradxinput"})):
        maps = relevance(net, x, labels, **kw).maps
        q = quadrant_shares(maps)
        fm = maps.sum((2, 3))
        report[name] = (q[:, 0].mean().item(), int((q.argmax(1) == 0).sum()),
                        (fm[:, list(EVIDENCE_FRAMES)].sum(1) / fm.sum(1)).mean().item(), maps)
        print(f"[explain] {name:18s}: top-left quadrant {report[name][0]:.3f} of the mass (area 0.25), ranked "
              f"first on {report[name][1]}/{len(x)} videos; frames 2 and 5 hold {report[name][2]:.3f} (2/8 = 0.25)")
    share, first, frames_share, maps = report["chefer"]
    assert share >= 0.33 and first >= 0.75 * len(x)
    assert frames_share > 0.3
    assert frames_share > report["chefer, per frame"][2]  # following the shift moves relevance to the evidence
    dr, ir = [], []
    importance = []
    for i in range(len(x)):
        c = deletion_insertion(net, x[i], maps[i], int(labels[i]), steps=8, random_orders=3).to_dict()
        dr.append(c["deletion_ratio"])
        ir.append(c["insertion_ratio"])
        base = float(probabilities(net, x[i:i + 1], int(labels[i]))[0])
        importance.append(frame_importance(net, x[i], int(labels[i]), base))
    imp = np.array(importance)
    print(f"[explain] chefer: deletion area {np.mean(dr):.3f} x random's, insertion {np.mean(ir):.3f} x; "
          f"occlusion drop per frame {np.round(imp.mean(0), 3).tolist()}")
    assert np.mean(dr) < 0.9 and np.mean(ir) > 1.0
    assert sum(d < 1 for d in dr) >= 0.75 * len(x)
    assert set(np.argsort(-imp.mean(0))[:2].tolist()) == set(EVIDENCE_FRAMES)
    assert sum(int(np.argmax(r)) in EVIDENCE_FRAMES for r in imp) >= 0.9 * len(x)


@pytest.mark.parametrize("method", ["chefer", "rollout"])
def test_same_maps_at_batch_1_and_batch_n_and_the_prediction_is_the_fast_paths(val_views, method):
    net, x, labels = val_views
    xs, ts = x[:4], labels[:4]
    together = relevance(net, xs, ts, method=method)
    alone = torch.cat([relevance(net, xs[i:i + 1], ts[i:i + 1], method=method).maps for i in range(4)])
    torch.testing.assert_close(together.maps, alone, rtol=1e-4, atol=1e-7)
    with torch.inference_mode():
        torch.testing.assert_close(together.logits, net(xs), rtol=1e-4, atol=1e-5)
    assert all(blk.attn.fused_attn for blk in net.blocks)  # the non-fused path was for that forward only


def test_a_plain_vit_and_tokshift_both_explain():
    for shift in (False, True):
        cfg = TokShiftConfig(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_frames=4,
                             num_classes=3, shift=shift)
        torch.manual_seed(0)
        net = create_model(cfg)
        x = torch.randn(2, 4, 3, 32, 32)
        for method in ("chefer", "rollout", "gradxinput"):
            maps = relevance(net, x, 1, method=method).maps
            assert maps.shape == (2, 4, 2, 2) and torch.isfinite(maps).all() and (maps >= 0).all()
        c = deletion_insertion(net, x[0], maps[0], 1, steps=4, random_orders=2).to_dict()
        assert len(c["deletion"]) == 5 and c["deletion_ratio"] is not None


def test_cli_end_to_end_writes_sheet_video_json_arrays_and_resumes(squares, tmp_path):
    val = squares["val"]
    good = [val / "red" / "red_00.mp4", val / "blue" / "blue_01.mp4"]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    out = tmp_path / "ex"
    args = ["explain", *map(str, good), str(bad), "--model", str(squares["model"]), "--device", "cpu",
            "--out", str(out), "--save-arrays", "--workers", "1"]
    r = tokshift(*args, "--json")
    assert r.returncode == 1, r.stderr[-3000:]  # one bad video: reported, the others explained
    doc = json.loads(r.stdout)
    assert doc == json.loads((out / "explain.json").read_text())
    ok = [res for res in doc["results"] if res["error"] is None]
    assert len(ok) == 2 and doc["results"][2]["error"]
    assert "neighbouring" in doc["occlusion"] and doc["dtype"] == "float32" and not doc["untrained"]
    for res, stem in zip(ok, ("red_00", "blue_01")):
        assert res["target"]["label"] == stem.split("_")[0]
        f = res["faithfulness"]
        assert {"deletion_area", "random_deletion_area", "deletion_ratio", "insertion_area", "insertion_ratio",
                "beats_random", "verdict"} <= set(f)
        assert len(res["views"][0]["frame_importance"]) == 8
        arr = np.load(out / f"{stem}.npy")
        assert arr.shape == (1, 8, 4, 4) and arr.dtype == np.float32
        with open(out / f"{stem}.png", "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
        with av.open(str(out / f"{stem}.mp4")) as c:
            assert c.streams.video[0].codec_context.name == "h264"
            assert sum(1 for _ in c.decode(video=0)) == 8
    assert not list(out.glob("*.journal"))
    again = tokshift(*args, "--resume", "--json")  # complete, same settings: the same document, no work
    assert again.returncode == 1 and json.loads(again.stdout) == doc
    other = tokshift(*args, "--resume", "--steps", "4")
    assert other.returncode == 2 and "options.steps" in other.stderr


def test_refusals_are_one_line_with_exit_2(squares, tmp_path):
    runner = CliRunner()
    video = str(squares["val"] / "red" / "red_00.mp4")
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "config.json").write_text(json.dumps({"export": {"runtime": "onnxruntime",
                                                                 "source_model": "tokshift-b16-8x224"}}))
    (exported / "model.onnx").write_bytes(b"")
    cases = [
        (["--model", str(exported)], "explain needs the torch model"),
        (["--model", str(squares["model"]), "--target", "green"], "--target"),
        (["--model", str(squares["model"]), "--method", "lrp"], "--method"),
    ]
    for extra, needle in cases:
        r = runner.invoke(app, ["explain", video, "--out", str(tmp_path / "o"), "--device", "cpu", *extra])
        assert r.exit_code == 2, r.output
        assert needle in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["explain", video, "--device", "cpu"])
    assert r.exit_code == 2 and "--out" in r.output


def test_an_interrupted_run_resumes_after_its_last_journalled_video_with_the_same_results(squares, tmp_path):
    from tokshift_cli.explain.job import ExplainOptions, explain_videos

    net = load_model(str(squares["model"]))
    paths = [str(squares["val"] / "red" / "red_01.mp4"), str(squares["val"] / "blue" / "blue_02.mp4")]
    opts = dict(steps=2, random_orders=1, workers=0)

    def strip(results):
        return [{k: v for k, v in r.items() if k != "timings"} for r in results]

    whole = explain_videos(net, paths, tmp_path / "whole", ExplainOptions(**opts)).doc

    def stop_after_first(r):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explain_videos(net, paths, tmp_path / "cut", ExplainOptions(**opts), on_result=stop_after_first)
    assert (tmp_path / "cut" / "explain.json.part.journal").exists()
    with pytest.raises(Exception, match="--resume|--overwrite"):  # a fresh run never clobbers the journal
        explain_videos(net, paths, tmp_path / "cut", ExplainOptions(**opts))
    run = explain_videos(net, paths, tmp_path / "cut", ExplainOptions(**opts), resume=True)
    assert run.resumed == 1 and strip(run.doc["results"]) == strip(whole["results"])
    assert not (tmp_path / "cut" / "explain.json.part.journal").exists()


def test_resume_of_a_finished_run_compares_its_fingerprint_before_saying_complete(squares, tmp_path):
    """The resume contract (docs/reliability.md#resume): a finished explain.json with other settings is refused
    (exit 2, naming each differing field with both values, and how to start afresh); the same settings: complete."""
    runner = CliRunner()
    video = tmp_path / "red_00.mp4"
    video.write_bytes((squares["val"] / "red" / "red_00.mp4").read_bytes())
    other_video = str(squares["val"] / "blue" / "blue_00.mp4")
    out = tmp_path / "ex"
    base = ["explain", str(video), "--model", str(squares["model"]), "--device", "cpu", "--out", str(out),
            "--workers", "0", "--steps", "2", "--random-orders", "1"]
    r = runner.invoke(app, base)
    assert r.exit_code == 0, r.output
    before = (out / "explain.json").read_bytes()
    assert "fingerprint" in json.loads(before)
    r = runner.invoke(app, [*base, "--resume"])
    assert r.exit_code == 0 and "complete already" in r.output, r.output
    changes = [
        (["--method", "rollout"], 'options.method ("chefer" then, "rollout" now)'),
        (["--target", "blue"], 'options.target ("top1" then, "blue" now)'),
        (["--steps", "3"], "options.steps (2 then, 3 now)"),
        (["--views", "2x1"], 'options.views ("1x1" then, "2x1" now)'),
        (["--batch-size", "1"], "options.batch_size (2 then, 1 now)"),
        (["--model", BUNDLED_UNTRAINED], "config."),  # config keys sort first; weights_sha256 differs too
        ([other_video], "inputs.count (1 then, 2 now)"),
    ]
    for extra, needle in changes:
        r = runner.invoke(app, [*base, *extra, "--resume"])
        assert r.exit_code == 2, (extra, r.output)
        assert needle in r.output and "cannot resume" in r.output and "--overwrite" in r.output, (extra, r.output)
        assert "complete already" not in r.output and "Traceback" not in r.output
    with open(video, "ab") as f:  # the same name, another file: its size is part of the fingerprint
        f.write(b"\0" * 16)
    r = runner.invoke(app, [*base, "--resume"])
    assert r.exit_code == 2 and "inputs.identity" in r.output, r.output
    assert (out / "explain.json").read_bytes() == before  # every refusal left the finished run as it was


def test_an_http_url_is_explained_overlay_video_included(squares, tmp_path):
    """Paths may be http(s):// URLs (the shared PathsArg): a plain server (no range requests) serves the video to
    the decoder and again to the overlay video."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    (root / "red_00.mp4").write_bytes((squares["val"] / "red" / "red_00.mp4").read_bytes())

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/red_00.mp4"
        out = tmp_path / "ex"
        r = CliRunner().invoke(app, ["explain", url, "--model", str(squares["model"]), "--device", "cpu", "--out",
                                     str(out), "--workers", "0", "--steps", "2", "--random-orders", "1", "--json"])
    finally:
        server.shutdown()
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "explain.json").read_text())
    assert doc["results"][0]["error"] is None and doc["results"][0]["video"] == url
    with av.open(str(out / "red_00.mp4")) as c:
        assert sum(1 for _ in c.decode(video=0)) == 8
