"""The band layout a training run reads and the normalisation it learns from its images.

* **Layout.** Any 1-based bands in any order (default: every band of the images, which must then
  have the same count), with names (default: the images' band descriptions, else ``b<index>``),
  checked against every training image before a pixel is read.
* **Normalisation.** Per-band mean and std of the training images' *valid* pixels (nodata, NaN,
  outside-the-image excluded, as :func:`geoseg.io.read_window` decides), optionally after
  clipping each band to percentiles of those pixels. A huge image is never read whole: at most
  ``max_windows`` windows per image, spread at random over its window grid (all of them for a
  small image, so its statistics are exact). The result is the bundle's ``normalization``, the
  same values inference applies (:meth:`geoseg.bundle.Normalization.apply`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geoseg.bundle import Normalization, placeholder_names
from geoseg.errors import BandMismatchError, GeoSegWarning, LabelError
from geoseg.grid import ChunkGrid, Window
from geoseg.io import RasterInfo, colour_bands, opaque_alpha, open_info, read_window

logger = logging.getLogger(__name__)

STD_FLOOR = 1e-6
"""Smallest std stored (relative to the band's magnitude): a constant band normalises to 0."""


@dataclass(frozen=True)
class BandLayout:
    """The bands a bundle reads (1-based, in model-channel order) and their names."""

    bands: tuple[int, ...]
    names: tuple[str, ...]


def _open(path: str | Path) -> RasterInfo:
    """``open_info`` without its "no nodata declared" warning: the chip sampler, which opens
    every training image too, gives it once per image."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GeoSegWarning)
        return open_info(path)


def default_names(info: RasterInfo, bands: Sequence[int]) -> tuple[str, ...]:
    """The image's descriptions of ``bands`` when it describes all of them, else ``b<index>``
    (placeholders that ``geoseg run`` does not check image band names against)."""
    described = [info.band_names[b - 1] for b in bands]
    if all(d and str(d).strip() for d in described):
        return tuple(str(d).strip() for d in described)
    return placeholder_names(tuple(bands))


def resolve_layout(images: Sequence[str | Path], bands: Sequence[int] | None = None,
                   names: Sequence[str] | None = None) -> BandLayout:
    """Check ``bands`` (default: all bands) against every image and name them.

    Raises :class:`BandMismatchError` (one line, what to do) when an image lacks a band, or when
    no bands are given and the images' band counts differ."""
    if not images:
        raise LabelError("no training images given")
    infos = [_open(p) for p in images]
    if bands is None:
        counts = {i.count for i in infos}
        if len(counts) > 1:
            listed = ", ".join(f"{Path(i.path).name}: {i.count}" for i in infos[:6])
            common = ",".join(map(str, range(1, min(counts) + 1)))
            raise BandMismatchError(
                f"training images have different band counts ({listed}): pass --bands with "
                f"indexes every image has (e.g. --bands {common})")
        bands = tuple(range(1, infos[0].count + 1))
    bands = tuple(int(b) for b in bands)
    if not bands:
        raise BandMismatchError("no bands selected: pass --bands, e.g. --bands 1,2,3")
    if min(bands) < 1 or len(set(bands)) != len(bands):
        raise BandMismatchError(f"bands {list(bands)}: give distinct 1-based band indexes "
                                "(e.g. --bands 3,2,1)")
    for info in infos:
        if max(bands) > info.count:
            raise BandMismatchError(
                f"{info.path} has {info.count} band(s) but training reads bands {list(bands)}: "
                f"pass --bands with indexes 1..{info.count} or leave that image out")
    if names is None:
        names = default_names(infos[0], bands)
    names = tuple(str(n).strip() for n in names)
    if len(names) != len(bands) or not all(names):
        raise BandMismatchError(f"{len(names)} band name(s) {list(names)} for {len(bands)} "
                                f"band(s) {list(bands)}: give one non-empty name per band")
    _check_names(infos, bands, names)
    return BandLayout(bands, names)


def _check_names(infos: Sequence[RasterInfo], bands: tuple[int, ...],
                 names: tuple[str, ...]) -> None:
    """Every image that names its bands must name the selected ones as the bundle will:
    ``geoseg run`` refuses an image whose band names differ from its model's, so a bundle
    trained on such an image (or on images that disagree) would refuse its own training
    data. Images that name no bands are not checked, as at run time."""
    if names == placeholder_names(bands):
        return
    want = [n.lower() for n in names]
    for info in infos:
        described = default_names(info, bands)
        if described == placeholder_names(bands) or [n.lower() for n in described] == want:
            continue
        raise BandMismatchError(
            f"{info.path} names bands {list(bands)} {list(described)} but the bundle would "
            f"read them as {list(names)} (geoseg run would refuse this image): give images "
            "whose bands are in the same order (gdal_translate -b), or --band-names that "
            "match the images' own names")


def _windows(info: RasterInfo, size: int, max_windows: int,
             rng: np.random.Generator) -> list[Window]:
    """Up to ``max_windows`` windows of the image's ``size``-px window grid, at random."""
    grid = [c.window for c in ChunkGrid(info.geobox.shape, size)]
    if len(grid) <= max_windows:
        return grid
    pick = np.sort(rng.choice(len(grid), size=max_windows, replace=False))
    return [grid[i] for i in pick]


def _sig(v: float, digits: int = 6) -> float:
    return float(f"{v:.{digits}g}")


class _Moments:
    """Streaming per-band count, sum and sum of squares (float64)."""

    def __init__(self, c: int) -> None:
        self.n = 0
        self.s = np.zeros(c)
        self.ss = np.zeros(c)

    def add(self, v: np.ndarray) -> None:
        v = v.astype(np.float64, copy=False)
        self.n += v.shape[1]
        self.s += v.sum(axis=1)
        self.ss += (v * v).sum(axis=1)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.s / self.n
        return mean, np.sqrt(np.maximum(self.ss / self.n - mean * mean, 0.0))


def check_alpha(images: Sequence[str | Path], bands: Sequence[int]) -> None:
    """Refuse a selected band that an image tags as alpha and holds opaque in 4 sampled
    windows (:func:`geoseg.io.opaque_alpha`): transparency, not data (an RGBA orthophoto),
    which ``geoseg run`` refuses to feed the model as well."""
    from geoseg.plan import _sample_windows

    for path in images:
        info = _open(path)
        for b in (b for b in bands if b in info.alpha_bands):
            parts = [read_window(info, w, (b,)) for w in _sample_windows(info.geobox.window)]
            values = np.concatenate([d[0][v] for d, v in parts]) if parts else np.empty(0)
            if opaque_alpha(info, b, values):
                raise LabelError(f"{path}: band {b} is the image's alpha (transparency) band, "
                                 "not data: train on its colour bands (--bands "
                                 f"{colour_bands(info)}); geoseg run refuses it as a model "
                                 "band too")


def training_normalization(images: Sequence[str | Path], bands: Sequence[int], *,
                           clip_percentiles: tuple[float, float] | None = None,
                           max_windows: int = 64, window: int = 256, seed: int = 0,
                           max_samples: int = 1_000_000) -> Normalization:
    """Per-band mean/std of the valid pixels of ``images`` (nodata excluded), from at most
    ``max_windows`` windows of ``window`` px per image.

    With ``clip_percentiles=(lo, hi)`` the bands are first clipped to those percentiles of a
    random sample of at most ``max_samples`` valid pixels, and mean/std are those of the clipped
    values (what the model sees at inference)."""
    if clip_percentiles is not None:
        lo_p, hi_p = clip_percentiles
        if not 0.0 <= lo_p < hi_p <= 100.0:
            raise LabelError(f"clip percentiles {lo_p:g},{hi_p:g}: give 0 <= low < high <= 100 "
                             "(e.g. 2,98)")
    rng = np.random.default_rng(seed)
    band_t = tuple(bands)
    plan = [(info, _windows(info, window, max_windows, rng))
            for info in (_open(p) for p in images)]
    total = sum(len(w) for _, w in plan)
    per_window = max(1, max_samples // max(1, total))
    moments, samples = _Moments(len(band_t)), []
    for info, wins in plan:
        for win in wins:
            data, valid = read_window(info, win, band_t)
            v = data[:, valid]
            moments.add(v)
            if clip_percentiles is not None and v.shape[1]:
                take = rng.choice(v.shape[1], size=min(per_window, v.shape[1]), replace=False)
                samples.append(v[:, np.sort(take)])
    if moments.n == 0:
        raise LabelError("training images have no valid pixels in the sampled windows: check "
                         "their nodata setting")
    clip_min = clip_max = None
    if clip_percentiles is not None:
        sample = np.concatenate(samples, axis=1).astype(np.float64)
        lo, hi = np.percentile(sample, list(clip_percentiles), axis=1)
        clip_min = tuple(_sig(float(v)) for v in lo)
        clip_max = tuple(_sig(float(v)) for v in hi)
        lo32, hi32 = (np.asarray(b, np.float32)[:, None] for b in (clip_min, clip_max))
        moments = _Moments(len(band_t))
        for info, wins in plan:   # second pass: moments of the clipped values
            for win in wins:
                data, valid = read_window(info, win, band_t)
                moments.add(np.clip(data[:, valid], lo32, hi32))
    mean, std = moments.mean_std()
    floor = STD_FLOOR * np.maximum(1.0, np.abs(mean))
    for i in np.nonzero(std < floor)[0]:
        logger.warning("band %d is constant in the training pixels (%g): it normalises to 0",
                       band_t[i], mean[i])
    std = np.maximum(std, floor)
    logger.info("normalisation from %d valid pixels of %d windows in %d image(s)", moments.n,
                total, len(plan))
    return Normalization(mean=tuple(_sig(float(m)) for m in mean),
                         std=tuple(_sig(float(s)) for s in std),
                         clip_min=clip_min, clip_max=clip_max,
                         clip_percentiles=clip_percentiles)
