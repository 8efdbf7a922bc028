"""How much context a chunk needs around it: the halo measured on an image, not guessed.

A chunk is predicted on its window grown by ``halo`` pixels and cropped back (one pass per chunk
by default). Its classes near the cut can differ from those a pass with more context gives. The
check cuts random windows of an image; for each window it predicts the central ``chunk`` px once
with :data:`REFERENCE` px of context on every side (the reference) and once per candidate halo,
and counts the core pixels whose class equals the reference's. The smallest halo from which
every larger candidate reaches :data:`MIN_AGREEMENT` in every window is the bundle's halo
(scenes differ: at 16 px the built-in land-cover bundle kept 99.96 % of pixels on one generated
scene and 99.92 % on another); ``inference.halo: auto`` (the default) then runs it.

Candidates are multiples of 16 and of the model's output stride (``2 ** encoder_depth``): a
U-Net's classes are the same for a shifted input only when the shift is a multiple of its
stride, so a 16-px halo on a stride-32 model moves the pooling grid of every chunk and, on the
random-weight reference U-Net-R18, agreed on 91-94 % of pixels where no halo at all agreed on
96-97 % (2026-12-04, DESIGN.md). That random-weight model, whose classes are nearly tied,
needs 160 px (98.98 % at 64).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from geoseg.bundle import (
    BUNDLE_FILE,
    BundleSpec,
    HaloRecord,
    bundle_file,
    read_spec,
    require_bands,
    update_spec,
)
from geoseg.engine import RunEngine
from geoseg.errors import GeoSegWarning, InputError
from geoseg.outdir import storage_errors

if TYPE_CHECKING:
    from geoseg.io import RasterInfo
    from geoseg.sources.mosaic import Mosaic

logger = logging.getLogger(__name__)

REFERENCE = 256       # px of context on every side of the reference pass
MIN_AGREEMENT = 0.999  # share of a chunk's pixels whose class must equal the reference's
MAX_CANDIDATE = 192


@dataclass(frozen=True)
class HaloCheck:
    """A check's result: agreement per candidate halo (px → share of all windows' pixels), the
    least of any one window, the halo picked (None: no candidate reached the minimum in every
    window), and what it was measured on."""

    agreement: dict[int, float]
    worst: dict[int, float]
    halo: int | None
    chunk: int
    windows: int
    pixels: int  # core pixels compared per candidate


def step(spec: BundleSpec) -> int:
    """Halos are multiples of the model's output stride and of 16 (a pass is a multiple of
    32 px: a chunk plus twice the halo)."""
    return max(2 ** spec.architecture.encoder_depth, 16)


def candidates(spec: BundleSpec, largest: int = MAX_CANDIDATE) -> list[int]:
    """The halos a check tries: 0 and the multiples of :func:`step` up to ``largest``."""
    return list(range(0, largest + 1, step(spec)))


def pick(agreement: dict[int, float], minimum: float = MIN_AGREEMENT) -> int | None:
    """The smallest halo from which every larger candidate reaches ``minimum`` (None: the
    largest does not). Agreement is not monotone in the halo on every model, so a halo that
    reaches the minimum below one that misses it is not taken."""
    best: int | None = None
    for h in sorted(agreement, reverse=True):
        if agreement[h] < minimum:
            break
        best = h
    return best


def _classes(predictor: Any, x: np.ndarray, keep: int, size: int) -> np.ndarray:
    """Classes of the central ``size`` px of one raw window, ``keep`` px of context kept on
    each side of them."""
    lo = x.shape[-1] // 2 - size // 2 - keep
    sub = np.ascontiguousarray(x[None, :, lo:lo + size + 2 * keep, lo:lo + size + 2 * keep])
    proba = predictor.predict_proba(sub)[0]
    return np.asarray(proba.argmax(axis=0)[keep:keep + size, keep:keep + size], np.uint8)


def require_writable(bundle_dir: str | Path) -> None:
    """Refuse, before a check measures anything, a bundle whose ``bundle.yaml`` cannot be
    replaced (a read-only folder): one line (:class:`~geoseg.errors.StorageError`), not minutes
    of measuring lost. It tries what :func:`~geoseg.bundle.write_spec` does: a new file in the
    folder (``os.access`` says yes to root even in an immutable folder)."""
    folder = Path(bundle_dir)
    with storage_errors(folder / BUNDLE_FILE):
        fd, probe = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        os.close(fd)
        os.unlink(probe)


def check_image(spec: BundleSpec, info: RasterInfo | Mosaic, image: str | Path) -> None:
    """The checks ``geoseg run`` makes of an image (:mod:`geoseg.plan`), made before a check
    measures a bundle on it: the bands the bundle reads exist and, where the image and the
    bundle name them, are the bundle's, in its order; and the image's values are on the scale
    the bundle was trained on. Run only warns about the scale; a check refuses it, since what
    it measured would be recorded in ``bundle.yaml`` and steer every later run."""
    from geoseg.plan import ModelRef, check_bands, far_band, far_text, sampled_values

    require_bands(spec, info.count, str(image))
    ref = ModelRef(spec.task, "", spec, "")
    check_bands(info, (ref,))
    bands = tuple(spec.bands)
    values = sampled_values(info, info.geobox.window, bands)
    i = None if values is None else far_band(values, spec.normalization)
    if values is None or i is None:
        return
    far = far_text(bands[i], values, spec.normalization, i, f"model {ref.model_id}")
    raise InputError(
        f"{image}: {far}, so a check measured on it would be recorded but mean nothing: give "
        "an image scaled like the model's training images (e.g. not reflectance 0-1 or "
        "0-10000 for a model trained on 0-255 images)")


def fewer_windows(image: str | Path, found: int, asked: int, size: int, what: str) -> None:
    """Warn that ``found`` distinct ``size``-px windows without nodata were measured where
    ``asked`` were asked for (a small image, or a small valid area)."""
    if found < asked:
        warnings.warn(f"{image}: only {found} distinct {size}-px window(s) without nodata "
                      f"found of the {asked} asked: {what} is measured on {found} (an image "
                      "with a larger valid area gives more)", GeoSegWarning, stacklevel=3)


def measure(predictor: Any, spec: BundleSpec, image: str | Path, *, chunk: int = 1024,
            windows: int = 4, seed: int = 0, halos: list[int] | None = None,
            progress: Callable[[int, int], None] | None = None) -> HaloCheck:
    """Agreement of each candidate halo with the reference on ``windows`` windows of
    ``image`` (see the module docstring). ``chunk`` shrinks, in steps of 32 px (or the
    stride), to what the image holds with the reference context around it.
    ``progress(done, windows)`` after each window."""
    from geoseg.io import open_info, valid_windows

    unit = step(spec)
    halos = sorted(halos if halos is not None else candidates(spec))
    if any(h % unit or h < 0 or h > REFERENCE for h in halos):
        raise InputError(f"halos to check must be multiples of {unit} (the model's stride, at "
                         f"least 16) from 0 to {REFERENCE}, got {halos}")
    info = open_info(str(image))
    check_image(spec, info, image)
    geobox = info.geobox
    whole = max(unit, 32)
    chunk = min(chunk, min(geobox.height, geobox.width) - 2 * REFERENCE) // whole * whole
    if chunk < 64:
        raise InputError(f"{image} is {geobox.width}x{geobox.height} px: the halo check needs "
                         f"at least {64 + 2 * REFERENCE} px on each side")
    same: dict[int, list[int]] = {h: [] for h in halos}
    size = chunk + 2 * REFERENCE
    cut = valid_windows(info, tuple(spec.bands), size, windows, windows * 8, seed)
    if not cut:
        raise InputError(f"{image}: no {size}-px window without nodata was found for the halo "
                         "check: give an image with a larger valid area (or a smaller --chunk)")
    fewer_windows(image, len(cut), windows, size, "the halo")
    for i, x in enumerate(cut, 1):
        ref = _classes(predictor, x, REFERENCE, chunk)
        for h in halos:
            same[h].append(int(np.count_nonzero(_classes(predictor, x, h, chunk) == ref)))
        if progress is not None:
            progress(i, len(cut))
    pixels = len(cut) * chunk * chunk
    agreement = {h: sum(n) / pixels for h, n in same.items()}
    worst = {h: min(n) / (chunk * chunk) for h, n in same.items()}
    return HaloCheck(agreement, worst, pick(worst), chunk, len(cut), pixels)


def check_bundle(bundle_dir: str | Path, image: str | Path, *, chunk: int = 1024,
                 windows: int = 4, record: bool = True,
                 num_threads: int | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 report: Callable[[HaloCheck], None] | None = None) -> HaloCheck:
    """Measure the halo a bundle needs on ``image`` with the engine its CPU runs take (ONNX
    when the bundle has a graph, else torch) and (``record``) write it into ``bundle.yaml`` as
    ``halo`` with the check's table (``halo_check``); ``halo`` is left out when no candidate
    reached the minimum (``auto`` then runs 64 px), so an earlier check never outlives a
    later one. With ``record`` a bundle that cannot be written is refused before measuring;
    ``report(result)`` is called before the result is recorded (so a failed write loses
    nothing that was measured)."""
    from geoseg.models.onnx_predictor import load_predictor

    spec = read_spec(bundle_dir)
    if spec.architecture.name == "maskrcnn":
        raise InputError(f"bundle {spec.name!r} is maskrcnn: the halo check compares classes "
                         "of semantic bundles; set inference.halo for it")
    if record:
        require_writable(bundle_dir)
    predictor = load_predictor(bundle_dir, "cpu", num_threads, _engine(spec, bundle_dir))
    result = measure(predictor, spec, image, chunk=chunk, windows=windows, progress=progress)
    line = ", ".join(f"{h}: {a:.4%} (worst window {result.worst[h]:.4%})"
                     for h, a in result.agreement.items())
    logger.info("bundle %s: classes equal the %d-px-context reference per halo: %s", spec.name,
                REFERENCE, line)
    if report is not None:
        report(result)
    if record:
        table = HaloRecord(chunk=result.chunk, windows=result.windows,
                           worst={h: round(a, 6) for h, a in result.worst.items()})
        update_spec(bundle_dir, halo=result.halo, halo_check=table)
    return result


def _engine(spec: BundleSpec, bundle_dir: str | Path) -> RunEngine:
    """ONNX when the bundle's graph is there, else torch (as ``engine auto`` on a CPU: a graph
    that ``bundle.yaml`` names but an interrupted export did not put in place is not run)."""
    if spec.onnx and bundle_file(bundle_dir, spec.onnx, "onnx file").is_file():
        return "onnx"
    return "torch"


def halo_for_chunk(spec: BundleSpec, chunk: int) -> int | None:
    """The halo a bundle's recorded check asks for at ``chunk`` px (None: no record, or no
    halo it measured is enough there). Pixels that differ lie in a band along a chunk's edges,
    so their share grows as ``1 / chunk``: the check's shares are scaled by ``measured chunk /
    chunk`` for smaller chunks (a 128-px chunk needs 8x less disagreement per pixel of band
    than a 1024-px one) and kept as measured for larger ones."""
    rec = spec.halo_check
    if rec is None:
        return None
    factor = max(1.0, rec.chunk / chunk)
    return pick({h: 1.0 - (1.0 - a) * factor for h, a in rec.worst.items()})
