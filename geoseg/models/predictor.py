"""Load a bundle once and turn batches of raw image tiles into per-class probabilities.

This is the object a predictor actor holds: built in ``__init__`` (spec, model, weights), then
called on numpy batches. Input is raw band values in the bundle's band order; normalisation
happens here, from ``spec.normalization``, so callers never need to know the statistics.

Two engines run a semantic bundle with the same normalisation and softmax: PyTorch (safetensors
weights) and onnxruntime (the bundle's ONNX graph); see :mod:`geoseg.engine` for how ``auto``
chooses. Mask R-CNN bundles run on PyTorch only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from geoseg.bundle import BundleSpec, read_spec
from geoseg.engine import Engine, RunEngine, model_file, resolve_engine
from geoseg.errors import InputError
from geoseg.models.factory import build_model, is_semantic
from geoseg.models.maskrcnn import class_layout, instances_to_proba
from geoseg.models.onnx_predictor import OnnxPredictor
from geoseg.models.weights import load_weights
from geoseg.stageclock import part
from geoseg.stitch import Crop, classify_logits, tile_grid

logger = logging.getLogger(__name__)


class Instance(TypedDict):
    """One detected object: boolean ``(H, W)`` mask, detector score, ``(x0, y0, x1, y1)`` box."""

    mask: np.ndarray
    score: float
    box: tuple[float, float, float, float]


def resolve_device(device: str, torch_cuda: bool = True) -> torch.device:
    """``torch.device`` for ``device``, refusing CUDA when torch sees no GPU (unless
    ``torch_cuda`` is False: onnxruntime finds its GPU itself)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}: use 'cpu' or 'cuda[:N]'") from exc
    if dev.type == "cuda" and torch_cuda and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for but torch sees no CUDA GPU: use 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device type {dev.type!r} is not supported: use 'cpu' or 'cuda'")
    return dev


