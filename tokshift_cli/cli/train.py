"""`tokshift train`: parse, call :func:`tokshift_cli.train.train`, render progress on stderr (JSON on stdout)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .options import CacheDirOpt, choice, DtypeOpt, JsonOpt, LocalFilesOnlyOpt, OverwriteOpt, ResumeOpt, TokenOpt
from .render import percent
from .app import (DecoderOpt, DeviceOpt, EXIT_FAILED_INPUTS, EXIT_OK, NamespaceOpt, RevisionOpt, TimeoutOpt, WorkersOpt,
                  app, resolve_timeout, run_guarded, say, stderr)
from ..errors import UsageError


def _short_side(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        lo, hi = (int(v) for v in text.replace(":", ",").split(","))
    except ValueError:
        raise UsageError(f"--short-side {text!r}: expected MIN,MAX in pixels, e.g. 224,330") from None
    return lo, hi


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _pct(v: float | None) -> str:
    return "-" if v is None else percent(v)


class _Display:
    """Progress on stderr: a live bar on a terminal (epoch, step, loss, lr, clips/s, ETA, last val top-1), one line
    per epoch everywhere, one line per skipped video."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 TextColumn("ETA {task.fields[eta]}"), console=stderr, transient=True,
                                 redirect_stdout=False, redirect_stderr=False, disable=not stderr.is_terminal)
        self.task: Any = None
        self.aux: Any = None
        self.epochs = 0
        self.saved_once = False

    def __enter__(self) -> "_Display":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, e: dict[str, Any]) -> None:
        kind = e["kind"]
        p = self.progress
        if kind == "plan":
            self.epochs = e["epochs"]
            cfg = e["config"]
            base = e["base"]
            start = base.get("timm_name") or base.get("ref")
            what = "linear probe (head only)" if e["linear_probe"] else ("TokShift" if cfg.shift else "plain ViT")
            say(f"training {what} from {start}: {e['train_videos']} clips, {e['classes']} classes"
                f"{', ' + str(e['val_videos']) + ' validation clips' if e['val_videos'] else ''}; "
                f"{cfg.num_frames}x{cfg.frame_stride} at {cfg.img_size} px; {e['epochs']} epochs x "
                f"{e['steps_per_epoch']} steps of {e['batch']} x {e['accum']} x {e['world']} = {e['total_batch']} "
                f"clips, lr {e['lr']:.4g}; {e['device']}, {e['precision']}")
            if e["step"]:
                if e.get("extend_from"):
                    say(f"continuing the finished {e['extend_from']}-epoch run to {e['epochs']} epochs at step "
                        f"{e['step']}")
                else:
                    say(f"resuming at step {e['step']} (epoch {e['epoch'] + 1})")
            self.task = p.add_task(f"epoch {e['epoch'] + 1}/{e['epochs']}", total=e["total_steps"],
                                   completed=e["step"], info="", eta="-")
        elif kind == "step" and self.task is not None:
            info = (f"loss {e['loss']:.4f}  lr {e['lr']:.3g}  {e['clips_per_s']:.1f} clips/s  "
                    f"val top-1 {_pct(e.get('val_top1'))}")
            p.update(self.task, completed=e["step"], description=f"epoch {e['epoch']}/{self.epochs}", info=info,
                     eta=_duration(e.get("eta_s")))
        elif kind == "skipped":
            say(f"{e['path']}: {e['reason']} (skipped)")
        elif kind in ("validating", "features"):
            name = "validating" if kind == "validating" else f"{e['name']} features"
            if self.aux is None:
                self.aux = p.add_task(name, total=e["total"], info="", eta="")
            else:
                p.reset(self.aux, total=e["total"], description=name, info="", eta="")
            if kind == "features":
                p.update(self.aux, completed=e["done"])
        elif kind == "validated" and self.aux is not None:
            p.update(self.aux, completed=min(e["done"], e["total"]))
        elif kind == "epoch":
            if self.aux is not None:
                p.remove_task(self.aux)
                self.aux = None
            val = f", val top-1 {_pct(e['val_top1'])}{' (best)' if e['best'] else ''}" if e["val_top1"] is not None \
                else ""
            say(f"epoch {e['epoch']}/{e['epochs']}: loss {e['train_loss']:.4f}, train top-1 "
                f"{_pct(e['train_top1'])}{val}, step {e['step']}, {_duration(e['time_s'])}")
        elif kind == "saved":
            self.saved_once = True


