"""convert: the authors' v1/v2 checkpoints -> model folder, checked against the authors' own outputs."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from parity import fixture_diffs
from tokshift_cli.models import convert as conv
from tokshift_cli.models import zoo
from tokshift_cli.models.config import TokShiftConfig, load_label_list
from tokshift_cli.models.convert import checkpoint_filter_fn, convert_checkpoint, expected_keys, infer_arch
from tokshift_cli.errors import ConversionError, ModelNotFoundError, OutputExistsError
from tokshift_cli.models.tokshift import create_model, load_state_dict_strict

DATA = Path(__file__).parent / "data"
SMALL_ARCH = {"embed_dim": 64, "depth": 2, "patch_size": 16, "img_size": 32, "num_classes": 7, "mlp_ratio": 2.0}


def _ckpt(name: str) -> dict:
    return torch.load(DATA / f"{name}.pth", map_location="cpu", weights_only=True)


def _tiny_v2(path: Path, num_classes: int = 400) -> Path:
    """A v2-layout checkpoint (timm names, DDP prefixes) of a 1-block, width-16 ViT."""
    torch.manual_seed(0)
    sd = {k: torch.randn(s) for k, s in {
        "cls_token": (1, 1, 16), "pos_embed": (1, 2, 16), "patch_embed.proj.weight": (16, 3, 16, 16),
        "patch_embed.proj.bias": (16,), "norm.weight": (16,), "norm.bias": (16,),
        "head.weight": (num_classes, 16), "head.bias": (num_classes,),
        **{f"blocks.0.{p}.weight": s for p, s in [("norm1", (16,)), ("attn.qkv", (48, 16)), ("attn.proj", (16, 16)),
                                                  ("norm2", (16,)), ("mlp.fc1", (64, 16)), ("mlp.fc2", (16, 64))]},
        **{f"blocks.0.{p}.bias": s for p, s in [("norm1", (16,)), ("attn.qkv", (48,)), ("attn.proj", (16,)),
                                                ("norm2", (16,)), ("mlp.fc1", (64,)), ("mlp.fc2", (16,))]},
    }.items()}
    torch.save({"epoch": 3, "state_dict": {f"module.base_model.{k}": v for k, v in sd.items()}}, path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, tuple[Path, TokShiftConfig]]:
    root = tmp_path_factory.mktemp("converted")
    return {v: (root / v, convert_checkpoint(DATA / f"{v}_small.pth", root / v, heads=4)) for v in ("v1", "v2")}


# --- parity with the authors' outputs -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_converted_checkpoint_matches_authors_outputs(converted, version: str):
    folder, config = converted[version]
    model = create_model(TokShiftConfig.from_file(folder / "config.json"))
    load_state_dict_strict(model, load_file(folder / "model.safetensors"), str(folder))
    _, d_logits, d_feats = fixture_diffs(model, np.load(DATA / f"{version}_small_io.npz"))
    print(f"{version}: max|logits diff| {d_logits:.3g}, max|features diff| {d_feats:.3g}")
    assert d_logits < 1e-4 and d_feats < 1e-4


def test_folder_contents(converted):
    folder, config = converted["v1"]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    with safe_open(folder / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(expected_keys(2))
    src = DATA / "v1_small.pth"
    assert config.source == {"format": "tokshift-v1", "file": "v1_small.pth",
                             "sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                             "converted_by": f"tokshift-cli {conv.__version__}",
                             "defaulted": ["num_frames", "fold_div", "frame_stride", "shift"]}
    assert (config.num_frames, config.fold_div, config.frame_stride, config.shift) == (8, 4, 32, True)
    assert {k: getattr(config, k) for k in SMALL_ARCH} == SMALL_ARCH and config.num_heads == 4
    # v1's class order is not published: never pretend
    assert config.label_order == "unknown" and config.id2label == {}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: tokshift-cli\n") and "- video-classification" in card
    assert config.source["sha256"] in card and "unknown" in card and "Token Shift Transformer" in card
    assert TokShiftConfig.from_file(folder / "config.json") == config


# --- the pure filter ------------------------------------------------------------------------------------------


def test_filter_fn_v1_fuses_qkv_and_strips_prefixes():
    raw = _ckpt("v1_small")["state_dict"]
    sd, fmt = checkpoint_filter_fn(_ckpt("v1_small"))
    assert fmt == "tokshift-v1" and sorted(sd) == sorted(expected_keys(2))
    pre = "module.base_model.transformer.encoder.layer.1.attn."
    for kind in ("weight", "bias"):
        want = torch.cat([raw[pre + f"{p}.{kind}"] for p in ("query", "key", "value")])
        assert torch.equal(sd[f"blocks.1.attn.qkv.{kind}"], want)
    # a bare state dict, prefixes in either order or none, gives the same result
    bare = {k.replace("module.base_model.", "base_model.module."): v for k, v in raw.items()}
    sd2, _ = checkpoint_filter_fn(bare)
    assert sd2.keys() == sd.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_filter_fn_v2_and_infer_arch():
    sd, fmt = checkpoint_filter_fn(_ckpt("v2_small"))
    assert fmt == "tokshift-v2" and sorted(sd) == sorted(expected_keys(2))
    assert infer_arch(sd) == SMALL_ARCH
    assert infer_arch(_ckpt("v1_small")) == SMALL_ARCH  # an authors' checkpoint is converted first


def test_filter_fn_errors_name_the_keys():
    ckpt = _ckpt("v1_small")
    ckpt["state_dict"]["module.base_model.transformer.embeddings.hybrid_model.root.conv.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match="hybrid_model.root.conv.weight"):
        checkpoint_filter_fn(ckpt)
    ckpt = _ckpt("v1_small")
    del ckpt["state_dict"]["module.base_model.transformer.encoder.layer.0.attn.key.bias"]
    with pytest.raises(ConversionError, match=r"layer\.0\.attn\.key\.bias"):
        checkpoint_filter_fn(ckpt)
    ckpt = _ckpt("v2_small")
    del ckpt["state_dict"]["module.base_model.blocks.1.mlp.fc2.weight"]
    ckpt["state_dict"]["module.base_model.dist_token"] = torch.zeros(1, 1, 64)
    with pytest.raises(ConversionError, match="dist_token"):
        checkpoint_filter_fn(ckpt)
    del ckpt["state_dict"]["module.base_model.dist_token"]
    with pytest.raises(ConversionError, match=r"lacks tensors: blocks\.1\.mlp\.fc2\.weight"):
        checkpoint_filter_fn(ckpt)
    with pytest.raises(ConversionError, match="unknown checkpoint layout"):
        checkpoint_filter_fn({"state_dict": {"features.0.weight": torch.zeros(1)}})
    with pytest.raises(ConversionError, match="no tensors"):
        checkpoint_filter_fn({"epoch": 1})


# --- convert_checkpoint: flags, arch, labels, output folder ------------------------------------------------------


def test_arch_gives_sampling_facts_and_flags_override(tmp_path, monkeypatch):
    entry = zoo.ZooEntry("tokshift-small-test", "test", {**SMALL_ARCH, "num_heads": 4, "num_frames": 12,
                                                            "frame_stride": 16, "fold_div": 3, "shift": False},
                         0.0, 0.0, None, "x", "x.yml")
    monkeypatch.setitem(zoo.ZOO, entry.name, entry)
    cfg = convert_checkpoint(DATA / "v2_small.pth", tmp_path / "a", arch=entry.name, frames=16)
    assert (cfg.num_frames, cfg.frame_stride, cfg.fold_div, cfg.shift, cfg.num_heads) == (16, 16, 3, False, 4)
    assert cfg.zoo_name == entry.name and cfg.source["defaulted"] == []
    assert TokShiftConfig.from_file(tmp_path / "a" / "config.json").num_frames == 16


def test_arch_that_does_not_match_the_tensors(tmp_path):
    with pytest.raises(ConversionError, match=r"does not match zoo model 'tokshift-b16-8x224'.*embed_dim 64"):
        convert_checkpoint(DATA / "v1_small.pth", tmp_path / "o", arch="tokshift-b16-8x224")
    with pytest.raises(ModelNotFoundError, match="tokshift-b16-8x224"):
        convert_checkpoint(DATA / "v1_small.pth", tmp_path / "o", arch="tokshift-b16-8x22")
    with pytest.raises(ConversionError, match="num_heads"):  # 64 wide, 5 heads
        convert_checkpoint(DATA / "v1_small.pth", tmp_path / "o", heads=5)
    assert not (tmp_path / "o").exists()


def test_labels(tmp_path):
    names = [f"action {i}" for i in range(7)]
    (tmp_path / "list.json").write_text(json.dumps(names))
    (tmp_path / "cate_dict.json").write_text(json.dumps({n: i for i, n in reversed(list(enumerate(names)))}))
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n\n")
    for i, f in enumerate(["list.json", "cate_dict.json", "classes.txt"]):
        cfg = convert_checkpoint(DATA / "v2_small.pth", tmp_path / f"o{i}", heads=4, labels=tmp_path / f)
        assert cfg.labels == names and cfg.label_order == "custom"
    (tmp_path / "short.json").write_text(json.dumps(names[:6]))
    with pytest.raises(ConversionError, match="6 classes.*has 7"):
        convert_checkpoint(DATA / "v2_small.pth", tmp_path / "x", heads=4, labels=tmp_path / "short.json")
    with pytest.raises(ConversionError, match="400 classes.*has 7"):
        convert_checkpoint(DATA / "v2_small.pth", tmp_path / "x", heads=4, labels="kinetics400-v2")
    with pytest.raises(ConversionError, match="not a known label order"):
        convert_checkpoint(DATA / "v2_small.pth", tmp_path / "x", heads=4, labels="kinetics-700")
    (tmp_path / "gap.json").write_text(json.dumps({n: 2 * i for i, n in enumerate(names)}))
    with pytest.raises(ConversionError, match="0..6"):
        convert_checkpoint(DATA / "v2_small.pth", tmp_path / "x", heads=4, labels=tmp_path / "gap.json")


def test_400_class_label_defaults(tmp_path):
    v2 = _tiny_v2(tmp_path / "v2_400.pth")
    cfg = convert_checkpoint(v2, tmp_path / "a")
    assert cfg.label_order == "kinetics400-v2" and cfg.labels == load_label_list("kinetics400-v2")
    assert cfg.num_heads == 1 and "num_heads" in cfg.source["defaulted"]
    # the authors' cate_dict.json ({name: index}) is recognised as the v2 order
    k400 = load_label_list("kinetics400-v2")
    (tmp_path / "cate_dict.json").write_text(json.dumps({n: i for i, n in enumerate(k400)}))
    cfg = convert_checkpoint(v2, tmp_path / "b", labels=tmp_path / "cate_dict.json")
    assert cfg.label_order == "kinetics400-v2"
    cfg = convert_checkpoint(v2, tmp_path / "c", labels="kinetics400-alphabetical")
    assert cfg.label_order == "kinetics400-alphabetical" and cfg.labels == sorted(cfg.labels)


def test_existing_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    convert_checkpoint(DATA / "v2_small.pth", out, heads=4)  # an empty folder is fine
    (out / "stale.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        convert_checkpoint(DATA / "v2_small.pth", out, heads=4)
    assert (out / "stale.txt").exists()
    convert_checkpoint(DATA / "v1_small.pth", out, heads=4, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert TokShiftConfig.from_file(out / "config.json").source["format"] == "tokshift-v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_verification_leaves_nothing(tmp_path, monkeypatch):
    def broken(folder, sd):
        raise ConversionError("round-trip check failed: test")

    monkeypatch.setattr(conv, "_verify_folder", broken)
    with pytest.raises(ConversionError, match="round-trip"):
        convert_checkpoint(DATA / "v2_small.pth", tmp_path / "out", heads=4)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(ConversionError, match="no such checkpoint"):
        convert_checkpoint(tmp_path / "missing.pth", tmp_path / "o")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="weights_only"):
        convert_checkpoint(tmp_path / "junk.pth", tmp_path / "o")
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"state_dict": Path("x")}, f, protocol=2)  # a non-allow-listed class: refused, not executed
    with pytest.raises(ConversionError, match="weights_only"):
        convert_checkpoint(tmp_path / "evil.pth", tmp_path / "o")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ConversionError, match="not a checkpoint dict"):
        convert_checkpoint(tmp_path / "list.pth", tmp_path / "o")


# --- model folders are used, not converted (issue 20) -----------------------------------------------------------


def test_a_model_folder_or_its_safetensors_is_refused_with_the_way_to_use_it(converted, tmp_path):
    """A folder this tool wrote (or its model.safetensors), and a Hub folder: exit 2 saying to use it with
    --model, never a new config with the labels lost and the heads defaulted."""
    from typer.testing import CliRunner

    from tokshift_cli.cli import app

    folder, cfg = converted["v2"]
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224", "num_classes": 7}))
    (hub / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes((folder / "model.safetensors").read_bytes())
    cases = [(folder, "TokShift model folder"), (folder / "model.safetensors", "TokShift model folder"),
             (hub, "Hub model folder"), (bare, "without its config.json")]
    for src, what in cases:
        r = CliRunner().invoke(app, ["convert", str(src), "--out", str(tmp_path / "c")])
        assert r.exit_code == 2 and what in r.output, (src, r.output)
        assert "--model" in r.output and "Traceback" not in r.output
        assert not (tmp_path / "c").exists()


def test_defaulted_heads_and_unknown_labels_are_said(tmp_path):
    """What the checkpoint does not hold is never replaced silently: the summary names each defaulted value,
    the option that sets it, and the unknown labels."""
    from typer.testing import CliRunner

    from tokshift_cli.cli import app

    r = CliRunner().invoke(app, ["convert", str(DATA / "v1_small.pth"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "defaulted: num_frames 8 (--frames)" in out and "num_heads 1 (--heads)" in out, out
    assert "labels unknown" in out and "--labels" in out
    r = CliRunner().invoke(app, ["convert", str(DATA / "v1_small.pth"), "--out", str(tmp_path / "d"), "--heads", "4",
                                 "--frames", "8", "--stride", "32", "--fold-div", "4", "--labels",
                                 str(_labels_file(tmp_path, 7))])
    out = " ".join(r.output.split())
    assert r.exit_code == 0 and "defaulted: shift True (--arch);" in out and "labels unknown" not in out, out


def _labels_file(tmp_path: Path, n: int) -> Path:
    p = tmp_path / "labels.txt"
    p.write_text("".join(f"class {i}\n" for i in range(n)))
    return p
