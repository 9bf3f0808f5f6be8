"""Regenerate the bundled untrained demo model, ``tokshift_cli/data/tokshift-tiny-untrained/``.

It is the authors' v1 TokShift code's random-weight fixture ``v1_tiny224.pth`` (hidden 64, 2 layers, 4 heads,
224px, 8 frames, 400 classes) run through ``tokshift convert``. Its weights are random: it proves the install and
the pipeline, and every output made with it says its labels mean nothing.

    python scripts/make_bundled_model.py [PATH/TO/v1_tiny224.pth]
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokshift_cli.models.convert import convert_checkpoint
from tokshift_cli.models.zoo import BUNDLED_UNTRAINED

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SRC = Path("/work/shared/fixtures/v1_tiny224.pth")


def main(src: Path = DEFAULT_SRC) -> None:
    out = REPO / "tokshift_cli" / "data" / BUNDLED_UNTRAINED
    config = convert_checkpoint(
        src, out,
        heads=4, frames=8, fold_div=4, stride=32, shift=True,  # the fixture's spec (not recorded in the tensors)
        labels="kinetics400-v2",  # meaningless for random weights, but real names keep the demo readable
        untrained=True, zoo_name=BUNDLED_UNTRAINED, overwrite=True,
    )
    print(f"wrote {out} ({config.source['format']}, sha256 {config.source['sha256'][:12]}...)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SRC)
