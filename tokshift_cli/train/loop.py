"""``tokshift train``: fine-tune TokShift (or its plain video-ViT baseline) on your own labelled clips.

::

    result = train("clips/train/", "my-model/", val_data="clips/val/", options=TrainOptions(epochs=18))
    model = load_model("my-model/")           # classify, evaluate, extract-features, bench, `hf upload`

The recipe defaults are the authors' v1 recipe (docs/train.md has the table and its sources): SGD with momentum
0.9, no weight decay, the learning rate x0.1 at 10/18 and 15/18 of the run, no warm-up, gradient accumulation
10, gradients clipped at norm 1.0, label smoothing 0.1, no dropout or drop-path, a zero-initialised head;
training clips are T frames ``stride`` apart from a random start with the authors' augmentation
(:mod:`tokshift_cli.train.data`); the learning rate follows the linear scaling rule from theirs (0.1 for 42 clips
per iteration with accumulation 10) unless given.

Reproducible and resumable: every random choice is drawn from generators seeded by (seed, epoch, video)
(:mod:`tokshift_cli.train.data`); a checkpoint (:mod:`tokshift_cli.train.checkpoint`) is written at every epoch's end
and every ``save_every`` optimizer steps, at optimizer-step boundaries, with the model, optimizer, scheduler,
position in the epoch and every RNG state; ``resume=True`` goes on from the last one, and on a CPU the final
weights are bit-identical to those of an uninterrupted run. Under torchrun every rank trains on a disjoint part
of each global batch (DistributedDataParallel, gloo on the CPU, nccl on CUDA); rank 0 writes.

The output folder::

    DIR/config.json            new id2label (label_order "custom"), frames/stride/crop/fold_div, source.training:
                               data hashes, recipe, seed, epochs, best validation metrics
    DIR/model.safetensors      the best epoch by validation top-1 (the last without --val)
    DIR/README.md              model card with the metrics and the curve
    DIR/metrics.jsonl          one line per logging step and per epoch
    DIR/training_curve.png
    DIR/checkpoints/           while training (removed at the end unless keep_checkpoints)
    DIR/features/              --linear-probe's cached features (removed at the end unless keep_checkpoints)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .. import __version__
from .checkpoint import load_optimizer, optimizer_tensors, python_rng_state, restore_rng, rng_tensors
from ..errors import UsageError
from ..jobs import DistContext, differences, weights_hash
from ..evaluate.metrics import Outcome, compute_metrics
from ..models.config import CONFIG_NAME, TokShiftConfig
from ..outputs import fsync_path
from .data import (TrainData, augment_clip, clip_draws, decode_stream, default_short_side, epoch_order,
                         load_train_data, rank_share)
from .files import TrainFiles, write_outputs
from .model import build_start_model, load_trainable, set_regularisation, trainable_state
from ..video.sampling import Views

__all__ = ["TrainOptions", "TrainResult", "train", "resolve_precision", "default_lr", "make_scheduler", "OPTIMIZERS",
           "SCHEDULES", "REFERENCE_LR", "REFERENCE_CLIPS"]

FORMAT = "tokshift-train"
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
#: The authors' learning rate and the clips behind one optimizer step (42 clips per iteration x accumulation 10).
REFERENCE_LR = {"sgd": 0.1, "adamw": 5e-4}
REFERENCE_CLIPS = {"sgd": 420, "adamw": 512}  # adamw: DeiT's rule, 5e-4 per 512 clips
#: Where the step schedule divides the learning rate by 10: at 10/18 and 15/18 of the run (the authors' 18 epochs).
STEP_MILESTONES = (10 / 18, 15 / 18)

# --- options -------------------------------------------------------------------------------------------------------


@dataclass
class TrainOptions:
    """How to train. ``None`` means "the default for this model, device or mode" (resolved in :func:`train`)."""

    epochs: int = 18
    #: clips per forward pass per process (None: 8 on CUDA, 2 on a CPU; 64 feature rows for a linear probe)
    batch_size: int | None = None
    accum_steps: int | None = None  #: micro-batches per optimizer step (None: 10, the authors'; 1 for a probe)
    lr: float | None = None  #: None: scaled from the authors' by the total batch (:func:`default_lr`)
    optimizer: str = "sgd"  #: sgd (momentum, not Nesterov) | adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "step"  #: step (x0.1 at 10/18 and 15/18 of the run) | cosine
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.1
    clip_grad: float = 1.0  #: max gradient norm (0: no clipping)
    drop_path: float = 0.0
    dropout: float = 0.0
    frames: int | None = None  #: None: the starting model's (8 for --init)
    stride: int | None = None  #: None: the starting model's (32 for --init)
    img_size: int | None = None  #: None: the starting model's (position embeddings resampled otherwise)
    fold_div: int | None = None
    shift: bool | None = None  #: False: the plain video-ViT baseline; None: the starting model's (on for --init)
    linear_probe: bool = False
    val_views: str = "1x3"  #: CLIPSxCROPS of the per-epoch validation (the authors validated with 3 crops)
    flip: bool = True
    jitter: bool = True
    short_side: tuple[int, int] | None = None  #: (min, max) px of the resized short side; None: [S, S*330/224]
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  #: auto (bfloat16 autocast where native, float16 + scaler on CUDA without bf16) | ...
    workers: int = 2
    decoder: str = "auto"
    timeout: float | None = None
    grad_checkpointing: bool = False
    save_every: int | None = None  #: also checkpoint every N optimizer steps
    log_every: int = 10  #: a metrics.jsonl line every N optimizer steps
    tensorboard: bool = False
    keep_checkpoints: bool = False

    def validate(self) -> None:
        def positive(name: str, v: Any, allow_none: bool = True) -> None:
            if v is None and allow_none:
                return
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"--{name.replace('_', '-')} {v!r}: must be a positive integer")

        for name in ("epochs", "batch_size", "accum_steps", "frames", "stride", "img_size", "save_every",
                     "log_every"):
            positive(name, getattr(self, name), allow_none=name not in ("epochs", "log_every"))
        if self.fold_div is not None and self.fold_div < 2:
            raise UsageError(f"--fold-div {self.fold_div}: must be >= 2")
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer {self.optimizer!r}: choose sgd or adamw")
        if self.schedule not in SCHEDULES:
            raise UsageError(f"--schedule {self.schedule!r}: choose step or cosine")
        for name, lo, hi in (("label_smoothing", 0.0, 1.0), ("drop_path", 0.0, 1.0), ("dropout", 0.0, 1.0),
                             ("momentum", 0.0, 1.0)):
            v = getattr(self, name)
            if not lo <= v < hi:
                raise UsageError(f"--{name.replace('_', '-')} {v}: must be in [{lo:g}, {hi:g})")
        for name in ("weight_decay", "warmup_epochs", "clip_grad"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0")
        if self.warmup_epochs >= self.epochs:
            raise UsageError(f"--warmup-epochs {self.warmup_epochs:g}: must be fewer than --epochs {self.epochs}")
        if self.lr is not None and not self.lr > 0:
            raise UsageError(f"--lr {self.lr}: must be > 0")
        if self.short_side is not None:
            lo, hi = self.short_side
            if not 1 <= lo <= hi:
                raise UsageError(f"--short-side {lo},{hi}: expected MIN,MAX with 1 <= MIN <= MAX")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--timeout {self.timeout}: must be > 0")
        self.val_views = str(Views.parse(self.val_views))
        from ..video.reader import check_decoder

        check_decoder(self.decoder)


def default_lr(optimizer: str, total_batch: int) -> float:
    """The linear scaling rule from the authors' setting: lr = 0.1 x total / 420 for SGD (0.1 for 42 clips per
    iteration with gradient accumulation 10), 5e-4 x total / 512 for AdamW (DeiT's)."""
    return REFERENCE_LR[optimizer] * total_batch / REFERENCE_CLIPS[optimizer]


def resolve_precision(dtype: str, device: torch.device) -> tuple[str, torch.dtype | None, bool]:
    """``--dtype`` -> (name, autocast dtype or None, gradient scaler needed). ``auto``: bfloat16 autocast on CUDA
    (float16 with a scaler where the GPU has no bfloat16) and on CPUs with native bfloat16, else float32."""
    if dtype in ("float32", "fp32"):
        return "float32", None, False
    if dtype in ("bfloat16", "bf16"):
        return "bfloat16", torch.bfloat16, False
    if dtype in ("float16", "fp16"):
        if device.type != "cuda":
            raise UsageError("--dtype float16 is for CUDA (with a gradient scaler); on a CPU use bfloat16 or float32")
        return "float16", torch.float16, True
    if dtype == "auto":
        if device.type == "cuda":
            return ("bfloat16", torch.bfloat16, False) if torch.cuda.is_bf16_supported() else \
                ("float16", torch.float16, True)
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            native = False
        return ("bfloat16", torch.bfloat16, False) if native else ("float32", None, False)
    raise UsageError(f"--dtype {dtype!r}: expected auto, float32, bfloat16 or float16")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, *, lr: float, epochs: int,
                   steps_per_epoch: int, warmup_epochs: float = 0.0) -> Any:
    """The learning rate per optimizer step: timm's schedulers, stepped per update (``step_update(n)`` after the
    n-th step). ``step``: x0.1 after 10/18 and 15/18 of the run's steps (the authors' MultiStepLR at epochs 10
    and 15 of 18); ``cosine``: to 0. ``warmup_epochs``: linear from lr / warm-up steps."""
    from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

    total = epochs * steps_per_epoch
    warm = int(round(warmup_epochs * steps_per_epoch))
    warm_kw = dict(warmup_t=warm, warmup_lr_init=lr / max(warm, 1) if warm else 0.0)
    if schedule == "cosine":
        return CosineLRScheduler(optimizer, t_initial=total, lr_min=0.0, t_in_epochs=False, **warm_kw)
    # timm applies milestone m at update m - 1 (its documented convention): +1 puts the drop at update m, where
    # PyTorch's MultiStepLR (the authors') puts it
    milestones = [int(round(f * total)) + 1 for f in STEP_MILESTONES]
    return MultiStepLRScheduler(optimizer, decay_t=milestones, decay_rate=0.1, t_in_epochs=False, **warm_kw)


