"""Turn the command line's inputs (files, folders, ``--list FILE``) into an ordered list of videos.

Rules (the CLI's help repeats them):

* Order: the positional paths in the order given, then the ``--list`` entries in file order. A folder expands
  in place to the videos under it, sorted by path (byte order of each path component, so the result does not
  depend on the locale or on the file system's listing order).
* A file named explicitly is taken whatever its extension: the decoder then says if it is not a video.
  In folders only files whose extension is in :data:`VIDEO_EXTENSIONS` (any case) are taken; hidden files and
  folders (name starting with ".", e.g. macOS ``._clip.mp4`` resource forks) are skipped.
* Folders are walked recursively and follow symbolic links; a link back to a folder already being walked (a
  loop) is not entered twice (loops are detected by the folder's device and inode).
* Every path given (positional or in ``--list``) is one input, also when it names a file given before (by any
  spelling), and so is every file name found in a folder (links to one file are as many inputs): each gets its
  own result. A folder reached again through a link (a loop) is not walked twice.
* ``http://`` and ``https://`` URLs are inputs as they are (read over the network by the decoder).
* Problems are items, not exceptions, so one bad path does not hide the others: missing path -> "no such file
  or directory"; broken symlink -> "broken symbolic link"; a folder without videos -> "no video files
  (extensions: ...)"; unreadable folder -> "permission denied".
* ``--list FILE``: one path per line; blank lines and lines starting with ``#`` are skipped; surrounding
  whitespace is stripped; ``-`` reads the list from standard input. Relative paths are relative to the current
  working directory (not to the list file's folder), the convention of MMAction2's and video_features' file
  lists, so that ``find data -name '*.mp4' > list.txt`` works from the same place.
* Names are kept as the user wrote them (folder entries are joined onto the folder as given). Names that are not
  valid UTF-8 survive as ``str`` with surrogate escapes (``os.fsdecode``), which every ``os``/``open`` call
  accepts; use :attr:`InputItem.display` to print them (``\\xff`` escapes) and ``os.fsencode(item.path)`` to get
  the original bytes back.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..outputs import display_path
from .probe import is_url

__all__ = ["VIDEO_EXTENSIONS", "InputItem", "expand_inputs", "read_list_file", "display_path"]

#: File extensions (lower case, without the dot) taken when walking folders.
VIDEO_EXTENSIONS: frozenset[str] = frozenset({
    "mp4", "m4v", "mkv", "webm", "avi", "mov", "qt", "mpg", "mpeg", "m2v", "mpe", "flv", "f4v", "wmv", "asf",
    "3gp", "3g2", "ts", "mts", "m2ts", "ogv", "ogg", "vob", "divx", "dv", "mxf", "y4m", "rm", "rmvb", "nut",
    "ivf", "h264", "264", "hevc", "265",
})


@dataclass(frozen=True)
class InputItem:
    """One input: a file to decode (``error is None``) or a problem to report in its place."""

    path: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def display(self) -> str:
        return display_path(self.path)

    def __str__(self) -> str:
        return self.display if self.ok else f"{self.display}: {self.error}"


_COMMON = ("mp4", "mkv", "webm", "avi", "mov")


def _ext_list(extensions: Iterable[str]) -> str:
    exts = sorted(extensions, key=lambda e: (_COMMON.index(e) if e in _COMMON else len(_COMMON), e))
    shown = " ".join("." + e for e in exts[:5])
    return shown + (f" and {len(exts) - 5} more" if len(exts) > 5 else "")


def _has_video_ext(name: str, extensions: frozenset[str]) -> bool:
    dot = name.rfind(".")
    return dot > 0 and name[dot + 1:].lower() in extensions


def _sort_key(rel: str) -> tuple[bytes, ...]:
    return tuple(os.fsencode(part) for part in rel.split(os.sep))


def _error_for(path: str, e: OSError | None = None) -> str:
    """A reason for a path that cannot be used."""
    if os.path.islink(path) and not os.path.exists(path):
        try:
            target = display_path(os.readlink(path))
        except OSError:
            target = "?"
        try:
            os.stat(path)
        except OSError as err:
            if err.errno == errno.ELOOP:
                return "symbolic link loop (too many levels of symbolic links)"
        return f"broken symbolic link (points to {target!r}, which does not exist)"
    if isinstance(e, PermissionError):
        return "permission denied"
    if e is not None and e.strerror:
        return e.strerror.lower()
    return "no such file or directory"


def _walk(top: str, extensions: frozenset[str]) -> list[InputItem]:
    """Video files under ``top``, sorted by path, with error items (unreadable sub-folder, broken link) in
    their sorted place."""
    found: list[tuple[tuple[bytes, ...], InputItem]] = []
    visited: set[tuple[int, int]] = set()

    def rel_key(full: str) -> tuple[bytes, ...]:
        return _sort_key(os.path.relpath(full, top))

    def onerror(err: OSError) -> None:
        where = err.filename if isinstance(err.filename, str) else top
        found.append((rel_key(where), InputItem(where, _error_for(where, err))))

    for dirpath, dirnames, filenames in os.walk(top, onerror=onerror, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as err:
            found.append((rel_key(dirpath), InputItem(dirpath, _error_for(dirpath, err))))
            dirnames[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in visited:  # reached again through a symlink: a loop, or a second route to the same folder
            dirnames[:] = []
            continue
        visited.add(key)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith(".") or not _has_video_ext(name, extensions):
                continue
            full = os.path.join(dirpath, name)
            if not os.path.exists(full):  # a broken link named like a video: say so
                found.append((rel_key(full), InputItem(full, _error_for(full))))
            elif not os.path.isdir(full):
                found.append((rel_key(full), InputItem(full)))
    found.sort(key=lambda t: t[0])
    return [item for _, item in found]


def read_list_file(list_file: str | os.PathLike) -> list[str]:
    """The paths in a ``--list`` file (rules in the module docstring). Raises OSError if it cannot be read."""
    if os.fspath(list_file) in ("-", b"-"):
        data = sys.stdin.buffer.read()
    else:
        with open(list_file, "rb") as f:
            data = f.read()
    if data.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte order mark (Windows editors)
        data = data[3:]
    paths = []
    for raw in data.splitlines():
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        paths.append(os.fsdecode(line))
    return paths


def expand_inputs(
    paths: Sequence[str | os.PathLike],
    list_file: str | os.PathLike | None = None,
    *,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
) -> list[InputItem]:
    """Expand files, folders and a list file into ordered :class:`InputItem` s (rules in the module docstring).

    Never raises for a bad path: each becomes an item with ``error`` set, in the position the path had. An
    empty result means no inputs were given; ``[i for i in items if i.ok]`` are the files to decode.
    """
    exts = frozenset(e.lower().lstrip(".") for e in extensions)
    items: list[InputItem] = []

    def add_file(path: str) -> None:
        items.append(InputItem(path))

    def add_error(path: str, error: str) -> None:
        items.append(InputItem(path, error))

    def expand(path: str) -> None:
        if is_url(path):
            add_file(path)
            return
        try:
            st = os.stat(path)
        except OSError as e:
            add_error(path, _error_for(path, e))
            return
        if stat.S_ISDIR(st.st_mode):
            if not os.access(path, os.R_OK | os.X_OK):
                add_error(path, "permission denied")
                return
            found = _walk(path, exts)
            for item in found:
                if item.ok:
                    add_file(item.path)
                else:
                    add_error(item.path, item.error or "")
            if not found:
                add_error(path, f"no video files (extensions: {_ext_list(exts)}; name a file to read it whatever "
                                     "its extension)")
        else:
            add_file(path)

    for p in paths:
        expand(os.fsdecode(os.fspath(p)) if isinstance(os.fspath(p), bytes) else os.fspath(p))
    if list_file is not None:
        try:
            entries = read_list_file(list_file)
        except OSError as e:
            reason = "no such file or directory" if isinstance(e, FileNotFoundError) else _error_for(
                os.fsdecode(os.fspath(list_file)), e)
            items.append(InputItem(os.fsdecode(os.fspath(list_file)), f"cannot read the --list file ({reason})"))
            entries = []
        for entry in entries:
            expand(entry)
    return items
