"""`tokshift evaluate`: labelled sets in every input form, metrics recomputed independently from `classify --json`,
resume after a real SIGKILL, shards + merge, label matching, and the exit codes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from procs import kill9_when, start  # noqa: E402
from videogen import make_text, make_video  # noqa: E402

from tokshift_cli.evaluate.datasets import load_labelled, match_labels, normalise_label  # noqa: E402
from tokshift_cli.errors import UsageError  # noqa: E402
from tokshift_cli.evaluate import EvalOptions, evaluate  # noqa: E402
from tokshift_cli.video.sampling import Views  # noqa: E402
from tokshift_cli.evaluate.metrics import Outcome, compute_metrics  # noqa: E402
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED  # noqa: E402

MODEL = ("--model", BUNDLED_UNTRAINED, "--device", "cpu", "--workers", "1")


def tokshift(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tokshift_cli", *args], capture_output=True, text=True, env=full,
                          timeout=timeout)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Nine real H.264 videos, labelled from what the bundled model says of them (classify --json): three with
    their top-1 (right), three with their 3rd label (right at top-5 only), two with a label outside their top-5
    (wrong); plus a broken file. Classes: whatever those labels are (at least three)."""
    root = tmp_path_factory.mktemp("labelled")
    src = root / "src"
    src.mkdir()
    videos = [make_video(src / f"v{i}.mp4", frames=40, width=80, height=48, pattern="noise", seed=i, gop=10)
              for i in range(8)]
    r = tokshift("classify", *map(str, videos), *MODEL, "--json", "--top-k", "400")
    assert r.returncode == 0, r.stderr
    ranked = [[e["label"] for e in res["top_k"]] for res in json.loads(r.stdout)["results"]]
    labels = [ranked[0][0], ranked[1][0], ranked[2][0], ranked[3][2], ranked[4][2], ranked[5][2],
              ranked[6][200], ranked[7][300]]
    items = list(zip(videos, labels))
    # folder form: DATA/<class>/<video>
    data = root / "data"
    for i, (v, label) in enumerate(items):
        (data / label).mkdir(parents=True, exist_ok=True)
        os.link(v, data / label / f"clip{i}.mp4")
    broken_class = labels[0]
    make_text(data / broken_class / "zz_broken.mp4")
    # the order evaluate sees in the folder form (classes sorted, files sorted), and the list/CSV forms follow it
    order = sorted(((lab, f"clip{i}.mp4") for i, (_, lab) in enumerate(items)), key=lambda t: (t[0], t[1]))
    rows = [(f"data/{lab}/{name}", lab) for lab, name in order]
    rows.insert(sum(1 for lab, _ in order if lab <= broken_class), (f"data/{broken_class}/zz_broken.mp4",
                                                                     broken_class))
    listing = root / "val.txt"
    listing.write_text("".join(f"{p} {lab}\n" for p, lab in rows) + "data/missing/nope.mp4 " + labels[1] + "\n")
    table = root / "val.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "label"])
        w.writerows(rows)
    truth = {f"clip{i}.mp4": lab for i, (_, lab) in enumerate(items)}
    return {"root": root, "data": data, "list": listing, "csv": table, "truth": truth, "labels": labels}


def run_eval(data: Path, out: Path, *extra: str, env=None) -> tuple[subprocess.CompletedProcess, dict]:
    r = tokshift("evaluate", str(data), *MODEL, "--out", str(out), *extra, env=env)
    doc = json.loads(out.read_text()) if out.exists() else {}
    return r, doc


def expected_metrics(classified: dict[str, list[str]], truth: dict[str, str], k: int = 5) -> dict[str, float]:
    """top-1, top-5 and mean class accuracy written out from classify's rankings."""
    names = [n for n in truth if n in classified]
    top1 = sum(classified[n][0] == truth[n] for n in names) / len(names)
    topk = sum(truth[n] in classified[n][:k] for n in names) / len(names)
    per_class: dict[str, list[bool]] = {}
    for n in names:
        per_class.setdefault(truth[n], []).append(classified[n][0] == truth[n])
    mean_class = sum(sum(v) / len(v) for v in per_class.values()) / len(per_class)
    return {"top1": top1, "top5": topk, "mean_class_accuracy": mean_class}


