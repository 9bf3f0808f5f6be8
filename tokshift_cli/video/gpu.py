"""Decode on the GPU (NVDEC) and the ``--decoder`` rule. Optional (``pip install 'tokshift-cli[gpu]'``).

::

    reason = gpu_decoder_available("cuda")          # None: usable; else why not, in one line
    with open_video_gpu("clip.mp4", "cuda") as video:
        frames = video.get_frames([0, 32, 64])      # torch.uint8 [3, H, W, 3] RGB on the CUDA device

Two GPU decoders, tried in this order (``backend="auto"``): ``"nvdec"``, NVIDIA's PyNvVideoCodec (its
``SimpleDecoder`` decodes the requested frames on NVDEC, converted to RGB on the GPU and handed to torch through
DLPack), and ``"decord-gpu"``, decord's GPU context where the installed decord was built with CUDA.

The ``--decoder`` rule (:func:`choose_decoder`, :func:`open_video_routed`):

* ``pyav``/``decord``: that CPU decoder (:mod:`tokshift_cli.video.reader`, :mod:`tokshift_cli.video.decord_reader`).
* ``auto`` (default): the GPU when the model runs on CUDA, a GPU decoder is usable and the file's codec is one of
  :data:`NVDEC_CODECS`; otherwise the CPU, silently. A file the GPU fails to decode is decoded again on the CPU.
* ``gpu``: the GPU or an error: no usable GPU decoder raises :class:`GpuUnavailableError` (a usage error, exit 2;
  :func:`check_decoder_request` checks it before the run); a file the GPU decoder does not take fails that file
  with :class:`GpuUnsupportedVideoError` (exit 1; the others go on).

Frames from a :class:`GpuVideoReader` are torch tensors on the CUDA device, not numpy arrays; GPU decoding runs
in the main process's decode threads (:func:`tokshift_cli.engine.ordered_prefetch`), since CUDA frames cannot
cross the pipes of :mod:`tokshift_cli.video.workers`. Moving CPU-decoded frames to the GPU is
:mod:`tokshift_cli.video.staging`'s. What was verified on a GPU and what was not: docs/gpu.md.
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

from ..errors import GpuUnsupportedVideoError, VideoError
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
#: Containers whose frame numbers NVDEC's demuxer counts the way a player shows them (FFmpeg format names).
NVDEC_CONTAINERS = ("mov", "matroska")
#: Frames per ``get_batch_frames_by_index`` call: bounds the decoder surfaces held at once (vLLM's PyNvVideoCodec
#: loader uses the same bound, PYNVVIDEOCODEC_DECODE_BATCH_SIZE = 32).
_BATCH = 32
_INSTALL_HINT = "pip install 'tokshift-cli[gpu]'"


# --- availability -------------------------------------------------------------------------------------------

_state_lock = threading.Lock()
_nvc_module: Any = None
_nvc_reason: str | None = None
_nvc_checked = False
_decord_gpu: dict[int, str | None] = {}  # gpu id -> None (decord has CUDA) or the reason it has not


def _first_line(e: BaseException) -> str:
    from .decord_reader import decord_reason

    return decord_reason(e)


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
            import av

            probe = os.path.join(tmp, "probe.avi")
            with av.open(probe, "w") as out:
                st = out.add_stream("mjpeg", rate=25)
                st.width = st.height = 64
                st.pix_fmt = "yuvj420p"
                for i in range(4):
                    frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * i, np.uint8), format="rgb24")
                    for pkt in st.encode(frame):
                        out.mux(pkt)
                for pkt in st.encode():
                    out.mux(pkt)
            try:
                decord.VideoReader(probe, ctx=decord.gpu(gpu_id))
                reason = None
            except Exception as e:  # decord.DECORDError (a RuntimeError)
                text = str(e)
                if any(s in text for s in _DECORD_NO_CUDA):
                    reason = "the installed decord was built without CUDA"
                else:  # a CUDA build that dislikes MJPEG: the real files decide
                    reason = None
        except Exception as e:  # PyAV could not write the probe
            reason = f"could not probe decord's GPU support ({_first_line(e)})"
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    with _state_lock:
        _decord_gpu[gpu_id] = reason
    return reason


def _import_decord() -> Any:
    """decord through :func:`tokshift_cli.video.decord_reader.import_decord`, which keeps decord2's import from
    loading libnvblas (it hijacks torch's BLAS: torch's next matrix multiply segfaults)."""
    from .decord_reader import import_decord

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

    ``decoder``: "auto", "gpu" or a CPU decoder of :mod:`tokshift_cli.video.decoders`. ``device``: where the model
    runs (None: the CPU). Raises :class:`GpuUnavailableError` for ``"gpu"`` when no GPU decoder is usable."""
    from .decoders import AUTO, is_gpu

    if decoder != AUTO and not is_gpu(decoder):
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
    from .decoders import check_decoder

    choose_decoder(check_decoder(decoder), device)


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


