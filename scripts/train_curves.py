"""The paper's point, drawn: TokShift vs the plain video-ViT on classes that are time reversals of each other.

Makes the synthetic set of tests/test_train.py (textures fading in vs fading out: the same frames in reverse order),
trains the bundled small untrained TokShift (width 64, 2 blocks, 64 px, 8 consecutive frames) with and without the
shift through the ``tokshift train`` Python API, and plots both runs' validation top-1 and training loss per epoch::

    .venv/bin/python scripts/train_curves.py --out docs/images/train_curves.png

Prints one JSON line per run (epochs, best and last validation top-1, wall time) for the docs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the synthetic videos are the test's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=HERE.parent / "docs" / "images" / "train_curves.png")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--per-class", type=int, default=20)
    args = ap.parse_args()

    from test_train import make_fade_set

    from tokshift_cli.models.zoo import BUNDLED_UNTRAINED
    from tokshift_cli.train import TrainOptions, train

    histories = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_fade_set(root / "train", args.per_class, seed=0)
        make_fade_set(root / "val", args.per_class // 2, seed=500)
        for name, shift in (("TokShift", True), ("plain video-ViT (--no-shift)", False)):
            opts = TrainOptions(epochs=args.epochs, batch_size=8, accum_steps=1, optimizer="adamw", lr=args.lr,
                                frames=8, stride=1, img_size=64, shift=shift, val_views="1x1", device="cpu",
                                dtype="float32", workers=1)
            t0 = time.perf_counter()
            res = train(root / "train", root / name[:8], val_data=root / "val", model=BUNDLED_UNTRAINED,
                        options=opts)
            histories[name] = res.history
            print(json.dumps({"run": name, "epochs": res.epochs, "best_epoch": res.best_epoch,
                              "best_top1": res.best_top1, "last_top1": res.last_top1,
                              "wall_s": round(time.perf_counter() - t0, 1)}))

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 2.8), dpi=100)
    ax1, ax2 = fig.subplots(1, 2)
    for name, h in histories.items():
        ep = [e["epoch"] for e in h]
        ax1.plot(ep, [e["val_top1"] for e in h], marker="o", ms=3, label=name)
        ax2.plot(ep, [e["train_loss"] for e in h], marker="o", ms=3, label=name)
    ax1.set(xlabel="epoch", ylabel="validation top-1", ylim=(0, 1.05),
            title="fade in vs fade out (time reversals)")
    ax2.set(xlabel="epoch", ylabel="training loss", title="training loss")
    ax1.legend(fontsize=8, loc="lower right")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, format="png", metadata={"Software": None})
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
