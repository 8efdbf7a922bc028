"""Whether a bundle may run in bfloat16: classes under bf16 autocast checked against float32.

bf16 keeps 8 bits of mantissa. On CPUs with AMX tiles oneDNN runs bf16 convolutions ~4x faster
than float32 eager (~3.6x with AVX512-BF16 on Zen 4), and a trained model's classes barely move
(the built-in bundles: >= 99.96 % of pixels equal); a model whose class logits are nearly tied
(random weights: 99.7 %) moves more. So ``engine auto`` runs a bundle in bf16 only when the
bundle records an agreement of at least :data:`geoseg.engine.BF16_MIN_AGREEMENT` (99.9 %)
measured on real imagery: ``geoseg train`` measures it on its validation windows, ``geoseg
export BUNDLE --bf16-check IMAGE`` on windows of an image.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geoseg.bundle import BundleSpec, bundle_file, read_spec, update_spec
from geoseg.errors import BundleError, GeoSegWarning, InputError
from geoseg.models.halo import check_image, fewer_windows, require_writable

logger = logging.getLogger(__name__)


def agreement(model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> tuple[int, int]:
    """(pixels whose argmax class is the same under bf16 autocast as in float32, pixels) over
    normalised batches ``(N, C, H, W)``, on the CPU."""
    model = model.eval()
    same = total = 0
    with torch.inference_mode():
        for x in batches:
            ref = model(x).argmax(dim=1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(x.contiguous(memory_format=torch.channels_last)).float().argmax(dim=1)
            same += int((ref == low).sum())
            total += ref.numel()
    return same, total


@dataclass(frozen=True)
class Bf16Check:
    """A check's result: the share of pixels whose class is the same under bf16 autocast as in
    float32, and what it was measured on (windows actually measured, their size, pixels)."""

    share: float
    windows: int
    size: int
    pixels: int


def image_batches(spec: BundleSpec, image: str | Path, windows: int, size: int,
                  seed: int = 0) -> list[torch.Tensor]:
    """Up to ``windows`` normalised windows of ``size`` px (less on a smaller image) at distinct
    random places of ``image`` (the bundle's bands; windows with nodata are skipped, so a check
    never scores padding). The image gets ``geoseg run``'s checks first
    (:func:`geoseg.models.halo.check_image`); fewer windows or smaller ones than asked are
    warned about."""
    from geoseg.io import open_info, valid_windows

    info = open_info(str(image))
    check_image(spec, info, image)
    h, w = info.geobox.height, info.geobox.width
    asked, size = size, min(size, h, w) // 32 * 32
    if size < 32:
        raise InputError(f"{image} is smaller than 32x32 px: give a larger image for the check")
    if size < asked:
        warnings.warn(f"{image} is {w}x{h} px: the bf16 check measures {size}-px windows, not "
                      f"{asked}-px ones", GeoSegWarning, stacklevel=2)
    out = [torch.from_numpy(np.ascontiguousarray(spec.normalization.apply(data)[None],
                                                 dtype=np.float32))
           for data in valid_windows(info, tuple(spec.bands), size, windows, windows * 4, seed)]
    if not out:
        raise InputError(f"{image}: no {size}-px window without nodata was found for the check")
    fewer_windows(image, len(out), windows, size, "the bf16 agreement")
    return out


def check_bundle(bundle_dir: str | Path, image: str | Path, *, windows: int = 8,
                 size: int = 512, record: bool = True,
                 report: Callable[[Bf16Check], None] | None = None) -> float:
    """Measure the bundle's bf16 agreement on ``windows`` windows of ``image`` and (``record``)
    write it into ``bundle.yaml`` as ``bf16_agreement``. With ``record`` a bundle that cannot
    be written is refused before measuring; ``report(result)`` is called before the result is
    recorded (so a failed write loses nothing that was measured)."""
    from geoseg.models.factory import build_model
    from geoseg.models.weights import load_weights

    spec = read_spec(bundle_dir)
    if spec.architecture.name == "maskrcnn":
        raise InputError(f"bundle {spec.name!r} is maskrcnn: only semantic bundles run in bf16")
    weights = torch_weights(spec, bundle_dir, "there is nothing to check in bf16 "
                            "(onnxruntime runs such a bundle in float32)")
    if record:
        require_writable(bundle_dir)
    batches = image_batches(spec, image, windows, size)
    model = build_model(spec)
    load_weights(model, weights)
    same, total = agreement(model, batches)
    result = Bf16Check(same / total, len(batches), int(batches[0].shape[-1]), total)
    logger.info("bundle %s: bf16 classes equal float32's on %.4f%% of %d pixels (%d windows)",
                spec.name, 100 * result.share, total, result.windows)
    if report is not None:
        report(result)
    if record:
        update_spec(bundle_dir, bf16_agreement=round(result.share, 6))
    return result.share


def torch_weights(spec: BundleSpec, bundle_dir: str | Path, what: str) -> Path:
    """The bundle's weights file, resolved as ``geoseg run`` resolves it (a name that leaves
    the bundle folder is refused); an ONNX-only bundle (a graph, no weights) is refused in one
    line that says so, ``what`` saying what that means for the command."""
    from geoseg.models.weights import weights_path

    path = weights_path(spec, bundle_dir)
    if (not path.exists() and spec.onnx is not None
            and bundle_file(bundle_dir, spec.onnx, "onnx file").is_file()):
        raise BundleError(f"bundle {spec.name!r} ships only an ONNX graph ({spec.onnx}), no "
                          f"torch weights: {what}")
    return path
