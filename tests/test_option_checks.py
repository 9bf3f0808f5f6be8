"""Every option value is checked with the option's name in the message and exit 2 (never exit 70), and summaries
say what happened (no rate over zero items, top-k capped at the number of classes). In-process (CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner
from videogen import make_text, make_video

from tokshift_cli.cli import app
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    root = tmp_path_factory.mktemp("twoclasses")
    for cls, seed in (("a", 0), ("b", 10)):
        (root / "train" / cls).mkdir(parents=True)
        (root / "val" / ("c" if cls == "b" else cls)).mkdir(parents=True)
        for i in range(2):
            make_video(root / "train" / cls / f"{i}.mp4", frames=12, width=64, height=48, pattern="noise",
                       seed=seed + i)
        make_video(root / "val" / ("c" if cls == "b" else cls) / "0.mp4", frames=12, width=64, height=48,
                   pattern="noise", seed=seed + 5)
    return root


@pytest.mark.parametrize("device,reason", [("gpu", "expected auto, cpu, cuda, cuda:N or mps"),
                                           ("cpu:1", "expected auto, cpu, cuda, cuda:N or mps"),
                                           ("cuda:99", "--device cuda:99: ")])
def test_device_is_checked_in_every_command(two_classes, tmp_path, device, reason):
    video = two_classes / "train" / "a" / "0.mp4"
    model = ["--model", BUNDLED_UNTRAINED]
    commands = [["classify", video, *model], ["evaluate", two_classes / "val", *model],
                ["train", two_classes / "train", "--out", tmp_path / "t", *model], ["timeline", video, *model],
                ["extract-features", video, "--out", tmp_path / "f.npy", *model],
                ["bench", "--arch", "tokshift-tiny-untrained"]]
    for cmd in commands:
        r = invoke(*cmd, "--device", device)
        assert r.exit_code == 2, (cmd[0], r.output)
        assert f"--device {device}" in r.output and reason in r.output and "this machine has: auto, cpu" in \
            r.output.replace("\n", " ") and "internal error" not in r.output, (cmd[0], r.output)
    assert not list(tmp_path.iterdir())


def test_train_val_labels_blame_the_right_thing(two_classes, tmp_path):
    """An unknown validation class: the message says training classes, never a --label-map train does not have;
    a --labels file that lacks a training class: the message blames the file."""
    r = invoke("train", two_classes / "train", "--val", two_classes / "val", "--out", tmp_path / "m",
               "--model", BUNDLED_UNTRAINED, "--device", "cpu")
    assert r.exit_code == 2 and "--label-map" not in r.output, r.output
    assert "'c'" in r.output and "training classes" in r.output
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nz\n")
    r = invoke("train", two_classes / "train", "--labels", labels, "--out", tmp_path / "m", "--model",
               BUNDLED_UNTRAINED, "--device", "cpu")
    out = " ".join(r.output.split())
    assert r.exit_code == 2 and f"match no label of --labels {labels}" in out and "the model" not in out, out
    assert not (tmp_path / "m").exists()


# --- summaries say what happened ---------------------------------------------------------------------------------


def test_no_rate_over_zero_classified_videos(tmp_path):
    bad = make_text(tmp_path / "broken.mp4")
    r = invoke("classify", bad, "--model", BUNDLED_UNTRAINED, "--device", "cpu", "--out", tmp_path / "r.json")
    assert r.exit_code == 1 and "0 classified, 1 failed" in r.output and "videos/s" not in r.output, r.output
    assert json.loads((tmp_path / "r.json").read_text())["timings"]["videos_per_s"] is None


@pytest.fixture(scope="module")
def two_class_model(two_classes, tmp_path_factory):
    out = tmp_path_factory.mktemp("twoclassmodel") / "m"
    r = invoke("train", two_classes / "train", "--out", out, "--model", BUNDLED_UNTRAINED, "--img-size", "32",
               "--frames", "4", "--stride", "1", "--device", "cpu", "--dtype", "float32", "--workers", "0",
               "--batch-size", "2", "--accum-steps", "1", "--epochs", "1")
    assert r.exit_code == 0, r.output
    return out


def test_evaluate_top_k_is_capped_at_the_number_of_classes_with_a_note(two_classes, two_class_model, tmp_path):
    out = tmp_path / "r.json"
    r = invoke("evaluate", two_classes / "train", "--model", two_class_model, "--device", "cpu", "--out", out)
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["options"]["top_k"] == 2 and rep["options"]["top_k_asked"] == 5
    assert "top5" not in rep["metrics"] and "top2" in rep["metrics"]
    text = " ".join(r.output.replace("│", " ").split())
    assert "top-5 asked, top-2 reported: the model has 2 classes" in text, text
    assert text.count("top-5") == 1  # the note only: no top-5 row


def test_a_video_shorter_than_one_clip_says_its_frames_repeat(tmp_path):
    """8 frames x stride 32 from a 20-frame video: the JSON says so, and the table marks it."""
    short = make_video(tmp_path / "short.mp4", frames=20, width=64, height=48, pattern="noise")
    long = make_video(tmp_path / "long.mp4", frames=300, width=64, height=48, pattern="noise")
    r = invoke("classify", short, long, "--model", BUNDLED_UNTRAINED, "--device", "cpu", "--out", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    res = {Path(x["video"]).name: x for x in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert res["short.mp4"]["frames_repeat"] is True and res["long.mp4"]["frames_repeat"] is False
    assert "frames repeat" in r.output and "1 shorter than one clip" in r.output


def test_timeline_of_a_video_shorter_than_one_window_reaches_the_files_end(tmp_path):
    """A 2 s video at 25 fps (50 frames) and a window of 8 x 32 frames: the one window, its segment and the CSV
    end at the file's end (duration_s), not at the last frame the window happens to read."""
    video = make_video(tmp_path / "short.mp4", frames=50, width=64, height=48, fps=25, pattern="noise")
    r = invoke("timeline", video, "--model", BUNDLED_UNTRAINED, "--device", "cpu", "--out", tmp_path / "t.json",
               "--csv", tmp_path / "t.csv")
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "t.json").read_text().splitlines()[0])
    assert doc["duration_s"] == pytest.approx(2.0)
    assert doc["windows"][-1]["end_s"] == doc["duration_s"] and doc["segments"][-1]["end_s"] == doc["duration_s"]
    assert doc["segments"][0]["start_s"] == 0.0
    assert (tmp_path / "t.csv").read_text().splitlines()[-1].split(",")[3] == f"{doc['duration_s']:.3f}"
