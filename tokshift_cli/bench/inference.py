"""Measurement: compute per clip, speed with the shift on and off, memory, matmul peak, and where time goes.

Everything here returns data (dataclasses with ``to_dict()``); :mod:`tokshift_cli.cli.bench` renders it. Nothing prints.

How things are measured, and why:

* **Compute** is counted with :class:`torch.utils.flop_counter.FlopCounterMode` on a copy of the architecture on
  the ``meta`` device (shapes only: instant, no weights). torch's counter has no formula for the CPU attention
  kernel (``aten._scaled_dot_product_flash_attention_for_cpu``) and so counts no attention on a CPU; a formula for
  it is passed in (:data:`EXTRA_FLOP_FORMULAS`), so every device counts the two attention matmuls. The papers'
  "GFLOPs" are fvcore counts, which are multiply-accumulates: ``gmacs_per_clip`` follows that convention
  (ViT-B/16 8x224: 140.5, the authors' v2 table says 141) and ``gflops_per_clip`` is twice it. The shift adds
  no FLOPs (it moves values); the count of the same architecture with ``shift=False`` is identical.
* **Time**: the TokShift model, the same weights without the shift (timm's plain ``Block``; the parameters are
  shared, not copied), and a dense ``N x N`` matmul are timed *interleaved*, in rotating order, for ``iters``
  rounds: on a shared machine a background job then slows all of them alike, and the ratios (shift / plain,
  achieved / matmul) stay meaningful. Medians are reported; the shift ratio is the median of per-round ratios.
* **Precision**: ``bfloat16``/``float16`` convert the backbone's weights once
  (:func:`~tokshift_cli.models.tokshift.cast_for_inference`) rather than running ``torch.autocast``, which re-casts
  every weight on every forward pass; ``autocast=True`` measures the autocast way instead.
* **Memory**: CUDA: ``torch.cuda.max_memory_allocated`` (reset per batch size). CPU: the process's peak resident
  set (``VmHWM``, reset per batch size through ``/proc/self/clear_refs`` where Linux allows it), which includes
  the weights and the Python process itself.
* **Out of memory** at one batch size is reported for that batch size and the next one is tried; a batch size
  is never changed silently.

Decoder threads: one per open video (:class:`tokshift_cli.video.reader.VideoReader`'s default; docs/performance.md
says why). ``tokshift bench --video`` shows the decode, preprocessing and model shares of one file's time.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from ..models.config import TokShiftConfig
from ..errors import TokShiftError, UsageError

__all__ = [
    "EXTRA_FLOP_FORMULAS", "LatencyStats", "BenchRun", "VideoBench", "BenchReport", "count_macs",
    "count_model_macs", "parse_batch_sizes", "resolve_bench_dtype", "prepare_model",
    "time_interleaved", "is_out_of_memory", "run_batches", "bench_model", "bench_video", "device_name",
    "PeakMemory", "BenchSetting", "bench_clock", "plain_twin", "sync_device", "timm_version", "load_avg",
]

aten = torch.ops.aten


# --- FLOP counting ------------------------------------------------------------------------------------------


def _sdpa_flops(query_shape: Sequence[int], key_shape: Sequence[int], value_shape: Sequence[int], *args: Any,
                out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of scaled-dot-product attention: ``q @ k^T`` and ``attn @ v`` (2 per multiply-accumulate)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas torch's FlopCounterMode lacks, keyed by op (only those this torch has, none it already counts)."""
    from torch.utils.flop_counter import flop_registry

    extra: dict[Any, Callable[..., int]] = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(aten, name, None)
        if op is not None and op not in flop_registry:
            extra[op] = _sdpa_flops
    return extra


#: Passed as ``custom_mapping`` to FlopCounterMode: torch counts no attention on the CPU without it.
EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = _extra_flop_formulas()


