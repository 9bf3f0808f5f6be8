"""Error types: one per user-facing failure kind, each message saying what to do next.

The CLI prints ``str(error)`` as a single line (no traceback unless ``--debug``); library users can catch the
specific class. Every class derives from :class:`TokShiftError`.
"""

from __future__ import annotations


class TokShiftError(Exception):
    """Base class of every error this package raises on purpose."""


# --- models and weights -------------------------------------------------------------------------------------


class ModelNotFoundError(TokShiftError):
    """A model reference names nothing that exists (zoo name, Hub repo, folder or file)."""


class RevisionNotFoundError(ModelNotFoundError):
    """A Hub repository exists but the requested revision (branch, tag or commit) does not."""


class ModelDownloadError(TokShiftError):
    """The weights could not be fetched (no network, server error) and nothing usable is cached."""


class WeightsError(TokShiftError):
    """A weights file or config is corrupt, incomplete, or does not match the architecture."""


class ConversionError(TokShiftError):
    """An authors' checkpoint could not be converted (unknown layout, missing tensors, bad flags)."""


# --- videos -------------------------------------------------------------------------------------------------


class VideoError(TokShiftError):
    """A video could not be opened or decoded. ``path`` names the file, ``reason`` says why."""

    def __init__(self, path: str, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable (decode worker processes send it back): rebuild from (path, reason)
        return (type(self), (self.path, self.reason))


class DecodeTimeoutError(VideoError):
    """Decoding one file took longer than the per-file time limit (its worker process was killed)."""


class DecoderCrashedError(VideoError):
    """The decoder died on this file (a native crash such as a segfault, or the process was killed)."""


class NoVideosError(TokShiftError):
    """The inputs named no video files at all."""


# --- outputs ------------------------------------------------------------------------------------------------


class OutputError(TokShiftError):
    """An output cannot be written: its folder cannot be created or written to, the disk is full..."""


class OutputExistsError(OutputError):
    """An output file exists already and ``--overwrite`` was not given."""


class UsageError(TokShiftError):
    """An option value is malformed (``--views 3``, ``--shard 5/2``...)."""


def first_line(e: BaseException | None) -> str:
    """An exception's message cut to its first line (200 characters), or its type's name when it has none."""
    s = str(e).strip() if e is not None else ""
    return s.splitlines()[0][:200] if s else type(e).__name__


# --- decoding: raised by tokshift_cli.video (importable from its modules too) -----------------------------


class TruncatedVideoError(VideoError):
    """Fewer frames decode than the container promises, and a requested frame lies past the last one."""

    def __init__(self, path: str, decodable: int, expected: int):
        self.decodable, self.expected = decodable, expected
        super().__init__(path, f"truncated: could only decode {decodable} of {expected} frames")

    def __reduce__(self):
        return (type(self), (self.path, self.decodable, self.expected))


class GpuUnsupportedVideoError(VideoError):
    """This file is not for the GPU decoder (codec, bit depth, size, a cut-off file): the CPU decoders take it."""


class GpuUnavailableError(UsageError):
    """No GPU decoder can run here (no CUDA, a CPU model, PyNvVideoCodec missing...). ``reason`` says which."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"--decoder gpu (NVDEC): {reason}; use --decoder auto (GPU where possible, else CPU) "
                         "or cpu")


class WorkerStartError(TokShiftError):
    """A decode worker process could not be started (or died before it was ready)."""
