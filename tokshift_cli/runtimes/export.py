"""``tokshift export``: a self-describing folder that runs the model on OpenVINO or ONNX Runtime, and its loader.

The folder (written whole under a temporary name, then renamed in)::

    model.xml + model.bin (openvino) | model.onnx (onnx)   the network: clips [B, T, 3, H, W] -> features [B, T, C]
    head.safetensors      the float32 classifier head (run in torch, as the torch model does)
    config.json           the model's config (frames, stride, size, mean/std, labels) + "export": format, runtime,
                          precision, source model and revision, versions, files' sha256
    parity.json           torch float32 vs this folder on real clips (and int8's accuracy gate)
    README.md             a model card

Before anything is written, the exported network runs beside the torch model on real clips (``--check-videos``,
else a sample video): float32 must be within :data:`FLOAT32_TOL` on every logit with the same top-1 on every view,
or the export is refused with the numbers (:class:`ExportRefused`). A folder is a model reference wherever
``--model`` is taken (:func:`load_exported`, offline); a damaged one, one from a newer tool, or one whose runtime
is not installed is refused in one line saying which and what to do.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import __version__
from ..errors import UsageError, WeightsError
from . import RUNTIMES, get_runtime
from .base import RuntimeMissingError, RuntimeModel, file_sha256
from .check import ExportRefused, as_logits, compare, decode_views, sample_videos

#: ``--format`` -> runtime that reads the files.
FORMATS = {"openvino": "openvino", "onnx": "onnxruntime"}
EXPORT_VERSION = 1
HEAD_NAME = "head.safetensors"
PARITY_NAME = "parity.json"
FLOAT32_TOL = 1e-4


def read_export_config(folder: Path) -> dict[str, Any] | None:
    try:
        d = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) and isinstance(d.get("export"), dict) else None


def is_export_folder(ref: str) -> bool:
    p = Path(ref).expanduser()
    return p.is_dir() and read_export_config(p) is not None


# --- loading ----------------------------------------------------------------------------------------------------


def load_exported(ref: str, *, runtime: str = "auto", precision: str | None = None) -> RuntimeModel:
    """The model of an exported folder, run by the runtime it was exported for (``runtime`` must be that or
    ``auto``; ``precision``: a float folder also runs bfloat16 on OpenVINO)."""
    from safetensors.torch import load_file
    from torch import nn

    from ..models.config import TokShiftConfig
    from ..models.weights import ResolvedModel
    from .build import precision_of

    folder = Path(ref).expanduser()
    d = read_export_config(folder)
    if d is None:
        raise WeightsError(f"{folder}: not an exported model folder (config.json has no \"export\" section)")
    ex = d["export"]
    ver = ex.get("export_version")
    if not isinstance(ver, int) or ver > EXPORT_VERSION:
        raise WeightsError(f"{folder}: exported by tokshift-cli {ex.get('tool_version', '?')} (export format "
                           f"{ver!r}); this is {__version__}, which reads format {EXPORT_VERSION}: upgrade "
                           "(pip install -U tokshift-cli) or export it again with this version")
    name = ex.get("runtime")
    if name not in RUNTIMES:
        raise WeightsError(f"{folder}: exported for runtime {name!r}, which this version does not know")
    rt = get_runtime(name)
    if runtime not in ("auto", name):
        raise UsageError(f"{folder}: exported for {name}; run it with --runtime {name} (or auto), or give the "
                         "source model for --runtime torch")
    why = rt.missing()
    if why is not None:
        raise RuntimeMissingError(f"{folder}: exported for {name} {ex.get('runtime_version', '')}, which is not "
                                  f"installed here: pip install {rt.package}")
    files = [folder / f for f in (*rt.files, HEAD_NAME)]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise WeightsError(f"{folder}: damaged export, {', '.join(absent)} missing: export it again "
                           "(tokshift export ... --out DIR)")
    sha = file_sha256(files[:-1])
    if sha != ex.get("files_sha256"):
        raise WeightsError(f"{folder}: damaged export, {', '.join(rt.files)} do not match the sha256 in "
                           "config.json: export it again (tokshift export ... --out DIR)")
    cfg = TokShiftConfig.from_dict(d, source=str(folder / "config.json"))
    stored = ex.get("precision", "float32")
    want = stored if precision is None or precision_of(precision) == "float32" else precision_of(precision)
    if stored == "int8" and want != "int8":
        want = "int8"  # an int8 folder runs int8
    if want not in rt.precisions:
        raise UsageError(f"{folder}: {name} runs {', '.join(rt.precisions)}, not {want}")
    try:
        network = rt.load(folder, want)
        head_sd = load_file(str(folder / HEAD_NAME))
    except Exception as e:  # a runtime's own exception types; said in one line
        raise WeightsError(f"{folder}: {name} {rt.version()} cannot load it ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}); exported with "
                           f"{name} {ex.get('runtime_version')}: export it again with this version") from None
    head = nn.Linear(cfg.embed_dim, cfg.num_classes)
    try:
        head.load_state_dict({"weight": head_sd["head.weight"], "bias": head_sd["head.bias"]})
    except (KeyError, RuntimeError) as e:
        raise WeightsError(f"{folder}: damaged export, {HEAD_NAME} does not fit the config ({e})") from None
    resolved = ResolvedModel(ref=ref, kind="exported", folder=folder, config=cfg, weights_path=files[0])
    return RuntimeModel(network, head, nn.Identity(), cfg, runtime=name, precision=want, graph_sha256=sha,
                        resolved=resolved, export=ex)


# --- writing ----------------------------------------------------------------------------------------------------


def export_model(model: torch.nn.Module, fmt: str, out: str | os.PathLike, *, precision: str = "float32",
                 check_videos: Sequence[str] | None = None, calibrate: str | None = None, max_drop: float = 1.0,
                 holdout: float = 0.25, overwrite: bool = False, workers: int = 1,
                 progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export ``model`` (a float32 torch TokShiftViT) to ``out`` in ``fmt``; return the parity report. Raises
    :class:`ExportRefused` (nothing written) when the check fails."""
    from safetensors.torch import save_file

    from .cache import converted

    say = progress or (lambda m: None)
    rt, out = _checked_request(model, fmt, out, precision=precision, calibrate=calibrate, holdout=holdout,
                               overwrite=overwrite)
    model = model.float().eval()
    cfg = model.config
    say(f"converting for {rt.name}")
    src, _ = converted(model, rt)

    report = _parity_report(model, rt, src, fmt=fmt, precision=precision, check_videos=check_videos,
                            workers=workers, say=say)

    def fill(tmp: Path) -> None:
        if precision == "int8":
            from .quantize import quantize_gated

            report["int8"] = quantize_gated(model, rt, src, tmp, calibrate, max_drop=max_drop, holdout=holdout,
                                            workers=workers, progress=say)
        else:
            for f in rt.files:
                shutil.copyfile(src / f, tmp / f)
        save_file({"head.weight": model.head.weight.detach().float().contiguous(),
                   "head.bias": model.head.bias.detach().float().contiguous()}, str(tmp / HEAD_NAME))
        sha = file_sha256([tmp / f for f in rt.files])
        ex = _export_section(model, rt, fmt=fmt, precision=precision, sha=sha)
        (tmp / "config.json").write_text(json.dumps({**cfg.to_dict(), "export": ex}, indent=2) + "\n")
        (tmp / PARITY_NAME).write_text(json.dumps(report, indent=2) + "\n")
        (tmp / "README.md").write_text(model_card(cfg, ex, report))

    say("writing")
    _write_replacing(out, fill)
    return report