class Predictor:
    """A bundle's model ready for batches of tiles: a torch module in eval mode, or an
    onnxruntime session (``engine`` "torch", "onnx" or "auto"; ``self.engine`` is the one used).

    ``num_threads`` sets the intra-op thread count: torch's for the whole process (torch has no
    per-model setting), or the ONNX session's; ``None`` keeps torch's current value (onnxruntime:
    all cores).
    """

    def __init__(self, bundle_dir: str | Path, device: str = "cpu",
                 num_threads: int | None = None, engine: Engine = "auto") -> None:
        self.bundle_dir = Path(bundle_dir)
        self.spec: BundleSpec = read_spec(self.bundle_dir)
        if num_threads is not None and num_threads < 1:
            raise InputError(f"num_threads must be >= 1, got {num_threads}")
        self.engine: RunEngine = resolve_engine(self.spec, self.bundle_dir, engine)
        self.device = resolve_device(device, torch_cuda=self.engine != "onnx")
        # bfloat16 autocast + channels-last on a CPU (on CUDA every torch engine autocasts)
        self._cpu_bf16 = self.engine == "torch-bf16" and self.device.type == "cpu"
        self.semantic = is_semantic(self.spec)
        self._layout = None if self.semantic else class_layout(self.spec)
        self._module: nn.Module | None = None
        self._onnx: OnnxPredictor | None = None  # engine onnx: the torch-free predictor
        self._streams = threading.local()  # CUDA: one stream per calling thread
        path = model_file(self.spec, self.bundle_dir, self.engine)
        if self.engine == "onnx":
            self._onnx = OnnxPredictor(self.bundle_dir, device=str(self.device),
                                       num_threads=num_threads)
            where = ", ".join(self._onnx.session.providers)
        else:
            c = len(self.spec.bands)
            norm = self.spec.normalization
            mean = np.asarray(norm.mean, dtype=np.float32).reshape(1, c, 1, 1)
            std = np.asarray(norm.std, dtype=np.float32).reshape(1, c, 1, 1)
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            self._module = self._load_torch(path)
            self._mean = torch.from_numpy(mean).to(self.device)
            self._std = torch.from_numpy(std).to(self.device)
            # the bundle's clipping of raw values (Normalization.apply, done on the device)
            self._clip = None if norm.clip is None else tuple(
                torch.tensor(b, dtype=torch.float32).reshape(1, c, 1, 1).to(self.device)
                for b in norm.clip)
            where = str(self.device)
            if self.device.type == "cuda":  # weights and statistics are on the device before
                torch.cuda.synchronize(self.device)  # any caller's own stream reads them
        # A model on a GPU blends overlapping tiles there: only the core's class ids and
        # confidence come back, not K float32 planes per tile (predict_tiles_core).
        self.blends_on_device = (self.semantic and self._onnx is None
                                 and self.device.type == "cuda")
        logger.info("loaded bundle %s v%s (%s) with %s on %s", self.spec.name,
                    self.spec.version, self.spec.architecture.name, self.engine, where)

    def _load_torch(self, weights: Path) -> nn.Module:
        model = build_model(self.spec)
        load_weights(model, weights)
        model.eval()
        if self.device.type == "cuda":
            model = model.to(self.device).to(memory_format=torch.channels_last)
        elif self._cpu_bf16 and self.semantic:  # oneDNN's bf16 kernels want NHWC
            model = model.to(memory_format=torch.channels_last)
        return model

    @property
    def model(self) -> nn.Module:
        """The torch module (engine torch only)."""
        if self._module is None:
            raise InputError(f"bundle {self.spec.name!r} runs on onnxruntime (engine onnx): "
                             "there is no torch module; use engine 'torch' for one")
        return self._module

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.spec.classes)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self._cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def _check(self, x: np.ndarray) -> np.ndarray:
        """Validate a raw batch; return it as contiguous float32."""
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise InputError("predictor input must be a numpy array (N, C, H, W) of raw band "
                             f"values, got {type(x).__name__} {getattr(x, 'shape', '')}")
        _, c, h, w = x.shape
        if c != len(self.spec.bands):
            raise InputError(f"bundle {self.spec.name!r} reads {len(self.spec.bands)} bands "
                             f"{self.spec.bands}, the batch has {c}: select those bands first")
        # an ONNX graph checks its own input size (one with a static input may take any size)
        fixed = self._onnx is not None and self._onnx.session.fixed_hw != (None, None)
        if h == 0 or w == 0 or (not fixed and (h % 32 or w % 32)):
            raise InputError(f"tile size {h}x{w} is not a multiple of 32: pad tiles to a "
                             "multiple of 32 (e.g. the bundle's tile_size)")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _prepare(self, x: np.ndarray) -> torch.Tensor:
        """Validate a raw batch and return it normalised on the torch model's device."""
        t = self._normalised(self._check(x))
        if self.device.type == "cuda" or (self._cpu_bf16 and self.semantic):
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _normalised(self, x: np.ndarray) -> torch.Tensor:
        """A raw batch (N, C, H, W) on the device as float32, clipped and
        normalised there. To a GPU through pinned host memory, without blocking this thread:
        the copy is queued on the caller's stream, ahead of the work that reads it."""
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        if self._clip is not None:
            t = torch.clamp(t, self._clip[0], self._clip[1])
        return (t - self._mean) / self._std

    def _stream(self) -> contextlib.AbstractContextManager[Any]:
        """On a GPU, this thread's own CUDA stream: several callers (chunks in flight) overlap
        their copies and kernels instead of queueing on the default stream."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(stream)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Per-class probabilities ``(N, K, H, W)`` float32 for raw tiles ``(N, C, H, W)``."""
        if self._onnx is not None:
            return self._onnx.predict_proba(self._check(x))
        with self._stream():
            with part("normalize"):
                t = self._prepare(x)
            if not self.semantic:
                with part("forward"):
                    return np.stack([self._instance_proba(d) for d in self._detect(t)])
            with torch.inference_mode(), self._autocast(), part("forward"):
                logits = self.model(t)
            with part("classify"):
                probs = torch.softmax(logits.float(), dim=1)
                return probs.cpu().numpy().astype(np.float32, copy=False)

    def predict_core(self, x: np.ndarray, crop: Crop) -> tuple[np.ndarray, np.ndarray]:
        """Class ids and confidence (uint8) of one raw tile ``(1, C, H, W)`` inside ``crop``,
        computed on the model's device (argmax and max probability there; on a GPU only the
        two uint8 planes come back), as :func:`geoseg.stitch.classify_logits` on the CPU."""
        if self._onnx is not None:
            return self._onnx.predict_core(self._check(x), crop)
        if not self.semantic:
            from geoseg.stitch import classify

            probs = self.predict_proba(x)[0][:, crop[0], crop[1]]
            return classify(probs, np.ones(probs.shape[1:], bool))
        with self._stream():
            with part("normalize"):
                t = self._prepare(x)
            with torch.inference_mode(), self._autocast(), part("forward"):
                logits = self.model(t)[0][:, crop[0], crop[1]].float()
            if self.device.type == "cpu":
                with part("classify"):
                    return classify_logits(logits.contiguous().numpy())
            with torch.inference_mode(), part("classify"):
                top, ids = logits.max(dim=0)
                scaled = torch.round(255.0 / torch.exp(logits - top).sum(dim=0))
                return (ids.to(torch.uint8).cpu().numpy(),
                        scaled.clamp(0, 255).to(torch.uint8).cpu().numpy())

    def predict_tiles_core(self, x: np.ndarray, crop: Crop, *, tile: int, overlap: int,
                           batch_size: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Class ids and confidence (uint8) inside ``crop`` of a raw window ``(C, H, W)``
        predicted in overlapping tiles: :func:`geoseg.stitch.predict_window` followed by
        :func:`geoseg.stitch.classify` (same tiles, weights, softmax and rounding), with the
        blending on the model's device. The window goes up once, tiles are cut there, and only
        the two uint8 planes of the core come back (semantic torch models)."""
        if not self.semantic or self._onnx is not None:
            raise InputError(f"bundle {self.spec.name!r}: tiles are blended on the device for "
                             "semantic models on PyTorch only (use geoseg.stitch.predict_window)")
        if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[0] != len(self.spec.bands):
            raise InputError(f"bundle {self.spec.name!r} reads a window (C, H, W) of "
                             f"{len(self.spec.bands)} bands {self.spec.bands}, got "
                             f"{type(x).__name__} {getattr(x, 'shape', '')}")
        _c, h, w = x.shape
        grid = tile_grid(x, tile=tile, overlap=overlap, exact=exact)
        th, tw = grid.shape
        k = self.num_classes
        with self._stream(), torch.inference_mode():
            with part("normalize"):
                image = self._normalised(grid.image[None])[0]
            weight = torch.from_numpy(grid.weight).to(self.device)
            acc = torch.zeros((k, *image.shape[1:]), dtype=torch.float32, device=self.device)
            norm = torch.zeros(image.shape[1:], dtype=torch.float32, device=self.device)
            for i in range(0, len(grid.origins), batch_size):
                group = grid.origins[i:i + batch_size]
                batch = torch.stack([image[:, y:y + th, x0:x0 + tw] for y, x0 in group])
                if self.device.type == "cuda" or self._cpu_bf16:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with self._autocast(), part("forward"):
                    logits = self.model(batch)
                if logits.shape != (len(group), k, th, tw):
                    raise InputError(f"model returned shape {tuple(logits.shape)}, expected "
                                     f"{(len(group), k, th, tw)}")
                with part("classify"):  # softmax, as on the host
                    probs = torch.softmax(logits.float(), dim=1)
                with part("blend"):
                    for (y, x0), p in zip(group, probs, strict=True):
                        acc[:, y:y + th, x0:x0 + tw] += p * weight
                        norm[y:y + th, x0:x0 + tw] += weight
            with part("classify"):
                core = (acc[:, :h, :w] / norm[:h, :w])[:, crop[0], crop[1]]
                ids = torch.argmax(core, dim=0)  # the first of tied classes, as stitch.classify
                conf = torch.round(core.amax(dim=0) * 255.0).to(torch.uint8)
                return ids.to(torch.uint8).cpu().numpy(), conf.cpu().numpy()

    def predict_classes(self, x: np.ndarray) -> np.ndarray:
        """Most probable class id per pixel ``(N, H, W)`` uint8."""
        return self.predict_proba(x).argmax(axis=1).astype(np.uint8)

    def predict_instances(self, x: np.ndarray) -> list[list[Instance]]:
        """Mask R-CNN only: per tile, the kept instances (score >= ``score_threshold``) with
        boolean masks (mask probability >= ``mask_threshold``)."""
        if self.semantic:
            raise InputError(f"bundle {self.spec.name!r} is a semantic model: use "
                             "predict_proba, or a maskrcnn bundle for instances")
        thr = self.spec.architecture.mask_threshold
        out: list[list[Instance]] = []
        for det in self._detect(self._prepare(x)):
            boxes = det["boxes"]
            out.append([Instance(mask=det["masks"][i] >= thr, score=float(det["scores"][i]),
                                 box=(float(boxes[i, 0]), float(boxes[i, 1]),
                                      float(boxes[i, 2]), float(boxes[i, 3])))
                        for i in range(len(det["scores"]))])
        return out

    def _detect(self, t: torch.Tensor) -> Iterator[dict[str, np.ndarray]]:
        """Mask R-CNN detections per tile as numpy: boxes (M, 4), scores (M,), masks
        (M, H, W) probabilities, keeping scores >= ``score_threshold``."""
        with torch.inference_mode(), self._autocast():
            raw = self.model(list(t.unbind(0)))
        keep_thr = self.spec.architecture.score_threshold
        for det in raw:
            scores = det["scores"].float().cpu().numpy()
            keep = scores >= keep_thr
            yield {"boxes": det["boxes"].float().cpu().numpy()[keep],
                   "scores": scores[keep],
                   "masks": det["masks"][:, 0].float().cpu().numpy()[keep]}

    def _instance_proba(self, det: dict[str, np.ndarray]) -> np.ndarray:
        if self._layout is None:  # pragma: no cover - semantic models never get here
            raise InputError("not a maskrcnn bundle")
        return instances_to_proba(det["masks"], det["scores"], self.num_classes, self._layout,
                                  self.spec.architecture.mask_threshold)
