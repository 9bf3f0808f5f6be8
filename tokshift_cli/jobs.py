"""Long jobs that survive crashes: fsync'ed journals, resume, shards, torchrun.

Every long job (``extract-features``, ``evaluate``, ``timeline``) records what it finished in a journal, one JSON
line per input, so that ``--resume`` after Ctrl-C, ``kill -9`` or a preemption goes on from there and writes the
same bytes as an uninterrupted run; ``--shard I/N`` and ``torchrun`` split the inputs. The rules:

* A journal (``<stem>.part[-I-of-N].journal``) starts with a header line: the job's ``kind``, its shard, and a
  fingerprint of everything that changes the output (model weights, options, the input list and each file's
  size). A resume with a different fingerprint is refused, naming each difference (:func:`refuse_resume`); the
  final outputs record the fingerprint too (``preflight(stored=...)``), so a resume that finds the job complete
  compares it first (:func:`check_complete`): the resume contract, docs/reliability.md.
* Jobs with numeric rows (features) append them to ``<stem>...rows`` first; the rows file is fsync'ed before the
  journal lines that describe it are written, and the journal is fsync'ed in turn (group commit, at most
  ``commit_interval`` seconds apart), so the journal never describes rows that are not on disk.
* ``--resume`` cuts the rows file back to the last journalled offset and the journal to its last complete line.
* Shard ``i`` of ``n`` takes inputs ``i, i + n, ...`` (strided: long and short videos spread evenly). Under
  ``torchrun`` each rank is a shard, ranks agree on errors before any work (:meth:`DistContext.agree`), and rank
  0 merges once every rank has reported (an object gather over gloo, also the barrier).
* Final outputs are written atomically (:func:`tokshift_cli.outputs.atomic_open`), then the part files removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from .errors import OutputExistsError, TokShiftError, UsageError
from .outputs import ensure_output_folder, fsync_path, json_safe

if TYPE_CHECKING:
    import torch

__all__ = ["Shard", "JobFiles", "JournalState", "JournalWriter", "scan_journal", "iter_records", "check_outputs",
           "preflight", "remove_parts", "complete_shards", "merged_records", "differences", "refuse_resume",
           "check_complete", "file_identity", "AFRESH", "inputs_hash", "weights_hash", "model_info", "DistContext",
           "init_distributed", "json_line", "fsync_file", "DIST_TIMEOUT", "under_torchrun", "rank_device",
           "share_size"]

#: How long ranks wait for each other under torchrun (ranks finish their shards at different times).
DIST_TIMEOUT = timedelta(hours=float(os.environ.get("TOKSHIFT_DIST_TIMEOUT_H", "72")))


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: inputs ``index, index + count, ...`` of the input list."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise UsageError(f"--shard {self.index}/{self.count}: expected I/N with 0 <= I < N")

    @classmethod
    def parse(cls, text: str | "Shard" | None) -> "Shard":
        if text is None:
            return cls()
        if isinstance(text, Shard):
            return text
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not m:
            raise UsageError(f"--shard {text!r}: expected I/N, e.g. 0/4 (shards are numbered from 0)")
        return cls(int(m.group(1)), int(m.group(2)))

    def positions(self, n: int) -> range:
        return range(self.index, n, self.count)

    @property
    def suffix(self) -> str:
        return ".part" if self.count == 1 else f".part-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"



class JobFiles:
    """Where one job's files go: the final outputs (:meth:`finals`), and per shard a journal and, for jobs with
    numeric rows, a rows file, named after ``stem`` (``feats.npy`` -> ``feats.npy.part.journal``)."""

    def __init__(self, stem: Path, finals: Sequence[Path], *, rows: bool = False):
        self.stem, self._finals, self.has_rows = Path(stem), [Path(p) for p in finals], rows

    @property
    def folder(self) -> Path:
        return self.stem.parent

    def _part(self, shard: Shard) -> Path:
        return Path(f"{self.stem}{shard.suffix}")

    def rows_path(self, shard: Shard) -> Path | None:
        return Path(f"{self._part(shard)}.rows") if self.has_rows else None

    def journal_path(self, shard: Shard) -> Path:
        return Path(f"{self._part(shard)}.journal")

    def finals(self) -> list[Path]:
        return list(self._finals)

    def per_input_files(self, file_names: Sequence[str] | None) -> list[Path]:
        """Files written per input (none by default): a fresh run must not clobber them."""
        return []


def fsync_file(f: IO[Any]) -> None:
    """Flush and fsync an open file."""
    f.flush()
    os.fsync(f.fileno())


@dataclass
class JournalState:
    """What a journal says: its header, how many inputs are done, where their rows end."""

    path: Path
    header: dict[str, Any] | None = None
    videos: int = 0
    ok: int = 0
    failed: int = 0
    rows: int = 0
    end: int = 0  #: bytes of rows the journal vouches for
    valid_bytes: int = 0  #: journal bytes up to the last complete, parsable line
    done: dict[str, Any] | None = None  #: the final record, once the shard is complete
    clips: int = 0
    last_index: int = -1  #: input index of the last journalled video


def scan_journal(path: Path, kind: str | None = None) -> JournalState:
    """Read a journal of ``kind`` (its header's ``"journal"``; None: any) line by line (it can be large): counters
    only, nothing per input is kept."""
    st = JournalState(path=path)
    with open(path, "rb") as f:
        pos = 0
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn last line: the process died while writing it
            try:
                rec = json.loads(line)
            except ValueError:
                break
            if st.header is None:
                if not isinstance(rec, dict) or not rec.get("journal") or (kind and rec["journal"] != kind):
                    raise UsageError(f"{path}: not a {kind or 'tokshift'} journal; remove it or choose another --out")
                st.header = rec
            elif rec.get("done"):
                st.done = rec
            else:
                if st.done is not None or not isinstance(rec.get("i"), int) or rec["i"] <= st.last_index:
                    raise UsageError(f"{path}: journal is corrupt (a record out of order at byte {pos}); remove "
                                     "the part files and run again with --overwrite")
                st.last_index = rec["i"]
                st.videos += 1
                st.rows += rec["rows"]
                st.ok += rec["error"] is None
                st.failed += rec["error"] is not None
                st.clips += rec.get("clips", 0)
                st.end = rec["end"]
            pos += len(line)
            st.valid_bytes = pos
    if st.header is None:
        st.valid_bytes = 0
    return st


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The per-input records of a complete journal, in order (header and end record skipped)."""
    with open(path, "rb") as f:
        next(f)
        for line in f:
            rec = json.loads(line)
            if rec.get("done"):
                return
            yield rec


class JournalWriter:
    """Appends one shard's records (and, when the job has a rows file, their rows); a journal line is committed
    only after the rows it names are on disk."""

    def __init__(self, files: "JobFiles", shard: Shard, header: dict[str, Any], state: JournalState | None, *,
                 row_dtype: np.dtype | None = None, commit_interval: float | None = None):
        self.files, self.shard = files, shard
        #: seconds between group commits (env TOKSHIFT_COMMIT_INTERVAL; 0: every record is committed at once)
        self.commit_interval = (float(os.environ.get("TOKSHIFT_COMMIT_INTERVAL", "1.0")) if commit_interval is None
                                else commit_interval)
        self.row_dtype = row_dtype
        jpath = files.journal_path(shard)
        rpath = files.rows_path(shard)
        self.rows_f: IO[bytes] | None = None
        self.end = state.end if state is not None else 0
        if rpath is not None:
            self.rows_f = open(rpath, "r+b" if state is not None else "wb")
            if state is not None:
                size = os.fstat(self.rows_f.fileno()).st_size
                if size < state.end:
                    self.rows_f.close()
                    raise UsageError(f"{rpath}: holds {size} bytes but the journal vouches for {state.end}: the part "
                                     "files do not belong together; run again with --overwrite to start over")
                self.rows_f.truncate(state.end)  # rows written after the last commit are computed again
                self.rows_f.seek(state.end)
        self.journal = open(jpath, "r+b" if state is not None else "wb")
        if state is not None:
            self.journal.truncate(state.valid_bytes)
            self.journal.seek(state.valid_bytes)
        else:
            self.journal.write(json_line(header))
            fsync_file(self.journal)
            fsync_path(jpath.parent)
        self.pending: list[bytes] = []
        self.last_commit = time.monotonic()
        self.videos = state.videos if state is not None else 0
        self.ok = state.ok if state is not None else 0
        self.failed = state.failed if state is not None else 0
        self.rows = state.rows if state is not None else 0
        self.clips = state.clips if state is not None else 0

    def add(self, index: int, path: str, record: dict[str, Any], rows: np.ndarray | None = None,
            n_rows: int | None = None) -> None:
        """Journal one input's ``record`` (``record["error"]`` None: it succeeded), after appending its ``rows``
        to the rows file. ``n_rows``: the row count to record when the rows went elsewhere (one file per input)."""
        n = 0 if n_rows is None else n_rows
        if rows is not None:
            data = np.ascontiguousarray(rows.astype(self.row_dtype, copy=False))
            n = data.shape[0]
            if self.rows_f is None:
                raise ValueError("JournalWriter.add: this job has no rows file")
            self.rows_f.write(data.tobytes())
            self.end += data.nbytes
        record.update(i=index, video=path, rows=n, end=self.end)
        self.videos += 1
        self.rows += n
        self.ok += record["error"] is None
        self.failed += record["error"] is not None
        self.clips += record.get("clips", 0)
        self.pending.append(json_line(record))
        if time.monotonic() - self.last_commit >= self.commit_interval:
            self.commit()

    def commit(self) -> None:
        """fsync the rows, then write and fsync the journal lines that describe them."""
        if not self.pending:
            return
        data = b"".join(self.pending)
        self.pending.clear()  # first: an interrupt from here on loses these lines (redone on resume), never repeats them
        if self.rows_f is not None:
            fsync_file(self.rows_f)
        self.journal.write(data)
        fsync_file(self.journal)
        self.last_commit = time.monotonic()

    def finish(self) -> dict[str, Any]:
        self.commit()
        done = {"done": True, "videos": self.videos, "ok": self.ok, "failed": self.failed, "rows": self.rows,
                "end": self.end, "clips": self.clips}
        self.journal.write(json_line(done))
        fsync_file(self.journal)
        return done

    def close(self) -> None:
        try:
            self.commit()
        finally:
            if self.rows_f is not None:
                self.rows_f.close()
            self.journal.close()


def json_line(obj: Any) -> bytes:
    """One journal line."""
    # ASCII escapes: paths that are not valid UTF-8 (surrogate escapes) survive the round trip; NaN -> null
    text = json.dumps(json_safe(obj), separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return (text + "\n").encode("ascii")


# --- fingerprints ---------------------------------------------------------------------------------------------


def inputs_hash(paths: Sequence[str]) -> str:
    """sha256 of an ordered input list (the byte spelling of every path)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(p) + b"\0")
    return h.hexdigest()


def weights_hash(model: "torch.nn.Module") -> str:
    """sha256 over the model's tensors (names, dtypes, shapes, bytes): which weights made these results."""
    import torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_info(model: "torch.nn.Module") -> dict[str, Any]:
    """What a report or sidecar says about the model: its reference and provenance, or its config alone."""
    resolved = getattr(model, "resolved", None)
    if resolved is not None:
        from .models.weights import model_info_line

        return {**model_info_line(resolved), **runtime_info(model)}
    cfg = model.config
    return {"ref": None, "kind": "python", "frames": cfg.num_frames, "stride": cfg.frame_stride,
            "crop_size": cfg.crop_size, "fold_div": cfg.fold_div, "untrained": cfg.untrained, **runtime_info(model)}


def runtime_info(model: "torch.nn.Module") -> dict[str, Any]:
    """Which runtime ran the network and at which precision (:mod:`tokshift_cli.runtimes`; a torch model: torch,
    at its blocks' weight dtype), and ``auto``'s measured choice when it made one. The float32 GEMM choice
    (:func:`~tokshift_cli.models.kernels.linear_backend`) is not recorded here nor in resume fingerprints: like the
    CPU model, it changes the last bits (<= ~1e-6 of a logit), not the question a job answers."""
    precision = getattr(model, "precision", None)
    if precision is None:
        blocks = getattr(model, "blocks", None)
        weight = next((blocks if blocks is not None else model).parameters(), None)
        precision = str(weight.dtype).replace("torch.", "") if weight is not None else None
    out: dict[str, Any] = {"runtime": getattr(model, "runtime", "torch"), "precision": precision}
    if getattr(model, "auto", None):
        out["runtime_auto"] = model.auto
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Where two fingerprints differ, as 'key (old then, new now)' items (nested keys dotted)."""
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            va, vb = a.get(k), b.get(k)
            if isinstance(va, dict) and isinstance(vb, dict):
                out += [f"{k}.{d}" for d in differences(va, vb)]
            else:
                out.append(f"{k} ({_short(va)} then, {_short(vb)} now)")
    return out


def _short(v: Any) -> str:
    s = json.dumps(v)
    return s if len(s) <= 40 else s[:37] + "..."


#: How every refused resume ends: the one way to start afresh.
AFRESH = "Resume with the settings it was made with, or pass --overwrite (without --resume) to start afresh"


def refuse_resume(what: Path | str, diff: Sequence[str]) -> UsageError:
    """The refusal of a ``--resume`` whose settings differ from the run it would continue: every differing field
    with its two values, and how to start afresh (exit 2)."""
    shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
    return UsageError(f"{what}: cannot resume: it was made with different settings: {shown}. {AFRESH}")


def check_complete(what: Path | str, stored: dict[str, Any] | None, fingerprint: dict[str, Any]) -> None:
    """``--resume`` found a job's final outputs: refuse unless ``stored`` (the fingerprint the outputs record)
    equals this run's ``fingerprint`` (the resume contract: compare before calling the job complete)."""
    if not isinstance(stored, dict):
        raise UsageError(f"{what}: cannot resume: it does not record the settings that made it (written by an "
                         f"older version, or edited), so this run cannot be shown to match it. Pass --overwrite "
                         "(without --resume) to compute it afresh")
    diff = differences(stored, fingerprint)
    if diff:
        raise refuse_resume(what, diff)


def file_identity(paths: Sequence[str]) -> str:
    """sha256 over each local input's path and size in bytes (URLs and missing paths by name only): a video
    replaced under the same name changes it, a copy on another machine (shards) does not."""
    h = hashlib.sha256()
    for p in paths:
        h.update(os.fsencode(p) + b"\0")
        with contextlib.suppress(OSError, ValueError):
            if "://" not in p:
                st = os.stat(p)
                h.update(str(st.st_size).encode())
        h.update(b"\0")
    return h.hexdigest()


# --- preflight -------------------------------------------------------------------------------------------------


def check_outputs(layout: "JobFiles", shard: Shard, *, resume: bool, overwrite: bool,
                  file_names: Sequence[str] | None = None, will_merge: bool = True) -> str:
    """Decide what a run does with the files it finds, before any work: ``"fresh"``, ``"resume"`` or
    ``"complete"`` (--resume and the final output is there with no progress record left). Raises
    :class:`OutputExistsError` rather than clobber anything, and :class:`~tokshift_cli.errors.OutputError` (exit 4) when the output
    folder cannot be created or written to (a real write probe, as for ``classify --out``)."""
    journal = layout.journal_path(shard)
    finals = [p for p in layout.finals() if p.exists()] if will_merge else []
    ensure_output_folder(layout.folder)
    if resume:
        if journal.exists():
            return "resume"
        if finals and all(p.exists() for p in layout.finals()):
            return "complete"
        if finals and not overwrite:
            raise OutputExistsError(f"{finals[0]}: exists, but there is no progress record ({journal.name}) to "
                                    "resume from; pass --overwrite to replace it")
        return "fresh"
    if journal.exists() and not overwrite:
        raise OutputExistsError(f"{journal}: an interrupted run's progress is here; pass --resume to continue it, "
                                "or --overwrite to start over")
    if finals and not overwrite:
        raise OutputExistsError(f"{finals[0]}: exists already; pass --overwrite to replace it "
                                "(or --resume to continue an interrupted run)")
    if not overwrite:
        for path in layout.per_input_files(file_names):
            if path.exists():
                raise OutputExistsError(f"{path}: exists already; pass --overwrite to replace it, "
                                        "or choose another output folder")
    return "fresh"


def remove_parts(layout: "JobFiles", shard: Shard) -> None:
    """Delete one shard's progress files (journal, rows)."""
    for p in (layout.rows_path(shard), layout.journal_path(shard)):
        if p is not None:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def preflight(files: JobFiles, shard: Shard, make_header: Callable[[], dict[str, Any]], *, kind: str,
              n_inputs: int | None, resume: bool, overwrite: bool, will_merge: bool,
              file_names: Sequence[str] | None = None,
              stored: Callable[[], dict[str, Any] | None] | None = None
              ) -> tuple[str, dict[str, Any], JournalState | None]:
    """Decide what a run does before any work: ``("fresh" | "resume" | "complete", header, journal state)``.

    ``make_header()`` builds the journal header (with its ``"fingerprint"``); a resume whose fingerprint, shard or
    input list differs from the interrupted run's is refused with a :class:`UsageError` naming the difference. A
    fresh run removes this shard's stale part files. Under torchrun run it through :meth:`DistContext.agree`.
    ``n_inputs``: checks that the journalled records are the shard's first inputs (None: jobs whose records are
    not one per input, such as timeline's windows). ``stored()``: the fingerprint the final outputs record; a
    ``--resume`` that finds them complete compares it with this run's first (:func:`check_complete`)."""
    action = check_outputs(files, shard, resume=resume, overwrite=overwrite, file_names=file_names,
                           will_merge=will_merge)
    header = make_header()
    if action == "complete":
        if stored is not None:
            try:
                fp = stored()
            except (OSError, ValueError, KeyError, TypeError):
                fp = None
            check_complete(files.finals()[0], fp, header["fingerprint"])
        return action, header, None
    state = None
    if action == "resume":
        state = scan_journal(files.journal_path(shard), kind)
        if state.header is None:  # killed before its header was on disk: nothing to resume
            action, state = "fresh", None
        else:
            diff = differences(state.header["fingerprint"], header["fingerprint"])
            if state.header.get("shard") != header["shard"]:
                diff.insert(0, f"shard ({state.header.get('shard')} then, {header['shard']} now)")
            positions = shard.positions(n_inputs) if n_inputs is not None else None
            if not diff and state.videos and positions is not None and (
                    state.videos > len(positions) or positions[state.videos - 1] != state.last_index):
                diff.append("the journal's inputs are not this input list's")
            if diff:
                raise refuse_resume(files.journal_path(shard), diff)
    if action == "fresh":
        remove_parts(files, shard)
    return action, header, state


def complete_shards(files: JobFiles, shards: int, kind: str, *, overwrite: bool = False) -> list[JournalState]:
    """The journals of ``shards`` complete shards, checked to belong together (same fingerprint, each its own
    shard), for a merge; :class:`UsageError` naming the file and the fix otherwise, :class:`OutputExistsError`
    when a final output exists and ``overwrite`` is not set."""
    if shards < 1:
        raise UsageError(f"--shards {shards}: must be >= 1")
    parts = [Shard(i, shards) for i in range(shards)]
    states = []
    for sh in parts:
        jp = files.journal_path(sh)
        if not jp.exists():
            near = sorted(p.name for p in files.folder.glob(f"{files.stem.name}*.journal"))
            hint = f" (found: {', '.join(near[:4])})" if near else ""
            raise UsageError(f"{jp}: missing: shard {sh} has not run here{hint}. Run it (`--shard {sh}`), copy its "
                             "part files beside the others, or give the right --shards")
        st = scan_journal(jp, kind)
        if st.done is None:
            raise UsageError(f"{jp}: shard {sh} is not complete ({st.videos} videos done); finish it with "
                             f"`--shard {sh} --resume`, then merge")
        states.append(st)
    first = states[0].header
    for sh, st in zip(parts, states):
        if st.header.get("shard") != [sh.index, sh.count]:
            raise UsageError(f"{st.path}: belongs to shard {st.header.get('shard')}, not {sh}")
        diff = differences(first["fingerprint"], st.header["fingerprint"])
        if diff:
            raise UsageError(f"{st.path}: shard {sh} was made with other settings than shard 0/{shards}: "
                             f"{'; '.join(diff[:4])}")
    if not overwrite:
        for p in files.finals():
            if p.exists():
                raise OutputExistsError(f"{p}: exists already; pass --overwrite to replace it")
    return states


def merged_records(states: Sequence[JournalState], n_inputs: int) -> Iterator[dict[str, Any]]:
    """The per-input records of complete shard journals (:func:`complete_shards`), in input order (input ``i``
    is in shard ``i % len(states)``); :class:`UsageError` when they do not add up."""
    shards = len(states)
    if sum(st.done["videos"] for st in states) != n_inputs:
        raise UsageError(f"the {shards} shards hold {sum(st.done['videos'] for st in states)} inputs, the input "
                         f"list has {n_inputs}: these part files do not belong together")
    records = [iter_records(st.path) for st in states]
    for gi in range(n_inputs):
        s = gi % shards
        rec = next(records[s], None)
        if rec is None or rec["i"] != gi:
            raise UsageError(f"{states[s].path}: expected the record of input {gi}, found "
                             f"{'none' if rec is None else rec['i']}: the part files are damaged")
        yield rec


# --- distributed -----------------------------------------------------------------------------------------------


@dataclass
class DistContext:
    """This process's place in a ``torchrun`` job, and a CPU (gloo) group for small object collectives."""

    rank: int
    world: int
    local_rank: int
    backend: str
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, on every rank (also a barrier: it returns once all ranks have called it)."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def agree(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on every rank; if it raised a TokShiftError on any rank, raise one on all of them (with the
        same class where it can), so no rank is left waiting for the others."""
        err: tuple[str, str] | None = None
        result = None
        try:
            result = fn()
        except TokShiftError as e:
            err = (type(e).__name__, str(e))
        errs = self.gather(err)
        for r, e in enumerate(errs):
            if e is not None:
                from . import errors as _errors  # noqa: F811

                cls = getattr(_errors, e[0], None)
                if not (isinstance(cls, type) and issubclass(cls, TokShiftError)):
                    cls = TokShiftError
                msg = e[1] if r == self.rank else f"rank {r}: {e[1]}"
                try:
                    exc = cls(msg)
                except TypeError:  # an error class with other constructor arguments
                    exc = TokShiftError(msg)
                raise exc
        return result

    def close(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_type: str = "cpu") -> DistContext | None:
    """Join the ``torchrun`` job described by WORLD_SIZE/RANK/LOCAL_RANK (and MASTER_ADDR/PORT), or return None
    when there is none. gloo on the CPU, nccl on CUDA (plus a gloo group for Python objects)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=DIST_TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=DIST_TIMEOUT) if backend == "nccl" else None
    return DistContext(rank=rank, world=world, local_rank=local_rank, backend=backend, group=group)


# --- torchrun, for the commands -------------------------------------------------------------------------------


def under_torchrun() -> bool:
    """Whether this process is one rank of a ``torchrun`` job (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def rank_device(device: Any, dist: DistContext | None) -> str:
    """The device a rank runs on: ``cuda`` without an index becomes this rank's ``cuda:LOCAL_RANK``."""
    import torch

    dev = torch.device(device)
    if dist is not None and dev.type == "cuda" and dev.index is None:
        return f"cuda:{dist.local_rank}"
    return str(dev)


def share_size(n: int, shard: Shard, dist: DistContext | None) -> int:
    """How many of ``n`` inputs this process handles: its ``--shard``, or its rank's share under torchrun."""
    return len(Shard(dist.rank, dist.world).positions(n) if dist is not None else shard.positions(n))
