"""Outputs: never clobbered without --overwrite, never a partial file under the final name (even after kill -9
or a full disk), the parent folder created or a clear error (exit code 4)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tokshift_cli.errors import OutputError, OutputExistsError
from tokshift_cli.outputs import atomic_write_bytes, check_output_path


def test_check_output_path(tmp_path):
    out = tmp_path / "a" / "b" / "res.json"
    assert check_output_path(out, overwrite=False) == out and out.parent.is_dir()  # parents created
    assert list(out.parent.iterdir()) == []  # the write probe left nothing behind
    out.write_text("keep")
    with pytest.raises(OutputExistsError, match=r"res\.json: exists already; pass --overwrite"):
        check_output_path(out, overwrite=False)
    assert check_output_path(out, overwrite=True) == out and out.read_text() == "keep"
    dangling = tmp_path / "link.json"
    dangling.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(OutputExistsError):
        check_output_path(dangling, overwrite=False)
    with pytest.raises(OutputExistsError, match="is a folder"):
        check_output_path(tmp_path, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create the output folder \(.*file is a file, not a folder\)"):
        check_output_path(tmp_path / "file" / "sub" / "res.json", overwrite=False)


_WRITER = textwrap.dedent("""
    import sys, time
    from tokshift_cli.outputs import atomic_open
    with atomic_open(sys.argv[1], "wb") as f:
        for i in range(1000):
            f.write(b"x" * 65536)
            f.flush()
            if i == 10:
                print("WRITING", flush=True)
            time.sleep(0.01)
""")


@pytest.mark.parametrize("existing", [False, True])
def test_kill_9_during_a_write_leaves_no_partial_file(tmp_path, existing):
    final = tmp_path / "feats.npy"
    if existing:
        final.write_bytes(b"the previous complete output")
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(final)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "WRITING"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    if existing:
        assert final.read_bytes() == b"the previous complete output"
    else:
        assert not final.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "feats.npy"]
    assert all(n.startswith(".feats.npy.") and n.endswith(".tmp") for n in leftovers), leftovers


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX")
def test_full_disk_is_a_clear_error_and_nothing_is_written(tmp_path):
    """A file size limit (RLIMIT_FSIZE: writes fail with EFBIG, as on a full disk with ENOSPC) in a subprocess."""
    code = textwrap.dedent("""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        from tokshift_cli.errors import OutputError
        from tokshift_cli.outputs import atomic_write_bytes
        try:
            atomic_write_bytes(sys.argv[1], b"x" * 1_000_000)
        except OutputError as e:
            print("OutputError:", e)
    """)
    final = tmp_path / "res.json"
    r = subprocess.run([sys.executable, "-c", code, str(final)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"OutputError: {final}: cannot write (file too large); nothing was written under " \
                               "that name"
    assert list(tmp_path.iterdir()) == []  # no final file, no temporary left


def test_atomic_write_replaces_completely(tmp_path):
    final = tmp_path / "x.bin"
    final.write_bytes(b"old")
    atomic_write_bytes(final, b"new content")
    assert final.read_bytes() == b"new content" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    assert (final.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_convert_refuses_to_overwrite(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")
    ckpt = tmp_path / "x.pth"
    ckpt.write_bytes(b"not read: the output check comes first")
    r = subprocess.run([sys.executable, "-m", "tokshift_cli", "convert", str(ckpt), "--out", str(out), "--arch",
                        "tokshift-b16-8x224"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 4 and "--overwrite" in r.stderr and "Traceback" not in r.stderr
    assert (out / "config.json").read_text() == "{}"
