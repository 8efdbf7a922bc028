"""ONNX export of a semantic bundle (for inference engines), recorded in its ``bundle.yaml``.

The graph takes *normalised* input ``(N, C, H, W)`` float32 and returns logits ``(N, K, H, W)``;
batch, height and width are dynamic (H and W multiples of 32).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import torch

from geoseg.bundle import BundleSpec, read_spec, write_spec
from geoseg.errors import BundleError, OutputExistsError
from geoseg.models.factory import build_model, dummy_input, is_semantic
from geoseg.models.weights import load_weights, weights_path
from geoseg.outdir import storage_errors

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
    if path.parent.resolve() != bundle_dir.resolve():
        raise BundleError(f"ONNX file name {file_name!r} must be a plain name inside the bundle")
    if (path.exists() or path.is_symlink()) and spec.onnx != file_name:
        raise OutputExistsError(
            f"{path} exists and {bundle_dir / 'bundle.yaml'} does not name it as the bundle's "
            "ONNX graph, so geoseg did not write it: move or rename it, then export again "
            "(geoseg never replaces files it did not write)")
    half = half_weights_exact(spec, bundle_dir)
    # built under a temporary name, then renamed: a symlink at ``path`` is replaced, never
    # written through, and a failed export leaves the earlier graph as it was
    tmp = path.with_name(f".tmp-{os.getpid()}-{file_name}")
    with storage_errors(bundle_dir):  # a read-only bundle: one line
        try:
            _export(model, spec, tmp, opset, half)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        write_spec(spec.model_copy(update={"onnx": file_name}), bundle_dir)
    logger.info("exported %s to %s", spec.name, path)
    return path


def _export(model: torch.nn.Module, spec: BundleSpec, path: Path, opset: int,
            half: bool) -> None:
    # The TorchScript exporter: the dynamo one needs onnxscript, which geoseg does not require.
    # With float16 weights the graph keeps them as they are (no folding of BatchNorm into the
    # convolutions, whose folded weights float16 cannot hold): onnxruntime folds them in float32
    # when it loads the graph.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (dummy_input(spec, 64),), str(path), dynamo=False,
                          input_names=["image"], output_names=["logits"], opset_version=opset,
                          do_constant_folding=not half,
                          dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                        "logits": {0: "batch", 2: "height", 3: "width"}})
    if half:
        store_half(path)


def half_weights_exact(spec: object, bundle_dir: Path) -> bool:
    """Whether the bundle's weights are stored as float16 (then float16 initializers in the
    graph, cast to float32 when onnxruntime loads it, hold exactly the same values: half the
    file size, the same results)."""
    from safetensors import safe_open

    path = weights_path(spec, bundle_dir)  # type: ignore[arg-type]
    with safe_open(str(path), framework="numpy") as f:  # type: ignore[no-untyped-call]
        return (f.metadata() or {}).get("dtype") == "float16"


def store_half(path: Path, min_size: int = 1024) -> None:
    """Rewrite the graph at ``path`` with its float32 initializers of ``min_size`` elements or
    more stored as float16 behind a Cast to float32 (folded into constants by onnxruntime's
    graph optimisation at load, so inference stays float32)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < min_size:
            continue
        name = init.name
        half = numpy_helper.from_array(values.astype(np.float16), name=f"{name}__f16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=onnx.TensorProto.FLOAT,
                                      name=f"{name}__cast"))
    for node in reversed(casts):
        graph.node.insert(0, node)
    onnx.save(model, str(path))
