"""Reading imagery: validated raster sources and boundless, nodata-aware window reads.

A worker never reads more than the window it is given (chunk + halo); pixels outside the image or
flagged nodata come back as ``fill`` with ``valid == False``.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window as RioWindow

from geoseg.errors import CRSError, GeoSegWarning, NotARasterError, RasterNotFoundError
from geoseg.grid import GeoBox, Window, normalize_crs
from geoseg.sources.remote import (
    describe_remote_error,
    gdal_path,
    is_local_path,
    is_remote,
    redact,
    remote_env,
)

if TYPE_CHECKING:
    from geoseg.blockcache import BlockCache
    from geoseg.sources.mosaic import Mosaic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageInfo:
    """What geoseg needs to know about its input image (picklable, no open handles): one
    raster (:class:`RasterInfo`) or a mosaic (:class:`geoseg.sources.mosaic.Mosaic`)."""

    path: str  # the raster, or a short description of a mosaic
    geobox: GeoBox  # the image's grid (a mosaic's: the output grid)
    count: int
    dtype: str
    nodata: float | None
    has_dataset_mask: bool
    band_names: tuple[str | None, ...]
    acquisition_date: str | None


@dataclass(frozen=True)
class RasterInfo(ImageInfo):
    """One raster, read on its own grid."""

    alpha_bands: tuple[int, ...] = ()  # 1-based bands GDAL takes for transparency (its mask)


def opaque_alpha(info: RasterInfo, band: int, values: np.ndarray) -> bool:
    """Whether ``band`` is an alpha band of ``info`` whose (sampled, valid) ``values`` are
    >= 99 % opaque (the type's maximum): transparency, not data. A varying band tagged alpha
    (GDAL's default for band 4 of a 4-band byte GeoTIFF) is data."""
    kind = np.dtype(info.dtype)
    if band not in info.alpha_bands or kind.kind not in "ui" or not values.size:
        return False
    return float(np.mean(values == np.iinfo(kind).max)) >= 0.99


def colour_bands(info: RasterInfo) -> str:
    """The bands of ``info`` that are not alpha, as ``--bands`` takes them (``1,2,3``)."""
    return ",".join(str(k) for k in range(1, info.count + 1) if k not in info.alpha_bands)


def open_info(path: str | Path) -> RasterInfo:
    """Open and validate a raster; raise a one-line :class:`GeoSegError` if it cannot be used.
    A local path is made absolute: workers (threads, Ray processes) may not share this
    process's working directory."""
    p = str(path)
    if is_local_path(p):
        if not Path(p).exists():
            raise RasterNotFoundError(f"image not found: {p} (check the path)")
        p = os.path.abspath(p)
    shown = redact(p)  # URLs may carry signatures or tokens: never shown
    try:
        with remote_env(p), rasterio.open(gdal_path(p)) as src:
            gcps, gcp_crs = src.gcps
            if src.crs is None and (gcps or src.rpcs is not None):
                how = f"{len(gcps)} ground control points" if gcps else "RPCs"
                srs = gcp_crs.to_string() if gcps and gcp_crs else "EPSG:32633"
                raise CRSError(f"{shown} is georeferenced only by {how}, not by a grid: warp it "
                               f"onto one first (e.g. gdalwarp -t_srs {srs} FILE OUT.tif"
                               + (")" if gcps else " -rpc, with a DEM)"))
            if src.crs is None:
                raise CRSError(f"{shown} has no CRS: assign one first (e.g. gdal_edit.py -a_srs "
                               "EPSG:32633 FILE)")
            geobox = GeoBox((src.height, src.width), src.transform, normalize_crs(src.crs))
            flags = src.mask_flag_enums
            has_mask = src.nodata is None and any(
                MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags)
            tags = src.tags()
            date = tags.get("ACQUISITION_DATE") or _tiff_date(tags.get("TIFFTAG_DATETIME"))
            alpha = tuple(i + 1 for i, c in enumerate(src.colorinterp) if c == ColorInterp.alpha)
            info = RasterInfo(p, geobox, src.count, src.dtypes[0], src.nodata, has_mask,
                              tuple(src.descriptions), date, alpha)
    except RasterioIOError as exc:
        if is_remote(p):
            raise NotARasterError(describe_remote_error(p, str(exc))) from exc
        if os.path.isdir(p):  # a folder of tiles, most likely
            raise NotARasterError(f"{p} is a folder GDAL cannot read as one raster: give its "
                                  f"images as a quoted glob ('{os.path.join(p, '*.tif')}') or "
                                  "a .txt list of them") from exc
        raise NotARasterError(f"{p} is not a raster GDAL can read: {_first_line(exc)}") from exc
    if info.nodata is None and not info.has_dataset_mask:
        but = " except NaN/inf" if np.dtype(info.dtype).kind in "fc" else ""
        warnings.warn(f"{shown} declares no nodata value: every pixel{but} is treated as valid",
                      GeoSegWarning, stacklevel=2)
    return info


def _tiff_date(value: str | None) -> str | None:
    # TIFF DateTime is "YYYY:MM:DD HH:MM:SS"
    if not value or len(value) < 10:
        return None
    return value[:10].replace(":", "-")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _read_bands(src: rasterio.io.DatasetReader, bands: tuple[int, ...],
                window: RioWindow) -> np.ndarray:
    """``src.read(bands, window)``; bands of different data types (a VRT may mix them, and
    rasterio reads one type at a time) are read one by one into their common type."""
    types = {src.dtypes[b - 1] for b in bands}
    if len(types) == 1:
        return src.read(list(bands), window=window)
    common = np.result_type(*types)
    return np.stack([src.read(b, window=window).astype(common, copy=False) for b in bands])


def read_window(info: RasterInfo | Mosaic, window: Window, bands: tuple[int, ...],
                fill: float = 0.0, cache: BlockCache | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Boundless read of ``bands`` (1-based) over ``window`` of the source grid.

    Returns ``(data float32 (C, H, W), valid bool (H, W))``; outside the image, at nodata
    pixels and wherever a band is NaN or ±inf (declared nodata or not: no model can use them)
    ``data == fill`` and ``valid`` is False. A :class:`~geoseg.sources.mosaic.Mosaic` is read
    on its output grid (see :func:`geoseg.sources.mosaic.read_window_sources`). With a
    ``cache``, the source blocks of a local tiled file are decoded once for all the windows
    that overlap them (:mod:`geoseg.blockcache`); the result is the same.
    """
    if not isinstance(info, RasterInfo):
        from geoseg.sources.mosaic import read_window_sources

        data, valid, _, _ = read_window_sources(info, window, bands, fill)
        return data, valid
    h, w = window.shape
    inner = window.intersect(info.geobox.window)
    if inner.size == 0:
        return (np.full((len(bands), h, w), fill, dtype=np.float32),
                np.zeros((h, w), dtype=bool))
    rel = inner.relative_to(window)
    rio_win = RioWindow(inner.col_off, inner.row_off, inner.width, inner.height)
    by_value = info.nodata is not None and not np.isnan(info.nodata)
    want_mask = not by_value and info.has_dataset_mask
    with remote_env(info.path), rasterio.open(gdal_path(info.path)) as src:
        cached = (cache.read(src, info.path, rio_win, bands, want_mask) if cache is not None
                  else None)
        if cached is not None:
            arr, mask = cached
        else:
            arr = _read_bands(src, bands, rio_win)
            mask = src.dataset_mask(window=rio_win) if want_mask else None
    if by_value:
        ok = ~np.all(arr == info.nodata, axis=0)
    elif mask is not None:
        ok = mask > 0
    else:
        ok = np.ones(inner.shape, dtype=bool)
    if arr.dtype.kind in "fc":
        ok &= np.all(np.isfinite(arr), axis=0)
    all_ok = bool(ok.all())
    if inner == window and all_ok:  # the common case: one conversion, no fill, no select
        return arr.astype(np.float32, copy=False), ok
    rs, cs = rel.slices()
    data = np.full((len(bands), h, w), fill, dtype=np.float32)
    valid = np.zeros((h, w), dtype=bool)
    # converted as it is copied in; nodata pixels (if any) take the fill
    data[:, rs, cs] = arr if all_ok else np.where(ok[None], arr, np.float32(fill))
    valid[rs, cs] = ok
    return data, valid


def valid_windows(info: RasterInfo | Mosaic, bands: tuple[int, ...], size: int, count: int,
                  tries: int, seed: int = 0) -> list[np.ndarray]:
    """Up to ``count`` windows ``(C, size, size)`` of ``bands`` at distinct random places of
    the image, each without an invalid pixel (checks of a model on a user's image never score
    padding, nor one window twice), from at most ``tries`` draws of a generator seeded with
    ``seed``. Fewer when the image has fewer places for such a window (one, for a window the
    size of the image)."""
    h, w = info.geobox.height, info.geobox.width
    places = max(0, h - size + 1) * max(0, w - size + 1)
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    seen: set[tuple[int, int]] = set()
    for _ in range(tries):
        if len(out) == count or len(seen) == places:
            break
        r, c = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        if (r, c) in seen:  # the same place again: the same window
            continue
        seen.add((r, c))
        data, valid = read_window(info, Window(r, c, size, size), bands)
        if valid.all():
            out.append(data)
    return out
