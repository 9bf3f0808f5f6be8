"""Labelled videos in: a folder per class, MMAction2-style list files, CSV files, the Kinetics annotation CSV.

::

    data = load_labelled("data/val/")                            # data/val/<class>/**/<video>
    data = load_labelled("val.txt", root="videos/")              # "path label" lines (index or name)
    data = load_labelled("kinetics400/validate.csv", root="k400/val/")
    index = match_labels(data, model.config.labels)              # label name -> model class index, or UsageError

Used by ``evaluate`` (scores against the model's labels) and ``train`` (the classes come from the data). A list
that names a missing file keeps it as an item with an ``error`` (a failed video, never a wrong prediction).
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..video.inputs import VIDEO_EXTENSIONS, expand_inputs

__all__ = ["LabelledVideo", "LabelledSet", "load_labelled", "normalise_label", "match_labels", "read_label_map",
           "class_names", "FORMATS"]

#: The input forms, as ``LabelledSet.format`` names them.
FORMATS = ("folder", "list", "csv", "kinetics-csv")
_PATH_COLUMNS = ("path", "video", "filename", "file", "video_path")
_LABEL_COLUMNS = ("label", "class", "category", "label_name")


@dataclass(frozen=True)
class LabelledVideo:
    """One labelled input: ``label`` as the data writes it (a name, or a class index as text), or ``error`` when
    it cannot be read (a missing file: counted as failed, never as a wrong prediction)."""

    path: str
    label: str
    error: str | None = None


@dataclass
class LabelledSet:
    """The videos of a labelled data set, in the data's order (folders: sorted), and how they were found."""

    source: str
    format: str
    items: list[LabelledVideo] = field(default_factory=list)
    root: str | None = None

    @property
    def labels(self) -> list[str]:
        """Distinct labels as written, in first-seen order."""
        return list(dict.fromkeys(it.label for it in self.items))

    @property
    def paths(self) -> list[str]:
        return [it.path for it in self.items]

    def __len__(self) -> int:
        return len(self.items)


