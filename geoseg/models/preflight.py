"""Check a bundle's model file on the driver before any worker starts: one line, no retries.

A bad weights file used to surface only inside the Ray model actor, 11–17 s into a run, as a
long traceback that Ray then retried. :func:`check_model_file` finds the same problems from the
file's header alone (no tensor data is read):

- not safetensors at all (a pickled PyTorch checkpoint, a zip, anything else);
- truncated (the header or the tensor data it describes runs past the end of the file);
- tensors missing from or unexpected by the bundle's architecture, or of the wrong shape, with the
  two commonest causes (band count, class count) named as such.

The expected names and shapes come from the architecture built on PyTorch's ``meta`` device
(shapes only, no memory, ~30 ms). ONNX graphs are checked for their input band and output class
counts where the graph fixes them.
"""

from __future__ import annotations

import functools
import json
import logging
import struct
from pathlib import Path
from typing import Any

from geoseg.bundle import BundleSpec
from geoseg.engine import RunEngine, model_file
from geoseg.errors import BundleError

logger = logging.getLogger(__name__)

CONVERT_HINT = "convert it with safetensors, see README 'Bring your own model'"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header
Shapes = dict[str, tuple[int, ...]]


def check_model_file(spec: BundleSpec, bundle_dir: str | Path, engine: RunEngine, *,
                     architecture: bool = True) -> None:
    """Refuse, with one :class:`BundleError` line, a model file ``engine`` could not run.

    ``architecture=False`` skips the comparison with the architecture's every tensor, which
    needs torch and segmentation-models-pytorch (~2.5 s to import, ~670 MB resident): the
    driver of a Ray job checks the header, truncation and the band and class counts only, and
    the model actor compares every tensor when it loads the weights (one line, never retried)."""
    path = model_file(spec, bundle_dir, engine)
    if spec.architecture.name == "maskrcnn":
        from geoseg.models.maskrcnn import class_layout

        class_layout(spec)  # its classes must be background, building (, boundary)
    if engine != "onnx":
        check_weights(spec, path, architecture=architecture)
    else:
        check_onnx(spec, path)


def check_weights(spec: BundleSpec, path: str | Path, *, architecture: bool = True) -> None:
    """The safetensors file at ``path`` is complete and fits ``spec``'s architecture."""
    path = Path(path)
    found = read_header(path)
    check_counts(spec, path, found)
    if architecture:
        compare_shapes(spec, path, found, expected_shapes(spec))


# the first convolution and the class head of segmentation-models-pytorch's models (ResNet-style
# encoders name the first convolution conv1; others are left to the full comparison)
_FIRST_CONV = "encoder.conv1.weight"
_HEAD = "segmentation_head.0.weight"


def check_counts(spec: BundleSpec, path: Path, found: Shapes) -> None:
    """Band and class counts from the tensors that carry them, without building the model."""
    if spec.architecture.name == "maskrcnn":
        return
    conv = found.get(_FIRST_CONV)
    if conv is not None and len(conv) == 4 and conv[1] != len(spec.bands):
        raise BundleError(f"{path} reads {conv[1]} band(s) ({_FIRST_CONV} {conv}) but "
                          f"bundle.yaml lists {len(spec.bands)} band(s): fix 'bands' in "
                          "bundle.yaml")
    head = found.get(_HEAD)
    if head is not None and head and head[0] != spec.num_classes:
        raise BundleError(f"{path} outputs {head[0]} classes ({_HEAD} {head}) but bundle.yaml "
                          f"lists {spec.num_classes}: fix 'classes' in bundle.yaml")


def read_header(path: Path) -> Shapes:
    """Tensor names and shapes from a safetensors file's header, after checking that the file
    is safetensors and holds all the data its header describes."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(9)
            n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
            looks_safetensors = len(head) == 9 and head[8:9] == b"{" and 2 <= n <= _MAX_HEADER
            raw = f.read(n - 1) if looks_safetensors else b""
    except OSError as exc:
        raise BundleError(f"cannot read weights {path}: {exc.strerror or exc}") from exc
    if not looks_safetensors:
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise BundleError(f"{path} is a pickle/PyTorch checkpoint, not safetensors (geoseg "
                              f"never unpickles model files): {CONVERT_HINT}")
        raise BundleError(f"{path} is not a safetensors file: {CONVERT_HINT}")
    if 8 + n > size:
        raise BundleError(f"{path} is truncated: its header needs {8 + n} bytes, the file has "
                          f"{size}: copy or download it again, or rebuild the bundle")
    try:
        header = json.loads(b"{" + raw)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        shapes = {k: tuple(int(d) for d in v["shape"]) for k, v in tensors.items()}
        data_end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise BundleError(f"{path} has a corrupt safetensors header ({type(exc).__name__}): "
                          "rebuild the bundle or convert the weights again") from exc
    if 8 + n + data_end > size:
        raise BundleError(f"{path} is truncated: its header describes {data_end} bytes of tensor "
                          f"data, the file holds {size - 8 - n}: copy or download it again, or "
                          "rebuild the bundle")
    _safetensors_agrees(path, shapes)
    return shapes


def _safetensors_agrees(path: Path, shapes: Shapes) -> None:
    """Let the safetensors library validate the header too (offsets, dtypes), reading no data."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:  # type: ignore[no-untyped-call]
            got = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{path} is not a valid safetensors file ({_first_line(exc)}): "
                          "rebuild the bundle or convert the weights again") from exc
    if got != shapes:  # cannot happen for a file safetensors accepts; never run on a doubt
        raise BundleError(f"{path}: the safetensors header is ambiguous: rebuild the bundle")


