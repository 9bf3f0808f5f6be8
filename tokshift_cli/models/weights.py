"""Resolve a model reference to a folder holding ``config.json`` + ``model.safetensors``, and load it strictly.

A reference is, in the order tried:

1. ``tokshift-tiny-untrained``: the bundled demo (random weights; every output says so);
2. an existing local path: a folder with ``config.json`` and ``model.safetensors``, or a ``.safetensors`` file with
   ``config.json`` beside it (a local path always wins over a Hub id of the same spelling);
3. a zoo name (``tokshift models``), optionally ``NAME@REVISION``: the Hub repository ``<namespace>/<name>``
   (namespace from ``hub_namespace``, ``TOKSHIFT_HUB_NAMESPACE`` or ``tokshift-cli``); when that repository does
   not exist, the authors' Google Drive release converted once into a cache folder (:mod:`tokshift_cli.models.gdrive`);
4. ``org/name`` or ``org/name@REVISION`` (branch, tag or commit sha): a Hub repository.

Hub downloads go through ``huggingface_hub.snapshot_download`` (config.json, model.safetensors and README.md only:
never a pickle, never remote code), so HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT and HF_TOKEN behave
as in every other Hugging Face tool, and the cache is shared with them. Every failure is one of the typed errors
of :mod:`tokshift_cli.errors`, with a message that says what to do next.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import CONFIG_NAME, WEIGHTS_NAME, TokShiftConfig
from ..errors import (ModelDownloadError, ModelNotFoundError, RevisionNotFoundError, UsageError, WeightsError, first_line)
from . import zoo
from ..outputs import CACHE_ENV, cache_root  # noqa: F401  (CACHE_ENV: where converted releases are kept)

if TYPE_CHECKING:
    import torch

    from .tokshift import TokShiftViT

#: Files fetched from a Hub repository; nothing else (no pickles, no code) is ever downloaded.
HUB_ALLOW_PATTERNS = [CONFIG_NAME, WEIGHTS_NAME, "README.md"]
#: Pickle files we name in errors but never fetch from a Hub repository.
_PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".pth.tar", ".ckpt", ".pkl")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class ResolvedModel:
    """Where a model reference led: the folder with config.json + model.safetensors and its provenance."""

    ref: str  #: the reference as given
    kind: str  #: "zoo" | "hub" | "folder" | "file" | "bundled"
    folder: Path  #: holds config.json (and, except for kind "file", model.safetensors)
    config: TokShiftConfig
    weights_path: Path
    repo_id: str | None = None  #: Hub repository, for Hub downloads (kind "hub", or "zoo" served by the Hub)
    revision: str | None = None  #: the revision asked for (None: the default branch)
    commit: str | None = None  #: the commit sha the Hub download resolved to (the snapshot folder's name)

    @property
    def zoo_name(self) -> str | None:
        return self.config.zoo_name


# --- public API ------------------------------------------------------------------------------------------------


def resolve_model(ref: str, *, revision: str | None = None, hub_namespace: str | None = None,
                  cache_dir: str | Path | None = None, token: str | bool | None = None,
                  local_files_only: bool | None = None, endpoint: str | None = None) -> ResolvedModel:
    """Resolve ``ref`` (see the module docstring) to a local folder, downloading from the Hub if needed.

    ``revision`` applies to Hub and zoo references (as does ``ref@revision``; both given and different is a
    :class:`UsageError`). ``cache_dir``, ``token``, ``local_files_only`` and ``endpoint`` go to
    ``huggingface_hub.snapshot_download``; left at None they follow HF_HUB_CACHE / HF_TOKEN / HF_HUB_OFFLINE /
    HF_ENDPOINT. ``endpoint`` exists mainly for tests (huggingface_hub reads HF_ENDPOINT once, at import).
    """
    ref = ref.strip()
    if not ref:
        raise UsageError("empty model reference: give a zoo name (`tokshift models`), org/name or a folder")
    if ref == zoo.BUNDLED_UNTRAINED:
        _no_revision(ref, revision, "the bundled model")
        return _resolve_bundled(ref)

    local = Path(ref).expanduser()
    if local.exists():
        _no_revision(ref, revision, "a local path")
        return _resolve_local(ref, local)

    name, ref_rev = _split_revision(ref)
    if ref_rev is not None and revision is not None and ref_rev != revision:
        raise UsageError(f"{ref!r} asks for revision {ref_rev!r} but --revision is {revision!r}: give one")
    rev = ref_rev if ref_rev is not None else revision
    hub_kw = dict(cache_dir=cache_dir, token=token, local_files_only=local_files_only, endpoint=endpoint)

    if name in zoo.ZOO:
        return _resolve_zoo(ref, zoo.ZOO[name], rev, hub_namespace, **hub_kw)
    if _looks_like_path(ref):
        raise ModelNotFoundError(f"{ref}: no such file or folder")
    if _HUB_ID.match(name):
        return _resolve_hub(ref, name, rev, kind="hub", **hub_kw)
    try:
        zoo.get(name)  # raises with a did-you-mean
    except ModelNotFoundError as e:
        raise ModelNotFoundError(f"{e} A model can also be a Hub repo (org/name[@revision]), a folder with "
                                 "config.json + model.safetensors, or a .safetensors file.") from None
    raise AssertionError("unreachable")


def load_model(ref: str, *, device: "str | torch.device" = "cpu", dtype: "torch.dtype | None" = None,
               revision: str | None = None, hub_namespace: str | None = None,
               cache_dir: str | Path | None = None, token: str | bool | None = None,
               local_files_only: bool | None = None, endpoint: str | None = None) -> "TokShiftViT":
    """Resolve ``ref``, build the model from its config.json and load model.safetensors strictly.

    The model comes back in eval mode on ``device`` (and ``dtype`` if given) with ``model.config``
    (:class:`TokShiftConfig`) and ``model.resolved`` (:class:`ResolvedModel`) set.
    """
    resolved = resolve_model(ref, revision=revision, hub_namespace=hub_namespace, cache_dir=cache_dir,
                             token=token, local_files_only=local_files_only, endpoint=endpoint)
    return load_resolved(resolved, device=device, dtype=dtype)


def load_resolved(resolved: ResolvedModel, *, device: "str | torch.device" = "cpu",
                  dtype: "torch.dtype | None" = None) -> "TokShiftViT":
    """Build and strictly load the model of an already resolved reference."""
    from .tokshift import create_model, load_state_dict_strict

    state_dict = read_safetensors(resolved.weights_path, resolved)
    source = str(resolved.weights_path)
    model = None
    try:  # no random init of a model whose every tensor is about to be replaced
        model = create_model(resolved.config, device="meta")
        load_state_dict_strict(model, state_dict, source, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            model = None
    except (TypeError, NotImplementedError, RuntimeError):
        model = None
    if model is None:
        model = create_model(resolved.config)
        load_state_dict_strict(model, state_dict, source)
    model.to(device)
    if dtype is not None:
        model.to(dtype=dtype)
    model.config = resolved.config
    model.resolved = resolved
    return model.eval()


def read_safetensors(path: Path, resolved: ResolvedModel | None = None) -> "dict[str, torch.Tensor]":
    """``safetensors.torch.load_file`` with a :class:`WeightsError` naming the file when it is unreadable."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing ({WEIGHTS_NAME} was removed after the model was resolved)") from None
    except Exception as e:  # safetensors raises SafetensorError (not exported portably), OSError, ValueError
        hint = ""
        if resolved is not None and resolved.repo_id and resolved.kind in ("hub", "zoo"):
            hint = f" (Hugging Face cache: `hf cache rm model/{resolved.repo_id}`, then run again)"
        raise WeightsError(f"{path}: corrupt or truncated ({type(e).__name__}: {str(e).strip()[:120]}): "
                           f"delete it and download again{hint}") from None


