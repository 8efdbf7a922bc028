"""Segmentation models behind one interface: build from a bundle spec, save/load bundles with
safetensors weights, and predict per-class probabilities with :class:`Predictor`.

The names are imported on first use, so that ``geoseg.models.preflight`` (which the driver runs
before any worker starts) does not load torch into the driver."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoseg.models.factory import build_model, count_parameters
    from geoseg.models.onnx import export_onnx
    from geoseg.models.predictor import Instance, Predictor
    from geoseg.models.weights import load_weights, save_bundle

_HOME = {"build_model": "factory", "count_parameters": "factory", "export_onnx": "onnx",
         "Instance": "predictor", "Predictor": "predictor", "load_weights": "weights",
         "save_bundle": "weights"}

__all__ = ["Instance", "Predictor", "build_model", "count_parameters", "export_onnx",
           "load_weights", "save_bundle"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"geoseg.models.{_HOME[name]}"), name)
