"""The classify engine's batching and read-ahead: what the model is fed, and how far decoding runs ahead."""

from __future__ import annotations

import pytest
import torch

from videogen import make_video  # noqa: E402

from tokshift_cli import engine  # noqa: E402
from tokshift_cli.engine import ClassifyOptions, classify, default_batch_size, prefetch_depth  # noqa: E402
from tokshift_cli.video.sampling import Views  # noqa: E402
from tokshift_cli.models.weights import load_model  # noqa: E402
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return load_model(BUNDLED_UNTRAINED, device="cpu")


def test_cpu_default_batch_is_two_views_across_videos(tiny, tmp_path, monkeypatch):
    """Views of several videos share a call; every call holds exactly the batch size (the last one padded with
    zero views), so a video's scores never depend on which other videos shared its calls."""
    videos = [str(make_video(tmp_path / f"v{i}.mp4", frames=12, width=96, height=64)) for i in range(5)]
    seen: list[int] = []
    real = tiny.forward_frame_features
    monkeypatch.setattr(tiny, "forward_frame_features", lambda x: (seen.append(x.shape[0]), real(x))[1])
    results = classify(tiny, videos, ClassifyOptions(workers=1))
    assert [r["error"] for r in results] == [None] * 5
    assert default_batch_size("cpu") == 2 and default_batch_size("cuda") == 8
    assert seen == [2, 2, 2]  # views of consecutive videos share calls; the last call is padded to 2 views


@pytest.mark.parametrize("batch, views, workers, at_least", [
    (8, "1x1", 2, 10),   # one call takes 8 single-view videos: decode those plus the next ones ahead
    (2, "1x1", 2, 4),    # never fewer than 2 per worker
    (8, "10x3", 2, 4),   # a 10x3 video gives >= 3 views: 3 videos fill a call
    (1, "1x1", 0, 2),
])
def test_decoding_runs_a_whole_batch_ahead(tiny, tmp_path, monkeypatch, batch, views, workers, at_least):
    got: dict[str, int] = {}

    def spy(paths, fn, *, prefetch, **kw):
        got["prefetch"] = prefetch
        return iter(())

    monkeypatch.setattr(engine, "ordered_decode", spy)
    spec = engine.ViewSpec(frames=8, stride=4, views=Views.parse(views), crop_size=32)
    list(engine.decode_videos(["x.mp4"], spec, workers=workers, batch_size=batch))
    assert got["prefetch"] == prefetch_depth(batch, Views.parse(views), workers) >= at_least
