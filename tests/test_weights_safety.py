"""Weights and the Hub, through the real CLI: corrupt or mismatched files, configs from newer versions, repos
without the files, no network, offline with an empty cache, a download cut off mid-file, a server that goes
away mid-run; each a one-line error with exit code 3. And no pickle is ever unpickled from the Hub or a folder
(a malicious pickle that would create a marker file never does), no remote code, `torch.load` only in convert.

What olah cannot do (tests/hubserver.py): authentication, so a private repo cannot be told from a missing one
here; the real Hub answers 401 for both, and that is the path tested (the message says "not found ... or
private ... hf auth login / HF_TOKEN").
"""

from __future__ import annotations

import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tokshift_cli.models.config import CONFIG_VERSION, TokShiftConfig
from tokshift_cli.errors import ConversionError, WeightsError
from tokshift_cli.models.weights import HUB_ALLOW_PATTERNS, load_model

PACKAGE = Path(__file__).resolve().parent.parent / "tokshift_cli"
ORG = "tokshift-safety"
SMALL = dict(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, num_frames=8,
             frame_stride=32, fold_div=4, num_classes=7, label_order="custom",
             id2label={i: f"class {i}" for i in range(7)})


def tokshift(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TOKSHIFT_"))}
    full = {**base, "COLUMNS": "250", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TOKSHIFT_GDRIVE": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tokshift_cli", *args], capture_output=True, text=True, env=full,
                          timeout=timeout)


def error_line(r: subprocess.CompletedProcess) -> str:
    """The CLI's own error: the last line, which must start with "error: "; never a traceback."""
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), r.stderr
    return lines[-1]


# --- material -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights_bytes() -> bytes:
    from safetensors.torch import save

    from tokshift_cli.models.tokshift import create_model

    sd = create_model(TokShiftConfig(**SMALL)).state_dict()
    return save({k: v.contiguous() for k, v in sd.items()})


def config_bytes(**overrides) -> bytes:
    return json.dumps(TokShiftConfig(**{**SMALL, **overrides}).to_dict()).encode()


