"""``tokshift bench --runtime all``: every installed runtime and precision side by side, in one interleaved run.

Each contender (torch float32 and bfloat16; OpenVINO float32, bfloat16, int8; ONNX Runtime float32, int8) is built
first, then timed round by round, each once per round (:func:`~tokshift_cli.bench.inference.time_interleaved`:
order rotated and reversed between rounds), so other jobs on a shared machine slow all alike; medians. Beside
each: max |logit diff| against torch float32 on the same clips, and the achieved GFLOP/s as a fraction of the
fastest dense GEMM of that precision here (:mod:`.peaks`: aten and oneDNN for float32 and bfloat16; torch's,
oneDNN's and OpenVINO's int8 GEMMs for int8), so no fraction exceeds what the CPU does. int8 is calibrated on
random clips here (speed only: ``tokshift export --precision int8 --calibrate DATA`` checks accuracy).
"""

from __future__ import annotations

import copy
import functools
import statistics
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..bench.inference import count_macs, time_interleaved
from . import RUNTIMES, get_runtime
from .peaks import gemm_peaks

CALIBRATION_CLIPS = 4


def contenders(model: torch.nn.Module, names: Sequence[str], batch: int, *, int8: bool = True,
               progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], list[str]]:
    """``{"runtime precision": callable(clips) -> logits}`` for every installed runtime of ``names`` and each
    precision it offers; and one line per runtime that was skipped (not installed)."""
    from ..models.tokshift import cast_for_inference
    from .build import runtime_model

    say = progress or (lambda m: None)
    out: dict[str, Any] = {}
    skipped = []
    for name in names:
        rt = get_runtime(name)
        why = rt.missing()
        if why is not None:
            skipped.append(why)
            continue
        for p in rt.precisions:
            say(f"preparing {name} {p}")
            if name == "torch":  # as the tool runs it (float32: on the faster GEMM, models.kernels)
                net = cast_for_inference(copy.deepcopy(model), getattr(torch, p))
                out[f"torch {p}"] = net
                if p == "float32" and net.linear_backend != "aten":
                    out["torch float32/aten"] = model  # torch's own float32 path (MKL), round 2's default
            elif p != "int8":
                out[f"{name} {p}"] = runtime_model(model, name, p)
            elif int8:
                out[f"{name} int8"] = random_int8(model, name)
    return out, skipped


def random_int8(model: torch.nn.Module, runtime: str) -> Any:
    """``model`` quantized to int8 by ``runtime`` on random clips: for timing only (its accuracy is unchecked;
    ``tokshift export --precision int8 --calibrate DATA`` is the way to a usable int8 model)."""
    import contextlib
    import io

    from .base import RuntimeModel
    from .cache import converted

    rt = get_runtime(runtime)
    cfg = model.config
    src, sha = converted(model, rt)
    tmp = Path(tempfile.mkdtemp(prefix="tokshift-int8-"))
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(1, cfg.num_frames, 3, cfg.img_size, cfg.img_size, generator=g).numpy()
             for _ in range(CALIBRATION_CLIPS)]
    with contextlib.redirect_stdout(io.StringIO()):
        rt.quantize(src, calib, tmp)
    return RuntimeModel(rt.load(tmp, "int8"), copy.deepcopy(model.head), copy.deepcopy(model.fc_norm), cfg,
                        runtime=runtime, precision="int8", graph_sha256=sha)


def compare_runtimes(model: torch.nn.Module, *, names: Sequence[str] | None = None, batch: int = 1,
                     warmup: int = 1, iters: int = 5, int8: bool = True, gemm_size: int = 2048,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Clips/s and max |logit diff| vs torch float32 of every contender, and its achieved GFLOP/s as a fraction of
    the fastest dense ``gemm_size``^3 GEMM at its precision (:func:`.peaks.gemm_peaks`; see the module
    docstring)."""
    from .auto import cpu_name

    model = model.float().eval()
    cfg = model.config
    nets, skipped = contenders(model, list(names or RUNTIMES), batch, int8=int8, progress=progress)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.num_frames, 3, cfg.img_size, cfg.img_size, generator=g)
    with torch.inference_mode():
        ref = model(x).float()
        diffs = {k: float((net(x).float() - ref).abs().max()) for k, net in nets.items()}
        if progress:
            progress(f"timing {len(nets)} contenders, {warmup} + {iters} rounds")
        times = time_interleaved({k: functools.partial(net, x) for k, net in nets.items()}, iters=iters,
                                 warmup=warmup)
    if progress:
        progress("timing the dense GEMM peaks")
    precisions = sorted({k.split()[1].split("/")[0] for k in nets})
    peaks = gemm_peaks(precisions, n=gemm_size)
    gflops_per_clip = 2 * count_macs(cfg) / 1e9
    base = batch / statistics.median(times["torch float32"]) if "torch float32" in times else None
    rows = []
    for k in nets:
        cps = batch / statistics.median(times[k])
        name, prec = k.split()
        peak = peaks.get(prec.split("/")[0], {}).get("gflops")
        rows.append({"runtime": name, "precision": prec, "clips_per_s": round(cps, 3),
                     "vs_torch_float32": round(cps / base, 3) if base else None,
                     "max_abs_logit_diff": diffs[k], "achieved_gflops": round(gflops_per_clip * cps, 1),
                     "of_gemm_peak": round(gflops_per_clip * cps / peak, 3) if peak else None,
                     "version": get_runtime(name).version()})
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "batch_size": batch, "iters": iters,
            "frames": cfg.num_frames, "img_size": cfg.img_size, "gflops_per_clip": round(gflops_per_clip, 3),
            "gemm_size": gemm_size, "gemm_peak": peaks, "rows": rows, "skipped": skipped,
            "int8_calibration": "random clips (speed only)" if int8 else None,
            "median_of": iters, "numpy": np.__version__}