@pytest.fixture(scope="module")
def folder_report(labelled, tmp_path_factory):
    """The CLI on the folder form (with --predictions and --plot, which do not change the report's bytes)."""
    out = tmp_path_factory.mktemp("reports") / "folder.json"
    preds = out.with_suffix(".csv")
    plot = out.with_suffix(".png")
    r, doc = run_eval(labelled["data"], out, "--predictions", str(preds), "--plot", str(plot))
    labelled["report_bytes"] = out.read_bytes()
    return r, doc, preds, plot


@pytest.fixture(scope="module")
def tiny():
    from tokshift_cli.models.weights import load_model

    return load_model(BUNDLED_UNTRAINED, device="cpu")


def api(model, data, tmp_path, name, **kw) -> dict:
    """The Python API, as the CLI calls it (the model loaded once for the module)."""
    root = kw.pop("root", None)
    opts = EvalOptions(workers=1, **kw)
    out = tmp_path / f"{name}.json"
    res = evaluate(model, load_labelled(data, root=root), opts, out=out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(res.report))
    return res.report


def test_folder_form_metrics_equal_the_ones_written_out_from_classify(labelled, folder_report):
    r, doc, preds, plot = folder_report
    assert r.returncode == 1, r.stderr  # the broken file failed; the report is written all the same
    assert doc["counts"] == {"videos": 9, "scored": 8, "failed": 1, "counted": 8}
    clips = sorted(labelled["data"].rglob("clip*.mp4"))
    c = tokshift("classify", *map(str, clips), *MODEL, "--json")
    assert c.returncode == 0, c.stderr
    classified = {Path(res["video"]).name: [e["label"] for e in res["top_k"]] for res in json.loads(c.stdout)["results"]}
    want = expected_metrics(classified, labelled["truth"])
    for key, value in want.items():
        assert doc["metrics"][key] == pytest.approx(value, abs=1e-12), key
    assert doc["metrics"]["top1"] == pytest.approx(3 / 8) and doc["metrics"]["top5"] == pytest.approx(6 / 8)
    # the report's top-k of a video is classify's, bit for bit
    by_name = {Path(v["video"]).name: v for v in doc["videos"]}
    for res in json.loads(c.stdout)["results"]:
        assert by_name[Path(res["video"]).name]["top_k"] == res["top_k"]
    broken = by_name["zz_broken.mp4"]
    assert broken["error"].startswith("not a video file") and broken["prediction"] is None
    assert sum(1 for ln in r.stderr.splitlines() if ln.startswith(str(labelled["data"]))) == 1
    # per class, confusion and pairs, recomputed
    for pc in doc["per_class"]:
        mine = [n for n, lab in labelled["truth"].items() if lab == pc["label"]]
        assert pc["support"] == len(mine)
        assert pc["correct"] == sum(classified[n][0] == pc["label"] for n in mine)
    conf = doc["confusion"]
    assert sum(map(sum, conf["matrix"])) == 8
    for n, lab in labelled["truth"].items():
        i, j = conf["labels"].index(lab), conf["labels"].index(classified[n][0])
        assert conf["matrix"][i][j] >= 1
    # predictions CSV and confusion plot
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 9 and {r_["video"] for r_ in rows} == {v["video"] for v in doc["videos"]}
    assert sum(r_["correct_top1"] == "1" for r_ in rows) == 3 and rows[0]["top1"] and "p5" in rows[0]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_list_and_csv_forms_give_the_same_report(labelled, folder_report, tiny, tmp_path):
    _, ref, _, _ = folder_report
    for form in ("list", "csv"):
        doc = api(tiny, labelled[form], tmp_path, form)
        assert doc["data"]["format"] == form
        videos = doc["videos"]
        if form == "list":  # it also names a missing file: a failed video, not a wrong prediction
            assert doc["counts"]["failed"] == 2 and videos[-1]["error"] == "no such file or directory"
            videos = videos[:-1]
        else:
            assert doc["per_class"] == ref["per_class"] and doc["counts"] == ref["counts"]
        assert [(Path(v["video"]).name, v["label"], v["top_k"]) for v in videos] == \
               [(Path(v["video"]).name, v["label"], v["top_k"]) for v in ref["videos"]]
        for key in ("metrics", "confusion", "confused_pairs"):
            assert doc[key] == ref[key], (form, key)