@app.command()
def train(
    train_data: Annotated[str, typer.Argument(help="Training clips: a folder with a sub-folder per class, a list "
                                              "file ('path label' lines), a CSV (path,label) or the Kinetics CSV "
                                              "(with --root).", show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", rich_help_panel="Data", help="The model folder to write (config.json, "
                                      "model.safetensors, README.md, metrics.jsonl, training_curve.png).",
                                      show_default=False)],
    val: Annotated[Optional[str], typer.Option(
        "--val", rich_help_panel="Data", help="Validation clips (same forms): scored after every "
                                               "epoch; the best epoch by top-1 is kept.", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", rich_help_panel="Model", help="TokShift model to start from: zoo name, Hub "
                                                 "repo, folder (its head is replaced). Default tokshift-b16-8x224.",
                                                 show_default=False)] = None,
    init: Annotated[Optional[str], typer.Option(
        rich_help_panel="Model", help="Start from a timm ImageNet ViT instead, e.g. "
                                                "vit_base_patch16_224.orig_in21k (the authors' start).",
                                                show_default=False)] = None,
    labels: Annotated[Optional[Path], typer.Option(
        rich_help_panel="Data", help="Class names in the order to use (one per line or a JSON "
                                                   "list); default: the training labels, sorted.",
                                                   show_default=False)] = None,
    root: Annotated[Optional[Path], typer.Option(
        rich_help_panel="Data", help="Folder the training list's paths are relative to.",
                                                 show_default=False)] = None,
    val_root: Annotated[Optional[Path], typer.Option(
        rich_help_panel="Data", help="Folder the validation list's paths are relative to.",
                                                     show_default=False)] = None,
    epochs: Annotated[int, typer.Option(
        rich_help_panel="Recipe", min=1, help="Epochs (the step schedule's drops scale with it).")] = 18,
    batch_size: Annotated[Optional[int], typer.Option(
        rich_help_panel="Recipe", min=1, help="Clips per forward pass per process (default 8 "
                                                      "on CUDA, 2 on a CPU; 64 feature rows for --linear-probe).",
                                                      show_default=False)] = None,
    accum_steps: Annotated[Optional[int], typer.Option(
        rich_help_panel="Recipe", min=1, help="Forward passes per optimizer step (default 10, "
                                                       "the authors'; 1 for --linear-probe).",
                                                       show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(
        rich_help_panel="Recipe", help="Learning rate, used as is. Default: the authors' 0.1 per 420 "
                                                "clips per step, scaled to the total batch (AdamW: 5e-4 per 512).",
                                                show_default=False)] = None,
    optimizer: Annotated[str, typer.Option(
        rich_help_panel="Recipe", callback=choice("--optimizer", ("sgd", "adamw")),
        help="sgd (momentum, the authors') or adamw.")] = "sgd",
    momentum: Annotated[float, typer.Option(
        rich_help_panel="Recipe", help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(
        rich_help_panel="Recipe", help="Weight decay (not on biases, norms, position embeddings).")
                            ] = 0.0,
    schedule: Annotated[str, typer.Option(
        rich_help_panel="Recipe", callback=choice("--schedule", ("step", "cosine")),
        help="step (lr x0.1 at 10/18 and 15/18 of the run) or cosine.")] = "step",
    warmup_epochs: Annotated[float, typer.Option(
        rich_help_panel="Recipe", help="Linear warm-up, in epochs.")] = 0.0,
    label_smoothing: Annotated[float, typer.Option(
        rich_help_panel="Recipe", help="Label smoothing.")] = 0.1,
    clip_grad: Annotated[float, typer.Option(
        rich_help_panel="Recipe", help="Clip the gradient norm at this (0: no clipping).")] = 1.0,
    drop_path: Annotated[float, typer.Option(
        rich_help_panel="Recipe", help="Stochastic depth rate (rising over the blocks).")] = 0.0,
    dropout: Annotated[float, typer.Option(
        rich_help_panel="Recipe", help="Dropout rate.")] = 0.0,
    frames: Annotated[Optional[int], typer.Option(
        rich_help_panel="Model", min=1, help="Frames per clip (default: the starting model's; 8 "
                                                  "for --init).", show_default=False)] = None,
    stride: Annotated[Optional[int], typer.Option(
        rich_help_panel="Model", min=1, help="Frames between clip frames (default: the starting "
                                                  "model's; 32 for --init).", show_default=False)] = None,
    img_size: Annotated[Optional[int], typer.Option(
        rich_help_panel="Model", min=16, help="Input size in px (position embeddings are "
                                                    "resampled when it differs from the starting model's).",
                                                    show_default=False)] = None,
    fold_div: Annotated[Optional[int], typer.Option(
        rich_help_panel="Model", min=2, help="1/fold_div of the [CLS] channels shift each way.",
                                                    show_default=False)] = None,
    shift: Annotated[Optional[bool], typer.Option(
        "--shift/--no-shift", rich_help_panel="Model", help="--no-shift trains the plain video-ViT "
                                                  "baseline (default: the starting model's; on for --init).",
                                                  show_default=False)] = None,
    linear_probe: Annotated[bool, typer.Option(
        rich_help_panel="Model", help="Freeze the backbone: features are computed once (cached, "
                                               "resumable) and only the head trains on them.")] = False,
    val_views: Annotated[str, typer.Option(
        rich_help_panel="Augmentation and validation", help="CLIPSxCROPS of the per-epoch validation (the authors: 1x3).")
                         ] = "1x3",
    flip: Annotated[bool, typer.Option(
        "--flip/--no-flip", rich_help_panel="Augmentation and validation", help="Random horizontal flips (p 0.5).")] = True,
    jitter: Annotated[bool, typer.Option(
        "--jitter/--no-jitter", rich_help_panel="Augmentation and validation", help="Colour jitter: brightness, saturation, "
                                         "gamma, hue, each p 0.1.")] = True,
    short_side: Annotated[Optional[str], typer.Option(
        rich_help_panel="Augmentation and validation", help="MIN,MAX px of the randomly resized short side "
                                                      "(default: the crop size to crop x 330/224).",
                                                      show_default=False)] = None,
    seed: Annotated[int, typer.Option(
        rich_help_panel="Recipe", help="Seed of every random choice (order, clips, augmentation, init).")] = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    workers: WorkersOpt = 2,
    decoder: DecoderOpt = "auto",
    timeout: TimeoutOpt = None,
    grad_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in the backward pass: less "
                                                     "memory (ViT-L at 12x384), about a quarter more time.")] = False,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    save_every: Annotated[Optional[int], typer.Option(
        rich_help_panel="Checkpoints and logs", min=1, help="Also checkpoint every N optimizer steps (always: "
                                                      "every epoch).", show_default=False)] = None,
    log_every: Annotated[int, typer.Option(
        rich_help_panel="Checkpoints and logs", min=1, help="A metrics.jsonl line every N optimizer steps.")] = 10,
    tensorboard: Annotated[bool, typer.Option(
        rich_help_panel="Checkpoints and logs", help="Also write TensorBoard logs to DIR/tensorboard.")] = False,
    keep_checkpoints: Annotated[bool, typer.Option(
        rich_help_panel="Checkpoints and logs", help="Keep DIR/checkpoints (and a linear probe's features) "
                                                   "after training.")] = False,
    revision: RevisionOpt = None,
    hub_namespace: NamespaceOpt = None,
    cache_dir: CacheDirOpt = None,
    token: TokenOpt = None,
    local_files_only: LocalFilesOnlyOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Fine-tune TokShift on your own labelled clips (the authors' recipe by default); resumable, torchrun-aware."""

    def body() -> int:
        from .app import quiet_hub_logging
        from ..engine import resolve_device
        from ..jobs import init_distributed
        from ..train.loop import TrainOptions, resolve_precision
        from ..train.loop import train as run_train
        from ..video.gpu import check_decoder_request

        opts = TrainOptions(
            epochs=epochs, batch_size=batch_size, accum_steps=accum_steps, lr=lr, optimizer=optimizer,
            momentum=momentum, weight_decay=weight_decay, schedule=schedule, warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing, clip_grad=clip_grad, drop_path=drop_path, dropout=dropout,
            frames=frames, stride=stride, img_size=img_size, fold_div=fold_div, shift=shift,
            linear_probe=linear_probe, val_views=val_views, flip=flip, jitter=jitter,
            short_side=_short_side(short_side), seed=seed, device=device, dtype=dtype, workers=workers,
            decoder=decoder, timeout=resolve_timeout(timeout, workers), grad_checkpointing=grad_checkpointing,
            save_every=save_every, log_every=log_every, tensorboard=tensorboard, keep_checkpoints=keep_checkpoints)
        opts.validate()
        if model and init:
            raise UsageError("give --model (a TokShift model) or --init (a timm ImageNet ViT), not both")
        dev = resolve_device(device)
        resolve_precision(dtype, dev)  # a bad --dtype is exit 2 before anything loads
        check_decoder_request(decoder, dev)
        quiet_hub_logging()
        dist = init_distributed(dev.type)  # None unless under torchrun
        show = dist is None or dist.is_main
        t0 = time.perf_counter()
        display = _Display()
        try:
            with display:
                try:
                    res = run_train(train_data, out, val_data=val, model=model, init=init, labels=labels, root=root,
                                    val_root=val_root, options=opts, resume=resume, overwrite=overwrite, dist=dist,
                                    revision=revision, hub_namespace=hub_namespace,
                                    on_event=display if show else None, cache_dir=cache_dir, token=token,
                                    local_files_only=local_files_only)
                except KeyboardInterrupt:
                    if show and display.saved_once:
                        stderr.print("progress saved: run the same command with --resume to continue",
                                      style="yellow")
                    raise
        finally:
            if dist is not None:
                dist.close()
        if not show:
            return EXIT_OK
        if res.complete_already:
            say(f"{out}: training is complete already (--resume): nothing to do")
        else:
            best = (f"best epoch {res.best_epoch}: val top-1 {_pct(res.best_top1)}" if res.best_epoch
                    else "no validation set: the last epoch")
            skipped = f", {res.skipped} training videos skipped" if res.skipped else ""
            say(f"{res.epochs} epochs, {res.steps} steps in {_duration(time.perf_counter() - t0)}; {best}{skipped} "
                f"-> {out}")
        if json_out:
            from ..outputs import to_json

            sys.stdout.write(to_json(res.to_dict()) + "\n")
            sys.stdout.flush()
        return EXIT_FAILED_INPUTS if res.skipped else EXIT_OK

    run_guarded(body)
