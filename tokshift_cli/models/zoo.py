"""The authors' model zoo: names, architectures, published accuracy and where the weights live.

Pure data (no torch import), so ``tokshift models`` is instant.

No TokShift weights are on the Hugging Face Hub today: the authors published them as Google Drive folders only.
Each entry names the Hub repository it resolves to (``<namespace>/<name>``; the namespace can be overridden with
``--hub-namespace`` or ``TOKSHIFT_HUB_NAMESPACE``) and the authors' original download, which ``weights`` fetches
and converts once when the Hub repository does not exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelNotFoundError

DEFAULT_HUB_NAMESPACE = "tokshift-cli"
HUB_NAMESPACE_ENV = "TOKSHIFT_HUB_NAMESPACE"

_BASE = {"embed_dim": 768, "depth": 12, "num_heads": 12, "patch_size": 16}
_LARGE = {"embed_dim": 1024, "depth": 24, "num_heads": 16, "patch_size": 16}
_GDRIVE = "https://drive.google.com/drive/folders/{}"


@dataclass(frozen=True)
class ZooEntry:
    """One published TokShift (or baseline) model."""

    name: str
    description: str
    arch: dict[str, Any]
    top1: float  #: paper (v1) Kinetics-400 top-1, 10x3 views
    gflops_paper: float  #: v1 paper's "GFLOPs" per view (no attention matmuls)
    gmacs_v2: float | None  #: authors' v2 table (fvcore MACs per view, attention included)
    gdrive_folder: str  #: Google Drive folder id of the authors' release
    config_file: str  #: the authors' yml for this model
    sha256: str | None = None  #: of the authors' .pth, once known
    size_bytes: int | None = None  #: of the authors' .pth, once known
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def original_url(self) -> str:
        return _GDRIVE.format(self.gdrive_folder)

    def hub_repo(self, namespace: str | None = None) -> str:
        """The Hub repository this entry resolves to."""
        ns = namespace or os.environ.get(HUB_NAMESPACE_ENV) or DEFAULT_HUB_NAMESPACE
        return f"{ns}/{self.name}"

    def config_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~tokshift_cli.models.config.TokShiftConfig`."""
        return {**self.arch, "zoo_name": self.name}


def _e(name: str, desc: str, base: dict, frames: int, size: int, top1: float, gflops: float,
       gmacs: float | None, folder: str, yml: str, shift: bool = True) -> ZooEntry:
    arch = {**base, "img_size": size, "num_frames": frames, "frame_stride": 32, "fold_div": 4, "shift": shift,
            "num_classes": 400}
    return ZooEntry(name, desc, arch, top1, gflops, gmacs, folder, yml)


ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    _e("tokshift-b16-8x224", "TokShift ViT-B/16, 8 frames, 224px", _BASE, 8, 224, 77.28, 134.7, 141.0,
       "1ty6OqhZpUxSzokXmP1IUFpze5A0Gihuu", "k400_tokshift_div4_8x32_base_224.yml"),
    _e("tokshift-b16-8x256", "TokShift ViT-B/16 (MR), 8 frames, 256px", _BASE, 8, 256, 77.68, 175.8, None,
       "1xmW8VjYDdw996j17mHZhhjBnA2dJRj7a", "k400_tokshift_div4_8x32_base_256.yml"),
    _e("tokshift-b16-8x384", "TokShift ViT-B/16 (HR), 8 frames, 384px", _BASE, 8, 384, 78.14, 394.7, 444.0,
       "1QNZWV9VUJuZdUzoU4NUtSZxFgLF3MONm", "k400_tokshift_div4_8x32_base_384.yml"),
    _e("tokshift-b16-16x224", "TokShift ViT-B/16, 16 frames, 224px", _BASE, 16, 224, 78.18, 268.5, 281.0,
       "1w2XrDRLNJdDG1e6OczsxKEr6-LuwhVgv", "k400_tokshift_div4_16x32_base_224.yml"),
    _e("tokshift-l16-8x384", "TokShift ViT-L/16 (HR), 8 frames, 384px", _LARGE, 8, 384, 79.83, 1397.6, None,
       "1tTXo5NzV4d9FTmnh40sUTXPoyUxWkq-I", "k400_tokshift_div4_8x32_large_384.yml"),
    _e("tokshift-l16-12x384", "TokShift ViT-L/16 (HR), 12 frames, 384px", _LARGE, 12, 384, 80.40, 2096.4, None,
       "1vuDcSZLgzsicJr9d1yKSm5089fiN6PX7", "k400_tokshift_div4_12x32_large_384.yml"),
    _e("vit-b16-8x224", "Video ViT-B/16 baseline (no shift), 8 frames, 224px", _BASE, 8, 224, 76.02, 134.7, 141.0,
       "1Bj5tc9dQmmJbhouytPOIYJlvK6O2yFyE", "k400_vit_8x32_224.yml", shift=False),
]}

DEFAULT_MODEL = "tokshift-b16-8x224"

#: The bundled demo model: untrained (random) weights, hidden 64, 2 layers, 224px, 8 frames, 400 classes.
#: It proves the install and the pipeline; its labels mean nothing and every output says so.
BUNDLED_UNTRAINED = "tokshift-tiny-untrained"


def get(name: str) -> ZooEntry:
    """Look a zoo entry up by name, with a did-you-mean error."""
    try:
        return ZOO[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(ZOO), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ModelNotFoundError(f"{name!r} is not a zoo model.{hint} `tokshift models` lists them.") from None
