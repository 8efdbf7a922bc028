"""Which inference engine runs a bundle: PyTorch (safetensors weights) or onnxruntime (ONNX).

``auto`` picks onnxruntime when the bundle ships an ONNX graph and onnxruntime runs on the job's
device (always on CPUs, where it measured 1.8x faster than PyTorch eager; on GPUs only with its
CUDA provider), else torch when the bundle ships its weights file, else the ONNX graph. The
choice is resolved per bundle on the driver, before any work starts, so that every error (no
ONNX file, a Mask R-CNN bundle, onnxruntime not installed) is one line, and the resolved engine
is what gets recorded and hashed.
No heavy imports here: the planner uses this module.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Literal

from geoseg.bundle import BundleSpec, bundle_file
from geoseg.errors import BundleError, MissingDependencyError

Engine = Literal["auto", "torch", "onnx"]
RunEngine = Literal["torch", "onnx"]
ENGINES: tuple[Engine, ...] = ("auto", "torch", "onnx")
ONNX_INSTALL = "pip install 'geoseg[onnx]'"


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or a one-line error that says how to install it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise MissingDependencyError(f"the onnx engine needs onnxruntime, which is not "
                                     f"installed: {ONNX_INSTALL}") from exc


def model_file(spec: BundleSpec, bundle_dir: str | Path, engine: RunEngine) -> Path:
    """The file ``engine`` runs: the safetensors weights (torch) or the ONNX graph (onnx)."""
    if engine == "torch":
        return bundle_file(bundle_dir, spec.weights, "weights")
    if spec.onnx is None:
        raise BundleError(f"bundle {spec.name!r} has no ONNX model: export one with "
                          f"`geoseg export {bundle_dir} --onnx`, or use engine torch")
    return bundle_file(bundle_dir, spec.onnx, "onnx file")


def onnx_fits(device: str, remote: bool = False) -> bool:
    """Whether onnxruntime is installed and would run on the device a job uses: always on a CPU
    (where it measured 1.8x faster than PyTorch eager), on a GPU only with its CUDA provider.
    ``device`` "auto" counts as a GPU when this host has an NVIDIA driver, or when the job runs
    on a remote cluster (whose workers' GPUs the driver cannot see)."""
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        return False
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return True
    if device == "cpu":
        return True
    if device == "cuda":
        return False
    return not remote and not Path("/dev/nvidiactl").exists()


def resolve_engine(spec: BundleSpec, bundle_dir: str | Path, engine: Engine = "auto",
                   onnx_ok: bool = False) -> RunEngine:
    """The engine that runs the bundle for the requested ``engine``; checks that its model file
    exists and, for onnx, that onnxruntime can be imported.

    ``auto``: onnxruntime when the bundle ships an ONNX graph and ``onnx_ok`` (see
    :func:`onnx_fits`), else PyTorch when it ships its weights, else its ONNX graph."""
    if engine not in ENGINES:
        raise BundleError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    weights = bundle_file(bundle_dir, spec.weights, "weights")
    run: RunEngine
    if engine == "auto":
        graph = (spec.onnx is not None and spec.architecture.name != "maskrcnn"
                 and bundle_file(bundle_dir, spec.onnx, "onnx file").is_file())
        if graph and onnx_ok:
            run = "onnx"
        else:
            run = "torch" if weights.is_file() or spec.onnx is None else "onnx"
    else:
        run = engine
    if run == "onnx" and spec.architecture.name == "maskrcnn":
        raise BundleError(f"bundle {spec.name!r} is maskrcnn: ONNX inference supports only unet "
                          "and deeplabv3plus bundles (Mask R-CNN post-processing is not "
                          "exported); ship its safetensors weights and use engine torch")
    path = model_file(spec, bundle_dir, run)
    if not path.is_file():
        what, hint = (("weights file", "ship the weights, or an ONNX graph named by 'onnx:' "
                       "and engine auto or onnx") if run == "torch" else
                      ("ONNX file", f"export it with `geoseg export {bundle_dir} --onnx` or fix "
                       "'onnx' in bundle.yaml"))
        raise BundleError(f"bundle {spec.name!r}: {what} {path} is missing: {hint}")
    if run == "onnx":
        import_onnxruntime()
    return run