def test_kinetics_annotation_csv(labelled, tiny, tmp_path):
    """label,youtube_id,time_start,time_end,split rows; videos named <id>_<start:06d>_<end:06d>.mp4 under --root."""
    root = tmp_path / "k400" / "val"
    rows = []
    for i, (name, label) in enumerate(sorted(labelled["truth"].items())):
        dest = root / label.replace(" ", "_") / f"yt{i:08d}_{10 * i:06d}_{10 * i + 10:06d}.mp4"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(next(labelled["data"].rglob(name)), dest)
        rows.append((label, f"yt{i:08d}", 10 * i, 10 * i + 10, "val"))
    rows.append((labelled["labels"][0], "absent00000", 0, 10, "val"))
    ann = tmp_path / "validate.csv"
    with open(ann, "w", newline="") as f:
        csv.writer(f).writerows([("label", "youtube_id", "time_start", "time_end", "split"), *rows])
    doc = api(tiny, ann, tmp_path, "k", root=root)
    assert doc["data"]["format"] == "kinetics-csv" and doc["counts"]["scored"] == 8
    assert doc["videos"][-1]["error"].startswith("no such file (no absent00000_000000_000010.*")


def test_resume_after_sigkill_gives_a_byte_identical_report(labelled, folder_report, tmp_path):
    _, ref, _, _ = folder_report
    out = tmp_path / "r.json"
    journal = Path(f"{out}.part.journal")
    kill9_when(start(["evaluate", str(labelled["data"]), *MODEL, "--out", str(out)],
                     env={"TOKSHIFT_COMMIT_INTERVAL": "0"}),
               lambda: journal.exists() and journal.read_bytes().count(b"\n") >= 4,  # header + 3 videos
               timeout=300, poll=0.05)
    assert not out.exists() and journal.exists()
    done = journal.read_bytes().count(b"\n") - 1
    assert 3 <= done < 9
    before = journal.read_bytes()
    r = tokshift("evaluate", str(labelled["data"]), *MODEL, "--out", str(out), "--resume", "--views", "2x1")
    assert r.returncode == 2 and "cannot resume" in r.stderr and "views" in r.stderr  # other options: refused
    assert journal.read_bytes() == before
    r = tokshift("evaluate", str(labelled["data"]), *MODEL, "--out", str(out), "--resume")
    assert r.returncode == 1, r.stderr
    assert "done before the resume" in r.stderr
    assert out.read_bytes() == labelled["report_bytes"]  # the uninterrupted run's report
    assert not journal.exists()
    assert json.loads(out.read_bytes())["metrics"] == ref["metrics"]


def test_two_shards_and_merge_equal_one_run(labelled, folder_report, tmp_path):
    out = tmp_path / "s.json"
    for i in range(2):
        r = tokshift("evaluate", str(labelled["data"]), *MODEL, "--out", str(out), "--shard", f"{i}/2")
        assert r.returncode in (0, 1), r.stderr
        assert "tokshift merge" in r.stderr and not out.exists()
    r = tokshift("merge", str(out), "--shards", "2")
    assert r.returncode == 1, r.stderr  # one failed video
    assert out.read_bytes() == labelled["report_bytes"]
    assert not list(tmp_path.glob("*.journal"))


def test_labels_that_match_nothing_stop_the_run_before_decoding(labelled, tmp_path):
    listing = tmp_path / "bad.txt"
    first = next(labelled["data"].rglob("clip0.mp4"))
    listing.write_text(f"{first} riding_a_bikes\n{first} Playing-Guitar!\n{first} {labelled['labels'][0]}\n")
    r = tokshift("evaluate", str(listing), *MODEL, "--json")
    assert r.returncode == 2 and r.stdout == ""
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert "1 label of the data match no label of the model" in line
    assert "'riding_a_bikes' (closest: 'riding a bike'" in line and "--label-map" in line
    mapping = tmp_path / "map.csv"
    mapping.write_text("riding_a_bikes,riding a bike\n")
    r = tokshift("evaluate", str(listing), *MODEL, "--json", "--label-map", str(mapping))
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert [v["model_label"] for v in doc["videos"]] == ["riding a bike", "playing guitar", labelled["labels"][0]]