def _checked_request(model: torch.nn.Module, fmt: str, out: str | os.PathLike, *, precision: str,
                     calibrate: str | None, holdout: float, overwrite: bool) -> tuple[Any, Path]:
    """The runtime for ``fmt`` and the ``--out`` path, once every option has been checked (before any work)."""
    if isinstance(model, RuntimeModel):
        raise UsageError(f"{getattr(model.resolved, 'ref', 'the model')} is an exported folder already: export "
                         "from the source model (config.json + model.safetensors)")
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose {' or '.join(FORMATS)}")
    rt = get_runtime(FORMATS[fmt])
    if precision not in rt.precisions:
        raise UsageError(f"--format {fmt} --precision {precision}: {rt.name} offers "
                         f"{', '.join(rt.precisions)} on the CPU")
    if precision == "int8" and not calibrate:
        raise UsageError("--precision int8 needs --calibrate DATA (a folder, list or CSV of labelled videos, "
                         "as evaluate reads them)")
    if precision != "int8" and calibrate:
        raise UsageError("--calibrate is for --precision int8")
    if not 0 <= holdout < 1:
        raise UsageError(f"--holdout {holdout}: a fraction in [0, 1)")
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out}: exists and is not empty (--overwrite replaces it)")
    rt.require()
    if precision == "int8":
        try:
            import nncf  # noqa: F401
        except ImportError:
            raise RuntimeMissingError("--precision int8 needs NNCF: pip install nncf") from None
    return rt, out


