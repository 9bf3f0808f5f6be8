"""``--linear-probe``: the features of every training and validation video are extracted once (``extract-features``,
cached in DIR/features and resumable), then only the head trains on them and validates on them."""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import UsageError
from ..evaluate.metrics import Outcome, compute_metrics
from ..jobs import DistContext
from .data import TrainData, epoch_order
from .files import TrainFiles

__all__ = ["LinearProbe"]


class LinearProbe:
    """Cached features of a run's videos, batches of them for the head, and validation on them."""

    def __init__(self, net: torch.nn.Module, data: TrainData, files: TrainFiles, *, device: torch.device,
                 precision: str, val_views: str, workers: int, decoder: str, timeout: float | None,
                 dist: DistContext | None = None, emit: Callable[..., None] | None = None):
        self.net, self.data, self.files, self.device, self.precision = net, data, files, device, precision
        self.val_views, self.workers, self.decoder, self.timeout = val_views, workers, decoder, timeout
        self.dist, self.emit = dist, emit
        self.x: np.ndarray | None = None

    def _event(self, kind: str, **data: Any) -> None:
        if self.emit is not None:
            self.emit({"kind": kind, **data})

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])

    def _extract(self, name: str, paths: list[str], errors: dict[int, str], views: str) -> tuple[np.ndarray, Any]:
        from ..features import FeatureOptions, extract_features

        feats = self.files.features
        fo = FeatureOptions(views=views, per="clip", compute_dtype=self.precision, workers=self.workers,
                            decoder=self.decoder, timeout=self.timeout)
        self._event("features", name=name, total=len(paths), done=0)
        count = {"n": 0}

        def on_video(info: dict[str, Any]) -> None:
            count["n"] += 1
            self._event("features", name=name, total=len(paths), done=count["n"])

        res = extract_features(self.net, paths, feats / f"{name}.npy", options=fo, errors=errors, resume=True,
                               dist=self.dist, on_video=on_video)
        if self.dist is not None:
            self.dist.gather(None)  # rank 0 has merged the shards
        side = json.loads(res.sidecar.read_text(encoding="utf-8") if res.sidecar else
                          (feats / f"{name}.json").read_text(encoding="utf-8"))
        x = np.load(feats / f"{name}.npy", allow_pickle=False)
        return x, side

    def prepare(self, on_skip: Callable[[int, str, str], None]) -> None:
        """Extract (or reuse) the features; ``on_skip(video, path, reason)`` for each training video that failed."""
        data = self.data
        self.files.features.mkdir(parents=True, exist_ok=True)
        self.net.eval()
        self.x, side = self._extract("train", data.train.paths, data.train_errors, "1x1")
        self.video = np.asarray([r["video_index"] for r in side["rows"]], dtype=np.int64)
        self.y = np.asarray([data.targets[i] for i in self.video], dtype=np.int64)
        for f in side.get("failures", []):
            on_skip(int(f["video_index"]), f["video"], f["error"])
        if data.val is not None:
            vx, vside = self._extract("val", data.val.paths, data.val_errors, self.val_views)
            self.val_x, self.val_video = vx, np.asarray([r["video_index"] for r in vside["rows"]], dtype=np.int64)
            self.val_failed = len(vside.get("failures", []))
        if self.rows < 1:
            raise UsageError(f"{data.train.source}: no training video could be decoded")

    def batches(self, seed: int, epoch: int, start: int, count: int,
                batch: int) -> Iterator[tuple[int, list[torch.Tensor], list[int]]]:
        """Micro-batches ``start .. count`` of ``epoch``: (index, feature rows, targets)."""
        order = epoch_order(seed, epoch, self.rows)
        x = torch.from_numpy(np.ascontiguousarray(self.x, dtype=np.float32))
        for k in range(start, count):
            idx = order[k * batch:(k + 1) * batch]
            yield k, list(x[idx].to(self.device)), [int(v) for v in self.y[idx]]

    def validate(self) -> dict[str, Any]:
        """Validation on the cached features: each row's class probabilities (the head on the clip's features,
        which equals the mean of the clip's per-frame logits over its crops), averaged over a video's clips."""
        head = self.net.head
        n = len(self.data.val)
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(self.val_x, dtype=np.float32)).to(self.device)
            probs = head(x).float().softmax(-1).cpu().numpy()
        k = min(5, len(self.data.classes))
        outcomes = []
        for i in range(n):
            rows = probs[self.val_video == i]
            t = self.data.val_targets[i]
            if len(rows) == 0:
                outcomes.append(Outcome(t, None))
                continue
            p = rows.astype(np.float64).mean(0)
            outcomes.append(Outcome(t, tuple(int(j) for j in np.argsort(-p, kind="stable")[:k])))
        report = compute_metrics(outcomes, self.data.classes, k=k)
        report["k"] = k
        return report
