"""Terminal rendering shared by the commands: rich tables and one-line summaries (never on the JSON path)."""

from __future__ import annotations

from typing import Any

from ..outputs import display_path


def video_heading(path: str):
    """A video's path as a rich Text heading: printed whole, never as markup (print it with ``soft_wrap=True``
    so a long path stays one line that can be copied and grepped, instead of folding at the table's width)."""
    from rich.text import Text

    return Text(display_path(path), style="bold")


def classification_table(result: dict[str, Any], *, untrained: bool = False):
    """A rich Table for one video's result: rank, label, probability with a bar (the path is
    :func:`video_heading`, printed above it)."""
    from rich.table import Table
    from rich.text import Text

    caption = None
    if untrained:
        caption = "UNTRAINED demo weights: these labels mean nothing (the pipeline works)"
    table = Table(caption=caption, caption_style="bold red", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("label")
    table.add_column("index", justify="right", style="dim")
    table.add_column("probability", justify="right")
    table.add_column("", no_wrap=True)
    for rank, entry in enumerate(result["top_k"], 1):
        p = float(entry["probability"])
        bar = Text("█" * max(0, round(p * 30)), style="green" if rank == 1 else "cyan")
        table.add_row(str(rank), entry["label"], str(entry["index"]), f"{p:.2%}", bar)
    return table


def summary_line(doc: dict[str, Any]) -> str:
    """One line: how many videos, failures, time."""
    results = doc.get("results", [])
    failed = sum(1 for r in results if r.get("error"))
    t = doc.get("timings", {})
    parts = [f"{len(results) - failed} classified", f"{failed} failed"]
    if t.get("total_s") is not None:
        parts.append(f"{t['total_s']:.2f} s")
    if t.get("videos_per_s"):
        parts.append(f"{t['videos_per_s']:.2f} videos/s")
    return ", ".join(parts)
