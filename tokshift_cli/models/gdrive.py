"""The authors' own release route: their Google Drive folders, fetched with ``gdown`` (a default dependency).

Used by :mod:`tokshift_cli.models.weights` only when a zoo model's Hub repository does not exist. It downloads the
authors' ``.pth`` once, converts it with :func:`tokshift_cli.models.convert.convert_checkpoint` into a cache folder
(``config.json`` + ``model.safetensors``), deletes the download, and the converted folder is reused afterwards.

Label order of the authors' v1 checkpoints: their data loader (``data/dataset.py`` ``load_annot_txt`` in
VideoNetworks/TokShift-Transformer) reads list files whose lines are ``<video path> <frame count> <label index>``,
where the video path is ``.../frames331_{train,val}/<category name>/<video name>`` (their README's layout). The
class index therefore comes from those list files (the README's ``trainValTest`` download, Google Drive id
:data:`TRAINVALTEST_FILE_ID`), not from the repository; :func:`labels_from_lists` derives ``index -> category``
from them. When the lists cannot be fetched or do not parse, the converted model records
``label_order = "unknown"`` and its labels print as ``class_N``.

Set ``TOKSHIFT_GDRIVE=0`` to turn this route off (CI, air-gapped machines).
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Iterable

from ..errors import ConversionError, ModelDownloadError, first_line
from .zoo import ZooEntry

GDRIVE_ENV = "TOKSHIFT_GDRIVE"
#: The README's ``trainValTest`` link (train.txt / val.txt: ``<frames path> <frame count> <label index>``).
TRAINVALTEST_FILE_ID = "1i-NoXsyYVH4_D3M7iWInviVG41FCmiqf"
TRAINVALTEST_URL = f"https://drive.google.com/file/d/{TRAINVALTEST_FILE_ID}/view"
#: File name endings of the authors' checkpoints (``torch.save`` pickles).
CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".pt", ".tar")
#: ``label_order`` value of labels derived from the authors' trainValTest lists in an order of their own.
AUTHORS_LIST_ORDER = "custom"


def unavailable_reason() -> str | None:
    """None when the Google Drive route can run, else why not (one short phrase)."""
    if os.environ.get(GDRIVE_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return f"the Google Drive route is turned off ({GDRIVE_ENV}=0)"
    import importlib.util

    if importlib.util.find_spec("gdown") is None:
        return "gdown is not installed (pip install gdown)"
    return None


# --- downloads (network) ---------------------------------------------------------------------------------------


def download_release(entry: ZooEntry, dest: Path) -> Path:
    """Download the authors' Drive folder for ``entry`` into ``dest`` and return the checkpoint in it."""
    import gdown

    dest.mkdir(parents=True, exist_ok=True)
    try:
        files = gdown.download_folder(id=entry.gdrive_folder, output=str(dest), quiet=True)
    except Exception as e:  # gdown raises requests errors, its own FileURLRetrievalError, RuntimeError...
        raise ModelDownloadError(f"Google Drive download of {entry.original_url} failed "
                                 f"({type(e).__name__}: {first_line(e)})") from e
    if not files:
        raise ModelDownloadError(f"Google Drive download of {entry.original_url} failed (gdown returned nothing: "
                                 "no network, a changed share, or Drive's download quota)")
    return find_checkpoint([Path(f) for f in files], where=entry.original_url)


def find_checkpoint(files: Iterable[Path], *, where: str) -> Path:
    """The authors' checkpoint among downloaded files: a ``.pth``-like file, preferring ``best*``, then largest."""
    cands = [f for f in files if f.is_file() and f.name.lower().endswith(CHECKPOINT_SUFFIXES)]
    if not cands:
        raise ModelDownloadError(f"no checkpoint (.pth) in the files downloaded from {where}: "
                                 f"{', '.join(sorted(f.name for f in files)) or 'none'}")
    return max(cands, key=lambda f: (f.name.lower().startswith("best"), f.stat().st_size))


def download_label_lists(dest: Path) -> list[Path]:
    """Fetch the authors' trainValTest download into ``dest``; return the list files found (maybe none)."""
    import gdown

    dest.mkdir(parents=True, exist_ok=True)
    try:
        out = gdown.download(id=TRAINVALTEST_FILE_ID, output=str(dest) + os.sep, quiet=True)
    except Exception:
        return []
    if not out:
        return []
    path = Path(out)
    if zipfile.is_zipfile(path) or tarfile.is_tarfile(path):
        _safe_extract(path, dest / "extracted")
        root = dest / "extracted"
    else:
        root = dest
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".txt", ".csv", ".lst"))


