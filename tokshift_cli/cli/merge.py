"""`tokshift merge`: join the part files of `--shard I/N` runs, of `extract-features`
(:func:`tokshift_cli.features.merge_shards`) or of `evaluate` (:func:`tokshift_cli.evaluate.merge_evaluation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import EXIT_FAILED_INPUTS, EXIT_OK, app, run_guarded, say
from .features import summary
from .options import OverwriteOpt
from .render import percent


@app.command("merge")
def merge(
    target: Annotated[Path, typer.Argument(help="The --out the shards wrote to: a features .npy or --out-dir "
                                                 "folder, or an evaluate report .json.", show_default=False)],
    shards: Annotated[int, typer.Option(min=1, help="How many shards (the N of --shard I/N).",
                                        show_default=False)],
    overwrite: OverwriteOpt = False,
    keep_parts: Annotated[bool, typer.Option(help="Keep the shards' part files after merging.")] = False,
) -> None:
    """Join the part files of `extract-features` or `evaluate` `--shard I/N` runs into one output, in input order."""

    def body() -> int:
        from ..features import merge_shards

        if target.suffix.lower() == ".json":  # an evaluation report
            from ..evaluate.accuracy import merge_evaluation

            report = merge_evaluation(target, shards, overwrite=overwrite, keep_parts=keep_parts)
            c, top1 = report["counts"], report["metrics"]["top1"]
            say(f"{target}: {c['scored']} videos scored, {c['failed']} failed; top-1 "
                + percent(top1, 2))
            return EXIT_FAILED_INPUTS if c["failed"] else EXIT_OK
        is_npy = target.suffix.lower() == ".npy"
        res = merge_shards(target if is_npy else None, out_dir=None if is_npy else target, shards=shards,
                           overwrite=overwrite, keep_parts=keep_parts)
        say(summary(res, shard_only=False))
        return EXIT_FAILED_INPUTS if res.total_failed else EXIT_OK

    run_guarded(body)
