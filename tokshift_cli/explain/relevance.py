"""Relevance of every frame's patches for one class: Chefer's rule and attention rollout, through the token shift.

Chefer, Gur, Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and Encoder-Decoder
Transformers" (ICCV 2021; github.com/hila-chefer/Transformer-MM-Explainability): per block
``R += mean_heads(clamp(grad * attn, 0)) @ R`` from ``R = I``, and the [CLS] row of ``R`` is the map. TokShift
runs the ViT on the ``T`` frames of a clip and mixes them in one place only: before the attention and again
before the MLP, frame ``t``'s [CLS] takes ``C / fold_div`` channels from frame ``t+1`` and as many from ``t-1``.
So relevance is kept jointly over all ``T * (N + 1)`` tokens of a clip, and each shift is one more token-mixing
step ``S`` in that product: a block is ``R <- S (I + A) S R`` (``A``: the block's head-averaged, gradient-weighted,
per-frame attention, block-diagonal over frames). ``S`` moves a [CLS] token's relevance to the frames its channels
came from, in proportion to those channels' share of it (``shift_rule``):

* ``"gradient"`` (default): the share of ``clamp(grad * activation, 0)`` of the shifted [CLS] that the channels
  from ``t+1`` (and from ``t-1``) hold, measured at that shift in this very forward and backward pass;
* ``"channels"``: their share of the channel count, ``1 / fold_div`` each way (no gradients needed: rollout's).

The zeros shifted in at the clip's ends carry no information: their share of relevance leaves the map. The clip
logit is the mean of the frames' logits, so every frame's [CLS] starts with ``1 / T`` of the target's relevance.
Only the row the maps need is computed (``v^T S(I+A_L)S ... S(I+A_1)S``, right to left from the last block: the
same numbers as the full product, ``O(T N^2)`` per block instead of ``O(T^3 N^3)``). ``follow_shift=False`` keeps
every frame to itself (per-frame Chefer; a plain ViT has no shift either way).

Attention weights come from timm's non-fused attention path (its ``fused_attn`` switched off for this forward
only, the softmax output caught where it enters ``attn_drop``); the prediction itself stays the fast path's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

__all__ = ["METHODS", "SHIFT_RULES", "RelevanceResult", "relevance", "capture_attention", "start_weights"]

#: Relevance methods (the first is the default): gradient-weighted attention (Chefer), attention rollout (Abnar &
#: Zuidema 2020, no backward pass), and gradient x input (a baseline, per patch).
METHODS = ("chefer", "rollout", "gradxinput")
SHIFT_RULES = ("gradient", "channels")


@dataclass
class RelevanceResult:
    maps: torch.Tensor  #: [B, T, h, w] float32, relevance of each patch (not normalised)
    logits: torch.Tensor  #: [B, K] float32 logits of the explain forward (non-fused attention, float32)


class _Capture:
    """Attention probabilities (and, with autograd, their gradients) of every block, and the [CLS] rows right
    after each shift (post-shift activations and their gradients, for ``shift_rule="gradient"``)."""

    def __init__(self) -> None:
        self.attn: list[torch.Tensor] = []
        self.shifted: list[torch.Tensor] = []  # per block: the post-shift tokens entering norm1, then norm2


@contextlib.contextmanager
def capture_attention(model: torch.nn.Module, *, shifted: bool = False) -> Iterator[_Capture]:
    """Run ``model``'s blocks through timm's non-fused attention and record each block's attention
    probabilities ``[B*T, heads, N+1, N+1]`` (with ``.retain_grad()`` when autograd records); ``shifted`` also
    records the tokens entering ``norm1`` and ``norm2`` (the post-shift tokens of a TokShift block). Everything is
    restored on exit."""
    cap = _Capture()
    handles: list[Any] = []
    saved: list[tuple[Any, bool]] = []

    def on_attn(_m: Any, _inp: Any, out: torch.Tensor) -> None:
        if out.requires_grad:
            out.retain_grad()
        cap.attn.append(out)

    def on_norm_input(_m: Any, inp: tuple[torch.Tensor, ...]) -> None:
        x = inp[0]  # the block's tokens right after a shift (nothing writes to them afterwards)
        if x.requires_grad:
            x.retain_grad()
        cap.shifted.append(x)

    try:
        for blk in model.blocks:
            attn = blk.attn
            if not hasattr(attn, "fused_attn") or not hasattr(attn, "attn_drop"):
                raise TypeError(f"{type(attn).__name__}: not timm's Attention; explain cannot read its weights")
            saved.append((attn, attn.fused_attn))
            attn.fused_attn = False
            handles.append(attn.attn_drop.register_forward_hook(on_attn))
            if shifted:
                handles.append(blk.norm1.register_forward_pre_hook(on_norm_input))
                handles.append(blk.norm2.register_forward_pre_hook(on_norm_input))
        yield cap
    finally:
        for h in handles:
            h.remove()
        for attn, fused in saved:
            attn.fused_attn = fused


def _frame_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-frame logits ``[B, T, K]`` (their mean over T is the clip's logits)."""
    feats = model.forward_frame_features(x)
    return model.head(model.head_drop(model.fc_norm(feats)))


