"""ONNX Runtime on the CPU: ``torch.onnx.export`` (TorchScript exporter, dynamic batch) of
:class:`~.graph.FrameFeatures` into ``model.onnx``, run by the CPU execution provider with every graph
optimisation; float32 only on the CPU (int8 through NNCF's ONNX backend)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .base import Network, Runtime


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    package = "onnxruntime"
    fmt = "onnx"
    files = ("model.onnx",)
    precisions = ("float32", "int8")
    exact = ("float32",)

    def _import(self) -> Any:
        import onnxruntime

        return onnxruntime

    def convert(self, net: nn.Module, example: torch.Tensor, folder: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (example,), str(folder / "model.onnx"), input_names=["clips"],
                              output_names=["features"], opset_version=17, dynamo=False,
                              dynamic_axes={"clips": {0: "batch"}, "features": {0: "batch"}})

    def load(self, folder: Path, precision: str, *, threads: int | None = None) -> Network:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = int(threads)
        sess = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def run(x: np.ndarray) -> np.ndarray:
            return sess.run(None, {name: x})[0]

        return run

    def quantize(self, folder: Path, calibration: list[np.ndarray], out: Path) -> None:
        import nncf
        import onnx

        model = onnx.load(str(folder / "model.onnx"))
        name = model.graph.input[0].name
        q = nncf.quantize(model, nncf.Dataset(calibration, lambda x: {name: x}),
                          model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                          ignored_scope=nncf.IgnoredScope(types=["Conv"]))
        onnx.save(q, str(out / "model.onnx"))


RUNTIME = OnnxRuntime()
