"""Decode functions for the worker-pool tests (tests/test_workers.py, tests/test_fuzz.py).

They run inside decode worker processes, which import them by module name, so this module stays light: no
pytest, no PyAV, no torch. The path decides what a function does, so one run can mix behaviours.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

import numpy as np

from tokshift_cli.errors import VideoError


def behave(index: int, path: str, *, size: int = 1000, sleep: float = 0.0, log: str | None = None) -> dict:
    """What ``path`` says: "segv" (SIGSEGV sent to itself), "native" (a real segfault: reading address 0 in C),
    "abort" (SIGABRT), "exit" (``os._exit(3)``), "hang" (sleep for an hour), "slow" (sleep ``sleep`` s),
    "bad" (raise VideoError), "bug" (raise ValueError), "print" (write to stdout and stderr); anything else: a
    result with ``size`` bytes of pixels. ``log``: append "index pid" to this file when a call starts."""
    if log:
        with open(log, "a") as f:
            f.write(f"{index} {os.getpid()}\n")
    name = os.path.basename(path)
    if name.startswith("segv"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("native"):
        ctypes.string_at(0)  # a genuine invalid read in native code
    if name.startswith("abort"):
        os.abort()
    if name.startswith("exit"):
        os._exit(3)
    if name.startswith("hang"):
        time.sleep(3600)
    if name.startswith("slow"):
        time.sleep(sleep)
    if name.startswith("bad"):
        raise VideoError(path, "not a video file (test)")
    if name.startswith("bug"):
        raise ValueError(f"a bug in the decode function ({name})")
    if name.startswith("print"):
        print("worker stdout noise", flush=True)
        os.write(1, b"worker fd1 noise\n")
        os.write(2, b"worker fd2 noise\n")
    return {"index": index, "path": path, "pid": os.getpid(), "pixels": np.full(size, index % 251, np.uint8)}


def environment(index: int, path: str) -> dict:
    """What a worker process has loaded: proves that workers never import torch."""
    maps = ""
    if os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as f:
            maps = f.read()
    return {"pid": os.getpid(), "torch": "torch" in sys.modules, "decord": "decord" in sys.modules,
            "av": "av" in sys.modules, "nvidia_libs": "/nvidia/" in maps or "libnvblas" in maps}


def decode_or_hang(index: int, path: str, **kwargs):
    """``decode_clips``, except that a file whose name starts with "hang" never finishes (a decoder stuck in an
    endless loop); for testing ``--timeout`` end to end through the engine (``decode_fn=``)."""
    from tokshift_cli.video.workers import decode_clips

    if os.path.basename(path).startswith("hang"):
        time.sleep(3600)
    return decode_clips(index, path, **kwargs)


def huge_frame_count_mp4(path, workdir=None):
    """Write an MP4 whose index (stts) claims 3.3 billion frames: one flipped byte, found by tests/test_fuzz.py
    (seed 1). decord's native code throws std::bad_alloc on a thread and the process aborts (SIGABRT).
    The clean source is written into ``workdir`` (default: beside ``path``). (A corpus maker, not a decode
    function: it imports PyAV, lazily.)"""
    from videogen import make_video

    src = make_video((workdir or path.parent) / (path.stem + "_src.mp4"), frames=40, faststart=True)
    data = bytearray(src.read_bytes())
    j = data.find(b"stts")
    assert j > 0 and data[j + 12: j + 16] == (40).to_bytes(4, "big")  # first entry: sample_count 40
    data[j + 12] = 0xC5
    path.write_bytes(bytes(data))
    return path