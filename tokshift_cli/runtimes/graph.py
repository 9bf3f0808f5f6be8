"""The network as runtimes export it: clips ``[B, T, 3, H, W]`` -> per-frame features ``[B, T, C]``, one graph.

:class:`FrameFeatures` runs the TokShift ViT's own modules (patch embedding, blocks' norms, attention, MLP, final
norm) with the token shift written for graph export (:func:`cls_shift`): TorchScript tracing cannot take the
in-place ``put_`` of :func:`~tokshift_cli.models.tokshift.token_shift_`. Here only the [CLS] rows change: their
moved channels are one slice assignment, which converters turn into one scatter into the existing tensor instead
of a copy of every token (``torch.cat`` of the sequence, or ``where``). OpenVINO's own per-node counters put
either form within 1-3 % of the plain ViT in bfloat16 (docs/performance.md, "The shift inside an exported
graph"). T is fixed by the example input (the reshape of the [CLS] rows into clips needs it); the batch is
dynamic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cls_shift(x: torch.Tensor, num_frames: int, fold: int) -> torch.Tensor:
    """``x`` ``[B*T, N, C]`` with the [CLS] token's first ``2*fold`` channels shifted in time (values equal to
    :func:`~tokshift_cli.models.tokshift.token_shift`): ``[0, fold)`` from frame t+1, ``[fold, 2*fold)`` from t-1,
    zeros past the clip ends. Written as a slice assignment on the [CLS] rows of ``x`` (the tensor is the output
    of the previous residual add, used by nothing else)."""
    if fold == 0:
        return x
    c = x.shape[-1]
    cls = x[:, 0].reshape(-1, num_frames, c)  # [B, T, C]
    back = F.pad(cls[:, 1:, :fold], (0, 0, 0, 1))  # frame t <- t+1, zeros after the last frame
    fwd = F.pad(cls[:, :-1, fold:2 * fold], (0, 0, 1, 0))  # frame t <- t-1, zeros before the first frame
    moved = torch.cat((back, fwd), dim=-1).reshape(-1, 2 * fold)
    x[:, 0, :2 * fold] = moved
    return x


class FrameFeatures(nn.Module):
    """The exportable forward of a :class:`~tokshift_cli.models.tokshift.TokShiftViT` (float32, inference):
    the same parameters, the same values as ``model.forward_frame_features`` (tests check), no Python between
    blocks once traced."""

    def __init__(self, model: nn.Module, num_frames: int):
        super().__init__()
        self.model = model
        self.num_frames = int(num_frames)
        self.fold = int(model.embed_dim) // int(getattr(model, "fold_div", 4)) if getattr(model, "shift", True) else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, t, fold = self.model, self.num_frames, self.fold
        x = x.reshape(-1, *x.shape[2:])  # [B*T, 3, H, W]
        x = m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))
        for blk in m.blocks:
            x = cls_shift(x, t, fold)
            x = x + blk.ls1(blk.attn(blk.norm1(x)))
            x = cls_shift(x, t, fold)
            x = x + blk.ls2(blk.mlp(blk.norm2(x)))
        x = m.norm(x[:, 0])
        return x.reshape(-1, t, x.shape[-1])


def plain_frames(model: nn.Module) -> nn.Module:
    """``model`` as a module that takes clips: for exporting timm's plain ViT as the speed reference."""
    class _Frames(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m(x.reshape(-1, *x.shape[2:]))

    return _Frames()