def model_info_line(resolved: ResolvedModel) -> dict[str, Any]:
    """The JSON-able record of which model produced an output."""
    cfg = resolved.config
    return {
        "ref": resolved.ref,
        "kind": resolved.kind,
        "repo_id": resolved.repo_id,
        "revision": resolved.revision,
        "commit": resolved.commit,
        "zoo_name": cfg.zoo_name,
        "frames": cfg.num_frames,
        "stride": cfg.frame_stride,
        "crop_size": cfg.crop_size,
        "fold_div": cfg.fold_div,
        "label_order": cfg.label_order,
        "untrained": cfg.untrained,
        "source_sha256": (cfg.source or {}).get("sha256"),
    }


def converted_cache_dir(name: str | None = None) -> Path:
    """Where converted Google Drive releases live: :func:`cache_root` + converted/."""
    base = cache_root() / "converted"
    return base / name if name else base


# --- references ---------------------------------------------------------------------------------------------


def _split_revision(ref: str) -> tuple[str, str | None]:
    if "@" in ref:
        name, _, rev = ref.rpartition("@")
        if not name or not rev:
            raise UsageError(f"{ref!r}: expected NAME@REVISION (a branch, tag or commit sha)")
        return name, rev
    return ref, None


def _looks_like_path(ref: str) -> bool:
    return (ref.startswith(("./", "../", "/", "~", ".\\")) or ref.endswith(".safetensors")
            or ref in (".", "..") or ref.count("/") > 1 or "\\" in ref)


