"""TokShiftViT: the shift operator, the block, autograd, timm registration, the bundled demo model.

Parity with the authors' code on converted checkpoints is in test_convert.py; here the v1 weights come through
the pure ``checkpoint_filter_fn``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import timm
from timm.models.vision_transformer import Block

from parity import fixture_diffs
from tokshift_cli.models import zoo
from tokshift_cli.models.config import TokShiftConfig
from tokshift_cli.models.convert import checkpoint_filter_fn
from tokshift_cli.errors import WeightsError
from tokshift_cli.models import tokshift as tsm
from tokshift_cli.models.tokshift import TokShiftBlock, TokShiftViT, create_model, load_state_dict_strict, token_shift_

DATA = Path(__file__).parent / "data"
SMALL = TokShiftConfig(img_size=32, patch_size=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=2.0,
                       num_classes=7, label_order="unknown")


def reference_shift(x: torch.Tensor, num_frames: int, fold_div: int) -> torch.Tensor:
    """The authors' out-of-place TokShift (zeros_like of all tokens), for comparison."""
    bt, n, c = x.shape
    x = x.view(bt // num_frames, num_frames, n, c)
    fold = c // fold_div
    out = torch.zeros_like(x)
    out[:, :-1, 0, :fold] = x[:, 1:, 0, :fold]
    out[:, 1:, 0, fold:2 * fold] = x[:, :-1, 0, fold:2 * fold]
    out[:, :, 1:, :2 * fold] = x[:, :, 1:, :2 * fold]
    out[:, :, :, 2 * fold:] = x[:, :, :, 2 * fold:]
    return out.view(bt, n, c)


class _BigOutputs(TorchDispatchMode):
    """Records ops that allocate a tensor at least as large as the token tensor (views and in-place excluded)."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.ops = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                if isinstance(a, torch.Tensor)}
        for o in tree_flatten(out)[0]:
            if (isinstance(o, torch.Tensor) and o.numel() >= self.numel
                    and o.untyped_storage().data_ptr() not in seen):
                self.ops.append(str(func))
        return out


@pytest.fixture(scope="module")
def v1_weights() -> dict[str, torch.Tensor]:
    return checkpoint_filter_fn(torch.load(DATA / "v1_small.pth", map_location="cpu", weights_only=True))[0]


# --- the shift operator -----------------------------------------------------------------------------------


def test_token_shift_exact_values():
    b, t, n, c, fold_div = 2, 4, 3, 8, 4  # fold = 2: channels 0-1 come from t+1, 2-3 from t-1, 4-7 stay
    x = torch.arange(b * t * n * c, dtype=torch.float32).view(b * t, n, c)
    orig = x.clone()
    ptr = x.data_ptr()
    out = token_shift_(x, t, fold_div)
    assert out is x and x.data_ptr() == ptr  # in place, same storage
    o, y = orig.view(b, t, n, c), x.view(b, t, n, c)
    for bi in range(b):
        for ti in range(t):
            cls, src = y[bi, ti, 0], o[bi, ti, 0]
            assert torch.equal(cls[:2], o[bi, ti + 1, 0, :2] if ti < t - 1 else torch.zeros(2))
            assert torch.equal(cls[2:4], o[bi, ti - 1, 0, 2:4] if ti > 0 else torch.zeros(2))
            assert torch.equal(cls[4:], src[4:])
            assert torch.equal(y[bi, ti, 1:], o[bi, ti, 1:])  # patch tokens untouched
    # clips in a batch never exchange frames: clip 1 frame 0 got zeros, not clip 0's last frame
    assert torch.equal(y[1, 0, 0, 2:4], torch.zeros(2))


@pytest.mark.parametrize("t,fold_div,c", [(8, 4, 64), (12, 3, 48), (16, 8, 40), (1, 4, 16), (8, 4, 6)])
def test_token_shift_matches_authors(t: int, fold_div: int, c: int):
    x = torch.randn(3 * t, 5, c)
    assert torch.equal(token_shift_(x.clone(), t, fold_div), reference_shift(x, t, fold_div))


def test_token_shift_allocates_nothing_token_sized():
    x = torch.randn(2 * 8, 197, 64)
    with _BigOutputs(x.numel()) as mode:
        token_shift_(x, 8, 4)
    assert mode.ops == []
    with _BigOutputs(x.numel()) as mode:  # the counter does see the authors' zeros_like
        reference_shift(x, 8, 4)
    assert mode.ops == ["aten.zeros_like.default"]


def test_block_allocates_like_timm_block_and_mirrors_it():
    torch.manual_seed(0)
    plain = Block(64, 4, mlp_ratio=2.0, qkv_bias=True).eval()
    shifted = TokShiftBlock(64, 4, mlp_ratio=2.0, qkv_bias=True, num_frames=8, fold_div=4).eval()
    shifted.load_state_dict(plain.state_dict())
    x = torch.randn(16, 5, 64)
    with torch.inference_mode():
        with _BigOutputs(x.numel()) as m_plain:
            plain(x.clone())
        with _BigOutputs(x.numel()) as m_shift:
            got = shifted(x.clone())
        assert m_shift.ops == m_plain.ops  # the shift adds no token-sized tensor
        # the same block written out of place: shift, residual attn, shift, residual mlp
        h = reference_shift(x, 8, 4)
        h = h + plain.attn(plain.norm1(h))
        h = reference_shift(h, 8, 4)
        want = h + plain.mlp(plain.norm2(h))
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        # fold 0 (fold_div > C) is timm's Block exactly
        shifted.fold_div = 1000
        torch.testing.assert_close(shifted(x.clone()), plain(x.clone()), rtol=0, atol=0)


# --- the model ----------------------------------------------------------------------------------------------


def test_create_model_maps_config():
    model = create_model(SMALL)
    assert isinstance(model, TokShiftViT) and not model.training and model.config is SMALL
    assert len(model.blocks) == 2 and all(isinstance(b, TokShiftBlock) for b in model.blocks)
    blk = model.blocks[0]
    assert blk.attn.num_heads == 4 and blk.attn.qkv.bias is not None and blk.attn.fused_attn
    assert blk.mlp.fc1.out_features == 128 and blk.mlp.act.approximate == "none"
    assert blk.norm1.eps == model.norm.eps == 1e-6
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    plain = create_model(dataclasses.replace(SMALL, shift=False))
    assert type(plain.blocks[0]) is Block and plain.state_dict().keys() == model.state_dict().keys()


def test_outputs_shapes_and_any_frame_count():
    model = create_model(SMALL)
    with torch.inference_mode():
        for t in (8, 12, 16):
            x = torch.randn(2, t, 3, 32, 32)
            frames = model.forward_frame_features(x)
            assert frames.shape == (2, t, 64)
            logits, feats = model.forward_logits_and_features(x)
            assert logits.shape == (2, 7) and feats.shape == (2, 64)
            torch.testing.assert_close(logits, model(x), rtol=0, atol=0)
            torch.testing.assert_close(feats, model.forward_features(x), rtol=0, atol=0)
            torch.testing.assert_close(model.forward_head(frames), logits, rtol=0, atol=0)
            torch.testing.assert_close(model.forward_head(frames, pre_logits=True), feats, rtol=0, atol=0)
            # clips of a batch are independent
            torch.testing.assert_close(model(x[1:]), logits[1:], rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
            model(torch.randn(8, 3, 32, 32))


def test_shift_false_is_the_authors_plain_vit(v1_weights):
    io, plain_io = np.load(DATA / "v1_small_io.npz"), np.load(DATA / "v1_small_plainvit_io.npz")
    model = create_model(dataclasses.replace(SMALL, shift=False))
    load_state_dict_strict(model, v1_weights, "v1_small.pth")
    logits, d_logits, d_feats = fixture_diffs(model, plain_io)
    print(f"v1 plain ViT (shift=False): max|logits diff| {d_logits:.3g}, max|features diff| {d_feats:.3g}")
    assert d_logits < 1e-4 and d_feats < 1e-4
    assert np.abs(logits.numpy() - io["logits"]).max() > 1e-2  # the shift matters


def test_autograd_matches_out_of_place_shift(monkeypatch):
    torch.manual_seed(0)
    model = create_model(SMALL).train()
    x = torch.randn(2, 8, 3, 32, 32)

    def grads(m: TokShiftViT) -> dict[str, torch.Tensor]:
        m.zero_grad()
        xi = x.clone().requires_grad_(True)
        m(xi).square().sum().backward()
        return {"input": xi.grad.clone(), **{k: p.grad.clone() for k, p in m.named_parameters()}}

    inplace = grads(model)
    model.set_grad_checkpointing(True)
    checkpointed = grads(model)
    model.set_grad_checkpointing(False)
    monkeypatch.setattr(tsm, "token_shift_", lambda t, n, f: reference_shift(t, n, f))
    reference = grads(model)
    for k in reference:
        torch.testing.assert_close(inplace[k], reference[k], rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(checkpointed[k], reference[k], rtol=1e-5, atol=1e-6, msg=k)


def test_load_state_dict_strict_names_the_problem():
    model = create_model(SMALL)
    sd = dict(model.state_dict())
    sd.pop("blocks.1.norm2.bias")
    sd["blocks.9.extra"] = torch.zeros(1)
    sd["head.weight"] = torch.zeros(400, 64)
    with pytest.raises(WeightsError) as e:
        load_state_dict_strict(model, sd, "some/model.safetensors")
    msg = str(e.value)
    assert "some/model.safetensors" in msg and "blocks.1.norm2.bias" in msg and "blocks.9.extra" in msg
    assert "head.weight (400, 64)" in msg and "tokshift convert" in msg
    # a model built on the meta device (no random init) takes the tensors themselves
    meta = create_model(SMALL, device="meta")
    load_state_dict_strict(meta, model.state_dict(), "x")
    assert not any(p.is_meta for p in meta.parameters())
    x = torch.randn(1, 8, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(meta(x), model(x), rtol=0, atol=0)


# --- timm registry --------------------------------------------------------------------------------------------


def test_timm_create_model():
    model = timm.create_model("tokshift_base_patch16_224", num_frames=8, num_classes=400, device="meta")
    assert isinstance(model, TokShiftViT) and model.shift and model.num_frames == 8
    assert len(model.blocks) == 12 and model.embed_dim == 768 and model.blocks[0].attn.num_heads == 12
    assert model.head.out_features == 400 and model.pos_embed.shape == (1, 197, 768)
    plain = timm.create_model("vit_video_large_patch16_384", device="meta")
    assert not plain.shift and len(plain.blocks) == 24 and plain.pos_embed.shape == (1, 577, 1024)
    small = timm.create_model("tokshift_base_patch16_224", img_size=32, embed_dim=64, depth=2, num_heads=4,
                              num_classes=7, fold_div=8)
    assert small.blocks[0].fold_div == 8
    assert small(torch.randn(1, 8, 3, 32, 32)).shape == (1, 7)


def test_timm_names_cover_the_zoo_and_refuse_pretrained():
    for entry in zoo.ZOO.values():
        name = TokShiftConfig(**entry.arch).timm_name
        assert timm.is_model(name), name
    with pytest.raises(RuntimeError, match="load_model"):
        timm.create_model("tokshift_base_patch16_224", pretrained=True)


# --- the bundled demo model ----------------------------------------------------------------------------------


BUNDLED = Path(tsm.__file__).parent.parent / "data" / zoo.BUNDLED_UNTRAINED


def test_bundled_model_is_marked_untrained():
    config = TokShiftConfig.from_file(BUNDLED / "config.json")
    assert config.untrained and config.zoo_name == zoo.BUNDLED_UNTRAINED
    assert config.source["format"] == "tokshift-v1" and config.label_order == "kinetics400-v2"
    assert "Untrained" in (BUNDLED / "README.md").read_text(encoding="utf-8")
    assert json.loads((BUNDLED / "config.json").read_text())["untrained"] is True


def test_bundled_model_reproduces_authors_pipeline_logits():
    """preproc_bikes.npz: the authors' v1 code scored clip 0's centre view of bikes.mp4 with v1_tiny224."""
    from safetensors.torch import load_file

    config = TokShiftConfig.from_file(BUNDLED / "config.json")
    model = create_model(config)
    load_state_dict_strict(model, load_file(BUNDLED / "model.safetensors"), str(BUNDLED))
    ref = np.load(DATA / "bikes_clip0_centre.npz")
    x = torch.from_numpy(ref["clip0_centre"]).float()  # the view they fed, stored as float16
    with torch.inference_mode():
        logits = model(x).numpy()
    diff = np.abs(logits - ref["view_logits"]).max()
    print(f"bundled model vs authors on bikes clip 0 centre: max|logits diff| {diff:.3g} "
          f"(logits up to {np.abs(ref['view_logits']).max():.1f})")
    # float16 storage of the input alone moves these logits by ~7e-4 (half-ulp noise); fp32 model is exact
    assert diff < 2e-3
    assert (logits.argmax(1) == ref["view_logits"].argmax(1)).all()
