"""The resume contract (docs/reliability.md), for every long job: ``--resume`` compares everything that decides
the output before it calls a job complete; the same settings say "complete" (or continue), other settings are
refused with exit 2 naming each field and both values and how to start afresh; an interrupted job resumes to the
bytes of a fresh run, or is cleaned up so that the plain command runs again.

Refusals run in-process (CliRunner); the kill -9 checks run the real CLI (tests/procs.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from procs import kill9_when, start
from typer.testing import CliRunner
from videogen import make_video

from tokshift_cli.cli import app
from tokshift_cli.models.weights import load_model
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED

MODEL = ["--model", BUNDLED_UNTRAINED, "--device", "cpu", "--workers", "0"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(r, *fields: str) -> None:
    """Exit 2, one message naming every field, and the way to start afresh."""
    assert r.exit_code == 2, r.output
    assert "cannot resume" in r.output and "--overwrite" in r.output, r.output
    assert "Traceback" not in r.output
    for f in fields:
        assert f in r.output, (f, r.output)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three short, different videos in a folder, and a spare one outside it."""
    root = tmp_path_factory.mktemp("clips")
    folder = root / "clips"
    folder.mkdir()
    for i in range(3):
        make_video(folder / f"c{i}.mp4", frames=24 + 4 * i, width=64, height=48, pattern="noise", seed=i)
    make_video(root / "extra.mp4", frames=30, width=64, height=48, pattern="noise", seed=9)
    return {"folder": folder, "extra": root / "extra.mp4"}


# --- extract-features ------------------------------------------------------------------------------------------

FEATURE_CHANGES = [
    (["--views", "2x1"], "views"),
    (["--per", "clip"], "per"),
    (["--sampling", "authors"], "sampling"),
    (["--save-dtype", "float16"], "dtype"),
    (["--batch-size", "3"], "batch_size"),
]