def count_model_macs(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Multiply-accumulates of ``model(x)`` (all of ``x``) and their split by op, counting attention too."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        model(x)
    by_op = {str(k).replace("aten.", ""): v // 2 for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops() // 2, by_op


def count_macs(config: TokShiftConfig, frames: int | None = None, resolution: int | None = None, *,
               shift: bool | None = None) -> int:
    """Multiply-accumulates for one clip (one view) of ``config``'s architecture, fvcore's convention.

    Counted on the meta device (no weights, no time). ``frames``/``resolution`` default to the config's;
    ``shift`` overrides ``config.shift`` (the count does not depend on it: the shift is free).
    """
    from ..models.tokshift import create_model

    cfg = with_overrides(config, frames, resolution, shift)
    model = create_model(cfg, device="meta")
    x = torch.empty(1, cfg.num_frames, 3, cfg.img_size, cfg.img_size, device="meta")
    return count_model_macs(model, x)[0]


def with_overrides(config: TokShiftConfig, frames: int | None, resolution: int | None, shift: bool | None = None
          ) -> TokShiftConfig:
    changes: dict[str, Any] = {}
    if frames is not None:
        changes["num_frames"] = int(frames)
    if resolution is not None:
        changes["img_size"] = int(resolution)
    if shift is not None:
        changes["shift"] = bool(shift)
    cfg = dataclasses.replace(config, **changes) if changes else config
    try:
        cfg.validate()
    except ValueError as e:
        raise UsageError(f"bench: {e}") from None
    return cfg


# --- machine facts ------------------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    """A human name for ``device``: the GPU's name, or the CPU model with its core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} logical CPUs, capability {torch.backends.cpu.get_cpu_capability()})"


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _burst_length(fn: Callable[[], Any], sync: Callable[[], None], *, target_s: float = 0.1, cap: int = 64) -> int:
    """How many calls of ``fn`` take about ``target_s`` (at least 1, at most ``cap``)."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    dt = max(time.perf_counter() - t0, 1e-6)
    return max(1, min(cap, round(target_s / dt)))


def matmul_fns(device: torch.device, dtype: torch.dtype, n: int) -> dict[str, Callable[[], Any]]:
    """A dense ``n x n`` matmul through every GEMM torch can reach here: ``aten`` (``torch.mm``: MKL for float32 on
    a CPU, cuBLAS on CUDA) and, on a CPU with oneDNN, ``onednn`` (the linear op the model's fused layers call,
    its weight packed once).
    The peak is the faster of them, so no roofline fraction exceeds what the CPU does."""
    from ..models.kernels import onednn_linear_available

    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    fns: dict[str, Callable[[], Any]] = {"aten": lambda: torch.mm(a, b, out=out)}
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and onednn_linear_available():
        bt = b.t().contiguous()  # a linear's weight is [out, in]: a @ b == linear(a, b.T)
        try:  # packed once, as the model's EpilogueLinear runs it
            bt = torch.ops.mkldnn._reorder_linear_weight(bt, n)
        except (RuntimeError, AttributeError):
            pass
        fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
    return fns


# --- memory -------------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory over a stretch of work: CUDA max allocated, or the process's peak RSS on a CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # Linux >= 4.0: "5" resets the peak RSS (VmHWM) to the current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.kind = "process_peak_rss_since_start"

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource

            kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return kb / 1024 if platform.system() != "Darwin" else kb / 2 ** 20
        except (ImportError, OSError):
            return None


# --- options ------------------------------------------------------------------------------------------------


def parse_batch_sizes(text: str | Sequence[int]) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (positive, duplicates dropped, order kept)."""
    items = text if not isinstance(text, str) else [p for p in text.replace(" ", "").split(",") if p]
    out: list[int] = []
    for item in items:
        try:
            b = int(item)
        except (TypeError, ValueError):
            raise UsageError(f"--batch-size {text!r}: expected positive integers separated by commas, "
                             "e.g. 1,2,4") from None
        if b < 1:
            raise UsageError(f"--batch-size {text!r}: batch sizes must be >= 1")
        if b not in out:
            out.append(b)
    if not out:
        raise UsageError("--batch-size: give at least one batch size, e.g. 1 or 1,2,4")
    return out


def resolve_bench_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``--dtype`` -> the compute dtype (float16 only on CUDA; ``auto``: float16 on CUDA, bfloat16 on CPUs with
    native bfloat16 (AVX512-BF16 / AMX), else float32)."""
    from ..engine import resolve_dtype

    if dtype == "auto" and device.type != "cuda":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return resolve_dtype(dtype, device) or torch.float32


def cpu_has_native_bf16() -> bool:
    """True when oneDNN can run bfloat16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# --- results ------------------------------------------------------------------------------------------------


@dataclass
class LatencyStats:
    """Latency of one forward pass of a batch, in milliseconds."""

    p50: float
    p95: float
    max: float
    min: float  #: the best round: on a shared machine, the one least disturbed by other jobs

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "LatencyStats":
        ms = sorted(s * 1e3 for s in seconds)
        return cls(p50=round(statistics.median(ms), 3), p95=round(_percentile(ms, 95), 3), max=round(ms[-1], 3),
                   min=round(ms[0], 3))


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values (numpy's default method)."""
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


@dataclass
class BenchRun:
    """One batch size: compute, speed of TokShift and of the same ViT without the shift, memory."""

    batch_size: int
    frames: int
    img_size: int  #: input size in px (the JSON also carries it as "resolution" until the next release)
    params: int
    gmacs_per_clip: float
    gflops_per_clip: float
    clips_per_s: float | None = None
    frames_per_s: float | None = None
    latency_ms: LatencyStats | None = None
    achieved_gflops: float | None = None
    matmul_gflops: float | None = None  #: the fastest dense matmul kernel, measured interleaved with this run
    matmul_kernel: str | None = None  #: which GEMM gave matmul_gflops ("aten": MKL/cuBLAS, or "onednn")
    matmul_gflops_by_kernel: dict[str, float] | None = None
    roofline: float | None = None  #: achieved_gflops / matmul_gflops
    peak_mem_mb: float | None = None
    plain_vit_clips_per_s: float | None = None
    plain_vit_latency_ms: LatencyStats | None = None
    shift_time_ratio: float | None = None  #: TokShift time / plain ViT time (median of per-round ratios)
    shift_time_ratio_best: float | None = None  #: best TokShift round / best plain round
    reference_clips_per_s: float | None = None  #: timm's own VisionTransformer on the same frames (--vs-timm)
    reference_time_ratio: float | None = None  #: TokShift time / timm ViT time (median of per-round ratios)
    reference_time_ratio_best: float | None = None
    error: str | None = None  #: e.g. "out of memory" (then the speed fields are None)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resolution"] = self.img_size  # the old key, for one release
        return d


@dataclass
class VideoBench:
    """Where one video's time goes: decode, preprocess, model, and the whole classify engine."""

    path: str
    views: str
    num_frames: int | None = None
    width: int | None = None
    height: int | None = None
    decoder: str | None = None
    decoded_frames: int | None = None  #: distinct frames the views need
    model_views: int | None = None  #: views the model runs (identical clips computed once)
    decode_s: float | None = None  #: open + decode the needed frames, per video
    decode_frames_per_s: float | None = None
    preprocess_s: float | None = None  #: resize + crops + normalise, per video
    preprocess_frames_per_s: float | None = None
    model_s: float | None = None  #: the model on the video's views, per video
    e2e_s: float | None = None  #: `tokshift classify`'s engine, per video (decode overlapped with the model)
    e2e_videos_per_s: float | None = None
    model_only_videos_per_s: float | None = None
    e2e_vs_model_only: float | None = None  #: e2e videos/s / model-only videos/s (1.0 = decoding is hidden)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class BenchSetting:
    """Where and how a benchmark ran: the fields every ``tokshift bench`` report starts with."""

    model: dict[str, Any]
    device: str
    device_name: str
    threads: int
    torch_version: str
    timm_version: str
    warmup: int
    iters: int
    memory_kind: str
    load_avg: list[float] | None


@dataclass
class BenchReport(BenchSetting):
    """Everything ``tokshift bench`` measured (``to_dict()`` is the ``--json`` document)."""

    dtype: str = "float32"
    precision: str = "float32"  #: "float32", "bfloat16 weights", "bfloat16 autocast", ...
    compiled: bool = False
    matmul_gflops: float | None = None
    matmul_size: int = 0
    linear_backend: str | None = None  #: the GEMM the model's linear layers ran on ("onednn" or "aten")
    runs: list[BenchRun] = field(default_factory=list)
    video: VideoBench | None = None
    compile_s: float | None = None
    clock: str = "wall"  #: "wall" (perf_counter) or "thread_cpu" (CPU time of the calling thread, 1 thread)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["runs"] = [r.to_dict() for r in self.runs]  # with the old "resolution" key, for one release
        return d


def load_avg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other jobs on the machine make timings noisy)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# --- the models ---------------------------------------------------------------------------------------------


def prepare_model(model: torch.nn.Module, *, dtype: torch.dtype, autocast: bool = False,
                  compile: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` ready to time: weights cast (or autocast), optionally compiled; returns ``fn(x) -> logits``.

    ``x`` is float32; a bfloat16/float16 model casts it itself. The returned function runs under
    ``torch.inference_mode`` (and autocast when asked).
    """
    from ..models.tokshift import cast_for_inference, compile_for_inference

    if not autocast:  # float32 too: the linear layers go to oneDNN where it measured faster (models.kernels)
        cast_for_inference(model, dtype)
    if compile:
        compile_for_inference(model)
    device_type = next(model.parameters()).device.type
    use_autocast = autocast and dtype != torch.float32

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if use_autocast:
                with torch.autocast(device_type=device_type, dtype=dtype):
                    return model(x)
            return model(x)

    return fn


def plain_twin(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights (shared tensors, no copy) in the same architecture without the shift."""
    from ..models.tokshift import create_model, load_state_dict_strict

    cfg = dataclasses.replace(model.config, shift=False)
    twin = create_model(cfg, device="meta")
    load_state_dict_strict(twin, model.state_dict(), "plain ViT twin", assign=True)
    return twin


def _timm_reference(config: TokShiftConfig, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """timm's own VisionTransformer with the same backbone (random weights), for a per-frame comparison."""
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
                            depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                            num_classes=config.num_classes, qkv_bias=True)
    return vit.to(device=device, dtype=dtype).eval()


def bench_clock(device: torch.device, cpu_time: bool) -> Callable[[], float]:
    """The clock a benchmark times with: wall time, or with ``cpu_time`` the calling thread's CPU time (which
    other jobs on a shared machine do not disturb; it needs a CPU device and one torch thread)."""
    if cpu_time and (device.type != "cpu" or torch.get_num_threads() != 1):
        raise UsageError("--cpu-time measures the calling thread's CPU time: it needs --device cpu and --threads 1 "
                         f"(now {device}, {torch.get_num_threads()} threads)")
    return time.thread_time if cpu_time else time.perf_counter


def time_interleaved(fns: dict[str, Callable[[], Any]], *, iters: int, warmup: int = 1,
                     sync: Callable[[], None] = lambda: None,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Call every function once per round, ``iters`` rounds; seconds per call by name. Round ``i`` starts at
    the ``i``-th name (rotating) and odd rounds run backwards, so no contender always follows the same one (a
    runtime's worker threads still spinning after its call slow whichever call comes next).

    Interleaving makes a background job on a shared machine slow every contender alike, so ratios between
    them stay meaningful even when absolute times drift. ``clock=time.thread_time`` measures CPU time of the
    calling thread instead of wall time: with one torch thread (all work runs in the caller) it does not count
    the time other jobs hold the core.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
        sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(iters):
        k = i % len(names)
        order = names[k:] + names[:k]
        for name in (order[::-1] if i % 2 else order):
            sync()
            t0 = clock()
            fns[name]()
            sync()
            times[name].append(clock() - t0)
    return times


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA or CPU allocation failure (the only errors a smaller batch size could avoid)."""
    oom_types: tuple[type[BaseException], ...] = (MemoryError,)
    for name in ("OutOfMemoryError",):
        t = getattr(torch, name, None) or getattr(torch.cuda, name, None)
        if isinstance(t, type):
            oom_types += (t,)
    if isinstance(error, oom_types):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                                 or "failed to allocate" in text)


def run_batches(batch_sizes: Iterable[int], measure: Callable[[int], BenchRun],
                on_error: Callable[[int, BaseException], BenchRun],
                cleanup: Callable[[], None] = lambda: None) -> list[BenchRun]:
    """``measure`` each batch size; an out-of-memory error becomes ``on_error``'s run and the next size is tried.

    Every other error propagates. ``cleanup`` runs after a failure (free caches before the next size).
    """
    runs = []
    for b in batch_sizes:
        try:
            runs.append(measure(b))
        except Exception as e:  # noqa: BLE001 - filtered right below
            if not is_out_of_memory(e):
                raise
            del e  # drop the traceback's references to the failed batch's tensors before cleaning up
            gc.collect()
            cleanup()
            runs.append(on_error(b, MemoryError("out of memory")))
    return runs


def _bench_run(b: int, frames: int, img_size: int, params: int, macs: float, times: dict[str, list[float]],
               peak: float | None, mm_reps: dict[str, int], matmul_size: int) -> BenchRun:
    """One batch size's :class:`BenchRun` from the interleaved timings (``times``: seconds per round and name)."""
    t_shift = statistics.median(times["tokshift"])
    run = BenchRun(batch_size=b, frames=frames, img_size=img_size, params=params,
                   gmacs_per_clip=round(macs / 1e9, 3), gflops_per_clip=round(2 * macs / 1e9, 3),
                   clips_per_s=round(b / t_shift, 4), frames_per_s=round(b * frames / t_shift, 3),
                   latency_ms=LatencyStats.of(times["tokshift"]),
                   achieved_gflops=round(2 * macs * b / t_shift / 1e9, 2),
                   peak_mem_mb=round(peak, 1) if peak is not None else None)
    run.matmul_gflops_by_kernel = {k: round(2 * matmul_size ** 3 / (statistics.median(times[f"matmul:{k}"])
                                                                  / mm_reps[k]) / 1e9, 2) for k in mm_reps}
    run.matmul_kernel = max(run.matmul_gflops_by_kernel, key=run.matmul_gflops_by_kernel.__getitem__)
    run.matmul_gflops = run.matmul_gflops_by_kernel[run.matmul_kernel]
    run.roofline = round(run.achieved_gflops / run.matmul_gflops, 4)
    if "plain" in times:
        t_plain = statistics.median(times["plain"])
        run.plain_vit_clips_per_s = round(b / t_plain, 4)
        run.plain_vit_latency_ms = LatencyStats.of(times["plain"])
        run.shift_time_ratio = round(statistics.median(
            [a / p for a, p in zip(times["tokshift"], times["plain"])]), 4)
        run.shift_time_ratio_best = round(min(times["tokshift"]) / min(times["plain"]), 4)
    if "timm" in times:
        run.reference_clips_per_s = round(b / statistics.median(times["timm"]), 4)
        run.reference_time_ratio = round(statistics.median(
            [a / r for a, r in zip(times["tokshift"], times["timm"])]), 4)
        run.reference_time_ratio_best = round(min(times["tokshift"]) / min(times["timm"]), 4)
    return run


def bench_model(model: torch.nn.Module, *, batch_sizes: Sequence[int], frames: int | None = None,
                dtype: torch.dtype = torch.float32, autocast: bool = False, compile: bool = False,
                warmup: int = 2, iters: int = 10, matmul_size: int = 2048, plain: bool = True,
                vs_timm: bool = False, cpu_time: bool = False,
                progress: Callable[[str], None] | None = None) -> BenchReport:
    """Time ``model`` (a TokShiftViT with ``.config``) at each batch size; see the module docstring.

    ``model`` is modified (cast to ``dtype``, compiled). ``plain=False`` skips the shift-off twin; ``vs_timm``
    also times timm's own VisionTransformer (random weights) on the same frames. ``cpu_time``: time with the
    calling thread's CPU time (needs one torch thread and a CPU device: see :func:`time_interleaved`).
    """
    cfg: TokShiftConfig = model.config
    frames = int(frames or cfg.num_frames)
    device = next(model.parameters()).device
    clock = bench_clock(device, cpu_time)
    say = progress or (lambda _msg: None)
    macs = count_macs(cfg, frames, cfg.img_size)
    params = sum(p.numel() for p in model.parameters())
    precision = ("float32" if dtype == torch.float32 else
                 f"{str(dtype).replace('torch.', '')} {'autocast' if autocast else 'weights'}")

    say("preparing the model")
    fn = prepare_model(model, dtype=dtype, autocast=autocast, compile=compile)
    # after the cast: the twin shares the cast tensors (casting it again is a no-op)
    twin = plain_twin(model) if plain else None
    plain_fn = prepare_model(twin, dtype=dtype, autocast=autocast, compile=compile) if twin is not None else None
    ref_model = _timm_reference(cfg, device, dtype if not autocast else torch.float32) if vs_timm else None
    if ref_model is not None and compile:  # compared like for like
        from ..models.tokshift import compile_frozen

        ref_model = compile_frozen(ref_model, device=device)
    sync = functools.partial(sync_device, device)
    mm_fns = matmul_fns(device, dtype, matmul_size)
    mm_reps = {k: _burst_length(f, sync) for k, f in mm_fns.items()}

    def mm_burst(kernel: str) -> Callable[[], None]:
        def burst() -> None:  # one timed sample: enough matmuls for ~0.1 s, so one slow call is not the peak
            for _ in range(mm_reps[kernel]):
                mm_fns[kernel]()
        return burst
    memory = PeakMemory(device)
    compile_s: list[float] = []
    gen = torch.Generator(device="cpu").manual_seed(0)

    def measure(b: int) -> BenchRun:
        say(f"batch size {b}")
        x = torch.randn(b, frames, 3, cfg.img_size, cfg.img_size, generator=gen).to(device)
        fns: dict[str, Callable[[], Any]] = {"tokshift": lambda: fn(x)}
        if plain_fn is not None:
            fns["plain"] = lambda: plain_fn(x)
        if ref_model is not None:
            xr = x.flatten(0, 1).to(dtype if not autocast else torch.float32)

            def ref() -> Any:
                with torch.inference_mode():
                    if autocast and dtype != torch.float32:
                        with torch.autocast(device_type=device.type, dtype=dtype):
                            return ref_model(xr)
                    return ref_model(xr)

            fns["timm"] = ref
        for kernel in mm_fns:
            fns[f"matmul:{kernel}"] = mm_burst(kernel)
        memory.reset()
        if compile:  # the first call of each shape compiles: keep it out of the warm-up timing
            t0 = time.perf_counter()
            for name in ("tokshift", "plain", "timm"):
                if name in fns:
                    fns[name]()
            sync()
            compile_s.append(time.perf_counter() - t0)
        times = time_interleaved(fns, iters=iters, warmup=warmup, sync=sync, clock=clock)
        peak = memory.peak_mb()
        return _bench_run(b, frames, cfg.img_size, params, macs, times, peak, mm_reps, matmul_size)

    def failed(b: int, e: BaseException) -> BenchRun:
        return BenchRun(batch_size=b, frames=frames, img_size=cfg.img_size, params=params,
                        gmacs_per_clip=round(macs / 1e9, 3), gflops_per_clip=round(2 * macs / 1e9, 3),
                        error=f"out of memory at batch size {b} on {device}")

    def cleanup() -> None:
        if device.type == "cuda":
            torch.cuda.empty_cache()

    runs = run_batches(batch_sizes, measure, failed, cleanup)
    ok = [r.matmul_gflops for r in runs if r.matmul_gflops]
    report = BenchReport(
        model={}, device=str(device), device_name=device_name(device),
        dtype=str(dtype).replace("torch.", ""), precision=precision, compiled=compile,
        threads=torch.get_num_threads(), torch_version=torch.__version__, timm_version=timm_version(),
        matmul_gflops=round(statistics.median(ok), 2) if ok else None, matmul_size=matmul_size,
        warmup=warmup, iters=iters, memory_kind=memory.kind, load_avg=load_avg(), runs=runs,
        compile_s=round(sum(compile_s), 2) if compile_s else None, clock="thread_cpu" if cpu_time else "wall",
        linear_backend=getattr(model, "linear_backend", None))
    if device.type == "cuda":
        report.notes.append("CUDA path written from torch's documented APIs; not measured by the authors of this "
                            "tool (no GPU on the machine it was developed on)")
    return report


def timm_version() -> str:
    try:
        import timm

        return timm.__version__
    except ImportError:  # pragma: no cover - timm is a dependency
        return "?"


# --- a video: decode, preprocess, model, end to end ---------------------------------------------------------


def bench_video(path: str, model: torch.nn.Module, *, views: str = "1x1", dtype: str = "float32",
                iters: int = 3, batch_size: int | None = None, decoder: str = "auto",
                forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> VideoBench:
    """Where the time of classifying ``path`` goes: decode only, preprocessing only, the model on the video's
    views, and the classify engine end to end (``iters`` copies of the file, decode overlapped with the model).

    ``model`` needs ``.config``; ``forward`` (default ``model``) is the prepared forward (see
    :func:`prepare_model`); ``dtype`` is what the classify engine gets (``--dtype`` of ``tokshift classify``).
    """
    from ..engine import ClassifyOptions, ViewSpec, classify, finish_video
    from ..video.sampling import Views
    from ..video.workers import decode_clips

    cfg = model.config
    v = Views.parse(views)
    spec = ViewSpec.for_model(cfg, v)
    out = VideoBench(path=str(path), views=str(v))
    forward = forward or model
    device = next(model.parameters()).device
    try:
        decode_times, prep_times = [], []
        for _ in range(max(1, iters)):  # the two halves of the classify engine's work on one video, timed apart
            t0 = time.perf_counter()
            d = decode_clips(0, str(path), decoder=decoder, **spec.decode_kwargs())
            decode_times.append(time.perf_counter() - t0)
            if d.error is not None:
                out.error = d.error
                return out
            t0 = time.perf_counter()
            prepared = finish_video(d, spec, device=device)
            sync_device(device)
            prep_times.append(time.perf_counter() - t0)
            if prepared.error is not None:
                out.error = prepared.error
                return out
        views_t = prepared.views
        out.num_frames, out.width, out.height = (int(d.meta[k]) for k in ("num_frames", "width", "height"))
        out.decoder = d.decoder
        needed = d.needed
        out.decoded_frames = int(len(needed))
        out.model_views = int(views_t.shape[0])
        out.decode_s = round(statistics.median(decode_times), 4)
        out.decode_frames_per_s = round(out.decoded_frames / out.decode_s, 2)
        out.preprocess_s = round(statistics.median(prep_times), 4)
        out.preprocess_frames_per_s = round(out.decoded_frames / out.preprocess_s, 2)

        bs = batch_size or out.model_views
        model_times = []
        for i in range(max(1, iters) + 1):
            t0 = time.perf_counter()
            with torch.inference_mode():
                for s in range(0, views_t.shape[0], bs):
                    forward(views_t[s:s + bs])
            sync_device(device)
            if i:  # the first pass is a warm-up
                model_times.append(time.perf_counter() - t0)
        out.model_s = round(statistics.median(model_times), 4)
        out.model_only_videos_per_s = round(1 / out.model_s, 4)

        n = max(2, iters)
        opts = ClassifyOptions(views=v, batch_size=bs, dtype=dtype, decoder=decoder)
        t0 = time.perf_counter()
        results = classify(model, [str(path)] * n, opts)
        total = time.perf_counter() - t0
        errors = [r["error"] for r in results if r.get("error")]
        if errors:
            out.error = errors[0]
        out.e2e_s = round(total / n, 4)
        out.e2e_videos_per_s = round(n / total, 4)
        out.e2e_vs_model_only = round(out.e2e_videos_per_s / out.model_only_videos_per_s, 4)
    except TokShiftError as e:
        out.error = str(e)
    return out


_with = with_overrides  # the old name, for code written against it
