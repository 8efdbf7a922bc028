"""Segmentation models behind one interface: build from a bundle spec, save/load bundles with
safetensors weights, and predict per-class probabilities with :class:`Predictor`."""

from geoseg.models.factory import build_model, count_parameters
from geoseg.models.onnx import export_onnx
from geoseg.models.predictor import Instance, Predictor
from geoseg.models.weights import load_weights, save_bundle

__all__ = ["Instance", "Predictor", "build_model", "count_parameters", "export_onnx",
           "load_weights", "save_bundle"]