class _Evil:
    """Unpickling this opens (creates) the marker file: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_pickle(marker: Path, *, torch_format: bool) -> bytes:
    if torch_format:
        import io

        import torch

        buf = io.BytesIO()
        torch.save({"state_dict": {"w": _Evil(marker)}}, buf)
        return buf.getvalue()
    return pickle.dumps({"state_dict": _Evil(marker)})


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    from videogen import make_video

    return make_video(tmp_path_factory.mktemp("v") / "clip.mp4", frames=10)


def make_folder(path: Path, files: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


# --- local folders: corrupt, mismatched, newer -----------------------------------------------------------------


def test_broken_model_folders(tmp_path, weights_bytes):
    """Each case: WeightsError naming the file and what to do (in-process, the messages)."""
    good = config_bytes()
    cases = {
        "truncated": ({"config.json": good, "model.safetensors": weights_bytes[: len(weights_bytes) // 3]},
                      r"model\.safetensors: corrupt or truncated .*delete it and download again"),
        "garbage": ({"config.json": good, "model.safetensors": os.urandom(4096)},
                    r"model\.safetensors: corrupt or truncated"),
        "mismatch": ({"config.json": config_bytes(embed_dim=128, num_heads=4), "model.safetensors": weights_bytes},
                     r"weights do not match the model in its config\.json \(.*shape mismatch: .*\(model wants .*"
                     r"check that config\.json belongs to these weights"),
        "depth": ({"config.json": config_bytes(depth=3), "model.safetensors": weights_bytes},
                  r"weights do not match .*missing: blocks\.2\."),
        "newer": ({"config.json": json.dumps({**json.loads(good), "config_version": CONFIG_VERSION + 1,
                                              "tool_version": "9.0.0"}).encode(),
                   "model.safetensors": weights_bytes},
                  r"config\.json: config_version 2 was written by a newer tokshift-cli \(9\.0\.0\).*"
                  r"Upgrade: pip install -U tokshift-cli"),
        "bad_json": ({"config.json": b"{not json", "model.safetensors": weights_bytes},
                     r"config\.json: not readable JSON .*tokshift convert"),
        "not_tokshift": ({"config.json": json.dumps({"model_type": "bert"}).encode(),
                          "model.safetensors": weights_bytes},
                         r"model_type is 'bert', not 'tokshift'"),
        "no_weights": ({"config.json": good}, r"no model\.safetensors beside config\.json"),
        "no_config": ({"model.safetensors": weights_bytes}, r"no config\.json.*tokshift convert"),
    }
    for name, (files, pattern) in cases.items():
        folder = make_folder(tmp_path / name, files)
        with pytest.raises(WeightsError) as e:
            load_model(str(folder))
        msg = str(e.value)
        assert "\n" not in msg and re.search(pattern, msg), (name, msg)
    load_model(str(make_folder(tmp_path / "good", {"config.json": good, "model.safetensors": weights_bytes})))


@pytest.mark.parametrize("case", ["truncated", "newer"])
def test_broken_model_folder_through_the_cli(tmp_path, weights_bytes, video, case):
    cfg = config_bytes() if case == "truncated" else json.dumps(
        {**json.loads(config_bytes()), "config_version": CONFIG_VERSION + 1}).encode()
    data = weights_bytes[:1000] if case == "truncated" else weights_bytes
    folder = make_folder(tmp_path / "m", {"config.json": cfg, "model.safetensors": data})
    r = tokshift("classify", str(video), "--model", str(folder), "--json")
    assert r.returncode == 3 and r.stdout == ""
    line = error_line(r)
    assert str(folder) in line and ("corrupt or truncated" in line or "newer tokshift-cli" in line)


# --- no pickle, ever ---------------------------------------------------------------------------------------------


def test_no_pickle_from_a_folder_a_file_or_convert(tmp_path, video):
    marker = tmp_path / "PWNED"
    evil_plain = evil_pickle(marker, torch_format=False)
    evil_torch = evil_pickle(marker, torch_format=True)
    # a folder with only a pickle, a pickle disguised as model.safetensors, a .pth given as the model
    only_bin = make_folder(tmp_path / "only_bin", {"config.json": config_bytes(), "pytorch_model.bin": evil_torch})
    disguised = make_folder(tmp_path / "disguised", {"config.json": config_bytes(), "model.safetensors": evil_plain})
    pth = tmp_path / "evil.pth"
    pth.write_bytes(evil_torch)
    for ref, pattern in [(only_bin, r"no model\.safetensors beside config\.json \(it has pytorch_model\.bin: "
                                    r"convert a checkpoint"),
                         (disguised, r"model\.safetensors: corrupt or truncated"),
                         (pth, r"a PyTorch checkpoint, not a TokShift model folder: convert it first")]:
        with pytest.raises(WeightsError, match=pattern):
            load_model(str(ref))
        assert not marker.exists()
    r = tokshift("classify", str(video), "--model", str(only_bin))
    assert r.returncode == 3 and "pytorch_model.bin" in error_line(r)
    # convert reads .pth, with torch.load(weights_only=True): the pickle's code is refused, not run
    from tokshift_cli.models.convert import convert_checkpoint

    for data in (evil_torch, evil_plain):
        pth.write_bytes(data)
        with pytest.raises(ConversionError, match=r"weights_only=True.*refused on purpose"):
            convert_checkpoint(pth, tmp_path / "out", arch="tokshift-b16-8x224")
    r = tokshift("convert", str(pth), "--out", str(tmp_path / "out2"), "--arch", "tokshift-b16-8x224")
    assert r.returncode == 2 and "refused on purpose" in error_line(r)
    assert not marker.exists() and not (tmp_path / "out2" / "model.safetensors").exists()


def test_no_pickle_or_code_from_the_hub(hub, tmp_path, weights_bytes, video):
    """A repo offering a malicious pytorch_model.bin and a modeling .py: neither is downloaded, nothing runs."""
    marker = tmp_path / "PWNED"
    evil = evil_pickle(marker, torch_format=True)
    code = f"open({str(marker)!r}, 'w').write('code ran')\n".encode()
    hub.add_repo(f"{ORG}/pickle-only", {"config.json": config_bytes(), "pytorch_model.bin": evil,
                                        "modeling_tokshift.py": code})
    hub.add_repo(f"{ORG}/mixed", {"config.json": config_bytes(), "model.safetensors": weights_bytes,
                                  "pytorch_model.bin": evil, "modeling_tokshift.py": code,
                                  "model.safetensors.index.json": b'{"weight_map": {}}'})
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
    r = tokshift("classify", str(video), "--model", f"{ORG}/pickle-only", env=env)
    assert r.returncode == 3
    assert re.search(r"has no model\.safetensors; it has pytorch_model\.bin, which tokshift-cli never loads from "
                     r"the Hub \(pickles can run code\)", error_line(r))
    ok = tokshift("classify", str(video), "--model", f"{ORG}/mixed", "--json", env=env)
    assert ok.returncode == 0, ok.stderr
    cached = sorted(p.name for p in (tmp_path / "hf").rglob("*") if p.is_file() or p.is_symlink())
    assert not any(n.endswith((".bin", ".py", ".pth", ".pkl")) for n in cached), cached
    assert not marker.exists()
    assert set(HUB_ALLOW_PATTERNS) == {"config.json", "model.safetensors", "README.md"}


def test_source_never_unpickles_untrusted_data():
    """Static guarantees over the package source: `torch.load` only in convert.py and always weights_only=True;
    no trust_remote_code, no pickle.load of files, no np.load(allow_pickle=True), no exec/eval."""
    torch_loads = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            torch_loads.append((path.name, m.group(1)))
        assert "trust_remote_code" not in text, path
        assert not re.search(r"\ballow_pickle\s*=\s*True", text), path
        assert not re.search(r"(?<![\w.])(exec|eval)\(", text), path
        if path.name != "workers.py":  # workers.py: pickles only over its private socketpair with its own children
            assert not re.search(r"\bpickle\.loads?\(|\bUnpickler\(", text), path
    assert torch_loads and all(name == "convert.py" and "weights_only=True" in args for name, args in torch_loads), \
        torch_loads


# --- the network -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_hub_repo(hub_server, weights_bytes):
    repo = f"{ORG}/small"
    sha = hub_server.add_repo(repo, {"config.json": config_bytes(), "model.safetensors": weights_bytes})
    return repo, sha


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again on exit: nothing listens there


def test_offline_unreachable_and_missing_revision(hub, tmp_path, small_hub_repo, video):
    repo, _ = small_hub_repo
    home = str(tmp_path / "hf")
    r = tokshift("classify", str(video), "--model", repo, env={"HF_HUB_OFFLINE": "1", "HF_HOME": home,
                                                               "HF_ENDPOINT": hub.endpoint})
    assert r.returncode == 3
    assert re.search(r"offline \(HF_HUB_OFFLINE=1\) and nothing is cached for it; unset HF_HUB_OFFLINE",
                     error_line(r))
    dead = f"http://127.0.0.1:{_closed_port()}"
    r = tokshift("classify", str(video), "--model", repo, env={"HF_HOME": home, "HF_ENDPOINT": dead})
    assert r.returncode == 3
    assert re.search(rf"cannot reach the Hub at {re.escape(dead)} .*nothing is cached for it", error_line(r))
    r = tokshift("classify", str(video), "--model", f"{repo}@no-such-branch",
                 env={"HF_HOME": home, "HF_ENDPOINT": hub.endpoint})
    assert r.returncode == 3 and "has no revision 'no-such-branch'" in error_line(r)
    r = tokshift("classify", str(video), "--model", f"{ORG}/does-not-exist",
                 env={"HF_HOME": home, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_bogus_token_for_a_private_repo"})
    assert r.returncode == 3
    assert re.search(r"Hub repository not found .*or private and you are not logged in.*HF_TOKEN", error_line(r))


class CuttingProxy:
    """An HTTP proxy in front of the hub server that can cut a file download mid-body, and can vanish with the
    server behind it. One upstream connection per request (``Connection: close``), so every request is seen."""

    def __init__(self, upstream_port: int, on_cut=None):
        self.upstream = upstream_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.cut_after: int | None = None  # body bytes of model.safetensors to pass before dropping the connection
        self.on_cut = on_cut
        self.cuts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.sock.close()  # new connections are refused from now on

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(client,), daemon=True).start()

    def _one(self, client: socket.socket) -> None:
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = client.recv(65536)
                if not data:
                    return
                buf += data
            head = buf.partition(b"\r\n\r\n")[0].split(b"\r\n")
            headers = [h for h in head[1:] if not h.lower().startswith((b"connection:", b"keep-alive:"))]
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=30)
            except OSError:
                return  # the server is gone: drop the client
            up.sendall(b"\r\n".join([head[0], *headers, b"Connection: close"]) + b"\r\n\r\n")
            cut = (self.cut_after is not None and head[0].startswith(b"GET ")
                   and b"model.safetensors" in head[0])
            resp = b""
            while True:
                data = up.recv(65536)
                if not data:
                    break
                if not cut:
                    client.sendall(data)
                    continue
                resp += data
                top, sep, body = resp.partition(b"\r\n\r\n")
                if sep and len(body) >= self.cut_after:
                    client.sendall(top + sep + body[: self.cut_after])
                    self.cuts += 1
                    if self.on_cut is not None:
                        self.on_cut(self)
                    return
            if cut:
                client.sendall(resp)
            up.close()
        except OSError:
            pass
        finally:
            client.close()


def _no_complete_weights(hf_home: Path) -> bool:
    return not [p for p in hf_home.rglob("model.safetensors") if p.exists()]


def test_download_cut_mid_file_then_recovers(hub, tmp_path, small_hub_repo, video):
    repo, _ = small_hub_repo
    proxy = CuttingProxy(hub.port)
    proxy.cut_after = 2000
    home = tmp_path / "hf"
    env = {"HF_HOME": str(home), "HF_ENDPOINT": proxy.endpoint}
    try:
        r = tokshift("classify", str(video), "--model", repo, "--json", env=env)
        assert r.returncode == 3 and r.stdout == ""
        assert proxy.cuts >= 1
        assert re.search(rf"download from {re.escape(proxy.endpoint)} failed \(\w+: .*check the network and run again",
                         error_line(r))
        # huggingface_hub's own retry warnings ("Retrying in 1s [Retry 1/5]") are silenced by the CLI: our line only
        assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [error_line(r)], r.stderr
        assert _no_complete_weights(home)  # nothing half-written under the final name
        proxy.cut_after = None  # the network is back
        r = tokshift("classify", str(video), "--model", repo, "--json", env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["results"][0]["error"] is None
    finally:
        proxy.close()


def test_server_goes_away_mid_download(hub, tmp_path, small_hub_repo, video):
    """The hub server dies while model.safetensors is being sent (the proxy stops it and itself mid-body): a
    clear error, nothing half-written, and once the server is back the same command works."""
    repo, _ = small_hub_repo

    def vanish(proxy: CuttingProxy) -> None:
        hub.stop()
        proxy.close()

    proxy = CuttingProxy(hub.port, on_cut=vanish)
    proxy.cut_after = 5000
    home = tmp_path / "hf"
    try:
        r = tokshift("classify", str(video), "--model", repo, env={"HF_HOME": str(home),
                                                                   "HF_ENDPOINT": proxy.endpoint})
        assert r.returncode == 3 and proxy.cuts == 1 and not hub.running
        line = error_line(r)
        assert proxy.endpoint in line and ("failed" in line or "cannot reach" in line), line
        assert _no_complete_weights(home)
    finally:
        proxy.close()
        hub.restart()
    r = tokshift("classify", str(video), "--model", repo, env={"HF_HOME": str(home), "HF_ENDPOINT": hub.endpoint})
    assert r.returncode == 0, r.stderr