def _parity_report(model: torch.nn.Module, rt: Any, src: Path, *, fmt: str, precision: str,
                   check_videos: Sequence[str] | None, workers: int,
                   say: Callable[[str], None]) -> dict[str, Any]:
    """The converted network (``src``) run beside the torch ``model`` on real clips (random ones when no video
    decodes); :class:`ExportRefused` when float32 is off by more than :data:`FLOAT32_TOL` or top-1 differs."""
    cfg = model.config
    check = list(check_videos) if check_videos else sample_videos()
    report: dict[str, Any] = {"format": fmt, "runtime": rt.name, "precision": precision,
                              "tolerance": FLOAT32_TOL if precision == "float32" else None}
    say("checking against torch")
    clips = [(p, v) for p, v, err in decode_views(model, check, "2x1", workers=workers) if v is not None]
    if clips:
        views = torch.cat([v for _, v in clips])
        report["clips_source"] = "--check-videos" if check_videos else "sample videos"
        report["videos"] = [p for p, _ in clips]
    else:
        g = torch.Generator().manual_seed(0)
        views = torch.randn(4, cfg.num_frames, 3, cfg.img_size, cfg.img_size, generator=g)
        report["clips_source"] = "random clips (no readable video: give --check-videos)"
        report["videos"] = []
    float_net = rt.load(src, "float32" if precision == "int8" else precision)
    head = model.head.float()
    cand = as_logits(float_net, head)
    ref, got = compare(model, cand, views)
    diff = float((ref - got).abs().max())
    agree = (ref.argmax(-1) == got.argmax(-1))
    report.update(views=int(views.shape[0]), max_abs_logit_diff=diff, top1_agreement=float(agree.float().mean()))
    passed = precision != "float32" or (diff <= FLOAT32_TOL and bool(agree.all()))
    report["passed"] = passed
    if not passed:
        raise ExportRefused(f"export refused: {rt.name} float32 differs from torch by max |logit diff| {diff:.3g} "
                            f"(limit {FLOAT32_TOL:g}) with top-1 equal on {int(agree.sum())}/{agree.numel()} "
                            "views; nothing was written")
    return report


def _export_section(model: torch.nn.Module, rt: Any, *, fmt: str, precision: str, sha: str) -> dict[str, Any]:
    """config.json's ``"export"`` section: format, runtime, precision, versions, source model, files' sha256."""
    import platform

    cfg = model.config
    resolved = getattr(model, "resolved", None)
    return {"export_version": EXPORT_VERSION, "format": fmt, "runtime": rt.name, "runtime_version": rt.version(),
            "precision": precision, "files": list(rt.files), "files_sha256": sha, "tool_version": __version__,
            "torch_version": torch.__version__, "input": ["batch", cfg.num_frames, 3, cfg.img_size, cfg.img_size],
            "output": "per-frame features [batch, frames, embed_dim]; head.safetensors makes the logits",
            "source": None if resolved is None else {"ref": resolved.ref, "kind": resolved.kind,
                                                      "repo_id": resolved.repo_id, "revision": resolved.revision,
                                                      "commit": resolved.commit},
            "exported_on": platform.processor() or platform.machine()}


def _write_replacing(out: Path, fill: Callable[[Path], None]) -> None:
    """The folder written whole by ``fill`` under a temporary name, then renamed to ``out``; an existing ``out``
    (--overwrite) goes only once the new folder is complete."""
    from .cache import write_folder

    if out.exists() and not any(out.iterdir()):
        out.rmdir()
    if out.exists():  # --overwrite: the new folder is complete before the old one goes
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        staged = write_folder(out.with_name(f".{out.name}.new"), fill)
        os.rename(out, old)
        os.rename(staged, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        write_folder(out, fill)


def model_card(cfg: Any, ex: dict[str, Any], report: dict[str, Any]) -> str:
    src = (ex.get("source") or {}).get("ref") or "a model given in Python"
    lines = [f"# TokShift ({ex['runtime']}, {ex['precision']})", "",
             f"The TokShift transformer exported from `{src}` by tokshift-cli {ex['tool_version']} for "
             f"{ex['runtime']} {ex['runtime_version']} ({ex['precision']}).", "",
             f"- Input: {cfg.num_frames} frames, {cfg.frame_stride} apart, {cfg.img_size}x{cfg.img_size}, "
             f"mean {list(cfg.mean)}, std {list(cfg.std)}; {cfg.num_classes} classes ({cfg.label_order}).",
             f"- Files: {', '.join(ex['files'])} (network: clips -> per-frame features), {HEAD_NAME} (head), "
             "config.json, parity.json.",
             f"- Parity vs torch float32 on {report['views']} views ({report['clips_source']}): max |logit diff| "
             f"{report['max_abs_logit_diff']:.3g}, top-1 agreement {report['top1_agreement']:.3f}."]
    if "int8" in report:
        q = report["int8"]
        lines.append(f"- int8 on {q['holdout_videos']} held-out labelled videos: top-1 float32 "
                     f"{q['top1_float32']:.1f} %, "
                     f"int8 {q['top1_int8']:.1f} %, agreement {q['agreement']:.1f} % (limit: {q['max_drop']} "
                     "points lost).")
    lines += ["", "Run it: `tokshift classify VIDEO --model THIS_FOLDER` (needs "
              f"`pip install {get_runtime(ex['runtime']).package}`).", ""]
    return "\n".join(lines)
