"""workers.py: decoding in killable processes. A segfault, an abort, an exit or a hang costs one file; the others
come back unchanged, in order, in bounded time; workers never import torch and never write to stdout."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tokshift_cli.errors import DecodeTimeoutError, DecoderCrashedError, VideoError
from tokshift_cli.video.reader import TruncatedVideoError
from tokshift_cli.video.workers import DecodePool, decode_clips, ordered_decode, signal_description

import workerfns  # noqa: E402  (tests/ is on sys.path; the workers import it by name too)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="decode worker processes are POSIX-only")


def as_result(i, path, error, elapsed):
    """on_error for workerfns.behave: the failure as a tuple, so a test can check its class and message."""
    return ("failed", i, type(error).__name__, error.reason, elapsed)


def run(paths, *, workers=2, timeout=None, prefetch=None, **kw):
    return list(ordered_decode(paths, workerfns.behave, workers=workers, timeout=timeout, prefetch=prefetch,
                               kwargs=kw, on_error=as_result))


def test_crashes_cost_one_file_each_order_kept():
    """Every way a native decoder can die, mixed with good files: the good ones are intact and in order."""
    paths = ["a", "segv1", "b", "native1", "c", "abort1", "d", "exit1", "e", "bad1", "f"]
    t0 = time.monotonic()
    out = run(paths, workers=2, timeout=30)
    assert time.monotonic() - t0 < 30
    assert len(out) == len(paths)
    for i, (p, r) in enumerate(zip(paths, out)):
        if p in "abcdef":
            assert isinstance(r, dict) and r["index"] == i and r["path"] == p
            assert (r["pixels"] == i % 251).all()
    fails = {paths[r[1]]: r for r in out if isinstance(r, tuple)}
    assert fails["segv1"][2:4] == ("DecoderCrashedError", "decoder crashed (signal 11 SIGSEGV)")
    assert fails["native1"][2:4] == ("DecoderCrashedError", "decoder crashed (signal 11 SIGSEGV)")
    assert fails["abort1"][2] == "DecoderCrashedError" and "signal 6 SIGABRT" in fails["abort1"][3]
    assert fails["exit1"][2:4] == ("DecoderCrashedError", "decoder crashed (exit code 3)")
    assert fails["bad1"][2:4] == ("VideoError", "not a video file (test)")  # an ordinary failure, no crash


def test_hang_is_killed_after_the_timeout_and_replaced():
    paths = ["a", "hang1", "b", "hang2", "c", "d"]
    t0 = time.monotonic()
    out = run(paths, workers=2, timeout=1.0, prefetch=4)
    elapsed = time.monotonic() - t0
    assert [r["path"] for r in out if isinstance(r, dict)] == ["a", "b", "c", "d"]
    hangs = [r for r in out if isinstance(r, tuple)]
    assert [paths[r[1]] for r in hangs] == ["hang1", "hang2"]
    for r in hangs:
        assert r[2] == "DecodeTimeoutError"
        assert r[3] == "timed out: decoding took longer than 1 s (--timeout)"
        assert r[4] >= 1.0  # killed no earlier than the timeout
    # no upper bound on the time: that the hangs were killed shows in the results above (a hang never killed
    # would never return); 120 s only turns "never" into a failure instead of a stuck suite
    assert elapsed < 120


def test_worker_killed_from_outside_mid_decode():
    """SIGKILL from another process (the OOM killer, a user): that file fails, the pool goes on."""
    with DecodePool(2) as pool:
        first = set(pool.worker_pids)
        killed: list[int] = []

        def killer():
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                busy = pool.busy_pids()
                if 1 in busy:
                    os.kill(busy[1], signal.SIGKILL)
                    killed.append(busy[1])
                    return
                time.sleep(0.01)

        t = threading.Thread(target=killer)
        t.start()
        out = list(pool.ordered(["a", "slow-victim", "b", "c"], workerfns.behave, kwargs={"sleep": 5.0},
                                on_error=as_result))
        t.join()
        assert killed and killed[0] in first
        assert out[1][2:4] == ("DecoderCrashedError", "decoder crashed (signal 9 SIGKILL: killed, by the "
                                                      "out-of-memory killer?)")
        assert [r["path"] for r in (out[0], out[2], out[3])] == ["a", "b", "c"]
        assert pool.restarts == 1 and killed[0] not in pool.worker_pids and len(pool.worker_pids) == 2
        # the same processes serve the next run (warm)
        pids = set(pool.worker_pids)
        again = list(pool.ordered(["x", "y", "z"], workerfns.behave))
        assert {r["pid"] for r in again} <= pids


def test_prefetch_bounds_how_far_decoding_runs_ahead(tmp_path):
    log = tmp_path / "started.txt"
    paths = [f"f{i}" for i in range(12)]
    seen = []
    for i, r in enumerate(ordered_decode(paths, workerfns.behave, workers=2, prefetch=3,
                                         kwargs={"log": str(log)})):
        time.sleep(0.15)  # a slow consumer (the model)
        started = len(log.read_text().splitlines())
        seen.append(started)
        assert started <= i + 1 + 3, (i, started)
        assert r["index"] == i
    assert seen[-1] == 12


def test_workers_do_not_import_torch_and_stay_warm():
    out = list(ordered_decode(["a", "b", "c", "d"], workerfns.environment, workers=2))
    assert not any(r["torch"] for r in out)
    assert all(r["av"] for r in out)  # PyAV imported once, at start
    assert not any(r["decord"] for r in out)  # decord only when --decoder decord asks for it
    assert not any(r["nvidia_libs"] for r in out)
    assert len({r["pid"] for r in out}) <= 2  # the same two processes for every file


def test_bug_in_decode_fn_is_reraised_with_the_workers_traceback():
    it = ordered_decode(["a", "bug1", "b"], workerfns.behave, workers=1)
    assert next(it)["path"] == "a"
    with pytest.raises(ValueError, match=r"a bug in the decode function \(bug1\)") as e:
        next(it)
    assert any("in the decode worker" in n and "workerfns.py" in n for n in getattr(e.value, "__notes__", []))


def test_decode_fn_the_workers_cannot_import_is_a_clear_error(tmp_path):
    """A function the workers cannot import (defined in a module that exists only in this process) is an error
    raised in the consumer, not a "crash" of every file; a lambda cannot be sent at all."""
    import types

    mod = types.ModuleType("tokshift_test_only_here")
    exec("def fn(i, p):\n    return i\n", mod.__dict__)
    mod.fn.__module__ = mod.__name__
    sys.modules[mod.__name__] = mod
    try:
        with pytest.raises(ModuleNotFoundError, match="tokshift_test_only_here"):
            list(ordered_decode(["a", "b"], mod.fn, workers=1))
    finally:
        del sys.modules[mod.__name__]
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        list(ordered_decode(["a"], lambda i, p: i, workers=1))


def test_inline_mode_and_errors_mapping():
    """workers=0 decodes in the caller (no isolation); known errors are never sent to a worker."""
    out = list(ordered_decode(["a", "bad1", "missing", "b"], workerfns.behave, workers=0,
                              errors={2: "no such file"}, on_error=as_result))
    assert out[0]["pid"] == os.getpid() and out[3]["path"] == "b"
    assert out[1][2:4] == ("VideoError", "not a video file (test)")
    assert out[2][2:4] == ("VideoError", "no such file")
    out = list(ordered_decode(["missing", "a"], workerfns.behave, workers=1, errors={0: "no such file"},
                              on_error=as_result))
    assert out[0][3] == "no such file" and out[1]["pid"] != os.getpid()


def test_errors_survive_the_trip_from_a_worker():
    for e in (VideoError("a b.mp4", "why"), DecodeTimeoutError("x", "timed out"),
              DecoderCrashedError("x", "decoder crashed (signal 11 SIGSEGV)"), TruncatedVideoError("p", 3, 40)):
        back = pickle.loads(pickle.dumps(e))
        assert type(back) is type(e) and str(back) == str(e) and back.reason == e.reason
    assert signal_description(-11) == "signal 11 SIGSEGV" and signal_description(2) == "exit code 2"


def test_large_frames_arrive_intact_and_writable():
    """Pixel buffers travel out of band (memfd on Linux): contents exact, arrays writable (torch.from_numpy)."""
    out = list(ordered_decode(["a", "b"], workerfns.behave, workers=1, kwargs={"size": 5_000_000}))
    for i, r in enumerate(out):
        px = r["pixels"]
        assert px.shape == (5_000_000,) and px.flags.writeable and (px == i).all()
        px[0] = 7  # a private copy-on-write mapping: writing is allowed and stays local


def test_decode_clips_in_workers_equals_inline(tmp_path):
    from videogen import make_video, sample_video

    paths = [str(sample_video("bikes.mp4")), str(make_video(tmp_path / "a.mp4", frames=30)),
             str(tmp_path / "missing.mp4")]
    kw = dict(frames=8, stride=32, clips=3)
    pooled = list(ordered_decode(paths, decode_clips, workers=2, kwargs=kw, timeout=60))
    for i, p in enumerate(paths):
        ref = decode_clips(i, p, **kw)
        got = pooled[i]
        assert got.error == ref.error and got.index == i and got.path == p
        if ref.error is None:
            assert np.array_equal(got.frames, ref.frames) and np.array_equal(got.frame_indices, ref.frame_indices)
            assert np.array_equal(got.timestamps, ref.timestamps) and got.meta == ref.meta
    assert pooled[2].error == "no such file"


def _pids_alive(pids):
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        try:  # a zombie (exited, not yet reaped) counts as gone
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    continue
        except OSError:
            pass
        alive.append(pid)
    return alive


def test_no_orphans_after_the_parent_is_killed(tmp_path):
    """kill -9 of the parent while a worker is stuck in a decode: the workers exit by themselves, and nothing a
    worker printed reached the parent's stdout."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import workerfns
        from tokshift_cli.video.workers import DecodePool
        pool = DecodePool(2)
        print("PIDS", *pool.worker_pids, flush=True)
        for r in pool.ordered(["print1", "hang1", "b"], workerfns.behave):
            print("GOT", r["path"], flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = proc.stdout.readline().split()
    assert first[0] == "PIDS", first + [proc.stderr.read()]
    pids = [int(p) for p in first[1:]]
    assert proc.stdout.readline().strip() == "GOT print1"  # then it waits on hang1, forever
    time.sleep(0.5)
    proc.kill()
    proc.wait(timeout=10)
    rest = proc.stdout.read()
    assert "noise" not in rest
    deadline = time.monotonic() + 10
    while _pids_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pids_alive(pids) == []


def test_consumer_stopping_early_stops_the_workers():
    pool = DecodePool(2)
    it = pool.ordered(["a", "hang1", "hang2", "b"], workerfns.behave)
    assert next(it)["path"] == "a"
    busy = list(pool.busy_pids().values())
    it.close()  # e.g. Ctrl-C in the consumer: the generator's finally runs
    pool.close()
    deadline = time.monotonic() + 10
    while _pids_alive(busy) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pids_alive(busy) == []


def test_a_real_decoder_crash_costs_one_file(tmp_path):
    """Not a simulated crash: a file that aborts decord's native code (``--decoder decord``; PyAV reads it). In a
    worker it is one failed file."""
    from videogen import make_video

    bad = workerfns.huge_frame_count_mp4(tmp_path / "huge.mp4")
    good = make_video(tmp_path / "good.mp4", frames=20)
    kw = dict(frames=8, stride=4, clips=2, decoder="decord")
    inline = subprocess.run([sys.executable, "-c", "import sys; from tokshift_cli.video.workers import decode_clips; "
                             "print(decode_clips(0, sys.argv[1], frames=8, stride=4, clips=2, decoder='decord').error)",
                             str(bad)],
                            capture_output=True, text=True, timeout=120)
    out = list(ordered_decode([str(good), str(bad), str(good)], decode_clips, workers=1, kwargs=kw, timeout=60))
    assert out[0].error is None and out[2].error is None
    assert np.array_equal(out[0].frames, out[2].frames)
    if inline.returncode == 0:  # a decord that no longer aborts here: then it must be an ordinary error
        assert out[1].error and not out[1].crashed
        pytest.skip(f"this decord does not abort on the file any more (inline: {inline.stdout.strip()})")
    assert inline.returncode == -signal.SIGABRT  # in-process, the whole program dies
    assert out[1].crashed and out[1].error == "decoder crashed (signal 6 SIGABRT: aborted)"
