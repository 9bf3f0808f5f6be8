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
(:mod:`tokshift_cli.train.data`); a checkpoint (:mod:`tokshift_cli.train.saver`) is written at every epoch's end
and every ``save_every`` optimizer steps; ``resume=True`` goes on from the last one, and on a CPU the final
weights are bit-identical to those of an uninterrupted run. Under torchrun every rank trains on a disjoint part
of each global batch (DistributedDataParallel); rank 0 writes. The output folder is described in docs/train.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from .. import __version__
from ..errors import UsageError
from ..jobs import DistContext, weights_hash
from ..models.config import CONFIG_NAME, TokShiftConfig
from ..outputs import fsync_path
from ..video.sampling import Views
from .batches import ClipBatches
from .data import TrainData, default_short_side, load_train_data
from .files import TrainFiles, write_outputs
from .logs import RunLog
from .model import build_start_model, set_regularisation
from .probe import LinearProbe
from .saver import CheckpointSaver, RunState, fresh_sums
from .update import Updater, make_criterion
from .validation import Validator

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
        from ..video.decoders import check_decoder

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

    def to_dict(self) -> dict[str, Any]:
        """The ``tokshift train --json`` document."""
        return {"out": str(self.out_dir), "classes": self.classes, "epochs": self.epochs, "steps": self.steps,
                "selected": self.selected, "best_epoch": self.best_epoch, "best_top1": self.best_top1,
                "last_top1": self.last_top1, "skipped": self.skipped, "resumed_step": self.resumed_step,
                "complete_already": self.complete_already, "wall_s": round(self.wall_s, 3),
                "history": self.history}


# --- the run -------------------------------------------------------------------------------------------------------


def _event(on_event: Callable[[dict[str, Any]], None] | None, kind: str, **data: Any) -> None:
    if on_event is not None:
        on_event({"kind": kind, **data})


def train(train_data: str | os.PathLike, out_dir: str | os.PathLike, *, val_data: str | os.PathLike | None = None,
          model: str | None = None, init: str | None = None, labels: str | os.PathLike | None = None,
          root: str | os.PathLike | None = None, val_root: str | os.PathLike | None = None,
          options: TrainOptions | None = None, resume: bool = False, overwrite: bool = False,
          dist: DistContext | None = None, revision: str | None = None, hub_namespace: str | None = None,
          on_event: Callable[[dict[str, Any]], None] | None = None, cache_dir: str | os.PathLike | None = None,
          token: str | None = None, local_files_only: bool = False) -> TrainResult:
    """Train on ``train_data`` (every form ``evaluate`` reads: a folder per class, a list file, a CSV, the Kinetics
    CSV with ``root``) and write the model folder ``out_dir`` (module docstring). ``model``: the TokShift model to
    start from (zoo name, Hub repo, folder; default :data:`~tokshift_cli.train.model.DEFAULT_MODEL`), or ``init``:
    a timm ImageNet ViT. ``val_data``: validated after every epoch, the best epoch is kept. ``resume``: go on from
    the last checkpoint in ``out_dir`` (a fresh run when there is none). ``dist``: the torchrun context
    (:func:`tokshift_cli.jobs.init_distributed`). ``on_event``: progress callbacks (rank 0 only): dicts with a
    ``kind`` of plan, step, skipped, features, validating, epoch, saved, done. ``cache_dir``, ``token``,
    ``local_files_only``: huggingface_hub's, for downloading the starting model."""
    opt = dataclasses.replace(options or TrainOptions())
    opt.validate()
    rank = dist.rank if dist is not None else 0
    world = dist.world if dist is not None else 1
    main = rank == 0
    emit = on_event if main else None
    data = load_train_data(train_data, val=val_data, root=root, val_root=val_root, labels=labels)
    files = TrainFiles(out_dir)
    existed = files.folder.exists()

    def check() -> str:
        return files.preflight(resume=resume, overwrite=overwrite)

    action = dist.agree(check) if dist is not None else check()
    if opt.tensorboard and main:
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:
            raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard")
    run = Trainer(data, files, opt, dist=dist, rank=rank, world=world, emit=emit)
    try:
        run.setup(model=model, init=init, revision=revision, hub_namespace=hub_namespace, action=action,
                  hub=dict(cache_dir=cache_dir, token=token, local_files_only=local_files_only))
        if run.complete:
            cfg = TokShiftConfig.from_file(files.folder / CONFIG_NAME)
            t = cfg.source.get("training", {})
            best = t.get("best") or {}
            return TrainResult(out_dir=files.folder, classes=cfg.labels, epochs=t.get("epochs", 0),
                               steps=t.get("steps", 0), selected=t.get("selected", "last"),
                               best_epoch=best.get("epoch"), best_top1=best.get("top1"), complete_already=True)
        return run.train()
    except BaseException:
        # interrupted or failed before anything resumable was saved: leave the folder as the plain command needs it
        if main and (run.cleared or action == "fresh") and not files.checkpoints.exists() and not files.finished():
            if run.cleared:
                files.clear()
            if not existed:
                with contextlib.suppress(OSError):
                    files.folder.rmdir()  # only when empty
        raise