def _no_revision(ref: str, revision: str | None, what: str) -> None:
    if revision is not None:
        raise UsageError(f"{ref!r} is {what}: --revision only applies to Hub and zoo models")


def _load_config(folder: Path) -> TokShiftConfig:
    return TokShiftConfig.from_file(folder / CONFIG_NAME)


def _resolve_bundled(ref: str) -> ResolvedModel:
    from importlib.resources import files

    folder = Path(str(files("tokshift_cli").joinpath("data", zoo.BUNDLED_UNTRAINED)))
    weights = folder / WEIGHTS_NAME
    if not (folder / CONFIG_NAME).is_file() or not weights.is_file():
        raise WeightsError(f"{folder}: the bundled demo model is missing from this install; reinstall "
                           "tokshift-cli (pip install --force-reinstall tokshift-cli)")
    return ResolvedModel(ref=ref, kind="bundled", folder=folder, config=_load_config(folder),
                         weights_path=weights)


def _resolve_local(ref: str, path: Path) -> ResolvedModel:
    if path.is_dir():
        cfg = _load_config(path)  # WeightsError saying how to create it when missing
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            others = sorted(p.name for p in path.iterdir() if p.name.lower().endswith((".safetensors",
                                                                                         *_PICKLE_SUFFIXES)))
            hint = (f" (it has {', '.join(others[:3])}: convert a checkpoint with `tokshift convert FILE --out "
                    f"{path}`, or pass a .safetensors file with --model)") if others else (
                " (create it with `tokshift convert CHECKPOINT --out DIR`)")
            raise WeightsError(f"{path}: no {WEIGHTS_NAME} beside {CONFIG_NAME}{hint}")
        return ResolvedModel(ref=ref, kind="folder", folder=path, config=cfg, weights_path=weights)
    if path.name.lower().endswith(".safetensors"):
        cfg_path = path.parent / CONFIG_NAME
        if not cfg_path.is_file():
            raise WeightsError(f"{path}: no {CONFIG_NAME} beside it: a TokShift model needs its config "
                               "(create both with `tokshift convert CHECKPOINT --out DIR`)")
        return ResolvedModel(ref=ref, kind="file", folder=path.parent, config=_load_config(path.parent),
                             weights_path=path)
    if path.name.lower().endswith(_PICKLE_SUFFIXES):
        raise WeightsError(f"{path}: a PyTorch checkpoint, not a TokShift model folder: convert it first with "
                           f"`tokshift convert {path} --arch ZOO_NAME --out DIR`, then use `--model DIR`")
    raise WeightsError(f"{path}: not a model folder or .safetensors file")


# --- the Hub ---------------------------------------------------------------------------------------------------


def _endpoint(endpoint: str | None) -> str:
    if endpoint:
        return endpoint.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline(local_files_only: bool | None) -> bool:
    from huggingface_hub import constants

    return bool(local_files_only) or bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Transport-level errors of whichever HTTP stack this huggingface_hub uses (httpx2, httpx or requests)."""
    errs: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod, names in (("httpx2", ("TransportError",)), ("httpx", ("TransportError",)),
                       ("requests.exceptions", ("ConnectionError", "Timeout"))):
        try:
            m = __import__(mod, fromlist=list(names))
            errs += [getattr(m, n) for n in names if hasattr(m, n)]
        except ImportError:
            continue
    return tuple(errs)


def _at(repo_id: str, revision: str | None) -> str:
    return f"{repo_id}@{revision}" if revision else repo_id


def _repo_exists_at_main(repo_id: str, *, token: str | bool | None, endpoint: str | None) -> bool | None:
    """True/False where the server says, None where it cannot be asked (offline, errors of another kind)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError as HubRepoNotFound

    try:
        HfApi(endpoint=endpoint, token=token).repo_info(repo_id, revision="main")
        return True
    except HubRepoNotFound:
        return False
    except Exception:
        return None


