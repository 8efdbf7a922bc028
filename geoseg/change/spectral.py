"""Spectral evidence for land-cover change: did the image itself change?

Comparing two classifications calls a change wherever the dates' classes differ, so one date's
misclassification (a dry field called bare on one date and vegetation on the other) is a false
change although the ground, and the image, did not change. Change-vector analysis asks the
other question: how far apart are the two dates' pixel values? Each band of each image is
standardised by its own median and spread (interquartile range / 1.349, a standard deviation
that the changed pixels themselves cannot inflate) over a sample of the overlap; this absorbs
global differences of illumination, gain and haze. The per-band differences are averaged over
a 3×3 neighbourhood (noise, sub-pixel misregistration) and the magnitude is their root mean
square over bands, in standard deviations (σ). A class flip counts as a change only where the
magnitude reaches ``min_spectral_change``; elsewhere the change store says
:data:`~geoseg.change.raster.NO_IMAGE_CHANGE`.

The images are read window by window on the change grid: a plain (boundless) window read when
an image shares the grid's pixel lattice, else nearest-neighbour resampling, as the runs'
classes are aligned (:mod:`geoseg.change.align`). Memory is O(chunk).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import tokenize

from geoseg.change.align import WindowedArray, lattice_offset, source_window
from geoseg.errors import InputError
from geoseg.grid import GeoBox, Window

log = logging.getLogger(__name__)

SCALE = 0.02  # σ per stored unit: uint8 codes 0..254 cover 0..5.08 σ
UNKNOWN = 255  # no magnitude: a date has no image value here
SAMPLE_WINDOWS = 16  # windows of SAMPLE_SIZE² spread over the overlap give the band statistics
SAMPLE_SIZE = 512


@dataclass(frozen=True)
class SpectralInputs:
    """The two images (opened: a :class:`~geoseg.io.RasterInfo` or a mosaic) and their band
    statistics over the overlap; picklable, so Ray tasks read the images where they run."""

    info_a: Any
    info_b: Any
    bands: tuple[int, ...]
    centre_a: tuple[float, ...]  # per band: the median
    spread_a: tuple[float, ...]  # ... and the interquartile range / 1.349
    centre_b: tuple[float, ...]
    spread_b: tuple[float, ...]
    image_a: str = ""  # as given (a path, URL, glob, list or STAC document)
    image_b: str = ""

    def describe(self) -> dict[str, Any]:
        return {"image_a": self.image_a, "image_b": self.image_b, "bands": list(self.bands),
                "median_a": [round(v, 4) for v in self.centre_a],
                "sigma_a": [round(v, 4) for v in self.spread_a],
                "median_b": [round(v, 4) for v in self.centre_b],
                "sigma_b": [round(v, 4) for v in self.spread_b]}


def check_min_spectral_change(value: float) -> None:
    if not (0.0 <= value <= 254 * SCALE) or math.isnan(value):
        raise InputError(f"min_spectral_change must be in [0, {254 * SCALE:g}] σ, got {value}")


def spectral_threshold(min_spectral_change: float) -> int:
    """``min_spectral_change`` (σ) as a stored code: a pixel passes when code >= this."""
    check_min_spectral_change(min_spectral_change)
    return math.ceil(round(min_spectral_change / SCALE, 9))


def _read(info: Any, grid: GeoBox, win: Window, bands: tuple[int, ...]
          ) -> tuple[np.ndarray, np.ndarray]:
    """Bands of ``info`` (a raster or a mosaic, read on its own grid) over ``win`` of ``grid``:
    (float32 (C, H, W), valid (H, W)); an image that opens but whose pixels cannot be read
    (truncated, damaged, a failed download) is a one-line :class:`InputError`."""
    from rasterio.errors import RasterioIOError

    from geoseg.io import read_window

    try:
        off = lattice_offset(info.geobox, grid)
        if off is not None and abs(off[0] - round(off[0])) < 1e-6 \
                and abs(off[1] - round(off[1])) < 1e-6:
            src = Window(win.row_off + round(off[0]), win.col_off + round(off[1]),
                         win.height, win.width)
            return read_window(info, src, bands)
        return _warp(info, grid, win, bands)
    except RasterioIOError as exc:
        raise InputError(_unreadable(info, exc)) from exc


def _unreadable(info: Any, exc: BaseException) -> str:
    """One line for an image whose pixels cannot be read: GDAL's root cause, what to do."""
    from geoseg.sources.remote import is_remote, redact

    root: BaseException = exc
    while root.__cause__ is not None:  # rasterio chains GDAL's own message
        root = root.__cause__
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    cause = redact(lines[-1][:160]) if lines else "read failed"
    path = redact(str(info.path))
    fix = ("check the URL and the network, then rerun" if is_remote(str(info.path))
           else "repair or re-download it")
    return f"cannot read the pixels of {path} ({cause}): {fix}"


