"""Parity with the authors' outputs: run a model on a fixture's input and measure the largest differences."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def fixture_diffs(model: torch.nn.Module, io: Any) -> tuple[torch.Tensor, float, float]:
    """``io``: a fixture ``.npz`` (input, logits, features). Returns (logits, max |logits diff|, max |features
    diff|) of ``model`` on ``io["input"]``, float32, in inference mode."""
    with torch.inference_mode():
        logits, feats = model.forward_logits_and_features(torch.from_numpy(io["input"]))
    return (logits, float(np.abs(logits.numpy() - io["logits"]).max()),
            float(np.abs(feats.numpy() - io["features"]).max()))