def _download_snapshot(repo_id: str, revision: str | None, *, cache_dir: str | Path | None,
                       token: str | bool | None, local_files_only: bool | None,
                       endpoint: str | None) -> Path:
    """snapshot_download with every huggingface_hub failure turned into one of our errors."""
    from huggingface_hub import snapshot_download
    from huggingface_hub import errors as hf

    where = _at(repo_id, revision)
    ep = _endpoint(endpoint)
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_ALLOW_PATTERNS,
                                 cache_dir=cache_dir, token=token, local_files_only=bool(local_files_only),
                                 endpoint=endpoint)
        return Path(path)
    except hf.GatedRepoError as e:
        raise ModelDownloadError(f"{repo_id} is gated on {ep}: accept its terms on the repo page, then log in "
                                 "(`hf auth login` or set HF_TOKEN)") from e
    except hf.RevisionNotFoundError as e:
        raise RevisionNotFoundError(f"{repo_id} has no revision {revision!r} (branch, tag or commit sha); "
                                    "list them on the repo page or drop --revision for the default branch") from e
    except hf.RepositoryNotFoundError as e:
        # Missing, private and no-access all answer 401 on the Hub; some mirrors answer 401 for a missing
        # revision too: ask for the default branch to tell those apart.
        if revision and revision != "main" and _repo_exists_at_main(repo_id, token=token, endpoint=endpoint):
            raise RevisionNotFoundError(f"{repo_id} has no revision {revision!r} (branch, tag or commit sha); "
                                        "drop --revision/@REVISION for the default branch") from e
        also = f" (or it has no revision {revision!r})" if revision else ""
        raise ModelNotFoundError(f"{repo_id}: Hub repository not found{also} on {ep}, or private and you are "
                                 "not logged in: check the name, run `hf auth login` or set HF_TOKEN") from e
    except hf.LocalEntryNotFoundError as e:  # includes IncompleteSnapshotError
        cause = e.__cause__ or e.__context__
        if isinstance(cause, hf.HfHubHTTPError) and getattr(cause.response, "status_code", None) == 404 \
                and revision and _FULL_SHA.match(revision):
            raise RevisionNotFoundError(f"{repo_id} has no commit {revision} on {ep}; check the sha, or "
                                        "drop --revision for the default branch") from e
        if isinstance(e, getattr(hf, "IncompleteSnapshotError", ())):
            raise ModelDownloadError(f"{where}: the cached copy is incomplete and the Hub cannot be reached "
                                     f"({ep}); run again with network access") from e
        if _offline(local_files_only) or isinstance(cause, hf.OfflineModeIsEnabled):
            raise ModelDownloadError(f"{where}: offline (HF_HUB_OFFLINE=1) and nothing is cached for it; "
                                     "unset HF_HUB_OFFLINE to download it, or point HF_HOME/HF_HUB_CACHE at a "
                                     "cache that has it") from e
        reason = f"{type(cause).__name__}: {first_line(cause)}" if cause else first_line(e)
        raise ModelDownloadError(f"{where}: cannot reach the Hub at {ep} ({reason}) and nothing is cached for "
                                 f"it. Check the network or HF_ENDPOINT; once downloaded, HF_HUB_OFFLINE=1 uses "
                                 "the cache") from e
    except hf.OfflineModeIsEnabled as e:
        raise ModelDownloadError(f"{where}: offline (HF_HUB_OFFLINE=1) and nothing is cached for it") from e
    except hf.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", "?")
        raise ModelDownloadError(f"{where}: the Hub at {ep} answered HTTP {status} "
                                 f"({first_line(e)}); try again later") from e
    except (ValueError, getattr(hf, "HFValidationError", ValueError)) as e:
        raise ModelNotFoundError(f"{repo_id!r} is not a valid Hub repo id ({first_line(e)})") from e
    except _connection_errors() as e:
        raise ModelDownloadError(f"{where}: download from {ep} failed ({type(e).__name__}: {first_line(e)}); "
                                 "check the network and run again (finished files stay cached)") from e


