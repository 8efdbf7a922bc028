"""ONNX export of a semantic bundle (for inference engines), recorded in its ``bundle.yaml``.

The graph takes *normalised* input ``(N, C, H, W)`` float32 and returns logits ``(N, K, H, W)``;
batch, height and width are dynamic (H and W multiples of 32).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from geoseg.bundle import read_spec, write_spec
from geoseg.errors import BundleError
from geoseg.models.factory import build_model, dummy_input, is_semantic
from geoseg.models.weights import load_weights, weights_path

logger = logging.getLogger(__name__)


def export_onnx(bundle_dir: str | Path, file_name: str = "model.onnx",
                opset: int = 17) -> Path:
    """Export the bundle's semantic model to ``bundle_dir/file_name`` and set ``onnx`` in its
    spec. Mask R-CNN bundles are refused (their post-processing is not exported)."""
    bundle_dir = Path(bundle_dir)
    spec = read_spec(bundle_dir)
    if not is_semantic(spec):
        raise BundleError(f"bundle {spec.name!r} is {spec.architecture.name}: only unet and "
                          "deeplabv3plus bundles can be exported to ONNX")
    model = build_model(spec)
    load_weights(model, weights_path(spec, bundle_dir))
    model.eval()
    path = bundle_dir / file_name
    # The TorchScript exporter: the dynamo one needs onnxscript, which geoseg does not require.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (dummy_input(spec, 64),), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"], opset_version=opset,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "logits": {0: "batch", 2: "height", 3: "width"}})
    write_spec(spec.model_copy(update={"onnx": file_name}), bundle_dir)
    logger.info("exported %s to %s", spec.name, path)
    return path
