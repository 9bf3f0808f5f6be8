"""``tokshift bench --train``: training steps (forward, loss, backward, optimizer step) of TokShift and of the
same weights without the shift, timed interleaved per precision and batch size; model only, no decoding."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .inference import (BenchSetting, LatencyStats, PeakMemory, bench_clock, device_name, load_avg, plain_twin,
                    run_batches, sync_device, time_interleaved, timm_version)
from ..models.config import TokShiftConfig

__all__ = ["TrainBenchRun", "TrainBenchReport", "bench_train"]


@dataclass
class TrainBenchRun:
    """One precision x batch size: a full training step (forward, loss, backward, SGD step) of TokShift and of
    the same weights without the shift, timed interleaved."""

    batch_size: int
    dtype: str  #: "float32", or the autocast dtype
    frames: int
    img_size: int  #: input size in px (the JSON also carries it as "resolution" until the next release)
    clips_per_s: float | None = None
    step_ms: LatencyStats | None = None
    plain_vit_clips_per_s: float | None = None
    plain_vit_step_ms: LatencyStats | None = None
    shift_step_ratio: float | None = None  #: TokShift step time / plain ViT step time (median of per-round ratios)
    shift_step_ratio_best: float | None = None  #: best TokShift round / best plain round
    peak_mem_mb: float | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resolution"] = self.img_size  # the old key, for one release
        return d


@dataclass
class TrainBenchReport(BenchSetting):
    """Everything ``tokshift bench --train`` measured (``to_dict()`` is the ``--json`` document)."""

    grad_checkpointing: bool = False
    clock: str = "wall"  #: "wall" or "thread_cpu" (CPU time of the calling thread, 1 thread: --cpu-time)
    runs: list[TrainBenchRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["runs"] = [r.to_dict() for r in self.runs]  # with the old "resolution" key, for one release
        d["kind"] = "train"
        return d


def bench_train(model: torch.nn.Module, *, batch_sizes: Sequence[int], dtypes: Sequence[str] = ("float32",),
                frames: int | None = None, warmup: int = 2, iters: int = 10, grad_checkpointing: bool = False,
                cpu_time: bool = False, progress: Callable[[str], None] | None = None) -> TrainBenchReport:
    """Time training steps of ``model`` (a TokShiftViT with ``.config``, float32 weights) per precision and batch
    size: forward under autocast (``dtypes`` other than float32), label-smoothed cross entropy, backward, an SGD
    momentum step, with TokShift and its plain twin (the same parameters, timm's Block) interleaved, so the ratio
    says what the shift costs in training (its backward is a slice copy, like its forward). Model only: no
    decoding or augmentation. ``model``'s weights change (they are trained on random clips). ``cpu_time``: time
    with the calling thread's CPU time (one torch thread and a CPU device; a CPU backward runs in the calling
    thread), which other jobs on a shared machine do not disturb."""
    from timm.loss import LabelSmoothingCrossEntropy

    from ..engine import resolve_dtype

    cfg: TokShiftConfig = model.config
    frames = int(frames or cfg.num_frames)
    device = next(model.parameters()).device
    clock = bench_clock(device, cpu_time)
    say = progress or (lambda _msg: None)
    twin = plain_twin(model)  # shares the parameters: one optimizer steps both
    for net in (model, twin):
        net.train()
        if grad_checkpointing:
            net.set_grad_checkpointing(True)
    # the twin's parameters are other Parameter objects over the same storage: each step updates the set that has
    # gradients (the other is skipped), so both steps include the same optimizer work
    opt = torch.optim.SGD([*model.parameters(), *twin.parameters()], lr=1e-4, momentum=0.9)
    loss_fn = LabelSmoothingCrossEntropy(0.1)
    sync = functools.partial(sync_device, device)
    memory = PeakMemory(device)
    gen = torch.Generator(device="cpu").manual_seed(0)

    def step_fn(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, amp: torch.dtype | None
                ) -> Callable[[], None]:
        def step() -> None:
            ctx = (torch.autocast(device_type=device.type, dtype=amp) if amp is not None
                   else contextlib.nullcontext())
            with ctx:
                logits = net(x)
            loss_fn(logits.float(), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    runs: list[TrainBenchRun] = []
    for name in dtypes:
        amp = resolve_dtype(name, device)

        def measure(b: int) -> TrainBenchRun:
            say(f"training steps: {name}, batch size {b}")
            x = torch.randn(b, frames, 3, cfg.img_size, cfg.img_size, generator=gen).to(device)
            y = torch.randint(0, cfg.num_classes, (b,), generator=gen).to(device)
            memory.reset()
            times = time_interleaved({"tokshift": step_fn(model, x, y, amp), "plain": step_fn(twin, x, y, amp)},
                                     iters=iters, warmup=warmup, sync=sync, clock=clock)
            t_shift, t_plain = statistics.median(times["tokshift"]), statistics.median(times["plain"])
            peak = memory.peak_mb()
            return TrainBenchRun(
                batch_size=b, dtype=name, frames=frames, img_size=cfg.img_size, clips_per_s=round(b / t_shift, 4),
                step_ms=LatencyStats.of(times["tokshift"]), plain_vit_clips_per_s=round(b / t_plain, 4),
                plain_vit_step_ms=LatencyStats.of(times["plain"]),
                shift_step_ratio=round(statistics.median([a / p for a, p in zip(times["tokshift"], times["plain"])]), 4),
                shift_step_ratio_best=round(min(times["tokshift"]) / min(times["plain"]), 4),
                peak_mem_mb=round(peak, 1) if peak is not None else None)

        def failed(b: int, e: BaseException, name: str = name) -> TrainBenchRun:
            opt.zero_grad(set_to_none=True)
            return TrainBenchRun(batch_size=b, dtype=name, frames=frames, img_size=cfg.img_size,
                                 error=f"out of memory at batch size {b} on {device}")

        def cleanup() -> None:
            opt.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

        runs += run_batches(batch_sizes, measure, failed, cleanup)
    report = TrainBenchReport(
        model={}, device=str(device), device_name=device_name(device), threads=torch.get_num_threads(),
        torch_version=torch.__version__, timm_version=timm_version(), warmup=warmup, iters=iters,
        memory_kind=memory.kind, load_avg=load_avg(), grad_checkpointing=grad_checkpointing,
        clock="thread_cpu" if cpu_time else "wall", runs=runs)
    if device.type == "cuda":
        report.notes.append("CUDA path written from torch's documented APIs; not measured by the authors of this "
                            "tool (no GPU on the machine it was developed on)")
    return report
