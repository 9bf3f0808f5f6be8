"""Saving and restoring a training run (after timm's ``CheckpointSaver``: a helper with an explicit constructor,
not a method of the loop). :class:`RunState` is the run's progress; :class:`CheckpointSaver` writes it with the
model, optimizer, scheduler, scaler and every rank's RNG state through :mod:`tokshift_cli.train.checkpoint`, and
refuses to resume a run whose fingerprint differs, or to call a finished run complete when it was made
with another one."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import __version__
from ..errors import UsageError
from ..jobs import DistContext, differences
from ..models.config import CONFIG_NAME, TokShiftConfig
from .checkpoint import load_optimizer, optimizer_tensors, python_rng_state, restore_rng, rng_tensors
from .files import TrainFiles
from .logs import RunLog
from .model import load_trainable, trainable_state

__all__ = ["RunState", "CheckpointSaver", "fresh_sums"]


def fresh_sums() -> dict[str, float]:
    """Running sums of an epoch or a logging interval."""
    return {"loss": 0.0, "correct": 0.0, "clips": 0.0, "windows": 0.0}


@dataclass
class RunState:
    """Where a run is: what a checkpoint records and a resume restores."""

    step: int = 0  #: optimizer steps done
    epoch: int = 0  #: epochs done
    micro: int = 0  #: micro-batches of the current epoch already trained
    serial: int = 0  #: the last checkpoint file's number
    best: dict[str, Any] | None = None
    bad: dict[int, str] = field(default_factory=dict)  #: training videos that could not be decoded
    reported: set[int] = field(default_factory=set)
    history: list[dict[str, Any]] = field(default_factory=list)
    acc: dict[str, float] = field(default_factory=fresh_sums)  #: this epoch's running sums
    log_acc: dict[str, float] = field(default_factory=fresh_sums)  #: since the last log line
    wall_before: float = 0.0  #: seconds spent before a resume
    resumed_step: int = 0
    metrics_bytes: int = 0  #: metrics.jsonl's length at the checkpoint resumed from
    resume_scheduler: dict[str, Any] | None = None


class CheckpointSaver:
    """Checkpoints of one run in ``files.checkpoints``; rank 0 writes, every rank hands over its RNG state."""

    def __init__(self, files: TrainFiles, fingerprint: dict[str, Any], *, dist: DistContext | None, rank: int):
        self.files, self.fingerprint, self.dist, self.rank = files, fingerprint, dist, rank
        self.main = rank == 0

    def _gather_rng(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        mine = (rng_tensors(self.rank), python_rng_state())
        parts = self.dist.gather(mine) if self.dist is not None else [mine]
        tensors: dict[str, torch.Tensor] = {}
        plain: dict[str, Any] = {}
        for r, (t, p) in enumerate(parts):
            tensors.update(t)
            plain[str(r)] = p
        return tensors, plain

    def save(self, state: RunState, *, net: torch.nn.Module, optimizer: Any, scheduler: Any, scaler: Any,
             log: RunLog, t_start: float, done: bool = False) -> dict[str, Any] | None:
        """Write a checkpoint: metrics.jsonl is fsync'ed first, so the byte length recorded is on disk."""
        rng, plain = self._gather_rng()
        if not self.main:
            return None
        state.serial += 1
        opt_t, opt_meta = optimizer_tensors(optimizer)
        tensors = {**{f"model.{k}": v for k, v in trainable_state(net).items()}, **opt_t, **rng}
        name = self.files.checkpoints.write_tensors("state", state.serial, tensors)
        metrics_bytes = log.synced_length()
        meta = {
            "fingerprint": self.fingerprint, "step": state.step, "epoch": state.epoch, "micro": state.micro,
            "serial": state.serial, "tensors": name, "best": state.best, "done": done,
            "optimizer": opt_meta, "scheduler": jsonable(scheduler.state_dict()),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": plain,
            "metrics_bytes": metrics_bytes, "bad": {str(k): v for k, v in sorted(state.bad.items())},
            "history": state.history, "acc": state.acc, "log_acc": state.log_acc,
            "wall_s": state.wall_before + time.monotonic() - t_start, "tool_version": __version__,
        }
        self.files.checkpoints.commit(meta)
        return meta

    def save_best(self, state: RunState, net: torch.nn.Module) -> None:
        """The best epoch's weights (rank 0), named in ``state.best["file"]``."""
        if self.main:
            state.serial += 1
            state.best["file"] = self.files.checkpoints.write_tensors(
                "best", state.serial, {f"model.{k}": v for k, v in trainable_state(net).items()})

    def check_finished(self, epochs: int) -> tuple[str, int | None]:
        """``--resume`` found a finished run: ``("complete", None)`` when it was made with this fingerprint,
        ``("resume", old_epochs)`` (continue from its last checkpoint) when only ``--epochs`` was raised;
        :class:`UsageError` naming every other difference (the resume contract, docs/reliability.md)."""
        from ..jobs import AFRESH, check_complete, refuse_resume

        config_path = self.files.folder / CONFIG_NAME
        training = TokShiftConfig.from_file(config_path).source.get("training", {})
        stored = training.get("fingerprint")
        fingerprint = self.fingerprint
        diff = differences(stored, fingerprint) if isinstance(stored, dict) else None
        old = stored.get("recipe", {}).get("epochs") if isinstance(stored, dict) else None
        if diff == [f"recipe.epochs ({old} then, {epochs} now)"] and isinstance(old, int) and epochs > old:
            if not self.files.checkpoints.exists():
                raise UsageError(f"{config_path}: this run finished after {old} epochs and its checkpoints were "
                                 f"removed at the end, so it cannot go on to {epochs} (train with "
                                 f"--keep-checkpoints to keep them). {AFRESH}")
            return "resume", old
        if diff:
            raise refuse_resume(config_path, diff)
        check_complete(config_path, stored, fingerprint)
        return "complete", None

    def load(self, state: RunState, *, net: torch.nn.Module, device: torch.device, optimizer: Any, scheduler: Any,
             scaler: Any) -> None:
        """Restore the last checkpoint into ``state`` and the objects; a different fingerprint is refused."""
        from ..jobs import refuse_resume

        meta, tensors = self.files.checkpoints.read()
        diff = differences(meta.get("fingerprint", {}), self.fingerprint)
        old = (meta.get("fingerprint") or {}).get("recipe", {}).get("epochs")
        new = self.fingerprint.get("recipe", {}).get("epochs")
        # a finished run trained on (--epochs raised, nothing else changed): its final checkpoint goes on, and the
        # schedule is the one the new --epochs implies, at the step reached (docs/train.md says why)
        extend = bool(meta.get("done")) and isinstance(old, int) and isinstance(new, int) and new > old and \
            diff == [f"recipe.epochs ({old} then, {new} now)"]
        if diff and not extend:
            raise refuse_resume(self.files.checkpoints.latest, diff)
        load_trainable(net, tensors)
        net.to(device)
        load_optimizer(optimizer, tensors, meta["optimizer"])
        state.step, state.epoch, state.micro, state.serial = meta["step"], meta["epoch"], meta["micro"], meta["serial"]
        state.resume_scheduler = None if extend else meta["scheduler"]
        if scheduler is not None:
            if not extend:
                scheduler.load_state_dict(meta["scheduler"])
            scheduler.step_update(num_updates=state.step)
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        restore_rng(tensors, (meta.get("rng") or {}).get(str(self.rank)), self.rank)
        state.best = meta.get("best")
        state.bad = {int(k): v for k, v in meta.get("bad", {}).items()}
        state.reported = set(state.bad)
        state.history = meta.get("history", [])
        state.acc, state.log_acc = meta.get("acc", fresh_sums()), meta.get("log_acc", fresh_sums())
        state.wall_before = float(meta.get("wall_s", 0.0))
        state.resumed_step = state.step
        state.metrics_bytes = int(meta.get("metrics_bytes", 0))


def jsonable(obj: Any) -> Any:
    """A scheduler's state as plain JSON (tuples as lists; anything else as its repr)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o)))
