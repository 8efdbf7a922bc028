"""Which inference engine runs a bundle: PyTorch (safetensors weights), PyTorch with bfloat16
autocast (``torch-bf16``) or onnxruntime (ONNX).

``auto`` picks, for a semantic bundle that ships its weights and records a bf16 class agreement
of at least 99.9 % (:mod:`geoseg.models.bf16`), ``torch-bf16`` on CPUs with bfloat16 units: AMX
tiles (Intel Sapphire Rapids and later: oneDNN runs bf16 convolutions there at ~4x float32 eager
and ~1.5-2x onnxruntime) or AVX512-BF16 instructions (AMD Zen 4, Intel Cooper Lake: 1.2-1.6x
onnxruntime, measured on Zen 4) for regions of at least :data:`BF16_MIN_PIXELS` (below,
importing torch costs more than bf16 saves); else onnxruntime when the bundle ships an ONNX
graph and onnxruntime runs on the job's device (always on CPUs, where it measured 1.8x faster
than PyTorch eager; on GPUs only with its CUDA provider), else torch when the bundle ships its
weights file, else the ONNX graph. On a GPU ``torch`` already autocasts to bf16/fp16, so
``torch-bf16`` equals it there. The choice is resolved per bundle on the driver, before any work
starts, so that every error (no ONNX file, a Mask R-CNN bundle, onnxruntime not installed) is
one line, and the resolved engine is what gets recorded and hashed.
No heavy imports here: the planner uses this module.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Literal

from geoseg.bundle import BundleSpec, bundle_file
from geoseg.errors import BundleError, MissingDependencyError

Engine = Literal["auto", "torch", "torch-bf16", "onnx"]
RunEngine = Literal["torch", "torch-bf16", "onnx"]
ENGINES: tuple[Engine, ...] = ("auto", "torch", "torch-bf16", "onnx")
RUN_ENGINES: tuple[RunEngine, ...] = ("torch", "torch-bf16", "onnx")
ONNX_INSTALL = "pip install 'geoseg[onnx]'"


def import_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or a one-line error that says how to install it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as exc:
        raise MissingDependencyError(f"the onnx engine needs onnxruntime, which is not "
                                     f"installed: {ONNX_INSTALL}") from exc


def model_file(spec: BundleSpec, bundle_dir: str | Path, engine: RunEngine) -> Path:
    """The file ``engine`` runs: the safetensors weights (torch, torch-bf16) or the ONNX graph
    (onnx)."""
    if engine != "onnx":
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


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""``/proc/cpuinfo`` flags of CPUs that compute in bfloat16: AMX tiles, or AVX512-BF16 dot
products. Without either (AVX2 only) oneDNN emulates bf16 and was slower than float32 (Mask
R-CNN training 7x, DESIGN.md)."""


def cpu_has_bf16_units(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this host's CPU computes in bfloat16 (one of :data:`BF16_CPU_FLAGS`; Linux
    only)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return not set(BF16_CPU_FLAGS).isdisjoint(line.split())
    except OSError:
        pass
    return False


BF16_MIN_AGREEMENT = 0.999
"""Least recorded bf16 class agreement (``BundleSpec.bf16_agreement``) for ``auto`` to pick
``torch-bf16`` (see :mod:`geoseg.models.bf16`)."""


def bf16_checked(spec: BundleSpec) -> bool:
    """Whether the bundle records a bf16 class agreement of at least the minimum."""
    return spec.bf16_agreement is not None and spec.bf16_agreement >= BF16_MIN_AGREEMENT


BF16_MIN_PIXELS = 32 * 2**20
"""Least region size (pixels) for which ``auto`` picks ``torch-bf16`` over onnxruntime: importing
torch + segmentation-models-pytorch and building the model costs ~3.5 s more than onnxruntime,
and bf16 saves ~0.17 s per Mpx of the slim built-in U-Net's forward pass (0.42 for the
reference U-Net-R18), so the end-to-end break-even is ~20 Mpx (measured: 4096² = 16.8 Mpx, 1.28
Mpx/s either way, `python -m benchmarks.bench_pipeline --model demo`). On an AVX512-BF16 CPU
(Zen 4) both built-in bundles at 4096² took about the same time either way (37.8 / 37.9 s onnx,
38.7 / 33.7 s bf16) and 8192² ran 1.12-1.16x faster in bf16 (129.2 / 145.7 → 115.5 / 125.8 s,
DESIGN.md)."""


def bf16_fits(device: str, remote: bool = False, pixels: int | None = None) -> bool:
    """Whether ``auto`` should run semantic bundles with ``torch-bf16``: the job runs on this
    host's CPU (device cpu, or auto without an NVIDIA driver; a remote cluster's CPUs cannot be
    seen from here), the CPU has bf16 units, PyTorch is installed and the region has at
    least :data:`BF16_MIN_PIXELS` pixels (None: any size)."""
    if remote or device == "cuda" or (device == "auto" and Path("/dev/nvidiactl").exists()):
        return False
    if pixels is not None and pixels < BF16_MIN_PIXELS:
        return False
    return cpu_has_bf16_units() and importlib.util.find_spec("torch") is not None


def resolve_engine(spec: BundleSpec, bundle_dir: str | Path, engine: Engine = "auto",
                   onnx_ok: bool = False, bf16_ok: bool = False) -> RunEngine:
    """The engine that runs the bundle for the requested ``engine``; checks that its model file
    exists and, for onnx, that onnxruntime can be imported.

    ``auto``: torch-bf16 for a semantic bundle with weights when ``bf16_ok`` (see
    :func:`bf16_fits`), else onnxruntime when the bundle ships an ONNX graph and ``onnx_ok``
    (see :func:`onnx_fits`), else PyTorch when it ships its weights, else its ONNX graph."""
    if engine not in ENGINES:
        raise BundleError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    weights = bundle_file(bundle_dir, spec.weights, "weights")
    detector = spec.architecture.name == "maskrcnn"
    run: RunEngine
    if engine == "auto":
        graph = (spec.onnx is not None and not detector
                 and bundle_file(bundle_dir, spec.onnx, "onnx file").is_file())
        if bf16_ok and not detector and weights.is_file() and bf16_checked(spec):
            run = "torch-bf16"
        elif graph and onnx_ok:
            run = "onnx"
        else:
            run = "torch" if weights.is_file() or spec.onnx is None else "onnx"
    else:
        run = engine
    if run == "torch-bf16" and detector:
        raise BundleError(f"bundle {spec.name!r} is maskrcnn: its detection heads run in "
                          "float32; use engine torch (or auto)")
    if run == "onnx" and detector:
        raise BundleError(f"bundle {spec.name!r} is maskrcnn: ONNX inference supports only unet "
                          "and deeplabv3plus bundles (Mask R-CNN post-processing is not "
                          "exported); ship its safetensors weights and use engine torch")
    path = model_file(spec, bundle_dir, run)
    if not path.is_file():
        what, hint = (("weights file", "ship the weights, or an ONNX graph named by 'onnx:' "
                       "and engine auto or onnx") if run != "onnx" else
                      ("ONNX file", f"export it with `geoseg export {bundle_dir} --onnx` or fix "
                       "'onnx' in bundle.yaml"))
        raise BundleError(f"bundle {spec.name!r}: {what} {path} is missing: {hint}")
    if run == "onnx":
        import_onnxruntime()
    return run
