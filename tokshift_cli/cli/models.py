"""`tokshift models` and `tokshift convert`: the zoo table, and the authors' checkpoints -> Hub folders."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import EXIT_OK, app, run_guarded, say, stdout


@app.command()
def models(json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the model zoo: names, the paper's top-1 and GFLOPs, and where the weights come from."""
    from ..outputs import to_json
    from ..models.zoo import ZOO

    if json_out:
        rows = [{"name": e.name, "description": e.description, "top1": e.top1, "gflops_paper": e.gflops_paper,
                 "gmacs_v2": e.gmacs_v2, "frames": e.arch["num_frames"], "resolution": e.arch["img_size"],
                 "hub_repo": e.hub_repo(), "original_url": e.original_url} for e in ZOO.values()]
        sys.stdout.write(to_json(rows) + "\n")
        return
    from rich.table import Table

    t = Table(title="TokShift model zoo (Kinetics-400, 10x3 views)", title_justify="left")
    right = {"justify": "right", "no_wrap": True}
    for col, kw in [("name", {"no_wrap": True}), ("frames", right), ("px", right), ("top-1", right),
                    ("GFLOPs", right), ("Hub repo", {"overflow": "fold"})]:
        t.add_column(col, **kw)
    for e in ZOO.values():
        t.add_row(e.name, str(e.arch["num_frames"]), str(e.arch["img_size"]), f"{e.top1:.2f}",
                  f"{e.gflops_paper:g}", e.hub_repo())
    stdout.print(t)
    stdout.print("No TokShift weights are on the Hub yet: a zoo name falls back to the authors' Google Drive "
                 "release (URLs: `tokshift models --json`).", style="dim")
    stdout.print("GFLOPs as in the paper (v1 table, attention matmuls not counted). "
                 "`tokshift bench --arch NAME` measures them.", style="dim")


@app.command()
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="The authors' .pth (TokShift-Transformer v1 or "
                                               "LAPS-transformer v2).", show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder to write config.json, model.safetensors, README.md.",
                                      show_default=False)],
    arch: Annotated[Optional[str], typer.Option(help="Zoo name giving frames, stride, fold_div, heads.")] = None,
    frames: Annotated[Optional[int], typer.Option(min=1, help="Frames per clip (default 8).")] = None,
    fold_div: Annotated[Optional[int], typer.Option(min=2, help="Shift fold divisor (default 4).")] = None,
    heads: Annotated[Optional[int], typer.Option(min=1, help="Attention heads (default width // 64).")] = None,
    stride: Annotated[Optional[int], typer.Option(min=1, help="Frame stride (default 32).")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Label file (JSON list/dict or one name per line) or "
                                                  "an order name: kinetics400-v2, kinetics400-alphabetical.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Convert an authors' checkpoint into a Hub-style folder (publish it with `hf upload ORG/NAME DIR`)."""

    def body() -> int:
        from ..models.convert import conversion_warnings, convert_checkpoint

        cfg = convert_checkpoint(checkpoint, out, arch=arch, frames=frames, fold_div=fold_div, heads=heads,
                                 stride=stride, labels=labels, overwrite=overwrite)
        say(f"wrote {out}: {cfg.source.get('format')} -> width {cfg.embed_dim}, depth {cfg.depth}, "
            f"{cfg.num_heads} heads, {cfg.img_size}px, {cfg.num_frames} frames, {cfg.num_classes} classes, "
            f"labels {cfg.label_order}")
        for line in conversion_warnings(cfg):
            say(f"warning: {line}", style="yellow")
        return EXIT_OK

    run_guarded(body)
