"""How stored frames are shown: the sample aspect ratio (non-square pixels), then the display matrix (rotation,
mirror). Every decoder reports a :class:`Geometry`; :func:`tokshift_cli.video.transforms.preprocess` applies it,
so the model sees what a player shows whichever decoder ran.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

__all__ = ["Geometry", "rotation_from_matrix"]


@dataclass(frozen=True)
class Geometry:
    """Stored frame size, sample aspect ratio and display transform of a video stream.

    ``rotation``: degrees a player turns the stored frame **counterclockwise** (0, 90, 180, 270; FFmpeg's
    ``av_display_rotation_get`` rounded to a right angle); ``flip``: mirrored left-right before the rotation (a
    display matrix with a negative determinant, front cameras). ``sar``: width of a stored pixel over its height
    (64/45 for 16:9 DVD video stored as 720x576)."""

    width: int
    height: int
    sar: Fraction = Fraction(1)
    rotation: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.rotation not in (0, 90, 180, 270):
            raise ValueError(f"rotation must be 0, 90, 180 or 270, got {self.rotation}")
        if self.sar <= 0:
            raise ValueError(f"sar must be positive, got {self.sar}")

    @property
    def quarter_turns(self) -> int:
        return self.rotation // 90

    @property
    def unrotated_display_size(self) -> tuple[int, int]:
        """(width, height) after the sample aspect ratio, before the rotation: the stored height is kept and the
        width scaled (FFmpeg's display aspect ratio ``width * sar / height``)."""
        return max(1, int(round(self.width * self.sar))), self.height

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as a player shows the frame."""
        w, h = self.unrotated_display_size
        return (h, w) if self.quarter_turns % 2 else (w, h)

    @property
    def is_identity(self) -> bool:
        return self.sar == 1 and self.rotation == 0 and not self.flip

    def stored_target(self, display_h: int, display_w: int) -> tuple[int, int]:
        """The (height, width) to resize stored frames to so that, once rotated, they are ``display_h x
        display_w``."""
        return (display_w, display_h) if self.quarter_turns % 2 else (display_h, display_w)

    def to_dict(self) -> dict[str, Any]:
        w, h = self.display_size
        return {"width": w, "height": h, "stored_width": self.width, "stored_height": self.height,
                "sar": f"{self.sar.numerator}:{self.sar.denominator}", "rotation": self.rotation,
                "flip": self.flip}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Geometry":
        num, _, den = str(d.get("sar", "1:1")).partition(":")
        return cls(int(d["stored_width"]), int(d["stored_height"]), Fraction(int(num), int(den or 1)),
                   int(d.get("rotation", 0)), bool(d.get("flip", False)))


def rotation_from_matrix(matrix: bytes | None) -> tuple[int, bool]:
    """(counterclockwise rotation rounded to 0/90/180/270, mirrored) of an FFmpeg display matrix (9 int32, 16.16
    fixed point, as in ``libavutil/display.c``); (0, False) for None or a malformed one."""
    if not matrix or len(matrix) < 36:
        return 0, False
    m = struct.unpack("<9i", bytes(matrix[:36]))
    a, b, c, d = (v / 65536.0 for v in (m[0], m[1], m[3], m[4]))
    flip = a * d - b * c < 0
    if flip:  # av_display_rotation_get on the matrix with its first column negated (a left-right mirror)
        a, c = -a, -c
    sx, sy = math.hypot(a, c), math.hypot(b, d)
    if sx == 0 or sy == 0:
        return 0, False
    angle = -math.degrees(math.atan2(b / sy, a / sx))  # FFmpeg: counterclockwise degrees
    return int(round(angle / 90.0)) % 4 * 90, flip
