"""Training data for ``tokshift train``: labelled sets -> classes and targets, each epoch's order, each clip's
random choices, the decode stream (killable workers) and the authors' training augmentation as tensor ops.

Reproducibility: every random choice comes from a generator seeded by numbers, never from a global state:

* the order of epoch ``e`` is ``permutation(N)`` of ``default_rng([seed, e, 0])``;
* clip ``v``'s choices in epoch ``e`` (start, short side, crop, flip, jitter) are drawn from
  ``default_rng([seed, e, v, 1])`` in a fixed order, all of them even when flip or jitter is off.

So a clip does not depend on the number of decode workers, on which other clips share its batch, or on whether
the run was interrupted and resumed. Under torchrun every rank takes a disjoint, contiguous part of each global
batch (:func:`rank_share`), so the union of the ranks' batches is the batch one process with the same total batch
would see.

The augmentation is the authors' ``Train_ClipAug`` (``data/augmentation.py`` of VideoNetworks/TokShift-Transformer)
on uint8 tensors: short side resized (bicubic, antialiased) to a random size in ``[S, S*330/224]``, a random
``S x S`` crop, horizontal flip with p 0.5, then brightness (0.5-2), saturation (0.5-3), gamma (0.8-1.2) and hue
(+-0.5), each with p 0.1, then ``(x / 255 - mean) / std``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..evaluate.datasets import LabelledSet, class_names, load_labelled, match_labels, normalise_label
from ..errors import UsageError
from ..video.train_clips import decode_train_clip
from ..video.transforms import show_frames
from ..video.workers import DecodedVideo, ordered_decode

__all__ = ["TrainData", "read_class_list", "load_train_data", "ClipDraws", "clip_draws", "epoch_order",
           "rank_share", "default_short_side", "augment_clip", "decode_stream", "DECODE_CHUNK"]

#: The authors' short-side range at 224 px is [224, 330]: other crop sizes scale it.
SHORT_SIDE_RATIO = 330 / 224
#: Videos per decode run: each worker call carries the start fractions of its run, so runs stay short.
DECODE_CHUNK = 2048
_ORDER, _CLIP = 0, 1


# --- labelled sets -> classes and targets -------------------------------------------------------------------------


@dataclass
class TrainData:
    """The training set (and validation set) as ``tokshift train`` uses them."""

    classes: list[str]  #: class names by index
    train: LabelledSet
    targets: list[int]  #: class index of every training item
    val: LabelledSet | None = None
    val_targets: list[int] = field(default_factory=list)
    label_source: str = "sorted"  #: "sorted" (names from the data) or the --labels file

    @property
    def train_errors(self) -> dict[int, str]:
        """Training items known to be bad before decoding (a list naming a missing file)."""
        return {i: it.error for i, it in enumerate(self.train.items) if it.error}

    @property
    def val_errors(self) -> dict[int, str]:
        return {i: it.error for i, it in enumerate(self.val.items) if it.error} if self.val else {}

    def fingerprint(self) -> dict[str, Any]:
        """What a resume must find unchanged: the training and validation lists and the classes."""
        return {"train": set_hash(self.train, self.targets),
                "val": set_hash(self.val, self.val_targets) if self.val is not None else None,
                "classes": hashlib.sha256(json.dumps(self.classes).encode()).hexdigest()}

    def provenance(self) -> dict[str, Any]:
        """What config.json records about the data (hashes from :func:`set_hash`)."""
        def one(s: LabelledSet | None, targets: list[int]) -> dict[str, Any] | None:
            if s is None:
                return None
            return {"source": os.path.basename(os.path.normpath(s.source)), "format": s.format, "videos": len(s),
                    "sha256": set_hash(s, targets)}

        return {"train": one(self.train, self.targets), "val": one(self.val, self.val_targets),
                "classes": len(self.classes), "class_order": self.label_source}


def set_hash(data: LabelledSet, targets: Sequence[int]) -> str:
    """sha256 over (path relative to the set's root, class index, file size) of every item, in order: the same
    videos with the same labels give the same hash wherever the folder was moved."""
    h = hashlib.sha256()
    root = data.root or ""
    for it, t in zip(data.items, targets):
        rel = os.path.relpath(it.path, root) if root and not _is_url(it.path) else it.path
        try:
            size = os.path.getsize(it.path)
        except OSError:
            size = -1
        h.update(os.fsencode(rel) + f"\0{t}\0{size}\n".encode())
    return h.hexdigest()


def _is_url(path: str) -> bool:
    return "://" in path


def read_class_list(path: str | os.PathLike) -> list[str]:
    """``--labels FILE``: the class order, one name per line, or a JSON list."""
    src = os.fspath(path)
    try:
        text = Path(src).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise UsageError(f"--labels {src}: cannot read it ({(e.strerror or str(e)).lower()})") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as e:
            raise UsageError(f"--labels {src}: not valid JSON ({e})") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UsageError(f"--labels {src}: expected a JSON list of class names")
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    seen: dict[str, str] = {}
    for n in names:
        key = normalise_label(n)
        if key in seen:
            raise UsageError(f"--labels {src}: {n!r} and {seen[key]!r} are the same class name")
        seen[key] = n
    if len(names) < 2:
        raise UsageError(f"--labels {src}: needs at least 2 class names, found {len(names)}")
    return names


def _sorted_classes(labels: Sequence[str]) -> list[str]:
    """The training classes: :func:`~tokshift_cli.evaluate.datasets.class_names` (sorted names), except that labels that
    are all class numbers (MMAction2 lists: ``path 3``) sort as numbers, so index ``k`` is class ``k``."""
    distinct = list(dict.fromkeys(labels))
    if distinct and all(s.strip().isdigit() for s in distinct):
        return sorted(distinct, key=lambda s: (int(s), s))
    return class_names(distinct)


def load_train_data(train: str | os.PathLike, *, val: str | os.PathLike | None = None,
                    root: str | os.PathLike | None = None, val_root: str | os.PathLike | None = None,
                    labels: str | os.PathLike | None = None) -> TrainData:
    """Read the training (and validation) set in any form :func:`~tokshift_cli.evaluate.datasets.load_labelled` reads;
    the classes are the training labels sorted (``labels``: a file that fixes their order). Validation labels
    must be training classes (matched by normalised name, like ``evaluate``). Raises :class:`UsageError`."""
    tr = load_labelled(train, root=root)
    if labels is not None:
        classes, source = read_class_list(labels), os.path.basename(os.fspath(labels))
    else:
        classes, source = _sorted_classes(tr.labels), "sorted"
    if len(classes) < 2:
        raise UsageError(f"{train}: the training data has {len(classes)} class ({', '.join(classes)}); training "
                         "needs at least 2")
    if labels is not None:
        index = match_labels(tr, classes, against=f"--labels {labels}",
                             way_out=f"Add them to {labels}, or rename those class folders or list entries")
    else:
        index = match_labels(tr, classes)  # the classes are the training labels: every one matches
    targets = [index[it.label] for it in tr.items]
    ok = [t for t, it in zip(targets, tr.items) if not it.error]
    if not ok:
        raise UsageError(f"{train}: none of its {len(tr)} videos exists")
    out = TrainData(classes=classes, train=tr, targets=targets, label_source=source)
    if val is not None:
        vs = load_labelled(val, root=val_root)
        try:
            vindex = match_labels(vs, classes, against="the training classes",
                                  way_out="Rename them to training class names (validation labels must be "
                                          "training classes)" + (f", or add them to --labels {labels}"
                                                                 if labels is not None else ""))
        except UsageError as e:
            raise UsageError(f"--val {val}: {e}") from None
        out.val, out.val_targets = vs, [vindex[it.label] for it in vs.items]
    return out


# --- each epoch's order and each clip's random choices -----------------------------------------------------------


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of the ``n`` training items in epoch ``epoch`` (a permutation, int64)."""
    return np.random.default_rng([seed, epoch, _ORDER]).permutation(n).astype(np.int64)


def rank_share(order: np.ndarray, batch: int, world: int, rank: int) -> np.ndarray:
    """This rank's micro-batches of an epoch, ``[micro_batches, batch]`` item indices: global batch ``k`` is
    ``order[k*batch*world:(k+1)*batch*world]`` and rank ``r`` takes its ``r``-th ``batch`` items. The items after
    the last whole global batch are left out (drop_last, as the authors' loader)."""
    per = batch * world
    k = len(order) // per
    return order[:k * per].reshape(k, world, batch)[:, rank, :]


@dataclass(frozen=True)
class ClipDraws:
    """The random choices of one training clip (:func:`clip_draws`)."""

    start_u: float  #: where the clip starts: a fraction of the possible starts
    short_side: int  #: the frame's short side after resizing
    crop_uy: float  #: crop offsets as fractions of the room: top = floor(u * (H - S + 1))
    crop_ux: float
    flip: bool
    #: (applied, value) for brightness, saturation, gamma, hue, in that order
    jitter: tuple[tuple[bool, float], ...]


def default_short_side(size: int) -> tuple[int, int]:
    """The authors' short-side range for an ``size`` px crop: [S, floor(S * 330 / 224)]."""
    return size, int(math.floor(size * SHORT_SIDE_RATIO))


def clip_draws(seed: int, epoch: int, video: int, short_side: tuple[int, int]) -> ClipDraws:
    """Draw clip ``video``'s choices for epoch ``epoch`` (module docstring); always the same numbers of draws in
    the same order, whatever is switched off."""
    rng = np.random.default_rng([seed, epoch, video, _CLIP])
    start_u = float(rng.random())
    lo, hi = short_side
    short = int(rng.integers(lo, hi + 1))
    uy, ux = float(rng.random()), float(rng.random())
    flip = bool(rng.random() < 0.5)
    jit = []
    for lo_v, hi_v in ((0.5, 2.0), (0.5, 3.0), (0.8, 1.2), (-0.5, 0.5)):
        apply = bool(rng.random() < 0.1)
        jit.append((apply, float(rng.uniform(lo_v, hi_v))))
    return ClipDraws(start_u, short, uy, ux, flip, tuple(jit))


# --- decoding ------------------------------------------------------------------------------------------------------


def decode_stream(paths: Sequence[str], starts: Sequence[float], *, frames: int, stride: int, workers: int,
                  decoder: str = "auto", timeout: float | None = None, errors: dict[int, str] | None = None,
                  prefetch: int | None = None, stream: int | None = None) -> Iterator[DecodedVideo]:
    """The training clips of ``paths`` (clip ``i`` starting at fraction ``starts[i]``), in order, decoded ahead in
    killable worker processes (:func:`~tokshift_cli.video.workers.ordered_decode`); a bad file comes back with its
    ``error`` and never stops the stream. ``errors``: ``{position: reason}`` known before decoding (skipped)."""
    errors = errors or {}
    for lo in range(0, len(paths), DECODE_CHUNK):
        hi = min(lo + DECODE_CHUNK, len(paths))
        kwargs = dict(frames=frames, stride=stride, starts=[float(s) for s in starts[lo:hi]], decoder=decoder,
                      stream=stream)
        for d in ordered_decode(paths[lo:hi], decode_train_clip, workers=workers, prefetch=prefetch,
                                timeout=timeout, kwargs=kwargs,
                                errors={i - lo: e for i, e in errors.items() if lo <= i < hi}):
            d.index += lo
            yield d


# --- augmentation ----------------------------------------------------------------------------------------------


def augment_clip(d: DecodedVideo, draws: ClipDraws, *, size: int, mean: Sequence[float], std: Sequence[float],
                 flip: bool = True, jitter: bool = True, device: torch.device | str = "cpu") -> torch.Tensor:
    """One decoded training clip -> the normalised float32 clip ``[T, 3, size, size]`` the model trains on, with
    the authors' augmentation (module docstring) driven by ``draws``. ``flip``/``jitter`` False leave them out."""
    from torchvision.transforms.v2 import functional as TF

    rows = np.searchsorted(d.needed, d.frame_indices[0])
    x = torch.from_numpy(np.ascontiguousarray(d.frames[rows])).to(device).permute(0, 3, 1, 2)  # [T, 3, h, w]
    x = show_frames(x.contiguous(), draws.short_side, d.geometry)
    if x.dtype != torch.uint8:  # integer-valued floats off the CPU: the jitter ops take uint8
        x = x.to(torch.uint8)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    top = min(int(draws.crop_uy * (h - size + 1)), h - size)
    left = min(int(draws.crop_ux * (w - size + 1)), w - size)
    x = x[..., top:top + size, left:left + size]
    if flip and draws.flip:
        x = x.flip(-1)
    if jitter:
        ops = (TF.adjust_brightness, TF.adjust_saturation, TF.adjust_gamma, TF.adjust_hue)
        for op, (apply, value) in zip(ops, draws.jitter):
            if apply:
                x = op(x, value)
    out = x.to(torch.float32)
    m = torch.as_tensor(mean, dtype=torch.float32, device=out.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=out.device).view(1, 3, 1, 1)
    return out.mul_(1.0 / (255.0 * s)).sub_(m / s).contiguous()
