"""The float32 linear backend: measured once per CPU/torch/threads, cached, exact to float rounding, overridable."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tokshift_cli.models import kernels
from tokshift_cli.models.config import TokShiftConfig
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