def _check_repo_files(folder: Path, repo_id: str, revision: str | None, commit: str | None, *,
                      token: str | bool | None, endpoint: str | None, local_files_only: bool | None) -> None:
    """WeightsError naming config.json / model.safetensors where the downloaded snapshot lacks one."""
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (folder / n).is_file()]
    if not missing:
        return
    at = f"{_at(repo_id, revision)} (commit {commit[:12]})" if commit else _at(repo_id, revision)
    hint = ""
    if WEIGHTS_NAME in missing and not _offline(local_files_only):
        try:
            from huggingface_hub import HfApi

            files = HfApi(endpoint=endpoint, token=token).list_repo_files(repo_id, revision=commit or revision)
            pickles = [f for f in files if f.lower().endswith(_PICKLE_SUFFIXES)]
            if pickles:
                hint = (f"; it has {', '.join(pickles[:3])}, which tokshift-cli never loads from the Hub "
                        "(pickles can run code): download it yourself, `tokshift convert FILE --out DIR`, "
                        "then `--model DIR`")
        except Exception:
            pass
    if not hint:
        hint = ("; not a tokshift-cli model repository (one holds config.json + model.safetensors, as written "
                "by `tokshift convert`)")
    raise WeightsError(f"{at} has no {' and no '.join(missing)}{hint}")


def _resolve_hub(ref: str, repo_id: str, revision: str | None, *, kind: str, cache_dir: str | Path | None,
                 token: str | bool | None, local_files_only: bool | None, endpoint: str | None) -> ResolvedModel:
    folder = _download_snapshot(repo_id, revision, cache_dir=cache_dir, token=token,
                                local_files_only=local_files_only, endpoint=endpoint)
    commit = folder.name if _FULL_SHA.match(folder.name) else None
    _check_repo_files(folder, repo_id, revision, commit, token=token, endpoint=endpoint,
                      local_files_only=local_files_only)
    cfg = _load_config(folder)
    return ResolvedModel(ref=ref, kind=kind, folder=folder, config=cfg, weights_path=folder / WEIGHTS_NAME,
                         repo_id=repo_id, revision=revision, commit=commit)


# --- zoo names -------------------------------------------------------------------------------------------------


def _zoo_unreachable(entry: zoo.ZooEntry, repo_id: str, reason: str) -> ModelDownloadError:
    return ModelDownloadError(
        f"{entry.name}: weights not reachable: {reason}.\n"
        f"  (a) download the authors' checkpoint by hand from {entry.original_url}, run "
        f"`tokshift convert FILE --arch {entry.name} --out DIR`, then use `--model DIR`;\n"
        f"  (b) or point HF_ENDPOINT at a Hub mirror that has {repo_id} (or `--hub-namespace ORG` for "
        f"ORG/{entry.name}).")


def _check_zoo_config(entry: zoo.ZooEntry, cfg: TokShiftConfig, where: str) -> TokShiftConfig:
    wrong = [f"{k} {getattr(cfg, k)!r} != {v!r}" for k, v in entry.arch.items()
             if hasattr(cfg, k) and getattr(cfg, k) != v]
    if wrong:
        raise WeightsError(f"{where}: its config.json does not describe zoo model {entry.name} "
                           f"({'; '.join(wrong)}); use it by repo id or folder instead of the zoo name")
    if cfg.zoo_name is None:
        cfg.zoo_name = entry.name
    return cfg


