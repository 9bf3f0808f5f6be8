"""Which packets of a file are frames, and in what order a player shows them; which stream is the video.

Demuxing is cheap and decoding is not, so a video is indexed from its packets alone: the chosen stream's packets in
decode order with their timestamps, keyframe flags and the ones the container hides (an MP4 edit list's trimmed
head, flagged ``discard``; a packet cut in half at the end of a truncated file, flagged corrupt; packets before the
first keyframe); sorting the rest by presentation timestamp gives the display order. Where timestamps cannot do
that (missing, repeated, jumping back), the index says so and the reader counts frames in a full decode instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["FrameIndex", "build_index", "choose_stream", "NONE", "MAX_REORDER"]

#: Display order may differ from decode order by B-frame reordering only; a packet further than this from its
#: display rank means the timestamps jump (a discontinuity) and cannot identify frames.
MAX_REORDER = 32
#: A missing timestamp in the index arrays.
NONE = np.iinfo(np.int64).min


def _av() -> Any:
    import av

    return av


# --- stream choice ------------------------------------------------------------------------------------------


def _is_still(stream: Any) -> bool:
    """Cover art and thumbnails: an attached picture, a still-image/thumbnail disposition, or a one-frame track of
    an image codec or without a frame rate."""
    d = int(stream.disposition)
    av = _av()
    flags = av.stream.Disposition
    if d & int(flags.attached_pic) or d & int(flags.still_image) or d & int(flags.timed_thumbnails):
        return True
    return int(stream.frames or 0) == 1


def choose_stream(container: Any, requested: int | None = None, *, exclude: Sequence[int] = ()
                  ) -> tuple[Any, str | None]:
    """The video stream to read and, when others were passed over, why (a note for ``video_info``).

    ``requested``: the N-th video stream (0-based, FFmpeg's ``v:N``). Otherwise: leave out attached pictures and
    one-frame stills (unless nothing else is there) and the streams in ``exclude`` (container indices), take the
    largest frame area, the default flag breaking ties, then the lowest index."""
    videos = [s for s in container.streams.video if s.index not in exclude] if requested is None \
        else list(container.streams.video)
    if not videos:
        raise LookupError("no video stream")
    if requested is not None:
        if not 0 <= requested < len(videos):
            raise UsageError(f"--stream {requested}: the file has {len(videos)} video stream"
                             f"{'s' if len(videos) != 1 else ''} (0..{len(videos) - 1})")
        return videos[requested], None
    videos = [s for s in videos if s.codec_context is not None] or videos  # FFmpeg has a decoder for them
    moving = [s for s in videos if not _is_still(s)] or videos
    av = _av()
    default = int(av.stream.Disposition.default)

    def key(s: Any) -> tuple[int, int, int]:
        cc = s.codec_context
        area = int(cc.width or 0) * int(cc.height or 0) if cc is not None else 0
        return (-area, 0 if int(s.disposition) & default else 1, s.index)

    best = min(moving, key=key)
    note = None
    all_videos = list(container.streams.video)
    if len(all_videos) > 1:
        stills = len(all_videos) - len(moving)
        parts = [f"stream v:{all_videos.index(best)} of {len(all_videos)} video streams"]
        if stills:
            parts.append(f"{stills} still picture{'s' if stills != 1 else ''} (cover art) left out")
        note = "; ".join(parts)
    return best, note


# --- the index ----------------------------------------------------------------------------------------------


@dataclass
class FrameIndex:
    """The chosen stream's packets in decode order, and the display order of its frames.

    ``pts[k]``: presentation timestamp (stream time base) of frame ``k``; ``pos_of[k]``: decode position of its
    packet. ``keys``: decode positions of keyframes. ``reliable``: timestamps identify frames (else frames are
    identified by decode rank: :attr:`VideoReader.by_rank`)."""

    pts: np.ndarray  #: [N] int64, sorted
    pos_of: np.ndarray  #: [N] int64 decode position of frame k's packet
    packet_pts: np.ndarray  #: [P] int64 (MIN_INT64 where missing), decode order, all packets (hidden ones too)
    packet_dts: np.ndarray  #: [P] int64 (MIN_INT64 where missing)
    keys: np.ndarray  #: decode positions of keyframes, ascending
    hidden: int  #: packets fed to the decoder that are not frames (edit-list head, corrupt, before a keyframe)
    reliable: bool
    why_unreliable: str | None = None
    discarded: int = 0  #: packets an edit list hides (the header's frame count includes them)

    @property
    def num_frames(self) -> int:
        return int(self.pts.size)

    def start_key(self, k: int) -> int:
        """Decode position to start decoding at for frame ``k``: the last keyframe at or before its packet whose
        own timestamp is not later than the frame's."""
        pos, pts = int(self.pos_of[k]), int(self.pts[k])
        i = int(np.searchsorted(self.keys, pos, side="right")) - 1
        while i > 0 and self.packet_pts[self.keys[i]] > pts:
            i -= 1
        return int(self.keys[i]) if i >= 0 else 0



def build_index(container: Any, stream: Any) -> FrameIndex:
    """Demux ``stream`` (no decoding) and order its frames by presentation time (module docstring, step 1)."""
    for other in container.streams:
        if other.index != stream.index:
            other.discard = _av().stream.Discard.all  # the demuxer skips their packets (their bytes are not even read in MP4)
    pts_l: list[int] = []
    dts_l: list[int] = []
    key_l: list[int] = []
    shown: list[int] = []
    discarded = 0
    for packet in container.demux(stream):
        if packet.size == 0:  # PyAV's flush packet at the end
            continue
        p = len(pts_l)
        pts_l.append(NONE if packet.pts is None else int(packet.pts))
        dts_l.append(NONE if packet.dts is None else int(packet.dts))
        if packet.is_keyframe:
            key_l.append(p)
        discarded += bool(packet.is_discard)
        if not (packet.is_discard or packet.is_corrupt):
            shown.append(p)
    packet_pts = np.asarray(pts_l, dtype=np.int64)
    packet_dts = np.asarray(dts_l, dtype=np.int64)
    shown_a = np.asarray(shown, dtype=np.int64)
    keys = np.asarray(key_l or [0], dtype=np.int64)
    first = int(keys[0])
    if packet_pts.size and packet_pts[first] != NONE:  # what precedes the first keyframe cannot be shown
        shown = [p for p in shown if p >= first and (packet_pts[p] == NONE or packet_pts[p] >= packet_pts[first])]
    hidden = len(pts_l) - len(shown)
    sp = packet_pts[shown_a] if shown_a.size else np.empty(0, np.int64)
    why = None
    if sp.size and (sp == NONE).any():
        why = "packets without timestamps"
    elif sp.size and np.unique(sp).size != sp.size:
        why = "repeated timestamps"
    order = np.argsort(sp, kind="stable")
    if why is None and sp.size and np.abs(order - np.arange(sp.size)).max() > MAX_REORDER:
        why = "timestamps that jump back (a discontinuity)"
    if why is not None:  # frames are ranked by a full decode (sweep.FrameSweep.rank_frames); placeholders until then
        return FrameIndex(pts=sp.copy(), pos_of=shown_a, packet_pts=packet_pts, packet_dts=packet_dts, keys=keys,
                          hidden=hidden, reliable=False, why_unreliable=why, discarded=discarded)
    return FrameIndex(pts=sp[order], pos_of=shown_a[order], packet_pts=packet_pts, packet_dts=packet_dts,
                      keys=keys, hidden=hidden, reliable=True, discarded=discarded)