@dataclass
class TrainResult:
    """What :func:`train` did."""

    out_dir: Path
    classes: list[str] = field(default_factory=list)
    epochs: int = 0
    steps: int = 0
    selected: str = "last"  #: "best" (by validation top-1) or "last"
    best_epoch: int | None = None  #: 1-based
    best_top1: float | None = None
    last_top1: float | None = None
    skipped: int = 0  #: training videos that could not be decoded (each reported once)
    resumed_step: int = 0  #: the optimizer step the run went on from (0: a fresh run)
    complete_already: bool = False  #: --resume found a finished run: nothing was done
    wall_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


# --- the run -------------------------------------------------------------------------------------------------------


def _event(on_event: Callable[[dict[str, Any]], None] | None, kind: str, **data: Any) -> None:
    if on_event is not None:
        on_event({"kind": kind, **data})


def train(train_data: str | os.PathLike, out_dir: str | os.PathLike, *, val_data: str | os.PathLike | None = None,
          model: str | None = None, init: str | None = None, labels: str | os.PathLike | None = None,
          root: str | os.PathLike | None = None, val_root: str | os.PathLike | None = None,
          options: TrainOptions | None = None, resume: bool = False, overwrite: bool = False,
          dist: DistContext | None = None, revision: str | None = None, hub_namespace: str | None = None,
          on_event: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Train on ``train_data`` (every form ``evaluate`` reads: a folder per class, a list file, a CSV, the Kinetics
    CSV with ``root``) and write the model folder ``out_dir`` (module docstring). ``model``: the TokShift model to
    start from (zoo name, Hub repo, folder; default :data:`~tokshift_cli.train.model.DEFAULT_MODEL`), or ``init``:
    a timm ImageNet ViT. ``val_data``: validated after every epoch, the best epoch is kept. ``resume``: go on from
    the last checkpoint in ``out_dir`` (a fresh run when there is none). ``dist``: the torchrun context
    (:func:`tokshift_cli.jobs.init_distributed`). ``on_event``: progress callbacks (rank 0 only): dicts with a
    ``kind`` of plan, step, skipped, features, validating, epoch, saved, done."""
    opt = dataclasses.replace(options or TrainOptions())
    opt.validate()
    rank = dist.rank if dist is not None else 0
    world = dist.world if dist is not None else 1
    main = rank == 0
    emit = on_event if main else None
    data = load_train_data(train_data, val=val_data, root=root, val_root=val_root, labels=labels)
    files = TrainFiles(out_dir)

    def check() -> str:
        return files.preflight(resume=resume, overwrite=overwrite)

    action = dist.agree(check) if dist is not None else check()
    if action == "complete":
        cfg = TokShiftConfig.from_file(files.folder / CONFIG_NAME)
        t = cfg.source.get("training", {})
        best = t.get("best") or {}
        return TrainResult(out_dir=files.folder, classes=cfg.labels, epochs=t.get("epochs", 0),
                           steps=t.get("steps", 0), selected=t.get("selected", "last"), best_epoch=best.get("epoch"),
                           best_top1=best.get("top1"), complete_already=True)
    if opt.tensorboard and main:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard")
    run = _Run(data, files, opt, dist=dist, rank=rank, world=world, emit=emit)
    run.setup(model=model, init=init, revision=revision, hub_namespace=hub_namespace, action=action)
    return run.train()


class _Run:
    """One training run: the model, optimizer, scheduler and data, the loop, checkpoints and outputs."""

    def __init__(self, data: TrainData, files: TrainFiles, opt: TrainOptions, *, dist: DistContext | None,
                 rank: int, world: int, emit: Callable[[dict[str, Any]], None] | None):
        self.data, self.files, self.opt = data, files, opt
        self.dist, self.rank, self.world, self.emit = dist, rank, world, emit
        self.main = rank == 0
        self.step = 0
        self.epoch = 0
        self.micro = 0  # micro-batches of the current epoch already trained
        self.serial = 0
        self.best: dict[str, Any] | None = None
        self.bad: dict[int, str] = dict(data.train_errors)
        self.reported: set[int] = set()
        self.history: list[dict[str, Any]] = []
        self.acc = self._fresh_acc()  # this epoch's running sums
        self.log_acc = self._fresh_acc()  # since the last log line
        self.wall_before = 0.0  # seconds spent before a resume
        self.resumed_step = 0
        self.metrics_f: Any = None
        self.tb: Any = None
        self.metrics_bytes = 0  # metrics.jsonl's length at the checkpoint resumed from
        self.resume_scheduler: dict[str, Any] | None = None

    @staticmethod
    def _fresh_acc() -> dict[str, float]:
        return {"loss": 0.0, "correct": 0.0, "clips": 0.0, "windows": 0.0}

    # -- setup ------------------------------------------------------------------------------------------------
    def setup(self, *, model: str | None, init: str | None, revision: str | None, hub_namespace: str | None,
              action: str) -> None:
        from ..engine import resolve_device

        opt, data = self.opt, self.data
        device = resolve_device(opt.device)
        if self.dist is not None and device.type == "cuda" and device.index is None:
            device = torch.device(f"cuda:{self.dist.local_rank}")
        self.device = device
        self.precision, self.amp_dtype, use_scaler = resolve_precision(opt.dtype, device)
        probe = opt.linear_probe
        self.batch = opt.batch_size or (64 if probe else (8 if device.type == "cuda" else 2))
        self.accum = opt.accum_steps or (1 if probe else 10)
        self.total_batch = self.batch * self.accum * (1 if probe else self.world)
        if not probe:
            self._micro_batches()  # too few videos for one batch: said before the model loads
        torch.manual_seed(opt.seed + self.rank)

        def build() -> Any:
            return build_start_model(data.classes, model=model, init=init, frames=opt.frames, stride=opt.stride,
                                     img_size=opt.img_size, fold_div=opt.fold_div, shift=opt.shift,
                                     revision=revision, hub_namespace=hub_namespace)

        start = self.dist.agree(build) if self.dist is not None else build()
        self.net = start.model
        self.base = start.base
        cfg = self.net.config
        self.size = cfg.img_size
        self.short_side = tuple(opt.short_side) if opt.short_side is not None else default_short_side(self.size)
        if self.short_side[0] < self.size:
            raise UsageError(f"--short-side {self.short_side[0]},{self.short_side[1]}: the short side must be at "
                             f"least the crop size {self.size}")
        self.lr = opt.lr if opt.lr is not None else default_lr(opt.optimizer, self.total_batch)
        set_regularisation(self.net, drop_path=opt.drop_path, dropout=opt.dropout)
        if probe:
            for name, p in self.net.named_parameters():
                p.requires_grad_(name.startswith("head."))
        self.fingerprint = {
            "tool": FORMAT, "data": data.fingerprint(), "world": 1 if probe else self.world,
            "start": {k: v for k, v in self.base.items() if k in ("kind", "ref", "repo_id", "revision", "commit",
                                                                  "timm_name", "hf_hub_id")},
            "start_weights_sha256": weights_hash(self.net),
            "config": {k: v for k, v in cfg.to_dict().items() if k not in ("tool_version", "id2label", "source")},
            "recipe": self.recipe(),
        }
        self.net.to(device)
        if opt.grad_checkpointing and not probe:
            self.net.set_grad_checkpointing(True)
        params = [p for p in self.net.parameters() if p.requires_grad]
        from timm.optim import create_optimizer_v2

        target = self.net.head if probe else self.net
        self.optimizer = create_optimizer_v2(target, opt="momentum" if opt.optimizer == "sgd" else "adamw",
                                             lr=self.lr, weight_decay=opt.weight_decay, momentum=opt.momentum)
        self.params = params
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        # a linear probe knows its epoch length once the features are there (_prepare_probe)
        self.steps_per_epoch = 0 if probe else self._steps_per_epoch()
        self.scheduler = None if probe else self._scheduler()
        self.criterion = self._criterion()
        if action == "resume":
            self._load_checkpoint()
        elif self.main:
            self.files.clear()
        if self.dist is not None:
            self.dist.gather(None)  # rank 0 has cleared or checked the folder
        self.ddp = None
        if self.dist is not None and not probe:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.net, device_ids=[device.index] if device.type == "cuda" else None,
                                               broadcast_buffers=False)

    def recipe(self) -> dict[str, Any]:
        """Everything that changes the trained weights (the resume fingerprint and config.json record it)."""
        o = self.opt
        return {"epochs": o.epochs, "batch_size": self.batch, "accum_steps": self.accum,
                "total_batch": self.total_batch, "lr": self.lr, "lr_given": o.lr is not None,
                "optimizer": o.optimizer, "momentum": o.momentum, "weight_decay": o.weight_decay,
                "schedule": o.schedule, "warmup_epochs": o.warmup_epochs, "label_smoothing": o.label_smoothing,
                "clip_grad": o.clip_grad, "drop_path": o.drop_path, "dropout": o.dropout,
                "linear_probe": o.linear_probe, "val_views": o.val_views, "flip": o.flip, "jitter": o.jitter,
                "short_side": list(self.short_side), "seed": o.seed, "precision": self.precision}

    def _criterion(self) -> torch.nn.Module:
        if self.opt.label_smoothing > 0:
            from timm.loss import LabelSmoothingCrossEntropy  # the authors' loss

            return LabelSmoothingCrossEntropy(smoothing=self.opt.label_smoothing)
        return torch.nn.CrossEntropyLoss()

    def _micro_batches(self) -> int:
        """Micro-batches per epoch of this rank."""
        if self.opt.linear_probe:
            return -(-self._probe_rows() // self.batch)
        n = len(self.data.train)
        k = n // (self.batch * self.world)
        if k < 1:
            raise UsageError(f"{self.data.train.source}: {n} training videos are fewer than one batch "
                             f"({self.batch} x {self.world} processes); lower --batch-size")
        return k

    def _steps_per_epoch(self) -> int:
        return -(-self._micro_batches() // self.accum)

    def _scheduler(self) -> Any:
        return make_scheduler(self.optimizer, self.opt.schedule, lr=self.lr, epochs=self.opt.epochs,
                              steps_per_epoch=self.steps_per_epoch, warmup_epochs=self.opt.warmup_epochs)

    # -- the loop ---------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        opt = self.opt
        t0 = time.monotonic()
        self.t_start, self.step_start = t0, self.step
        if self.main:
            self._open_logs()
        try:
            if opt.linear_probe:
                self._prepare_probe()
        except BaseException:
            self._close_logs()
            raise
        _event(self.emit, "plan", epochs=opt.epochs, steps_per_epoch=self.steps_per_epoch,
               total_steps=opt.epochs * self.steps_per_epoch, step=self.step, epoch=self.epoch,
               train_videos=len(self.data.train), val_videos=len(self.data.val) if self.data.val else 0,
               classes=len(self.data.classes), batch=self.batch, accum=self.accum, world=self.world,
               total_batch=self.total_batch, lr=self.lr, device=str(self.device), precision=self.precision,
               linear_probe=opt.linear_probe, config=self.net.config, base=self.base)
        try:
            while self.epoch < opt.epochs:
                self._run_epoch()
            self._checkpoint(done=True)
            if self.dist is not None:
                self.dist.gather(None)
            wall = self.wall_before + time.monotonic() - t0
            result = self._finish(wall)
        finally:
            self._close_logs()
        _event(self.emit, "done", out=str(self.files.folder), result=result)
        return result

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[int, list[torch.Tensor], list[int]]]:
        """This rank's micro-batches ``start ..`` of ``epoch``: (index, clips, targets); bad videos left out."""
        if self.opt.linear_probe:
            yield from self._probe_batches(epoch, start)
            return
        opt, data, cfg = self.opt, self.data, self.net.config
        share = rank_share(epoch_order(opt.seed, epoch, len(data.train)), self.batch, self.world, self.rank)
        todo = share[start:].reshape(-1)
        draws = [clip_draws(opt.seed, epoch, int(v), self.short_side) for v in todo]
        paths = [data.train.items[int(v)].path for v in todo]
        errors = {i: self.bad[int(v)] for i, v in enumerate(todo) if int(v) in self.bad}
        stream = decode_stream(paths, [d.start_u for d in draws], frames=cfg.num_frames, stride=cfg.frame_stride,
                               workers=opt.workers, decoder=opt.decoder, timeout=opt.timeout, errors=errors,
                               prefetch=max(2 * opt.workers, self.batch + opt.workers))
        try:
            for k in range(start, len(share)):
                clips, ys = [], []
                for v in share[k]:
                    v = int(v)
                    d = next(stream)
                    pos = d.index
                    if d.error is None:
                        try:
                            clips.append(augment_clip(d, draws[pos], size=self.size, mean=cfg.mean, std=cfg.std,
                                                      flip=opt.flip, jitter=opt.jitter, device=self.device))
                            ys.append(data.targets[v])
                            continue
                        except (RuntimeError, ValueError) as e:  # e.g. frame size changes inside the clip
                            d.error = f"{type(e).__name__}: {e}"
                    self._skip(v, d.path, d.error)
                yield k, clips, ys
        finally:
            stream.close()

    def _skip(self, video: int, path: str, reason: str) -> None:
        self.bad.setdefault(video, reason)
        if video not in self.reported:
            self.reported.add(video)
            _event(self.emit, "skipped", path=path, reason=reason, rank=self.rank)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.opt.linear_probe:
            return self.net.head(x)
        return (self.ddp or self.net)(x)

    def _run_epoch(self) -> None:
        opt = self.opt
        epoch = self.epoch
        k_total = self._micro_batches()
        self.net.train()
        with contextlib.closing(self._batches(epoch, self.micro)) as batches:  # an error stops the decode workers
            for k, clips, ys in batches:
                w0 = (k // self.accum) * self.accum
                m = min(self.accum, k_total - w0)
                last = k - w0 == m - 1
                self._micro_step(clips, ys, m, last)
                if last:
                    self._optimizer_step(epoch, k // self.accum + 1)
                    self.micro = k + 1
                    if opt.save_every and self.step % opt.save_every == 0 and self.micro < k_total:
                        self._checkpoint()
        self.micro = 0
        self.epoch = epoch + 1
        val = self._validate() if self.data.val is not None else None
        self._end_epoch(epoch, val)

    def _micro_step(self, clips: list[torch.Tensor], ys: list[int], m: int, last: bool) -> None:
        """Forward and backward of one micro-batch; gradients add up over the ``m`` micro-batches of a step."""
        empty = not clips
        if empty and self.ddp is None:
            return  # every clip of it was broken: nothing to learn, nothing to synchronise
        if empty:  # this rank must still take part in the gradient all-reduce: a zero-weight dummy clip
            x = torch.zeros(1, self.net.config.num_frames, 3, self.size, self.size, device=self.device)
            y = torch.zeros(1, dtype=torch.long, device=self.device)
        else:
            x = torch.stack(clips).to(self.device, non_blocking=True)
            y = torch.as_tensor(ys, dtype=torch.long, device=self.device)
        sync = contextlib.nullcontext() if (last or self.ddp is None) else self.ddp.no_sync()
        amp = (torch.autocast(device_type=self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
               else contextlib.nullcontext())
        with sync:
            with amp:
                logits = self._forward(x)
            loss = self.criterion(logits.float(), y)
            scaled = loss * (0.0 if empty else 1.0 / m)
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if not empty:
            n = len(ys)
            correct = float((logits.detach().argmax(-1) == y).sum())
            for acc in (self.acc, self.log_acc):
                acc["loss"] += float(loss.detach()) * n
                acc["correct"] += correct
                acc["clips"] += n

    def _optimizer_step(self, epoch: int, done_in_epoch: int) -> None:
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.opt.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.opt.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.scheduler.step_update(num_updates=self.step)
        self.acc["windows"] += 1
        self.log_acc["windows"] += 1
        if self.step % self.opt.log_every == 0 or done_in_epoch == self.steps_per_epoch:
            self._log_step(epoch, lr)

    def _reduced(self, acc: dict[str, float]) -> dict[str, float]:
        """``acc`` summed over the ranks (every rank calls this at the same step)."""
        if self.dist is None or self.opt.linear_probe:
            return dict(acc)
        import torch.distributed as tdist

        keys = ("loss", "correct", "clips")
        t = torch.tensor([acc[k] for k in keys], dtype=torch.float64)
        tdist.all_reduce(t, group=self.dist.group)
        return {**acc, **dict(zip(keys, t.tolist()))}

    def _rate(self) -> tuple[float, float | None]:
        """(clips/s over this process's run, seconds left)."""
        dt = time.monotonic() - self.t_start
        steps = self.step - self.step_start
        total = self.opt.epochs * self.steps_per_epoch
        clips_per_s = steps * self.total_batch / dt if dt > 0 else 0.0
        eta = (total - self.step) * dt / steps if steps > 0 else None
        return clips_per_s, eta

    def _log_step(self, epoch: int, lr: float) -> None:
        acc = self._reduced(self.log_acc)
        self.log_acc = self._fresh_acc()
        clips_per_s, eta = self._rate()
        n = max(acc["clips"], 1.0)
        line = {"type": "step", "epoch": epoch + 1, "step": self.step, "loss": acc["loss"] / n,
                "train_top1": acc["correct"] / n, "lr": lr, "clips_per_s": round(clips_per_s, 3),
                "time_s": round(self.wall_before + time.monotonic() - self.t_start, 3)}
        self._write_metrics(line)
        last_val = self.history[-1].get("val_top1") if self.history else None
        _event(self.emit, "step", **line, eta_s=eta, total_steps=self.opt.epochs * self.steps_per_epoch,
               val_top1=last_val, skipped=len(self.bad))

    def _merge_bad(self) -> None:
        """Under torchrun: every rank learns the broken videos the others found (rank 0 reports them)."""
        if self.dist is None or self.opt.linear_probe:
            return
        for part in self.dist.gather(self.bad):
            for v, reason in part.items():
                if v not in self.bad:
                    self.bad[v] = reason
                if v not in self.reported:
                    self.reported.add(v)
                    _event(self.emit, "skipped", path=self.data.train.items[v].path, reason=reason, rank=self.rank)

    def _end_epoch(self, epoch: int, val: dict[str, Any] | None) -> None:
        self._merge_bad()
        acc = self._reduced(self.acc)
        self.acc = self._fresh_acc()
        n = max(acc["clips"], 1.0)
        top1 = val["metrics"]["top1"] if val else None
        is_best = top1 is not None and (self.best is None or top1 > self.best["top1"])
        rec = {"type": "epoch", "epoch": epoch + 1, "step": self.step, "train_loss": acc["loss"] / n,
               "train_top1": acc["correct"] / n, "lr": self.optimizer.param_groups[0]["lr"],
               "val_top1": top1, "val_top5": val["metrics"].get("top5") if val and val["k"] == 5 else None,
               "val_mean_class_accuracy": val["metrics"]["mean_class_accuracy"] if val else None,
               "val_failed": val["counts"]["failed"] if val else None, "skipped_videos": len(self.bad),
               "best": is_best, "time_s": round(self.wall_before + time.monotonic() - self.t_start, 3)}
        self.history.append(rec)
        self._write_metrics(rec)
        if is_best:
            self.best = {"epoch": epoch + 1, "step": self.step, "top1": top1, "top5": rec["val_top5"],
                         "mean_class_accuracy": rec["val_mean_class_accuracy"]}
            if self.main:
                self.serial += 1
                self.best["file"] = self.files.checkpoints.write_tensors(
                    "best", self.serial, {f"model.{k}": v for k, v in trainable_state(self.net).items()})
        self._checkpoint()
        _event(self.emit, "epoch", **rec, epochs=self.opt.epochs)

    # -- validation -------------------------------------------------------------------------------------------
    def _validate(self) -> dict[str, Any]:
        """Top-1 etc. of the validation set, scored as ``classify``/``evaluate`` score it."""
        if self.opt.linear_probe:
            return self._validate_probe()
        from ..engine import ClassifyOptions, default_batch_size, score_videos, video_result
        from ..jobs import Shard

        data = self.data
        n = len(data.val)
        positions = list(Shard(self.rank, self.world).positions(n))
        paths = [data.val.items[i].path for i in positions]
        errors = {k: data.val.items[i].error for k, i in enumerate(positions) if data.val.items[i].error}
        options = ClassifyOptions(views=Views.parse(self.opt.val_views), batch_size=default_batch_size(self.device),
                                  workers=self.opt.workers, decoder=self.opt.decoder, dtype=self.precision,
                                  timeout=self.opt.timeout)
        classes = data.classes
        k = min(5, len(classes))
        mine: list[tuple[int, int, tuple[int, ...] | None]] = []
        self.net.eval()
        _event(self.emit, "validating", total=n)
        try:
            for out in score_videos(self.net, paths, options, errors=errors, indices=positions):
                _, probs = video_result(out, classes, top_k=k)
                ranked = tuple(int(j) for j in probs.topk(k).indices) if probs is not None else None
                mine.append((out.video.index, data.val_targets[out.video.index], ranked))
                _event(self.emit, "validated", done=len(mine) * self.world, total=n)
        finally:
            self.net.train()
        everything = [r for part in self.dist.gather(mine) for r in part] if self.dist is not None else mine
        everything.sort(key=lambda r: r[0])
        report = compute_metrics([Outcome(t, r) for _, t, r in everything], classes, k=k)
        report["k"] = k
        return report

    # -- linear probe -----------------------------------------------------------------------------------------
    def _probe_rows(self) -> int:
        return int(self.probe_x.shape[0])

    def _prepare_probe(self) -> None:
        """Features of every training and validation video, once (``extract-features``: cached in DIR/features,
        resumable), then the head trains on them."""
        from ..features import FeatureOptions, extract_features

        data, opt = self.data, self.opt
        feats = self.files.features
        feats.mkdir(parents=True, exist_ok=True)
        self.net.eval()

        def extract(name: str, paths: list[str], errors: dict[int, str], views: str) -> tuple[np.ndarray, list]:
            fo = FeatureOptions(views=views, per="clip", compute_dtype=self.precision, workers=opt.workers,
                                decoder=opt.decoder, timeout=opt.timeout)
            _event(self.emit, "features", name=name, total=len(paths), done=0)
            count = {"n": 0}

            def on_video(info: dict[str, Any]) -> None:
                count["n"] += 1
                _event(self.emit, "features", name=name, total=len(paths), done=count["n"])

            res = extract_features(self.net, paths, feats / f"{name}.npy", options=fo, errors=errors, resume=True,
                                   dist=self.dist, on_video=on_video)
            if self.dist is not None:
                self.dist.gather(None)  # rank 0 has merged the shards
            side = json.loads(res.sidecar.read_text(encoding="utf-8") if res.sidecar else
                              (feats / f"{name}.json").read_text(encoding="utf-8"))
            x = np.load(feats / f"{name}.npy", allow_pickle=False)
            return x, side

        self.probe_x, side = extract("train", data.train.paths, data.train_errors, "1x1")
        self.probe_video = np.asarray([r["video_index"] for r in side["rows"]], dtype=np.int64)
        self.probe_y = np.asarray([data.targets[i] for i in self.probe_video], dtype=np.int64)
        for f in side.get("failures", []):
            self._skip(int(f["video_index"]), f["video"], f["error"])
        if data.val is not None:
            vx, vside = extract("val", data.val.paths, data.val_errors, self.opt.val_views)
            self.val_x, self.val_video = vx, np.asarray([r["video_index"] for r in vside["rows"]], dtype=np.int64)
            self.val_failed = len(vside.get("failures", []))
        if self._probe_rows() < 1:
            raise UsageError(f"{data.train.source}: no training video could be decoded")
        self.steps_per_epoch = self._steps_per_epoch()
        self.scheduler = self._scheduler()
        if self.resume_scheduler is not None:  # a resumed probe: the checkpoint's scheduler state
            self.scheduler.load_state_dict(self.resume_scheduler)
            self.scheduler.step_update(num_updates=self.step)

    def _probe_batches(self, epoch: int, start: int) -> Iterator[tuple[int, list[torch.Tensor], list[int]]]:
        order = epoch_order(self.opt.seed, epoch, self._probe_rows())
        x = torch.from_numpy(np.ascontiguousarray(self.probe_x, dtype=np.float32))
        for k in range(start, self._micro_batches()):
            idx = order[k * self.batch:(k + 1) * self.batch]
            yield k, list(x[idx].to(self.device)), [int(v) for v in self.probe_y[idx]]

    def _validate_probe(self) -> dict[str, Any]:
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

    # -- checkpoints ------------------------------------------------------------------------------------------
    def _gather_rng(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        mine = (rng_tensors(self.rank), python_rng_state())
        parts = self.dist.gather(mine) if self.dist is not None else [mine]
        tensors: dict[str, torch.Tensor] = {}
        plain: dict[str, Any] = {}
        for r, (t, p) in enumerate(parts):
            tensors.update(t)
            plain[str(r)] = p
        return tensors, plain

    def _checkpoint(self, done: bool = False) -> dict[str, Any] | None:
        """Write a checkpoint (rank 0; every rank hands over its RNG state): metrics.jsonl is fsync'ed first, so
        the byte length recorded is on disk."""
        rng, plain = self._gather_rng()
        if not self.main:
            return None
        self.serial += 1
        opt_t, opt_meta = optimizer_tensors(self.optimizer)
        tensors = {**{f"model.{k}": v for k, v in trainable_state(self.net).items()}, **opt_t, **rng}
        name = self.files.checkpoints.write_tensors("state", self.serial, tensors)
        self.metrics_f.flush()
        os.fsync(self.metrics_f.fileno())
        meta = {
            "fingerprint": self.fingerprint, "step": self.step, "epoch": self.epoch, "micro": self.micro,
            "serial": self.serial, "tensors": name, "best": self.best, "done": done,
            "optimizer": opt_meta, "scheduler": _jsonable(self.scheduler.state_dict()),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None, "rng": plain,
            "metrics_bytes": self.metrics_f.tell(), "bad": {str(k): v for k, v in sorted(self.bad.items())},
            "history": self.history, "acc": self.acc, "log_acc": self.log_acc,
            "wall_s": self.wall_before + time.monotonic() - self.t_start, "tool_version": __version__,
        }
        self.files.checkpoints.commit(meta)
        _event(self.emit, "saved", step=self.step, epoch=self.epoch, micro=self.micro)
        return meta

    def _load_checkpoint(self) -> None:
        meta, tensors = self.files.checkpoints.read()
        diff = differences(meta.get("fingerprint", {}), self.fingerprint)
        if diff:
            raise UsageError(f"{self.files.checkpoints.latest}: cannot resume: the interrupted run used different "
                             f"settings: {'; '.join(diff[:4])}. Resume with the same data, model and options, or "
                             "pass --overwrite (without --resume) to start over")
        load_trainable(self.net, tensors)
        self.net.to(self.device)
        load_optimizer(self.optimizer, tensors, meta["optimizer"])
        self.step, self.epoch, self.micro, self.serial = meta["step"], meta["epoch"], meta["micro"], meta["serial"]
        self.resume_scheduler = meta["scheduler"]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(meta["scheduler"])
            self.scheduler.step_update(num_updates=self.step)
        if self.scaler is not None and meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        restore_rng(tensors, (meta.get("rng") or {}).get(str(self.rank)), self.rank)
        self.best = meta.get("best")
        self.bad = {int(k): v for k, v in meta.get("bad", {}).items()}
        self.reported = set(self.bad)
        self.history = meta.get("history", [])
        self.acc, self.log_acc = meta.get("acc", self._fresh_acc()), meta.get("log_acc", self._fresh_acc())
        self.wall_before = float(meta.get("wall_s", 0.0))
        self.resumed_step = self.step
        self.metrics_bytes = int(meta.get("metrics_bytes", 0))

    # -- logs -------------------------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        path = self.files.metrics
        if self.resumed_step and path.exists():
            with open(path, "r+b") as f:  # lines the killed run wrote after its last checkpoint are redone
                f.truncate(self.metrics_bytes)
        elif path.exists() and not self.resumed_step:
            path.unlink()
        self.metrics_f = open(path, "ab")
        if self.opt.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.files.tensorboard), purge_step=self.step or None)

    def _close_logs(self) -> None:
        if self.metrics_f is not None:
            with contextlib.suppress(OSError):
                self.metrics_f.flush()
                os.fsync(self.metrics_f.fileno())
            self.metrics_f.close()
            self.metrics_f = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None

    def _write_metrics(self, line: dict[str, Any]) -> None:
        if not self.main:
            return
        self.metrics_f.write((json.dumps(line, allow_nan=False) + "\n").encode("utf-8"))
        self.metrics_f.flush()
        if self.tb is not None:
            prefix = "train" if line["type"] == "step" else "epoch"
            for key, value in line.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "epoch"):
                    self.tb.add_scalar(f"{prefix}/{key}", value, line["step"])

    # -- the end ----------------------------------------------------------------------------------------------
    def _finish(self, wall: float) -> TrainResult:
        opt = self.opt
        selected = "best" if self.best is not None else "last"
        last_top1 = self.history[-1].get("val_top1") if self.history else None
        result = TrainResult(out_dir=self.files.folder, classes=list(self.data.classes), epochs=opt.epochs,
                             steps=self.step, selected=selected,
                             best_epoch=self.best["epoch"] if self.best else None,
                             best_top1=self.best["top1"] if self.best else None, last_top1=last_top1,
                             skipped=len(self.bad), resumed_step=self.resumed_step, wall_s=wall,
                             history=list(self.history))
        if self.main:
            state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in self.net.state_dict().items()}
            if self.best is not None:
                best = self.files.checkpoints.read_tensors(self.best["file"])
                state.update({k[len("model."):]: v.float() for k, v in best.items() if k.startswith("model.")})
            config = self._final_config(selected, wall)
            self._close_logs()
            write_outputs(self.files, state, config, self.history, self.base)
            if not opt.keep_checkpoints:
                for p in (self.files.checkpoints.folder, self.files.features):
                    shutil.rmtree(p, ignore_errors=True)
                fsync_path(self.files.folder)
        if self.dist is not None:
            self.dist.gather(None)
        return result

    def _final_config(self, selected: str, wall: float) -> TokShiftConfig:
        cfg = dataclasses.replace(self.net.config)
        best = {k: v for k, v in self.best.items() if k != "file"} if self.best else None
        last = self.history[-1] if self.history else {}
        cfg.source = {
            "format": FORMAT, "trained_by": f"tokshift-cli {__version__}",
            "start": {k: v for k, v in self.base.items() if v is not None},
            "training": {
                "complete": True, "data": self.data.provenance(), "recipe": self.recipe(), "seed": self.opt.seed,
                "epochs": self.opt.epochs, "steps": self.step, "world_size": 1 if self.opt.linear_probe else self.world,
                "device": self.device.type, "selected": selected, "best": best,
                "last": {k: last.get(k) for k in ("epoch", "val_top1", "val_top5", "val_mean_class_accuracy",
                                                  "train_loss", "train_top1")} if last else None,
                "skipped_videos": len(self.bad), "wall_s": round(wall, 1),
                "start_weights_sha256": self.fingerprint["start_weights_sha256"],
            },
        }
        return cfg


def _jsonable(obj: Any) -> Any:
    """A scheduler's state as plain JSON (tuples as lists; anything else as its repr)."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else repr(o)))
