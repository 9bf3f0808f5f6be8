"""The success paths of commands that tests/test_readme.py only runs for exit 0: `convert`, the `models` table,
`extract-features --shard` + `merge`, and the train example; here their outputs are checked (in-process)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from videogen import make_video

from tokshift_cli.cli import app
from tokshift_cli.models.weights import load_model
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED, ZOO

DATA = Path(__file__).parent / "data"


def invoke(*args):
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("success") / "clips"
    folder.mkdir()
    for i in range(5):
        make_video(folder / f"c{i}.mp4", frames=20 + 6 * i, width=64, height=48, pattern="noise", seed=i)
    return folder


def test_convert_writes_the_authors_model(tmp_path):
    """docs/weights.md's example: the folder holds the checkpoint's shapes, the heads given, what was defaulted,
    and it computes the authors' own logits."""
    out = tmp_path / "small-v1"
    r = invoke("convert", DATA / "v1_small.pth", "--out", out, "--heads", "4")
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"], cfg["num_classes"], cfg["img_size"]) == (64, 2, 4, 7, 32)
    assert cfg["label_order"] == "unknown" and cfg["source"]["format"] == "tokshift-v1"
    assert sorted(cfg["source"]["defaulted"]) == ["fold_div", "frame_stride", "num_frames", "shift"]
    assert (out / "README.md").read_text().count("Citation") == 1
    fx = np.load(DATA / "v1_small_io.npz")
    model = load_model(str(out), device="cpu")
    with torch.no_grad():
        logits = model(torch.from_numpy(fx["input"]))
    np.testing.assert_allclose(logits.numpy(), fx["logits"], rtol=1e-4, atol=1e-4)


def test_models_table_lists_every_zoo_model_with_its_numbers():
    table = invoke("models")
    doc = invoke("models", "--json")
    assert table.exit_code == 0 and doc.exit_code == 0
    rows = {row["name"]: row for row in json.loads(doc.output)}
    assert set(ZOO) <= set(rows)  # the zoo, and the bundled untrained model
    lines = table.output.splitlines()
    for name, row in rows.items():
        line = next((ln for ln in lines if f" {name} " in f" {ln} "), None)
        assert line is not None, name
        if row["top1"] is not None:
            assert f"{row['top1']:.2f}" in line, (name, line)
        assert str(row["frames"]) in line


def test_shards_and_merge_equal_one_run_through_the_cli(clips, tmp_path):
    """README's `--shard 0/2`, `--shard 1/2`, `merge` example: the merged files are the single run's bytes."""
    one, two = tmp_path / "one" / "feats.npy", tmp_path / "two" / "feats.npy"
    opts = ["--model", BUNDLED_UNTRAINED, "--device", "cpu", "--workers", "0"]
    assert invoke("extract-features", clips, "--out", one, *opts).exit_code == 0
    for sh in ("0/2", "1/2"):
        r = invoke("extract-features", clips, "--out", two, *opts, "--shard", sh)
        assert r.exit_code == 0 and not two.exists(), r.output
    r = invoke("merge", two, "--shards", "2")
    assert r.exit_code == 0, r.output
    assert two.read_bytes() == one.read_bytes()
    a, b = (json.loads(p.with_suffix(".json").read_text()) for p in (one, two))
    assert a == b and a["shape"] == [5, 64]
    assert [row["video"] for row in a["rows"]] == [str(p) for p in sorted(clips.iterdir())]
    assert not [p for p in two.parent.iterdir() if ".part" in p.name]


def test_the_train_example_writes_a_model_classify_reads_with_its_classes(clips, tmp_path):
    """docs/train.md's example: a folder per class in, a model folder out whose labels are those classes."""
    data = tmp_path / "data"
    for cls, src in (("a", "c0.mp4"), ("b", "c1.mp4")):
        (data / cls).mkdir(parents=True)
        shutil.copy(clips / src, data / cls / src)
    out = tmp_path / "my-model"
    r = invoke("train", data, "--out", out, "--model", BUNDLED_UNTRAINED, "--img-size", "64", "--epochs", "1",
               "--batch-size", "2", "--accum-steps", "1", "--device", "cpu", "--dtype", "float32", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output[r.output.index("{"):])
    assert doc["classes"] == ["a", "b"] and doc["epochs"] == 1 and doc["steps"] == 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["id2label"] == {"0": "a", "1": "b"} and cfg["num_classes"] == 2 and cfg["img_size"] == 64
    assert cfg["source"]["training"]["complete"] is True
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "metrics.jsonl", "model.safetensors",
                                                      "training_curve.png"]
    r = invoke("classify", clips / "c0.mp4", "--model", out, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    (res,) = json.loads(r.output[r.output.index("{"):])["results"]
    assert {e["label"] for e in res["top_k"]} == {"a", "b"}
    assert abs(sum(e["probability"] for e in res["top_k"]) - 1) < 1e-5
