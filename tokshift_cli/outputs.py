"""Writing results: atomic files, JSON documents, and rich tables.

Files appear atomically: the bytes go to a temporary file in the destination folder, are fsync'ed, then renamed
over the final name, so a crash leaves either no file or a complete one. Nothing here imports torch.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from .errors import OutputError, OutputExistsError

#: Overrides where the tool keeps its own cache (default ``<HF_HOME>/tokshift``).
CACHE_ENV = "TOKSHIFT_CACHE"


def cache_root() -> Path:
    """The tool's own cache (converted releases, kernel choices): ``$TOKSHIFT_CACHE`` or ``<HF_HOME>/tokshift``."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        from huggingface_hub import constants

        root = os.path.join(constants.HF_HOME, "tokshift")
    return Path(root).expanduser()


def _describe_mkdir_failure(folder: Path, e: OSError) -> str:
    """Why ``folder`` cannot be created, naming the component that is in the way when it is a file."""
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a folder"
    return (e.strerror or str(e)).lower()


def check_output_path(path: str | Path, *, overwrite: bool) -> Path:
    """Validate an output path before any work is done: refuse to clobber, create the parent folder, and prove
    that a file can be created there (so a long run does not fail at its very end). Raises
    :class:`OutputExistsError` / :class:`OutputError` (exit code 4)."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder; give a file name (e.g. {path / 'results.json'})")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"{path}: exists already; pass --overwrite to replace it")
    ensure_output_folder(path.parent, probe_name=path.name)
    return path


def is_probe_file(name: str) -> bool:
    """A file :func:`ensure_output_folder` creates and removes at once (another process, e.g. another torchrun
    rank, may be probing the same folder): never counted as content."""
    return name.startswith(".") and name.endswith(".probe")


def ensure_output_folder(folder: str | Path, *, probe_name: str = "tokshift") -> Path:
    """Create ``folder`` (with its parents) and prove that a file can be created in it, before any work is done.
    Raises :class:`OutputError` (exit code 4) with one line: "cannot create the output folder (X is a file, not
    a folder)", "cannot write in the output folder (permission denied)"."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{folder}: cannot create the output folder ({_describe_mkdir_failure(folder, e)})"
                          ) from None
    try:  # os.access() says yes to root on a read-only mount and knows nothing of quotas: really try
        fd, probe = tempfile.mkstemp(prefix=f".{probe_name}.", suffix=".probe", dir=folder)
    except OSError as e:
        raise OutputError(f"{folder}: cannot write in the output folder ({(e.strerror or str(e)).lower()})"
                          ) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return folder


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp uses 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so a rename or a new entry in it survives a crash); best effort."""
    with contextlib.suppress(OSError):  # not supported on every platform/filesystem
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


#: errno values of a write that failed because of the destination (disk full, quota, read-only, I/O error).
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on clean exit fsync it and rename it to ``path``.

    On an exception (or a kill) ``path`` is untouched: it never holds a partial file. The temporary file is
    removed on an exception; after ``kill -9`` a hidden ``.NAME.*.tmp`` may remain beside it (never the final
    name). Failures of the destination (folder missing and not creatable, disk full, read-only) raise
    :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({_describe_mkdir_failure(path.parent, e)})") from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS and e.filename in (None, tmp, str(path)):
            raise OutputError(f"{path}: cannot write ({(e.strerror or str(e)).lower()}); nothing was written "
                              "under that name") from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def _json_default(o: Any) -> Any:
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def json_safe(o: Any) -> Any:
    """Replace NaN/inf floats (not valid JSON) with None, recursively."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _portable(o: Any) -> Any:
    """Strings that are not valid Unicode (file names with undecodable bytes, held as surrogate escapes) in
    their display form; a dict whose ``video`` is such a name also gets ``video_bytes_b64``: the exact bytes."""
    if isinstance(o, str):
        return display_path(o) if _has_surrogates(o) else o
    if isinstance(o, dict):
        out: dict[Any, Any] = {}
        for k, v in o.items():
            out[_portable(k)] = _portable(v)
            if k == "video" and isinstance(v, str) and _has_surrogates(v):
                with contextlib.suppress(UnicodeError):
                    out["video_bytes_b64"] = base64.b64encode(os.fsencode(v)).decode("ascii")
        return out
    if isinstance(o, (list, tuple)):
        return [_portable(v) for v in o]
    return o


def to_json(doc: Any, *, indent: int | None = 2) -> str:
    """Strict JSON that is always valid UTF-8: no NaN (null instead), paths and numpy values converted, file
    names that are not valid UTF-8 written with ``\\xNN`` escapes (plus ``video_bytes_b64``, see
    :func:`_portable`)."""
    return json.dumps(_portable(json_safe(json.loads(json.dumps(doc, default=_json_default)))), indent=indent,
                      ensure_ascii=False, allow_nan=False)


def display_path(path: str) -> str:
    """A path as printable, valid UTF-8 text: bytes that are not UTF-8 (surrogate escapes) shown as ``\\xNN``."""
    if not isinstance(path, str):
        return str(path)
    if not _has_surrogates(path):
        return path
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeError:  # a surrogate that is no escaped byte
        return path.encode("utf-8", "backslashreplace").decode("ascii")


def unique_stems(paths: Sequence[str], *, reserved: Sequence[str] = ()) -> list[str]:
    """A file-name stem per input: the video's own stem (characters other than letters, digits, ``.`` and ``-``
    become ``_``); a stem shared by several inputs (or in ``reserved``) gets a short hash of the path (and of its
    occurrence, for a path given twice), so names are unique and do not depend on which other inputs failed."""
    stems = [re.sub(r"[^\w.\-]+", "_", Path(p).stem).strip("._") or "video" for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s.lower()] = counts.get(s.lower(), 0) + 1
    taken = {r.lower() for r in reserved}
    seen: dict[str, int] = {}
    out = []
    for p, s in zip(paths, stems):
        n = seen[p] = seen.get(p, -1) + 1
        if counts[s.lower()] > 1 or s.lower() in taken:
            key = os.fsencode(p) + (f"#{n}".encode() if n else b"")
            s = f"{s}-{hashlib.sha1(key).hexdigest()[:10]}"
        out.append(s)
    return out


_clean = json_safe  # the old name, for code written against it
