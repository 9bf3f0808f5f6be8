"""A rank's micro-batches of training clips for one epoch: its share of the epoch's order
(:func:`~tokshift_cli.train.data.rank_share`), each clip decoded from its drawn start in worker processes and
augmented; videos that fail are left out and reported once."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from .data import TrainData, augment_clip, clip_draws, decode_stream, epoch_order, rank_share

__all__ = ["ClipBatches"]


class ClipBatches:
    """Training clips of ``data`` for a rank: ``batches(epoch, start)`` yields (index, clips, targets)."""

    def __init__(self, data: TrainData, *, seed: int, batch: int, world: int, rank: int, size: int,
                 short_side: tuple[int, int], frames: int, stride: int, mean: tuple[float, ...],
                 std: tuple[float, ...], flip: bool, jitter: bool, workers: int, decoder: str,
                 timeout: float | None, device: torch.device):
        self.data, self.seed, self.batch, self.world, self.rank = data, seed, batch, world, rank
        self.size, self.short_side, self.frames, self.stride = size, short_side, frames, stride
        self.mean, self.std, self.flip, self.jitter = mean, std, flip, jitter
        self.workers, self.decoder, self.timeout, self.device = workers, decoder, timeout, device

    def batches(self, epoch: int, start: int, bad: dict[int, str],
                on_skip: Callable[[int, str, str], None]) -> Iterator[tuple[int, list[torch.Tensor], list[int]]]:
        """This rank's micro-batches ``start ..`` of ``epoch``; ``bad``: videos known broken (not decoded again);
        ``on_skip(video, path, reason)`` for each clip left out."""
        data = self.data
        share = rank_share(epoch_order(self.seed, epoch, len(data.train)), self.batch, self.world, self.rank)
        todo = share[start:].reshape(-1)
        draws = [clip_draws(self.seed, epoch, int(v), self.short_side) for v in todo]
        paths = [data.train.items[int(v)].path for v in todo]
        errors = {i: bad[int(v)] for i, v in enumerate(todo) if int(v) in bad}
        stream = decode_stream(paths, [d.start_u for d in draws], frames=self.frames, stride=self.stride,
                               workers=self.workers, decoder=self.decoder, timeout=self.timeout, errors=errors,
                               prefetch=max(2 * self.workers, self.batch + self.workers))
        try:
            for k in range(start, len(share)):
                clips, ys = [], []
                for v in share[k]:
                    v = int(v)
                    d = next(stream)
                    pos = d.index
                    if d.error is None:
                        try:
                            clips.append(augment_clip(d, draws[pos], size=self.size, mean=self.mean, std=self.std,
                                                      flip=self.flip, jitter=self.jitter, device=self.device))
                            ys.append(data.targets[v])
                            continue
                        except (RuntimeError, ValueError) as e:  # e.g. frame size changes inside the clip
                            d.error = f"{type(e).__name__}: {e}"
                    on_skip(v, d.path, d.error)
                yield k, clips, ys
        finally:
            stream.close()
