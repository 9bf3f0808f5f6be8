"""Decode on the GPU (NVDEC), and move CPU-decoded frames to the GPU without stalling it. Optional.

::

    reason = gpu_decoder_available("cuda")          # None: usable; else why not, in one line
    with open_video_gpu("clip.mp4", "cuda") as video:
        frames = video.get_frames([0, 32, 64])      # torch.uint8 [3, H, W, 3] RGB on the CUDA device

Two GPU decoders, tried in this order (``backend="auto"``):

* ``"nvdec"``: NVIDIA's PyNvVideoCodec (``pip install 'tokshift-cli[gpu]'``): its ``SimpleDecoder`` seeks to the
  requested frames (``get_batch_frames_by_index``), decodes them on NVDEC and converts them to interleaved RGB on
  the GPU (``OutputColorType.RGB``, ``use_device_memory=True``); the frames reach torch through DLPack with no
  copy to the host.
* ``"decord-gpu"``: decord's GPU context (``VideoReader(path, ctx=decord.gpu(i))``, DLPack bridge to torch), where
  the installed decord was built with CUDA. The decord2 wheels on PyPI are CPU builds: they refuse a GPU context
  with "GPU acceleration not available on this platform", which is detected once per process (a 4-frame MJPEG
  file written with OpenCV is opened in a GPU context).

The ``--decoder`` rule (:func:`choose_decoder`, :func:`open_video_routed`):

* ``cpu``: decord, OpenCV fallback (:mod:`tokshift_cli.video.reader`).
* ``auto`` (default): the GPU when the model runs on CUDA, a GPU decoder is usable and the file's codec is one of
  :data:`NVDEC_CODECS` (H.264, HEVC, VP9, AV1; 8-bit) within the hardware's limits; otherwise the CPU, silently
  (the reader's ``fallback_reason`` says why). A file the GPU opens but fails to decode is decoded again on the
  CPU, so ``auto`` never fails a file the CPU decoders can read.
* ``gpu``: the GPU or an error. No usable GPU decoder at all (no CUDA, ``--device cpu``, PyNvVideoCodec missing
  or unloadable, decord without CUDA) raises :class:`GpuUnavailableError`, a :class:`~.errors.UsageError` (exit
  2, one line naming the reason: check it once with :func:`check_decoder_request` before the run). A file the GPU
  decoder does not take (codec, size, bit depth, a cut-off file) fails that file with
  :class:`GpuUnsupportedVideoError`, a :class:`~.errors.VideoError` (exit 1; the others go on).

Frames from a :class:`GpuVideoReader` are **torch tensors on the CUDA device** (uint8 ``[..., H, W, 3]``), not
numpy arrays as from :class:`tokshift_cli.video.reader.VideoReader`: the engine passes them to
:func:`~.transforms.preprocess` as they are (``isinstance(raw, torch.Tensor)``).

GPU decoding runs in the main process (decode *threads*, :func:`tokshift_cli.engine.ordered_prefetch`): the
killable decode processes of :mod:`tokshift_cli.video.workers` are torch-free, and CUDA frames cannot cross their pipes.

CPU-decoded frames for a CUDA model: :func:`upload_frames` copies uint8 frames through pinned (page-locked)
memory with ``non_blocking=True``. :class:`StreamStage` runs a decode thread's GPU work (NVDEC decode, upload,
preprocessing) on a side CUDA stream of its own, so that it overlaps the model running on the main stream;
:func:`wait_ready` hands the result over to the consuming stream. The engine uses both: in its GPU decode
threads (:func:`tokshift_cli.engine.prepare_video`), and in the consuming thread for frames that arrive decoded
from worker processes (:func:`tokshift_cli.engine.decode_videos`: upload and preprocessing on a side stream,
``PreparedVideo.ready`` waited on by ``run_views``). :class:`CudaPrefetcher` packages the same pattern for other
callers. (PyTorch tutorial "A guide on good usage of non_blocking and
pin_memory() in PyTorch", pytorch.org/tutorials/intermediate/pinmem_nonblock.html: a non-blocking copy needs a
pinned source, and overlaps compute only when it runs on a side stream; pinning itself costs a host copy.)

Status: written from the documented APIs (PyNvVideoCodec 2.x API reference,
docs.nvidia.com/video-technologies/pynvvideocodec/pynvc-api-reference/decoder.html; the 2.2.4 wheel's
``decoders/SimpleDecoder.py`` and ``samples/utils/Utils.py``; decord's ``bridge/torchdl.py``) and **not yet run on
a GPU**: the session that wrote it had none. ``tests/test_gpu.py`` holds the checks a GPU machine runs
(``pytest -m gpu``), ``scripts/bench_gpu.py`` the measurements. Known unknowns, checked by those tests: that
``SimpleDecoder`` frame ``i`` is decord's frame ``i`` on every test file (display order, constant frame rate),
and how far NVDEC's colour conversion is from FFmpeg's (swscale).

Timestamps from the GPU reader are ``index / fps`` (as the OpenCV backend's): exact for constant-frame-rate files
that start at 0, which is what NVDEC's frame indexing assumes too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import UsageError, VideoError
from .reader import _ReaderLifetime
from .staging import GpuUnavailableError, cuda_device, cuda_reason, upload_frames

__all__ = [
    "GPU_BACKENDS", "NVDEC_CODECS", "GpuUnavailableError", "GpuUnsupportedVideoError", "gpu_decoder_available",
    "gpu_codec_reason", "choose_decoder", "check_decoder_request", "GpuVideoReader", "open_video_gpu",
    "open_video_routed",
]

#: GPU decoders, in the order ``backend="auto"`` tries them.
GPU_BACKENDS = ("nvdec", "decord-gpu")
#: Codecs the GPU path takes (FFmpeg names). NVDEC decodes more (MPEG-2/4, VC-1, VP8, MJPEG on some GPUs), but
#: these four are the ones the tests cover; anything else goes to the CPU decoders.
NVDEC_CODECS = ("h264", "hevc", "vp9", "av1")
#: Frames per ``get_batch_frames_by_index`` call: bounds the decoder surfaces held at once (vLLM's PyNvVideoCodec
#: loader uses the same bound, PYNVVIDEOCODEC_DECODE_BATCH_SIZE = 32).
_BATCH = 32
_INSTALL_HINT = "pip install 'tokshift-cli[gpu]'"


class GpuUnsupportedVideoError(VideoError):
    """This file is not for the GPU decoder (codec, bit depth, size, a cut-off file): the CPU decoders take it."""


# --- availability -------------------------------------------------------------------------------------------

_state_lock = threading.Lock()
_nvc_module: Any = None
_nvc_reason: str | None = None
_nvc_checked = False
_decord_gpu: dict[int, str | None] = {}  # gpu id -> None (decord has CUDA) or the reason it has not


def _first_line(e: BaseException) -> str:
    from .reader import _first_line as video_first_line

    return video_first_line(e)


def _reset_cache() -> None:
    """Forget what was detected (tests)."""
    global _nvc_module, _nvc_reason, _nvc_checked
    with _state_lock:
        _nvc_module, _nvc_reason, _nvc_checked = None, None, False
        _decord_gpu.clear()


def _import_nvc() -> Any:
    """``import PyNvVideoCodec``, with its own error log silenced (its failures become our one-line reasons).

    The package checks the NVIDIA driver at import time and raises RuntimeError (not ImportError) without one
    (``PyNvVideoCodec/__init__.py`` of the 2.2.4 wheel, ``_get_driver_version``)."""
    log = logging.getLogger("PyNvVideoCodec")
    handler, propagate = logging.NullHandler(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        import PyNvVideoCodec

        return PyNvVideoCodec
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def _nvc() -> tuple[Any, str | None]:
    """(PyNvVideoCodec module or None, why not)."""
    global _nvc_module, _nvc_reason, _nvc_checked
    with _state_lock:
        if _nvc_checked:
            return _nvc_module, _nvc_reason
        try:
            mod = _import_nvc()
            missing = [n for n in ("SimpleDecoder", "CreateDemuxer", "OutputColorType") if not hasattr(mod, n)]
            if missing:  # 1.x has no SimpleDecoder
                _nvc_reason = (f"PyNvVideoCodec {getattr(mod, '__version__', '?')} is too old (no "
                               f"{', '.join(missing)}; needs >= 2.0: {_INSTALL_HINT})")
            else:
                _nvc_module = mod
        except ImportError:
            _nvc_reason = f"PyNvVideoCodec is not installed ({_INSTALL_HINT})"
        except Exception as e:  # driver missing or too old, libnvcuvid not found...
            _nvc_reason = f"PyNvVideoCodec could not load: {_first_line(e)}"
        _nvc_checked = True
        return _nvc_module, _nvc_reason


_DECORD_NO_CUDA = ("GPU acceleration not available", "CUDA not enabled")


def _decord_gpu_reason(gpu_id: int) -> str | None:
    """None when the installed decord was built with CUDA, else why not. decord has no build flag to ask, and
    refuses a GPU context only once a file is open (``video_reader.cc``), so a 4-frame MJPEG file written with
    OpenCV is opened in ``decord.gpu(gpu_id)`` once per process."""
    with _state_lock:
        if gpu_id in _decord_gpu:
            return _decord_gpu[gpu_id]
    reason: str | None
    try:
        decord = _import_decord()
    except ImportError:
        reason = "decord is not installed"
    else:
        tmp = tempfile.mkdtemp(prefix="tokshift-decord-probe-")
        try:
            import cv2

            probe = os.path.join(tmp, "probe.avi")
            writer = cv2.VideoWriter(probe, cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 64))
            for i in range(4):
                writer.write(np.full((64, 64, 3), 40 * i, np.uint8))
            writer.release()
            try:
                decord.VideoReader(probe, ctx=decord.gpu(gpu_id))
                reason = None
            except Exception as e:  # decord.DECORDError (a RuntimeError)
                text = str(e)
                if any(s in text for s in _DECORD_NO_CUDA):
                    reason = "the installed decord was built without CUDA"
                else:  # a CUDA build that dislikes MJPEG: the real files decide
                    reason = None
        except Exception as e:  # OpenCV could not write the probe
            reason = f"could not probe decord's GPU support ({_first_line(e)})"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with _state_lock:
        _decord_gpu[gpu_id] = reason
    return reason


def _import_decord() -> Any:
    """decord through :func:`tokshift_cli.video.reader.import_decord`, which keeps decord2's import from loading
    libnvblas (it hijacks torch's BLAS: torch's next matrix multiply segfaults)."""
    from .reader import import_decord

    return import_decord()


def gpu_decoder_available(device: torch.device | str = "cuda", *, backend: str = "auto") -> str | None:
    """None when a GPU decoder can decode into ``device``; otherwise the reason, one line.

    ``backend``: "auto" (PyNvVideoCodec, else decord's GPU context), "nvdec" or "decord-gpu". Whether a given
    file's codec is supported is decided when it is opened (:class:`GpuUnsupportedVideoError`)."""
    if backend not in ("auto", *GPU_BACKENDS):
        raise ValueError(f"backend {backend!r}: choose auto, {', '.join(GPU_BACKENDS)}")
    reason = cuda_reason(device)
    if reason is not None:
        return reason
    return _pick_backend(cuda_device(device), backend)[1]


def _pick_backend(dev: torch.device, backend: str) -> tuple[str | None, str | None]:
    """(backend name, None) or (None, why none)."""
    reasons = []
    if backend in ("auto", "nvdec"):
        mod, why = _nvc()
        if mod is not None:
            return "nvdec", None
        reasons.append(why)
    if backend in ("auto", "decord-gpu"):
        why = _decord_gpu_reason(dev.index or 0)
        if why is None:
            return "decord-gpu", None
        reasons.append(why)
    return None, "no GPU decoder: " + "; ".join(r for r in reasons if r)


def gpu_codec_reason(codec: str | None, bit_depth: int | None = 8) -> str | None:
    """None when the GPU path takes ``codec`` (an FFmpeg codec name) at ``bit_depth``; else why not."""
    name = (codec or "unknown").lower()
    if name not in NVDEC_CODECS:
        return f"codec {name} is decoded on the CPU (the GPU path takes {', '.join(NVDEC_CODECS)})"
    if bit_depth is not None and bit_depth > 8:
        return f"{bit_depth}-bit {name} is decoded on the CPU (the GPU path takes 8-bit video)"
    return None


# --- the --decoder rule -------------------------------------------------------------------------------------


def choose_decoder(decoder: str, device: torch.device | str | None) -> tuple[str, str | None]:
    """Apply the ``--decoder`` rule before any file is opened: ``("gpu", None)`` or ``("cpu", why not GPU)``.

    ``decoder``: "auto", "gpu", "cpu" (or a CPU decoder name: "decord", "opencv"). ``device``: where the model
    runs (None: the CPU). Raises :class:`GpuUnavailableError` for ``"gpu"`` when no GPU decoder is usable."""
    if decoder not in ("auto", "gpu"):
        return "cpu", None
    reason = gpu_decoder_available(device if device is not None else "cpu")
    if reason is None:
        return "gpu", None
    if decoder == "gpu":
        raise GpuUnavailableError(reason)
    return "cpu", reason


def check_decoder_request(decoder: str, device: torch.device | str | None) -> None:
    """For the CLI, once before the run: an unknown ``--decoder``, or ``gpu`` without a usable GPU decoder, is a
    usage error (exit 2, one line), not one failure per file."""
    from .reader import DECODERS

    if decoder not in DECODERS:
        raise UsageError(f"--decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
    choose_decoder(decoder, device)


# --- the reader ---------------------------------------------------------------------------------------------


def _cap(caps: Any, key: str, default: Any = None) -> Any:
    """A field of ``GetDecoderCaps``' answer (a dict in 2.x; attribute access tolerated)."""
    try:
        return caps[key]
    except (TypeError, KeyError, IndexError):
        return getattr(caps, key, default)


def _enum_name(value: Any) -> str:
    """``cudaVideoCodec.H264`` -> "h264" (pybind11 enums have ``.name``)."""
    name = getattr(value, "name", None) or str(value).rsplit(".", 1)[-1]
    return str(name).lower()


_NV_CODEC_NAMES = {"h264": "h264", "hevc": "hevc", "vp9": "vp9", "av1": "av1", "vp8": "vp8", "mpeg4": "mpeg4",
                   "mpeg2": "mpeg2video", "mpeg1": "mpeg1video", "vc1": "vc1", "jpeg": "mjpeg"}


class _NvdecBackend:
    """PyNvVideoCodec ``SimpleDecoder``: random access by frame index, RGB on the GPU, DLPack into torch."""

    name = "nvdec"
    _adopt_size = False

    def __init__(self, path: str, device: torch.device, nvc: Any):
        self._nvc = nvc
        self.device = device
        gpu_id = device.index if device.type == "cuda" and device.index is not None else 0
        # Check the stream before creating an NVDEC session: codec, bit depth, and the GPU's limits.
        # Demuxer methods: API reference "Demuxer" (GetNvCodecId, ChromaFormat, BitDepth, Width, Height);
        # GetDecoderCaps(gpuid, codec, chromaformat, bitdepth) -> {"supported", "width_min/max", "height_min/max",
        # "mb_num_max", ...}, used the same way by vLLM's PyNvVideoCodec loader (_validate_decoder_caps).
        try:
            dmx = nvc.CreateDemuxer(path)
        except Exception as e:
            raise _OpenFailure(_first_line(e))
        codec_id = dmx.GetNvCodecId()
        self.codec = _NV_CODEC_NAMES.get(_enum_name(codec_id), _enum_name(codec_id))
        bit_depth = int(dmx.BitDepth())
        why = gpu_codec_reason(self.codec, bit_depth)
        if why:
            raise _Unsupported(why)
        width, height = int(dmx.Width()), int(dmx.Height())
        try:
            caps = nvc.GetDecoderCaps(gpu_id, codec_id, dmx.ChromaFormat(), bit_depth)
        except Exception:  # no caps query in this version: the decoder's own checks decide
            caps = None
        if caps is not None:
            if not _cap(caps, "supported", True):
                raise _Unsupported(f"this GPU's NVDEC does not decode this {self.codec} stream (profile or "
                                   "chroma format)")
            wmax, hmax = int(_cap(caps, "width_max", 0) or 0), int(_cap(caps, "height_max", 0) or 0)
            wmin, hmin = int(_cap(caps, "width_min", 0) or 0), int(_cap(caps, "height_min", 0) or 0)
            if (wmax and width > wmax) or (hmax and height > hmax) or width < wmin or height < hmin:
                raise _Unsupported(f"{width}x{height} is outside this GPU's NVDEC limits for {self.codec} "
                                   f"({wmin}x{hmin} to {wmax}x{hmax})")
        del dmx
        # The decoder's post-processing (NV12 -> RGB) runs on our stream; frames are read on it, then handed to
        # the caller's stream (torch.cuda.Stream.cuda_stream: the raw cudaStream_t, as the SimpleDecoder docs'
        # cuda_stream parameter wants; vLLM passes it the same way).
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        kwargs = dict(gpu_id=gpu_id, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
        if self._stream is not None:
            kwargs["cuda_stream"] = self._stream.cuda_stream
        try:
            self._dec = nvc.SimpleDecoder(path, **kwargs)
        except Exception as e:
            # SimpleDecoder raises "Elementary streams not supported ..." when the container states no frame count
            # (WebM often does not): count the packets instead (need_scanned_stream_metadata, a demux-only scan).
            if "lementary stream" not in str(e):
                raise _OpenFailure(_first_line(e))
            try:
                self._dec = nvc.SimpleDecoder(path, need_scanned_stream_metadata=True, **kwargs)
            except Exception as e2:
                raise _OpenFailure(_first_line(e2))
        meta = self._dec.get_stream_metadata()  # width, height, num_frames, average_fps, duration, codec_name
        self.num_frames = int(len(self._dec))
        fps = float(getattr(meta, "average_fps", 0.0) or 0.0)
        self.fps = fps if math.isfinite(fps) and 0 < fps < 10000 else 0.0
        self.width = int(getattr(meta, "width", 0) or width)
        self.height = int(getattr(meta, "height", 0) or height)
        # Decode frame 0: proves the stream decodes (as the CPU reader does at open) and gives the frame size the
        # decoder really delivers (the container's may differ, e.g. a coded size of 1088 for 1080 lines).
        self._adopt_size = True
        try:
            self.decode([0])
        finally:
            self._adopt_size = False

    def decode(self, uniq: Sequence[int]) -> torch.Tensor:
        """Sorted distinct indices -> uint8 [N, H, W, 3] on the device, ready on the caller's current stream."""
        dev = self.device
        consumer = torch.cuda.current_stream(dev) if self._stream is not None else None
        ctx = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
        with ctx:
            out = torch.empty((len(uniq), self.height, self.width, 3), dtype=torch.uint8, device=dev)
            k = 0
            for start in range(0, len(uniq), _BATCH):
                chunk = [int(i) for i in uniq[start:start + _BATCH]]
                try:
                    frames = self._dec.get_batch_frames_by_index(chunk)
                except Exception as e:
                    raise _DecodeError(_first_line(e), k)
                for frame in frames:
                    if k >= len(uniq):
                        break
                    # DLPack: samples/utils/Utils.py convert_frames_to_torch (RGB frames are HWC uint8)
                    t = _to_hwc(torch.from_dlpack(frame), self.height, self.width)
                    if tuple(t.shape[:2]) != (self.height, self.width):
                        if not (self._adopt_size and k == 0):
                            raise _DecodeError(f"a {t.shape[1]}x{t.shape[0]} frame in a {self.width}x{self.height} "
                                               "video (does the frame size change inside it?)", k)
                        self.height, self.width = int(t.shape[0]), int(t.shape[1])
                        out = torch.empty((len(uniq), self.height, self.width, 3), dtype=torch.uint8, device=dev)
                    out[k].copy_(t)  # our own memory: the decoder may reuse its surfaces on the next call
                    k += 1
                if self._stream is not None:
                    # The copies must be done before the frames (and their surfaces) are released. Stream order
                    # should already guarantee it; waiting per batch of <= 32 frames, in a decode worker thread,
                    # is the conservative choice until measured on a GPU (vLLM's loader also syncs per batch).
                    self._stream.synchronize()
                del frames
                if k < start + len(chunk):
                    raise _DecodeError(f"NVDEC returned {k - start} of the {len(chunk)} frames asked for "
                                       f"from index {chunk[0]} (corrupt or cut-off data?)", k)
        if consumer is not None:
            consumer.wait_stream(self._stream)
            out.record_stream(consumer)
        return out

    def timestamps(self, idx: np.ndarray) -> list[float]:
        return [float(i) / self.fps if self.fps else float("nan") for i in idx]

    def close(self) -> None:
        dec, self._dec = getattr(self, "_dec", None), None
        if dec is not None and self._stream is not None:
            self._stream.synchronize()  # no kernel of ours may still read a surface the decoder frees
        del dec


class _DecordGpuBackend:
    """decord's GPU context (a decord built with CUDA); frames come back as decord NDArrays in GPU memory."""

    name = "decord-gpu"

    def __init__(self, path: str, device: torch.device, codec: str):
        decord = _import_decord()
        self._decord = decord
        self.device = device
        self.codec = codec
        why = gpu_codec_reason(codec, None)
        if why:
            raise _Unsupported(why)
        try:
            self._vr = decord.VideoReader(path, ctx=decord.gpu(device.index or 0), num_threads=1)
        except Exception as e:
            text = str(e)
            if any(s in text for s in _DECORD_NO_CUDA):
                raise _Unsupported("the installed decord was built without CUDA")
            raise _OpenFailure(_first_line(e))
        self.num_frames = len(self._vr)
        fps = float(self._vr.get_avg_fps() or 0.0)
        self.fps = fps if math.isfinite(fps) and 0 < fps < 10000 else 0.0
        try:  # frame 0: proves the stream decodes, gives the size
            h, w = self._vr[0].shape[:2]
        except Exception as e:
            raise _DecodeError(_first_line(e), 0)
        self.height, self.width = int(h), int(w)

    def decode(self, uniq: Sequence[int]) -> torch.Tensor:
        try:
            arr = self._vr.get_batch([int(i) for i in uniq])
        except Exception as e:
            raise _DecodeError(_first_line(e), None)
        # decord/bridge/torchdl.py to_torch: torch.utils.dlpack.from_dlpack(arr.to_dlpack()), memory shared
        t = self._decord.bridge.to_torch(arr)
        return t if t.device == self.device else t.to(self.device)

    def timestamps(self, idx: np.ndarray) -> list[float]:
        ts = self._vr.get_frame_timestamp(np.asarray(idx, dtype=np.int64))
        return [float(x) for x in np.asarray(ts).reshape(len(idx), -1)[:, 0]]

    def close(self) -> None:
        self._vr = None


class _OpenFailure(Exception):
    """Internal: the GPU decoder could not open the file (maybe not a video)."""


class _Unsupported(Exception):
    """Internal: the file is a video the GPU path does not take."""


class _DecodeError(Exception):
    def __init__(self, message: str, decoded: int | None):
        super().__init__(message)
        self.decoded = decoded


def _to_hwc(t: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One decoded frame as [H, W, 3]: RGB (interleaved) arrives [H, W, 3]; planar layouts are tolerated."""
    if t.dtype != torch.uint8:
        raise _DecodeError(f"NVDEC delivered {t.dtype} frames, not uint8 RGB", None)
    if t.ndim == 3 and t.shape[-1] == 3:
        return t
    if t.ndim == 3 and t.shape[0] == 3:
        return t.permute(1, 2, 0)
    if t.ndim == 2 and t.shape[0] == 3 * height:  # planar RGB as [3H, W]
        return t.reshape(3, height, width).permute(1, 2, 0)
    if t.ndim == 2 and t.shape[1] == 3 * width:
        return t.reshape(height, width, 3)
    raise _DecodeError(f"NVDEC delivered a frame of shape {tuple(t.shape)}, not {height}x{width} RGB", None)


def _probe_codec(path: str) -> str:
    """FFmpeg codec name from OpenCV's FourCC (as :attr:`tokshift_cli.video.reader.VideoReader.codec`)."""
    from .reader import _FOURCC_CODECS, _import_cv2

    try:
        cv2 = _import_cv2()
        cap = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
        try:
            fourcc = int(cap.get(cv2.CAP_PROP_FOURCC) or 0) if cap.isOpened() else 0
        finally:
            cap.release()
    except Exception:
        return "unknown"
    tag = fourcc.to_bytes(4, "little").decode("latin-1").strip("\x00 ").lower() if fourcc > 0 else ""
    return _FOURCC_CODECS.get(tag, tag or "unknown")


class GpuVideoReader(_ReaderLifetime):
    """One video decoded on the GPU; the interface of :class:`tokshift_cli.video.reader.VideoReader`, except that
    :meth:`get_frames` and :meth:`sample` return **torch.uint8 tensors on the CUDA device** ``[..., H, W, 3]``.

    Attributes: ``path``, ``device``, ``decoder`` ("nvdec" | "decord-gpu"; after a CPU fallback the CPU
    decoder's name), ``requested_decoder``, ``num_frames``, ``reported_frames``, ``fps``, ``duration``, ``width``,
    ``height``, ``codec``, ``fallback_reason``, ``warnings``. Use :func:`open_video_gpu`.

    ``fallback=True`` (what ``--decoder auto`` uses): when decoding fails on the GPU, :meth:`sample` and
    :meth:`get_frames` decode again with the CPU decoders and upload the frames (:func:`upload_frames`), so the
    file gets the CPU path's diagnosis (truncation recovery included) and never fails for the GPU's sake.
    Not thread-safe: one reader per thread.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cuda", *, backend: str = "auto",
                 fallback: bool = False, num_threads: int | None = None, min_decodable: float = 0.9):
        from .reader import _decoder_path, _precheck, _unreadable_reason, container_truncation

        self._backend: Any = None
        self._cpu: Any = None
        self._tmpdir: str | None = None
        self.path = os.fspath(path) if not isinstance(path, bytes) else os.fsdecode(path)
        self.device = cuda_device(device)
        self.requested_decoder = "auto" if fallback else "gpu"
        self.fallback = bool(fallback)
        self.num_threads, self.min_decodable = num_threads, float(min_decodable)
        self.fallback_reason: str | None = None
        self.warnings: list[str] = []
        head = _precheck(self.path)  # "no such file", "file is empty (0 bytes)", "permission denied", ...
        from . import reader as _video

        sniff = getattr(_video, "_not_a_video", None)  # images, text, archives: refused from their first bytes
        sniffed = sniff(head) if sniff is not None else None
        if sniffed:
            raise VideoError(self.path, sniffed)
        self._open_path, self._tmpdir = _decoder_path(self.path)
        try:
            cut = container_truncation(self._open_path)
            if cut is not None:
                raise GpuUnsupportedVideoError(self.path, f"the file is cut short ({cut[0]} of {cut[1]} bytes); "
                                                          "cut-off files are decoded on the CPU")
            name = backend
            if backend == "auto":
                name, why = _pick_backend(self.device, "auto")
                if name is None:
                    raise GpuUnavailableError(why or "no GPU decoder")
            try:
                if name == "nvdec":
                    mod, why = _nvc()
                    if mod is None:
                        raise GpuUnavailableError(why or "PyNvVideoCodec is not usable")
                    self._backend = _NvdecBackend(self._open_path, self.device, mod)
                elif name == "decord-gpu":
                    self._backend = _DecordGpuBackend(self._open_path, self.device, _probe_codec(self._open_path))
                else:
                    raise ValueError(f"backend {backend!r}: choose auto, {', '.join(GPU_BACKENDS)}")
            except _Unsupported as e:
                raise GpuUnsupportedVideoError(self.path, str(e)) from None
            except _DecodeError as e:  # frame 0 did not decode
                raise VideoError(self.path, f"no decodable frames ({name}: {e})") from None
            except _OpenFailure as e:
                reason = _unreadable_reason(head)
                if reason.startswith("not a video file, or"):
                    reason += f" ({name}: {e})"
                raise VideoError(self.path, reason) from None
            b = self._backend
            self.codec: str = b.codec
            self.width, self.height = int(b.width), int(b.height)
            self.reported_frames = self.num_frames = int(b.num_frames)
            self.fps = float(b.fps)
            if self.num_frames < 1:
                raise VideoError(self.path, "no decodable frames (the GPU decoder found none)")
        except BaseException:
            self.close()
            raise

    # -- properties ----------------------------------------------------------------------------------------
    @property
    def decoder(self) -> str:
        if self._cpu is not None:
            return self._cpu.decoder
        return self._backend.name if self._backend is not None else "closed"

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else float("nan")

    @property
    def container_frames(self) -> int | None:
        return self.reported_frames

    @property
    def expected_frames(self) -> int:
        return self.reported_frames

    # -- decoding ------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._backend is None and self._cpu is None:
            raise VideoError(self.path, "the video is closed")

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Frames by 0-based index: torch.uint8 ``[*indices.shape, H, W, 3]`` RGB on :attr:`device`.

        Each distinct index is decoded once, in ascending order (NVDEC seeks to each run of wanted frames); repeated
        indices are copies on the GPU. ``IndexError`` outside ``[0, num_frames)``; :class:`VideoError` when the
        GPU cannot decode them (with ``fallback=True``: the CPU decoders decode them instead)."""
        self._check_open()
        if self._cpu is None:
            try:
                return self._gpu_frames(indices)
            except _DecodeError as e:
                self._gpu_failed(e)
        return upload_frames(self._cpu.get_frames(indices), self.device)

    def _gpu_frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64)
        flat = self._checked_indices(idx)
        uniq, inverse = np.unique(flat, return_inverse=True)
        if uniq.size == 0:
            return torch.empty((*idx.shape, self.height, self.width, 3), dtype=torch.uint8, device=self.device)
        frames = self._backend.decode(uniq.tolist())
        if tuple(frames.shape[1:]) != (self.height, self.width, 3):
            raise _DecodeError(f"frames of shape {tuple(frames.shape[1:])}, not {self.height}x{self.width} RGB "
                               "(does the frame size change inside the video?)", None)
        if len(uniq) != flat.size or not np.array_equal(uniq, flat):  # re-expand duplicates / restore order
            frames = frames.index_select(0, torch.from_numpy(inverse.reshape(-1)).to(frames.device))
        return frames.reshape(*idx.shape, *frames.shape[1:])

    def _gpu_failed(self, error: "_DecodeError") -> None:
        """The GPU could not decode: a VideoError, or (``fallback=True``) continue on the CPU decoders."""
        reason = f"{self._backend.name}: {error}"
        if not self.fallback:
            raise VideoError(self.path, f"the GPU decoder failed ({reason}); try --decoder cpu") from None
        from .reader import VideoReader

        cpu = VideoReader(self.path, "auto", num_threads=self.num_threads, min_decodable=self.min_decodable)
        self._backend.close()
        self._backend, self._cpu = None, cpu
        self.fallback_reason = f"gpu: {reason}"
        self.num_frames, self.fps, self.warnings = cpu.num_frames, cpu.fps, cpu.warnings

    def sample(self, sampler: Callable[[int], np.ndarray]) -> tuple[np.ndarray, torch.Tensor]:
        """``indices = sampler(num_frames)`` and their frames (a CUDA tensor); returns ``(indices, frames)``.
        With ``fallback=True`` a GPU failure hands the file to the CPU reader's
        :meth:`~tokshift_cli.video.reader.VideoReader.sample`, which re-draws the indices over the frames that decode
        when a file is shorter than its header says."""
        self._check_open()
        if self._cpu is None:
            indices = np.asarray(sampler(self.num_frames))
            try:
                return indices, self._gpu_frames(indices)
            except _DecodeError as e:
                self._gpu_failed(e)
        indices, frames = self._cpu.sample(sampler)
        self.num_frames = self._cpu.num_frames
        return indices, upload_frames(frames, self.device)

    def timestamps(self, indices: Sequence[int] | np.ndarray) -> list[float]:
        """Seconds of each frame index (NVDEC: ``index / fps``; decord-gpu and after a CPU fallback: the
        stream's timestamps)."""
        self._check_open()
        if self._cpu is not None:
            return self._cpu.timestamps(indices)
        return self._backend.timestamps(self._checked_indices(indices))

    # -- lifetime ------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._cpu is not None:
            self._cpu.close()
            self._cpu = None
        super().close()

    def __repr__(self) -> str:
        return (f"GpuVideoReader({self.path!r}, decoder={self.decoder!r}, device={str(self.device)!r}, "
                f"frames={getattr(self, 'num_frames', '?')}, fps={getattr(self, 'fps', 0):g}, "
                f"size={getattr(self, 'width', '?')}x{getattr(self, 'height', '?')})")


def open_video_gpu(path: str | os.PathLike, device: torch.device | str = "cuda", *, backend: str = "auto",
                   fallback: bool = False, num_threads: int | None = None,
                   min_decodable: float = 0.9) -> GpuVideoReader:
    """Open ``path`` on a GPU decoder; a context manager. Raises :class:`GpuUnavailableError` (no GPU decoder
    here), :class:`GpuUnsupportedVideoError` (this file is for the CPU decoders: codec, bit depth, size, cut
    short) or :class:`VideoError` with the CPU reader's one-line reasons ("no such file", "file is empty (0
    bytes)", "not a video file (it is text: ...)", ...). ``fallback``: see :class:`GpuVideoReader`."""
    return GpuVideoReader(path, device, backend=backend, fallback=fallback, num_threads=num_threads,
                          min_decodable=min_decodable)


def open_video_routed(path: str | os.PathLike, decoder: str = "auto", device: torch.device | str | None = None,
                      *, num_threads: int | None = None, min_decodable: float = 0.9) -> Any:
    """Open ``path`` following the ``--decoder`` rule (module docstring): a :class:`GpuVideoReader` (frames are
    CUDA tensors) or a :class:`tokshift_cli.video.reader.VideoReader` (frames are numpy arrays).

    ``decoder``: "auto" | "gpu" | "cpu" | "decord" | "opencv"; ``device``: where the model runs. With "auto",
    a file the GPU path does not take (or cannot open) goes to the CPU decoders and the reader's
    ``fallback_reason`` starts with ``"gpu: "``."""
    from .reader import VideoReader

    use, reason = choose_decoder(decoder, device)
    if use == "gpu":
        try:
            return open_video_gpu(path, device, fallback=(decoder == "auto"),  # type: ignore[arg-type]
                                  num_threads=num_threads, min_decodable=min_decodable)
        except (GpuUnsupportedVideoError, GpuUnavailableError) as e:
            if decoder == "gpu":
                raise
            reason = e.reason
        except VideoError as e:
            if decoder == "gpu":
                raise
            reason = e.reason  # a broken file: the CPU decoders give their own (fuller) diagnosis
    cpu_decoder = decoder if decoder in ("decord", "opencv") else "auto"
    reader = VideoReader(path, cpu_decoder, num_threads=num_threads, min_decodable=min_decodable)
    if reason is not None and decoder == "auto" and device is not None and torch.device(device).type == "cuda":
        reader.fallback_reason = f"gpu: {reason}" + (f"; {reader.fallback_reason}" if reader.fallback_reason
                                                     else "")
    return reader


