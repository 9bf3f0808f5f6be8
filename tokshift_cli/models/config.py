"""The model configuration stored as ``config.json`` beside ``model.safetensors``.

It carries everything the weights do not: frames, frame stride, fold_div, normalisation, the label list in the
checkpoint's own class order, and where the weights came from. Pure Python (no torch import).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import WeightsError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "tokshift"
#: Bumped when config.json changes in a way older tool versions cannot read.
CONFIG_VERSION = 1


@dataclass
class TokShiftConfig:
    """Architecture, sampling and label facts of one TokShift checkpoint."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_frames: int = 8
    frame_stride: int = 32
    fold_div: int = 4
    shift: bool = True
    num_classes: int = 400
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    #: Which class order ``id2label`` follows: "kinetics400-v2" (the LAPS repo's cate_dict.json),
    #: "kinetics400-alphabetical", "custom", or "unknown".
    label_order: str = "kinetics400-v2"
    id2label: dict[int, str] = field(default_factory=dict)
    #: True for random/untrained weights (the bundled demo model): its labels mean nothing.
    untrained: bool = False
    #: Zoo name this checkpoint implements, if any.
    zoo_name: str | None = None
    #: Provenance: {"format": "tokshift-v1"|"tokshift-v2", "file": name, "sha256": hex, ...}.
    source: dict[str, Any] = field(default_factory=dict)

    # -- derived -------------------------------------------------------------------------------------------
    @property
    def crop_size(self) -> int:
        """Spatial size of one view (the model's input resolution)."""
        return self.img_size

    @property
    def timm_name(self) -> str:
        """The registered timm architecture name closest to this config."""
        size = {768: "base", 1024: "large", 384: "small", 192: "tiny"}.get(self.embed_dim, f"d{self.embed_dim}")
        prefix = "tokshift" if self.shift else "vit_video"
        return f"{prefix}_{size}_patch{self.patch_size}_{self.img_size}"

    @property
    def labels(self) -> list[str]:
        """Class names by index; ``class_N`` where the config has none."""
        return [self.id2label.get(i, f"class_{i}") for i in range(self.num_classes)]

    # -- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["id2label"] = {str(k): v for k, v in sorted(self.id2label.items())}
        return {"model_type": MODEL_TYPE, "config_version": CONFIG_VERSION, "tool_version": __version__, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = CONFIG_NAME) -> "TokShiftConfig":
        """Build a config from parsed JSON, with errors that name ``source`` and say what to do."""
        if not isinstance(d, dict):
            raise WeightsError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise WeightsError(f"{source}: model_type is {d.get('model_type')!r}, not {MODEL_TYPE!r}: "
                               "this folder does not hold a TokShift model")
        version = d.get("config_version", CONFIG_VERSION)
        if not isinstance(version, int) or version > CONFIG_VERSION:
            raise WeightsError(
                f"{source}: config_version {version!r} was written by a newer tokshift-cli "
                f"({d.get('tool_version', '?')}); this is {__version__} (reads up to {CONFIG_VERSION}). "
                "Upgrade: pip install -U tokshift-cli")
        known = {f for f in cls.__dataclass_fields__}
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            if "id2label" in kwargs:
                kwargs["id2label"] = {int(k): str(v) for k, v in kwargs["id2label"].items()}
            for key in ("mean", "std"):
                if key in kwargs:
                    kwargs[key] = tuple(float(x) for x in kwargs[key])
                    if len(kwargs[key]) != 3:
                        raise ValueError(f"{key} must have 3 values")
            cfg = cls(**kwargs)
            cfg.validate()
        except (TypeError, ValueError, AttributeError) as e:
            raise WeightsError(f"{source}: invalid TokShift config ({e}); re-create it with `tokshift convert`")
        return cfg

    def validate(self) -> None:
        """Raise ValueError on values no model can have."""
        ints = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "num_frames", "frame_stride",
                "fold_div", "num_classes")
        for name in ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        if self.fold_div < 2:
            raise ValueError(f"fold_div must be >= 2, got {self.fold_div}")

    @classmethod
    def from_file(cls, path: str | Path) -> "TokShiftConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise WeightsError(f"{path}: no config.json; a TokShift model folder needs config.json beside "
                               "model.safetensors (create both with `tokshift convert CHECKPOINT --out DIR`)")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise WeightsError(f"{path}: not readable JSON ({e}); re-create it with `tokshift convert`")
        return cls.from_dict(d, source=str(path))

    def save(self, folder: str | Path) -> Path:
        from ..outputs import atomic_write_text  # local: outputs is light, but keep config import-free

        path = Path(folder) / CONFIG_NAME
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def load_label_list(order: str) -> list[str]:
    """Kinetics-400 class names shipped with the package, by order name."""
    from importlib.resources import files

    names = {"kinetics400-v2": "kinetics400_v2.json", "kinetics400-alphabetical": "kinetics400_alphabetical.json"}
    if order not in names:
        raise ValueError(f"unknown label order {order!r}; known: {', '.join(names)}")
    return json.loads(files("tokshift_cli").joinpath("data", names[order]).read_text(encoding="utf-8"))
