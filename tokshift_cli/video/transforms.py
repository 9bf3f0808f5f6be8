"""uint8 frames -> normalised model views, as batched tensor ops (no per-frame PIL).

The TokShift authors' test transform (``Test_ClipAug`` in their ``data/augmentation.py``), per frame with PIL:

1. resize the short side to ``S`` (bicubic), the long side to ``floor(L / short * S)``;
2. crop ``S x S``: centre ``int((L - S) / 2)``; for 3 crops also the left (0) and right (``L - S``) crop, in the
   order centre, left, right;
3. ``x / 255``, then ``(x - mean) / std``.

Here the resize runs once per batch of frames and the crops are slices of the resized tensor, so 3 crops cost
about as much as 1; rotation and non-square pixels (:class:`~.geometry.Geometry`) are folded into that one
resize. How the resize matches PIL's, measured against the authors' own output: docs/video.md#preprocessing.

Portrait frames are cropped along their height (top = 0, bottom = ``H - S``) where the authors' code crops along
the width only: for a portrait video their left and right crops equal the centre crop. Landscape frames get
exactly the authors' crops. Frames smaller than ``S`` are upscaled (same kernel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .geometry import Geometry

__all__ = ["preprocess", "show_frames", "resize_shape", "crop_offsets", "CROP_NAMES"]

#: Names of the crops, in output order, for 1 and 3 crops (landscape; portrait: centre, top, bottom).
CROP_NAMES = {1: ("centre",), 3: ("centre", "left", "right")}


def resize_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(new_height, new_width) after resizing the short side to ``short_side``, with the authors' arithmetic
    (``floor(1.0 * long / short * short_side)``; a square frame counts as portrait, as in theirs)."""
    if width > height:
        return short_side, int(math.floor(1.0 * width / height * short_side))
    return int(math.floor(1.0 * height / width * short_side)), short_side


def crop_offsets(height: int, width: int, crop_size: int, crops: int) -> list[tuple[int, int]]:
    """(top, left) of each crop in a ``height x width`` frame: centre, then for 3 crops the start and the end of
    the long side (left, right for landscape; top, bottom for portrait). Centre offsets are ``int((L - S) / 2)``."""
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    if height < crop_size or width < crop_size:
        raise ValueError(f"a {height}x{width} frame cannot hold a {crop_size}x{crop_size} crop")
    cy, cx = int((height - crop_size) / 2), int((width - crop_size) / 2)
    offsets = [(cy, cx)]
    if crops == 3:
        if width > height:
            offsets += [(cy, 0), (cy, width - crop_size)]
        else:
            offsets += [(0, cx), (height - crop_size, cx)]
    return offsets


def _as_nchw(frames: torch.Tensor | np.ndarray, layout: str) -> torch.Tensor:
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a torch.Tensor or numpy array, got {type(frames).__name__}")
    if frames.dtype != torch.uint8:
        raise TypeError(f"frames must be uint8 (0..255), got {frames.dtype}")
    if frames.ndim < 3:
        raise ValueError(f"frames must be [..., H, W, 3] or [..., 3, H, W], got shape {tuple(frames.shape)}")
    if layout == "auto":
        layout = "nhwc" if frames.shape[-1] == 3 else "nchw"
    if layout == "nhwc":
        if frames.shape[-1] != 3:
            raise ValueError(f"expected [..., H, W, 3] RGB frames, got shape {tuple(frames.shape)}")
        frames = frames.movedim(-1, -3)  # a view: channels_last strides, which the uint8 kernel prefers
    elif layout != "nchw":
        raise ValueError(f"layout must be 'auto', 'nhwc' or 'nchw', got {layout!r}")
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected 3 (RGB) channels, got shape {tuple(frames.shape)}")
    return frames