def _shift_rows(u: torch.Tensor, own: torch.Tensor, back: torch.Tensor, fwd: torch.Tensor) -> torch.Tensor:
    """``u S`` for a row ``u`` ``[B, T, N+1]`` of relevance: the post-shift [CLS] of frame t keeps ``own[:, t]`` of
    its relevance, gives ``back[:, t]`` to frame t+1's [CLS] (the channels it took from there) and ``fwd[:, t]``
    to frame t-1's. Shares of the zeros shifted in at the clip ends are not in any of the three: they leave."""
    cls = u[:, :, 0]
    to_next = torch.zeros_like(cls)
    to_next[:, 1:] = (cls * back)[:, :-1]  # frame t's share `back` lands on frame t+1
    to_prev = torch.zeros_like(cls)
    to_prev[:, :-1] = (cls * fwd)[:, 1:]  # frame t's share `fwd` lands on frame t-1
    out = u.clone()
    out[:, :, 0] = cls * own + to_next + to_prev
    return out


def _shares(cap: _Capture | None, index: int, b: int, t: int, fold: int, dim: int, rule: str
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(own, back, fwd) shares ``[B, T]`` of the shift recorded at position ``index`` (2 per block)."""
    if rule == "channels":
        back = torch.full((b, t), fold / dim)
        fwd = back.clone()
        own = 1.0 - back - fwd
    else:
        x = cap.shifted[index]
        if x.grad is None:
            raise RuntimeError("shift_rule='gradient' needs the gradients of the shifted [CLS] tokens")
        p = (x.grad[:, 0] * x[:, 0]).clamp(min=0).detach().float().view(b, t, -1).cpu()
        total = p.sum(-1)
        ok = total > 0
        total = torch.where(ok, total, torch.ones_like(total))
        back = torch.where(ok, p[..., :fold].sum(-1) / total, torch.full_like(total, fold / dim))
        fwd = torch.where(ok, p[..., fold:2 * fold].sum(-1) / total, torch.full_like(total, fold / dim))
        own = 1.0 - back - fwd
    back[:, -1] = 0.0  # the last frame's `back` channels are zeros: that share goes nowhere
    fwd[:, 0] = 0.0
    return own, back, fwd


def start_weights(frame_logits: torch.Tensor, target: torch.Tensor, rule: str = "margin") -> torch.Tensor:
    """How the target's relevance starts on the T frames' [CLS] tokens ``[B, T]`` (each row sums to 1). The clip
    logit is the mean of the frames' logits; ``"margin"`` gives each frame its share of the positive margins
    ``logit_t[target] - mean_k logit_t[k]`` (frames that argue for the target), ``"uniform"`` 1/T each (also where
    no frame has a positive margin)."""
    b, t, _ = frame_logits.shape
    uniform = torch.full((b, t), 1.0 / t, device=frame_logits.device)
    if rule == "uniform":
        return uniform
    tl = frame_logits.gather(2, target.view(b, 1, 1).expand(b, t, 1)).squeeze(2)
    m = (tl - frame_logits.mean(2)).clamp(min=0)
    total = m.sum(1, keepdim=True)
    return torch.where(total > 0, m / total.clamp(min=1e-30), uniform)


def relevance(model: torch.nn.Module, views: torch.Tensor, target: int | torch.Tensor, *, method: str = "chefer",
              follow_shift: bool = True, shift_rule: str = "gradient", frame_weights: str = "margin"
              ) -> RelevanceResult:
    """Relevance maps ``[B, T, h, w]`` of clips ``views`` ``[B, T, 3, S, S]`` for class ``target`` (one index, or
    one per clip), in float32, each clip on its own (the same maps at batch 1 and batch N). See the module
    docstring for the rules; ``gradxinput`` sums ``|sum_channels grad * input|`` over each patch."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    if shift_rule not in SHIFT_RULES:
        raise ValueError(f"shift_rule {shift_rule!r}: choose one of {', '.join(SHIFT_RULES)}")
    cfg = model.config
    b, t = views.shape[:2]
    side = cfg.img_size // cfg.patch_size
    n = side * side
    device = next(model.parameters()).device
    x = views.to(device=device, dtype=torch.float32).detach()
    tgt = torch.as_tensor(target, device=device).long().expand(b) if not torch.is_tensor(target) or \
        target.ndim == 0 else target.to(device).long()
    shifting = bool(getattr(model, "shift", False)) and follow_shift
    dim = cfg.embed_dim
    fold = (dim // cfg.fold_div) if shifting else 0
    need_grad = method in ("chefer", "gradxinput") or (shifting and shift_rule == "gradient")
    rule = shift_rule if method != "rollout" else "channels"  # rollout never takes gradients
    if method == "rollout":
        need_grad = False
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.enable_grad() if need_grad else torch.no_grad())
        stack.enter_context(torch.inference_mode(False))
        cap = stack.enter_context(capture_attention(model, shifted=shifting and rule == "gradient"))
        if need_grad:
            x.requires_grad_(True)  # the graph exists even if the weights are frozen
        frame_logits = _frame_logits(model, x)  # [B, T, K]
        logits = frame_logits.mean(1)
        if need_grad:
            score = logits.gather(1, tgt[:, None]).sum()  # clips are independent: each gets its own gradient
            model.zero_grad(set_to_none=True)
            score.backward()
    logits = logits.detach().float()
    if method == "gradxinput":
        gx = (x.grad * x.detach()).sum(2).abs()  # [B, T, S, S]
        p = cfg.patch_size
        maps = gx.view(b, t, side, p, side, p).sum((3, 5))
        return RelevanceResult(maps.float().cpu(), logits.cpu())
    u = torch.zeros(b, t, n + 1, device=device)
    u[:, :, 0] = start_weights(frame_logits.detach().float(), tgt, frame_weights)
    for li in range(len(cap.attn) - 1, -1, -1):
        a = cap.attn[li]
        if method == "chefer":
            cam = (a.grad * a).clamp(min=0).mean(1).detach()  # [B*T, N+1, N+1]
        else:
            cam = a.mean(1).detach()
        cam = cam.float().view(b, t, n + 1, n + 1)
        if shifting:  # the shift before the MLP
            u = _shift_rows(u, *(s.to(device) for s in _shares(cap, 2 * li + 1, b, t, fold, dim, rule)))
        if method == "chefer":
            u = u + torch.einsum("btn,btnm->btm", u, cam)
        else:  # rollout: (I + A) / 2, rows sum to one
            u = 0.5 * (u + torch.einsum("btn,btnm->btm", u, cam))
        if shifting:  # the shift before the attention
            u = _shift_rows(u, *(s.to(device) for s in _shares(cap, 2 * li, b, t, fold, dim, rule)))
    maps = u[:, :, 1:].reshape(b, t, side, side)
    return RelevanceResult(maps.float().cpu(), logits.cpu())
