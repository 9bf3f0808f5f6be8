"""`tokshift live` against streams served on 127.0.0.1 by tests/livesrv.py (barcoded frames: each decision's frames can
be read back), through the real CLI.

* the frames of every decision are the frames sent at that time (barcodes and the server's send log), ``stride``
  apart (the model's 32 over TCP; 2 over UDP, HTTP and HLS to keep the tests short);
* a model slowed on purpose: latency p95 <= model time p95 + one hop, stale windows skipped and counted;
* the server killed and restarted: a gap event, a new connection, decisions resume; Ctrl-C stops within a second
  and the --out file ends with the ``stop`` event;
* memory: RSS of the CLI and its decode process flat (last / first <= 1.2). ``TOKSHIFT_LIVE_SOAK_S=1200`` runs
  the 20-minute version on demand (the suite runs it for a few seconds).

No test needs a camera: the camera path (v4l2 / avfoundation / dshow) is untested.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("cv2")

from corpus import read_number  # noqa: E402
from procs import ctrl_c_as_a_terminal_gives_it  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).resolve().parent / "livesrv.py"
MODEL = ["--model", "tokshift-tiny-untrained"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
       "HF_HUB_OFFLINE": "1", "TOKSHIFT_GDRIVE": "0"}
SOAK_S = float(os.environ.get("TOKSHIFT_LIVE_SOAK_S", "12"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(mode: str, port: int, *, fps: int, log: Path | None = None, start: int = 0):
    cmd = [sys.executable, str(SERVER), mode, str(port), "--fps", str(fps), "--start", str(start)]
    if log is not None:
        cmd += ["--log", str(log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def live_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokshift_cli", "live", *args, *MODEL]


def events_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sent_times(log: Path) -> dict[int, float]:
    out = {}
    for line in log.read_text().splitlines():
        n, t = line.split()
        out[int(n)] = float(t)
    return out


def barcodes(folder: Path, decision: int) -> list[int | None]:
    from PIL import Image

    files = sorted(folder.glob(f"decision{decision:06d}_frame*_n*.png"), key=lambda p: int(p.stem.split("_frame")[1]
                                                                                           .split("_")[0]))
    return [read_number(np.asarray(Image.open(f))) for f in files]


def check_decisions(evs: list[dict], views: Path, stride: int, fps: int, sent: dict[int, float] | None = None) -> int:
    """Every decision's frames are ``stride`` apart in number, time and barcode, and (with the server's log) were
    sent just before the decision: within its latency plus a small transport margin."""
    decisions = [e for e in evs if e["event"] == "decision"]
    offsets = set()
    for d, e in enumerate(decisions):
        nums = e["frame_indices"]
        assert np.all(np.diff(nums) == stride), nums
        assert np.allclose(np.diff(e["timestamps"]), stride / fps, atol=2e-3), e
        codes = barcodes(views, d)
        assert len(codes) == len(nums) and None not in codes, (d, codes)
        assert np.all(np.diff(codes) == stride), (nums, codes)
        offsets.add((e["segment"], codes[0] - nums[0]))  # barcode - frame number: fixed within a connection
        if sent is not None:
            age = e["time"] - sent[codes[-1]]
            assert -0.05 <= age <= e["latency_s"] + 0.5, (d, age, e["latency_s"])
            newer = [n for n, t in sent.items() if sent[codes[-1]] < t <= e["time"] - e["latency_s"] - 0.3]
            assert not newer, f"decision {d} used frame {codes[-1]} while {newer[:3]}... had been sent before"
    assert len({seg for seg, _ in offsets}) == len(offsets), offsets
    return len(decisions)


# --- refusals: one line, exit 2 -------------------------------------------------------------------------------------


def test_bad_sources_are_one_line_exit_2(tmp_path):
    from typer.testing import CliRunner

    from tokshift_cli.cli import app

    video = tmp_path / "a.mp4"
    video.write_bytes(b"\0" * 100)
    port = free_port()  # nothing listens there
    runner = CliRunner()
    cases = [
        (["ftp://127.0.0.1/x"], "unsupported URL scheme"),
        ([str(video)], "--realtime"),
        ([str(tmp_path / "missing.mp4")], "no such file"),
        ([str(tmp_path)], "is a folder"),
        ([f"tcp://127.0.0.1:{port}", "--timeout", "3"], "connection refused"),
        ([f"rtsp://127.0.0.1:{port}/x", "--transport", "sctp"], "--transport"),
        ([f"tcp://127.0.0.1:{port}", "--hop", "fast"], "--hop"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["live", *args, *MODEL])
        assert r.exit_code == 2 and message in r.output, (args, r.output)
        assert "Traceback" not in r.output


def test_source_parsing():
    from tokshift_cli.errors import UsageError
    from tokshift_cli.video.live_source import parse_source

    assert parse_source("0", platform="linux").url == "/dev/video0"
    assert parse_source("1", platform="darwin").format == "avfoundation"
    assert parse_source("video=Cam", platform="win32").format == "dshow"
    assert parse_source("/dev/video2").format == "v4l2"
    assert parse_source("rtsp://h/s", transport="udp").options["rtsp_transport"] == "udp"
    assert parse_source("udp://127.0.0.1:5000").network
    with pytest.raises(UsageError, match="by name"):
        parse_source("0", platform="win32")


def test_frame_ring_windows_never_span_a_gap():
    from tokshift_cli.video.live_source import FrameRing

    ring = FrameRing(10)
    ring.start_segment(0)
    for n in range(12):
        ring.slot_for(n, (2, 2, 3))[...] = n
        ring.commit(n, n / 10, float(n))
    w = ring.window(3, 4)
    assert w.numbers.tolist() == [3, 7, 11] and w.frames[:, 0, 0, 0].tolist() == [3, 7, 11]
    assert ring.window(3, 5) is None  # frame 1 has been overwritten
    ring.start_segment(1)
    assert ring.window(1, 1) is None


# --- streams ------------------------------------------------------------------------------------------------------


def test_tcp_decisions_use_the_frames_sent_then_at_the_models_stride(tmp_path):
    fps, port = 100, free_port()
    log, views, out = tmp_path / "sent.txt", tmp_path / "views", tmp_path / "events.jsonl"
    with server("tcp", port, fps=fps, log=log, start=1000):
        r = subprocess.run(live_cmd(f"tcp://127.0.0.1:{port}", "--hop", "0.5", "--duration", "5", "--json",
                                    "--save-views", str(views), "--out", str(out)),
                           capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    evs = events_of(r.stdout)
    assert evs[0]["event"] == "connected" and evs[-1]["event"] == "stop"
    assert check_decisions(evs, views, stride=32, fps=fps, sent=sent_times(log)) >= 3
    assert events_of(out.read_text()) == evs  # --out: the same lines
    assert evs[-1]["reason"] == "duration" and evs[-1]["gaps"] == 0


@pytest.mark.parametrize("mode", ["udp", "http", "hls"])
def test_udp_http_and_hls_streams(tmp_path, mode):
    fps, views = 25, tmp_path / "views"
    port = free_port(socket.SOCK_DGRAM if mode == "udp" else socket.SOCK_STREAM)
    url = {"udp": f"udp://127.0.0.1:{port}", "http": f"http://127.0.0.1:{port}/live.ts",
           "hls": f"http://127.0.0.1:{port}/live.m3u8"}[mode]
    with server(mode, port, fps=fps, start=300):
        r = subprocess.run(live_cmd(url, "--stride", "2", "--hop", "0.25", "--duration", "3", "--json",
                                    "--save-views", str(views)), capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    evs = events_of(r.stdout)
    assert check_decisions(evs, views, stride=2, fps=fps) >= 3


def test_slow_model_skips_stale_windows_and_latency_stays_bounded(tmp_path, monkeypatch):
    """A model four times slower than the hop: windows are skipped (counted), never queued; p95 latency <= p95
    model time + one hop."""
    from typer.testing import CliRunner

    import tokshift_cli.live.runner as runner_mod
    from tokshift_cli.cli import app

    real = runner_mod.classify_window

    def slow(*a, **k):
        time.sleep(0.4)
        return real(*a, **k)

    monkeypatch.setattr(runner_mod, "classify_window", slow)
    hop, port = 0.1, free_port()
    with server("tcp", port, fps=25):
        r = CliRunner().invoke(app, ["live", f"tcp://127.0.0.1:{port}", "--stride", "2", "--hop", str(hop),
                                     "--duration", "5", "--json", *MODEL])
    assert r.exit_code == 0, r.output
    evs = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    stop = evs[-1]
    decisions = [e for e in evs if e["event"] == "decision"]
    assert len(decisions) >= 5 and stop["skipped"] >= 2 * len(decisions) - 2
    assert sum(e["skipped"] for e in decisions) == stop["skipped"]
    assert stop["latency_p95_s"] <= stop["model_p95_s"] + hop, stop
    lat = np.array([e["latency_s"] for e in decisions])
    assert lat.max() < 0.4 + 1.0, lat  # nothing waited in a queue


def test_on_change_reports_label_changes_only(tmp_path):
    """--on-change on a file played with --realtime: only `change` events, each a different label from the one
    before, below --threshold reported as uncertain (label null)."""
    from typer.testing import CliRunner

    from tokshift_cli.cli import app
    from videogen import sample_video

    thr = 0.6
    r = CliRunner().invoke(app, ["live", str(sample_video("bikes.mp4")), "--realtime", "--stride", "2", "--hop",
                                 "0.2", "--duration", "5", "--on-change", "--smooth", "2", "--threshold", str(thr),
                                 "--json", *MODEL])
    assert r.exit_code == 0, r.output
    evs = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    changes = [e for e in evs if e["event"] == "change"]
    assert changes and not any(e["event"] == "decision" for e in evs)
    assert evs[-1]["decisions"] >= len(changes)
    labels = [e["label"] for e in changes]
    assert all(a != b for a, b in zip(labels, labels[1:])), labels
    assert all((e["label"] is None) == e["uncertain"] == (e["probability"] < thr) for e in changes), changes


def test_runtime_gives_torchs_probabilities_on_the_same_frames(tmp_path):
    """--runtime onnxruntime: the `stop` event names the runtime and precision, and every decision's top-k
    probabilities are torch's on the same frames (the saved views: exactly what the network got) within 1e-5."""
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from tokshift_cli.live import classify_window
    from tokshift_cli.models.weights import load_model
    from videogen import sample_video

    views = tmp_path / "views"
    proc = subprocess.Popen(live_cmd(str(sample_video("bikes.mp4")), "--realtime", "--stride", "2", "--hop", "0.25",
                                     "--duration", "3", "--json", "--save-views", str(views), "--runtime",
                                     "onnxruntime"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**ENV, "PYTHONFAULTHANDLER": "1"})
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # say where it hangs: SIGABRT makes faulthandler print every thread's stack
        proc.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate(timeout=60)
        pytest.fail(f"live --runtime onnxruntime still running after 240 s (--duration 3); stdout tail:\n"
                    f"{stdout[-1500:]}\nstderr tail:\n{stderr[-6000:]}")
    assert proc.returncode == 0, stderr
    evs = events_of(stdout)
    assert (evs[-1]["event"], evs[-1]["runtime"], evs[-1]["precision"]) == ("stop", "onnxruntime", "float32")
    decisions = [e for e in evs if e["event"] == "decision"]
    assert len(decisions) >= 2
    net = load_model("tokshift-tiny-untrained")
    labels = list(net.config.labels)
    for d, e in enumerate(decisions):
        files = sorted(views.glob(f"decision{d:06d}_frame*_n*.png"),
                       key=lambda f: int(f.stem.split("_frame")[1].split("_")[0]))
        frames = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
        probs = classify_window(net, frames)
        got = {t["label"]: t["probability"] for t in e["top_k"]}
        want = {lab: float(probs[labels.index(lab)]) for lab in got}
        assert got == pytest.approx(want, abs=1e-5), (d, got, want)


