"""The model ``tokshift train`` starts from: any TokShift model reference (zoo, Hub, folder) or a timm ImageNet ViT
(``--init``), given a new, zero head for the new classes and position embeddings resampled to a new input size.

The authors start from Google's ImageNet-21k ViT-B/16 and ViT-L/16 (timm: ``vit_base_patch16_224.orig_in21k``,
``vit_large_patch16_224.orig_in21k``), zero the classifier and resample the position embeddings for 256 and
384 px (timm's :func:`~timm.layers.resample_abs_pos_embed`, bicubic). A TokShift block has no weights of its own
beyond the ViT's, so any plain timm ViT with a class token maps one to one; frames and fold_div need no weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from ..errors import ModelDownloadError, ModelNotFoundError, TokShiftError, UsageError, WeightsError, first_line
from ..models.config import TokShiftConfig
from ..models.tokshift import TokShiftViT, create_model, load_state_dict_strict

__all__ = ["StartModel", "build_start_model", "resample_pos_embed", "set_regularisation", "trainable_state",
           "load_trainable", "DEFAULT_MODEL"]

#: What ``tokshift train`` starts from when neither --model nor --init is given: the authors' K400 TokShift.
DEFAULT_MODEL = "tokshift-b16-8x224"


@dataclass
class StartModel:
    """The model before training (new head, resampled position embeddings), and where its weights came from."""

    model: TokShiftViT
    base: dict[str, Any]  #: provenance: {"kind": "tokshift"|"timm", "ref"/"timm_name", ...}


def resample_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """``[1, 1 + g*g, C]`` -> ``[1, 1 + grid*grid, C]`` with timm's :func:`~timm.layers.resample_abs_pos_embed`
    (bicubic, antialiased; the class token's embedding is kept)."""
    from timm.layers import resample_abs_pos_embed

    old = math.isqrt(pos_embed.shape[1] - 1)
    if old == grid:
        return pos_embed
    with torch.no_grad():
        out = resample_abs_pos_embed(pos_embed.float(), new_size=[grid, grid], old_size=[old, old],
                                     num_prefix_tokens=1, interpolation="bicubic", antialias=True)
    return out.to(pos_embed.dtype).contiguous()


def _plain_vit_problems(vit: Any) -> list[str]:
    """Why a timm model is not a plain class-token ViT whose weights fit a TokShift model (empty: it fits)."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(vit, VisionTransformer):
        return [f"it is a {type(vit).__name__}, not a timm VisionTransformer"]
    bad = []
    if not getattr(vit, "has_class_token", False) or getattr(vit, "num_prefix_tokens", 1) != 1:
        bad.append("it has no class token, or register tokens")
    if getattr(vit, "no_embed_class", False):
        bad.append("its position embeddings leave out the class token")
    if getattr(vit, "global_pool", "token") != "token":
        bad.append(f"it pools with {vit.global_pool!r}, not the class token")
    if not isinstance(vit.norm_pre, nn.Identity) or not isinstance(vit.fc_norm, nn.Identity):
        bad.append("it has a pre-norm or an fc-norm (CLIP-style)")
    blk = vit.blocks[0]
    if not isinstance(blk.ls1, nn.Identity):
        bad.append("its blocks use layer scale")
    if blk.attn.qkv.bias is None or not isinstance(getattr(blk.attn, "q_norm", nn.Identity()), nn.Identity):
        bad.append("its attention has no qkv bias, or q/k norms")
    if vit.patch_embed.proj.bias is None or vit.patch_embed.proj.kernel_size[0] != vit.patch_embed.proj.kernel_size[1]:
        bad.append("its patch embedding has no bias or non-square patches")
    act = getattr(blk.mlp, "act", None)
    if not (type(act) is nn.GELU and act.approximate == "none"):
        bad.append("its MLP is not Linear-GELU-Linear")
    eps = getattr(vit.norm, "eps", None)
    if eps != 1e-6:
        bad.append(f"its LayerNorms use eps {eps} (TokShift's use 1e-6)")
    return bad


def _hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hub endpoint cannot be reached (one TCP connect, ``timeout`` seconds), or None (reachable, or
    offline mode asked for already): huggingface_hub would otherwise retry for most of a minute, silently."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.is_offline_mode():
        return None
    url = urlsplit(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname}: {e.strerror or type(e).__name__}"
    return None


@contextlib.contextmanager
def _offline_mode() -> Iterator[None]:
    """huggingface_hub's offline mode for the duration (the cache only)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextlib.contextmanager
def _hub_token(token: str | None) -> Iterator[None]:
    """``token`` as HF_TOKEN for the duration (timm passes none to huggingface_hub, which reads HF_TOKEN)."""
    if not token:
        yield
        return
    before = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = token
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = before


def _load_timm(name: str, cache_dir: str | os.PathLike | None = None, token: str | None = None,
               local_files_only: bool = False) -> tuple[Any, str]:
    """``timm.create_model(name, pretrained=True)`` with every failure one of our errors; when the Hub cannot be
    reached, the cache alone is tried and the failure said at once. ``cache_dir``, ``token`` and
    ``local_files_only``: as huggingface_hub's (None: HF_HUB_CACHE, HF_TOKEN; the Hub when reachable)."""
    import timm

    hub = name in timm.list_models(pretrained=True) or name.startswith("hf-hub:")
    unreachable = _hub_unreachable() if hub and not local_files_only else None
    kw = {"cache_dir": os.fspath(cache_dir)} if cache_dir is not None else {}
    try:
        with _offline_mode() if unreachable or local_files_only else contextlib.nullcontext(), _hub_token(token):
            vit = timm.create_model(name, pretrained=True, **kw)
    except TokShiftError:
        raise
    except Exception as e:
        if local_files_only and hub:
            raise ModelDownloadError(f"--init {name}: its weights are not in the cache and --local-files-only "
                                     "forbids downloading them") from None
        if unreachable:
            raise ModelDownloadError(f"--init {name}: the Hub cannot be reached ({unreachable}) and its weights are "
                                     "not in the cache; check the network or HF_ENDPOINT, or use a model already "
                                     "downloaded") from None
        _raise_timm_error(name, e)
    return vit, name


def _raise_timm_error(name: str, e: Exception) -> None:
    """timm's or huggingface_hub's failure as one of our errors."""
    import timm

    try:
        raise e
    except RuntimeError as e:
        msg = first_line(e)
        if "Unknown model" in msg or "Invalid pretrained tag" in msg:
            import difflib

            close = difflib.get_close_matches(name, timm.list_models(pretrained=True), n=3, cutoff=0.6)
            hint = f" (closest: {', '.join(close)})" if close else ""
            raise UsageError(f"--init {name}: timm has no such pretrained model{hint}; list them with "
                             "`python -c \"import timm; print(timm.list_models('vit_*', pretrained=True))\"`") from None
        if "No pretrained weights" in msg:
            raise UsageError(f"--init {name}: timm has no pretrained weights for it ({msg})") from None
        raise ModelDownloadError(f"--init {name}: {msg}") from None
    except TokShiftError:
        raise
    except Exception as e:  # huggingface_hub's errors (not found, offline, HTTP), OSError, safetensors
        kind = type(e).__name__
        if kind in ("RepositoryNotFoundError", "EntryNotFoundError", "RemoteEntryNotFoundError"):
            raise ModelNotFoundError(f"--init {name}: its weights are not on the Hub at the configured endpoint "
                                     f"({kind}: {first_line(e)}); check the name and HF_ENDPOINT") from None
        raise ModelDownloadError(f"--init {name}: downloading its weights failed ({kind}: {first_line(e)}); check "
                                 "the network or HF_ENDPOINT (HF_HUB_OFFLINE=1 uses the cache)") from None


def _from_timm(name: str, **hub: Any) -> tuple[TokShiftConfig, dict[str, torch.Tensor], dict[str, Any]]:
    vit, _ = _load_timm(name, **hub)
    problems = _plain_vit_problems(vit)
    if problems:
        raise UsageError(f"--init {name}: its weights do not fit a TokShift model: {'; '.join(problems)}. Use a "
                         "plain ViT, e.g. vit_base_patch16_224.orig_in21k (the authors' start)")
    blk = vit.blocks[0]
    cfg = vit.pretrained_cfg or {}
    base = TokShiftConfig(img_size=int(vit.patch_embed.img_size[0]), patch_size=int(vit.patch_embed.patch_size[0]),
                          embed_dim=int(vit.embed_dim), depth=len(vit.blocks), num_heads=int(blk.attn.num_heads),
                          mlp_ratio=blk.mlp.fc1.out_features / vit.embed_dim, num_frames=8, frame_stride=32,
                          fold_div=4, mean=tuple(float(x) for x in cfg.get("mean", (0.5,) * 3)),
                          std=tuple(float(x) for x in cfg.get("std", (0.5,) * 3)))
    sd = {k: v.detach() for k, v in vit.state_dict().items() if not k.startswith("head.")}
    info = {"kind": "timm", "timm_name": name, "hf_hub_id": cfg.get("hf_hub_id"), "tag": cfg.get("tag"),
            "license": cfg.get("license")}
    return base, sd, info


def _from_ref(ref: str, revision: str | None, hub_namespace: str | None, **hub: Any
              ) -> tuple[TokShiftConfig, dict[str, torch.Tensor], dict[str, Any]]:
    from ..models.weights import model_info_line, read_safetensors, resolve_model

    resolved = resolve_model(ref, revision=revision, hub_namespace=hub_namespace, **hub)
    sd = read_safetensors(resolved.weights_path, resolved)
    sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    return resolved.config, sd, {"kind": "tokshift", **model_info_line(resolved)}


def build_start_model(classes: list[str], *, model: str | None = None, init: str | None = None,
                      frames: int | None = None, stride: int | None = None, img_size: int | None = None,
                      fold_div: int | None = None, shift: bool | None = None, revision: str | None = None,
                      hub_namespace: str | None = None, cache_dir: str | os.PathLike | None = None,
                      token: str | None = None, local_files_only: bool = False) -> StartModel:
    """The model to train: ``model`` (a TokShift reference: zoo name, Hub repo, folder) or ``init`` (a timm
    pretrained ViT name, ``hf-hub:org/name`` too), with a zero head for ``classes`` and the given frames, stride,
    input size (position embeddings resampled), fold_div and shift (None: the starting model's; for a timm ViT
    8 frames, stride 32, fold_div 4, shift on). On the CPU, float32, in eval mode. ``cache_dir``, ``token``,
    ``local_files_only``: huggingface_hub's, for either download."""
    if model and init:
        raise UsageError("give --model (a TokShift model) or --init (a timm ImageNet ViT), not both")
    hub = dict(cache_dir=cache_dir, token=token, local_files_only=local_files_only)
    if init:
        base_cfg, sd, info = _from_timm(init, **hub)
        default_shift = True
    else:
        base_cfg, sd, info = _from_ref(model or DEFAULT_MODEL, revision, hub_namespace, **hub)
        default_shift = base_cfg.shift
    size = int(img_size or base_cfg.img_size)
    if size % base_cfg.patch_size:
        raise UsageError(f"--img-size {size}: must be a multiple of the patch size {base_cfg.patch_size}")
    cfg = dataclasses.replace(
        base_cfg, img_size=size, num_frames=int(frames or base_cfg.num_frames),
        frame_stride=int(stride or base_cfg.frame_stride), fold_div=int(fold_div or base_cfg.fold_div),
        shift=default_shift if shift is None else bool(shift), num_classes=len(classes),
        id2label=dict(enumerate(classes)), label_order="custom", untrained=False, zoo_name=None, source={})
    try:
        cfg.validate()
    except ValueError as e:
        raise UsageError(f"the model to train is not valid: {e}") from None
    sd = dict(sd)
    sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], size // cfg.patch_size)
    sd["head.weight"] = torch.zeros(len(classes), cfg.embed_dim)  # zero head, as the authors initialise it
    sd["head.bias"] = torch.zeros(len(classes))
    sd = {k: v.float().contiguous() for k, v in sd.items()}
    net = create_model(cfg, device="meta")
    try:
        load_state_dict_strict(net, sd, info.get("timm_name") or info.get("ref") or "the starting model",
                               assign=True)
    except WeightsError as e:
        raise UsageError(f"{e}") from None
    return StartModel(model=net.eval(), base=info)


def set_regularisation(model: TokShiftViT, *, drop_path: float = 0.0, dropout: float = 0.0) -> None:
    """Stochastic depth (rising linearly over the blocks to ``drop_path``, timm's rule) and dropout ``dropout``
    on every dropout layer; both 0 in the authors' recipe."""
    from timm.layers import DropPath

    n = len(model.blocks)
    for i, blk in enumerate(model.blocks):
        rate = drop_path * i / max(n - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            setattr(blk, name, DropPath(rate) if rate > 0 else nn.Identity())
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = float(dropout)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (a linear probe: the head), by state-dict name."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def load_trainable(model: nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str = "model.") -> None:
    """Copy ``prefix``-named tensors (:func:`trainable_state` as saved) into ``model``'s parameters."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            if k.startswith(prefix):
                params[k[len(prefix):]].copy_(v)
