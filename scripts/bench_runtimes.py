"""Runtimes side by side (a benchmark, not a test): ViT-B/16 8x224 (random weights) on torch, OpenVINO and ONNX
Runtime in float32, bfloat16 and int8, against OpenVINO running timm's plain ``vit_base_patch16_224`` on the same
8 frames (the shift must stay near-free inside the runtime that runs it).

    .venv/bin/python scripts/bench_runtimes.py                     # ViT-B/16, batch 1, 5 interleaved rounds
    .venv/bin/python scripts/bench_runtimes.py --rounds 8 --shift-forms --json out.json

One process; every contender is built first, then timed round by round (each runs once per round; the order
rotates and reverses between rounds, so none always follows the same one), so other jobs on a shared machine slow
all alike; medians. Beside each: max |logit diff| against torch float32 on
the same clips (the plain ViT's logits are not comparable: another network). int8 is calibrated on random clips
(speed only; the accuracy gate is ``tokshift export --precision int8 --calibrate``). ``--shift-forms`` adds the
ablation of docs/performance.md: the shift written as a ``torch.cat`` of the whole sequence. ``--profile`` prints
where OpenVINO spends the time (its per-node counters, summed by node and kernel type) in the TokShift graph and
in the plain ViT, so the cost of the shift is seen without timing noise.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="tokshift-b16-8x224")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calibration", type=int, default=8, help="random clips NNCF calibrates int8 on")
    ap.add_argument("--shift-forms", action="store_true")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--auto-cost", action="store_true",
                    help="first: time `--runtime auto` deciding on an empty cache, then cached")
    ap.add_argument("--profile", action="store_true",
                    help="also OpenVINO's per-node times (PERF_COUNT), TokShift vs plain ViT, float32 and bfloat16")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    import timm
    import torch.nn.functional as F

    from tokshift_cli.bench.inference import time_interleaved
    from tokshift_cli.models import zoo
    from tokshift_cli.models.tokshift import cast_for_inference, create_model
    from tokshift_cli.runtimes import get_runtime, installed
    from tokshift_cli.runtimes.auto import cpu_name
    from tokshift_cli.runtimes.cache import converted
    from tokshift_cli.runtimes.graph import FrameFeatures, plain_frames
    from tokshift_cli.runtimes.build import runtime_model

    torch.manual_seed(0)
    from tokshift_cli.models.config import TokShiftConfig

    cfg = TokShiftConfig(**zoo.get(a.arch).config_kwargs())
    model = create_model(cfg).eval()
    if a.auto_cost:
        auto_cost(model)
    t = cfg.num_frames
    x = torch.randn(a.batch, t, 3, cfg.img_size, cfg.img_size)
    xn = x.numpy()
    with torch.inference_mode():
        ref = model(x)
    head = model.head

    def logits_of(net):
        def run(_x):
            return head(torch.from_numpy(net(xn))).mean(1)
        return run

    fns: dict[str, tuple] = {}  # name -> (callable, comparable to torch float32?)
    fns["torch float32"] = (lambda _x: model(_x), True)  # torch's own float32 path (aten: MKL), round 2's default
    f32 = cast_for_inference(copy.deepcopy(model), torch.float32)  # the tool's float32 path (models.kernels)
    fns[f"torch float32, {f32.linear_backend} GEMM (the default)"] = (lambda _x: f32(_x), True)
    bf = cast_for_inference(copy.deepcopy(model), torch.bfloat16)
    fns["torch bfloat16"] = (lambda _x: bf(_x), True)
    have = installed()
    tmp = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    calib = [torch.randn(1, t, 3, cfg.img_size, cfg.img_size).numpy() for _ in range(a.calibration)]
    if "onnxruntime" in have:
        fns["onnxruntime float32"] = (runtime_model(model, "onnxruntime", "float32"), True)
    if "openvino" in have:
        ov = get_runtime("openvino")
        for p in ("float32", "bfloat16"):
            fns[f"openvino {p}"] = (runtime_model(model, "openvino", p), True)
        if not a.no_int8:
            src, _ = converted(model, ov)
            (tmp / "q").mkdir()
            ov.quantize(src, calib, tmp / "q")
            fns["openvino int8"] = (logits_of(ov.load(tmp / "q", "int8")), True)
        vit = timm.create_model(f"vit_base_patch{cfg.patch_size}_{cfg.img_size}", pretrained=False).eval()
        (tmp / "plain").mkdir()
        ov.convert(plain_frames(vit), x, tmp / "plain")
        for p, hint in (("float32", "float32"), ("bfloat16", "bfloat16")):
            net = ov.load(tmp / "plain", hint)
            fns[f"openvino plain ViT {p}"] = ((lambda n: (lambda _x: n(xn)))(net), False)
        if not a.no_int8:
            (tmp / "plainq").mkdir()
            ov.quantize(tmp / "plain", calib, tmp / "plainq")
            net = ov.load(tmp / "plainq", "int8")
            fns["openvino plain ViT int8"] = ((lambda n: (lambda _x: n(xn)))(net), False)
        if a.shift_forms:
            from tokshift_cli.runtimes import graph

            fold = cfg.embed_dim // cfg.fold_div

            def cat_shift(h, num_frames, f):
                cls = h[:, 0].reshape(-1, num_frames, h.shape[-1])
                back = F.pad(cls[:, 1:, :f], (0, 0, 0, 1))
                fwd = F.pad(cls[:, :-1, f:2 * f], (0, 0, 1, 0))
                new = torch.cat((back, fwd, cls[..., 2 * f:]), -1).reshape(-1, 1, h.shape[-1])
                return torch.cat((new, h[:, 1:]), 1)

            keep = graph.cls_shift
            graph.cls_shift = cat_shift
            try:
                (tmp / "cat").mkdir()
                ov.convert(FrameFeatures(model, t).eval(), x, tmp / "cat")
            finally:
                graph.cls_shift = keep
            for p in ("float32", "bfloat16"):
                fns[f"openvino {p}, shift as torch.cat of all tokens"] = (logits_of(ov.load(tmp / "cat", p)), True)

    if a.profile and "openvino" in have:
        for p in ("float32", "bfloat16"):
            ov_profile({"tokshift": converted(model, get_runtime("openvino"))[0], "plain ViT": tmp / "plain"}, xn, p)
    diffs: dict[str, float | None] = {}
    with torch.inference_mode():
        for k, (fn, comparable) in fns.items():
            y = fn(x)
            diffs[k] = float((y.float() - ref).abs().max()) if comparable else None
        times = time_interleaved({k: functools.partial(fn, x) for k, (fn, _) in fns.items()}, iters=a.rounds,
                                 warmup=0)  # the logit checks above were the warm-up
    rows = []
    for k in fns:
        cps = a.batch / statistics.median(times[k])
        rows.append({"path": k, "clips_per_s": round(cps, 3), "max_abs_logit_diff": diffs[k]})
    by = {r["path"]: r["clips_per_s"] for r in rows}
    base = by["torch float32"]
    for r in rows:
        r["vs_torch_float32"] = round(r["clips_per_s"] / base, 2)
        prec = r["path"].split(",")[0].split()[-1]
        plain = by.get(f"openvino plain ViT {prec}")
        r["vs_openvino_plain_vit"] = round(r["clips_per_s"] / plain, 3) if plain else None
    doc = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "runtimes": {n: get_runtime(n).version() for n in have}, "arch": a.arch, "batch": a.batch,
           "rounds": a.rounds, "rows": rows}
    print(f"CPU: {doc['cpu']}, {doc['threads']} threads; {doc['runtimes']}; batch {a.batch}, {a.rounds} rounds")
    print("| path | clips/s | vs torch float32 | vs OpenVINO plain ViT (same precision) | max abs logit diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        d = "-" if r["max_abs_logit_diff"] is None else f"{r['max_abs_logit_diff']:.2g}"
        v = "-" if r["vs_openvino_plain_vit"] is None else f"{r['vs_openvino_plain_vit']:.2f}x"
        print(f"| {r['path']} | {r['clips_per_s']:.2f} | {r['vs_torch_float32']:.2f}x | {v} | {d} |")
    if a.json:
        a.json.write_text(json.dumps(doc, indent=2) + "\n")


def auto_cost(model: torch.nn.Module) -> None:
    """What ``--runtime auto`` costs on a machine's first run (an empty cache: the GEMM choice, the conversion,
    the checks and the timing) and on every later run (the cached decision)."""
    import os
    import time

    from tokshift_cli.runtimes import auto

    os.environ["TOKSHIFT_CACHE"] = tempfile.mkdtemp(prefix="bench-auto-")
    try:
        for p in ("float32", "bfloat16"):
            t0 = time.perf_counter()
            chosen = auto.choose(model, p)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            auto.choose(model, p)
            again = time.perf_counter() - t0
            meas = {n: r["clips_per_s"] for n, r in model.auto_choice["measured"].items()}
            print(f"auto {p}: chose {chosen} (measured clips/s at batch 2: {meas}); first run {first:.1f} s"
                  f"{' (incl. conversion)' if p == 'float32' else ' (graph already converted)'}, later runs "
                  f"{again * 1000:.0f} ms", flush=True)
    finally:
        del os.environ["TOKSHIFT_CACHE"]


def ov_profile(folders: dict, xn: np.ndarray, precision: str, runs: int = 5) -> None:
    """OpenVINO's per-node counters (PERF_COUNT) summed by (node type, kernel), per model, mean of ``runs``."""
    import collections

    import openvino as ov

    hint = {"float32": "f32", "bfloat16": "bf16"}[precision]
    core = ov.Core()
    sums = {}
    for name, folder in folders.items():
        compiled = core.compile_model(core.read_model(str(Path(folder) / "model.xml")), "CPU",
                                      {"INFERENCE_PRECISION_HINT": hint, "PERF_COUNT": True})
        req = compiled.create_infer_request()
        req.infer({0: xn})
        agg: collections.Counter = collections.Counter()
        for _ in range(runs):
            req.infer({0: xn})
            for p in req.profiling_info:
                agg[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1000 / runs
        sums[name] = agg
    names = list(folders)
    print(f"OpenVINO {precision}, per-node time summed (ms per call): "
          + ", ".join(f"{n} {sum(sums[n].values()):.1f}" for n in names))
    keys = sorted(set().union(*sums.values()), key=lambda k: -max(s[k] for s in sums.values()))
    for k in keys:
        if max(s[k] for s in sums.values()) >= 0.3:
            print(f"  {k[0]:<18} {k[1]:<24} " + "  ".join(f"{n} {sums[n][k]:7.2f}" for n in names))


if __name__ == "__main__":
    main()
