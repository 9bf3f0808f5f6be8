"""The authors' checkpoints -> a Hub-style model folder (``model.safetensors`` + ``config.json`` + ``README.md``).

Two layouts exist, both saved by DistributedDataParallel training scripts (keys ``module.base_model.*`` inside a
dict with ``state_dict``, ``epoch``, ``optimizer``...):

- ``tokshift-v1``: VideoNetworks/TokShift-Transformer (the paper's code), a jeonsworld-style ViT with separate
  ``attn.query/key/value``; mapped to timm names with q, k, v concatenated into ``attn.qkv``.
- ``tokshift-v2``: VideoNetworks/LAPS-transformer, timm's layout already.

:func:`checkpoint_filter_fn` is pure (state dict in, state dict out). :func:`convert_checkpoint` is the only
place in the package that reads a pickled ``.pth`` (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import __version__
from .config import CONFIG_NAME, WEIGHTS_NAME, TokShiftConfig, load_label_list
from ..errors import ConversionError, OutputExistsError, WeightsError
from ..outputs import fsync_path

__all__ = ["checkpoint_filter_fn", "infer_arch", "convert_checkpoint", "conversion_warnings",
           "write_model_files", "CITATION", "FORMAT_V1", "FORMAT_V2"]

FORMAT_V1 = "tokshift-v1"
FORMAT_V2 = "tokshift-v2"
LABEL_ORDERS = ("kinetics400-v2", "kinetics400-alphabetical")
_PREFIXES = ("module.", "base_model.")
_DEFAULTS = {"num_frames": 8, "fold_div": 4, "frame_stride": 32}

# v1 (jeonsworld ViT) -> timm; ``{i}`` is the block index. q/k/v are handled apart (fused into qkv).
_V1_MAP = {
    r"transformer\.embeddings\.patch_embeddings\.(weight|bias)": r"patch_embed.proj.\1",
    r"transformer\.embeddings\.position_embeddings": "pos_embed",
    r"transformer\.embeddings\.cls_token": "cls_token",
    r"transformer\.encoder\.layer\.(\d+)\.attention_norm\.(weight|bias)": r"blocks.\1.norm1.\2",
    r"transformer\.encoder\.layer\.(\d+)\.attn\.out\.(weight|bias)": r"blocks.\1.attn.proj.\2",
    r"transformer\.encoder\.layer\.(\d+)\.ffn_norm\.(weight|bias)": r"blocks.\1.norm2.\2",
    r"transformer\.encoder\.layer\.(\d+)\.ffn\.(fc1|fc2)\.(weight|bias)": r"blocks.\1.mlp.\2.\3",
    r"transformer\.encoder\.encoder_norm\.(weight|bias)": r"norm.\1",
    r"head\.(weight|bias)": r"head.\1",
}
_V1_QKV = re.compile(r"transformer\.encoder\.layer\.(\d+)\.attn\.(query|key|value)\.(weight|bias)")
_BLOCK_PARAMS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
_TOP_PARAMS = ("cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight",
               "norm.bias", "head.weight", "head.bias")


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _listing(names: list[str], n: int = 6) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def _unwrap(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state"):
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            checkpoint = inner
            break
    sd = {_strip(k): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ConversionError(
            f"no tensors found (top-level keys: {_listing(sorted(map(str, checkpoint)))}); expected an authors' "
            "TokShift checkpoint, a dict whose 'state_dict' holds the model weights")
    return sd


def expected_keys(depth: int) -> list[str]:
    """The state-dict keys of a TokShift/ViT model with ``depth`` blocks, in timm names."""
    keys = list(_TOP_PARAMS)
    for i in range(depth):
        keys += [f"blocks.{i}.{p}.{w}" for p in _BLOCK_PARAMS for w in ("weight", "bias")]
    return keys


def _depth(sd: Mapping[str, Any]) -> int:
    idx = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _check_complete(sd: Mapping[str, torch.Tensor], fmt: str) -> None:
    expected = expected_keys(_depth(sd))
    missing = [k for k in expected if k not in sd]
    unknown = sorted(set(sd) - set(expected))
    if unknown:
        raise ConversionError(
            f"{fmt} checkpoint has keys a TokShift ViT does not use: {_listing(unknown)}. Hybrid (ResNet) or "
            "distilled ViTs are not supported; if this is a TokShift checkpoint, please report the key names")
    if missing:
        raise ConversionError(f"{fmt} checkpoint lacks tensors: {_listing(missing)}; the file is incomplete "
                              "(re-download it) or not a TokShift checkpoint")


def checkpoint_filter_fn(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """Convert an authors' checkpoint (or its state dict) to timm keys; return it and its format.

    Strips ``module.``/``base_model.`` prefixes, drops non-tensor entries (epoch, optimizer...), fuses v1's
    separate q/k/v into ``attn.qkv``, and raises :class:`ConversionError` naming unknown or missing keys.
    """
    sd = _unwrap(state_dict)
    if any(k.startswith("transformer.") for k in sd):
        fmt = FORMAT_V1
        out: dict[str, torch.Tensor] = {}
        qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
        unknown = []
        for k, v in sd.items():
            if m := _V1_QKV.fullmatch(k):
                qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2)] = v
                continue
            for pat, repl in _V1_MAP.items():
                if re.fullmatch(pat, k):
                    out[re.sub(pat, repl, k)] = v
                    break
            else:
                unknown.append(k)
        if unknown:
            raise ConversionError(
                f"{fmt} (TokShift-Transformer) checkpoint has keys this converter does not know: "
                f"{_listing(sorted(unknown))}. Hybrid (ResNet) ViTs are not supported; if this is a TokShift "
                "checkpoint, please report the key names")
        for (i, kind), parts in sorted(qkv.items()):
            lacking = [p for p in ("query", "key", "value") if p not in parts]
            if lacking:
                raise ConversionError(f"{fmt} checkpoint lacks transformer.encoder.layer.{i}.attn."
                                      f"{'/'.join(lacking)}.{kind}; the file is incomplete")
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    elif any(k.startswith(("blocks.", "patch_embed.")) for k in sd):
        fmt, out = FORMAT_V2, dict(sd)
    else:
        raise ConversionError(
            f"unknown checkpoint layout (keys: {_listing(sorted(sd))}); expected the authors' TokShift "
            "checkpoints (TokShift-Transformer 'transformer.encoder.layer.N...' or LAPS-transformer 'blocks.N...')")
    _check_complete(out, fmt)
    return out, fmt


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture facts readable from the tensors: embed_dim, depth, patch/img size, classes, mlp_ratio.

    Takes timm-layout weights (an authors' checkpoint is converted first). The number of heads is not in the
    tensors.
    """
    sd = state_dict if "pos_embed" in state_dict else checkpoint_filter_fn(state_dict)[0]
    proj = sd["patch_embed.proj.weight"]
    embed_dim, in_chans, ph, pw = proj.shape
    if ph != pw:
        raise ConversionError(f"non-square patches {ph}x{pw} are not supported")
    if in_chans != 3:
        raise ConversionError(f"patch embedding takes {in_chans} channels; TokShift takes RGB (3)")
    num_patches = sd["pos_embed"].shape[1] - 1
    grid = math.isqrt(num_patches)
    if grid * grid != num_patches:
        raise ConversionError(f"pos_embed has {num_patches} patch positions, not a square grid")
    hidden = sd["blocks.0.mlp.fc1.weight"].shape[0]
    mlp_ratio = hidden / embed_dim
    if int(embed_dim * mlp_ratio) != hidden:  # timm builds int(dim * mlp_ratio) features
        raise ConversionError(f"MLP width {hidden} is not reachable from embed_dim {embed_dim}")
    return {
        "embed_dim": int(embed_dim),
        "depth": _depth(sd),
        "patch_size": int(ph),
        "img_size": int(grid * ph),
        "num_classes": int(sd["head.weight"].shape[0]),
        "mlp_ratio": float(mlp_ratio),
    }


