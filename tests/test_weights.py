"""Model references, Hub downloads and strict loading, against a real local Hub server (olah, tests/hubserver.py).

Nothing in huggingface_hub is mocked: every Hub test goes through snapshot_download over HTTP to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tokshift_cli.models import zoo
from tokshift_cli.models.config import TokShiftConfig
from tokshift_cli.errors import (ModelDownloadError, ModelNotFoundError, RevisionNotFoundError, UsageError,
                                 WeightsError)
from tokshift_cli.models.weights import load_model, model_info_line, resolve_model

ORG = "tokshift-test"
ZOO_NAME = "tokshift-b16-8x224"
SMALL = dict(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0, num_frames=8,
             frame_stride=32, fold_div=4, num_classes=7, label_order="custom",
             id2label={i: f"class {i}" for i in range(7)})


@pytest.fixture(autouse=True)
def _online(monkeypatch, tmp_path):
    """In-process calls are online unless a test says otherwise; converted releases go to a temp dir."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("TOKSHIFT_CACHE", str(tmp_path / "tokshift-cache"))
    monkeypatch.setenv("TOKSHIFT_GDRIVE", "0")
    monkeypatch.delenv("TOKSHIFT_HUB_NAMESPACE", raising=False)


def cfg_bytes(**overrides) -> bytes:
    return json.dumps(TokShiftConfig(**{**SMALL, **overrides}).to_dict()).encode()


@pytest.fixture(scope="session")
def small_weights() -> bytes:
    """model.safetensors bytes of the SMALL config (real tensors from model.create_model)."""
    from safetensors.torch import save

    from tokshift_cli.models.tokshift import create_model

    sd = create_model(TokShiftConfig(**SMALL)).state_dict()
    return save({k: v.contiguous() for k, v in sd.items()})


@pytest.fixture(scope="session")
def dummy_weights() -> bytes:
    """A valid safetensors file for resolution-only tests (resolve_model never reads the tensors)."""
    import torch
    from safetensors.torch import save

    return save({"dummy": torch.zeros(64)})


def resolve(hub, tmp_path, ref, **kw):
    return resolve_model(ref, endpoint=hub.endpoint, cache_dir=tmp_path / "hf", **kw)


# --- the Hub ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_repo(hub_server, small_weights):
    """ORG/small: main@sha1 (tag v1) -> dev branch sha2 -> main sha3. Returns the shas."""
    repo = f"{ORG}/small"
    sha1 = hub_server.add_repo(repo, {"config.json": cfg_bytes(num_frames=8), "model.safetensors": small_weights,
                                      "README.md": b"# small\n"}, tag="v1")
    sha2 = hub_server.add_repo(repo, {"config.json": cfg_bytes(frame_stride=4)}, branch="dev")
    sha3 = hub_server.add_repo(repo, {"config.json": cfg_bytes(frame_stride=16)})
    return {"repo": repo, "v1": sha1, "dev": sha2, "main": sha3}


def test_hub_repo_and_revisions(hub, tmp_path, small_repo):
    repo = small_repo["repo"]
    r = resolve(hub, tmp_path, repo)
    assert (r.kind, r.repo_id, r.revision, r.commit) == ("hub", repo, None, small_repo["main"])
    assert r.config.frame_stride == 16 and r.weights_path.name == "model.safetensors"
    assert sorted(p.name for p in r.folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]

    for rev, stride in (("v1", 32), ("dev", 4), (small_repo["v1"], 32)):
        r = resolve(hub, tmp_path, f"{repo}@{rev}")
        assert (r.revision, r.commit, r.config.frame_stride) == (rev, small_repo[rev] if rev in small_repo
                                                                 else rev, stride)
    r = resolve(hub, tmp_path, repo, revision="dev")
    assert r.commit == small_repo["dev"]
    assert resolve(hub, tmp_path, f"{repo}@dev", revision="dev").commit == small_repo["dev"]
    with pytest.raises(UsageError, match="give one"):
        resolve(hub, tmp_path, f"{repo}@v1", revision="dev")

    info = model_info_line(r)
    assert info["repo_id"] == repo and info["commit"] == small_repo["dev"] and info["revision"] == "dev"
    assert info["stride"] == 4 and info["frames"] == 8 and info["crop_size"] == 32 and info["kind"] == "hub"
    json.dumps(info)


def test_hub_load_model(hub, tmp_path, small_repo, small_weights):
    import torch
    from safetensors.torch import load

    model = load_model(f"{small_repo['repo']}@v1", endpoint=hub.endpoint, cache_dir=tmp_path / "hf")
    assert not model.training and model.resolved.commit == small_repo["v1"]
    assert model.config.num_classes == 7
    expected = load(small_weights)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items())
    with torch.no_grad():
        assert model(torch.zeros(1, 8, 3, 32, 32)).shape == (1, 7)


