"""TokShift-xfmr on timm: a plain ViT whose [CLS] token is shifted in time in every block.

`Token Shift Transformer for Video Classification` (Zhang, Hao, Ngo, ACM MM 2021)
    - https://arxiv.org/abs/2108.02432
    - https://github.com/VideoNetworks/TokShift-Transformer (v1, the paper's code)
    - https://github.com/VideoNetworks/LAPS-transformer (v2, timm layout)

The model is timm's :class:`~timm.models.vision_transformer.VisionTransformer` run on the B*T frames of a clip
(timm's Block, Attention with the fused SDPA path, Mlp, LayerNorm eps 1e-6, exact GELU, qkv bias). The only
change is :class:`TokShiftBlock`: before the attention and again before the MLP, the [CLS] token's first
``2 * C // fold_div`` channels are shifted by one frame (:func:`token_shift_`). Clip logits are the mean over the T
frames of the per-frame head outputs, as in the authors' code. ``shift=False`` is their plain video-ViT baseline.

Input ``[B, T, 3, H, W]``; T is read from the input, so one model serves 8, 12 or 16 frames. Importing this
module registers ``tokshift_{base,large}_patch16_{224,256,384}`` and ``vit_video_*`` with ``timm.create_model``.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer

from ..errors import WeightsError
from .kernels import linear_backend, onednn_linear_available

if TYPE_CHECKING:
    from .config import TokShiftConfig

__all__ = ["TokShiftViT", "TokShiftBlock", "token_shift_", "token_shift", "create_model", "load_state_dict_strict",
           "cast_for_inference", "compile_for_inference", "fuse_linear_epilogues", "EpilogueLinear"]


def token_shift_(x: torch.Tensor, num_frames: int, fold_div: int = 4) -> torch.Tensor:
    """Shift the [CLS] token of ``x`` ``[B*T, N, C]`` in time, in place, and return ``x``.

    With ``fold = C // fold_div``: channels ``[0, fold)`` of frame t take frame t+1's values (the last frame gets
    zeros), channels ``[fold, 2*fold)`` take frame t-1's (the first frame gets zeros). Every other channel and
    every patch token stays as is. Only the ``B*T*2*fold`` values that move are read and written (the authors'
    code allocates two zero copies of all tokens per block), in three ops (``take``, ``cat``, ``put_``) on index
    tensors cached per shape: between two large matmuls every op dispatch is slow (cold caches, ~25 us), so
    the number of ops, not the bytes moved, is what the shift costs (with autograd recording, slice ops that
    autograd can replay are used instead). Autograd-safe as long as ``x`` is not a leaf
    that requires grad and no earlier op saved ``x`` for backward, which holds inside :class:`TokShiftBlock`.
    """
    bt, n, c = x.shape
    fold = _fold(bt, c, num_frames, fold_div, "token_shift_")
    if fold == 0:
        return x
    if x.requires_grad and torch.is_grad_enabled():  # take() saves x for backward: slice ops instead
        cls, moved = _shifted_cls(x, num_frames, fold)  # cls is a view into x: the write lands in x
        cls[..., :2 * fold].copy_(moved)
        return x
    src, dst, zeros = _shift_indices(bt, n, c, num_frames, fold, x.device, x.dtype)
    # take() copies first, so every value read is the one from before the shift; one put_ writes moves and zeros
    x.put_(dst, torch.cat((x.take(src), zeros)))
    return x


def _fold(bt: int, c: int, num_frames: int, fold_div: int, name: str) -> int:
    """Channels per shifted direction; checks that ``bt`` rows are whole clips of ``num_frames``."""
    if bt % num_frames:
        raise ValueError(f"{name}: {bt} frames are not a multiple of num_frames={num_frames}")
    return c // fold_div


def _shifted_cls(x: torch.Tensor, num_frames: int, fold: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The [CLS] rows of ``x`` ``[B*T, N, C]`` as ``[B, T, C]`` (a view into ``x``), and their first ``2*fold``
    channels after the shift (a new tensor): ``[0, fold)`` from frame t+1, ``[fold, 2*fold)`` from t-1, zeros
    past the clip ends."""
    bt, _, c = x.shape
    cls = x[:, 0].view(bt // num_frames, num_frames, c)
    back = F.pad(cls[:, 1:, :fold], (0, 0, 0, 1))  # frame t <- t+1, zeros after the last frame
    fwd = F.pad(cls[:, :-1, fold:2 * fold], (0, 0, 1, 0))  # frame t <- t-1, zeros before the first frame
    return cls, torch.cat((back, fwd), dim=-1)


_SHIFT_INDEX_CACHE: dict[tuple[Any, ...], tuple[torch.Tensor, ...]] = {}


def _shift_indices(bt: int, n: int, c: int, num_frames: int, fold: int, device: torch.device,
                   dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """(src, dst, zeros): linear indices into a ``[bt, n, c]`` tensor for the shift; ``dst`` ends with the
    positions that become zero (as many as ``zeros``), after those that take ``x.take(src)``."""
    key = (bt, n, c, num_frames, fold, device, dtype)
    hit = _SHIFT_INDEX_CACHE.get(key)
    if hit is not None:
        return hit
    if len(_SHIFT_INDEX_CACHE) > 64:
        _SHIFT_INDEX_CACHE.clear()
    with torch.inference_mode(False), torch.no_grad():
        rows = torch.arange(bt, device=device).view(bt // num_frames, num_frames)  # [clips, T] rows of x
        back = torch.arange(fold, device=device)  # channels that come from frame t+1
        fwd = torch.arange(fold, 2 * fold, device=device)  # channels that come from frame t-1

        def pos(r: torch.Tensor, ch: torch.Tensor) -> torch.Tensor:  # [CLS] (token 0) of rows r, channels ch
            return (r[..., None] * (n * c) + ch).reshape(-1)

        src = torch.cat((pos(rows[:, 1:], back), pos(rows[:, :-1], fwd)))
        dst = torch.cat((pos(rows[:, :-1], back), pos(rows[:, 1:], fwd),  # moves, then the clip ends: zeros
                         pos(rows[:, -1:], back), pos(rows[:, :1], fwd)))
        zeros = torch.zeros(dst.numel() - src.numel(), dtype=dtype, device=device)
    _SHIFT_INDEX_CACHE[key] = (src, dst, zeros)
    return src, dst, zeros


def token_shift(x: torch.Tensor, num_frames: int, fold_div: int = 4) -> torch.Tensor:
    """Out-of-place :func:`token_shift_`: a new tensor, ``x`` untouched (same values as the in-place form).

    Written as one ``where`` over the tokens (compiler-friendly, autograd-safe); it costs a full copy of ``x``,
    which is why :class:`TokShiftBlock` uses it only under ``torch.compile`` with autograd on.
    """
    bt, n, c = x.shape
    fold = _fold(bt, c, num_frames, fold_div, "token_shift")
    if fold == 0:
        return x
    cls, moved = _shifted_cls(x, num_frames, fold)
    new_cls = torch.cat((moved, cls[..., 2 * fold:]), dim=-1).view(bt, 1, c)
    is_cls = torch.arange(n, device=x.device).view(1, n, 1) == 0
    return torch.where(is_cls, new_cls, x)


@torch.library.custom_op("tokshift::token_shift_", mutates_args=("x",))
def _token_shift_op(x: torch.Tensor, num_frames: int, fold_div: int) -> None:
    """:func:`token_shift_` as a custom op: opaque to torch.compile, which then mutates its own buffer in place."""
    token_shift_(x, num_frames, fold_div)


@_token_shift_op.register_fake
def _token_shift_op_fake(x: torch.Tensor, num_frames: int, fold_div: int) -> None:
    return None


def _token_shift_compiled(x: torch.Tensor, num_frames: int, fold_div: int = 4) -> torch.Tensor:
    _token_shift_op(x, num_frames, fold_div)
    return x


class TokShiftBlock(Block):
    """timm's pre-norm :class:`~timm.models.vision_transformer.Block` with a TokShift before attn and MLP."""

    def __init__(self, *args: Any, num_frames: int = 8, fold_div: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.num_frames = num_frames
        self.fold_div = fold_div

    def forward(
            self,
            x: torch.Tensor,
            num_frames: Optional[int] = None,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        """``x`` is ``[B*T, N, C]``, frames of one clip adjacent; ``num_frames`` overrides the ctor's T."""
        t = num_frames or self.num_frames
        shift = token_shift_
        if torch.compiler.is_compiling():
            # Under torch.compile an in-place slice write trips Inductor's oneDNN fusions, and the out-of-place
            # form costs a full copy of the tokens: for inference the in-place shift runs as an opaque custom op
            # on the buffer Inductor produced (no copy); with autograd, the out-of-place form.
            shift = token_shift if torch.is_grad_enabled() else _token_shift_compiled
        x = shift(x, t, self.fold_div)
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        x = shift(x, t, self.fold_div)
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        return x


def _run_block_no_mutate(blk: TokShiftBlock, x: torch.Tensor, num_frames: int) -> torch.Tensor:
    # activation checkpointing re-runs the block from its saved input: it must not shift that input in place
    return blk(x.clone(), num_frames)


class TokShiftViT(VisionTransformer):
    """TokShift transformer: a timm ViT on every frame, [CLS] shifted in time, logits averaged over frames.

    Takes every :class:`~timm.models.vision_transformer.VisionTransformer` argument, plus:

    Args:
        num_frames: Default clip length T (the input's T is used at forward time).
        fold_div: 1/fold_div of the [CLS] channels shift backward in time, as many forward.
        shift: False builds the authors' plain video-ViT baseline (timm's Block, no shift).
    """

    def __init__(self, *args: Any, num_frames: int = 8, fold_div: int = 4, shift: bool = True,
                 **kwargs: Any) -> None:
        if kwargs.get("global_pool", "token") != "token":
            raise ValueError("TokShiftViT classifies from the [CLS] token; global_pool must be 'token'")
        if shift:
            kwargs["block_fn"] = partial(TokShiftBlock, num_frames=num_frames, fold_div=fold_div)
        super().__init__(*args, **kwargs)
        self.num_frames = num_frames
        self.fold_div = fold_div
        self.shift = shift

    def _blocks(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if not self.shift:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                from timm.models._manipulate import checkpoint_seq
                return checkpoint_seq(self.blocks, x)
            return self.blocks(x)
        if self.grad_checkpointing and torch.is_grad_enabled():
            from torch.utils.checkpoint import checkpoint
            for blk in self.blocks:
                x = checkpoint(_run_block_no_mutate, blk, x, num_frames, use_reentrant=False)
            return x
        for blk in self.blocks:
            x = blk(x, num_frames)
        return x

    def forward_frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """Clips ``[B, T, 3, H, W]`` -> final-norm [CLS] token of every frame ``[B, T, C]``."""
        if x.ndim != 5:
            raise ValueError(f"TokShiftViT expects clips [B, T, 3, H, W], got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        x = x.flatten(0, 1)
        weight = self.patch_embed.proj.weight
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(weight.dtype)  # float32 views into a bfloat16 model (see cast_for_inference)
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        x = self._blocks(x, t)
        x = x[:, 0]  # LayerNorm is per token: only the [CLS] row feeds the head
        norm_weight = getattr(self.norm, "weight", None)
        if norm_weight is not None and x.dtype != norm_weight.dtype:
            x = x.to(norm_weight.dtype)  # a float32 final norm and head after cast_for_inference
        x = self.norm(x)
        return x.view(b, t, -1)

    def forward_head_from_frame_features(self, frame_features: torch.Tensor) -> torch.Tensor:
        """Per-frame features ``[B, T, C]`` -> clip logits ``[B, num_classes]`` (mean of per-frame logits)."""
        return self.head(self.head_drop(self.fc_norm(frame_features))).mean(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Clips ``[B, T, 3, H, W]`` -> clip features ``[B, C]``: final-norm [CLS] averaged over T."""
        return self.forward_frame_features(x).mean(1)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:  # type: ignore[override]
        """Frame features ``[B, T, C]`` -> logits ``[B, classes]``, or ``[B, C]`` features if ``pre_logits``."""
        if pre_logits:
            return self.fc_norm(x).mean(1)
        return self.forward_head_from_frame_features(x)

    def forward_logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: clip logits ``[B, num_classes]`` and clip features ``[B, C]``."""
        feats = self.forward_frame_features(x)
        return self.forward_head_from_frame_features(feats), feats.mean(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Clips ``[B, T, 3, H, W]`` -> logits ``[B, num_classes]``."""
        return self.forward_head_from_frame_features(self.forward_frame_features(x))


def create_model(config: "TokShiftConfig", *, device: Any = None, dtype: Optional[torch.dtype] = None
                 ) -> TokShiftViT:
    """A randomly initialised :class:`TokShiftViT` for ``config``, in eval mode, with ``model.config`` set.

    ``device="meta"`` skips the (slow, for ViT-L) random init: load weights with
    ``load_state_dict_strict(model, sd, source, assign=True)`` afterwards.
    """
    model = TokShiftViT(
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        num_classes=config.num_classes,
        num_frames=config.num_frames,
        fold_div=config.fold_div,
        shift=config.shift,
        qkv_bias=True,
        device=device,
        dtype=dtype,
    )
    model.pretrained_cfg = _cfg(
        num_classes=config.num_classes, input_size=(3, config.img_size, config.img_size),
        mean=tuple(config.mean), std=tuple(config.std), interpolation=config.interpolation)
    model.config = config
    return model.eval()


#: Modules that stay float32 in :func:`cast_for_inference`: they see one token per frame, so they cost nothing,
#: and a float32 final norm and head keep the logits' rounding error at the backbone's.
_FLOAT32_HEAD = ("norm", "fc_norm", "head")


class EpilogueLinear(nn.Linear):
    """``nn.Linear`` (optionally followed by exact GELU) whose bias add and GELU run inside oneDNN's GEMM on
    the CPU, for inference in bfloat16 or float32.

    Eager ``F.linear`` with a bias first copies the broadcast bias into the whole output, then accumulates the
    GEMM onto it, and a following ``nn.GELU`` reads and writes that output once more: for ViT-B/16 in bfloat16
    on a CPU with AMX those two passes cost ~20 % of a forward (README, Performance). Same parameters and
    state-dict keys as the ``nn.Linear`` it replaces; anywhere else (CUDA, float16, autograd, a torch without
    oneDNN, under autocast, while traced or compiled for export) it is ``F.linear`` (+ ``F.gelu``)."""

    gelu: bool = False
    _pack: Any = None  #: the weight in oneDNN's blocked layout (packed once, see :meth:`packed_weight`)
    _pack_key: Any = None

    @classmethod
    def wrap(cls, linear: nn.Linear, *, gelu: bool = False) -> "EpilogueLinear":
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias, new.gelu = linear.weight, linear.bias, gelu
        return new

    def packed_weight(self, rows: int) -> torch.Tensor:
        """The weight reordered once into the blocked layout oneDNN's GEMM wants (for ``rows`` input rows), so
        no call reorders it again: 3-6 % faster per GEMM in float32, 6-12 % in bfloat16 on ViT-B's shapes, equal
        outputs row for row (tests). Re-packed when the weight changes (another tensor, an in-place update, a
        cast); the dense ``weight`` stays the parameter (state dict, hashes, autograd), so the packed copy costs
        the linear weights' memory once more. Falls back to the dense weight where oneDNN cannot pack."""
        w = self.weight
        key = (id(w), w.data_ptr(), None if w.is_inference() else w._version, w.dtype)  # inference: no version
        if self._pack_key != key:
            try:
                self._pack = torch.ops.mkldnn._reorder_linear_weight(w.detach(), int(rows))
            except (RuntimeError, AttributeError):
                self._pack = w.detach()
            self._pack_key = key
        return self._pack

    def __getstate__(self) -> dict[str, Any]:  # copies and pickles hold the dense weight only
        state = dict(super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__)
        state.pop("_pack", None)
        state.pop("_pack_key", None)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global _ONEDNN_LINEAR
        w = self.weight
        if (_ONEDNN_LINEAR and x.device.type == "cpu" and x.dtype == w.dtype
                and x.dtype in (torch.bfloat16, torch.float32) and not torch.is_autocast_enabled("cpu")
                and not torch.jit.is_tracing() and not torch.compiler.is_compiling()
                and not (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
            x2 = x.reshape(-1, x.shape[-1])
            packed = self.packed_weight(x2.shape[0])
            try:
                y = torch.ops.mkldnn._linear_pointwise(x2, packed, self.bias,
                                                       "gelu" if self.gelu else "none", [],
                                                       "none" if self.gelu else "")
            except RuntimeError:  # e.g. a CPU oneDNN has no bfloat16 kernel for: aten's path from now on
                _ONEDNN_LINEAR = False
            else:
                return y.view(*x.shape[:-1], y.shape[-1])
        y = F.linear(x, w, self.bias)
        return F.gelu(y) if self.gelu else y

    def extra_repr(self) -> str:
        return super().extra_repr() + (", gelu=True" if self.gelu else "")


_ONEDNN_LINEAR = onednn_linear_available()


def fuse_linear_epilogues(model: TokShiftViT) -> TokShiftViT:
    """Swap every block's linear layers for :class:`EpilogueLinear` (fc1 takes the MLP's exact GELU), in place.
    The same weights and state-dict keys; outputs equal up to float rounding (bias and GELU are applied to the
    float32 accumulator before the one rounding to the output dtype). Done by :func:`cast_for_inference`;
    idempotent. Returns ``model``."""
    for blk in model.blocks:
        attn, mlp = blk.attn, blk.mlp
        for owner, name in ((attn, "qkv"), (attn, "proj"), (mlp, "fc2")):
            lin = getattr(owner, name)
            if type(lin) is nn.Linear:
                setattr(owner, name, EpilogueLinear.wrap(lin))
        exact_gelu = type(mlp.act) is nn.GELU and getattr(mlp.act, "approximate", "none") == "none"
        if type(mlp.fc1) is nn.Linear and exact_gelu:
            mlp.fc1, mlp.act = EpilogueLinear.wrap(mlp.fc1, gelu=True), nn.Identity()
        elif type(mlp.fc1) is nn.Linear:
            mlp.fc1 = EpilogueLinear.wrap(mlp.fc1)
    return model


def cast_for_inference(model: TokShiftViT, dtype: torch.dtype) -> TokShiftViT:
    """Prepare ``model`` for inference in ``dtype`` (float32, bfloat16 or float16), in place; returns ``model``.

    Reduced precision converts the backbone's weights once (faster than ``torch.autocast``, which re-casts every
    weight on every forward pass); the final norm and the head stay float32 (they only see the [CLS] tokens) and
    the model accepts float32 inputs (it casts them). The blocks' linear layers become :class:`EpilogueLinear`
    (bias and GELU fused into oneDNN's GEMM on the CPU) in bfloat16, and in float32 where
    :func:`~tokshift_cli.models.kernels.linear_backend` measured oneDNN faster than aten's GEMM on this CPU (logits
    within ~1e-6 of aten's). ``model.linear_backend`` records the choice ("onednn" or "aten").
    """
    cpu = next(model.parameters()).device.type == "cpu"
    backend = linear_backend(dtype) if cpu else "aten"
    if backend == "onednn":
        fuse_linear_epilogues(model)
    model.to(dtype)
    if dtype in (torch.bfloat16, torch.float16):
        for name in _FLOAT32_HEAD:
            module = getattr(model, name, None)
            if module is not None:
                module.float()
    model.linear_backend = backend
    return model


def compile_frozen(fn: Any, *, device: torch.device | str, dynamic: Optional[bool] = False,
                   mode: Optional[str] = None) -> Any:
    """``torch.compile(fn)`` whose calls run with Inductor's freezing switched on when ``device`` is a CPU (see
    :func:`compile_for_inference`); used for TokShift and for timm's reference ViT in ``tokshift bench``."""
    import torch._inductor.config as inductor_config

    compiled = torch.compile(fn, dynamic=dynamic, mode=mode)
    freeze = torch.device(device).type == "cpu"

    def call(x: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=freeze):
            return compiled(x)

    return call


def compile_for_inference(model: TokShiftViT, *, dynamic: Optional[bool] = False, mode: Optional[str] = None
                          ) -> TokShiftViT:
    """Compile ``model.forward_frame_features`` (so ``model(x)`` too) with ``torch.compile``, for inference.

    On the CPU, Inductor's freezing is switched on for this model's compilations (``torch._inductor.config``
    ``freezing``): weights become constants, oneDNN pre-packs them and fuses GELU and the residual adds into the
    linear layers. Frozen means frozen: weights loaded into ``model`` afterwards are not seen by the compiled
    code, and the compiled path is for ``torch.no_grad``/``inference_mode`` only. Compilation happens on the
    first call of each input shape (tens of seconds for ViT-B; Inductor caches it on disk). ``dynamic=False``
    compiles one graph per batch size. Returns ``model``, with ``model.compiled`` set to True.
    """
    frozen = compile_frozen(model.forward_frame_features, device=next(model.parameters()).device,
                            dynamic=dynamic, mode=mode)

    def forward_frame_features(x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("compile_for_inference: the compiled model is for inference; call it under "
                               "torch.inference_mode() or torch.no_grad()")
        return frozen(x)

    model.forward_frame_features = forward_frame_features  # type: ignore[method-assign]
    model.compiled = True
    return model


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, *,
                           assign: Optional[bool] = None) -> None:
    """Load ``state_dict`` into ``model`` or raise :class:`WeightsError` naming what does not fit.

    ``source`` (a file or repo name) goes into the message. Every key must exist on both sides with the same
    shape; nothing is loaded unless everything fits. ``assign`` (default: when the model is on the meta device)
    makes the given tensors the parameters instead of copying into them.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} (model wants {tuple(v.shape)})"
                  for k, v in expected.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        def _names(kind: str, names: list[str]) -> str:
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            return f"{kind}: {', '.join(names[:8])}{more}" if names else ""

        parts = "; ".join(p for p in (_names("missing", missing), _names("unexpected", unexpected),
                                       _names("shape mismatch", mismatched)) if p)
        raise WeightsError(
            f"{source}: weights do not match the model in its config.json ({parts}). Re-create the folder with "
            "`tokshift convert CHECKPOINT --out DIR`, or check that config.json belongs to these weights")
    if assign is None:
        assign = any(v.is_meta for v in expected.values())
    model.load_state_dict(dict(state_dict), strict=True, assign=assign)


# --- timm registry ----------------------------------------------------------------------------------------


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 400,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    f"{prefix}_{size}_patch16_{res}": _cfg(input_size=(3, res, res))
    for prefix in ("tokshift", "vit_video") for size in ("base", "large") for res in (224, 256, 384)
})


def _create_tokshift(variant: str, pretrained: bool, model_args: dict[str, Any], **kwargs: Any) -> TokShiftViT:
    if pretrained:
        raise RuntimeError(
            f"timm has no weights for {variant!r}: the TokShift weights are not on timm's hub. Load them with "
            "`tokshift_cli.load_model('tokshift-b16-8x224')` (zoo names: `tokshift models`), or build the "
            "architecture with pretrained=False")
    if kwargs.pop("features_only", False):
        raise ValueError(f"{variant}: features_only is not supported; use model.forward_frame_features(clips)")
    return build_model_with_cfg(TokShiftViT, variant, pretrained=False, **{**model_args, **kwargs})


_B16 = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
_L16 = dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16)


@register_model
def tokshift_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """TokShift ViT-B/16 @ 224 (paper: 77.28 top-1 on K400 with 8 frames)."""
    return _create_tokshift("tokshift_base_patch16_224", pretrained, dict(_B16, img_size=224), **kwargs)


@register_model
def tokshift_base_patch16_256(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """TokShift ViT-B/16 @ 256 (the paper's "MR")."""
    return _create_tokshift("tokshift_base_patch16_256", pretrained, dict(_B16, img_size=256), **kwargs)


@register_model
def tokshift_base_patch16_384(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """TokShift ViT-B/16 @ 384 (the paper's "HR")."""
    return _create_tokshift("tokshift_base_patch16_384", pretrained, dict(_B16, img_size=384), **kwargs)


@register_model
def tokshift_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """TokShift ViT-L/16 @ 224."""
    return _create_tokshift("tokshift_large_patch16_224", pretrained, dict(_L16, img_size=224), **kwargs)


@register_model
def tokshift_large_patch16_256(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """TokShift ViT-L/16 @ 256."""
    return _create_tokshift("tokshift_large_patch16_256", pretrained, dict(_L16, img_size=256), **kwargs)


@register_model
def tokshift_large_patch16_384(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """TokShift ViT-L/16 @ 384 (paper: 80.40 top-1 with 12 frames)."""
    return _create_tokshift("tokshift_large_patch16_384", pretrained, dict(_L16, img_size=384), **kwargs)


@register_model
def vit_video_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """Video ViT-B/16 @ 224 without shift: the authors' baseline (frame logits averaged)."""
    return _create_tokshift("vit_video_base_patch16_224", pretrained,
                            dict(_B16, img_size=224, shift=False), **kwargs)


@register_model
def vit_video_base_patch16_256(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """Video ViT-B/16 @ 256 without shift."""
    return _create_tokshift("vit_video_base_patch16_256", pretrained,
                            dict(_B16, img_size=256, shift=False), **kwargs)


@register_model
def vit_video_base_patch16_384(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """Video ViT-B/16 @ 384 without shift."""
    return _create_tokshift("vit_video_base_patch16_384", pretrained,
                            dict(_B16, img_size=384, shift=False), **kwargs)


@register_model
def vit_video_large_patch16_224(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """Video ViT-L/16 @ 224 without shift."""
    return _create_tokshift("vit_video_large_patch16_224", pretrained,
                            dict(_L16, img_size=224, shift=False), **kwargs)


@register_model
def vit_video_large_patch16_256(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """Video ViT-L/16 @ 256 without shift."""
    return _create_tokshift("vit_video_large_patch16_256", pretrained,
                            dict(_L16, img_size=256, shift=False), **kwargs)


@register_model
def vit_video_large_patch16_384(pretrained: bool = False, **kwargs: Any) -> TokShiftViT:
    """Video ViT-L/16 @ 384 without shift."""
    return _create_tokshift("vit_video_large_patch16_384", pretrained,
                            dict(_L16, img_size=384, shift=False), **kwargs)