def _resolve_converted(ref: str, entry: zoo.ZooEntry) -> ResolvedModel | None:
    folder = converted_cache_dir(entry.name)
    if (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file():
        cfg = _check_zoo_config(entry, _load_config(folder), str(folder))
        return ResolvedModel(ref=ref, kind="zoo", folder=folder, config=cfg, weights_path=folder / WEIGHTS_NAME)
    return None


def _resolve_zoo(ref: str, entry: zoo.ZooEntry, revision: str | None, hub_namespace: str | None, *,
                 cache_dir: str | Path | None, token: str | bool | None, local_files_only: bool | None,
                 endpoint: str | None) -> ResolvedModel:
    repo_id = entry.hub_repo(hub_namespace)
    try:
        r = _resolve_hub(ref, repo_id, revision, kind="zoo", cache_dir=cache_dir, token=token,
                         local_files_only=local_files_only, endpoint=endpoint)
    except RevisionNotFoundError:
        raise
    except ModelNotFoundError as e:  # the Hub has no such repository: the authors' release
        if revision:
            raise
        hub_reason = f"the Hub ({_endpoint(endpoint)}) has no {repo_id}"
        return _resolve_gdrive(ref, entry, repo_id, hub_reason, offline=_offline(local_files_only), cause=e)
    except ModelDownloadError as e:  # offline / unreachable and not in the Hub cache
        if revision:
            raise _zoo_unreachable(entry, repo_id, f"{repo_id}@{revision}: {first_line(e)}") from e
        hub_reason = first_line(e).split(". ")[0].rstrip(".")
        return _resolve_gdrive(ref, entry, repo_id, hub_reason, offline=_offline(local_files_only), cause=e)
    r.config = _check_zoo_config(entry, r.config, _at(repo_id, revision))
    return r


def _resolve_gdrive(ref: str, entry: zoo.ZooEntry, repo_id: str, hub_reason: str, *, offline: bool,
                    cause: Exception) -> ResolvedModel:
    cached = _resolve_converted(ref, entry)
    if cached is not None:
        return cached
    if offline:
        raise _zoo_unreachable(entry, repo_id, f"offline (HF_HUB_OFFLINE=1), nothing is cached for {repo_id} and "
                               f"no converted copy is in {converted_cache_dir(entry.name)}") from cause
    from . import gdrive

    why = gdrive.unavailable_reason()
    if why:
        raise _zoo_unreachable(entry, repo_id, f"{hub_reason}, and {why}") from cause
    try:
        gdrive.fetch_and_convert(entry, converted_cache_dir(entry.name))
    except ModelDownloadError as e:
        raise _zoo_unreachable(entry, repo_id, f"{hub_reason}; {first_line(e)}") from e
    resolved = _resolve_converted(ref, entry)
    if resolved is None:  # pragma: no cover - fetch_and_convert creates both files or raises
        raise _zoo_unreachable(entry, repo_id, "the converted release is incomplete")
    return resolved


def model_rows(*, cache_dir: str | Path | None = None, hub_namespace: str | None = None) -> list[dict[str, Any]]:
    """``tokshift models``' document: the bundled untrained model, then every zoo entry, each with ``cached``
    (no download needed: the bundled model always; a zoo model whose Hub snapshot or converted Drive release is on
    this machine). Reads caches only, never the network."""
    from importlib.resources import files

    folder = Path(str(files("tokshift_cli").joinpath("data", zoo.BUNDLED_UNTRAINED)))
    cfg = _load_config(folder)
    rows: list[dict[str, Any]] = [{
        "name": zoo.BUNDLED_UNTRAINED, "description": "bundled, UNTRAINED weights: proves the install offline; its "
        "labels mean nothing", "top1": None, "gflops_paper": None, "gmacs_v2": None, "frames": cfg.num_frames,
        "img_size": cfg.img_size, "resolution": cfg.img_size, "hub_repo": None, "original_url": None,
        "cached": True, "where": "bundled"}]
    for e in zoo.ZOO.values():
        where = None
        if (converted_cache_dir(e.name) / WEIGHTS_NAME).is_file():
            where = "converted"
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                hit = try_to_load_from_cache(e.hub_repo(hub_namespace), WEIGHTS_NAME,
                                             cache_dir=str(cache_dir) if cache_dir is not None else None)
                where = "hub" if isinstance(hit, str) else None
            except Exception:  # an unreadable cache is "not cached"
                where = None
        rows.append({"name": e.name, "description": e.description, "top1": e.top1, "gflops_paper": e.gflops_paper,
                     "gmacs_v2": e.gmacs_v2, "frames": e.arch["num_frames"], "img_size": e.arch["img_size"],
                     "resolution": e.arch["img_size"], "hub_repo": e.hub_repo(hub_namespace),
                     "original_url": e.original_url, "cached": where is not None, "where": where})
    return rows
