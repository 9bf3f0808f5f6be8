"""Per-epoch validation of a training run, scored exactly as ``classify``/``evaluate`` score a video (the engine's
:func:`~tokshift_cli.engine.score_videos`), each rank taking its shard of the validation set."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..evaluate.metrics import Outcome, compute_metrics
from ..jobs import DistContext
from ..video.sampling import Views
from .data import TrainData

__all__ = ["Validator"]


class Validator:
    """Top-1, top-k and mean class accuracy of ``net`` on ``data.val`` with ``views`` per video."""

    def __init__(self, net: torch.nn.Module, data: TrainData, *, device: torch.device, precision: str, views: str,
                 workers: int, decoder: str, timeout: float | None, dist: DistContext | None = None, rank: int = 0,
                 world: int = 1, emit: Callable[..., None] | None = None):
        self.net, self.data, self.device, self.precision, self.views = net, data, device, precision, views
        self.workers, self.decoder, self.timeout = workers, decoder, timeout
        self.dist, self.rank, self.world, self.emit = dist, rank, world, emit

    def _event(self, kind: str, **data: Any) -> None:
        if self.emit is not None:
            self.emit({"kind": kind, **data})

    def __call__(self) -> dict[str, Any]:
        from ..engine import ClassifyOptions, default_batch_size, score_videos, video_result
        from ..jobs import Shard

        data = self.data
        n = len(data.val)
        positions = list(Shard(self.rank, self.world).positions(n))
        paths = [data.val.items[i].path for i in positions]
        errors = {k: data.val.items[i].error for k, i in enumerate(positions) if data.val.items[i].error}
        options = ClassifyOptions(views=Views.parse(self.views), batch_size=default_batch_size(self.device),
                                  workers=self.workers, decoder=self.decoder, dtype=self.precision,
                                  timeout=self.timeout)
        classes = data.classes
        k = min(5, len(classes))
        mine: list[tuple[int, int, tuple[int, ...] | None]] = []
        self.net.eval()
        self._event("validating", total=n)
        try:
            for out in score_videos(self.net, paths, options, errors=errors, indices=positions):
                _, probs = video_result(out, classes, top_k=k)
                ranked = tuple(int(j) for j in probs.topk(k).indices) if probs is not None else None
                mine.append((out.video.index, data.val_targets[out.video.index], ranked))
                self._event("validated", done=len(mine) * self.world, total=n)
        finally:
            self.net.train()
        everything = [r for part in self.dist.gather(mine) for r in part] if self.dist is not None else mine
        everything.sort(key=lambda r: r[0])
        report = compute_metrics([Outcome(t, r) for _, t, r in everything], classes, k=k)
        report["k"] = k
        return report