def test_model_with_unknown_label_order_is_refused(tmp_path, labelled):
    import shutil

    from tokshift_cli.models.weights import resolve_model

    folder = tmp_path / "model"
    shutil.copytree(resolve_model(BUNDLED_UNTRAINED).folder, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["label_order"] = "unknown"
    (folder / "config.json").write_text(json.dumps(cfg))
    r = tokshift("evaluate", str(labelled["data"]), "--model", str(folder), "--device", "cpu")
    assert r.returncode == 2 and "label_order \"unknown\"" in r.stderr and "tokshift convert" in r.stderr


def test_failed_as_wrong_counts_failures(labelled, folder_report, tiny, tmp_path):
    _, ref, _, _ = folder_report
    doc = api(tiny, labelled["data"], tmp_path, "w", failed_as_wrong=True)
    assert doc["metrics"]["top1"] == pytest.approx(3 / 9) and doc["counts"]["counted"] == 9
    assert ref["metrics"]["top1"] == pytest.approx(3 / 8)


def test_aggregate_logits_is_classify_logits(labelled, tiny, tmp_path):
    from tokshift_cli.engine import ClassifyOptions, classify

    clip = next(labelled["data"].rglob("clip3.mp4"))
    listing = tmp_path / "one.txt"
    listing.write_text(f"{clip} {labelled['truth']['clip3.mp4']}\n")
    kw = dict(views=Views(3, 3), aggregate="logits", sampling="authors")
    doc = api(tiny, listing, tmp_path, "one", **kw)
    (res,) = classify(tiny, [str(clip)], ClassifyOptions(workers=1, **kw))
    assert doc["videos"][0]["top_k"] == res["top_k"]
    probs = api(tiny, listing, tmp_path, "probs", views=Views(3, 3), sampling="authors")
    assert probs["videos"][0]["top_k"] != doc["videos"][0]["top_k"]


# --- the pieces, without the CLI ------------------------------------------------------------------------------


def test_label_names_are_matched_after_normalising():
    assert normalise_label("passing_American_football_(in_game)") == "passing american football in game"
    assert normalise_label(' "Passing American Football (in game)" ') == "passing american football in game"
    model = ["passing American football (in game)", "zumba", "riding a bike"]
    got = match_labels(["passing_american_football_(in_game)", "Zumba", "2"], model)
    assert got == {"passing_american_football_(in_game)": 0, "Zumba": 1, "2": 2}
    with pytest.raises(UsageError, match="closest: 'zumba'"):
        match_labels(["zumbaa"], model)


def test_metrics_written_out_by_hand():
    labels = ["a", "b", "c", "d"]
    outcomes = [Outcome(0, (0, 1)), Outcome(0, (1, 0)), Outcome(1, (1, 2)), Outcome(2, (0, 3)), Outcome(2, None)]
    m = compute_metrics(outcomes, labels, k=2)
    assert m["metrics"]["top1"] == 2 / 4 and m["metrics"]["top2"] == 3 / 4
    assert m["metrics"]["mean_class_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["confusion"]["labels"] == ["a", "b", "c"]
    assert m["confusion"]["matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["counts"] == {"videos": 5, "scored": 4, "failed": 1, "counted": 4}
    wrong = compute_metrics(outcomes, labels, k=2, failed_as_wrong=True)
    assert wrong["metrics"]["top1"] == 2 / 5
    assert [pc["support"] for pc in wrong["per_class"]] == [2, 1, 2]


def test_load_labelled_errors_are_one_line(tmp_path):
    with pytest.raises(UsageError, match="no such file or folder"):
        load_labelled(tmp_path / "nothing")
    rawframes = tmp_path / "raw.txt"
    rawframes.write_text("videos/a 300 4\n")
    with pytest.raises(UsageError, match="rawframe lists"):
        load_labelled(rawframes)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no class folders"):
        load_labelled(tmp_path / "empty")
    ann = tmp_path / "k.csv"
    ann.write_text("label,youtube_id,time_start,time_end,split\nzumba,abc,0,10,val\n")
    with pytest.raises(UsageError, match="needs --root"):
        load_labelled(ann, root=tmp_path / "nope")


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_run(labelled, folder_report, tmp_path):
    """torchrun --nproc-per-node 2 (gloo): each rank scores its share, rank 0 writes the one report."""
    out = tmp_path / "t.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "tokshift_cli", "evaluate", str(labelled["data"]), *MODEL, "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "160"})
    assert "8 videos scored, 1 failed" in r.stderr, r.stderr[-3000:]
    assert r.stderr.count("videos scored") == 1  # rank 0 reports for the job
    assert out.read_bytes() == labelled["report_bytes"]