def expected_shapes(spec: BundleSpec) -> Shapes:
    """Names and shapes of the state dict of ``spec``'s architecture, built on the meta device
    (no parameter memory, no initialisation cost)."""
    import torch

    from geoseg.models.factory import build_model

    with torch.device("meta"):
        model = build_model(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def compare_shapes(spec: BundleSpec, path: Path, found: Shapes, expected: Shapes) -> None:
    """One line naming the first difference between the file's tensors and the architecture's."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing or extra:
        what = "; ".join(p for p in (_few("missing", missing), _few("unexpected", extra)) if p)
        raise BundleError(f"{path} does not fit the architecture in bundle.yaml ({what}): the "
                          "weights and bundle.yaml come from different models; fix "
                          "'architecture' or use the matching weights")
    convs = [k for k, s in expected.items() if k.endswith(".weight") and len(s) == 4]
    for k, want in expected.items():
        got = found[k]
        if got == want:
            continue
        if convs and k == convs[0] and len(got) == 4 and got[1] != want[1]:
            raise BundleError(f"{path} reads {got[1]} band(s) ({k} {got}) but bundle.yaml lists "
                              f"{len(spec.bands)} band(s): fix 'bands' in bundle.yaml")
        if (spec.architecture.name != "maskrcnn" and k.startswith("segmentation_head.")
                and got and got[0] != want[0]):
            raise BundleError(f"{path} outputs {got[0]} classes ({k} {got}) but bundle.yaml "
                              f"lists {spec.num_classes}: fix 'classes' in bundle.yaml")
        raise BundleError(f"{path}: tensor {k} has shape {got}, the architecture in "
                          f"bundle.yaml needs {want}: check bands, classes and architecture")


Dims = list[int | None]  # a tensor's static dimensions, None where symbolic


def onnx_io_dims(path: Path) -> tuple[Dims | None, Dims | None] | None:
    """Dimensions of the graph's image input and first output (None for a graph without one);
    None when neither onnxruntime nor the ``onnx`` package is installed. Read through an
    onnxruntime session without graph optimisation (30-100 ms for the built-in graphs):
    importing ``onnx`` costs 0.6 s of every run (its ml_dtypes dependency), onnxruntime 0.03 s.
    Cached per file version: the planner and the preflight both ask."""
    try:
        st = Path(path).stat()
    except OSError as exc:
        raise BundleError(f"{path} cannot be read ({exc.strerror}): export it again with "
                          "`geoseg export BUNDLE --onnx`") from exc
    return _io_dims(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _io_dims(path: str, size: int, mtime_ns: int) -> tuple[Dims | None, Dims | None] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return _io_dims_onnx(Path(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # a bad file is reported below, in one line
    try:
        sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise BundleError(f"{path} is not a readable ONNX model ({_first_line(exc)}): export it "
                          "again with `geoseg export BUNDLE --onnx`") from exc

    def dims(values: Any) -> Dims | None:
        if not values:
            return None
        return [d if isinstance(d, int) and d > 0 else None for d in (values[0].shape or [])]

    return dims(sess.get_inputs()), dims(sess.get_outputs())


def _io_dims_onnx(path: Path) -> tuple[Dims | None, Dims | None] | None:
    """:func:`onnx_io_dims` through the ``onnx`` package (no tensor data loaded)."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors share no base
        raise BundleError(f"{path} is not a readable ONNX model ({_first_line(exc)}): export it "
                          "again with `geoseg export BUNDLE --onnx`") from exc
    init = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init]

    def dims(values: Any) -> Dims | None:
        if not values:
            return None
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in values[0].type.tensor_type.shape.dim]

    return dims(inputs), dims(graph.output)


def check_onnx(spec: BundleSpec, path: Path) -> None:
    """The ONNX graph parses and, where it fixes them, reads ``len(spec.bands)`` channels and
    returns ``spec.num_classes`` (skipped when neither onnxruntime nor ``onnx`` is
    installed)."""
    io = onnx_io_dims(path)
    if io is None:
        logger.debug("onnxruntime/onnx not installed: %s not checked before the run", path)
        return
    for dims, want, what, key in ((io[0], len(spec.bands), "band(s)", "bands"),
                                  (io[1], spec.num_classes, "classes", "classes")):
        got = dims[1] if dims is not None and len(dims) > 1 else None
        if got is not None and got != want:
            verb = "reads" if key == "bands" else "outputs"
            raise BundleError(f"{path} {verb} {got} {what} but bundle.yaml lists {want}: fix "
                              f"'{key}' in bundle.yaml or export the matching model")


def _few(label: str, names: list[str], n: int = 3) -> str:
    if not names:
        return ""
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return f"{label} {len(names)}: {', '.join(names[:n])}{more}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