def _safe_extract(archive: Path, out: Path) -> None:
    """Extract without following members outside ``out`` (no absolute paths, no ``..``, no links)."""
    out.mkdir(parents=True, exist_ok=True)
    root = out.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for m in z.infolist():
                target = (out / m.filename).resolve()
                if root in target.parents and not m.is_dir():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(m) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        return
    with tarfile.open(archive) as t:
        for m in t.getmembers():
            target = (out / m.name).resolve()
            if m.isfile() and root in target.parents:
                target.parent.mkdir(parents=True, exist_ok=True)
                src = t.extractfile(m)
                if src is not None:
                    with src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)


# --- label order (pure) -------------------------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def labels_from_lists(lines: Iterable[str], *, num_classes: int = 400,
                      known: list[str] | None = None) -> list[str] | None:
    """``index -> class name`` from the authors' list lines, or None when the lines do not define one.

    Each line is ``<frames path> <frame count> <label index>`` with the category as the parent folder of the
    video (``k400/frames331_train/<category>/<video>``). Every index 0..num_classes-1 must map to exactly one
    category and vice versa. Folder names (``air_drumming``, ``"petting_animal_(not_cat)"``) map back to the
    canonical Kinetics names in ``known`` where they match after dropping case and punctuation.
    """
    by_index: dict[int, str] = {}
    for line in lines:
        row = line.strip().rsplit(None, 2)
        if not row or not row[0]:
            continue
        if len(row) != 3 or not row[1].isdigit() or not row[2].lstrip("-").isdigit():
            return None
        parts = [p for p in re.split(r"[\\/]", row[0]) if p]
        if len(parts) < 2:
            return None
        idx, cat = int(row[2]), parts[-2]
        if by_index.setdefault(idx, cat) != cat:
            return None  # one index, two categories
    if sorted(by_index) != list(range(num_classes)) or len(set(by_index.values())) != num_classes:
        return None
    canon = {_norm(k): k for k in (known or [])}
    return [canon.get(_norm(by_index[i]), by_index[i].replace("_", " ").strip('"')) for i in range(num_classes)]


def label_order_of(labels: list[str]) -> str:
    """The name of a shipped order equal to ``labels`` (see ``config.load_label_list``), else ``"custom"``."""
    from .config import load_label_list

    for order in ("kinetics400-alphabetical", "kinetics400-v2"):
        try:
            if load_label_list(order) == labels:
                return order
        except (OSError, ValueError):
            continue
    return AUTHORS_LIST_ORDER


def derive_labels(list_files: list[Path], num_classes: int = 400) -> tuple[list[str] | None, str]:
    """(labels, label_order) from the authors' list files; (None, "unknown") when they define no order."""
    from .config import load_label_list

    try:
        known = load_label_list("kinetics400-alphabetical")
    except (OSError, ValueError):
        known = []
    lines: list[str] = []
    for f in list_files:
        if f.name.lower().startswith(("train", "val", "test")):
            try:
                lines += f.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
    labels = labels_from_lists(lines, num_classes=num_classes, known=known) if lines else None
    if labels is None:
        return None, "unknown"
    return labels, label_order_of(labels)


# --- the whole route -------------------------------------------------------------------------------------------


def fetch_and_convert(entry: ZooEntry, out_dir: Path) -> Path:
    """Download ``entry``'s release, convert it into ``out_dir`` (which appears atomically), return ``out_dir``.

    The download is deleted afterwards (the converted config records the checkpoint's sha256). Raises
    :class:`ModelDownloadError` when the route is unavailable or a download fails.
    """
    why = unavailable_reason()
    if why:
        raise ModelDownloadError(why)
    import json

    from .convert import convert_checkpoint

    work = out_dir.parent / f".{out_dir.name}.download"
    try:
        pth = download_release(entry, work / "release")
        labels, _ = derive_labels(download_label_lists(work / "lists"), entry.arch.get("num_classes", 400))
        labels_file = None
        if labels is not None:
            labels_file = work / "labels.json"
            labels_file.write_text(json.dumps(labels), encoding="utf-8")
        try:
            convert_checkpoint(pth, out_dir, arch=entry.name, labels=labels_file, overwrite=True,
                               provenance={"gdrive_folder": entry.gdrive_folder, "url": entry.original_url,
                                           "labels_from": TRAINVALTEST_URL if labels is not None else None})
        except ConversionError as e:  # the download is not what the zoo says: the model is unavailable
            raise ModelDownloadError(f"{entry.original_url}: the downloaded checkpoint does not convert as "
                                     f"{entry.name} ({e})") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir
