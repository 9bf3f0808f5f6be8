"""The output folder of ``tokshift train``: what it holds, the refusal to overwrite, and the model card and
training curve written at the end (the folder layout is in :mod:`tokshift_cli.train`'s docstring)."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch

from .checkpoint import CheckpointFiles
from ..errors import OutputExistsError
from ..models.config import CONFIG_NAME, WEIGHTS_NAME, TokShiftConfig
from ..models.convert import CITATION, write_model_files
from ..outputs import atomic_write_bytes, ensure_output_folder, is_probe_file

__all__ = ["TrainFiles", "write_outputs", "training_curve_png", "model_card"]

_OWNED = (CONFIG_NAME, WEIGHTS_NAME, "README.md", "metrics.jsonl", "training_curve.png", "checkpoints", "features",
          "tensorboard")


class TrainFiles:
    """Where a training run writes (:mod:`tokshift_cli.train`'s docstring)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.checkpoints = CheckpointFiles(self.folder / "checkpoints")
        self.metrics = self.folder / "metrics.jsonl"
        self.curve = self.folder / "training_curve.png"
        self.features = self.folder / "features"
        self.tensorboard = self.folder / "tensorboard"

    def finished(self) -> bool:
        """The folder holds the outputs of a completed training run."""
        try:
            cfg = json.loads((self.folder / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        training = ((cfg.get("source") or {}).get("training") or {}) if isinstance(cfg, dict) else {}
        return bool(training.get("complete")) and (self.folder / WEIGHTS_NAME).is_file()

    def preflight(self, *, resume: bool, overwrite: bool) -> str:
        """``"fresh"``, ``"resume"`` or ``"complete"``, before any work; :class:`OutputExistsError` rather than
        replace anything without ``overwrite``."""
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputExistsError(f"{self.folder}: is a file; give a folder for the trained model")
        ensure_output_folder(self.folder)
        if resume and self.finished():  # config.json is written last: the whole model is there
            return "complete"
        if self.checkpoints.exists():
            if resume:
                return "resume"
            if not overwrite:
                what = ("a trained model (and its checkpoints) is here; pass" if self.finished() else
                        "an interrupted training run is here; pass --resume to continue it, or")
                raise OutputExistsError(f"{self.checkpoints.latest}: {what} --overwrite to start over")
            return "fresh"
        owned = [n for n in _OWNED if (self.folder / n).exists()]
        # listed once (a name seen here may be gone a moment later), other ranks' write probes not counted
        present = sorted(p.name for p in self.folder.iterdir() if not is_probe_file(p.name))
        if not overwrite and not resume and present:
            what = owned[0] if owned else present[0]
            raise OutputExistsError(f"{self.folder}: not empty (it has {what}); pass --overwrite to replace a "
                                    "trained model, --resume to continue an interrupted run, or choose another "
                                    "folder")
        return "fresh"

    def clear(self) -> None:
        """Remove what an earlier run wrote here (nothing else)."""
        for name in [*_OWNED, *(p.name for p in self.folder.glob(".model.tmp-*"))]:
            p = self.folder / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()


def write_outputs(files: TrainFiles, state: dict[str, torch.Tensor], config: TokShiftConfig,
                  history: list[dict[str, Any]], base: dict[str, Any]) -> None:
    """The curve, then the model files (:func:`write_model_files`) with the training model card."""
    curve = training_curve_png(history)
    if curve is not None:
        atomic_write_bytes(files.curve, curve)
    write_model_files(files.folder, state, config, model_card(config, history, base, curve is not None))


def training_curve_png(history: Sequence[dict[str, Any]]) -> bytes | None:
    """The training curve (train loss; train and validation top-1 per epoch) as PNG bytes; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(8, 3), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(epochs, [h["train_loss"] for h in history], marker="o", ms=3)
    ax1.set(xlabel="epoch", ylabel="train loss", title="loss")
    ax2.plot(epochs, [h["train_top1"] for h in history], marker="o", ms=3, label="train (augmented clips)")
    if any(h.get("val_top1") is not None for h in history):
        ax2.plot(epochs, [h.get("val_top1") for h in history], marker="o", ms=3, label="validation")
    ax2.set(xlabel="epoch", ylabel="top-1", title="accuracy", ylim=(-0.02, 1.02))
    ax2.legend(loc="lower right", fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def model_card(config: TokShiftConfig, history: Sequence[dict[str, Any]], base: dict[str, Any],
               with_curve: bool = True) -> str:
    """README.md of a trained model folder: what it is, how it was trained, its validation metrics."""
    t = config.source.get("training", {})
    r = t.get("recipe", {})
    best = t.get("best") or {}
    start = base.get("timm_name") or base.get("ref") or "?"
    kind = "TokShift" if config.shift else "plain video-ViT baseline (no token shift)"
    classes = ", ".join(config.labels[:20]) + (f" ... ({config.num_classes} in all)" if config.num_classes > 20 else "")
    rows = "\n".join(f"| {h['epoch']} | {h['train_loss']:.4f} | {_pct(h['train_top1'])} | {_pct(h.get('val_top1'))} "
                     f"| {_pct(h.get('val_top5'))} |" for h in history)
    data = t.get("data", {})
    val = data.get("val") or {}
    selected = (f"the best epoch by validation top-1 (epoch {best.get('epoch')}: {_pct(best.get('top1'))} %)"
                if t.get("selected") == "best" else "the last epoch (no validation set)")
    curve = "\n![training curve](training_curve.png)\n" if with_curve else ""
    probe = " Linear probe: only the head was trained, on frozen features." if r.get("linear_probe") else ""
    return f"""---
library_name: tokshift-cli
tags:
- video-classification
- tokshift
license: apache-2.0
---

# TokShift model trained with `tokshift train`

{kind}: ViT/{config.patch_size} width {config.embed_dim}, depth {config.depth}, {config.num_heads} heads, \
{config.img_size} px, {config.num_frames} frames every {config.frame_stride}, fold_div {config.fold_div}; \
{config.num_classes} classes: {classes}.

Started from `{start}` ({base.get('kind')}).{probe} The weights are {selected}.

- Training data: {(data.get('train') or {}).get('videos')} videos ({(data.get('train') or {}).get('format')}), \
sha256 `{(data.get('train') or {}).get('sha256')}`; validation: {val.get('videos', 0)} videos, \
{r.get('val_views')} views per video.
- Recipe: {r.get('optimizer')} lr {r.get('lr'):.4g} ({r.get('schedule')} schedule, warm-up {r.get('warmup_epochs')} \
epochs), {t.get('epochs')} epochs, {r.get('batch_size')} clips x {r.get('accum_steps')} accumulation x \
{t.get('world_size')} processes = {r.get('total_batch')} clips per step, weight decay {r.get('weight_decay')}, \
label smoothing {r.get('label_smoothing')}, gradient clipping {r.get('clip_grad')}, flip {r.get('flip')}, colour \
jitter {r.get('jitter')}, {r.get('precision')}, seed {t.get('seed')}.
{curve}
| epoch | train loss | train top-1 % | val top-1 % | val top-5 % |
|---|---|---|---|---|
{rows}

## Use

```bash
pip install tokshift-cli
tokshift classify video.mp4 --model PATH_OR_HUB_REPO
tokshift evaluate VAL_DATA --model PATH_OR_HUB_REPO
```

{CITATION}"""