@pytest.fixture(scope="module")
def features_done(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("feats") / "f.npy"
    r = invoke("extract-features", clips["folder"], "--out", out, *MODEL, "--batch-size", "2")
    assert r.exit_code == 0, r.output
    return out, out.read_bytes(), out.with_suffix(".json").read_bytes()


def _features(clips, out, *extra):
    return invoke("extract-features", clips["folder"], "--out", out, *MODEL, "--batch-size", "2", *extra)


@pytest.mark.parametrize("change,field", FEATURE_CHANGES, ids=[f for _, f in FEATURE_CHANGES])
def test_features_resume_of_a_finished_run_with_another_option_is_refused(clips, features_done, change, field):
    out, npy, side = features_done
    refused(_features(clips, out, "--resume", *change), field)
    assert out.read_bytes() == npy and out.with_suffix(".json").read_bytes() == side  # untouched


def test_features_resume_with_other_inputs_or_a_replaced_video_is_refused(clips, features_done, tmp_path):
    out, npy, _ = features_done
    r = invoke("extract-features", clips["folder"], clips["extra"], "--out", out, *MODEL, "--batch-size", "2",
               "--resume")
    refused(r, "inputs.count (3 then, 4 now)")
    # the same names, one file's content replaced: the inputs' identity differs
    copy = tmp_path / "clips"
    shutil.copytree(clips["folder"], copy)
    out2 = tmp_path / "f.npy"
    assert invoke("extract-features", copy, "--out", out2, *MODEL, "--batch-size", "2").exit_code == 0
    shutil.copy(clips["extra"], copy / "c1.mp4")
    refused(invoke("extract-features", copy, "--out", out2, *MODEL, "--batch-size", "2", "--resume"),
            "inputs.identity")


def test_features_resume_with_the_same_settings_says_complete(clips, features_done):
    out, npy, side = features_done
    r = _features(clips, out, "--resume")
    assert r.exit_code == 0 and "complete already" in r.output, r.output
    assert out.read_bytes() == npy and out.with_suffix(".json").read_bytes() == side


def test_features_output_without_a_recorded_fingerprint_is_refused(clips, features_done, tmp_path):
    out = tmp_path / "old.npy"
    shutil.copy(features_done[0], out)
    side = json.loads(features_done[0].with_suffix(".json").read_text())
    side.pop("fingerprint")
    out.with_suffix(".json").write_text(json.dumps(side))
    r = _features(clips, out, "--resume")
    assert r.exit_code == 2 and "does not record the settings" in r.output and "--overwrite" in r.output


# --- evaluate --------------------------------------------------------------------------------------------------

EVAL_CHANGES = [
    (["--views", "2x1"], "options.views"),
    (["--aggregate", "logits"], "options.aggregate"),
    (["--top-k", "2"], "options.top_k"),
    (["--failed-as-wrong"], "options.failed_as_wrong"),
    (["--sampling", "authors"], "options.sampling"),
]


@pytest.fixture(scope="module")
def labelled(clips, tmp_path_factory):
    """Two classes named after the bundled model's first two labels (the untrained model: any answer)."""
    labels = load_model(BUNDLED_UNTRAINED, device="cpu").config.labels
    root = tmp_path_factory.mktemp("labelled")
    for k, v in enumerate(sorted(clips["folder"].iterdir())):
        (root / labels[k % 2]).mkdir(exist_ok=True)
        os.link(v, root / labels[k % 2] / v.name)
    out = tmp_path_factory.mktemp("report") / "r.json"
    r = invoke("evaluate", root, "--out", out, *MODEL)
    assert r.exit_code == 0, r.output
    return root, out, out.read_bytes()


@pytest.mark.parametrize("change,field", EVAL_CHANGES, ids=[f for _, f in EVAL_CHANGES])
def test_evaluate_resume_of_a_finished_run_with_another_option_is_refused(labelled, change, field):
    root, out, report = labelled
    refused(invoke("evaluate", root, "--out", out, *MODEL, "--resume", *change), field)
    assert out.read_bytes() == report


def test_evaluate_resume_with_another_data_set_is_refused_and_the_same_is_complete(labelled, clips):
    root, out, report = labelled
    labels = sorted(p.name for p in root.iterdir())
    listing = out.parent / "val.txt"
    listing.write_text("".join(f"{p} {labels[0]}\n" for p in sorted(root.glob("*/*.mp4"))))
    refused(invoke("evaluate", listing, "--out", out, *MODEL, "--resume"), "data.")
    r = invoke("evaluate", root, "--out", out, *MODEL, "--resume")
    assert r.exit_code == 0 and "complete already" in r.output, r.output
    assert out.read_bytes() == report


# --- timeline --------------------------------------------------------------------------------------------------

TIMELINE_CHANGES = [
    (["--hop", "4f"], "window.hop_frames"),
    (["--smooth", "3"], "view.smooth"),
    (["--top-k", "2"], "view.top_k"),
    (["--threshold", "0.5"], "view.threshold"),
    (["--min-segment", "2"], "view.min_segment_s"),
]


@pytest.fixture(scope="module")
def timeline_done(clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("timeline")
    video = clips["folder"] / "c2.mp4"
    args = [video, "--out", out / "t.json", "--csv", out / "t.csv", *MODEL, "--hop", "8f"]
    r = invoke("timeline", *args)
    assert r.exit_code == 0, r.output
    return args, {p.name: p.read_bytes() for p in out.iterdir()}, out


@pytest.mark.parametrize("change,field", TIMELINE_CHANGES, ids=[f for _, f in TIMELINE_CHANGES])
def test_timeline_resume_of_a_finished_run_with_another_option_is_refused(timeline_done, change, field):
    args, before, out = timeline_done
    refused(invoke("timeline", *args, "--resume", *change), field)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_timeline_resume_with_the_same_settings_says_complete(timeline_done):
    args, before, out = timeline_done
    r = invoke("timeline", *args, "--resume")
    assert r.exit_code == 0 and "complete already" in r.output, r.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# --- train -----------------------------------------------------------------------------------------------------

TRAIN = ["--model", BUNDLED_UNTRAINED, "--img-size", "32", "--frames", "4", "--stride", "1", "--device", "cpu",
         "--dtype", "float32", "--workers", "0", "--batch-size", "2", "--accum-steps", "1", "--optimizer", "adamw",
         "--lr", "1e-3", "--log-every", "1"]

TRAIN_CHANGES = [
    (["--lr", "0.5"], "recipe.lr"),
    (["--seed", "3"], "recipe.seed"),
    (["--schedule", "cosine"], "recipe.schedule"),
    (["--label-smoothing", "0"], "recipe.label_smoothing"),
    (["--frames", "2"], "config.num_frames"),
]


@pytest.fixture(scope="module")
def train_set(clips, tmp_path_factory):
    root = tmp_path_factory.mktemp("trainset")
    for k, v in enumerate(sorted(clips["folder"].iterdir())):
        for cls in ("a", "b"):
            (root / cls).mkdir(exist_ok=True)
            os.link(v, root / cls / f"{k}{v.name}")
    return root


@pytest.fixture(scope="module")
def trained(train_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "m"
    r = invoke("train", train_set, "--out", out, *TRAIN, "--epochs", "1", "--keep-checkpoints")
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("change,field", TRAIN_CHANGES, ids=[f for _, f in TRAIN_CHANGES])
def test_train_resume_of_a_finished_run_with_another_option_is_refused(train_set, trained, change, field):
    before = (trained / "model.safetensors").read_bytes()
    refused(invoke("train", train_set, "--out", trained, *TRAIN, "--epochs", "1", "--resume", *change), field)
    assert (trained / "model.safetensors").read_bytes() == before


def test_train_finished_run_with_more_epochs_continues_with_the_new_schedule(train_set, trained, tmp_path):
    """--epochs raised, nothing else: the finished run goes on from its last checkpoint (steps add up, the
    metrics of epoch 1 are kept), and the learning rate of the new steps is the new plan's (the schedule is
    recomputed for the new --epochs, at the step reached). Raising it with another change is refused."""
    out = tmp_path / "m"
    shutil.copytree(trained, out)
    refused(invoke("train", train_set, "--out", out, *TRAIN, "--epochs", "2", "--resume", "--lr", "0.5"),
            "recipe.epochs (1 then, 2 now)", "recipe.lr")
    r = invoke("train", train_set, "--out", out, *TRAIN, "--epochs", "2", "--resume", "--keep-checkpoints")
    assert r.exit_code == 0 and "continuing the finished 1-epoch run to 2 epochs" in r.output, r.output
    fresh = tmp_path / "fresh"
    assert invoke("train", train_set, "--out", fresh, *TRAIN, "--epochs", "2").exit_code == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (fresh / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["type"] == "step"]
    ref_steps = [x for x in ref if x["type"] == "step"]
    assert [x["step"] for x in steps] == [x["step"] for x in ref_steps]
    second = [x for x in steps if x["epoch"] == 2]
    assert second and [x["lr"] for x in second] == [x["lr"] for x in ref_steps if x["epoch"] == 2]
    cfg = json.loads((out / "config.json").read_text())["source"]["training"]
    assert cfg["epochs"] == 2 and cfg["steps"] == len(steps)
    again = invoke("train", train_set, "--out", out, *TRAIN, "--epochs", "2", "--resume")
    assert again.exit_code == 0 and "complete already" in again.output


def test_train_more_epochs_without_checkpoints_is_refused_with_the_reason(train_set, tmp_path):
    out = tmp_path / "m"
    assert invoke("train", train_set, "--out", out, *TRAIN, "--epochs", "1").exit_code == 0
    r = invoke("train", train_set, "--out", out, *TRAIN, "--epochs", "2", "--resume")
    assert r.exit_code == 2 and "--keep-checkpoints" in r.output and "--overwrite" in r.output, r.output


def test_train_interrupted_before_its_first_checkpoint_leaves_the_plain_command_runnable(train_set, tmp_path,
                                                                                         monkeypatch):
    """Ctrl-C during the first epoch (no checkpoint yet): what the run wrote is removed, so the same command runs
    again without --overwrite; a folder the run created is removed too."""
    from tokshift_cli.train import loop as train_mod

    def interrupt(self):
        raise KeyboardInterrupt

    out = tmp_path / "new" / "m"
    monkeypatch.setattr(train_mod.Trainer, "_run_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(train_set, out, model=BUNDLED_UNTRAINED,
                        options=train_mod.TrainOptions(img_size=32, frames=4, stride=1, device="cpu",
                                                       dtype="float32", workers=0, batch_size=2, accum_steps=1,
                                                       epochs=1))
    assert not out.exists()
    keep = tmp_path / "keep"
    keep.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(train_set, keep, model=BUNDLED_UNTRAINED,
                        options=train_mod.TrainOptions(img_size=32, frames=4, stride=1, device="cpu",
                                                       dtype="float32", workers=0, batch_size=2, accum_steps=1,
                                                       epochs=1))
    assert keep.is_dir() and not any(keep.iterdir())  # metrics.jsonl is gone: the plain command runs again
    monkeypatch.undo()
    r = invoke("train", train_set, "--out", keep, *TRAIN, "--epochs", "1")
    assert r.exit_code == 0, r.output


def test_train_init_offline_fails_at_once_and_leaves_no_folder(train_set, tmp_path, monkeypatch):
    """An unreachable Hub: one line naming --init and the reason, exit 3, no empty output folder."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "m"
    r = invoke("train", train_set, "--out", out, "--init", "vit_tiny_patch16_224.augreg_in21k", "--device", "cpu")
    assert r.exit_code == 3 and "--init vit_tiny_patch16_224.augreg_in21k" in r.output
    assert "cannot be reached" in r.output, r.output
    assert not out.exists()


# --- kill -9 at a few moments, then --resume: the fresh run's bytes -------------------------------------------


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """16 short videos and the fresh, uninterrupted run's features of them."""
    root = tmp_path_factory.mktemp("many")
    folder = root / "videos"
    folder.mkdir()
    for i in range(16):
        make_video(folder / f"m{i:02d}.mp4", frames=16 + 2 * i, width=64, height=48, pattern="noise", seed=i)
    out = root / "ref" / "f.npy"
    args = ["extract-features", str(folder), "--out", str(out), *MODEL, "--batch-size", "2"]
    assert invoke(*args).exit_code == 0
    return folder, out.read_bytes(), out.with_suffix(".json").read_bytes()


@pytest.mark.parametrize("moment", [1, 6], ids=["after-the-header", "mid-run"])
def test_features_kill9_at_a_moment_then_resume_equals_the_fresh_run(many, tmp_path, moment):
    """``moment``: journal lines on disk when the run is killed (1: the header only, before any video)."""
    folder, npy, side = many
    out = tmp_path / "f.npy"
    journal = Path(f"{out}.part.journal")
    args = ["extract-features", str(folder), "--out", str(out), *MODEL, "--batch-size", "2"]
    kill9_when(start(args, env={"TOKSHIFT_COMMIT_INTERVAL": "0"}),
               lambda: journal.exists() and journal.read_bytes().count(b"\n") >= moment)
    plain = invoke(*args)
    assert plain.exit_code == 4 and "--resume" in plain.output  # progress is never silently discarded
    r = invoke(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == npy and out.with_suffix(".json").read_bytes() == side
    assert not list(tmp_path.glob("*.part*"))


def _kill9_then_resume(args: list[str], journal: Path, moment: bytes, count: int, env: dict[str, str] | None = None):
    """Run ``tokshift ARGS``, kill -9 it once ``journal`` holds ``count`` occurrences of ``moment``, check that the
    plain command is refused (progress is never discarded) and return the ``--resume`` run's result."""
    kill9_when(start(args, env={"TOKSHIFT_COMMIT_INTERVAL": "0", **(env or {})}),
               lambda: journal.exists() and journal.read_bytes().count(moment) >= count)
    plain = invoke(*args)
    assert plain.exit_code == 4 and "--resume" in plain.output, plain.output
    return invoke(*args, "--resume")


@pytest.mark.parametrize("moment,count", [(b"\n", 1), (b'"error"', 5)], ids=["after-the-header", "mid-run"])
def test_evaluate_kill9_at_a_moment_then_resume_equals_the_fresh_run(many, tmp_path_factory, tmp_path, moment, count):
    folder = many[0]
    labels = load_model(BUNDLED_UNTRAINED, device="cpu").config.labels
    data = tmp_path / "data"
    for k, v in enumerate(sorted(folder.iterdir())):
        (data / labels[k % 2]).mkdir(parents=True, exist_ok=True)
        os.link(v, data / labels[k % 2] / v.name)
    ref = tmp_path / "ref" / "r.json"
    assert invoke("evaluate", data, "--out", ref, *MODEL).exit_code == 0
    out = tmp_path / "out" / "r.json"
    args = ["evaluate", str(data), "--out", str(out), *MODEL]
    r = _kill9_then_resume(args, Path(f"{out}.part.journal"), moment, count)
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("count", [0, 4], ids=["after-the-plan", "mid-run"])
def test_timeline_kill9_at_a_moment_then_resume_equals_the_fresh_run(tmp_path, count):
    video = make_video(tmp_path / "long.mp4", frames=300, width=64, height=48, fps=30, pattern="noise")
    opts = [*MODEL, "--hop", "16f"]
    ref = tmp_path / "ref"
    assert invoke("timeline", video, *opts, "--out", ref / "t.json", "--csv", ref / "t.csv").exit_code == 0
    out = tmp_path / "out"
    args = ["timeline", str(video), *opts, "--out", str(out / "t.json"), "--csv", str(out / "t.csv")]
    moment = b'"kind":"windows"' if count else b'"kind":"plan"'
    r = _kill9_then_resume(args, out / "t.json.part.journal", moment, max(count, 1),
                           env={"TOKSHIFT_TIMELINE_CHUNK": "1"})
    assert r.exit_code == 0, r.output
    for name in ("t.json", "t.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name


def test_train_kill9_before_its_first_checkpoint_then_resume_equals_the_fresh_run(train_set, tmp_path):
    """Killed while metrics.jsonl has lines but no checkpoint exists: --resume starts it afresh (nothing was
    saved to go on from) and writes the uninterrupted run's weights. 64 px, 8 frames: steps long enough to be
    caught between the first log line and the epoch's checkpoint."""
    common = [*TRAIN, "--img-size", "64", "--frames", "8", "--epochs", "1"]
    ref = tmp_path / "ref"
    assert invoke("train", train_set, "--out", ref, *common).exit_code == 0
    out = tmp_path / "m"
    args = ["train", str(train_set), "--out", str(out), *common]
    metrics, latest = out / "metrics.jsonl", out / "checkpoints" / "latest.json"
    kill9_when(start(args), lambda: metrics.exists() and metrics.stat().st_size > 0 and not latest.exists(),
               poll=0.002)
    assert not latest.exists()
    r = invoke(*args, "--resume")
    assert r.exit_code == 0, r.output
    assert (out / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