def _read_lines(proc: subprocess.Popen, into: list[dict]) -> None:
    for line in proc.stdout:
        if line.strip():
            into.append(json.loads(line))


def _wait(pred, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_server_restart_is_a_gap_then_decisions_resume_and_ctrl_c_flushes(tmp_path):
    port, out = free_port(), tmp_path / "events.jsonl"
    evs: list[dict] = []
    srv = server("tcp", port, fps=25)
    srv.__enter__()
    proc = subprocess.Popen(live_cmd(f"tcp://127.0.0.1:{port}", "--stride", "2", "--hop", "0.25", "--json",
                                     "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV, preexec_fn=ctrl_c_as_a_terminal_gives_it)
    reader = threading.Thread(target=_read_lines, args=(proc, evs), daemon=True)
    reader.start()
    try:
        assert _wait(lambda: sum(e["event"] == "decision" for e in evs) >= 2, 60), evs
        srv.__exit__(None, None, None)  # the server dies mid-stream
        assert _wait(lambda: any(e["event"] == "gap" for e in evs), 20), evs
        time.sleep(1.0)
        srv = server("tcp", port, fps=25, start=5000)
        srv.__enter__()
        assert _wait(lambda: any(e["event"] == "decision" and e["segment"] == 1 for e in evs), 30), evs
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=10)
        stopped_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.__exit__(None, None, None)
    reader.join(timeout=5)
    print(f"[live] SIGINT -> exit {rc} in {stopped_s:.2f} s")
    assert rc == 130 and stopped_s < 1.5, (rc, stopped_s)
    kinds = [e["event"] for e in evs]
    gap = kinds.index("gap")
    again = kinds.index("connected", gap)
    assert "decision" in kinds[:gap] and evs[again]["segment"] == 1
    assert all(e["segment"] == 0 for e in evs[:gap] if e["event"] == "decision")
    resumed = [e for e in evs[again:] if e["event"] == "decision"]
    assert resumed and all(e["segment"] == 1 for e in resumed)
    logged = events_of(out.read_text())
    assert logged[-1]["event"] == "stop" and logged[-1]["reason"] == "interrupted" and logged[-1]["gaps"] == 1


def _rss_kb(pid: int) -> int:
    """RSS of ``pid`` and its children (the decode process), in kB."""
    total = 0
    pids = [pid]
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                pids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads RSS from /proc")
def test_memory_stays_flat(tmp_path):
    """RSS (CLI + decode process) after the first decisions vs at the end: <= 1.2. TOKSHIFT_LIVE_SOAK_S sets the
    length (12 s in the suite; 1200 for the 20-minute soak)."""
    port = free_port()
    evs: list[dict] = []
    with server("tcp", port, fps=50):
        proc = subprocess.Popen(live_cmd(f"tcp://127.0.0.1:{port}", "--stride", "4", "--hop", "0.1", "--json",
                                         "--duration", str(SOAK_S + 8)), stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=ENV,
                                preexec_fn=ctrl_c_as_a_terminal_gives_it)
        threading.Thread(target=_read_lines, args=(proc, evs), daemon=True).start()
        try:
            assert _wait(lambda: sum(e["event"] == "decision" for e in evs) >= 5, 60), evs
            first = _rss_kb(proc.pid)
            samples = [first]
            end = time.monotonic() + SOAK_S
            while time.monotonic() < end and proc.poll() is None:
                time.sleep(min(1.0, SOAK_S / 20))
                samples.append(_rss_kb(proc.pid))
            last = samples[-1]
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=10)
    n = sum(e["event"] == "decision" for e in evs)
    print(f"[live] RSS first {first / 1024:.1f} MB, last {last / 1024:.1f} MB, max {max(samples) / 1024:.1f} MB, "
          f"ratio {last / first:.3f}, {n} decisions in {SOAK_S:g} s")
    assert last / first <= 1.2, samples


def test_the_decode_process_imports_no_torch():
    """The decode process imports tokshift_cli.video.live_source: it must stay torch-free (fast to start, small)."""
    code = "import sys, tokshift_cli.video.live_source; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
