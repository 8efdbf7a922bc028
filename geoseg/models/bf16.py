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
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from geoseg.bundle import BundleSpec, read_spec, require_bands, write_spec
from geoseg.errors import InputError

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


def image_batches(spec: BundleSpec, image: str | Path, windows: int, size: int,
                  seed: int = 0) -> list[torch.Tensor]:
    """``windows`` normalised windows of ``size`` px at random places of ``image`` (the
    bundle's bands; windows with nodata are skipped, so a check never scores padding)."""
    from geoseg.io import open_info, valid_windows

    info = open_info(str(image))
    require_bands(spec, info.count, str(image))
    h, w = info.geobox.height, info.geobox.width
    size = min(size, h, w) // 32 * 32
    if size < 32:
        raise InputError(f"{image} is smaller than 32x32 px: give a larger image for the check")
    out = [torch.from_numpy(np.ascontiguousarray(spec.normalization.apply(data)[None],
                                                 dtype=np.float32))
           for data in valid_windows(info, tuple(spec.bands), size, windows, windows * 4, seed)]
    if not out:
        raise InputError(f"{image}: no {size}-px window without nodata was found for the check")
    return out


def check_bundle(bundle_dir: str | Path, image: str | Path, *, windows: int = 8,
                 size: int = 512, record: bool = True) -> float:
    """Measure the bundle's bf16 agreement on ``windows`` windows of ``image`` and (``record``)
    write it into ``bundle.yaml`` as ``bf16_agreement``."""
    from geoseg.models.factory import build_model
    from geoseg.models.weights import load_weights

    spec = read_spec(bundle_dir)
    if spec.architecture.name == "maskrcnn":
        raise InputError(f"bundle {spec.name!r} is maskrcnn: only semantic bundles run in bf16")
    model = build_model(spec)
    load_weights(model, Path(bundle_dir) / spec.weights)
    same, total = agreement(model, image_batches(spec, image, windows, size))
    share = same / total
    logger.info("bundle %s: bf16 classes equal float32's on %.4f%% of %d pixels", spec.name,
                100 * share, total)
    if record:
        write_spec(spec.model_copy(update={"bf16_agreement": round(share, 6)}), bundle_dir)
    return share