def _resize_float(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float bicubic (antialiased, PIL's kernel), clamped to [0, 255] and rounded like PIL's uint8 output."""
    y = F.interpolate(x.float(), size=size, mode="bicubic", antialias=True, align_corners=False)
    return y.clamp_(0, 255).round_()


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic antialiased resize of uint8 [M, 3, H, W]; returns uint8 (CPU) or integer-valued float32."""
    if tuple(x.shape[-2:]) == size:
        return x
    if x.device.type == "cpu":
        try:
            return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        except (RuntimeError, NotImplementedError):  # an old torch without the uint8 kernel
            pass
    return _resize_float(x, size)


def show_frames(x: torch.Tensor, short_side: int, geometry: Geometry | None = None) -> torch.Tensor:
    """Stored uint8 frames ``[M, 3, h, w]`` -> the frames as a player shows them (sample aspect ratio, rotation,
    mirror), short side resized to ``short_side`` in one resize (bicubic, antialiased); uint8 on a CPU,
    integer-valued float32 elsewhere."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if geometry is None or geometry.is_identity:
        return _resize(x, resize_shape(h, w, short_side))
    if (geometry.width, geometry.height) != (w, h):
        raise ValueError(f"frames are {w}x{h} but the geometry is for {geometry.width}x{geometry.height}")
    dw, dh = geometry.display_size
    r = _resize(x, geometry.stored_target(*resize_shape(dh, dw, short_side)))
    if geometry.flip:
        r = r.flip(-1)
    if geometry.quarter_turns:
        r = torch.rot90(r, geometry.quarter_turns, dims=(-2, -1))
    return r


def preprocess(
    frames: torch.Tensor | np.ndarray,
    crop_size: int,
    crops: int = 1,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    short_side: int | None = None,
    layout: str = "auto",
    geometry: Geometry | None = None,
) -> torch.Tensor:
    """Frames of one video -> normalised views ``[crops, N, 3, S, S]`` (module docstring has the recipe).

    ``frames``: uint8 RGB ``[N, H, W, 3]`` (decoder output) or ``[N, 3, H, W]``; any leading dims instead of
    ``N`` are kept (``[clips, T, H, W, 3]`` -> ``[crops, clips, T, 3, S, S]``). ``layout="auto"`` reads a
    last dim of 3 as channels-last; pass ``"nhwc"``/``"nchw"`` for frames 3 pixels wide.
    ``mean``/``std`` are in [0, 1] units (TokShift: 0.5, 0.5). ``device``: where to compute (default: where
    ``frames`` are); uint8 frames are moved before any conversion, so the copy is 4x smaller than float.
    ``short_side``: resize target of the short side (default ``crop_size``, as the authors test).
    ``geometry``: how the stored frames are shown (:class:`~tokshift_cli.video.geometry.Geometry`: sample aspect
    ratio, rotation, mirror): the frames are resized once, straight to the display shape's short-side size, then
    turned, so the model sees what a player shows. None: frames are shown as stored.
    """
    if crop_size < 1:
        raise ValueError(f"crop_size must be >= 1, got {crop_size}")
    short_side = crop_size if short_side is None else short_side
    if short_side < crop_size:
        raise ValueError(f"short_side ({short_side}) must be >= crop_size ({crop_size})")
    x = _as_nchw(frames, layout)
    if device is not None:
        x = x.to(device, non_blocking=True)
    lead = x.shape[:-3]
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h < 1 or w < 1:
        raise ValueError(f"empty frames: shape {tuple(x.shape)}")
    # Contiguous NCHW before slicing (module docstring: ~30x faster than copying from channels-last).
    r = show_frames(x.reshape(-1, 3, h, w), short_side, geometry).contiguous()
    size = (int(r.shape[-2]), int(r.shape[-1]))
    offsets = crop_offsets(size[0], size[1], crop_size, crops)
    views = torch.stack([r[:, :, top:top + crop_size, left:left + crop_size] for top, left in offsets])
    out = views.to(torch.float32)  # a new tensor (stack copied), so the in-place ops below touch no input
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).flatten()
    if mean_t.numel() != 3 or std_t.numel() != 3:
        raise ValueError(f"mean and std need 3 values (R, G, B), got {list(mean)} and {list(std)}")
    mean_t, std_t = mean_t.reshape(1, 1, 3, 1, 1), std_t.reshape(1, 1, 3, 1, 1)
    # (x / 255 - mean) / std  ==  x * (1 / (255 std)) - mean / std
    out.mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)
    out = out.reshape(len(offsets), *lead, 3, crop_size, crop_size)
    return out if dtype == torch.float32 else out.to(dtype)
