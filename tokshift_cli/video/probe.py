"""What a file is before any decoder sees it: path checks, magic numbers, and containers cut short.

Decoders cannot be trusted to say why a file is unreadable (or that it is cut short: a decoder counts the packets
that are there), so these checks read the file's first bytes and its containers' own size fields (a few header
reads). Torch-free, like the rest of :mod:`tokshift_cli.video`.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Any

from ..errors import VideoError

__all__ = ["precheck", "not_a_video", "unreadable_reason", "mp4_missing_index", "container_truncation",
           "decoder_path", "is_url"]


def is_url(path: str) -> bool:
    """``http://`` or ``https://`` (any case): read over the network, not from the file system."""
    return path[:8].lower().startswith(("http://", "https://"))


def precheck(path: str) -> bytes:
    """Fail early, with a human reason, on paths no decoder can read; return the file's first bytes."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise VideoError(path, f"broken symbolic link (points to {os.readlink(path)!r}, which does not exist)")
        raise VideoError(path, "no such file")
    except PermissionError:
        raise VideoError(path, "permission denied")
    except OSError as e:
        raise VideoError(path, (e.strerror or str(e)).lower())
    if stat.S_ISDIR(st.st_mode):
        raise VideoError(path, "is a directory, not a video file")
    if not stat.S_ISREG(st.st_mode):
        raise VideoError(path, "not a regular file (pipes and devices cannot be seeked)")
    if st.st_size == 0:
        raise VideoError(path, "file is empty (0 bytes)")
    try:
        with open(path, "rb") as f:
            return f.read(512)
    except PermissionError:
        raise VideoError(path, "permission denied")
    except OSError as e:
        raise VideoError(path, f"cannot read ({(e.strerror or str(e)).lower()})")


#: Magic numbers of common files that are certainly not videos: refused before any decoder sees them (faster,
#: a clearer reason, and no decoder error lines on stderr).
_NOT_VIDEO_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\x7fELF", "a program (ELF)"),
)


def not_a_video(head: bytes) -> str | None:
    """A reason when the first bytes prove the file is no video (an image, a document, text), else None."""
    for magic, what in _NOT_VIDEO_MAGIC:
        if head.startswith(magic):
            return f"not a video file (it is {what})"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "not a video file (it is a WebP image)"
    if head.startswith(b"YUV4MPEG2"):  # raw video with a text header
        return None
    reason = unreadable_reason(head)
    return reason if "(it is" in reason else None


def unreadable_reason(head: bytes) -> str:
    """Why FFmpeg could not open a file, guessed from its first bytes."""
    lower = head.lstrip().lower()
    if lower.startswith((b"<!doctype html", b"<html")):
        return "not a video file (it is an HTML page: a failed download?)"
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text[:200]):
            first = text.strip().splitlines()[0][:40] if text.strip() else ""
            return f"not a video file (it is text: {first!r})"
    if head[4:8] == b"ftyp":
        return ("truncated or incomplete MP4: its index (moov atom) is missing, so the download or recording was "
                "probably cut short")
    return "not a video file, or a format/codec FFmpeg cannot read"


def _read_vint(f: Any, is_id: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at the file position: (value, length); None at EOF or when invalid."""
    first = f.read(1)
    if not first:
        return None
    b0 = first[0]
    length = next((k + 1 for k in range(8) if b0 & (0x80 >> k)), 0)
    if not length:
        return None
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = b0 if is_id else b0 & (0xFF >> length)
    for b in rest:
        value = (value << 8) | b
    if not is_id and value == (1 << (7 * length)) - 1:
        value = -1  # "unknown size" (live streams)
    return value, length


_MP4_TOP_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot", b"uuid", b"moof", b"mfra",
                  b"meta", b"styp", b"sidx", b"pdin", b"prft", b"emsg", b"mvex")


def mp4_missing_index(path: str) -> bool:
    """True when ``path`` is an MP4/MOV (it starts with an ``ftyp`` box) whose top-level boxes, read up to the
    end of the file or to where it is cut, hold no ``moov`` (the index): no decoder can read such a file (a
    recording or download cut short before the index was written). False otherwise, and when unsure."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            if f.read(8)[4:8] != b"ftyp":
                return False
            pos = 0
            for _ in range(100_000):
                if pos + 8 > size:
                    return True  # the end (or the cut) reached, no moov
                f.seek(pos)
                box = f.read(16)
                n, kind = int.from_bytes(box[:4], "big"), box[4:8]
                if kind == b"moov":
                    return False
                if kind not in _MP4_TOP_BOXES:
                    return False  # not a structure we understand: no verdict
                if n == 1:
                    if len(box) < 16:
                        return True
                    n = int.from_bytes(box[8:16], "big")
                elif n == 0:  # this box runs to the end of the file
                    return True
                if n < 8:
                    return False
                pos += n
    except OSError:
        return False
    return False


def container_truncation(path: str) -> tuple[int, int] | None:
    """``(bytes_present, bytes_declared)`` when the container's own size fields say the file is cut short, else
    None. Reads a few headers only: MP4/MOV top-level boxes, the Matroska/WebM Segment, the AVI RIFF chunk.
    Decoders cannot be trusted for this: decord counts the packets that are present, so a cut-off MP4 whose
    index comes first looks like a shorter, healthy video."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
            if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
                pos = 0
                for _ in range(100_000):
                    if pos >= size:
                        return None
                    f.seek(pos)
                    box = f.read(16)
                    if len(box) < 8:
                        return size, pos + 8
                    n = int.from_bytes(box[:4], "big")
                    if n == 1:
                        if len(box) < 16:
                            return size, pos + 16
                        n = int.from_bytes(box[8:16], "big")
                    elif n == 0:  # runs to the end of the file
                        return None
                    if n < 8:
                        return None  # not a box structure we understand: no verdict
                    if pos + n > size:
                        return size, pos + n
                    pos += n
                return None
            if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska / WebM
                f.seek(0)
                header_id, header_len = _read_vint(f, True) or (0, 0)
                header_size = _read_vint(f, False)
                if header_size is None or header_size[0] < 0:
                    return None
                f.seek(4 + header_size[1] + header_size[0])
                seg_id = _read_vint(f, True)
                seg_size = _read_vint(f, False)
                if seg_id is None or seg_size is None or seg_id[0] != 0x18538067 or seg_size[0] < 0:
                    return None
                end = f.tell() + seg_size[0]
                return (size, end) if end > size else None
            if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
                end = 8 + int.from_bytes(head[4:8], "little")
                return (size, end) if end > size else None
    except OSError:
        return None
    return None


def decoder_path(path: str) -> tuple[str, str | None]:
    """A path every decoder can take: absolute (FFmpeg never reads "name:rest" as a protocol then), and, for
    names that are not valid UTF-8 (FFmpeg's API takes UTF-8 strings), an ASCII symlink in a temp folder.
    Returns (path, temp_dir_to_remove)."""
    full = os.path.abspath(path)
    try:
        full.encode("utf-8")
        return full, None
    except UnicodeEncodeError:
        pass
    tmp = tempfile.mkdtemp(prefix="tokshift-video-")
    ext = os.path.splitext(os.fsencode(full))[1].decode("ascii", "ignore")
    link = os.path.join(tmp, "video" + ("".join(c for c in ext if c.isalnum() or c == ".") or ".bin"))
    os.symlink(full, link)
    return link, tmp
