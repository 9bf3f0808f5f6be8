"""The fastest dense GEMM per precision on this CPU, through every kernel reachable here: the peak that
``tokshift bench --runtime all`` divides each path's achieved GFLOP/s by (:func:`gemm_peaks`).

* float32 and bfloat16: torch's ``aten`` GEMM (MKL for float32) and oneDNN's linear with its weight packed
  (:func:`tokshift_cli.bench.inference.matmul_fns`);
* int8: torch's ``_int_mm``, oneDNN's ``qlinear_pointwise`` on a prepacked weight, and OpenVINO's int8
  FullyConnected (a FakeQuantize'd input times int8 weights, as NNCF leaves a quantized linear layer), where
  OpenVINO is installed.

Each kernel is timed in bursts of ~0.1 s, interleaved over ``rounds``; the median of each, the fastest kernel is
the peak. An int8 "GFLOP/s" counts multiply-accumulates as 2 operations, like the others.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import numpy as np
import torch

Kernel = Callable[[], Any]


def int8_gemm_fns(n: int) -> dict[str, Kernel]:
    """Dense ``n x n`` int8 GEMMs reachable here (a kernel this build lacks is left out)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (n, n), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (n, n), generator=g, dtype=torch.int8)
    fns: dict[str, Kernel] = {}
    try:
        torch._int_mm(a, b)
        fns["torch _int_mm"] = lambda: torch._int_mm(a, b)
    except (RuntimeError, AttributeError):
        pass
    try:
        qx = torch.randint(0, 256, (n, n), generator=g, dtype=torch.uint8)
        packed = torch.ops.onednn.qlinear_prepack(b, [n, n])
        scales, zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)

        def qlinear() -> Any:
            return torch.ops.onednn.qlinear_pointwise(qx, 0.1, 0, packed, scales, zeros, None, 1.0, 0,
                                                      torch.float32, "none", [], "")
        qlinear()
        fns["oneDNN qlinear"] = qlinear
    except (RuntimeError, AttributeError):
        pass
    ov = _openvino_int8(n)
    if ov is not None:
        fns["openvino"] = ov
    return fns


def _openvino_int8(n: int) -> Kernel | None:
    try:
        import openvino as ov
        import openvino.opset13 as ops
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    p = ops.parameter([n, n], np.float32)
    x = ops.fake_quantize(p, np.float32(0), np.float32(2.55), np.float32(0), np.float32(2.55), 256)
    wq = ops.constant(rng.integers(-127, 128, (n, n)).astype(np.int8))
    w = ops.multiply(ops.convert(wq, np.float32), ops.constant(np.full((n, 1), 0.01, np.float32)))
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(x, w, False, True)], [p]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    xs = rng.random((n, n), dtype=np.float32)
    return lambda: request.infer({0: xs})


def gemm_fns(precision: str, n: int) -> dict[str, Kernel]:
    """The dense ``n x n`` GEMMs of ``precision`` (float32, bfloat16, int8) reachable here, by kernel name."""
    if precision == "int8":
        return int8_gemm_fns(n)
    from ..bench.inference import matmul_fns

    return matmul_fns(torch.device("cpu"), getattr(torch, precision), n)


def gemm_peaks(precisions: list[str], *, n: int = 2048, rounds: int = 3, burst_s: float = 0.1
               ) -> dict[str, dict[str, Any]]:
    """``{precision: {"gflops": peak, "kernel": fastest, "by_kernel": {name: GFLOP/s}}}`` (see the module
    docstring); a precision with no kernel here is left out."""
    from ..bench.inference import _burst_length

    fns = {(p, k): f for p in precisions for k, f in gemm_fns(p, n).items()}
    reps = {key: _burst_length(f, lambda: None, target_s=burst_s) for key, f in fns.items()}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in fns}
    with torch.inference_mode():
        for r in range(rounds):
            for key in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                t0 = time.perf_counter()
                for _ in range(reps[key]):
                    fns[key]()
                times[key].append((time.perf_counter() - t0) / reps[key])
    out: dict[str, dict[str, Any]] = {}
    for (p, k), ts in times.items():
        out.setdefault(p, {"by_kernel": {}})["by_kernel"][k] = round(2 * n ** 3 / statistics.median(ts) / 1e9, 1)
    for p, d in out.items():
        d["kernel"] = max(d["by_kernel"], key=d["by_kernel"].__getitem__)
        d["gflops"] = d["by_kernel"][d["kernel"]]
    return out
