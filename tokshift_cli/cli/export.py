"""`tokshift export`: parse, call :func:`tokshift_cli.runtimes.export.export_model`, render the parity report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .app import EXIT_OK, NamespaceOpt, RevisionOpt, WorkersOpt, _load, app, run_guarded, say, stderr


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="Zoo name, Hub repo org/name or org/name@REVISION, a local folder, or a "
                                              ".safetensors file with config.json beside it.", show_default=False)],
    fmt: Annotated[str, typer.Option("--format", help="openvino (model.xml/.bin) or onnx (model.onnx).")
                   ] = "openvino",
    precision: Annotated[str, typer.Option(help="float32, bfloat16 (openvino: run in bfloat16) or int8 (needs "
                                                "--calibrate).")] = "float32",
    out: Annotated[Path, typer.Option(help="The folder to write (a model reference for every --model).",
                                      show_default=False)] = None,  # type: ignore[assignment]
    check_videos: Annotated[Optional[list[str]], typer.Option(
        "--check-videos", help="Videos to check the export against torch on (default: sample videos).",
        show_default=False)] = None,
    calibrate: Annotated[Optional[str], typer.Option(
        help="int8: labelled videos (folder, list or CSV, as evaluate reads them) to calibrate on; some are held "
             "out to check the accuracy.", show_default=False)] = None,
    max_drop: Annotated[float, typer.Option(help="int8: refuse when top-1 on the held-out videos drops more than "
                                                 "this many points below float32.")] = 1.0,
    holdout: Annotated[float, typer.Option(help="int8: fraction of --calibrate's videos held out.")] = 0.25,
    workers: WorkersOpt = 1,
    revision: RevisionOpt = None,
    hub_namespace: NamespaceOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the parity report (JSON) on stdout.")] = False,
) -> None:
    """Export a model for OpenVINO or ONNX Runtime: a folder with the network, config, model card and parity
    report, checked against torch on real clips first (float32: max |logit diff| <= 1e-4, same top-1)."""

    def body() -> int:
        from ..errors import UsageError
        from ..outputs import to_json
        from ..runtimes.export import export_model

        if out is None:
            raise UsageError("--out DIR is required: the folder to write")
        net = _load(model, revision, hub_namespace, "cpu")
        with stderr.status("exporting", spinner="dots") as status:
            report = export_model(net, fmt, out, precision=precision, check_videos=check_videos,
                                  calibrate=calibrate, max_drop=max_drop, holdout=holdout, overwrite=overwrite,
                                  workers=workers, progress=lambda m: status.update(m))
        if json_out:
            sys.stdout.write(to_json(report) + "\n")
            sys.stdout.flush()
        line = (f"{out}: {report['runtime']} {report['precision']}; vs torch float32 on {report['views']} views: "
                f"max |logit diff| {report['max_abs_logit_diff']:.3g}, top-1 agreement "
                f"{100 * report['top1_agreement']:.1f} %")
        if "int8" in report:
            q = report["int8"]
            line += (f"; held-out top-1 float32 {q['top1_float32']:.1f} %, int8 {q['top1_int8']:.1f} % "
                     f"(agreement {q['agreement']:.1f} %)")
        say(line, style="dim")
        return EXIT_OK

    run_guarded(body)