# --- labels -----------------------------------------------------------------------------------------------


def _read_labels(spec: str | os.PathLike) -> tuple[list[str], str]:
    """Labels from a file (JSON list, JSON {name: index}, JSON {index: name}, text) or an order name."""
    path = Path(spec)
    if not path.is_file():
        if str(spec) in LABEL_ORDERS:
            return load_label_list(str(spec)), str(spec)
        raise ConversionError(f"labels {str(spec)!r}: no such file, and not a known label order "
                              f"({', '.join(LABEL_ORDERS)})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConversionError(f"{path}: cannot read labels ({e})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        if path.suffix.lower() == ".json":
            raise ConversionError(f"{path}: not valid JSON; give a JSON list, a JSON {{name: index}} object or "
                                  "a text file with one class name per line")
        names = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        if isinstance(data, list) and all(isinstance(n, str) for n in data):
            names = data
        elif isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):  # cate_dict.json
            if sorted(data.values()) != list(range(len(data))):
                raise ConversionError(f"{path}: class indices are not 0..{len(data) - 1}, each once")
            names = [n for n, _ in sorted(data.items(), key=lambda kv: kv[1])]
        elif isinstance(data, dict) and all(str(k).isdigit() and isinstance(v, str) for k, v in data.items()):
            if sorted(int(k) for k in data) != list(range(len(data))):
                raise ConversionError(f"{path}: class indices are not 0..{len(data) - 1}, each once")
            names = [data[k] for k in sorted(data, key=int)]
        else:
            raise ConversionError(f"{path}: expected a JSON list of names or a {{name: index}} object")
    order = next((o for o in LABEL_ORDERS if load_label_list(o) == names), "custom")
    return names, order