def _warp(info: Any, grid: GeoBox, win: Window, bands: tuple[int, ...]
          ) -> tuple[np.ndarray, np.ndarray]:
    from rasterio.crs import CRS as RioCRS
    from rasterio.warp import Resampling, reproject

    from geoseg.io import read_window

    data = np.zeros((len(bands), *win.shape), np.float32)
    valid = np.zeros(win.shape, bool)
    dst, src_grid = grid[win], info.geobox
    need = source_window(src_grid, dst)
    if need is None:
        return data, valid
    src, ok = read_window(info, need, bands)
    kw = dict(src_transform=src_grid[need].transform,
              src_crs=RioCRS.from_wkt(src_grid.crs.to_wkt()),
              dst_transform=dst.transform, dst_crs=RioCRS.from_wkt(dst.crs.to_wkt()),
              resampling=Resampling.nearest)
    reproject(src, data, **kw)
    v = np.zeros(win.shape, np.uint8)
    reproject(ok.astype(np.uint8), v, src_nodata=None, dst_nodata=None, **kw)
    return data, v.astype(bool)


def _sample_windows(overlap: Window, n: int = SAMPLE_WINDOWS, size: int = SAMPLE_SIZE
                    ) -> list[Window]:
    """Up to ``n`` windows of ``size``² evenly spread over ``overlap`` (fewer on small ones)."""
    per_axis = max(1, int(math.sqrt(n)))
    out = []
    for i in range(per_axis):
        for j in range(per_axis):
            h, w = min(size, overlap.height), min(size, overlap.width)
            r = overlap.row_off + (overlap.height - h) * (2 * i + 1) // (2 * per_axis)
            c = overlap.col_off + (overlap.width - w) * (2 * j + 1) // (2 * per_axis)
            out.append(Window(r, c, h, w))
    return list(dict.fromkeys(out))


Image = str | Sequence[str]  # one input, or the inputs of one mosaic


def shown(image: Image) -> str:
    """An image as messages and the summary name it."""
    return image if isinstance(image, str) else " ".join(image)


