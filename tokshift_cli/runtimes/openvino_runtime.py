"""OpenVINO on the CPU: ``openvino.convert_model`` of :class:`~.graph.FrameFeatures` (TorchScript tracing), IR
files ``model.xml``/``model.bin`` saved in float32 (``compress_to_fp16=False``), compiled with an inference
precision hint (``f32`` or ``bf16``); int8 with NNCF (:mod:`.quantize`)."""

from __future__ import annotations

import warnings

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Network, Runtime

#: ``--dtype``/``--precision`` -> OpenVINO's INFERENCE_PRECISION_HINT (int8 models keep f32 for what stays float).
_HINTS = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}


class OpenVINORuntime(Runtime):
    name = "openvino"
    package = "openvino"
    fmt = "openvino"
    files = ("model.xml", "model.bin")
    precisions = ("float32", "bfloat16", "int8")
    exact = ("float32", "bfloat16")  #: bfloat16: within bfloat16 rounding of torch's float32, as torch's own

    def _import(self) -> Any:
        import openvino

        return openvino

    def version(self) -> str:
        import openvino

        return openvino.get_version().split("-")[0]

    def convert(self, net: nn.Module, example: torch.Tensor, folder: Path) -> None:
        import openvino as ov

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's tracer warnings: the parity checks say what matters
            m = ov.convert_model(net, example_input=example,
                                 input=[ov.PartialShape([-1, *(int(s) for s in example.shape[1:])])])
        ov.save_model(m, str(folder / "model.xml"), compress_to_fp16=False)

    def load(self, folder: Path, precision: str, *, threads: int | None = None) -> Network:
        import openvino as ov

        core = ov.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _HINTS[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        compiled = core.compile_model(core.read_model(str(folder / "model.xml")), "CPU", config)
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> np.ndarray:
            request.infer({0: x})
            return request.get_output_tensor(0).data.copy()

        return run

    def quantize(self, folder: Path, calibration: list[np.ndarray], out: Path) -> None:
        import nncf
        import openvino as ov

        model = ov.Core().read_model(str(folder / "model.xml"))
        q = nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                          subset_size=len(calibration), ignored_scope=nncf.IgnoredScope(types=["Convolution"]))
        ov.save_model(q, str(out / "model.xml"), compress_to_fp16=False)


RUNTIME = OpenVINORuntime()
