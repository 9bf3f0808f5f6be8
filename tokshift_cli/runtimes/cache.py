"""Converted graphs on disk, so only the first run of a model on a runtime pays the conversion (~10 s, ViT-B/16).

``<cache>/runtimes/<runtime>/<key>/``: the runtime's model files + ``meta.json``; ``<cache>`` is ``$TOKSHIFT_CACHE``
or ``<HF_HOME>/tokshift``. The key hashes everything the graph depends on: the weights (sha256 over the state
dict), frames, input size, the runtime and its version, torch's and this tool's version, and the graph's form
(:data:`GRAPH_VERSION`). A folder is written under a temporary name and renamed in once complete, so a killed
conversion never leaves a half folder that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from .base import Runtime, file_sha256

#: Bump when :mod:`.graph` changes what it exports (old cache entries are then ignored).
GRAPH_VERSION = 1


def cache_root() -> Path:
    """Converted graphs: ``<the tool's cache>/runtimes`` (:func:`tokshift_cli.outputs.cache_root`)."""
    from ..outputs import cache_root as tool_cache

    return tool_cache() / "runtimes"


def cache_key(model: torch.nn.Module, runtime: Runtime, frames: int) -> tuple[str, dict[str, Any]]:
    from ..jobs import weights_hash

    cfg = model.config
    what = {"weights_sha256": weights_hash(model), "frames": int(frames), "img_size": int(cfg.img_size),
            "runtime": runtime.name, "runtime_version": runtime.version(), "torch": torch.__version__,
            "tool_version": __version__, "graph_version": GRAPH_VERSION}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24], what


def write_folder(final: Path, fill: Any) -> Path:
    """Run ``fill(tmp)`` in a temporary folder beside ``final``, then rename it to ``final`` (atomic; a
    concurrent writer that finished first wins and ours is dropped)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the folder is a model others may read
    try:
        fill(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def converted(model: torch.nn.Module, runtime: Runtime, frames: int | None = None) -> tuple[Path, str]:
    """The folder holding ``model`` converted for ``runtime`` (float32 graph, dynamic batch), converting it on
    the first call; and the model files' sha256."""
    from .graph import FrameFeatures

    cfg = model.config
    frames = int(frames or cfg.num_frames)
    key, what = cache_key(model, runtime, frames)
    folder = cache_root() / runtime.name / key
    meta = folder / "meta.json"
    if meta.is_file():
        try:
            return folder, json.loads(meta.read_text())["files_sha256"]
        except (OSError, ValueError, KeyError):
            shutil.rmtree(folder, ignore_errors=True)  # damaged: convert again

    def fill(tmp: Path) -> None:
        net = FrameFeatures(model, frames).eval()
        example = torch.zeros(1, frames, 3, cfg.img_size, cfg.img_size)
        runtime.convert(net, example, tmp)
        sha = file_sha256([tmp / f for f in runtime.files])
        (tmp / "meta.json").write_text(json.dumps({**what, "files_sha256": sha}, indent=2))

    write_folder(folder, fill)
    return folder, json.loads(meta.read_text())["files_sha256"]