# --- files ------------------------------------------------------------------------------------------------


#: What each defaulted value is, as the warning names it (the option that sets it).
_DEFAULT_OPTIONS = {"num_frames": "--frames", "fold_div": "--fold-div", "frame_stride": "--stride",
                    "num_heads": "--heads", "shift": "--arch"}


def conversion_warnings(config: TokShiftConfig) -> list[str]:
    """What a conversion did not read from the checkpoint: defaulted values (with the option that sets each)
    and unknown labels. Empty when everything came from the checkpoint, --arch or the options."""
    out = []
    defaulted = list((config.source or {}).get("defaulted") or [])
    if defaulted:
        values = ", ".join(f"{k} {getattr(config, k)} ({_DEFAULT_OPTIONS.get(k, '--arch')})" for k in defaulted)
        out.append(f"not in the checkpoint, defaulted: {values}; if the model was trained otherwise its outputs "
                   "are wrong: give --arch NAME or these options")
    if config.label_order == "unknown":
        out.append(f"labels unknown: the {config.num_classes} classes get placeholder names and evaluate refuses "
                   "the model; give --labels FILE (or an order name)")
    return out


def _refuse_model_folders(src: Path) -> None:
    """A folder or file that is a model already (this tool's ``config.json`` + ``model.safetensors``, a Hub or timm
    folder, a bare safetensors file) is not an authors' checkpoint: converting it would read the tensors alone
    and default the labels, heads and sampling facts its config records. Say how to use it instead."""
    folder = src if src.is_dir() else src.parent
    config = folder / CONFIG_NAME
    kind = None
    if config.is_file() and (src.is_dir() or src.suffix in (".safetensors", ".json", ".bin")):
        try:
            doc = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = None
        if isinstance(doc, dict) and doc.get("model_type") == "tokshift":
            trained = ((doc.get("source") or {}).get("trained_by") or (doc.get("source") or {}).get("converted_by")
                       or "tokshift-cli")
            kind = f"a TokShift model folder (written by {trained}; its config.json has the labels and heads)"
        elif isinstance(doc, dict):
            kind = "a Hugging Face Hub model folder (config.json + weights)"
    elif src.suffix == ".safetensors":
        raise ConversionError(f"{src}: a safetensors file without its config.json: convert reads the authors' .pth "
                              "checkpoints; put this file in a folder with the config.json it was saved with and "
                              "use that folder with --model")
    elif src.is_dir():
        raise ConversionError(f"{src}: a folder, not a checkpoint file; give the authors' .pth file")
    if kind is not None:
        raise ConversionError(f"{src}: is {kind}, not an authors' checkpoint: use it directly, e.g. "
                              f"`tokshift classify VIDEO --model {folder}` (nothing to convert)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_pth(path: Path) -> Mapping[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusals, truncated zips, not-a-torch-file: all one user fix
        raise ConversionError(
            f"{path}: cannot be read as a PyTorch checkpoint with weights_only=True ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Check the download is complete; files that need "
            "arbitrary pickled code are refused on purpose") from e
    if not isinstance(ckpt, Mapping):
        raise ConversionError(f"{path}: holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


#: The paper, as every model card cites it.
CITATION = """## Citation

```bibtex
@inproceedings{zhang2021tokshift,
  title     = {Token Shift Transformer for Video Classification},
  author    = {Zhang, Hao and Hao, Yanbin and Ngo, Chong-Wah},
  booktitle = {Proceedings of the 29th ACM International Conference on Multimedia},
  pages     = {917--925},
  year      = {2021}
}
```
"""


def _model_card(config: TokShiftConfig) -> str:
    src = config.source
    name = config.zoo_name or "tokshift"
    shift = "TokShift" if config.shift else "plain video-ViT baseline (no token shift)"
    if config.untrained:
        status = ("**Untrained: random weights.** Its predictions and labels mean nothing; it exists to test the "
                  "install and the pipeline.")
    else:
        status = "Trained on Kinetics-400 by the TokShift authors; converted without changing any value."
    order = {"unknown": "**unknown**: the class order of the authors' v1 checkpoints is not published; class "
                        "names are placeholders (`class_N`). Re-convert with `--labels FILE` once it is known.",
             "custom": "custom (from the labels file given at conversion)."}.get(
        config.label_order, f"`{config.label_order}`.")
    defaulted = src.get("defaulted") or []
    defaults = (f"\nNot recorded in the checkpoint and defaulted at conversion: {', '.join(defaulted)}.\n"
                if defaulted else "")
    ref = config.zoo_name or "PATH_OR_HUB_REPO"
    return f"""---
library_name: tokshift-cli
tags:
- video-classification
- tokshift
datasets:
- kinetics-400
license: apache-2.0
---

# {name}

{shift}: ViT/{config.patch_size} with width {config.embed_dim}, depth {config.depth} and {config.num_heads} heads, \
{config.img_size}px input, clips of {config.num_frames} frames taken every {config.frame_stride} frames, fold_div \
{config.fold_div}, {config.num_classes} classes.

{status}

- Source: `{src.get('file')}` ({src.get('format')}), sha256 `{src.get('sha256')}`
- Converted by: {src.get('converted_by')}
- Label order: {order}
{defaults}
## Use

```bash
pip install tokshift-cli
tokshift classify video.mp4 --model {ref}
```

```python
from tokshift_cli import load_model
model = load_model("{ref}")  # clips [B, T, 3, H, W] -> logits [B, {config.num_classes}]
```

{CITATION}"""


def _write_folder(folder: Path, sd: Mapping[str, torch.Tensor], config: TokShiftConfig,
                  card: str | None = None) -> None:
    """``model.safetensors``, ``config.json`` and the ``README.md`` model card (``card``, or the converter's)."""
    from safetensors.torch import save_file

    tensors = {}
    for k, v in sd.items():
        v = v.detach()
        if not v.is_contiguous() or v.untyped_storage().nbytes() != v.numel() * v.element_size():
            v = v.contiguous().clone()  # safetensors refuses views into a larger (shared) storage
        tensors[k] = v
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    # the folder is renamed into place as a whole, so plain writes are atomic enough here
    (folder / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(card if card is not None else _model_card(config), encoding="utf-8")
    shutil.copymode(folder / CONFIG_NAME, folder / WEIGHTS_NAME)  # safetensors writes 0600; follow the umask
    for name in (WEIGHTS_NAME, CONFIG_NAME, "README.md", "."):
        fsync_path(folder / name)


def _verify_folder(folder: Path, sd: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import load_file

    from .tokshift import create_model, load_state_dict_strict

    config = TokShiftConfig.from_file(folder / CONFIG_NAME)
    model = create_model(config, device="meta")
    loaded = load_file(str(folder / WEIGHTS_NAME))
    try:
        load_state_dict_strict(model, loaded, str(folder / WEIGHTS_NAME), assign=True)
    except WeightsError as e:
        raise ConversionError(f"the converted folder does not load into its own config: {e}") from e
    for k, v in model.state_dict().items():
        if not torch.equal(v, sd[k]):
            raise ConversionError(f"round-trip check failed: {k} changed when written and read back")


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        fsync_path(out_dir.parent)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old / out_dir.name)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        os.replace(old / out_dir.name, out_dir)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(out_dir.parent)


def write_model_files(folder: str | os.PathLike, state: Mapping[str, torch.Tensor], config: TokShiftConfig,
                      card: str | None = None) -> None:
    """A model folder any command loads: ``config.json`` + ``model.safetensors`` (+ ``README.md``: ``card``) in
    ``folder`` (created if needed; other files in it are left alone). Written and verified
    in a temporary folder beside them, then renamed in one by one, ``config.json`` last. E.g. a randomly
    initialised model to train from scratch::

        net = create_model(TokShiftConfig(embed_dim=192, depth=4, num_heads=3, num_classes=2))
        write_model_files("scratch/", net.state_dict(), net.config)
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    tmp = Path(tempfile.mkdtemp(prefix=".model.tmp-", dir=folder))
    try:
        _write_folder(tmp, state, config, card)
        _verify_folder(tmp, state)
        names = (WEIGHTS_NAME, "README.md", CONFIG_NAME) if card is not None else (WEIGHTS_NAME, CONFIG_NAME)
        for name in names:  # config.json last: with it the folder is a model
            os.replace(tmp / name, folder / name)
        fsync_path(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_checkpoint(
        checkpoint: str | os.PathLike,
        out_dir: str | os.PathLike,
        *,
        arch: str | None = None,
        frames: int | None = None,
        fold_div: int | None = None,
        heads: int | None = None,
        stride: int | None = None,
        shift: bool | None = None,
        labels: str | os.PathLike | None = None,
        overwrite: bool = False,
        untrained: bool = False,
        zoo_name: str | None = None,
        provenance: Mapping[str, Any] | None = None,
) -> TokShiftConfig:
    """Convert an authors' ``.pth`` into ``out_dir`` (safetensors + config.json + model card); return the config.

    Shapes come from the tensors; frames, fold_div, frame stride, heads and shift from ``arch`` (a zoo name)
    and/or the explicit arguments (which win). Values neither gives are defaulted (8 frames, fold_div 4,
    stride 32, width // 64 heads, shift on) and listed in ``config.source["defaulted"]``. ``labels`` is a file
    or a label-order name; without it a 400-class v2 checkpoint gets the v2 order and anything else the
    order ``"unknown"`` (placeholder names), never a guess. ``provenance``: extra entries for
    ``config.source`` (where the checkpoint was downloaded from). The folder appears atomically and is verified
    by loading it back strictly.
    """
    src = Path(checkpoint)
    out = Path(out_dir)
    _refuse_model_folders(src)
    if not src.is_file():
        raise ConversionError(f"{src}: no such checkpoint file")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(f"{out} exists and is not empty; pass --overwrite to replace it, or choose "
                                "another output folder")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is a file, not a folder; remove it or choose another name")

    sd, fmt = checkpoint_filter_fn(_load_pth(src))
    shape = infer_arch(sd)

    zoo_arch: dict[str, Any] = {}
    if arch is not None:
        from . import zoo

        zoo_arch = {"mlp_ratio": TokShiftConfig.mlp_ratio, **zoo.get(arch).arch}
        wrong = [f"{k} {shape[k]} (zoo: {zoo_arch[k]})" for k in shape
                 if k in zoo_arch and float(shape[k]) != float(zoo_arch[k])]
        if wrong:
            raise ConversionError(
                f"{src.name} does not match zoo model {arch!r}: {'; '.join(wrong)}. Pass the zoo name this "
                "checkpoint belongs to (`tokshift models`), or omit --arch and give --frames/--heads")

    given = {"num_frames": frames, "fold_div": fold_div, "frame_stride": stride, "num_heads": heads,
             "shift": shift}
    defaults = {**_DEFAULTS, "num_heads": max(shape["embed_dim"] // 64, 1), "shift": True}
    chosen: dict[str, Any] = {}
    defaulted = []
    for key, value in given.items():
        if value is not None:
            chosen[key] = value
        elif key in zoo_arch:
            chosen[key] = zoo_arch[key]
        else:
            chosen[key] = defaults[key]
            defaulted.append(key)

    if labels is not None:
        names, order = _read_labels(labels)
        if len(names) != shape["num_classes"]:
            raise ConversionError(f"labels {str(labels)!r} name {len(names)} classes; the checkpoint's head has "
                                  f"{shape['num_classes']}")
    elif fmt == FORMAT_V2 and shape["num_classes"] == 400:
        names, order = load_label_list("kinetics400-v2"), "kinetics400-v2"
    else:
        names, order = [], "unknown"

    config = TokShiftConfig(
        **shape, **chosen,
        label_order=order,
        id2label=dict(enumerate(names)),
        untrained=untrained,
        zoo_name=zoo_name if zoo_name is not None else arch,
        source={"format": fmt, "file": src.name, "sha256": _sha256(src),
                "converted_by": f"tokshift-cli {__version__}", "defaulted": defaulted, **(provenance or {})},
    )
    try:
        config.validate()
    except ValueError as e:
        raise ConversionError(f"{src.name}: {e}; fix it with --heads/--frames/--fold-div") from e

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()  # not mkdtemp: the folder is published as is, so it takes the umask's mode, not 0700
    try:
        _write_folder(tmp, sd, config)
        _verify_folder(tmp, sd)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return config
