"""``--runtime auto``: the fastest installed runtime that is exact for the precision, measured once and cached.

Measured on the model being run (its shape; random clips), per (CPU model, torch/OpenVINO/ONNX Runtime versions,
precision, architecture), and kept in ``<cache>/runtimes/auto.json``: a later run reads the decision. Each
candidate (an installed runtime offering the precision as exact, :attr:`~.base.Runtime.exact`) is timed
interleaved round by round at batch 2 (:func:`~tokshift_cli.bench.inference.time_interleaved`) and checked for
what the tool's outputs rely on:

* ``deterministic``: the same batch twice gives the same bytes;
* ``row_invariant``: a clip's features do not depend on which other clip shares its batch (the engine pads every
  call to the same batch size, so this is what makes resumed, sharded and uninterrupted runs byte-identical);
* ``max_abs_logit_diff`` vs torch float32: <= 1e-4 in float32, <= 0.1 x the logits' spread in bfloat16.

Only candidates passing all three can win; torch keeps the choice unless another is :data:`MARGIN` (3 %)
faster. ``batch_invariant`` (batch 1 vs batch 2 equal bytes) is recorded for information: the engine's padding
makes it unnecessary.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from typing import Any

import numpy as np
import torch

from ..bench.inference import time_interleaved
from ..models.kernels import cpu_name
from . import RUNTIMES, get_runtime
from .cache import cache_root

ROUNDS = 3
#: Another runtime replaces torch only when it measured at least this much faster (a margin against noise).
MARGIN = 1.03


def decision_key(model: torch.nn.Module, precision: str) -> dict[str, Any]:
    cfg = model.config
    versions = {}
    for name in RUNTIMES:
        rt = get_runtime(name)
        versions[name] = rt.version() if rt.missing() is None else None
    return {"cpu": cpu_name(), "threads": torch.get_num_threads(), "versions": versions, "precision": precision,
            "arch": [cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.patch_size, cfg.img_size, cfg.num_frames]}


def _store() -> Any:
    return cache_root() / "auto.json"


def _read() -> dict[str, Any]:
    try:
        return json.loads(_store().read_text())
    except (OSError, ValueError):
        return {}


def choose(model: torch.nn.Module, precision: str) -> str:
    """The runtime ``auto`` runs ``model`` on at ``precision`` (measuring on the first call); the decision
    record is left on ``model.auto_choice``."""
    key = decision_key(model, precision)
    kid = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    known = _read().get(kid)
    if known is None:
        known = {**measure(model, precision), "key": key}
        table = {**_read(), kid: known}
        from ..outputs import atomic_write_text

        _store().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(_store(), json.dumps(table, indent=2) + "\n")
    model.auto_choice = {"chosen": known["chosen"], "measured": known["candidates"], "cache": str(_store())}
    return known["chosen"]


def candidates(precision: str) -> list[str]:
    return [n for n in RUNTIMES if precision in get_runtime(n).exact and get_runtime(n).missing() is None]


def measure(model: torch.nn.Module, precision: str) -> dict[str, Any]:
    """Time and check every candidate for ``precision`` on ``model`` (see the module docstring)."""
    import copy

    from ..models.tokshift import cast_for_inference
    from .build import runtime_model

    cfg = model.config
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(1, cfg.num_frames, 3, cfg.img_size, cfg.img_size, generator=g) for _ in range(3))
    ab, ca = torch.cat((a, b)), torch.cat((c, a))
    with torch.inference_mode():
        ref = model(ab)
    spread = float(ref.std()) or 1.0
    nets: dict[str, Any] = {}
    for name in candidates(precision):
        if name == "torch":  # as the tool runs it (float32 too: its linear layers on the faster GEMM)
            net = cast_for_inference(copy.deepcopy(model), getattr(torch, precision))
        else:
            net = runtime_model(model, name, precision)
        nets[name] = net
    out: dict[str, Any] = {}
    with torch.inference_mode():
        for n, net in nets.items():
            first = net(ab)
            again, other, alone = net(ab), net(ca), net(a)
            out[n] = {"deterministic": bool(torch.equal(first, again)),
                      "row_invariant": bool(torch.equal(first[0], other[1])),
                      "batch_invariant": bool(torch.equal(first[:1], alone)),
                      "max_abs_logit_diff": float((first.float() - ref).abs().max())}
        times = time_interleaved({n: functools.partial(net, ab) for n, net in nets.items()}, iters=ROUNDS,
                                 warmup=0)  # the checks above were the warm-up
    tol = 1e-4 if precision == "float32" else 0.1 * spread
    for n, r in out.items():
        r["clips_per_s"] = round(2 / float(np.median(times[n])), 3)
        r["exact"] = r["max_abs_logit_diff"] <= tol
        r["eligible"] = r["exact"] and r["deterministic"] and r["row_invariant"]
    ok = [n for n, r in out.items() if r["eligible"]] or ["torch"]
    chosen = max(ok, key=lambda n: (out[n]["clips_per_s"] if n in out else 0.0, n == "torch"))
    if chosen != "torch" and "torch" in ok and out[chosen]["clips_per_s"] < MARGIN * out["torch"]["clips_per_s"]:
        chosen = "torch"  # within the noise of one measurement: keep torch's own bytes
    return {"chosen": chosen, "candidates": out, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
