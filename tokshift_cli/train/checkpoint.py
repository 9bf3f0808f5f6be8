"""Training checkpoints: tensors in safetensors, everything else in JSON, never a pickle.

A checkpoint folder (``DIR/checkpoints``) holds

* ``state-<serial>.safetensors``: the trained parameters (``model.<name>``: only those that train, so a linear
  probe's checkpoint is its head), the optimizer's tensors (``optim.<param index>.<key>``: SGD's momentum, AdamW's
  moments and step), the gradient scaler's (float16 on CUDA) and every RNG state as bytes (``rng.torch.<rank>``,
  ``rng.cuda.<rank>.<device>``, ``rng.numpy``);
* ``best-<serial>.safetensors``: the trained parameters of the best epoch so far (by validation top-1);
* ``latest.json``: the commit point. It names the two files and holds the rest: step, epoch and position in
  the epoch, the optimizer's hyperparameters and non-tensor state, the LR scheduler's state, Python's RNG state,
  the training fingerprint a resume is checked against, the byte length of ``metrics.jsonl`` at that moment,
  the videos found broken so far, and the epoch history.

Writing: the tensor files first (each atomically: temporary name, fsync, rename), then ``latest.json`` atomically,
then files no longer named by it are deleted. A kill at any moment leaves ``latest.json`` naming complete files.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import UsageError
from ..outputs import atomic_write_bytes, atomic_write_text

__all__ = ["FORMAT", "LATEST", "CheckpointFiles", "optimizer_tensors", "load_optimizer", "rng_tensors",
           "restore_rng", "python_rng_state"]

FORMAT = "tokshift-train-checkpoint"
FORMAT_VERSION = 1
LATEST = "latest.json"


def _contiguous(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in tensors.items():
        v = v.detach().to("cpu")
        if not v.is_contiguous() or v.untyped_storage().nbytes() != v.numel() * v.element_size():
            v = v.contiguous().clone()  # safetensors refuses views into a larger (shared) storage
        out[k] = v
    return out


class CheckpointFiles:
    """The checkpoint folder of one training run."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @property
    def latest(self) -> Path:
        return self.folder / LATEST

    def exists(self) -> bool:
        return self.latest.is_file()

    def write_tensors(self, prefix: str, serial: int, tensors: Mapping[str, torch.Tensor]) -> str:
        """Write ``<prefix>-<serial>.safetensors`` atomically; return its file name."""
        from safetensors.torch import save

        name = f"{prefix}-{serial:08d}.safetensors"
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / name, save(_contiguous(tensors), metadata={"format": "pt"}))
        return name

    def commit(self, meta: dict[str, Any]) -> None:
        """Write ``latest.json`` (the commit point), then remove the tensor files it no longer names."""
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
        atomic_write_text(self.latest, json.dumps(meta, indent=1, allow_nan=False) + "\n")
        keep = {meta.get("tensors"), (meta.get("best") or {}).get("file")}
        for p in self.folder.glob("*.safetensors"):
            if p.name not in keep:
                with contextlib.suppress(OSError):
                    p.unlink()

    def read(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(latest.json, its state tensors)``; :class:`UsageError` naming the file when either is unreadable."""
        try:
            meta = json.loads(self.latest.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UsageError(f"{self.latest}: unreadable checkpoint ({e}); start over with --overwrite") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise UsageError(f"{self.latest}: not a tokshift training checkpoint; start over with --overwrite")
        if meta.get("format_version", 0) > FORMAT_VERSION:
            raise UsageError(f"{self.latest}: written by a newer tokshift-cli; upgrade to resume it")
        return meta, self.read_tensors(meta["tensors"])

    def read_tensors(self, name: str) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        path = self.folder / name
        try:
            return load_file(str(path))
        except Exception as e:  # SafetensorError, OSError
            raise UsageError(f"{path}: unreadable checkpoint file ({type(e).__name__}: {str(e)[:120]}); start "
                             "over with --overwrite") from None


# --- optimizer --------------------------------------------------------------------------------------------------


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state as (tensors ``optim.<param>.<key>``, JSON: param groups and non-tensor state)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                plain.setdefault(str(pid), {})[key] = value
    keys = {str(pid): [k for k, v in st.items() if isinstance(v, torch.Tensor)] for pid, st in sd["state"].items()}
    return tensors, {"param_groups": sd["param_groups"], "state": plain, "tensor_keys": keys}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                   meta: Mapping[str, Any]) -> None:
    """Restore what :func:`optimizer_tensors` saved (tensors go to the parameters' device and dtype)."""
    state: dict[int, dict[str, Any]] = {}
    for pid, keys in meta["tensor_keys"].items():
        state[int(pid)] = {k: tensors[f"optim.{pid}.{k}"] for k in keys}
    for pid, extra in meta["state"].items():
        state.setdefault(int(pid), {}).update(extra)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# --- RNG states -------------------------------------------------------------------------------------------------


def rng_tensors(rank: int = 0) -> dict[str, torch.Tensor]:
    """This process's torch (CPU and CUDA) and numpy RNG states as uint8 tensors."""
    out = {f"rng.torch.{rank}": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{rank}.{i}"] = s
    state = np.random.get_state()
    out[f"rng.numpy.{rank}"] = torch.from_numpy(np.asarray(state[1], dtype=np.uint32).view(np.uint8).copy())
    return out


def restore_rng(tensors: Mapping[str, torch.Tensor], plain: Mapping[str, Any] | None, rank: int = 0) -> None:
    """Put back the RNG states of ``rank`` that :func:`rng_tensors` (tensors) and :func:`python_rng_state`
    (``plain``) saved."""
    key = f"rng.torch.{rank}"
    if key in tensors:
        torch.set_rng_state(tensors[key])
    cuda = sorted(k for k in tensors if k.startswith(f"rng.cuda.{rank}."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if plain is None:
        return
    np_key = f"rng.numpy.{rank}"
    if np_key in tensors:
        n = plain["numpy"]
        keys = tensors[np_key].numpy().view(np.uint32)
        np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))


def python_rng_state() -> dict[str, Any]:
    """Python's and numpy's non-tensor RNG state, as JSON."""
    version, internal, gauss = random.getstate()
    st = np.random.get_state()
    return {"python": [version, list(internal), gauss],
            "numpy": {"pos": int(st[2]), "has_gauss": int(st[3]), "cached_gaussian": float(st[4])}}