def test_corrupt_hub_cache_file(hub, tmp_path, small_repo):
    r = resolve(hub, tmp_path, f"{small_repo['repo']}@v1")
    blob = r.weights_path.resolve()  # the snapshot entry links to a blob
    blob.write_bytes(blob.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"corrupt or truncated.*hf cache rm model/tokshift-test/small"):
        load_model(f"{small_repo['repo']}@v1", endpoint=hub.endpoint, cache_dir=tmp_path / "hf")


def test_env_vars_and_offline_cache(hub, tmp_path, small_repo):
    """HF_ENDPOINT / HF_HOME / HF_HUB_OFFLINE set the way users set them, in fresh processes."""
    code = ("import sys; from tokshift_cli.models.weights import resolve_model as r\n"
            "for ref in sys.argv[1:]:\n    print(r(ref).commit)\n")
    repo = small_repo["repo"]
    refs = [repo, f"{repo}@v1", f"{repo}@{small_repo['v1']}"]
    want = [small_repo["main"], small_repo["v1"], small_repo["v1"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hfhome"), HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_PROGRESS_BARS="1")
    online = subprocess.run([sys.executable, "-c", code, *refs], env=env, capture_output=True, text=True,
                            timeout=60)
    assert online.returncode == 0, online.stderr
    assert online.stdout.split() == want
    assert (tmp_path / "hfhome" / "hub" / "models--tokshift-test--small").is_dir()
    env.update(HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")  # a dead endpoint: nothing may be asked
    offline = subprocess.run([sys.executable, "-c", code, *refs], env=env, capture_output=True, text=True,
                             timeout=60)
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.split() == want
    # in-process: local_files_only; a never-downloaded revision -> offline error saying nothing is cached
    resolve(hub, tmp_path, f"{repo}@v1")
    assert resolve(hub, tmp_path, f"{repo}@v1", local_files_only=True).commit == small_repo["v1"]
    with pytest.raises(ModelDownloadError, match="offline.*nothing is cached"):
        resolve(hub, tmp_path, f"{repo}@dev", local_files_only=True)


def test_server_goes_away(hub, tmp_path, small_repo):
    repo = small_repo["repo"]
    resolve(hub, tmp_path, f"{repo}@v1")
    hub.stop()
    try:
        assert resolve(hub, tmp_path, f"{repo}@v1").commit == small_repo["v1"]  # from the cache
        with pytest.raises(ModelDownloadError, match=r"cannot reach the Hub at http://127\.0\.0\.1.*"
                                                     r"nothing is cached"):
            resolve(hub, tmp_path, f"{repo}@dev")
    finally:
        hub.restart()
    assert resolve(hub, tmp_path, f"{repo}@dev").commit == small_repo["dev"]


def test_repo_not_found(hub, tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"not found.*private.*hf auth login.*HF_TOKEN") as e:
        resolve(hub, tmp_path, f"{ORG}/no-such-repo")
    assert not isinstance(e.value, RevisionNotFoundError)


def test_revision_not_found(hub, tmp_path, small_repo):
    with pytest.raises(RevisionNotFoundError, match="no revision 'nope'"):
        resolve(hub, tmp_path, f"{small_repo['repo']}@nope")
    with pytest.raises(RevisionNotFoundError, match="no commit 0000"):
        resolve(hub, tmp_path, small_repo["repo"], revision="0" * 40)


def test_repo_without_safetensors(hub, tmp_path):
    repo = f"{ORG}/pickle-only"
    hub.add_repo(repo, {"config.json": cfg_bytes(), "pytorch_model.bin": os.urandom(1000)})
    with pytest.raises(WeightsError, match=r"has no model\.safetensors.*pytorch_model\.bin.*never loads"):
        resolve(hub, tmp_path, repo)
    cached = list((tmp_path / "hf").rglob("pytorch_model.bin"))
    assert cached == []  # the pickle was never downloaded
    repo2 = f"{ORG}/no-config"
    hub.add_repo(repo2, {"README.md": b"nothing here\n"})
    with pytest.raises(WeightsError, match=r"has no config\.json and no model\.safetensors"):
        resolve(hub, tmp_path, repo2)


# --- zoo names ---------------------------------------------------------------------------------------------------


def test_zoo_name_resolves_to_hub_repo(hub, tmp_path, monkeypatch, dummy_weights):
    entry = zoo.ZOO[ZOO_NAME]
    cfg = TokShiftConfig(**{**entry.arch, "label_order": "kinetics400-v2"})
    sha = hub.add_repo(f"{ORG}/{ZOO_NAME}", {"config.json": json.dumps(cfg.to_dict()),
                                              "model.safetensors": dummy_weights})
    r = resolve(hub, tmp_path, ZOO_NAME, hub_namespace=ORG)
    assert (r.kind, r.repo_id, r.commit, r.config.zoo_name) == ("zoo", f"{ORG}/{ZOO_NAME}", sha, ZOO_NAME)
    monkeypatch.setenv("TOKSHIFT_HUB_NAMESPACE", ORG)
    assert resolve(hub, tmp_path, f"{ZOO_NAME}@main").commit == sha
    assert model_info_line(r)["zoo_name"] == ZOO_NAME


def _assert_both_routes(msg: str, entry: zoo.ZooEntry, repo: str) -> None:
    assert entry.original_url in msg
    assert f"tokshift convert FILE --arch {entry.name} --out DIR" in msg and "--model DIR" in msg
    assert "HF_ENDPOINT" in msg and repo in msg and "--hub-namespace" in msg
    assert len(msg.splitlines()) <= 4


def test_zoo_without_hub_repo_or_gdown(hub, tmp_path):
    entry = zoo.ZOO["tokshift-b16-16x224"]
    with pytest.raises(ModelDownloadError) as e:
        resolve(hub, tmp_path, entry.name, hub_namespace="tokshift-nobody")
    _assert_both_routes(str(e.value), entry, f"tokshift-nobody/{entry.name}")
    assert "has no tokshift-nobody/" in str(e.value) and "TOKSHIFT_GDRIVE=0" in str(e.value)


def test_zoo_offline_empty_cache(hub, tmp_path):
    entry = zoo.ZOO["vit-b16-8x224"]
    with pytest.raises(ModelDownloadError) as e:
        resolve(hub, tmp_path, entry.name, hub_namespace=ORG, local_files_only=True)
    _assert_both_routes(str(e.value), entry, f"{ORG}/{entry.name}")
    assert "HF_HUB_OFFLINE" in str(e.value)


def test_zoo_uses_converted_release(hub, tmp_path, dummy_weights):
    """A release converted earlier (the Google Drive route) is reused without any download."""
    from tokshift_cli.models.weights import converted_cache_dir

    entry = zoo.ZOO["tokshift-b16-8x384"]
    folder = converted_cache_dir(entry.name)
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(json.dumps(TokShiftConfig(**entry.arch, label_order="unknown",
                                                                   source={"sha256": "ab" * 32}).to_dict()).encode())
    (folder / "model.safetensors").write_bytes(dummy_weights)
    r = resolve(hub, tmp_path, entry.name, hub_namespace="tokshift-nobody")
    assert (r.kind, r.folder, r.repo_id, r.commit) == ("zoo", folder, None, None)
    info = model_info_line(r)
    assert info["label_order"] == "unknown" and info["source_sha256"] == "ab" * 32 and info["zoo_name"] == entry.name


# --- local references --------------------------------------------------------------------------------------------


@pytest.fixture
def small_folder(tmp_path, small_weights) -> Path:
    d = tmp_path / "small-model"
    d.mkdir()
    (d / "config.json").write_bytes(cfg_bytes())
    (d / "model.safetensors").write_bytes(small_weights)
    return d


def test_local_folder_and_file(small_folder, monkeypatch):
    r = resolve_model(str(small_folder))
    assert (r.kind, r.folder, r.repo_id, r.commit) == ("folder", small_folder, None, None)
    r = resolve_model(str(small_folder / "model.safetensors"))
    assert r.kind == "file" and r.weights_path == small_folder / "model.safetensors"
    with pytest.raises(UsageError, match="--revision only applies"):
        resolve_model(str(small_folder), revision="v1")
    # an existing local path wins over the Hub id spelled the same
    monkeypatch.chdir(small_folder.parent)
    (small_folder.parent / "org").mkdir()
    (small_folder.parent / "org" / "small").symlink_to(small_folder)
    assert resolve_model("org/small").kind == "folder"


def test_local_errors(tmp_path, small_folder):
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        resolve_model(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        resolve_model("./nope.safetensors")
    with pytest.raises(ModelNotFoundError, match="Did you mean 'tokshift-b16-8x224'"):
        resolve_model("tokshift-b16-8x22")
    (small_folder / "config.json").unlink()
    with pytest.raises(WeightsError, match=r"no config\.json.*tokshift convert"):
        resolve_model(str(small_folder))
    with pytest.raises(WeightsError, match=r"no config\.json beside it"):
        resolve_model(str(small_folder / "model.safetensors"))


def test_load_local_and_corrupt(small_folder):
    model = load_model(str(small_folder))
    assert model.resolved.kind == "folder" and model.config.id2label[3] == "class 3" and not model.training
    data = (small_folder / "model.safetensors").read_bytes()
    (small_folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"model\.safetensors: corrupt or truncated.*delete it and download"):
        load_model(str(small_folder))


def test_strict_loading_names_keys(small_folder):
    import torch
    from safetensors.torch import load_file, save_file

    path = small_folder / "model.safetensors"
    sd = load_file(str(path))
    save_file({**sd, "blocks.0.extra_bias": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match=r"unexpected: blocks\.0\.extra_bias"):
        load_model(str(small_folder))
    sd.pop("head.weight")
    save_file(sd, str(path))
    with pytest.raises(WeightsError, match=r"missing: head\.weight"):
        load_model(str(small_folder))


def test_bundled_untrained():
    r = resolve_model(zoo.BUNDLED_UNTRAINED)
    assert r.kind == "bundled" and r.config.untrained and model_info_line(r)["untrained"] is True


# --- the authors' label lists (gdrive.py, pure) ----------------------------------------------------------------


def test_labels_from_authors_lists():
    from tokshift_cli.models.gdrive import label_order_of, labels_from_lists

    known = ["air drumming", "passing American football (in game)", "zumba"]
    lines = ["k400/frames331_train/zumba/vid_a 300 2", "k400/frames331_train/air_drumming/vid_b 250 0",
             "k400/frames331_val/passing_American_football_(in_game)/vid_c 280 1", ""]
    assert labels_from_lists(lines, num_classes=3, known=known) == [
        "air drumming", "passing American football (in game)", "zumba"]
    assert labels_from_lists(lines + ["k400/frames331_train/zumba/vid_d 100 0"], num_classes=3) is None
    assert labels_from_lists(lines[:2], num_classes=3) is None  # index 1 never seen
    assert label_order_of(["a", "b"]) == "custom"


def test_gdrive_route_converts_once(hub, tmp_path, monkeypatch):
    """Zoo name, no Hub repo: the authors' Drive release is fetched, converted with its label lists, then reused.

    Google Drive is unreachable here, so a stand-in ``gdown`` module serves the authors' v1 checkpoint format
    (tests/data/v1_small.pth) and a trainValTest zip; everything after the download is the real code.
    """
    import importlib.machinery
    import types
    import zipfile

    from tokshift_cli.models.weights import converted_cache_dir

    name = "tokshift-test-small"
    arch = {"embed_dim": 64, "depth": 2, "num_heads": 4, "patch_size": 16, "img_size": 32, "mlp_ratio": 2.0,
            "num_frames": 8, "frame_stride": 32, "fold_div": 4, "shift": True, "num_classes": 7}
    monkeypatch.setitem(zoo.ZOO, name, zoo.ZooEntry(name, "test", arch, 0.0, 0.0, None, "FOLDERID", "x.yml"))
    cats = ["zumba", "air_drumming", "abseiling", "yoga", "archery", "\"petting_animal_(not_cat)\"", "juggling_balls"]
    calls = []

    def download_folder(id, output, quiet):
        calls.append(("folder", id))
        out = Path(output) / "best_small.pth"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes((Path(__file__).parent / "data" / "v1_small.pth").read_bytes())
        return [str(out)]

    def download(id, output, quiet):
        calls.append(("file", id))
        out = Path(output) / "trainValTest.zip"
        with zipfile.ZipFile(out, "w") as z:
            z.writestr("trainValTest/train.txt", "".join(f"k400/frames331_train/{c}/v{i} 300 {i}\n"
                                                         for i, c in enumerate(cats)))
        return str(out)

    fake = types.ModuleType("gdown")
    fake.__spec__ = importlib.machinery.ModuleSpec("gdown", None)
    fake.download_folder, fake.download = download_folder, download
    monkeypatch.setitem(sys.modules, "gdown", fake)
    monkeypatch.delenv("TOKSHIFT_GDRIVE")

    r = resolve(hub, tmp_path, name, hub_namespace="tokshift-nobody")
    assert (r.kind, r.folder, r.repo_id) == ("zoo", converted_cache_dir(name), None)
    assert calls == [("folder", "FOLDERID"), ("file", "1i-NoXsyYVH4_D3M7iWInviVG41FCmiqf")]
    assert r.config.label_order == "custom" and r.config.labels[:2] == ["zumba", "air drumming"]
    assert r.config.labels[5] == "petting animal (not cat)" and r.config.source["format"] == "tokshift-v1"
    assert r.config.source["gdrive_folder"] == "FOLDERID" and len(r.config.source["sha256"]) == 64
    assert sorted(p.name for p in r.folder.parent.iterdir()) == [name]  # the download is gone
    model = load_model(name, hub_namespace="tokshift-nobody", endpoint=hub.endpoint, cache_dir=tmp_path / "hf")
    assert model.resolved.kind == "zoo" and len(calls) == 2  # converted once, reused