class GpuVideoReader(_ReaderLifetime):
    """One video decoded on the GPU; the interface of :class:`tokshift_cli.video.reader.VideoReader`, except that
    :meth:`get_frames` and :meth:`sample` return **torch.uint8 tensors on the CUDA device** ``[..., H, W, 3]``.

    The file is opened with PyAV first (:class:`~tokshift_cli.video.reader.VideoReader`: its index, stream choice,
    geometry and cut-off checks, so frame ``k`` means the same on both routes); NVDEC then decodes by frame
    number only where that number is the display rank: MP4/MOV/Matroska/WebM with one video stream, no edit
    list, timestamps that identify every frame, and the same frame count as PyAV's index
    (:data:`NVDEC_CONTAINERS`). Elsewhere the file is "not for the GPU" (:class:`GpuUnsupportedVideoError`).

    Attributes as the CPU reader's (``num_frames``, ``fps``, ``width``/``height`` as shown, ``geometry``,
    ``codec``, ``warnings``, :meth:`info`, :meth:`timestamps`), plus ``device`` and ``decoder`` ("nvdec" |
    "decord-gpu"; after a CPU fallback "pyav"). ``fallback=True`` (what ``--decoder auto`` uses): when decoding
    fails on the GPU, frames come from the CPU reader and are uploaded (:func:`upload_frames`). Not thread-safe.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cuda", *, backend: str = "auto",
                 fallback: bool = False, num_threads: int | None = None, min_decodable: float = 0.9,
                 stream: int | None = None):
        from .reader import VideoReader

        self._backend: Any = None
        self._cpu: Any = None
        self._on_cpu = False
        self._tmpdir = None
        self.path = os.fspath(path) if not isinstance(path, bytes) else os.fsdecode(path)
        self.device = cuda_device(device)
        self.requested_decoder = "auto" if fallback else "gpu"
        self.fallback = bool(fallback)
        self.fallback_reason: str | None = None
        # "no such file", "not a video file (...)", cut short...: the CPU reader's diagnosis
        self._cpu = VideoReader(self.path, num_threads=num_threads, min_decodable=min_decodable, stream=stream)
        try:
            why = self._not_for_gpu()
            if why:
                raise GpuUnsupportedVideoError(self.path, why)
            name = backend
            if backend == "auto":
                name, why = _pick_backend(self.device, "auto")
                if name is None:
                    raise GpuUnavailableError(why or "no GPU decoder")
            open_path = self._cpu._open_path
            try:
                if name == "nvdec":
                    mod, why = _nvc()
                    if mod is None:
                        raise GpuUnavailableError(why or "PyNvVideoCodec is not usable")
                    self._backend = _NvdecBackend(open_path, self.device, mod)
                elif name == "decord-gpu":
                    self._backend = _DecordGpuBackend(open_path, self.device, self._cpu.codec)
                else:
                    raise ValueError(f"backend {backend!r}: choose auto, {', '.join(GPU_BACKENDS)}")
            except _Unsupported as e:
                raise GpuUnsupportedVideoError(self.path, str(e)) from None
            except (_DecodeError, _OpenFailure) as e:
                raise GpuUnsupportedVideoError(self.path, f"{name} cannot decode it ({e})") from None
            b = self._backend
            if int(b.num_frames) != self._cpu.num_frames:
                raise GpuUnsupportedVideoError(self.path, f"{name} counts {b.num_frames} frames where "
                                                          f"{self._cpu.num_frames} are shown")
            if (int(b.width), int(b.height)) != (self._cpu.stored_width, self._cpu.stored_height):
                raise GpuUnsupportedVideoError(self.path, f"{name} decodes {b.width}x{b.height} frames, the "
                                                          f"stream is {self._cpu.stored_width}x"
                                                          f"{self._cpu.stored_height}")
        except BaseException:
            self.close()
            raise

    def _not_for_gpu(self) -> str | None:
        """Why frame numbers on NVDEC could differ from display ranks here (None: they cannot)."""
        cpu = self._cpu
        why = gpu_codec_reason(cpu.codec, None)
        if why:
            return why
        if cpu.container_format not in NVDEC_CONTAINERS:
            return f"{cpu.container_format} files are decoded on the CPU (the GPU path takes MP4/MOV/MKV/WebM)"
        if cpu.by_rank or not cpu.index.reliable:
            return "its timestamps do not identify its frames"
        if cpu.index.hidden:
            return "an edit list hides some of its frames"
        if len(cpu._container.streams.video) != 1:
            return "it has several video streams"
        if cpu.warnings:
            return cpu.warnings[0]
        return None

    # -- what the CPU reader knows -------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in ("fps", "duration", "geometry", "width", "height", "stored_width", "stored_height",
                    "codec", "warnings", "info", "timestamps", "expected_frames", "container_format",
                    "stream_index", "start_time", "by_rank", "index"):
            cpu = self.__dict__.get("_cpu")
            if cpu is None:
                raise VideoError(self.__dict__.get("path", "?"), "the video is closed")
            return getattr(cpu, name)
        raise AttributeError(name)

    @property
    def num_frames(self) -> int:  # type: ignore[override]
        self._check_open()
        return self._cpu.num_frames

    def _checked_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        self._check_open()
        return self._cpu._checked_indices(indices)

    @property
    def decoder(self) -> str:
        if self._cpu is None:
            return "closed"
        if self._on_cpu or self._backend is None:
            return "pyav"
        return self._backend.name

    def _check_open(self) -> None:
        if self._cpu is None:
            raise VideoError(self.path, "the video is closed")

    # -- decoding ------------------------------------------------------------------------------------------
    def get_frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Frames by 0-based index: torch.uint8 ``[*indices.shape, H, W, 3]`` RGB (as stored) on :attr:`device`.
        Each distinct index is decoded once; repeated indices are copies on the GPU. ``IndexError`` outside
        ``[0, num_frames)``; :class:`VideoError` when the GPU cannot decode them (with ``fallback=True``: the CPU
        decodes them instead)."""
        self._check_open()
        if not self._on_cpu:
            try:
                return self._gpu_frames(indices)
            except _DecodeError as e:
                self._gpu_failed(e)
        return upload_frames(self._cpu.get_frames(indices), self.device)

    def _gpu_frames(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64)
        flat = self._checked_indices(idx)
        uniq, inverse = np.unique(flat, return_inverse=True)
        h, w = self._cpu.stored_height, self._cpu.stored_width
        if uniq.size == 0:
            return torch.empty((*idx.shape, h, w, 3), dtype=torch.uint8, device=self.device)
        frames = self._backend.decode(uniq.tolist())
        if tuple(frames.shape[1:]) != (h, w, 3):
            raise _DecodeError(f"frames of shape {tuple(frames.shape[1:])}, not {h}x{w} RGB "
                               "(does the frame size change inside the video?)", None)
        if len(uniq) != flat.size or not np.array_equal(uniq, flat):  # re-expand duplicates / restore order
            frames = frames.index_select(0, torch.from_numpy(inverse.reshape(-1)).to(frames.device))
        return frames.reshape(*idx.shape, *frames.shape[1:])

    def _gpu_failed(self, error: "_DecodeError") -> None:
        """The GPU could not decode: a VideoError, or (``fallback=True``) continue on the CPU reader."""
        reason = f"{self._backend.name}: {error}"
        if not self.fallback:
            raise VideoError(self.path, f"the GPU decoder failed ({reason}); try --decoder cpu") from None
        self._backend.close()
        self._backend, self._on_cpu = None, True
        self.fallback_reason = f"gpu: {reason}"

    def sample(self, sampler: Callable[[int], np.ndarray]) -> tuple[np.ndarray, torch.Tensor]:
        """``indices = sampler(num_frames)`` and their frames (a CUDA tensor); returns ``(indices, frames)``.
        With ``fallback=True`` a GPU failure hands the file to the CPU reader's
        :meth:`~tokshift_cli.video.reader.VideoReader.sample`."""
        self._check_open()
        if not self._on_cpu:
            indices = np.asarray(sampler(self._cpu.num_frames))
            try:
                return indices, self._gpu_frames(indices)
            except _DecodeError as e:
                self._gpu_failed(e)
        indices, frames = self._cpu.sample(sampler)
        return indices, upload_frames(frames, self.device)

    # -- lifetime ------------------------------------------------------------------------------------------
    def _release(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
        if self._cpu is not None:
            self._cpu.close()
            self._cpu = None

    def __repr__(self) -> str:
        return f"GpuVideoReader({self.path!r}, decoder={self.decoder!r}, device={str(self.device)!r})"


def open_video_gpu(path: str | os.PathLike, device: torch.device | str = "cuda", *, backend: str = "auto",
                   fallback: bool = False, num_threads: int | None = None, min_decodable: float = 0.9,
                   stream: int | None = None) -> GpuVideoReader:
    """Open ``path`` on a GPU decoder; a context manager. Raises :class:`GpuUnavailableError` (no GPU decoder
    here), :class:`GpuUnsupportedVideoError` (this file is for the CPU: codec, container, several streams, an
    edit list, cut short) or :class:`VideoError` with the CPU reader's one-line reasons ("no such file", "file is
    empty (0 bytes)", "not a video file (it is text: ...)", ...). ``fallback``: see :class:`GpuVideoReader`."""
    return GpuVideoReader(path, device, backend=backend, fallback=fallback, num_threads=num_threads,
                          min_decodable=min_decodable, stream=stream)


def open_video_routed(path: str | os.PathLike, decoder: str = "auto", device: torch.device | str | None = None,
                      *, num_threads: int | None = None, min_decodable: float = 0.9, stream: int | None = None
                      ) -> Any:
    """Open ``path`` following the ``--decoder`` rule (module docstring): a :class:`GpuVideoReader` (frames are
    CUDA tensors) or a :class:`tokshift_cli.video.reader.VideoReader` (frames are numpy arrays).

    ``decoder``: "auto", "gpu" or a CPU decoder of :mod:`tokshift_cli.video.decoders`; ``device``: where the model runs. With "auto", a
    file the GPU path does not take (or cannot open) goes to the CPU reader, whose ``fallback_reason`` starts
    with ``"gpu: "``."""
    from .decoders import decoder_class

    use, reason = choose_decoder(decoder, device)
    if use == "gpu":
        try:
            return open_video_gpu(path, device, fallback=(decoder == "auto"),  # type: ignore[arg-type]
                                  num_threads=num_threads, min_decodable=min_decodable, stream=stream)
        except (GpuUnsupportedVideoError, GpuUnavailableError) as e:
            if decoder == "gpu":
                raise
            reason = e.reason
        except VideoError as e:
            if decoder == "gpu":
                raise
            reason = e.reason  # a broken file: the CPU reader gives its own (fuller) diagnosis
    reader = decoder_class(decoder)(path, num_threads=num_threads, min_decodable=min_decodable, stream=stream)
    if reason is not None and decoder == "auto" and device is not None and torch.device(device).type == "cuda":
        reader.fallback_reason = f"gpu: {reason}"
    return reader


