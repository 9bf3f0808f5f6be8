"""Which GEMM runs the model's linear layers on this CPU: aten's (MKL for float32) or oneDNN's.

torch sends a float32 ``F.linear`` to MKL, whose speed on the ViT's shapes depends on the CPU vendor and model;
oneDNN (``torch.ops.mkldnn._linear_pointwise``, wrapped by :class:`~tokshift_cli.models.tokshift.EpilogueLinear`)
also fuses the bias and GELU. :func:`linear_backend` measures the two once per CPU model, torch version, thread
count and precision, on the MLP's GEMM of a ViT-B/16 clip, and keeps the answer in ``kernels.json`` in the tool's
cache (:func:`~tokshift_cli.outputs.cache_root`), so every later process makes the same choice (a resumed
job computes the same bytes). ``TOKSHIFT_LINEAR=onednn|aten`` overrides the choice. bfloat16 always uses oneDNN.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import time
from pathlib import Path

import torch

from ..outputs import atomic_write_text, cache_root

#: Environment variable that forces the float32 linear backend ("onednn" or "aten"; "auto" or unset: measured).
LINEAR_ENV = "TOKSHIFT_LINEAR"
#: oneDNN is chosen for float32 only when it is at least this much faster than aten (a margin against noise).
MARGIN = 1.03
#: The measured GEMM: the MLP's first linear of ViT-B/16 on one 8-frame clip (M = 8 x 197 tokens).
SHAPE = (1576, 768, 3072)


def cpu_name() -> str:
    """The CPU's model name as the kernel reports it (``lscpu``'s "Model name"), or the platform's guess."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def onednn_linear_available() -> bool:
    """torch's oneDNN linear with a fused epilogue (the op Inductor lowers CPU linears to) is in this build."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _key(dtype: torch.dtype) -> str:
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {dtype}".replace(
        "torch.", "")


def _cache_file() -> Path:
    return cache_root() / "kernels.json"


def measure_linear(dtype: torch.dtype = torch.float32, *, rounds: int = 5, burst_s: float = 0.08
                   ) -> dict[str, float]:
    """GFLOP/s of aten's and oneDNN's linear (with bias; oneDNN's weight packed once, as
    :meth:`~tokshift_cli.models.tokshift.EpilogueLinear.packed_weight` does) on :data:`SHAPE`, interleaved
    ``rounds`` times; the median of each. Each figure times a burst of calls of about ``burst_s`` seconds (single calls scatter) in
    the process's CPU time, which other jobs on a shared machine inflate far less than wall time."""
    m, k, n = SHAPE
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w = torch.randn(n, k, generator=gen).to(dtype) / k ** 0.5
    b = torch.randn(n, generator=gen).to(dtype)
    try:  # as EpilogueLinear runs it: the weight packed once into oneDNN's layout
        wp = torch.ops.mkldnn._reorder_linear_weight(w, m)
    except (RuntimeError, AttributeError):
        wp = w
    fns = {"aten": lambda: torch.nn.functional.linear(x, w, b),
           "onednn": lambda: torch.ops.mkldnn._linear_pointwise(x, wp, b, "none", [], "")}
    with torch.inference_mode():
        calls = {}
        for name, fn in fns.items():  # warm-up, and how many calls fill a burst
            fn()
            t0 = time.process_time()
            fn()
            calls[name] = max(1, int(burst_s * torch.get_num_threads() / max(time.process_time() - t0, 1e-6)))
        seen: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.process_time()
                for _ in range(calls[name]):
                    fn()
                cpu_s = max(time.process_time() - t0, 1e-9) / torch.get_num_threads()
                seen[name].append(2 * m * k * n * calls[name] / cpu_s / 1e9)
    return {name: sorted(v)[len(v) // 2] for name, v in seen.items()}


def linear_backend(dtype: torch.dtype = torch.float32) -> str:
    """``"onednn"`` or ``"aten"``: the faster linear for ``dtype`` on this CPU (measured once, then cached)."""
    if not onednn_linear_available():
        return "aten"
    forced = os.environ.get(LINEAR_ENV, "auto").strip().lower()
    if forced in ("onednn", "aten"):
        return forced
    if dtype != torch.float32:
        return "onednn"  # bfloat16: aten's CPU linear has no fused epilogue and was slower on every CPU measured
    return _cached_choice(dtype)["backend"]


def _cached_choice(dtype: torch.dtype) -> dict:
    key = _key(dtype)
    path = _cache_file()
    entries = _read(path)
    if key in entries:
        return entries[key]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")
    except OSError:  # a read-only cache: measure for this process only
        return _decide(dtype)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process measures; the others wait and read its answer
        entries = _read(path)
        if key not in entries:
            entries[key] = _decide(dtype)
            try:
                atomic_write_text(path, json.dumps(entries, indent=2, sort_keys=True) + "\n")
            except OSError:
                pass
    return entries[key]


def _decide(dtype: torch.dtype) -> dict:
    rates = measure_linear(dtype)
    backend = "onednn" if rates["onednn"] >= MARGIN * rates["aten"] else "aten"
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = None
    return {"backend": backend, "gflops_per_thread_cpu_s": {k: round(v, 1) for k, v in rates.items()},
            "shape": list(SHAPE), "load_avg": load,
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
