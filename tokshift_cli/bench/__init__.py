"""Measurement: inference compute, speed with the shift on and off, memory (:mod:`.inference`), and training steps
(:mod:`.training`).

Importing the package is cheap; each name below loads its module on first use, so
``from tokshift_cli.bench import count_model_macs`` keeps working.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "count_model_macs": "inference",
    "count_macs": "inference",
    "device_name": "inference",
    "sync_device": "inference",
    "PeakMemory": "inference",
    "parse_batch_sizes": "inference",
    "resolve_bench_dtype": "inference",
    "cpu_has_native_bf16": "inference",
    "LatencyStats": "inference",
    "BenchRun": "inference",
    "VideoBench": "inference",
    "BenchSetting": "inference",
    "BenchReport": "inference",
    "load_avg": "inference",
    "prepare_model": "inference",
    "plain_twin": "inference",
    "bench_clock": "inference",
    "time_interleaved": "inference",
    "is_out_of_memory": "inference",
    "run_batches": "inference",
    "bench_model": "inference",
    "timm_version": "inference",
    "bench_video": "inference",
    "bench_train": "training",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
