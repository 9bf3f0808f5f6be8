"""Writing results: atomic files, JSON documents, and rich tables.

Files appear atomically: the bytes go to a temporary file in the destination folder, are fsync'ed, then renamed
over the final name, so a crash leaves either no file or a complete one. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import OutputExistsError, TokShiftError


def check_output_path(path: str | Path, *, overwrite: bool) -> Path:
    """Validate an output path before any work is done: refuse to clobber, create the parent folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: is a folder; give a file name (e.g. {path / 'results.json'})")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: exists already; pass --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TokShiftError(f"{path.parent}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK):
        raise TokShiftError(f"{path.parent}: output folder is not writable")
    return path


def _umask_mode() -> int:
    """The mode a plain ``open()`` would give a new file (mkstemp uses 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform/filesystem
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on clean exit fsync it and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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


def _clean(o: Any) -> Any:
    """Replace NaN/inf floats (not valid JSON) with None, recursively."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def to_json(doc: Any, *, indent: int | None = 2) -> str:
    """Strict JSON (no NaN), paths and numpy values converted."""
    return json.dumps(_clean(json.loads(json.dumps(doc, default=_json_default))), indent=indent,
                      ensure_ascii=False, allow_nan=False)


def display_path(path: str) -> str:
    """A path as printable text (undecodable bytes shown as escapes rather than crashing the terminal)."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8") if isinstance(path, str) else str(path)


# --- rich rendering ------------------------------------------------------------------------------------------


def classification_table(result: dict[str, Any], *, untrained: bool = False):
    """A rich Table for one video's result: rank, label, probability with a bar."""
    from rich.table import Table
    from rich.text import Text

    title = display_path(result["video"])
    caption = None
    if untrained:
        caption = "UNTRAINED demo weights: these labels mean nothing (the pipeline works)"
    table = Table(title=title, caption=caption, caption_style="bold red", title_justify="left",
                  show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("label")
    table.add_column("index", justify="right", style="dim")
    table.add_column("probability", justify="right")
    table.add_column("", no_wrap=True)
    for rank, entry in enumerate(result["top_k"], 1):
        p = float(entry["probability"])
        bar = Text("█" * max(0, round(p * 30)), style="green" if rank == 1 else "cyan")
        table.add_row(str(rank), entry["label"], str(entry["index"]), f"{p:.2%}", bar)
    return table


def summary_line(doc: dict[str, Any]) -> str:
    """One line: how many videos, failures, time."""
    results = doc.get("results", [])
    failed = sum(1 for r in results if r.get("error"))
    t = doc.get("timings", {})
    parts = [f"{len(results) - failed} classified", f"{failed} failed"]
    if t.get("total_s") is not None:
        parts.append(f"{t['total_s']:.2f} s")
    if t.get("videos_per_s"):
        parts.append(f"{t['videos_per_s']:.2f} videos/s")
    return ", ".join(parts)
