"""The float32 linear backend: measured once per CPU/torch/threads, cached, exact to float rounding, overridable."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tokshift_cli.models import kernels
from tokshift_cli.models.config import TokShiftConfig
from tokshift_cli.models import tokshift
from tokshift_cli.models.tokshift import EpilogueLinear, cast_for_inference, create_model

SMALL = TokShiftConfig(embed_dim=64, depth=2, num_heads=4, img_size=32, patch_size=16, num_frames=4, num_classes=7)

needs_onednn = pytest.mark.skipif(not kernels.onednn_linear_available(),
                                  reason="this torch build has no oneDNN linear op (torch.ops.mkldnn._linear_pointwise)")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKSHIFT_CACHE", str(tmp_path))
    monkeypatch.delenv(kernels.LINEAR_ENV, raising=False)
    return tmp_path / "kernels.json"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model(SMALL).eval()


@needs_onednn
def test_choice_is_measured_once_and_cached(cache, monkeypatch):
    calls = []

    def fake(dtype, **_):
        calls.append(dtype)
        return {"aten": 100.0, "onednn": 150.0}

    monkeypatch.setattr(kernels, "measure_linear", fake)
    assert kernels.linear_backend(torch.float32) == "onednn"
    assert kernels.linear_backend(torch.float32) == "onednn"
    assert calls == [torch.float32]  # the second process-wide call reads the file
    entry = json.loads(cache.read_text())
    (key, value), = entry.items()
    assert kernels.cpu_name() in key and torch.__version__ in key and "float32" in key
    assert value["backend"] == "onednn" and value["gflops_per_thread_cpu_s"] == {"aten": 100.0, "onednn": 150.0}


@needs_onednn
def test_a_small_win_within_the_noise_margin_keeps_aten(cache, monkeypatch):
    monkeypatch.setattr(kernels, "measure_linear", lambda dtype, **_: {"aten": 100.0, "onednn": 101.0})
    assert kernels.linear_backend(torch.float32) == "aten"


@needs_onednn
@pytest.mark.parametrize("backend", ["onednn", "aten"])
def test_float32_logits_equal_aten_to_rounding(cache, monkeypatch, backend):
    monkeypatch.setenv(kernels.LINEAR_ENV, backend)
    ref, net = _model(), _model()
    cast_for_inference(net, torch.float32)
    assert net.linear_backend == backend
    fused = [m for m in net.modules() if isinstance(m, EpilogueLinear)]
    assert (len(fused) == 4 * SMALL.depth) if backend == "onednn" else not fused
    x = torch.randn(3, SMALL.num_frames, 3, SMALL.img_size, SMALL.img_size)
    with torch.inference_mode():
        a, b = ref(x), net(x)
    assert a.dtype == b.dtype == torch.float32
    assert (a - b).abs().max().item() <= 1e-5
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    if backend == "onednn":  # batch invariance holds on the fused path too: a row does not depend on its batch
        with torch.inference_mode():
            assert torch.equal(net(x[:1]), b[:1])


@needs_onednn
def test_real_measurement_returns_both_kernels(cache):
    rates = kernels.measure_linear(torch.float32, rounds=1, burst_s=0.01)
    assert set(rates) == {"aten", "onednn"}
    assert all(v > 0 for v in rates.values())


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weight_gives_the_dense_weights_rows_and_follows_changes(dtype):
    """EpilogueLinear packs its weight once into oneDNN's layout: the same outputs as oneDNN on the dense weight
    (row for row), whatever the number of rows; re-packed after an in-place change or a cast; copies drop it."""
    import copy

    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("this CPU has no oneDNN bfloat16 GEMM")
    torch.manual_seed(0)
    lin = EpilogueLinear.wrap(nn.Linear(64, 96), gelu=True).to(dtype)
    xs = torch.randn(300, 64).to(dtype)

    def dense(x):
        return torch.ops.mkldnn._linear_pointwise(x, lin.weight, lin.bias, "gelu", [], "none")

    with torch.inference_mode():
        y = lin(xs)
        assert lin._pack is not None and lin._pack.layout == torch._mkldnn  # packed, not the dense tensor
        for rows in (2, 50, 300):
            assert torch.equal(lin(xs[:rows]), dense(xs[:rows])), rows
            assert torch.equal(lin(xs[:rows]), y[:rows]), rows  # a row does not depend on how many come with it
        twin = copy.deepcopy(lin)  # made in inference mode: its tensors keep no version counter
        assert twin._pack is None and torch.equal(twin(xs), y)
        assert tokshift._ONEDNN_LINEAR  # and that did not switch oneDNN off for everyone
    with torch.no_grad():
        lin.weight.mul_(0.5)
    with torch.inference_mode():
        assert torch.equal(lin(xs), dense(xs)) and not torch.equal(lin(xs), y)
    lin.to(torch.float32 if dtype == torch.bfloat16 else torch.bfloat16)
    if lin.weight.dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with torch.inference_mode():
            x = xs.to(lin.weight.dtype)
            assert torch.equal(lin(x), dense(x))
