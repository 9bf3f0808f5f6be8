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

    notes = []
    if untrained:
        notes.append("UNTRAINED demo weights: these labels mean nothing (the pipeline works)")
    if result.get("frames_repeat"):
        notes.append("* frames repeat: the video is shorter than one clip")
    caption = "\n".join(notes) or None
    table = Table(caption=caption, caption_style="bold red", show_edge=False, pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("label")
    table.add_column("index", justify="right", style="dim")
    table.add_column("probability", justify="right")
    table.add_column("", no_wrap=True)
    for rank, entry in enumerate(result["top_k"], 1):
        p = float(entry["probability"])
        bar = Text("█" * max(0, round(p * 30)), style="green" if rank == 1 else "cyan")
        table.add_row(str(rank), entry["label"], str(entry["index"]), percent(p, 2), bar)
    return table


def summary_line(doc: dict[str, Any]) -> str:
    """One line: how many videos, failures, time."""
    results = doc.get("results", [])
    failed = sum(1 for r in results if r.get("error"))
    t = doc.get("timings", {})
    done = len(results) - failed
    parts = [f"{done} classified", f"{failed} failed"]
    if t.get("total_s") is not None:
        parts.append(f"{t['total_s']:.2f} s")
    if done and t.get("videos_per_s"):  # no rate over zero videos
        parts.append(f"{t['videos_per_s']:.2f} videos/s")
    repeat = sum(1 for r in results if r.get("frames_repeat"))
    if repeat:
        parts.append(f"{repeat} shorter than one clip (frames repeat)")
    return ", ".join(parts)


def percent(x: float | None, digits: int = 1) -> str:
    """The one percentage format of the tool's output: ``99.21%`` (``digits`` decimals, no space); ``n/a``."""
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def _pct(x: float | None) -> str:
    return percent(x, 2)


def evaluation_summary(report: dict[str, Any]) -> list[Any]:
    """The terminal view of an evaluation report: the metrics, the 10 worst classes, the most confused pairs."""
    from rich.table import Table

    k = int(report["options"]["top_k"])
    met, counts = report["metrics"], report["counts"]
    summary = Table(title="evaluation", title_justify="left", show_header=False, pad_edge=False)
    summary.add_column(style="bold")
    summary.add_column(justify="right")
    summary.add_row("top-1", _pct(met["top1"]))
    summary.add_row(f"top-{k}", _pct(met[f"top{k}"]))
    summary.add_row("mean class accuracy", _pct(met["mean_class_accuracy"]))
    summary.add_row("videos scored", str(counts["scored"]))
    summary.add_row("failed (not counted)" if not report["options"]["failed_as_wrong"] else "failed (counted wrong)",
                    str(counts["failed"]))
    summary.add_row("classes", str(len(report["per_class"])))
    opt = report["options"]
    summary.add_row("views", f"{opt['views']} ({opt['sampling']}, {opt['aggregate']})")
    for note in report.get("notes", []):
        summary.add_row("note", note)
    out: list[Any] = [summary]
    if report["worst_classes"]:
        worst = Table(title="worst classes", title_justify="left", pad_edge=False)
        for col, kw in (("class", {}), ("top-1", {"justify": "right"}), ("videos", {"justify": "right"})):
            worst.add_column(col, **kw)
        for w in report["worst_classes"]:
            worst.add_row(w["label"], _pct(w["accuracy"]), str(w["support"]))
        out.append(worst)
    if report["confused_pairs"]:
        pairs = Table(title="most confused (true -> predicted)", title_justify="left", pad_edge=False)
        for col, kw in (("true", {}), ("predicted", {}), ("videos", {"justify": "right"})):
            pairs.add_column(col, **kw)
        for p in report["confused_pairs"]:
            pairs.add_row(p["true"], p["predicted"], str(p["count"]))
        out.append(pairs)
    return out


def models_table(rows: list[dict[str, Any]]):
    """``tokshift models``: one row per model, ``cached`` marked."""
    from rich.table import Table

    t = Table(title="TokShift models (Kinetics-400; top-1 with 10x3 views)", title_justify="left")
    right = {"justify": "right", "no_wrap": True}
    for col, kw in [("name", {"no_wrap": True}), ("frames", right), ("px", right), ("top-1", right),
                    ("GFLOPs", right), ("cached", {"no_wrap": True}), ("Hub repo", {"overflow": "fold"})]:
        t.add_column(col, **kw)
    for r in rows:
        t.add_row(r["name"], str(r["frames"]), str(r["img_size"]), percent(r["top1"] / 100, 2) if r["top1"] else "-",
                  f"{r['gflops_paper']:g}" if r["gflops_paper"] else "-",
                  {"bundled": "bundled", "hub": "yes (Hub)", "converted": "yes (Drive)"}.get(r["where"], "no"),
                  r["hub_repo"] or "-")
    return t
