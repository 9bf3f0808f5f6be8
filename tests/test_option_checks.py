"""Every option value is checked with the option's name in the message and exit 2 (never exit 70), and summaries
say what happened (no rate over zero items, top-k capped at the number of classes). In-process (CliRunner)."""

from __future__ import annotations

import json

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
