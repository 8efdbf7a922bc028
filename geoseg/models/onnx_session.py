"""A semantic bundle's ONNX graph in an onnxruntime session: normalised tiles in, logits out.

The graph must take one float32 input ``(N, C, H, W)`` (already normalised, C = the bundle's
bands) and return logits ``(N, K, H, W)`` first (K = the bundle's classes), which is what
:func:`geoseg.models.onnx.export_onnx` writes. Graphs from elsewhere may fix the batch to 1
(tiles are then run one by one) or fix H and W: the planner reads that size (:func:`fixed_tile`)
and every tile is then exactly that size (a window smaller than a tile is padded up to it).
A tile the graph cannot take (a hidden fixed size, e.g. a Reshape to constants) is an
:class:`InputError`: the same tile fails the same way on every retry.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.bundle import BundleSpec
from geoseg.engine import import_onnxruntime
from geoseg.errors import BundleError, GeoSegWarning, InputError
from geoseg.models.preflight import onnx_io_dims

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _dim(d: Any) -> int | None:
    """A static dimension, or None for a symbolic/unknown one."""
    return d if isinstance(d, int) and d > 0 else None


def input_hw(path: Path) -> tuple[int | None, int | None]:
    """Static height and width of the graph's image input (None where symbolic), from
    :func:`~geoseg.models.preflight.onnx_io_dims`."""
    io = onnx_io_dims(path)
    if io is None:
        import_onnxruntime()  # neither onnxruntime nor onnx: the one-line install hint
    dims = (io[0] if io is not None else None) or []
    return (dims[2], dims[3]) if len(dims) == 4 else (None, None)


def fixed_tile(spec: BundleSpec, path: Path) -> int | None:
    """The tile size (px) a graph with a static ``H x W`` input takes, None for a graph that
    takes any size. The graph wins over the bundle's ``tile_size`` (a warning when they differ:
    bundle.yaml files written by geoseg carry the default 512 when none was given); inputs
    geoseg cannot tile (not square, one side fixed) are a one-line :class:`BundleError`."""
    h, w = input_hw(path)
    if h is None and w is None:
        return None
    if h is None or w is None or h != w:
        raise BundleError(f"{path.name} takes {h or 'any'}x{w or 'any'} px tiles: geoseg runs "
                          "square tiles; re-export it with a square (or fully dynamic) input")
    if spec.tile_size != h:
        warnings.warn(GeoSegWarning(
            f"bundle {spec.name!r}: {path.name} takes only {h}x{w} px tiles, so tiles are "
            f"{h} px, not the tile_size {spec.tile_size} of bundle.yaml (set tile_size: {h} "
            "there)"), stacklevel=3)
    return h


def ort_error_line(exc: BaseException) -> str:
    """onnxruntime's message in one line, without its ``[ONNXRuntimeError] : N : CODE :``
    prefix or source paths."""
    text = " ".join(str(exc).split())
    if text.startswith("[ONNXRuntimeError]"):
        text = text.split(" : ", 3)[-1]
    return text[:300]


# onnxruntime errors that depend only on the graph and the tile's shape (a retry gets the same)
_SHAPE_WORDS = ("shape", "dimension", "broadcast", "reshape")
_TRANSIENT_WORDS = ("alloc", "memory", "cuda", "cudnn", "device")


def _shape_error(exc: BaseException) -> bool:
    kind = type(exc).__name__
    text = str(exc).lower()
    if kind == "InvalidArgument":
        return True
    return (kind in ("Fail", "RuntimeException") and any(w in text for w in _SHAPE_WORDS)
            and not any(w in text for w in _TRANSIENT_WORDS))


def device_parts(device: Any) -> tuple[str, int | None]:
    """(type, index) of a ``torch.device`` or a device string such as ``cuda:1`` (no torch
    import: an ONNX model runs without torch)."""
    if hasattr(device, "type"):
        return str(device.type), device.index
    kind, _, index = str(device).partition(":")
    return kind, int(index) if index else None


def providers_for(device: Any, available: list[str]) -> list[Any]:
    """CUDA first on a cuda device when onnxruntime has it, CPU always last."""
    kind, index = device_parts(device)
    if kind == "cuda":
        if CUDA in available:
            return [(CUDA, {"device_id": index or 0}), CPU]
        warnings.warn(GeoSegWarning(
            f"device {device} asked for, but this onnxruntime has no {CUDA}: running ONNX "
            "on the CPU (install onnxruntime-gpu for GPU inference)"), stacklevel=3)
    return [CPU]


class OnnxSession:
    """One inference session; ``num_threads`` sets its intra-op thread count (None: all cores,
    onnxruntime's default)."""

    def __init__(self, path: Path, spec: BundleSpec, device: Any,
                 num_threads: int | None = None) -> None:
        ort = import_onnxruntime()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads or 0
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # errors only: exporter-made graphs trigger info chatter
        # Memory patterns pre-plan one block for every activation of a pass: a 1152² pass of
        # the reference U-Net-R18 peaked at 1.04 GB RSS with them, 0.81 GB without, at the
        # same speed (1.65 vs 1.67 Mpx/s; turning the arena off instead cost 15 % speed).
        opts.enable_mem_pattern = False
        available = list(ort.get_available_providers())
        providers = providers_for(device, available)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts,
                                                providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
            raise BundleError(f"{path} cannot be loaded by onnxruntime "
                              f"({type(exc).__name__}: {str(exc).strip()[:300]}): "
                              "re-export the model") from exc
        self.providers: list[str] = list(self.session.get_providers())
        if device_parts(device)[0] == "cuda" and CUDA in available and CUDA not in self.providers:
            warnings.warn(GeoSegWarning(
                f"onnxruntime could not start {CUDA} (CUDA/cuDNN libraries?): running ONNX on "
                "the CPU"), stacklevel=2)
        self.path = path
        self._check_io(spec)

    def _check_io(self, spec: BundleSpec) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise BundleError(f"{self.path} has {len(inputs)} inputs and {len(outputs)} "
                              "outputs: geoseg needs one image input and logits as the first "
                              "output")
        inp, out = inputs[0], outputs[0]
        if inp.type != "tensor(float)":
            raise BundleError(f"{self.path} input {inp.name!r} is {inp.type}: geoseg feeds "
                              "float32 tiles; re-export with a float32 input")
        shape, oshape = list(inp.shape or []), list(out.shape or [])
        if len(shape) != 4 or (oshape and len(oshape) != 4):
            raise BundleError(f"{self.path} maps {inp.shape} to {out.shape}: geoseg needs "
                              "(N, C, H, W) -> (N, K, H, W)")
        c, k = _dim(shape[1]), _dim(oshape[1]) if oshape else None
        if c is not None and c != len(spec.bands):
            raise BundleError(f"{self.path} takes {c} bands, bundle.yaml lists "
                              f"{len(spec.bands)} {list(spec.bands)}: fix 'bands'")
        if k is not None and k != spec.num_classes:
            raise BundleError(f"{self.path} returns {k} classes, bundle.yaml lists "
                              f"{spec.num_classes}: fix 'classes'")
        batch = _dim(shape[0])
        if batch is not None and batch != 1:
            raise BundleError(f"{self.path} has a fixed batch of {batch}: re-export it with a "
                              "dynamic batch axis (or batch 1)")
        self.input_name: str = inp.name
        self.output_name: str = out.name
        self.fixed_batch = batch == 1
        self.fixed_hw = (_dim(shape[2]), _dim(shape[3]))

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Logits ``(N, K, H, W)`` float32 for normalised tiles ``(N, C, H, W)`` float32.
        ``out``: a C-contiguous float32 array of the logits' shape that onnxruntime writes
        them into (bound to the graph's output, so no new array is filled by a copy), and
        that is returned."""
        _, _, h, w = x.shape
        fh, fw = self.fixed_hw
        if (fh is not None and fh != h) or (fw is not None and fw != w):
            raise InputError(f"{self.path.name} takes {fh or 'any'}x{fw or 'any'} px tiles, got "
                             f"{h}x{w}: set inference.tile_size (--tile-size) to match")
        if self.fixed_batch and len(x) > 1:
            if out is not None:
                for i in range(len(x)):
                    self.run(x[i:i + 1], out[i:i + 1])
                return out
            return np.concatenate([self.run(x[i:i + 1]) for i in range(len(x))])
        if out is not None:
            if out.dtype != np.float32 or not out.flags.c_contiguous:
                raise ValueError("out must be a C-contiguous float32 array")
            binding = self.session.io_binding()
            binding.bind_cpu_input(self.input_name, np.ascontiguousarray(x))
            binding.bind_output(self.output_name, "cpu", 0, np.float32, list(out.shape),
                                out.ctypes.data)
            try:
                self.session.run_with_iobinding(binding)
                return out
            except Exception:  # the plain run below says what is wrong, or works
                pass
        try:
            (logits,) = self.session.run([self.output_name], {self.input_name: x})
        except Exception as exc:  # onnxruntime's errors are untyped (Fail, InvalidArgument, ...)
            if not _shape_error(exc):
                raise  # e.g. out of memory: may pass on a retry
            raise InputError(
                f"{self.path.name} cannot run a {h}x{w} px tile ({ort_error_line(exc)}): its "
                "input is declared dynamic but the graph needs one size; give it a static "
                "input shape (python -m onnxruntime.tools.make_dynamic_shape_fixed "
                f"--input_name {self.input_name} --input_shape 1,{x.shape[1]},S,S IN OUT, "
                "S = its tile size) and set tile_size: S in bundle.yaml") from exc
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape[0] != x.shape[0] or logits.shape[2:] != x.shape[2:]:
            raise InputError(f"{self.path.name} returned logits {logits.shape} for tiles "
                             f"{x.shape}: geoseg needs (N, K, H, W) at the input resolution")
        if out is not None:
            out[...] = logits
            return out
        return logits
