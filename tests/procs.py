"""Running the real `tokshift` CLI in a subprocess: killing it at a chosen moment (the resume-after-kill -9 tests)
and measuring its peak memory (tests and scripts/bench_timeline.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def start(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m tokshift_cli ARGS`` in the background: stdout discarded, stderr kept for the failure message."""
    return subprocess.Popen([sys.executable, "-m", "tokshift_cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill9_when(proc: subprocess.Popen, ready: Callable[[], bool], *, timeout: float = 600.0,
               poll: float = 0.005) -> None:
    """Poll ``ready()`` while ``proc`` runs, then SIGKILL it. Fails the test if ``proc`` ended first (there was
    nothing left to interrupt), if ``ready()`` never came true (``timeout`` only turns a stuck run into a failure:
    the kill happens at the event, never at a deadline) or if ``proc`` was not killed by the signal."""
    deadline = time.monotonic() + timeout
    seen = False
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            seen = True
            break
        time.sleep(poll)
    if proc.poll() is not None:
        err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
        raise AssertionError(f"the run ended before it could be killed: {err}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stderr:
        proc.stderr.close()
    assert seen, f"the moment to kill it never came ({timeout:.0f} s)"
    assert proc.returncode == -signal.SIGKILL


#: Runs a command and writes its peak RSS (kB, from wait4: the process and the children it waited for) to
#: argv[1]. A separate small process, because a child's ru_maxrss starts from its parent's RSS at fork time
#: (Linux keeps the high-water mark across exec), and the caller holds torch and models.
_LAUNCHER = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[2:])\n"
             "_, status, usage = os.wait4(p.pid, 0)\n"
             "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
             "sys.exit(os.waitstatus_to_exitcode(status))\n")


def peak_rss_mb(args: Sequence[str], work: Path, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``tokshift ARGS``; its peak resident memory in MB (the CLI and its decode workers) and the result."""
    report = Path(work) / "maxrss"
    r = subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), sys.executable, "-m", "tokshift_cli", *args],
                       capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"}, timeout=timeout)
    return int(report.read_text()) / 1024, r


#: The unprivileged user that permission tests run as when the suite runs as root (root reads any file).
NOBODY = "65534"


def unprivileged(cmd: Sequence[str]) -> list[str]:
    """``cmd`` as an unprivileged user: itself when this process is not root, else through ``setpriv`` as uid/gid
    ``NOBODY`` with no groups (how tests/test_bad_inputs.py runs the CLI), so permission checks run as root too."""
    if os.geteuid() != 0:
        return list(cmd)
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]


def python_unprivileged(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -c code args`` through :func:`unprivileged` (the package importable as in this process)."""
    return subprocess.run(unprivileged([sys.executable, "-c", code, *args]), capture_output=True, text=True,
                          env={**os.environ}, timeout=timeout)


def ctrl_c_as_a_terminal_gives_it() -> None:
    """``preexec_fn`` for a child the test will send SIGINT: its default disposition back. A job started with
    ``&`` by a non-interactive shell (a CI runner, ``nohup ... &``) inherits SIGINT *ignored*, and Python then
    installs no KeyboardInterrupt handler at all, so the test would measure the runner, not the tool."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
