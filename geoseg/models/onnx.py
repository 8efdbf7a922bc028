"""ONNX export of a semantic bundle (for inference engines), recorded in its ``bundle.yaml``.

The graph takes *normalised* input ``(N, C, H, W)`` float32 and returns logits ``(N, K, H, W)``;
batch, height and width are dynamic (H and W multiples of 32).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import warnings
from pathlib import Path

import torch

from geoseg.bundle import BundleSpec, read_spec, update_spec
from geoseg.engine import ONNX_INSTALL
from geoseg.errors import BundleError, MissingDependencyError, OutputExistsError
from geoseg.models.bf16 import torch_weights
from geoseg.models.factory import build_model, dummy_input, is_semantic
from geoseg.models.weights import load_weights, weights_path
from geoseg.outdir import storage_errors

logger = logging.getLogger(__name__)

#: The temporary name a graph is built under (``.tmp-<pid>-<file name>``): what a stopped
#: export leaves, removed by the next one once that process is gone.
_TMP_NAME = re.compile(r"\.tmp-(\d+)-[^/]+\.onnx")


def require_onnx() -> None:
    """A one-line :class:`MissingDependencyError` when the ``onnx`` package (an extra, which
    the export needs, unlike running a graph) is not installed: checked before any work."""
    try:
        importlib.import_module("onnx")
    except ImportError as exc:
        raise MissingDependencyError("ONNX export (geoseg export --onnx) needs the onnx "
                                     f"package, which is not installed: {ONNX_INSTALL}") from exc


def export_onnx(bundle_dir: str | Path, file_name: str = "model.onnx",
                opset: int = 17) -> Path:
    """Export the bundle's semantic model to ``bundle_dir/file_name`` and set ``onnx`` in its
    spec. Mask R-CNN bundles are refused (their post-processing is not exported)."""
    require_onnx()
    bundle_dir = Path(bundle_dir)
    spec = read_spec(bundle_dir)
    if not is_semantic(spec):
        raise BundleError(f"bundle {spec.name!r} is {spec.architecture.name}: only unet and "
                          "deeplabv3plus bundles can be exported to ONNX")
    path = bundle_dir / file_name
    if path.parent.resolve() != bundle_dir.resolve():
        raise BundleError(f"ONNX file name {file_name!r} must be a plain name inside the bundle")
    weights = torch_weights(spec, bundle_dir, "there is nothing to export it from (its graph "
                            "is already the bundle's model)")
    if (path.exists() or path.is_symlink()) and spec.onnx != file_name:
        raise OutputExistsError(
            f"{path} exists and {bundle_dir / 'bundle.yaml'} does not name it as the bundle's "
            "ONNX graph, so geoseg did not write it: move or rename it, then export again "
            "(geoseg never replaces files it did not write)")
    model = build_model(spec)
    load_weights(model, weights)
    model.eval()
    half = half_weights_exact(spec, bundle_dir)
    remove_stale_temps(bundle_dir)
    # built under a temporary name, then renamed: a symlink at ``path`` is replaced, never
    # written through, and a failed export leaves the earlier graph as it was
    tmp = path.with_name(f".tmp-{os.getpid()}-{file_name}")
    with storage_errors(bundle_dir):  # a read-only bundle: one line
        try:
            _export(model, spec, tmp, opset, half)
            _put_in_place(bundle_dir, tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    logger.info("exported %s to %s", spec.name, path)
    return path


def _put_in_place(bundle_dir: Path, tmp: Path, path: Path) -> None:
    """``bundle.yaml`` names the graph first, then the finished graph is renamed into place.
    A kill between the two leaves a graph that bundle.yaml names but that is missing (engine
    auto runs the weights; a rerun exports it again), never a graph that bundle.yaml does not
    name (which an export refuses as not geoseg's). A failed rename restores the name it had."""
    before = read_spec(bundle_dir).onnx
    update_spec(bundle_dir, onnx=path.name)
    try:
        os.replace(tmp, path)
    except BaseException:
        if before != path.name:
            update_spec(bundle_dir, onnx=before)
        raise


def remove_stale_temps(bundle_dir: Path) -> list[Path]:
    """Remove the graphs that exports stopped by a kill left under their temporary name (see
    :data:`_TMP_NAME`) in ``bundle_dir``: only files of that name whose process is gone."""
    removed = []
    for p in bundle_dir.iterdir():
        m = _TMP_NAME.fullmatch(p.name)
        if m is None or p.is_symlink() or not p.is_file() or _alive(int(m.group(1))):
            continue
        try:
            p.unlink()
        except OSError:  # gone meanwhile, or not ours to remove: left as it is
            continue
        removed.append(p)
        logger.info("removed %s, left by an export that was stopped (process %s is gone)", p,
                    m.group(1))
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (an unusable number counts as alive: its
    file is left alone)."""
    import psutil

    if pid <= 0:
        return True
    try:
        return bool(psutil.pid_exists(pid))
    except (OverflowError, ValueError):
        return True


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
