"""The torch runtime: the model as it is (bfloat16 casts its weights once: ``cast_for_inference``); no files."""

from __future__ import annotations

from typing import Any

from .base import Runtime


class TorchRuntime(Runtime):
    name = "torch"
    package = "torch"
    precisions = ("float32", "bfloat16")
    exact = ("float32", "bfloat16")

    def _import(self) -> Any:
        import torch

        return torch


RUNTIME = TorchRuntime()
