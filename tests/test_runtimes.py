"""Runtimes (torch, OpenVINO, ONNX Runtime) and `tokshift export`: the authors' fixtures through each exported
graph, batch 1..N, an exported folder in classify / extract-features / evaluate / timeline against torch, the
int8 accuracy gate passing and refusing, damaged folders and missing runtimes refused in one line, auto's choice
in the JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")
from typer.testing import CliRunner  # noqa: E402
from parity import fixture_diffs  # noqa: E402
from videogen import make_video, write_rgb_video  # noqa: E402

from tokshift_cli.cli import app  # noqa: E402
from tokshift_cli.models.config import TokShiftConfig  # noqa: E402
from tokshift_cli.models.convert import checkpoint_filter_fn, write_model_files  # noqa: E402
from tokshift_cli.models.tokshift import create_model, load_state_dict_strict, token_shift  # noqa: E402
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED  # noqa: E402
from tokshift_cli.runtimes.graph import cls_shift  # noqa: E402
from tokshift_cli.runtimes.build import runtime_model  # noqa: E402

DATA = Path(__file__).parent / "data"
SMALL = TokShiftConfig(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                       num_classes=7, label_order="unknown")
RUNNER = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKSHIFT_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def cli(*args: str) -> tuple[int, str, str]:
    r = RUNNER.invoke(app, [str(a) for a in args])
    return r.exit_code, r.stdout, r.stderr


def _fixture_model(version: str) -> torch.nn.Module:
    sd = checkpoint_filter_fn(torch.load(DATA / f"{version}_small.pth", map_location="cpu", weights_only=True))[0]
    model = create_model(SMALL)
    load_state_dict_strict(model, sd, f"{version}_small.pth")
    return model


def test_the_graph_shift_is_the_token_shift():
    x = torch.randn(2 * 8, 5, 64)
    assert torch.equal(cls_shift(x.clone(), 8, 16), token_shift(x, 8, 4))


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_authors_fixtures_through_each_runtime_and_batch_1_to_n(version, runtime):
    io = np.load(DATA / f"{version}_small_io.npz")
    net = runtime_model(_fixture_model(version), runtime, "float32")
    logits, d_logits, d_feats = fixture_diffs(net, io)
    print(f"[runtimes] {version} {runtime}: max|logits diff| {d_logits:.3g}, max|features diff| {d_feats:.3g}")
    assert d_logits < 1e-4 and d_feats < 1e-4
    if version == "v1":  # the shift runs inside the graph: the authors' plain ViT is far away
        assert np.abs(logits.numpy() - np.load(DATA / "v1_small_plainvit_io.npz")["logits"]).max() > 0.05
    x = torch.from_numpy(io["input"])
    with torch.inference_mode():
        one = [net(x[i:i + 1]) for i in range(2)]
        for n in (1, 2, 3):
            batch = torch.cat([x[i % 2:i % 2 + 1] for i in range(n)])
            out = net(batch)
            for i in range(n):
                assert (out[i] - one[i % 2][0]).abs().max() < 1e-5
        # the engine pads every call to one batch size: there a clip's row must not depend on its neighbours
        assert torch.equal(net(x)[0], net(torch.stack((x[0], x[0])))[0])


# --- exported folders in every command -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    video = make_video(root / "clip.mp4", frames=40, width=96, height=64)
    labelled = root / "data"
    for label in ("abseiling", "zumba"):
        (labelled / label).mkdir(parents=True)
        shutil.copy(video, labelled / label / "v.mp4")
    out = {"video": video, "data": labelled}
    for fmt in ("openvino", "onnx"):
        code, stdout, stderr = cli("export", BUNDLED_UNTRAINED, "--format", fmt, "--out", root / fmt,
                                   "--check-videos", video, "--json", "--workers", "0")
        assert code == 0, stderr
        out[fmt] = root / fmt
        out[f"{fmt}_report"] = json.loads(stdout)
    return out


def test_export_writes_a_self_describing_folder(exported):
    folder = exported["openvino"]
    assert {p.name for p in folder.iterdir()} == {"model.xml", "model.bin", "head.safetensors", "config.json",
                                                 "parity.json", "README.md"}
    cfg = json.loads((folder / "config.json").read_text())
    ex = cfg["export"]
    assert (cfg["num_frames"], cfg["frame_stride"], cfg["img_size"]) == (8, 32, 224) and len(cfg["id2label"]) == 400
    assert ex["runtime"] == "openvino" and ex["precision"] == "float32" and ex["source"]["ref"] == BUNDLED_UNTRAINED
    assert ex["runtime_version"] and ex["torch_version"] and len(ex["files_sha256"]) == 64
    for fmt in ("openvino", "onnx"):
        rep = exported[f"{fmt}_report"]
        assert rep["passed"] and rep["max_abs_logit_diff"] <= 1e-4 and rep["top1_agreement"] == 1.0
        assert rep["videos"] == [str(exported["video"])]
    assert "max |logit diff|" in (folder / "README.md").read_text()


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_an_exported_folder_is_a_model_for_every_command(exported, fmt, tmp_path):
    video, folder = exported["video"], exported[fmt]
    common = ["--device", "cpu", "--workers", "0"]
    runs = {}
    for name, model in (("torch", BUNDLED_UNTRAINED), ("export", folder)):
        code, out, err = cli("classify", video, "--model", model, "--json", "--views", "2x1", *common)
        assert code == 0, err
        runs[name] = json.loads(out)
        code, _, err = cli("extract-features", video, "--model", model, "--out", tmp_path / f"{name}.npy", *common)
        assert code == 0, err
        code, out, err = cli("evaluate", exported["data"], "--model", model, "--json", *common)
        assert code == 0, err
        runs[name + "_eval"] = json.loads(out)
        code, out, err = cli("timeline", video, "--model", model, "--json", "--hop", "8", *common)
        assert code == 0, err
        runs[name + "_timeline"] = json.loads(out.splitlines()[0])
    t, e = runs["torch"], runs["export"]
    assert (t["runtime"], e["runtime"]) == ("torch", "onnxruntime" if fmt == "onnx" else "openvino")
    assert e["model"]["kind"] == "exported" and e["precision"] == "float32"
    for a, b in zip(t["results"][0]["top_k"], e["results"][0]["top_k"]):
        assert a["index"] == b["index"] and abs(a["probability"] - b["probability"]) < 1e-5
    fa, fb = np.load(tmp_path / "torch.npy"), np.load(tmp_path / "export.npy")
    assert fa.shape == fb.shape and np.abs(fa - fb).max() < 1e-4
    assert runs["torch_eval"]["metrics"] == runs["export_eval"]["metrics"]
    assert runs["export_eval"]["model"]["runtime"] == e["runtime"]
    wt, we = runs["torch_timeline"], runs["export_timeline"]
    assert [w["top_k"][0]["index"] for w in wt["windows"]] == [w["top_k"][0]["index"] for w in we["windows"]]


def test_damaged_other_version_and_missing_runtime_are_one_line(exported, tmp_path, monkeypatch):
    video = exported["video"]

    def refused(folder: Path, *words: str) -> None:
        code, _, err = cli("classify", video, "--model", folder, "--device", "cpu", "--workers", "0")
        assert code == 3, err
        line = err.strip().replace("\n", " ")
        assert "Traceback" not in err and all(w in line for w in words), line

    damaged = shutil.copytree(exported["openvino"], tmp_path / "damaged")
    (damaged / "model.bin").write_bytes(b"\0" * 100)
    refused(damaged, "damaged export", "export it again")
    (damaged / "model.bin").unlink()
    refused(damaged, "model.bin missing")
    newer = shutil.copytree(exported["onnx"], tmp_path / "newer")
    cfg = json.loads((newer / "config.json").read_text())
    cfg["export"]["export_version"] = 99
    (newer / "config.json").write_text(json.dumps(cfg))
    refused(newer, "export format 99", "upgrade")
    from tokshift_cli.runtimes import openvino_runtime

    def no_openvino(self):
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(openvino_runtime.OpenVINORuntime, "_import", no_openvino)
    refused(exported["openvino"], "not installed here", "pip install openvino")
    code, _, err = cli("classify", video, "--model", BUNDLED_UNTRAINED, "--runtime", "openvino", "--device", "cpu")
    assert code == 3 and "pip install openvino" in err
    code, _, err = cli("classify", video, "--model", exported["onnx"], "--runtime", "torch", "--device", "cpu")
    assert code == 2 and "--runtime onnxruntime" in err


def test_auto_records_its_measured_choice(exported):
    code, out, err = cli("classify", exported["video"], "--model", BUNDLED_UNTRAINED, "--runtime", "auto",
                         "--device", "cpu", "--workers", "0", "--json")
    assert code == 0, err
    doc = json.loads(out)
    auto = doc["runtime_auto"]
    assert doc["runtime"] == auto["chosen"] and doc["precision"] == "float32"
    assert set(auto["measured"]) == {"torch", "openvino", "onnxruntime"}
    for r in auto["measured"].values():
        assert {"clips_per_s", "deterministic", "row_invariant", "batch_invariant", "max_abs_logit_diff"} <= set(r)
    from tokshift_cli.runtimes.auto import MARGIN

    chosen, m = auto["measured"][auto["chosen"]], auto["measured"]
    best = max((n for n in m if m[n]["eligible"]), key=lambda n: m[n]["clips_per_s"])
    assert chosen["eligible"]  # the fastest, unless torch is within the margin of it (then torch)
    if m["torch"]["eligible"] and m[best]["clips_per_s"] < MARGIN * m["torch"]["clips_per_s"]:
        assert auto["chosen"] == "torch"
    else:
        assert auto["chosen"] == best
    store = Path(auto["cache"])
    before = store.stat().st_mtime_ns
    code, out, _ = cli("classify", exported["video"], "--model", BUNDLED_UNTRAINED, "--runtime", "auto",
                       "--device", "cpu", "--workers", "0", "--json")
    assert code == 0 and json.loads(out)["runtime"] == doc["runtime"] and store.stat().st_mtime_ns == before


# --- int8 and its accuracy gate --------------------------------------------------------------------------------


def level_video(path: Path, level: float, seed: int, frames: int = 10, size: int = 32) -> None:
    rng = np.random.default_rng(seed)
    tex = np.kron(rng.uniform(0.5, 1.0, (size // 8, size // 8, 3)), np.ones((8, 8, 1)))
    img = (tex * level * 255).clip(0, 255).round().astype(np.uint8)
    write_rgb_video(path, (img for _ in range(frames)), size=size)


def test_int8_gate_passes_and_refuses_with_the_numbers(tmp_path):
    """A 4-class model (random weights) on 16 brightness-level videos: int8 with a lenient --max-drop is written
    with its held-out numbers; an impossible one (-100: int8 would have to gain 100 points) refuses, writing
    nothing. docs/performance.md has the same gate on a model trained here."""
    labels = {i: f"level{i}" for i in range(4)}
    cfg = TokShiftConfig(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                         num_frames=8, frame_stride=1, num_classes=4, id2label=labels, label_order="custom")
    torch.manual_seed(0)
    write_model_files(tmp_path / "m", create_model(cfg).state_dict(), cfg)
    data = tmp_path / "data"
    for k, name in labels.items():
        (data / name).mkdir(parents=True)
        for i in range(4):
            level_video(data / name / f"v{i}.mp4", 0.25 + 0.15 * k, 10 * k + i)
    args = ["export", tmp_path / "m", "--format", "openvino", "--precision", "int8", "--calibrate", data,
            "--check-videos", data / "level0" / "v0.mp4", "--workers", "0"]
    code, _, err = cli(*args, "--out", tmp_path / "refused", "--max-drop", "-100")
    assert code == 2 and "export refused: int8 top-1" in err and "held-out videos" in err, err
    assert not (tmp_path / "refused").exists()
    code, out, err = cli(*args, "--out", tmp_path / "q", "--max-drop", "100", "--json")
    assert code == 0, err
    q = json.loads(out)["int8"]
    assert q["passed"] and q["holdout_videos"] == 4 and q["calibration_videos"] == 12
    assert {"top1_float32", "top1_int8", "agreement"} <= set(q)
    assert json.loads((tmp_path / "q" / "parity.json").read_text())["int8"] == q
    code, out, err = cli("classify", data / "level2" / "v0.mp4", "--model", tmp_path / "q", "--json",
                         "--workers", "0")
    assert code == 0 and json.loads(out)["precision"] == "int8", err


def test_bench_runtime_all_puts_every_runtime_and_precision_side_by_side():
    code, out, err = cli("bench", "--model", BUNDLED_UNTRAINED, "--runtime", "all", "--iters", "1", "--warmup", "0",
                         "--json")
    assert code == 0, err
    doc = json.loads(out)
    got = {(r["runtime"], r["precision"]): r for r in doc["rows"]}
    from tokshift_cli.models.kernels import linear_backend

    # torch float32 as the tool runs it, and (where oneDNN won the GEMM measurement) torch's own aten/MKL path,
    # which is the reference the diffs are taken against
    aten = {("torch", "float32/aten")} if linear_backend() == "onednn" else set()
    assert set(got) == {("torch", "float32"), ("torch", "bfloat16"), ("openvino", "float32"),
                        ("openvino", "bfloat16"), ("openvino", "int8"), ("onnxruntime", "float32"),
                        ("onnxruntime", "int8")} | aten
    assert got[("torch", "float32")]["max_abs_logit_diff"] <= 1e-5 and doc["cpu"]
    if aten:
        assert got[("torch", "float32/aten")]["max_abs_logit_diff"] == 0
    for p in ("openvino", "onnxruntime"):
        assert got[(p, "float32")]["max_abs_logit_diff"] < 1e-4 and got[(p, "float32")]["clips_per_s"] > 0
    # the roofline of each path is against the fastest GEMM of its precision here (int8: an int8 GEMM)
    peaks = doc["gemm_peak"]
    assert set(peaks) == {"float32", "bfloat16", "int8"}
    assert "openvino" in peaks["int8"]["by_kernel"] and "aten" in peaks["float32"]["by_kernel"]
    for d in peaks.values():
        assert d["gflops"] == max(d["by_kernel"].values()) > 0
    for (_, prec), r in got.items():
        want = doc["gflops_per_clip"] * r["clips_per_s"] / peaks[prec.split("/")[0]]["gflops"]
        assert r["of_gemm_peak"] == pytest.approx(want, rel=0.01, abs=1e-3) and 0 < r["of_gemm_peak"] < 1