def normalise_label(name: str) -> str:
    """A label name as compared: lower case, ``_`` as spaces, quotes and other punctuation dropped, spaces
    collapsed ("passing_American_football_(in_game)" == "passing american football in game")."""
    text = name.strip().lower().replace("_", " ")
    text = re.sub(r"[^\w\s]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def class_names(labels: Iterable[str]) -> list[str]:
    """The classes of a training set: distinct labels sorted by their normalised name (then as written)."""
    return sorted(set(labels), key=lambda s: (normalise_label(s), s))


# --- reading -------------------------------------------------------------------------------------------------


def load_labelled(data: str | os.PathLike, *, root: str | os.PathLike | None = None,
                  extensions: Iterable[str] = VIDEO_EXTENSIONS) -> LabelledSet:
    """Read a labelled set from ``data``: a folder (a sub-folder per class: ``DATA/<class>/**/<video>``), a list
    file (``path label`` lines, MMAction2's format, a tab or the path's video extension ending the path where names
    hold spaces; paths relative to ``root``, default the list's folder), a
    CSV with a header naming a path column (``path``, ``video``, ``filename``) and a label column (``label``,
    ``class``), or the Kinetics annotation CSV (``label,youtube_id,time_start,time_end,split``; videos found under
    ``root`` as ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` or ``<youtube_id>.<ext>``). Raises
    :class:`~tokshift_cli.errors.UsageError` (exit 2) with one line for data it cannot read."""
    src = os.fspath(data)
    if os.path.isdir(src):
        return _from_folder(src, frozenset(e.lower().lstrip(".") for e in extensions))
    if not os.path.exists(src):
        raise UsageError(f"{src}: no such file or folder (give a folder with a sub-folder per class, a list file "
                         "or a CSV)")
    try:
        with open(src, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UsageError(f"{src}: cannot read it ({(e.strerror or str(e)).lower()})") from None
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    base = os.fspath(root) if root is not None else os.path.dirname(os.path.abspath(src))
    first = next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")
    if "," in first:
        header = [h.strip().lower() for h in next(csv.reader([first]))]
        if {"label", "youtube_id", "time_start", "time_end"} <= set(header):
            return _from_kinetics_csv(src, text, base, frozenset(e.lower().lstrip(".") for e in extensions))
        if any(h in _PATH_COLUMNS for h in header) and any(h in _LABEL_COLUMNS for h in header):
            return _from_csv(src, text, header, base)
    return _from_list(src, text, base)


def _from_folder(folder: str, exts: frozenset[str]) -> LabelledSet:
    out = LabelledSet(source=folder, format="folder", root=folder)
    classes = sorted(d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise UsageError(f"{folder}: no class folders in it (expected {folder}/<class name>/<videos>; or give a "
                         "list file or a CSV)")
    for name in classes:
        for item in expand_inputs([os.path.join(folder, name)], extensions=exts):
            if item.error and item.error.startswith("no video files"):
                continue  # an empty class folder has no videos, not a failed one
            out.items.append(LabelledVideo(item.path, name, item.error))
    if not out.items:
        raise UsageError(f"{folder}: no videos in its class folders")
    return out


def _resolve(path: str, base: str) -> tuple[str, str | None]:
    p = path if os.path.isabs(path) or "://" in path else os.path.join(base, path)
    if "://" in p or os.path.exists(p):
        return p, None
    return p, "no such file or directory"


_PATH_THEN_LABEL = re.compile(r"^(.*?\.(?:" + "|".join(sorted(VIDEO_EXTENSIONS, key=len, reverse=True)) +
                              r"))\s+(\S.*)$", re.IGNORECASE)


def _split_line(s: str) -> list[str]:
    """``path label``: a tab separates them if there is one; else the path ends at its video extension (paths
    and Kinetics labels both hold spaces: ``data/tying tie/a.mp4 tying tie``); else at the last space."""
    if "\t" in s:
        return [part.strip() for part in s.rsplit("\t", 1)]
    m = _PATH_THEN_LABEL.match(s)
    return [m.group(1), m.group(2).strip()] if m else s.rsplit(None, 1)


def _from_list(src: str, text: str, base: str) -> LabelledSet:
    out = LabelledSet(source=src, format="list", root=base)
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = _split_line(s)
        if len(parts) != 2 or not parts[1]:
            raise UsageError(f"{src}:{n}: expected 'path label', got {s[:60]!r}")
        path, label = parts
        fields = path.split()
        if len(fields) >= 2 and fields[-1].isdigit() and label.isdigit() and not os.path.splitext(fields[0])[1]:
            raise UsageError(f"{src}:{n}: 'folder frames label' lines are MMAction2 rawframe lists; give the videos "
                             "('path label')")
        p, err = _resolve(path, base)
        out.items.append(LabelledVideo(p, label, err))
    if not out.items:
        raise UsageError(f"{src}: no 'path label' lines in it")
    return out


def _from_csv(src: str, text: str, header: list[str], base: str) -> LabelledSet:
    pcol = next(h for h in _PATH_COLUMNS if h in header)
    lcol = next(h for h in _LABEL_COLUMNS if h in header)
    out = LabelledSet(source=src, format="csv", root=base)
    reader = csv.DictReader(io.StringIO(text))
    reader.fieldnames = [h.strip().lower() for h in (reader.fieldnames or [])]
    for n, row in enumerate(reader, 2):
        path, label = (row.get(pcol) or "").strip(), (row.get(lcol) or "").strip()
        if not path or not label:
            raise UsageError(f"{src}:{n}: a row without a {'path' if not path else 'label'}")
        p, err = _resolve(path, base)
        out.items.append(LabelledVideo(p, label, err))
    if not out.items:
        raise UsageError(f"{src}: no rows")
    return out


def _from_kinetics_csv(src: str, text: str, root: str, exts: frozenset[str]) -> LabelledSet:
    """Kinetics annotations: each row's video is found by its file name anywhere under ``root`` (the common
    downloaders write ``<root>/<split>/<label>/<id>_<start>_<end>.mp4`` or ``<root>/<id>.mp4``)."""
    if not os.path.isdir(root):
        raise UsageError(f"{src}: a Kinetics annotation file needs --root, the folder that holds the videos")
    by_stem: dict[str, str] = {}
    for item in expand_inputs([root], extensions=exts):
        if item.ok:
            by_stem.setdefault(Path(item.path).stem, item.path)
    out = LabelledSet(source=src, format="kinetics-csv", root=root)
    for n, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        yid, label = row.get("youtube_id", ""), row.get("label", "")
        try:
            start, end = int(float(row.get("time_start", "0"))), int(float(row.get("time_end", "0")))
        except ValueError:
            raise UsageError(f"{src}:{n}: time_start/time_end are not numbers") from None
        names = (f"{yid}_{start:06d}_{end:06d}", yid)
        found = next((by_stem[s] for s in names if s in by_stem), None)
        path = found or os.path.join(root, f"{names[0]}.mp4")
        out.items.append(LabelledVideo(path, label, None if found else f"no such file (no {names[0]}.* or "
                                                                          f"{yid}.* under {root})"))
    if not out.items:
        raise UsageError(f"{src}: no rows")
    return out


# --- matching names to a model's labels ---------------------------------------------------------------------


def read_label_map(path: str | os.PathLike) -> dict[str, str]:
    """``--label-map``: JSON ``{"data name": "model label"}`` or CSV lines ``data name,model label``."""
    src = os.fspath(path)
    try:
        text = Path(src).read_text(encoding="utf-8-sig")
    except OSError as e:
        raise UsageError(f"--label-map {src}: cannot read it ({(e.strerror or str(e)).lower()})") from None
    if src.lower().endswith(".json") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise UsageError(f"--label-map {src}: not valid JSON ({e})") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise UsageError(f"--label-map {src}: expected a JSON object of \"data name\": \"model label\"")
        return {str(k): v for k, v in data.items()}
    out = {}
    for n, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or row[0].lstrip().startswith("#"):
            continue
        if len(row) != 2:
            raise UsageError(f"--label-map {src}:{n}: expected 'data name,model label'")
        out[row[0].strip()] = row[1].strip()
    return out


def match_labels(data: LabelledSet | Sequence[str], model_labels: Sequence[str], *,
                 label_map: dict[str, str] | None = None, against: str = "the model",
                 way_out: str | None = None) -> dict[str, int]:
    """``{label as the data writes it: model class index}`` for every label of ``data``. A label is matched by
    name after :func:`normalise_label`, through ``label_map`` first, or read as a class index when it is a number
    (``0`` .. ``C-1``: MMAction2's lists). Labels that match nothing raise one :class:`UsageError` listing them
    with the closest model labels and the way out (``--label-map``). ``against``: what the labels are matched
    with, as the message names it; ``way_out``: the fix it suggests instead of ``--label-map``."""
    labels = data.labels if isinstance(data, LabelledSet) else list(dict.fromkeys(data))
    by_norm: dict[str, int] = {}
    for i, name in enumerate(model_labels):
        by_norm.setdefault(normalise_label(name), i)
    lmap = {normalise_label(k): v for k, v in (label_map or {}).items()}
    out: dict[str, int] = {}
    missing: list[str] = []
    for label in labels:
        key = normalise_label(label)
        target = lmap.get(key)
        if target is not None:
            idx = by_norm.get(normalise_label(target))
            if idx is None:
                raise UsageError(f"--label-map maps {label!r} to {target!r}, which is not one of the model's labels")
            out[label] = idx
        elif key in by_norm:
            out[label] = by_norm[key]
        elif label.strip().isdigit() and int(label) < len(model_labels):
            out[label] = int(label)
        else:
            missing.append(label)
    if missing:
        norms = list(by_norm)
        hints = []
        for label in missing[:8]:
            close = difflib.get_close_matches(normalise_label(label), norms, n=2, cutoff=0.5)
            names = [model_labels[by_norm[c]] for c in close]
            hints.append(f"{label!r}" + (f" (closest: {', '.join(repr(n) for n in names)})" if names else ""))
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        fix = way_out or ("Map them with --label-map FILE (JSON {\"data name\": \"model label\"} or 'data "
                          "name,model label' lines)")
        raise UsageError(f"{len(missing)} label{'s' if len(missing) != 1 else ''} of the data match no label of "
                         f"{against}: {'; '.join(hints)}{more}. {fix}")
    return out
