"""One optimizer step of a training run: forward and backward of its micro-batches (gradients add up, DDP
synchronises only on the last), autocast, the gradient scaler, clipping and the scheduler's per-step update."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

__all__ = ["Updater", "make_criterion"]


class Updater:
    """The update rule of a run. ``forward``: the module the clips go through (the DDP wrapper, the network, or
    only its head for a linear probe)."""

    def __init__(self, forward: torch.nn.Module, *, ddp: Any, params: list[torch.nn.Parameter], optimizer: Any,
                 scheduler: Any, scaler: Any, criterion: torch.nn.Module, amp_dtype: torch.dtype | None,
                 device: torch.device, clip_grad: float, dummy_shape: tuple[int, ...]):
        self.forward, self.ddp, self.params, self.optimizer = forward, ddp, params, optimizer
        self.scheduler, self.scaler, self.criterion, self.amp_dtype = scheduler, scaler, criterion, amp_dtype
        self.device, self.clip_grad, self.dummy_shape = device, clip_grad, dummy_shape

    def backward(self, clips: list[torch.Tensor], ys: list[int], m: int, last: bool) -> tuple[float, float, int]:
        """Forward and backward of one of the ``m`` micro-batches of a step: (loss x clips, correct, clips)."""
        empty = not clips
        if empty and self.ddp is None:
            return 0.0, 0.0, 0  # every clip of it was broken: nothing to learn, nothing to synchronise
        if empty:  # this rank must still take part in the gradient all-reduce: a zero-weight dummy clip
            x = torch.zeros(*self.dummy_shape, device=self.device)
            y = torch.zeros(1, dtype=torch.long, device=self.device)
        else:
            x = torch.stack(clips).to(self.device, non_blocking=True)
            y = torch.as_tensor(ys, dtype=torch.long, device=self.device)
        sync = contextlib.nullcontext() if (last or self.ddp is None) else self.ddp.no_sync()
        amp = (torch.autocast(device_type=self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        with sync:
            with amp:
                logits = self.forward(x)
            loss = self.criterion(logits.float(), y)
            scaled = loss * (0.0 if empty else 1.0 / m)
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if empty:
            return 0.0, 0.0, 0
        n = len(ys)
        return float(loss.detach()) * n, float((logits.detach().argmax(-1) == y).sum()), n

    def step(self, step: int) -> float:
        """The optimizer step that makes ``step`` steps; the learning rate it used."""
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step_update(num_updates=step)
        return lr


def make_criterion(label_smoothing: float) -> torch.nn.Module:
    if label_smoothing > 0:
        from timm.loss import LabelSmoothingCrossEntropy  # the authors' loss

        return LabelSmoothingCrossEntropy(smoothing=label_smoothing)
    return torch.nn.CrossEntropyLoss()
