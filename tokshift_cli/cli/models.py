"""`tokshift models` and `tokshift convert`: the zoo table, and the authors' checkpoints -> Hub folders."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .options import CacheDirOpt, JsonOpt, NamespaceOpt, OverwriteOpt
from .app import EXIT_OK, app, run_guarded, say, stdout


@app.command()
def models(json_out: JsonOpt = False, cache_dir: CacheDirOpt = None, hub_namespace: NamespaceOpt = None) -> None:
    """List the models: the zoo (names, the paper's top-1 and GFLOPs, where the weights come from) and the bundled
    untrained demo model, marking what is already on this machine."""
    from ..models.weights import model_rows
    from ..outputs import to_json

    rows = model_rows(cache_dir=cache_dir, hub_namespace=hub_namespace)
    if json_out:
        sys.stdout.write(to_json(rows) + "\n")
        return
    from .render import models_table

    stdout.print(models_table(rows))
    stdout.print("A zoo name whose Hub repo does not exist yet falls back to the authors' Google Drive release "
                 "(URLs: `tokshift models --json`); `cached` means no download is needed.", style="dim")
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
    overwrite: OverwriteOpt = False,
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
