"""transforms.py: geometry of the authors' crops, and closeness to their PIL pipeline on a real video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tokshift_cli.video import transforms
from tokshift_cli.video.transforms import crop_offsets, preprocess, resize_shape

DATA = Path(__file__).parent / "data"
ONE_LEVEL = 1 / 127.5  # one grey level in normalised units (mean 0.5, std 0.5): 0.00784


def norm(x: np.ndarray, mean=0.5, std=0.5) -> np.ndarray:
    return (x.astype(np.float32) / 255.0 - mean) / std


@pytest.fixture(scope="module")
def bikes_clip0():
    """Frames of the authors' first clip of bikes.mp4 (decoded with decord, as theirs), and their output."""
    from videogen import sample_video

    decord = pytest.importorskip("decord")
    ref = np.load(DATA / "preproc_bikes.npz")
    vr = decord.VideoReader(str(sample_video("bikes.mp4")), num_threads=1)
    frames = vr.get_batch([int(i) for i in ref["indices"][0]]).asnumpy()
    return frames, ref["clip0"].astype(np.float32)


def test_matches_authors_pil_pipeline(bikes_clip0, capsys):
    frames, ref = bikes_clip0
    out = preprocess(torch.from_numpy(frames), 224, crops=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert out.shape == (3, 8, 3, 224, 224) and out.dtype == torch.float32
    diff = np.abs(out.numpy() - ref)
    with capsys.disabled():
        print(f"\n[transforms] CPU uint8 path vs authors' PIL: max {diff.max():.5f}, mean {diff.mean():.6f} "
              f"(normalised units; 1 grey level = {ONE_LEVEL:.5f})")
    assert diff.max() <= ONE_LEVEL * 1.05   # measured 0.0081: one grey level, PIL-like rounding
    assert diff.mean() < 2e-4               # measured 0.00009
    per_crop = diff.reshape(3, -1).max(axis=1)
    assert (per_crop <= ONE_LEVEL * 1.05).all()  # the crops are in the authors' order: centre, left, right


def test_float_path_matches_authors_pipeline(bikes_clip0, capsys):
    """The path non-CPU devices take (float bicubic, clamp, round), run here on the CPU."""
    frames, ref = bikes_clip0
    x = torch.from_numpy(frames).movedim(-1, -3)
    r = transforms._resize_float(x, (224, 527))
    offsets = crop_offsets(224, 527, 224, 3)
    out = torch.stack([r[:, :, t:t + 224, l:l + 224] for t, l in offsets]) / 127.5 - 1
    diff = np.abs(out.numpy() - ref)
    with capsys.disabled():
        print(f"[transforms] float path vs authors' PIL: max {diff.max():.5f}, mean {diff.mean():.6f}")
    assert diff.max() <= 2 * ONE_LEVEL * 1.05  # measured 0.0158 (2 grey levels)
    assert diff.mean() < 0.0015                # measured 0.0011


def test_resize_shape_authors_arithmetic():
    assert resize_shape(272, 640, 224) == (224, 527)   # bikes: floor(640 / 272 * 224) = floor(527.06)
    assert resize_shape(640, 272, 224) == (527, 224)   # portrait
    assert resize_shape(256, 340, 224) == (224, 297)   # Kinetics' usual 340x256: 297.5 -> 297
    assert resize_shape(100, 100, 224) == (224, 224)
    assert resize_shape(16, 16, 224) == (224, 224)     # tiny: upscaled


def test_crop_offsets():
    assert crop_offsets(224, 527, 224, 1) == [(0, 151)]
    assert crop_offsets(224, 527, 224, 3) == [(0, 151), (0, 0), (0, 303)]   # centre, left, right
    assert crop_offsets(527, 224, 224, 3) == [(151, 0), (0, 0), (303, 0)]   # portrait: centre, top, bottom
    assert crop_offsets(224, 224, 224, 3) == [(0, 0)] * 3
    assert crop_offsets(256, 301, 224, 3) == [(16, 38), (16, 0), (16, 77)]  # int((301 - 224) / 2) = 38
    with pytest.raises(ValueError):
        crop_offsets(224, 527, 224, 2)


def test_landscape_crops_are_exact_slices():
    """Short side already 224: no resize, so every crop must equal a slice of the input exactly."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 224, 301, 3), dtype=np.uint8)
    out = preprocess(frames, 224, crops=3).numpy()
    expect = [frames[:, :, 38:262], frames[:, :, 0:224], frames[:, :, 77:301]]
    for k in range(3):
        np.testing.assert_allclose(out[k], norm(expect[k]).transpose(0, 3, 1, 2), atol=1e-6)


def test_portrait_crops_along_height():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 301, 224, 3), dtype=np.uint8)
    out = preprocess(frames, 224, crops=3).numpy()
    expect = [frames[:, 38:262], frames[:, 0:224], frames[:, 77:301]]
    for k in range(3):
        np.testing.assert_allclose(out[k], norm(expect[k]).transpose(0, 3, 1, 2), atol=1e-6)


def test_geometry_after_resize_keeps_marked_columns():
    """A 2x-downscaled landscape frame with a bright column block: it must land where the crops say."""
    frames = np.zeros((1, 448, 1200, 3), np.uint8)
    frames[:, :, 0:40] = 255          # left edge block -> only in the left crop
    frames[:, :, 1160:1200] = 255     # right edge block -> only in the right crop
    out = preprocess(frames, 224, crops=3).numpy()[:, 0, 0]  # [crops, H, W], red channel
    assert resize_shape(448, 1200, 224) == (224, 600)
    centre, left, right = out
    assert centre.max() < -0.99                         # centre crop (188..412) sees neither block
    assert left[:, :18].min() > 0.99 and left[:, 30:].max() < -0.99
    assert right[:, -18:].min() > 0.99 and right[:, :190].max() < -0.99


def test_tiny_and_single_frame_upscaled():
    frames = np.full((1, 16, 16, 3), 200, np.uint8)
    out = preprocess(frames, 224, crops=3)
    assert out.shape == (3, 1, 3, 224, 224)
    np.testing.assert_allclose(out.numpy(), norm(np.array(200)), atol=1e-6)  # flat stays flat: no overshoot
    frames = np.random.default_rng(2).integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    out = preprocess(frames, 224, crops=1)
    assert out.shape == (1, 1, 3, 224, 224)
    assert out.min() >= -1 and out.max() <= 1  # clamped: bicubic overshoot never leaves [0, 255]


def test_layouts_dims_and_dtype():
    rng = np.random.default_rng(3)
    nhwc = torch.from_numpy(rng.integers(0, 256, (6, 60, 90, 3), dtype=np.uint8))
    a = preprocess(nhwc, 32, crops=3)
    b = preprocess(nhwc.permute(0, 3, 1, 2).contiguous(), 32, crops=3)
    assert a.shape == (3, 6, 3, 32, 32)
    assert torch.equal(a, b)
    c = preprocess(nhwc.reshape(2, 3, 60, 90, 3), 32, crops=3)   # [clips, T, H, W, 3]
    assert c.shape == (3, 2, 3, 3, 32, 32)
    assert torch.equal(c.reshape(3, 6, 3, 32, 32), a)
    h = preprocess(nhwc, 32, crops=1, dtype=torch.float16, device="cpu")
    assert h.dtype == torch.float16 and h.is_contiguous()
    assert torch.allclose(h.float(), a[:1], atol=1e-3)


def test_mean_std_per_channel():
    frames = np.random.default_rng(4).integers(0, 256, (1, 32, 40, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    out = preprocess(frames, 32, crops=1, mean=mean, std=std).numpy()[0, 0]
    x = frames[0, :, 4:36].astype(np.float32) / 255
    expect = ((x - np.array(mean, np.float32)) / np.array(std, np.float32)).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expect, atol=1e-5)


def test_bad_inputs():
    with pytest.raises(TypeError):
        preprocess(np.zeros((1, 8, 8, 3), np.float32), 8)
    with pytest.raises(ValueError):
        preprocess(np.zeros((1, 8, 8, 4), np.uint8), 8)
    with pytest.raises(ValueError):
        preprocess(np.zeros((1, 8, 8, 3), np.uint8), 8, crops=2)
    with pytest.raises(ValueError):
        preprocess(np.zeros((1, 8, 8, 3), np.uint8), 8, mean=(0.5, 0.5))
