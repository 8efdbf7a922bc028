"""A semantic bundle on onnxruntime, without torch: what a CPU worker runs by default.

The same interface as :class:`~geoseg.models.predictor.Predictor` for semantic models
(``spec``, ``engine``, ``semantic``, :meth:`predict_proba`, :meth:`predict_core`), the same
normalisation and softmax, but no PyTorch in the process: the model worker of a 4096² run holds
~150 MB of onnxruntime instead of ~700 MB of torch + segmentation-models-pytorch.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from geoseg.bundle import BundleSpec, read_spec
from geoseg.engine import RunEngine, model_file
from geoseg.errors import InputError
from geoseg.models.onnx_session import OnnxSession
from geoseg.stageclock import part
from geoseg.stitch import Crop, classify_logits

logger = logging.getLogger(__name__)


def softmax(logits: np.ndarray, axis: int = 1) -> np.ndarray:
    """Numerically stable softmax in float32 (in place on a copy)."""
    out = logits - logits.max(axis=axis, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=axis, keepdims=True)
    return out


class OnnxPredictor:
    """A semantic bundle's ONNX graph, ready for batches of raw tiles."""

    engine: RunEngine = "onnx"
    semantic = True

    def __init__(self, bundle_dir: str | Path, device: str = "cpu",
                 num_threads: int | None = None) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.spec: BundleSpec = read_spec(self.bundle_dir)
        if num_threads is not None and num_threads < 1:
            raise InputError(f"num_threads must be >= 1, got {num_threads}")
        path = model_file(self.spec, self.bundle_dir, "onnx")
        self.session = OnnxSession(path, self.spec, device, num_threads)
        self._local = threading.local()  # per thread: its logits buffer (passes at once)
        logger.info("loaded bundle %s v%s with onnx on %s", self.spec.name, self.spec.version,
                    ", ".join(self.session.providers))

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def logits(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Logits ``(N, K, H, W)`` for raw tiles ``(N, C, H, W)`` (into ``out`` when given, see
        :meth:`OnnxSession.run`)."""
        if x.ndim != 4 or x.shape[1] != len(self.spec.bands):
            raise InputError(f"bundle {self.spec.name!r} reads {len(self.spec.bands)} bands, got "
                             f"a batch of shape {x.shape}")
        with part("normalize"):
            normed = np.ascontiguousarray(self.spec.normalization.apply(x))  # clipped first
        with part("forward"):
            return self.session.run(normed, out)

    def _logits_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """This thread's logits array of ``shape``, kept from pass to pass: onnxruntime writes
        into it instead of a new array filled by a copy (a 26 MB array a 1152² pass of 5
        classes, at every chunk fresh pages; DESIGN.md, "Logits into a kept buffer")."""
        buf: np.ndarray | None = getattr(self._local, "logits", None)
        if buf is None or buf.shape != shape:
            self._local.logits = buf = None  # the old one goes before the new one is made
            self._local.logits = buf = np.empty(shape, np.float32)
        return buf

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Per-class probabilities ``(N, K, H, W)`` float32."""
        logits = self.logits(x)
        with part("classify"):
            return softmax(logits)

    def predict_core(self, x: np.ndarray, crop: Crop) -> tuple[np.ndarray, np.ndarray]:
        """Class ids and confidence (uint8) of one raw tile ``(1, C, H, W)`` inside ``crop``."""
        rs, cs = crop
        out = self._logits_buffer((x.shape[0], self.spec.num_classes, *x.shape[2:]))
        logits = self.logits(x, out)[0][:, rs, cs]
        with part("classify"):
            return classify_logits(logits)


def load_predictor(bundle_dir: str | Path, device: str, num_threads: int | None,
                   engine: RunEngine) -> object:
    """The predictor ``engine`` runs: :class:`OnnxPredictor` (no torch) or the torch
    :class:`~geoseg.models.predictor.Predictor`."""
    if engine == "onnx":
        spec = read_spec(bundle_dir)
        if spec.architecture.name != "maskrcnn":
            return OnnxPredictor(bundle_dir, device=device, num_threads=num_threads)
    from geoseg.models.predictor import Predictor

    return Predictor(bundle_dir, device=device, num_threads=num_threads, engine=engine)
