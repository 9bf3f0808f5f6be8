"""A real Hugging Face Hub-compatible server for tests, offline: olah serving plain local git repositories.

The real ``huggingface_hub`` client talks to it over HTTP exactly as it talks to huggingface.co, so tests exercise
the real download, cache, revision and error paths (nothing is mocked). See /work/shared/NOTES-hub.md.

    server = HubServer(tmp_path); server.start()
    sha = server.add_repo("org/name", {"config.json": b"{...}", "model.safetensors": path}, tag="v1")
    snapshot_download("org/name", endpoint=server.endpoint, cache_dir=...)
    server.stop()

Gotchas (olah 0.5.4): a binary file of 121..149 bytes is misread as an LFS pointer (500 and ~24 s of client
retries), so :meth:`HubServer.add_repo` refuses those sizes; a missing repo, file-on-branch or revision all answer
401 (the client raises ``RepositoryNotFoundError``); ``model_info()`` needs an explicit ``revision=``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PROBE_REPO = "tokshift-hubserver/probe"
_GIT_ID = ["-c", "user.name=tokshift tests", "-c", "user.email=tests@tokshift.invalid", "-c", "commit.gpgsign=false"]


def olah_available() -> str | None:
    """None when olah and git can run here, else the reason they cannot (for ``pytest.skip``)."""
    import importlib.util

    if importlib.util.find_spec("olah") is None:
        return "olah is not installed (pip install -e '.[test]')"
    if shutil.which("git") is None:
        return "the git binary is not on PATH (olah serves git repositories)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGTERM olah when pytest dies (even by SIGKILL or a timeout),
    so an interrupted test run never leaves a server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class HubServer:
    """An olah process on 127.0.0.1 serving git repositories under ``<root>/mirrors/models/<org>/<name>``."""

    def __init__(self, root: str | Path, port: int | None = None):
        self.root = Path(root)
        self.mirrors = self.root / "mirrors"
        self.port = port or _free_port()
        self.proc: subprocess.Popen | None = None
        self._log = self.root / "olah.out"

    # -- process ---------------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        """The value for ``HF_ENDPOINT`` / ``endpoint=``."""
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        (self.mirrors / "models").mkdir(parents=True, exist_ok=True)
        netloc = f"127.0.0.1:{self.port}"
        cfg = self.root / "olah.toml"
        cfg.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f'repos-path = "{(self.root / "cache").as_posix()}"\n'
            f'mirrors-path = ["{self.mirrors.as_posix()}"]\n'
            f'mirror-scheme = "http"\nmirror-netloc = "{netloc}"\nmirror-lfs-netloc = "{netloc}"\n'
            "[accessibility]\noffline = true\n",
            encoding="utf-8",
        )
        return cfg

    def start(self, timeout: float = 30.0) -> "HubServer":
        """Start olah and wait until it serves the probe repository."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self._write_config()
        if not (self.mirrors / "models" / PROBE_REPO).exists():
            self.add_repo(PROBE_REPO, {"README.md": b"readiness probe for tests/hubserver.py\n"})
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for key in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env.pop(key, None)
        log = open(self._log, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "olah.server", "-c", str(cfg), "--log-path", str(self.root / "logs")],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                preexec_fn=_die_with_parent)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        url = f"{self.endpoint}/api/models/{PROBE_REPO}/revision/main"
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"olah exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"olah did not answer {url} within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM the server and wait for it (the port is then refused: "the server went away")."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> "HubServer":
        """Stop, then start again on the same port (same endpoint)."""
        self.stop()
        return self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self._log.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return "(no log)"

    # -- repositories ----------------------------------------------------------------------------------------
    def repo_path(self, repo_id: str) -> Path:
        org, name = repo_id.split("/")
        return self.mirrors / "models" / org / name

    def _git(self, repo: Path, *args: str) -> str:
        r = subprocess.run(["git", *_GIT_ID, *args], cwd=repo, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {r.stderr.strip()}")
        return r.stdout.strip()

    def add_repo(self, repo_id: str, files: dict[str, bytes | str | Path | None], branch: str = "main",
                 tag: str | None = None, message: str | None = None) -> str:
        """Create or update ``repo_id`` and commit ``files`` on ``branch``; return the commit sha.

        Values are bytes, text, or a path to copy; ``None`` deletes the file. A new branch starts from the current
        ``main``. ``tag`` (re)points a lightweight tag at the new commit. ``main`` stays checked out.
        """
        repo = self.repo_path(repo_id)
        if not (repo / ".git").exists():
            repo.mkdir(parents=True, exist_ok=True)
            self._git(repo, "init", "-q", "-b", "main")
        branches = self._git(repo, "branch", "--list", "--format=%(refname:short)").split()
        if branch in branches:
            self._git(repo, "checkout", "-q", branch)
        elif branches:
            self._git(repo, "checkout", "-q", "-b", branch)
        else:  # no commit yet: the first commit goes to `branch`
            self._git(repo, "symbolic-ref", "HEAD", f"refs/heads/{branch}")
        try:
            for name, content in files.items():
                dest = repo / name
                if content is None:
                    self._git(repo, "rm", "-q", "--ignore-unmatch", name)
                    continue
                data = Path(content).read_bytes() if isinstance(content, Path) else (
                    content.encode("utf-8") if isinstance(content, str) else bytes(content))
                if 121 <= len(data) <= 149:
                    try:
                        data.decode("utf-8")
                    except UnicodeDecodeError:
                        raise ValueError(f"{name}: olah cannot serve a binary file of 121..149 bytes "
                                         f"({len(data)}); pad it") from None
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                self._git(repo, "add", "--", name)
            self._git(repo, "commit", "-q", "--allow-empty", "-m", message or f"update {', '.join(files)}")
            sha = self._git(repo, "rev-parse", "HEAD")
            if tag:
                self._git(repo, "tag", "-f", tag, sha)
        finally:
            if branch != "main" and "main" in self._git(repo, "branch", "--list", "--format=%(refname:short)").split():
                self._git(repo, "checkout", "-q", "main")
        return sha

    def delete_repo(self, repo_id: str) -> None:
        shutil.rmtree(self.repo_path(repo_id), ignore_errors=True)
