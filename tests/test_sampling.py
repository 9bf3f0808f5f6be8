"""sampling.py: the authors' dense test-time clip rule, exactly, and the --views option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tokshift_cli.errors import UsageError
from tokshift_cli.video.sampling import Views, clip_indices, unique_clips

DATA = Path(__file__).parent / "data"


def authors_read_clip(frame_cnt: int, t_size: int, t_step: int, sample_times: int) -> np.ndarray:
    """A literal transcription of ``read_clip`` in VideoNetworks/TokShift-Transformer ``data/dataset.py``,
    returning 0-based frame indices instead of opening ``img_%05d.jpg`` files (their file k is frame k-1)."""
    max_bound = max(frame_cnt - t_size * t_step + 1, 1)
    tick = 1.0 * frame_cnt / sample_times
    st_idxs = np.array([int(x * tick) for x in range(sample_times)])
    st_idxs = np.clip(st_idxs, 0, max_bound)
    clips = []
    for st_idx in st_idxs:
        st_idx = 0 if max_bound == 1 else st_idx
        idxs = [(idx * t_step + st_idx) % frame_cnt + 1 for idx in range(t_size)]
        clips.append([i - 1 for i in idxs])
    return np.array(clips)


def test_matches_authors_pipeline_on_bikes():
    ref = np.load(DATA / "preproc_bikes.npz")
    got = clip_indices(int(ref["num_frames"]), frames=8, stride=32, clips=10)
    assert got.shape == (10, 8) and got.dtype == np.int64
    np.testing.assert_array_equal(got, ref["indices"])


@pytest.mark.parametrize("frames,stride,clips", [(8, 32, 10), (8, 32, 1), (16, 32, 10), (8, 8, 4), (12, 32, 3),
                                                  (1, 1, 10), (8, 1, 7)])
def test_matches_literal_transcription(frames, stride, clips):
    for n in list(range(1, 300)) + [301, 333, 499, 500, 511, 512, 999, 1000, 1001, 2997, 30001]:
        np.testing.assert_array_equal(clip_indices(n, frames, stride, clips),
                                      authors_read_clip(n, frames, stride, clips), err_msg=f"n={n}")


def test_long_video_spreads_and_clamps_starts():
    idx = clip_indices(1000, 8, 32, 10)  # max_bound = 745, tick = 100
    np.testing.assert_array_equal(idx[:, 0], [0, 100, 200, 300, 400, 500, 600, 700, 745, 745])
    np.testing.assert_array_equal(idx[3], 300 + 32 * np.arange(8))
    assert idx.max() < 1000


def test_short_video_gives_identical_wrapped_clips():
    idx = clip_indices(100, 8, 32, 10)  # 100 < 8 * 32: every clip starts at 0 and wraps
    assert (idx == idx[0]).all()
    np.testing.assert_array_equal(idx[0], [0, 32, 64, 96, 28, 60, 92, 24])


def test_one_frame_video_is_all_zero():
    np.testing.assert_array_equal(clip_indices(1, 8, 32, 10), np.zeros((10, 8), np.int64))


def test_rejects_nonpositive():
    for args in [(0, 8, 32, 10), (10, 0, 32, 10), (10, 8, 0, 10), (10, 8, 32, 0)]:
        with pytest.raises(ValueError):
            clip_indices(*args)


def test_unique_clips():
    idx = clip_indices(250, 8, 32, 10)
    uniq, inverse = unique_clips(idx)
    assert uniq.shape == (1, 8)
    np.testing.assert_array_equal(inverse, np.zeros(10))
    np.testing.assert_array_equal(uniq[inverse], idx)

    idx = clip_indices(1000, 8, 32, 10)  # the last two clips coincide (both start at 745)
    uniq, inverse = unique_clips(idx)
    assert len(uniq) == 9
    np.testing.assert_array_equal(inverse, [0, 1, 2, 3, 4, 5, 6, 7, 8, 8])
    np.testing.assert_array_equal(uniq[inverse], idx)


@pytest.mark.parametrize("text,clips,crops", [("10x3", 10, 3), ("1x1", 1, 1), ("10X1", 10, 1), (" 4 x 3 ", 4, 3),
                                              ("2\u00d73", 2, 3), ("5*1", 5, 1)])
def test_views_parse(text, clips, crops):
    v = Views.parse(text)
    assert (v.clips, v.crops, v.num_views) == (clips, crops, clips * crops)
    assert str(v) == f"{clips}x{crops}"
    assert Views.parse(str(v)) == v and Views.parse(v) is v


@pytest.mark.parametrize("text,needle", [("10x2", "1 (centre) or 3"), ("10x5", "1 (centre) or 3"), ("0x3", "clips"),
                                         ("3", "CLIPSxCROPS"), ("axb", "CLIPSxCROPS"), ("", "CLIPSxCROPS"),
                                         ("-1x3", "CLIPSxCROPS")])
def test_views_parse_errors(text, needle):
    with pytest.raises(UsageError) as e:
        Views.parse(text)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_views_is_frozen_and_hashable():
    v = Views(10, 3)
    with pytest.raises(Exception):
        v.clips = 2  # type: ignore[misc]
    assert {v: 1}[Views(10, 3)] == 1
