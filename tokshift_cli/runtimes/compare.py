"""``tokshift bench --runtime all``: every installed runtime and precision side by side, in one interleaved run.

Each contender (torch float32 and bfloat16; OpenVINO float32, bfloat16, int8; ONNX Runtime float32, int8) is built
first, then timed round by round, each once per round in turn, so other jobs on a shared machine slow all alike;
medians. Beside each: max |logit diff| against torch float32 on the same clips. int8 is calibrated on random
clips here (speed only: ``tokshift export --precision int8 --calibrate DATA`` checks accuracy).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import RUNTIMES, get_runtime

CALIBRATION_CLIPS = 4


def contenders(model: torch.nn.Module, names: Sequence[str], batch: int, *, int8: bool = True,
               progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], list[str]]:
    """``{"runtime precision": callable(clips) -> logits}`` for every installed runtime of ``names`` and each
    precision it offers; and one line per runtime that was skipped (not installed)."""
    from ..models.tokshift import cast_for_inference
    from .base import RuntimeModel
    from .cache import converted
    from .build import runtime_model

    say = progress or (lambda m: None)
    cfg = model.config
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
                src, sha = converted(model, rt)
                tmp = Path(tempfile.mkdtemp(prefix="tokshift-int8-"))
                g = torch.Generator().manual_seed(1)
                calib = [torch.randn(1, cfg.num_frames, 3, cfg.img_size, cfg.img_size, generator=g).numpy()
                         for _ in range(CALIBRATION_CLIPS)]
                import contextlib
                import io

                with contextlib.redirect_stdout(io.StringIO()):
                    rt.quantize(src, calib, tmp)
                out[f"{name} int8"] = RuntimeModel(rt.load(tmp, "int8"), copy.deepcopy(model.head),
                                                   copy.deepcopy(model.fc_norm), cfg, runtime=name,
                                                   precision="int8", graph_sha256=sha)
    return out, skipped


def compare_runtimes(model: torch.nn.Module, *, names: Sequence[str] | None = None, batch: int = 1,
                     warmup: int = 1, iters: int = 5, int8: bool = True,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Clips/s and max |logit diff| vs torch float32 of every contender (see the module docstring)."""
    from .auto import cpu_name

    model = model.float().eval()
    cfg = model.config
    nets, skipped = contenders(model, list(names or RUNTIMES), batch, int8=int8, progress=progress)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.num_frames, 3, cfg.img_size, cfg.img_size, generator=g)
    times: dict[str, list[float]] = {k: [] for k in nets}
    with torch.inference_mode():
        ref = model(x).float()
        diffs = {k: float((net(x).float() - ref).abs().max()) for k, net in nets.items()}
        for r in range(warmup + iters):
            if progress:
                progress(f"round {r + 1}/{warmup + iters}")
            for k, net in nets.items():
                t0 = time.perf_counter()
                net(x)
                if r >= warmup:
                    times[k].append(time.perf_counter() - t0)
    base = batch / statistics.median(times["torch float32"]) if "torch float32" in times else None
    rows = []
    for k in nets:
        cps = batch / statistics.median(times[k])
        name, prec = k.split()
        rows.append({"runtime": name, "precision": prec, "clips_per_s": round(cps, 3),
                     "vs_torch_float32": round(cps / base, 3) if base else None,
                     "max_abs_logit_diff": diffs[k],
                     "version": get_runtime(name).version()})
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "batch_size": batch, "iters": iters,
            "frames": cfg.num_frames, "img_size": cfg.img_size, "rows": rows, "skipped": skipped,
            "int8_calibration": "random clips (speed only)" if int8 else None,
            "median_of": iters, "numpy": np.__version__}