def _open(image: Image, source: Mapping[str, Any] | None) -> Any:
    """The image as ``geoseg run`` opens it (a raster, or a glob, ``.txt`` list, STAC document:
    a mosaic) with ``source``'s settings (a run's ``source:``: bands, crs, resolution, mosaic,
    nodata), without repeating the warnings its run already gave (no nodata, ...)."""
    import warnings

    from geoseg.errors import GeoSegWarning
    from geoseg.sources import band_refs, open_source

    keys = ("bands", "crs", "resolution", "mosaic", "nodata")
    opts = {k: v for k, v in (source or {}).items() if k in keys and v is not None}
    if "bands" in opts:  # as the run's plan reads them: "2" is band 2
        opts["bands"] = band_refs(opts["bands"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeoSegWarning)
        return open_source([image] if isinstance(image, str) else list(image), **opts)


def open_spectral(image_a: Image, image_b: Image, grid: GeoBox, overlap: Window,
                  sources: tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]
                  = (None, None)) -> SpectralInputs:
    """Open both images (with ``sources``: how each run read its images) and measure their
    band statistics over ``overlap`` of ``grid`` (pixels valid on both dates, every 2nd row
    and column of :data:`SAMPLE_WINDOWS` windows); raise a one-line
    :class:`~geoseg.errors.GeoSegError` when an image cannot be used."""
    ia, ib = _open(image_a, sources[0]), _open(image_b, sources[1])
    n = min(ia.count, ib.count)
    if ia.count != ib.count:
        log.warning("images have %d and %d bands: the spectral evidence uses bands 1-%d",
                    ia.count, ib.count, n)
    bands = tuple(range(1, n + 1))
    samples: list[list[np.ndarray]] = [[], []]
    for win in _sample_windows(overlap):
        (xa, va), (xb, vb) = _read(ia, grid, win, bands), _read(ib, grid, win, bands)
        both = (va & vb)[::2, ::2]
        samples[0].append(xa[:, ::2, ::2][:, both])
        samples[1].append(xb[:, ::2, ::2][:, both])
    values = [np.concatenate(s, axis=1) for s in samples]
    if values[0].shape[1] < 100:
        raise InputError(f"{shown(image_a)} and {shown(image_b)} share too few valid pixels "
                         "in the runs' overlap to compare their values: check that these are "
                         "the runs' images, or pass --min-spectral-change 0")
    stats = []
    for v in values:
        q25, med, q75 = np.percentile(v, [25, 50, 75], axis=1)
        spread = (q75 - q25) / 1.349
        fallback = v.std(axis=1)  # a band with a flat middle: its standard deviation
        spread = np.where(spread > 1e-9, spread, np.where(fallback > 1e-9, fallback, 1.0))
        stats.append((tuple(med.tolist()), tuple(spread.tolist())))
    return SpectralInputs(ia, ib, bands, stats[0][0], stats[0][1], stats[1][0], stats[1][1],
                          shown(image_a), shown(image_b))


def magnitude(a: np.ndarray, b: np.ndarray, valid: np.ndarray, spec: SpectralInputs
              ) -> np.ndarray:
    """Stored codes of the change magnitude of two (C, H, W) windows that carry one pixel of
    context on every side; returns (H-2, W-2) uint8 (:data:`UNKNOWN` where a date has no
    value)."""
    from scipy import ndimage

    ma, sa = (np.asarray(v, np.float32)[:, None, None] for v in (spec.centre_a, spec.spread_a))
    mb, sb = (np.asarray(v, np.float32)[:, None, None] for v in (spec.centre_b, spec.spread_b))
    diff = (a - ma) / sa - (b - mb) / sb
    diff[:, ~valid] = 0.0
    weight = ndimage.uniform_filter(valid.astype(np.float32), size=3, mode="constant")
    mean = ndimage.uniform_filter(diff, size=(1, 3, 3), mode="constant")
    mean /= np.maximum(weight, 1e-6)[None]  # the mean over the valid neighbours
    mag = np.sqrt((mean * mean).mean(axis=0))[1:-1, 1:-1]
    code = np.minimum(np.rint(mag / SCALE), 254).astype(np.uint8)
    code[~valid[1:-1, 1:-1]] = UNKNOWN
    return code


class SpectralCodes(WindowedArray):
    """Array-like view of the change magnitude codes on the change grid."""

    dtype = np.dtype(np.uint8)

    def __init__(self, spec: SpectralInputs, grid: GeoBox) -> None:
        self.spec, self.grid = spec, grid
        self.shape = grid.shape

    def window(self, win: Window) -> np.ndarray:
        if win.size == 0:
            return np.full(win.shape, UNKNOWN, np.uint8)
        big = win.pad(1)
        a, va = _read(self.spec.info_a, self.grid, big, self.spec.bands)
        b, vb = _read(self.spec.info_b, self.grid, big, self.spec.bands)
        return magnitude(a, b, va & vb, self.spec)


def spectral_array(spec: SpectralInputs, grid: GeoBox, chunk: int) -> da.Array:
    """Lazy uint8 magnitude codes on ``grid`` in ``chunk``² blocks."""
    token = tokenize(spec, grid.shape, tuple(grid.transform), grid.crs.to_wkt())
    return da.from_array(SpectralCodes(spec, grid), chunks=(chunk, chunk), asarray=False,
                         meta=np.empty((0, 0), np.uint8), name=f"spectral-{token}")
