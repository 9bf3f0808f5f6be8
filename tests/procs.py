"""Killing a real `tokshift` run at a chosen moment, for the resume-after-kill -9 tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence


def start(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m tokshift_cli ARGS`` in the background: stdout discarded, stderr kept for the failure message."""
    return subprocess.Popen([sys.executable, "-m", "tokshift_cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill9_when(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout: float = 120.0,
               poll: float = 0.005) -> None:
    """Poll ``ready()`` while ``proc`` runs, then SIGKILL it. Fails the test if ``proc`` ended first (there was
    nothing left to interrupt) or was not killed by the signal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            break
        time.sleep(poll)
    if proc.poll() is not None:
        err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise AssertionError(f"the run ended before it could be killed: {err}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stderr:
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