class Trainer:
    """One training run: builds the model, optimizer and scheduler, runs the loop and writes the outputs; checkpoint
    I/O (:class:`~tokshift_cli.train.saver.CheckpointSaver`), logs (:class:`~tokshift_cli.train.logs.RunLog`),
    validation (:class:`~tokshift_cli.train.validation.Validator`) and the linear probe
    (:class:`~tokshift_cli.train.probe.LinearProbe`) are collaborators built in :meth:`setup`."""

    def __init__(self, data: TrainData, files: TrainFiles, opt: TrainOptions, *, dist: DistContext | None,
                 rank: int, world: int, emit: Callable[[dict[str, Any]], None] | None):
        self.data, self.files, self.opt = data, files, opt
        self.dist, self.rank, self.world, self.emit = dist, rank, world, emit
        self.main = rank == 0
        self.state = RunState(bad=dict(data.train_errors))
        self.log = RunLog(files, main=self.main, tensorboard=opt.tensorboard)
        self.probe: LinearProbe | None = None
        self.complete = False  # --resume found a finished run with the same fingerprint
        self.cleared = False  # this run emptied the folder (a fresh start)
        self.extend_from: int | None = None  # --resume of a finished run with --epochs raised: its epochs

    # -- setup ------------------------------------------------------------------------------------------------
    def setup(self, *, model: str | None, init: str | None, revision: str | None, hub_namespace: str | None,
              action: str, hub: Mapping[str, Any] | None = None) -> None:
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
                                     revision=revision, hub_namespace=hub_namespace, **(hub or {}))

        start = self.dist.agree(build) if self.dist is not None else build()
        self.net, self.base = start.model, start.base
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
        self.saver = CheckpointSaver(self.files, run_fingerprint(self), dist=self.dist, rank=self.rank)
        self.net.to(device)
        if opt.grad_checkpointing and not probe:
            self.net.set_grad_checkpointing(True)
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        from timm.optim import create_optimizer_v2

        self.optimizer = create_optimizer_v2(self.net.head if probe else self.net,
                                             opt="momentum" if opt.optimizer == "sgd" else "adamw",
                                             lr=self.lr, weight_decay=opt.weight_decay, momentum=opt.momentum)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        # a linear probe knows its epoch length once the features are there (_prepare_probe)
        self.steps_per_epoch = 0 if probe else self._steps_per_epoch()
        self.scheduler = None if probe else self._scheduler()
        self._collaborators()
        if action == "complete":
            action, self.extend_from = self.saver.check_finished(self.opt.epochs)
            if action == "complete":
                self.complete = True
                return
        if action == "resume":
            self.saver.load(self.state, net=self.net, device=device, optimizer=self.optimizer,
                            scheduler=self.scheduler, scaler=self.scaler)
        elif self.main:
            self.files.clear()
            self.cleared = True
        if self.dist is not None:
            self.dist.gather(None)  # rank 0 has cleared or checked the folder
        self.ddp = None
        if self.dist is not None and not probe:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.net, device_ids=[device.index] if device.type == "cuda" else None,
                                               broadcast_buffers=False)
        self.updater = Updater(self.net.head if probe else (self.ddp or self.net), ddp=self.ddp, params=self.params,
                               optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                               criterion=make_criterion(opt.label_smoothing), amp_dtype=self.amp_dtype, device=device,
                               clip_grad=opt.clip_grad, dummy_shape=(1, cfg.num_frames, 3, self.size, self.size))

    def _collaborators(self) -> None:
        opt, cfg = self.opt, self.net.config
        common = dict(device=self.device, precision=self.precision, workers=opt.workers, decoder=opt.decoder,
                      timeout=opt.timeout, dist=self.dist, emit=self.emit)
        if opt.linear_probe:
            self.probe = LinearProbe(self.net, self.data, self.files, val_views=opt.val_views, **common)
        else:
            self.clips = ClipBatches(self.data, seed=opt.seed, batch=self.batch, world=self.world, rank=self.rank,
                                     size=self.size, short_side=self.short_side, frames=cfg.num_frames,
                                     stride=cfg.frame_stride, mean=cfg.mean, std=cfg.std, flip=opt.flip,
                                     jitter=opt.jitter, workers=opt.workers, decoder=opt.decoder,
                                     timeout=opt.timeout, device=self.device)
        if self.data.val is not None and not opt.linear_probe:
            self.validator = Validator(self.net, self.data, views=opt.val_views, rank=self.rank, world=self.world,
                                       **common)

    def _micro_batches(self) -> int:
        """Micro-batches per epoch of this rank."""
        if self.opt.linear_probe:
            return -(-self.probe.rows // self.batch)
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

    def _prepare_probe(self) -> None:
        self.probe.prepare(self._skip)
        self.steps_per_epoch = self._steps_per_epoch()
        self.scheduler = self.updater.scheduler = self._scheduler()
        if self.state.resume_scheduler is not None:  # a resumed probe: the checkpoint's scheduler state
            self.scheduler.load_state_dict(self.state.resume_scheduler)
            self.scheduler.step_update(num_updates=self.state.step)
        elif self.state.step:  # a finished probe trained on for more epochs: the new schedule at the step reached
            self.scheduler.step_update(num_updates=self.state.step)

    # -- the loop ---------------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        opt, st = self.opt, self.state
        t0 = time.monotonic()
        self.t_start, self.step_start = t0, st.step
        self.log.open(resumed_step=st.resumed_step, metrics_bytes=st.metrics_bytes, step=st.step)
        try:
            if opt.linear_probe:
                self._prepare_probe()
        except BaseException:
            self.log.close()
            raise
        _event(self.emit, "plan", epochs=opt.epochs, steps_per_epoch=self.steps_per_epoch,
               total_steps=opt.epochs * self.steps_per_epoch, step=st.step, epoch=st.epoch,
               train_videos=len(self.data.train), val_videos=len(self.data.val) if self.data.val else 0,
               classes=len(self.data.classes), batch=self.batch, accum=self.accum, world=self.world,
               total_batch=self.total_batch, lr=self.lr, device=str(self.device), precision=self.precision,
               linear_probe=opt.linear_probe, config=self.net.config, base=self.base, extend_from=self.extend_from)
        try:
            while st.epoch < opt.epochs:
                self._run_epoch()
            self._checkpoint(done=True)
            if self.dist is not None:
                self.dist.gather(None)
            wall = st.wall_before + time.monotonic() - t0
            result = self._finish(wall)
        finally:
            self.log.close()
        _event(self.emit, "done", out=str(self.files.folder), result=result)
        return result

    def _batches(self, epoch: int, start: int) -> Iterator[tuple[int, list[torch.Tensor], list[int]]]:
        if self.probe is not None:
            return self.probe.batches(self.opt.seed, epoch, start, self._micro_batches(), self.batch)
        return self.clips.batches(epoch, start, self.state.bad, self._skip)

    def _skip(self, video: int, path: str, reason: str) -> None:
        self.state.bad.setdefault(video, reason)
        if video not in self.state.reported:
            self.state.reported.add(video)
            _event(self.emit, "skipped", path=path, reason=reason, rank=self.rank)

    def _run_epoch(self) -> None:
        opt, st = self.opt, self.state
        epoch = st.epoch
        k_total = self._micro_batches()
        self.net.train()
        with contextlib.closing(self._batches(epoch, st.micro)) as batches:  # an error stops the decode workers
            for k, clips, ys in batches:
                w0 = (k // self.accum) * self.accum
                m = min(self.accum, k_total - w0)
                last = k - w0 == m - 1
                self._micro_step(clips, ys, m, last)
                if last:
                    self._optimizer_step(epoch, k // self.accum + 1)
                    st.micro = k + 1
                    if opt.save_every and st.step % opt.save_every == 0 and st.micro < k_total:
                        self._checkpoint()
        st.micro = 0
        st.epoch = epoch + 1
        val = None
        if self.data.val is not None:
            val = self.probe.validate() if self.probe is not None else self.validator()
        self._end_epoch(epoch, val)

    def _micro_step(self, clips: list[torch.Tensor], ys: list[int], m: int, last: bool) -> None:
        loss, correct, n = self.updater.backward(clips, ys, m, last)
        if n:
            for acc in (self.state.acc, self.state.log_acc):
                acc["loss"] += loss
                acc["correct"] += correct
                acc["clips"] += n

    def _optimizer_step(self, epoch: int, done_in_epoch: int) -> None:
        st = self.state
        st.step += 1
        lr = self.updater.step(st.step)
        st.acc["windows"] += 1
        st.log_acc["windows"] += 1
        if st.step % self.opt.log_every == 0 or done_in_epoch == self.steps_per_epoch:
            self._log_step(epoch, lr)

    def _log_step(self, epoch: int, lr: float) -> None:
        st = self.state
        acc = summed_over_ranks(self.dist if not self.opt.linear_probe else None, st.log_acc)
        st.log_acc = fresh_sums()
        dt = time.monotonic() - self.t_start
        steps, total = st.step - self.step_start, self.opt.epochs * self.steps_per_epoch
        clips_per_s = steps * self.total_batch / dt if dt > 0 else 0.0
        eta = (total - st.step) * dt / steps if steps > 0 else None
        n = max(acc["clips"], 1.0)
        line = {"type": "step", "epoch": epoch + 1, "step": st.step, "loss": acc["loss"] / n,
                "train_top1": acc["correct"] / n, "lr": lr, "clips_per_s": round(clips_per_s, 3),
                "time_s": round(st.wall_before + time.monotonic() - self.t_start, 3)}
        self.log.write(line)
        last_val = st.history[-1].get("val_top1") if st.history else None
        _event(self.emit, "step", **line, eta_s=eta, total_steps=total, val_top1=last_val, skipped=len(st.bad))

    def _merge_bad(self) -> None:
        """Under torchrun: every rank learns the broken videos the others found (rank 0 reports them)."""
        if self.dist is None or self.opt.linear_probe:
            return
        for part in self.dist.gather(self.state.bad):
            for v, reason in part.items():
                self._skip(v, self.data.train.items[v].path, reason)

    def _end_epoch(self, epoch: int, val: dict[str, Any] | None) -> None:
        st = self.state
        self._merge_bad()
        acc = summed_over_ranks(self.dist if not self.opt.linear_probe else None, st.acc)
        st.acc = fresh_sums()
        n = max(acc["clips"], 1.0)
        top1 = val["metrics"]["top1"] if val else None
        is_best = top1 is not None and (st.best is None or top1 > st.best["top1"])
        rec = {"type": "epoch", "epoch": epoch + 1, "step": st.step, "train_loss": acc["loss"] / n,
               "train_top1": acc["correct"] / n, "lr": self.optimizer.param_groups[0]["lr"],
               "val_top1": top1, "val_top5": val["metrics"].get("top5") if val and val["k"] == 5 else None,
               "val_mean_class_accuracy": val["metrics"]["mean_class_accuracy"] if val else None,
               "val_failed": val["counts"]["failed"] if val else None, "skipped_videos": len(st.bad),
               "best": is_best, "time_s": round(st.wall_before + time.monotonic() - self.t_start, 3)}
        st.history.append(rec)
        self.log.write(rec)
        if is_best:
            st.best = {"epoch": epoch + 1, "step": st.step, "top1": top1, "top5": rec["val_top5"],
                       "mean_class_accuracy": rec["val_mean_class_accuracy"]}
            self.saver.save_best(st, self.net)
        self._checkpoint()
        _event(self.emit, "epoch", **rec, epochs=self.opt.epochs)

    def _checkpoint(self, done: bool = False) -> None:
        meta = self.saver.save(self.state, net=self.net, optimizer=self.optimizer, scheduler=self.scheduler,
                               scaler=self.scaler, log=self.log, t_start=self.t_start, done=done)
        if meta is not None:
            st = self.state
            _event(self.emit, "saved", step=st.step, epoch=st.epoch, micro=st.micro)

    # -- the end ----------------------------------------------------------------------------------------------
    def _finish(self, wall: float) -> TrainResult:
        st = self.state
        selected = "best" if st.best is not None else "last"
        last_top1 = st.history[-1].get("val_top1") if st.history else None
        result = TrainResult(out_dir=self.files.folder, classes=list(self.data.classes), epochs=self.opt.epochs,
                             steps=st.step, selected=selected, best_epoch=st.best["epoch"] if st.best else None,
                             best_top1=st.best["top1"] if st.best else None, last_top1=last_top1,
                             skipped=len(st.bad), resumed_step=st.resumed_step, wall_s=wall,
                             history=list(st.history))
        if self.main:
            self.log.close()
            write_model(self, selected, wall)
        if self.dist is not None:
            self.dist.gather(None)
        return result


def write_model(run: Trainer, selected: str, wall: float) -> None:
    """Rank 0: the trained model folder (the best epoch's weights, or the last), then the checkpoints removed."""
    st, files = run.state, run.files
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in run.net.state_dict().items()}
    if st.best is not None:
        best = files.checkpoints.read_tensors(st.best["file"])
        state.update({k[len("model."):]: v.float() for k, v in best.items() if k.startswith("model.")})
    write_outputs(files, state, final_config(run, selected, wall), st.history, run.base)
    if not run.opt.keep_checkpoints:
        for p in (files.checkpoints.folder, files.features):
            shutil.rmtree(p, ignore_errors=True)
        fsync_path(files.folder)


def run_fingerprint(run: Trainer) -> dict[str, Any]:
    """What a resume must find unchanged: data, world size, starting model and weights, config, recipe."""
    return {
        "tool": FORMAT, "data": run.data.fingerprint(), "world": 1 if run.opt.linear_probe else run.world,
        "start": {k: v for k, v in run.base.items() if k in ("kind", "ref", "repo_id", "revision", "commit",
                                                            "timm_name", "hf_hub_id")},
        "start_weights_sha256": weights_hash(run.net),
        "config": {k: v for k, v in run.net.config.to_dict().items()
                   if k not in ("tool_version", "id2label", "source")},
        "recipe": run_recipe(run),
    }


def run_recipe(run: Trainer) -> dict[str, Any]:
    """Everything that changes the trained weights (the resume fingerprint and config.json record it)."""
    o = run.opt
    return {"epochs": o.epochs, "batch_size": run.batch, "accum_steps": run.accum,
            "total_batch": run.total_batch, "lr": run.lr, "lr_given": o.lr is not None,
            "optimizer": o.optimizer, "momentum": o.momentum, "weight_decay": o.weight_decay,
            "schedule": o.schedule, "warmup_epochs": o.warmup_epochs, "label_smoothing": o.label_smoothing,
            "clip_grad": o.clip_grad, "drop_path": o.drop_path, "dropout": o.dropout,
            "linear_probe": o.linear_probe, "val_views": o.val_views, "flip": o.flip, "jitter": o.jitter,
            "short_side": list(run.short_side), "seed": o.seed, "precision": run.precision}


def summed_over_ranks(dist: DistContext | None, acc: dict[str, float]) -> dict[str, float]:
    """``acc`` summed over the ranks (every rank calls this at the same step)."""
    if dist is None:
        return dict(acc)
    import torch.distributed as tdist

    keys = ("loss", "correct", "clips")
    t = torch.tensor([acc[k] for k in keys], dtype=torch.float64)
    tdist.all_reduce(t, group=dist.group)
    return {**acc, **dict(zip(keys, t.tolist()))}


def final_config(run: Trainer, selected: str, wall: float) -> TokShiftConfig:
    """The trained model's config.json: the network's config with ``source.training`` (data, recipe, results)."""
    st = run.state
    cfg = dataclasses.replace(run.net.config)
    best = {k: v for k, v in st.best.items() if k != "file"} if st.best else None
    last = st.history[-1] if st.history else {}
    cfg.source = {
        "format": FORMAT, "trained_by": f"tokshift-cli {__version__}",
        "start": {k: v for k, v in run.base.items() if v is not None},
        "training": {
            "complete": True, "data": run.data.provenance(), "recipe": run_recipe(run), "seed": run.opt.seed,
            "epochs": run.opt.epochs, "steps": st.step, "world_size": 1 if run.opt.linear_probe else run.world,
            "device": run.device.type, "selected": selected, "best": best,
            "last": {k: last.get(k) for k in ("epoch", "val_top1", "val_top5", "val_mean_class_accuracy",
                                              "train_loss", "train_top1")} if last else None,
            "skipped_videos": len(st.bad), "wall_s": round(wall, 1),
            "start_weights_sha256": run.saver.fingerprint["start_weights_sha256"],
            "fingerprint": run.saver.fingerprint,  # what a later --resume compares against
        },
    }
    return cfg
