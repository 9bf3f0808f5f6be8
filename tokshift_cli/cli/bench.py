"""`tokshift bench`: parse, call :mod:`tokshift_cli.bench`, render. Torch loads only when the command runs."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from .options import JsonOpt
from .app import (DeviceOpt, EXIT_FAILED_INPUTS, EXIT_OK, NamespaceOpt, RevisionOpt, _escape, app, run_guarded, say,
                  stderr, stdout)
from ..errors import TokShiftError, UsageError

DEFAULT_ARCH = "tokshift-b16-8x224"


@app.command()
def bench(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Benchmark these weights (zoo name, Hub "
                                                 "repo, folder, .safetensors): downloads like classify.",
                                                 show_default=False)] = None,
    arch: Annotated[Optional[str], typer.Option(help="Zoo architecture with random weights (no download). "
                                                f"Default {DEFAULT_ARCH} when --model is not given.",
                                                show_default=False)] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Frames per clip (default: the model's).",
                                                  show_default=False)] = None,
    img_size: Annotated[Optional[int], typer.Option("--img-size", min=16, help="Input size in pixels (default: the "
                                                    "model's; --arch only).", show_default=False)] = None,
    resolution: Annotated[Optional[int], typer.Option("--resolution", min=16, hidden=True, show_default=False,
                                                      help="Deprecated: --img-size.")] = None,
    batch_size: Annotated[str, typer.Option(help="Clips per forward pass, comma-separated: each is measured.")
                          ] = "1",
    device: DeviceOpt = "auto",
    dtype: Annotated[Optional[str], typer.Option(
        help="float32, bfloat16 (weights cast once), float16 (CUDA), or auto (float16 on CUDA, bfloat16 on CPUs with "
             "native bfloat16). With --train: autocast precisions, comma-separated (default float32,bfloat16).",
        show_default="float32")] = None,
    autocast: Annotated[bool, typer.Option(help="Use torch.autocast for bfloat16/float16 instead of casting the "
                                           "weights (slower on CPUs: every weight is re-cast per call).")] = False,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the model (Inductor; on CPUs with "
                                          "freezing). The first call per batch size compiles (tens of s).")
                       ] = False,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed rounds before timing.")] = 2,
    iters: Annotated[int, typer.Option(min=1, help="Timed rounds (each runs TokShift, the plain ViT and the "
                                       "matmul once, interleaved).")] = 10,
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch CPU threads (default: torch's choice).",
                                                   show_default=False)] = None,
    vs_timm: Annotated[bool, typer.Option("--vs-timm", help="Also time timm's own VisionTransformer on the "
                                          "same frames.")] = False,
    cpu_time: Annotated[bool, typer.Option("--cpu-time", help="Time with the calling thread's CPU time instead "
                                           "of wall time (needs --threads 1): ratios that other jobs on a shared "
                                           "machine do not disturb.")] = False,
    video: Annotated[Optional[str], typer.Option(help="Also measure decode, preprocessing and end-to-end "
                                                 "classify throughput on this video file.",
                                                 show_default=False)] = None,
    views: Annotated[str, typer.Option(help="CLIPSxCROPS for --video (as classify).")] = "1x1",
    train: Annotated[bool, typer.Option("--train", help="Time training steps instead (forward, backward, SGD step; "
                                        "model only): clips/s, step latency, peak memory, TokShift vs plain ViT, "
                                        "per precision.")] = False,
    grad_checkpointing: Annotated[bool, typer.Option(help="--train: recompute activations in the backward pass.")
                                  ] = False,
    revision: RevisionOpt = None,
    hub_namespace: NamespaceOpt = None,
    json_out: JsonOpt = False,
    runtime: Annotated[Optional[str], typer.Option(
        help="all: every installed runtime and precision side by side (torch, openvino, onnxruntime; float32, "
             "bfloat16, int8), interleaved, with max |logit diff| vs torch float32; or one runtime's precisions.",
        show_default=False)] = None,
) -> None:
    """Speed, compute (GMACs with attention) and memory of TokShift vs the same ViT without the shift."""

    if resolution is not None:
        say("warning: --resolution is deprecated and goes in the next release: use --img-size", style="yellow")
    size = img_size if img_size is not None else resolution

    def body() -> int:
        if runtime is not None:
            return _runtimes(runtime, model=model, arch=arch, frames=frames, resolution=size,
                             batch_size=batch_size, warmup=warmup, iters=iters, threads=threads, json_out=json_out,
                             revision=revision, hub_namespace=hub_namespace)
        if train:
            report = _train_bench(model=model, arch=arch, frames=frames, resolution=size,
                                  batch_size=batch_size, device=device, dtype=dtype, warmup=warmup, iters=iters,
                                  threads=threads, grad_checkpointing=grad_checkpointing, cpu_time=cpu_time,
                                  revision=revision, hub_namespace=hub_namespace)
        else:
            report = _run(model=model, arch=arch, frames=frames, resolution=size, batch_size=batch_size,
                          device=device, dtype=dtype or "float32", autocast=autocast, compile=compile,
                          warmup=warmup, iters=iters, threads=threads, vs_timm=vs_timm, cpu_time=cpu_time,
                          video=video, views=views, revision=revision, hub_namespace=hub_namespace)
        doc = report.to_dict()
        if json_out:
            from ..outputs import to_json

            sys.stdout.write(to_json(doc) + "\n")
            sys.stdout.flush()
        else:
            (render_train if train else render)(doc)
        failed = [r for r in doc["runs"] if r.get("error")]
        for r in failed:
            say(f"{r['dtype'] + ', ' if train else ''}batch size {r['batch_size']}: {r['error']}")
        if doc.get("video") and doc["video"].get("error"):
            say(f"{doc['video']['path']}: {doc['video']['error']}")
            return EXIT_FAILED_INPUTS
        return EXIT_FAILED_INPUTS if failed else EXIT_OK

    run_guarded(body)


def _run(*, model: str | None, arch: str | None, frames: int | None, resolution: int | None, batch_size: str,
         device: str, dtype: str, autocast: bool, compile: bool, warmup: int, iters: int, threads: int | None,
         vs_timm: bool, cpu_time: bool, video: str | None, views: str, revision: str | None,
         hub_namespace: str | None) -> Any:
    from ..video.sampling import Views

    if model and arch:
        raise UsageError("give --model (weights) or --arch (random weights), not both")
    if video is not None:
        Views.parse(views)  # a usage error before any work
    import torch

    from ..bench import inference as B
    from ..engine import resolve_device

    batch_sizes = B.parse_batch_sizes(batch_size)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    compute_dtype = B.resolve_bench_dtype(dtype, dev)
    with stderr.status("loading the model", spinner="dots") as status:
        net, info = _build(model, arch, frames, resolution, dev, revision, hub_namespace)
        try:
            report = B.bench_model(net, batch_sizes=batch_sizes, frames=frames, dtype=compute_dtype,
                                   autocast=autocast, compile=compile, warmup=warmup, iters=iters,
                                   vs_timm=vs_timm, cpu_time=cpu_time, progress=lambda m: status.update(m))
        except Exception as e:
            if compile and _is_compile_error(e):
                raise TokShiftError(f"--compile failed ({type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
                                    "); Inductor on the CPU needs a C++ compiler. Run without --compile") from None
            raise
        report.model = info
        if video is not None:
            status.update(f"timing {video}")
            report.video = B.bench_video(video, net, views=views, dtype=str(compute_dtype).replace("torch.", ""),
                                         iters=max(2, min(iters, 5)), batch_size=batch_sizes[0])
    return report


def _runtimes(name: str, *, model: str | None, arch: str | None, frames: int | None, resolution: int | None,
              batch_size: str, warmup: int, iters: int, threads: int | None, json_out: bool, revision: str | None,
              hub_namespace: str | None) -> int:
    """``bench --runtime all|NAME``: runtimes and precisions side by side (:mod:`tokshift_cli.runtimes.compare`)."""
    import torch

    from .. import bench as B
    from ..runtimes import RUNTIMES
    from ..runtimes.compare import compare_runtimes

    if name != "all" and name not in RUNTIMES:
        raise UsageError(f"--runtime {name!r}: bench takes all or one of {', '.join(RUNTIMES)}")
    if model and arch:
        raise UsageError("give --model (weights) or --arch (random weights), not both")
    if threads:
        torch.set_num_threads(threads)
    batch = B.parse_batch_sizes(batch_size)[0]
    with stderr.status("loading the model", spinner="dots") as status:
        net, info = _build(model, arch, frames, resolution, torch.device("cpu"), revision, hub_namespace)
        names = list(RUNTIMES) if name == "all" else (["torch", name] if name != "torch" else ["torch"])
        doc = compare_runtimes(net, names=names, batch=batch, warmup=warmup, iters=iters,
                               progress=lambda m: status.update(m))
    doc["model"] = info
    if json_out:
        from ..outputs import to_json

        sys.stdout.write(to_json(doc) + "\n")
        sys.stdout.flush()
    else:
        from rich.table import Table

        versions = ", ".join(dict.fromkeys(f"{r['runtime']} {r['version']}" for r in doc["rows"]))
        stdout.print(_escape(f"{doc['cpu']}, {doc['threads']} threads; {versions}; batch {batch}, median of {iters} "
                             "interleaved rounds; logit diff: max |diff| vs torch float32"), style="dim",
                     highlight=False)
        t = Table(show_edge=False, pad_edge=False)
        for col in ("runtime", "precision", "clips/s", "vs torch float32", "GFLOP/s", "of GEMM peak",
                    "logit diff"):
            t.add_column(col, justify="left" if col in ("runtime", "precision") else "right",
                         no_wrap=col in ("runtime", "precision"), min_width=12 if col == "precision" else None)
        for r in doc["rows"]:
            t.add_row(r["runtime"], r["precision"], f"{r['clips_per_s']:.2f}",
                      f"{r['vs_torch_float32']:.2f}x", f"{r['achieved_gflops']:.0f}",
                      _f(r["of_gemm_peak"] and 100 * r["of_gemm_peak"], "{:.0f}%"), f"{r['max_abs_logit_diff']:.2g}")
        stdout.print(t)
        peaks = "; ".join(f"{p} {d['gflops']:.0f} ({d['kernel']})" for p, d in doc["gemm_peak"].items())
        stdout.print(_escape(f"GEMM peak ({doc['gemm_size']}^3, the fastest kernel per precision): {peaks}"),
                     style="dim", highlight=False)
    for line in doc["skipped"]:
        say(f"skipped: {line}")
    return EXIT_OK


def _train_bench(*, model: str | None, arch: str | None, frames: int | None, resolution: int | None,
                 batch_size: str, device: str, dtype: str | None, warmup: int, iters: int, threads: int | None,
                 grad_checkpointing: bool, cpu_time: bool, revision: str | None, hub_namespace: str | None) -> Any:
    """``tokshift bench --train``: training step time per precision and batch size, TokShift vs plain ViT."""
    if model and arch:
        raise UsageError("give --model (weights) or --arch (random weights), not both")
    import torch

    from ..bench import inference as B
    from ..bench.training import bench_train
    from ..engine import resolve_device, resolve_dtype

    batch_sizes = B.parse_batch_sizes(batch_size)
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    names = [d.strip() for d in (dtype or "float32,bfloat16").split(",") if d.strip()]
    dtypes = []
    for name in names:
        resolved = resolve_dtype(name, dev)  # a UsageError for float16 on a CPU, an unknown name
        dtypes.append("float32" if resolved is None else str(resolved).replace("torch.", ""))
    with stderr.status("loading the model", spinner="dots") as status:
        net, info = _build(model, arch, frames, resolution, dev, revision, hub_namespace)
        net.float()
        report = bench_train(net, batch_sizes=batch_sizes, dtypes=list(dict.fromkeys(dtypes)), frames=frames,
                             warmup=warmup, iters=iters, grad_checkpointing=grad_checkpointing, cpu_time=cpu_time,
                             progress=lambda m: status.update(m))
    report.model = info
    return report


def render_train(doc: dict[str, Any]) -> None:
    """``bench --train`` as a rich table on stdout: one column per precision x batch size."""
    from rich.table import Table

    m = doc["model"]
    stdout.print(f"[bold]{_escape(str(m.get('ref')))}[/] ({m.get('weights')} weights): training steps of ViT "
                 f"d{m.get('embed_dim')} x{m.get('depth')}, {m.get('img_size')} px"
                 f"{', gradient checkpointing' if doc.get('grad_checkpointing') else ''}", highlight=False)
    load = doc.get("load_avg")
    stdout.print(_escape(f"{doc['device_name']} [{doc['device']}], {doc['threads']} threads; torch "
                         f"{doc['torch_version']}, timm {doc['timm_version']}"
                         + (f"; load average {load[0]:.2f}" if load else "")), style="dim", highlight=False)
    runs = doc["runs"]
    t = Table(show_edge=False, pad_edge=False)
    t.add_column("precision / batch", no_wrap=True)
    for r in runs:
        t.add_column(f"{r['dtype']} / {r['batch_size']}", justify="right", no_wrap=True)
    fp32 = {r["batch_size"]: r for r in runs if r["dtype"] == "float32" and not r.get("error")}

    def row(label: str, get: Any) -> None:
        def cell(r: dict[str, Any]) -> str:
            if r.get("error"):  # the error once, in the clips/s row
                return f"[red]{_escape(r['error'])}[/]" if label == "clips/s" else ""
            return get(r)

        t.add_row(label, *[cell(r) for r in runs])

    row("frames x px", lambda r: f"{r['frames']}x{r['img_size']}")
    row("clips/s", lambda r: _f(r["clips_per_s"], "{:.3f}"))
    row("step p50 ms", lambda r: _f((r.get("step_ms") or {}).get("p50"), "{:.1f}"))
    row("step best ms", lambda r: _f((r.get("step_ms") or {}).get("min"), "{:.1f}"))
    row("plain ViT clips/s", lambda r: _f(r["plain_vit_clips_per_s"], "{:.3f}"))
    row("TokShift / plain time", lambda r: _f(r["shift_step_ratio"], "{:.3f}"))
    row("  best / best", lambda r: _f(r["shift_step_ratio_best"], "{:.3f}"))
    row("vs float32 speed", lambda r: _f(r["clips_per_s"] / fp32[r["batch_size"]]["clips_per_s"], "{:.2f}x")
        if r["batch_size"] in fp32 else "-")
    row("peak memory MB", lambda r: _f(r["peak_mem_mb"], "{:.0f}"))
    stdout.print(t)
    stdout.print(f"A step: forward (autocast for bfloat16/float16), loss, backward, SGD step; no decoding. "
                 f"TokShift/plain: time ratio to the same weights without the shift. peak MB: "
                 f"{doc['memory_kind'].replace('_', ' ')}.", style="dim", highlight=False)
    if doc.get("clock") == "thread_cpu":
        stdout.print("times are CPU time of the calling thread (--cpu-time, 1 thread)", style="dim")
    for note in doc.get("notes") or []:
        stdout.print(_escape(note), style="dim")


def _is_compile_error(e: BaseException) -> bool:
    mod = type(e).__module__ or ""
    return mod.startswith(("torch._dynamo", "torch._inductor")) or "InductorError" in type(e).__name__


def _build(model: str | None, arch: str | None, frames: int | None, resolution: int | None, dev: Any,
           revision: str | None, hub_namespace: str | None) -> tuple[Any, dict[str, Any]]:
    """(model on ``dev`` with ``.config``, the JSON record of what it is)."""
    from ..bench import inference as B
    from ..models.config import TokShiftConfig

    if model:
        from .app import load_for_inference
        from ..models.weights import model_info_line

        net = load_for_inference(model, revision, hub_namespace, str(dev))
        if resolution is not None and resolution != net.config.img_size:
            raise UsageError(f"--img-size {resolution}: {model} takes {net.config.img_size} px inputs (its "
                             "position embeddings are fixed); use --arch for other sizes with random weights")
        info = {**model_info_line(net.resolved), "weights": "loaded"}
    else:
        from ..models import zoo
        from ..models.tokshift import create_model

        name = arch or DEFAULT_ARCH
        entry = zoo.get(name)
        cfg = B.with_overrides(TokShiftConfig(**entry.config_kwargs()), frames, resolution)
        import torch

        torch.manual_seed(0)
        net = create_model(cfg, device=dev)
        info = {"ref": name, "kind": "arch", "zoo_name": name, "weights": "random",
                "gmacs_v2_table": entry.gmacs_v2 if resolution is None and frames is None else None}
    c = net.config
    info.update({"embed_dim": c.embed_dim, "depth": c.depth, "num_heads": c.num_heads, "patch_size": c.patch_size,
                 "img_size": c.img_size, "fold_div": c.fold_div, "shift": c.shift})
    return net, info


# --- rendering --------------------------------------------------------------------------------------------------


def _f(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def render(doc: dict[str, Any]) -> None:
    """The report as rich tables on stdout."""
    from rich.table import Table

    m = doc["model"]
    stdout.print(f"[bold]{_escape(str(m.get('ref')))}[/] ({m.get('weights')} weights): "
                 f"ViT d{m.get('embed_dim')} x{m.get('depth')}, {m.get('img_size')} px, "
                 f"shift {'on' if m.get('shift') else 'off'} (fold_div {m.get('fold_div')})", highlight=False)
    load = doc.get("load_avg")
    stdout.print(_escape(
        f"{doc['device_name']} [{doc['device']}], {doc['threads']} threads, {doc['precision']}"
        f"{', compiled' if doc['compiled'] else ''}; torch {doc['torch_version']}, timm {doc['timm_version']}; "
        f"dense {doc['matmul_size']}^3 matmul {_f(doc['matmul_gflops'], '{:.0f}')} GFLOP/s"
        + (f"; linear layers on {doc['linear_backend']}" if doc.get("linear_backend") else "")
        + (f"; load average {load[0]:.2f}" if load else "")), style="dim", highlight=False)
    right = {"justify": "right", "no_wrap": True}
    # one column per batch size: fits a narrow terminal whatever the number of metrics
    t = Table(title_justify="left", show_edge=False, pad_edge=False)
    t.add_column("batch size", no_wrap=True)
    for r in doc["runs"]:
        t.add_column(str(r["batch_size"]), **right)
    runs = doc["runs"]

    def row(label: str, get: Any) -> None:
        cells = []
        for r in runs:
            if r.get("error"):
                cells.append(f"[red]{_escape(r['error'])}[/]" if label == "clips/s" else "")
            else:
                cells.append(get(r))
        t.add_row(label, *cells)

    def always(label: str, get: Any) -> None:
        t.add_row(label, *[get(r) for r in runs])

    def lat(r: dict[str, Any], key: str, which: str = "latency_ms") -> str:
        return _f((r.get(which) or {}).get(key), "{:.1f}")

    always("frames x px", lambda r: f"{r['frames']}x{r['img_size']}")
    always("GMACs / clip", lambda r: _f(r["gmacs_per_clip"], "{:.1f}"))
    always("params (M)", lambda r: _f(r["params"] / 1e6, "{:.1f}"))
    row("clips/s", lambda r: _f(r["clips_per_s"], "{:.3f}"))
    row("frames/s", lambda r: _f(r["frames_per_s"], "{:.1f}"))
    row("latency p50 ms", lambda r: lat(r, "p50"))
    row("latency p95 ms", lambda r: lat(r, "p95"))
    row("latency max ms", lambda r: lat(r, "max"))
    row("latency best ms", lambda r: lat(r, "min"))
    row("achieved GFLOP/s", lambda r: _f(r["achieved_gflops"], "{:.0f}"))
    row("matmul GFLOP/s", lambda r: _f(r["matmul_gflops"], "{:.0f}") + (f" ({r['matmul_kernel']})"
                                                                        if r.get("matmul_kernel") else ""))
    row("of matmul peak", lambda r: _f(r["roofline"] and 100 * r["roofline"], "{:.0f}%"))
    if any(r.get("plain_vit_clips_per_s") is not None for r in runs):
        row("plain ViT clips/s", lambda r: _f(r["plain_vit_clips_per_s"], "{:.3f}"))
        row("TokShift / plain time", lambda r: _f(r["shift_time_ratio"], "{:.3f}"))
        row("  best / best", lambda r: _f(r["shift_time_ratio_best"], "{:.3f}"))
    if any(r.get("reference_time_ratio") is not None for r in runs):
        row("timm ViT clips/s", lambda r: _f(r["reference_clips_per_s"], "{:.3f}"))
        row("TokShift / timm time", lambda r: _f(r["reference_time_ratio"], "{:.3f}"))
        row("  best / best ", lambda r: _f(r["reference_time_ratio_best"], "{:.3f}"))
    row("peak memory MB", lambda r: _f(r["peak_mem_mb"], "{:.0f}"))
    stdout.print(t)
    stdout.print(f"GMACs: multiply-accumulates per clip incl. attention (fvcore's convention; GFLOPs = 2x). "
                 f"shift/plain: time ratio to the same weights without the shift. peak MB: "
                 f"{doc['memory_kind'].replace('_', ' ')}.", style="dim", highlight=False)
    if doc.get("compile_s"):
        stdout.print(f"compilation: {doc['compile_s']:.1f} s (not in the timings)", style="dim")
    if doc.get("clock") == "thread_cpu":
        stdout.print("times are CPU time of the calling thread (--cpu-time, 1 thread)", style="dim")
    v = doc.get("video")
    if v:
        stdout.print()
        from .render import video_heading

        stdout.print(video_heading(v["path"]).append(f" ({v['views']} views)", style="dim"), soft_wrap=True)
        vt = Table(show_edge=False, pad_edge=False)
        for c in ("stage", "s / video", "rate"):
            vt.add_column(c, **(right if c != "stage" else {}))
        if v.get("decode_s") is not None:
            vt.add_row(f"decode ({v['decoded_frames']} frames, {v['decoder']})", _f(v["decode_s"], "{:.3f}"),
                       f"{_f(v['decode_frames_per_s'], '{:.0f}')} frames/s")
            vt.add_row("preprocess (resize, crops, normalise)", _f(v["preprocess_s"], "{:.3f}"),
                       f"{_f(v['preprocess_frames_per_s'], '{:.0f}')} frames/s")
        if v.get("model_s") is not None:
            vt.add_row(f"model ({v['model_views']} views)", _f(v["model_s"], "{:.3f}"),
                       f"{_f(v['model_only_videos_per_s'], '{:.3f}')} videos/s")
        if v.get("e2e_s") is not None:
            vt.add_row("classify end to end", _f(v["e2e_s"], "{:.3f}"),
                       f"{_f(v['e2e_videos_per_s'], '{:.3f}')} videos/s "
                       f"({_f(v['e2e_vs_model_only'] and 100 * v['e2e_vs_model_only'], '{:.0f}%')} of model-only)")
        stdout.print(vt)
    for note in doc.get("notes") or []:
        stdout.print(_escape(note), style="dim")
