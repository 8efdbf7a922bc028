"""Truth class rasters on any grid, read window by window on the prediction grid.

A truth raster that *is* the prediction grid (same CRS and pixel size, pixel-aligned) is read
directly. Any other (another CRS, pixel size or alignment) is resampled nearest-neighbour onto the
prediction grid through a GDAL warped VRT (``rasterio.vrt.WarpedVRT``), one window at a time, so
memory stays O(window) however large either raster is. Class ids are never interpolated.

Pixels that are nodata in the truth (declared nodata, NaN, or outside the raster) read as
:data:`IGNORE` (255), which every pixel metric leaves out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window as RioWindow

from geoseg.errors import CRSError, InputError, NotARasterError, RasterNotFoundError
from geoseg.grid import GeoBox, Window, normalize_crs
from geoseg.sources.remote import is_local_path

log = logging.getLogger(__name__)

IGNORE = 255


def open_grid(path: str | Path, what: str = "truth") -> tuple[GeoBox, float | None]:
    """Grid and declared nodata of a raster; every problem is one :class:`InputError` line."""
    p = str(path)
    if is_local_path(p) and not Path(p).exists():
        raise RasterNotFoundError(f"{what} {p} not found: check the path")
    try:
        with rasterio.open(p) as src:
            if src.crs is None:
                raise CRSError(f"{what} {p} has no CRS: assign one (e.g. gdal_edit.py -a_srs "
                               "EPSG:32633 FILE)")
            return (GeoBox((src.height, src.width), src.transform, normalize_crs(src.crs)),
                    src.nodata)
    except RasterioIOError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise NotARasterError(f"{what} {p} is not a raster GDAL can read ({first})") from exc


def aligned_window(truth: GeoBox, grid: GeoBox) -> Window | None:
    """The window of ``truth`` that is exactly ``grid`` (same CRS and pixel size,
    pixel-aligned; it may reach outside the truth), else None."""
    if truth.crs != grid.crs or not np.allclose(truth.resolution, grid.resolution) \
            or truth.transform.b or truth.transform.d or grid.transform.b or grid.transform.d:
        return None
    c, r = ~truth.transform @ (grid.transform.c, grid.transform.f)
    if abs(c - round(c)) > 1e-6 or abs(r - round(r)) > 1e-6:
        return None
    return Window(round(r), round(c), grid.height, grid.width)


def overlaps(truth: GeoBox, grid: GeoBox) -> bool:
    """Whether the truth's footprint, in the grid's CRS, overlaps the grid's."""
    g = grid.bounds
    try:
        t = truth.bounds.to_crs(grid.crs)
    except Exception as exc:  # pyproj cannot transform (disjoint areas of use): no overlap
        log.debug("truth bounds not transformable to the prediction CRS: %s", exc)
        return False
    return bool(np.all(np.isfinite([t.left, t.bottom, t.right, t.top]))) and \
        t.left < g.right and t.right > g.left and t.bottom < g.top and t.top > g.bottom


class TruthReader:
    """Reads windows of the prediction ``grid`` from a truth class raster on any grid.

    Use as a context manager; :meth:`read` returns integer class ids with :data:`IGNORE`
    where the truth has no data. ``resampled`` says whether the truth was warped."""

    def __init__(self, path: str | Path, grid: GeoBox, what: str = "truth") -> None:
        self.path, self.grid, self.what = str(path), grid, what
        tgrid, self.nodata = open_grid(path, what)
        if not overlaps(tgrid, grid):
            raise InputError(f"{what} {self.path} does not overlap the predictions (its bounds "
                             f"in {grid.crs.to_string()} miss the prediction grid): check its "
                             "CRS and extent")
        window = aligned_window(tgrid, grid)
        self.resampled = window is None
        self.offset = (window.row_off, window.col_off) if window is not None else (0, 0)
        self._src: Any = None
        self._vrt: Any = None

    def __enter__(self) -> TruthReader:
        from rasterio.crs import CRS as RioCRS
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        self._src = rasterio.open(self.path)
        if self.resampled:
            g = self.grid
            log.info("%s %s is on another grid: resampled nearest-neighbour onto the "
                     "predictions' grid", self.what, self.path)
            dtype = "int16" if self._src.dtypes[0] == "int8" else None
            self._vrt = WarpedVRT(self._src, crs=RioCRS.from_wkt(g.crs.to_wkt()),
                                  transform=g.transform, width=g.width, height=g.height,
                                  resampling=Resampling.nearest, src_nodata=self.nodata,
                                  nodata=IGNORE, dtype=dtype)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        for h in (self._vrt, self._src):
            if h is not None:
                h.close()
        self._src = self._vrt = None

    def read(self, win: Window) -> np.ndarray:
        """Class ids of ``win`` (a window of the prediction grid)."""
        if self._src is None:
            raise RuntimeError("TruthReader.read outside its with-block")
        if self._vrt is not None:  # the VRT writes IGNORE at nodata and outside the truth
            inner = win.intersect(self.grid.window)  # (a VRT reads only inside itself)
            out = np.full(win.shape, IGNORE, np.int64)
            if inner.size:
                out[inner.relative_to(win).slices()] = _classes(
                    self._vrt.read(1, window=_rio(inner)), None)
            return out if self._vrt.dtypes[0] != "uint8" else out.astype(np.uint8)
        src = Window(self.offset[0] + win.row_off, self.offset[1] + win.col_off,
                     win.height, win.width)
        outside = np.ones(win.shape, bool)
        inner = src.intersect(Window(0, 0, self._src.height, self._src.width))
        if inner.size:
            outside[inner.relative_to(src).slices()] = False
        data = self._src.read(1, window=_rio(src), boundless=True, fill_value=0)
        return _classes(data, self.nodata, outside)


def _rio(win: Window) -> RioWindow:
    return RioWindow(win.col_off, win.row_off, win.width, win.height)


def _classes(data: np.ndarray, nodata: float | None,
             outside: np.ndarray | None = None) -> np.ndarray:
    """Integer class ids with IGNORE at nodata, NaN and ``outside`` pixels."""
    bad = np.zeros(data.shape, bool) if outside is None else outside
    if data.dtype.kind == "f":
        bad = bad | ~np.isfinite(data)
    if nodata is not None and not np.isnan(nodata):
        bad = bad | (data == nodata)
    if data.dtype != np.uint8:
        data = np.where(np.isfinite(data), data, IGNORE) if data.dtype.kind == "f" else data
        data = data.astype(np.int64)
    if bad.any():
        data = np.where(bad, IGNORE, data).astype(data.dtype)
    return data
