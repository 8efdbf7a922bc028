"""Reading one raster onto another grid, nearest neighbour, over one window only.

Three cases, cheapest first:

1. same CRS, same pixel size, grids aligned: an integer window shift, then
   :func:`geoseg.io.read_window` itself (identical bytes to reading the raster directly);
2. same CRS, other pixel size or alignment: each output pixel centre's source pixel is computed
   exactly (rows and columns separately);
3. other CRS: output pixel centres are transformed exactly (pyproj) at anchor points every
   :data:`STEP` pixels of the *whole* output grid and bilinearly in between (sub-micro-pixel
   error for map projections at this spacing), then floored to source pixels.

In every case the source pixels needed are read with one boundless window read and gathered, so
:func:`geoseg.io.read_window`'s semantics (nodata, masks, NaN, remote reads) hold: a pixel is
valid where its source pixel is. The mapping of a pixel depends only on its position in the
output grid, never on the window it is read in, so chunk reads, halos and a whole-grid read
agree exactly. (GDAL's warper, tried first, anchors its approximate transformer on the
destination window: about 2 % of the pixels of a UTM 32N → 33N window, those within 0.03 px of a
source pixel edge, changed with the window.) Memory is O(window) (times the pixel-size ratio
when the source is finer than the output grid).
"""

from __future__ import annotations

import math
import threading

import numpy as np
from pyproj import CRS, Transformer

from geoseg.grid import GeoBox, Window
from geoseg.io import RasterInfo, read_window

STEP = 16  # output pixels between exactly transformed anchor points
_ALIGN_EPS = 1e-6  # pixels
_EDGE_EPS = 1e-6  # a centre on a source pixel edge goes to the pixel right/below


def _aligned_shift(src: GeoBox, dst: GeoBox) -> tuple[int, int] | None:
    """(row, col) of ``dst``'s origin in ``src`` pixels when the grids share CRS, pixel size
    and alignment; else None."""
    if src.crs != dst.crs:
        return None
    a, b = src.transform, dst.transform
    if not (math.isclose(a.a, b.a, rel_tol=1e-9) and math.isclose(a.e, b.e, rel_tol=1e-9)):
        return None
    col, row = ~a @ (b.c, b.f)
    rc, rr = round(col), round(row)
    if abs(col - rc) > _ALIGN_EPS or abs(row - rr) > _ALIGN_EPS:
        return None
    return int(rr), int(rc)


def _same_crs_pixels(info: RasterInfo, grid: GeoBox, window: Window
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Source (row, col) of the pixel centres of ``window`` of ``grid`` in the same CRS
    (rows (H, 1), cols (1, W), unfloored): each axis on its own, from global pixel indices."""
    s, t = info.geobox.transform, grid.transform
    ys = t.f + (np.arange(window.row_off, window.row_end) + 0.5) * t.e
    xs = t.c + (np.arange(window.col_off, window.col_end) + 0.5) * t.a
    return ((ys - s.f) / s.e)[:, None], ((xs - s.c) / s.a)[None, :]


_local = threading.local()


def _transformer(src: CRS, dst: CRS) -> Transformer:
    """A cached ``dst`` → ``src`` transformer (one per thread: pyproj objects are not shared)."""
    cache: dict[tuple[CRS, CRS], Transformer] = _local.__dict__.setdefault("cache", {})
    key = (src, dst)
    if key not in cache:
        cache[key] = Transformer.from_crs(dst, src, always_xy=True)
    return cache[key]


def _anchored(start: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anchor indices (global, every STEP) around pixels ``start..start+n-1``; per pixel the
    anchor position below it and the fraction of the way to the next one."""
    first = (start // STEP) * STEP
    last = ((start + n - 1) // STEP + 1) * STEP
    anchors = np.arange(first, last + 1, STEP)
    offset = np.arange(start, start + n) - first
    return anchors, offset // STEP, (offset % STEP) / STEP


def _source_pixels(info: RasterInfo, grid: GeoBox, window: Window
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Source (row, col) of each pixel centre of ``window`` of ``grid`` (float, unfloored)."""
    ar, ir, fr = _anchored(window.row_off, window.height)
    ac, ic, fc = _anchored(window.col_off, window.width)
    t = grid.transform
    xs, ys = t.c + (ac + 0.5) * t.a, t.f + (ar + 0.5) * t.e
    gx, gy = np.meshgrid(xs, ys)
    sx, sy = _transformer(info.geobox.crs, grid.crs).transform(gx, gy)
    inv = ~info.geobox.transform
    cols = inv.a * sx + inv.b * sy + inv.c
    rows = inv.d * sx + inv.e * sy + inv.f

    def lerp(a: np.ndarray) -> np.ndarray:
        """Bilinear, separably: along columns on the anchor rows, then along rows."""
        on_rows = a[:, ic] * (1 - fc) + a[:, ic + 1] * fc  # (anchor rows, W)
        f = fr[:, None]
        out: np.ndarray = on_rows[ir] * (1 - f) + on_rows[ir + 1] * f
        return out

    return lerp(rows), lerp(cols)


def _gather(info: RasterInfo, bands: tuple[int, ...], fr: np.ndarray, fc: np.ndarray,
            fill: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``info`` at source positions ``(fr, fc)`` (broadcast to (H, W); NaN: none),
    from one window read covering those inside the raster."""
    h, w = np.broadcast_shapes(fr.shape, fc.shape)
    sh, sw = info.geobox.shape
    with np.errstate(invalid="ignore"):
        rows, cols = np.floor(fr + _EDGE_EPS), np.floor(fc + _EDGE_EPS)
        hit = np.broadcast_to((rows >= 0) & (rows < sh), (h, w)) & (cols >= 0) & (cols < sw)
    if not hit.any():  # NaN/inf compare False: never a hit
        return np.full((len(bands), h, w), fill, dtype=np.float32), np.zeros((h, w), bool)
    rows_hit = np.broadcast_to(rows, (h, w))[hit]
    cols_hit = np.broadcast_to(cols, (h, w))[hit]
    r0, c0 = int(rows_hit.min()), int(cols_hit.min())
    win = Window(r0, c0, int(rows_hit.max()) - r0 + 1, int(cols_hit.max()) - c0 + 1)
    data, valid = read_window(info, win, bands, fill)
    # one flat index per output pixel (0 where no source pixel: masked out below)
    with np.errstate(invalid="ignore"):
        flat = np.where(hit, (rows - r0) * win.width + (cols - c0), 0).astype(np.intp)
    out = np.take(data.reshape(len(bands), -1), flat, axis=1)
    ok = np.take(valid.ravel(), flat) & hit
    if not hit.all():
        out[:, ~hit] = np.float32(fill)
    return out, ok


def read_onto(info: RasterInfo, bands: tuple[int, ...], grid: GeoBox, window: Window,
              fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``bands`` (1-based) of ``info`` over ``window`` of the grid ``grid`` (nearest):
    ``(data float32 (C, H, W), valid bool (H, W))``; reads only the source pixels needed."""
    shift = _aligned_shift(info.geobox, grid[window])
    if shift is not None:
        return read_window(info, Window(shift[0], shift[1], window.height, window.width),
                           bands, fill)
    if info.geobox.crs == grid.crs:
        fr, fc = _same_crs_pixels(info, grid, window)
    else:
        fr, fc = _source_pixels(info, grid, window)
    return _gather(info, bands, fr, fc, fill)
