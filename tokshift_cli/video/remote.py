"""``http://`` and ``https://`` inputs: downloaded once to a temporary file, then read like a local file.

A download, not FFmpeg's own HTTP protocol: the reader demuxes every packet to index the frames (the whole file
is read anyway) and then seeks, which over HTTP needs range requests (plain servers, e.g. Python's
``http.server``, do not answer them; an MP4 with its index at the end cannot even be opened without one). One
sequential download works with any server and reads each byte once.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable

from ..errors import VideoError

__all__ = ["download", "CONNECT_TIMEOUT_S"]

#: Seconds to connect, and seconds a read may wait for data, before the download is given up.
CONNECT_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


def _suffix(url: str) -> str:
    path = urllib.request.urlparse(url).path
    ext = os.path.splitext(path)[1].lower()
    return ext if re.fullmatch(r"\.[a-z0-9]{1,5}", ext) else ".bin"


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        if e.code == 404:
            return "not found (HTTP 404)"
        return f"the server refused it (HTTP {e.code} {e.reason})"
    inner = e.reason if isinstance(e, urllib.error.URLError) else e
    if isinstance(inner, ConnectionRefusedError):
        return "cannot connect (connection refused)"
    if isinstance(inner, (socket.timeout, TimeoutError)):
        return f"no answer from the server in {CONNECT_TIMEOUT_S:g} s"
    if isinstance(inner, socket.gaierror):
        return f"cannot connect (unknown host: {inner.strerror or inner})"
    text = getattr(inner, "strerror", None) or str(inner) or type(inner).__name__
    return f"cannot download it ({text})"


def download(url: str, *, timeout: float = CONNECT_TIMEOUT_S,
             progress: Callable[[int, int | None], None] | None = None) -> tuple[str, str]:
    """Fetch ``url`` into a new temporary folder; return ``(file path, folder to remove afterwards)``. Raises
    :class:`~tokshift_cli.errors.VideoError` naming the URL with one line: "not found (HTTP 404)", "cannot
    connect (connection refused)", "the server refused it (HTTP 403 Forbidden)", "no answer from the server in
    30 s", "the download stopped after N of M bytes". ``progress(done, total)`` after each chunk."""
    folder = tempfile.mkdtemp(prefix="tokshift-url-")
    dest = os.path.join(folder, "video" + _suffix(url))
    try:
        req = urllib.request.Request(url, headers={"User-Agent": "tokshift-cli"})
        with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:  # noqa: S310
            total = resp.headers.get("Content-Length")
            total_n = int(total) if total and total.isdigit() else None
            done = 0
            while True:
                chunk = resp.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total_n)
        if total_n is not None and done < total_n:
            raise VideoError(url, f"the download stopped after {done} of {total_n} bytes")
        return dest, folder
    except VideoError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise VideoError(url, _reason(e)) from None
