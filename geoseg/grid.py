"""Georeferenced grids, pixel windows and world bounds as immutable value types.

Modelled on odc-geo's GeoBox: a grid is (shape, affine, CRS); slicing a grid by a window returns
the sub-grid, so pixels and georeferencing cannot drift apart. Pixel windows (:class:`Window`) and
world bounds (:class:`Bounds`) are distinct types. Shapes are ``(height, width)`` (y, x).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from affine import Affine
from pyproj import CRS

from geoseg.errors import CRSError, InputError


def normalize_crs(value: Any) -> CRS:
    """Turn any CRS-like input (``CRS``, ``"EPSG:32633"``, WKT, EPSG int, rasterio CRS) into a
    ``pyproj.CRS``; raise :class:`CRSError` with advice when it cannot be understood."""
    if value is None:
        raise CRSError("no CRS given: pass one such as 'EPSG:32633' (or fix the raster's metadata)")
    if isinstance(value, CRS):
        return value
    try:
        if hasattr(value, "to_wkt"):  # rasterio.crs.CRS
            return CRS.from_wkt(value.to_wkt())
        return CRS.from_user_input(value)
    except Exception as exc:  # pyproj raises its own CRSError subclasses
        raise CRSError(f"cannot understand CRS {value!r}: give an EPSG code or WKT") from exc


@dataclass(frozen=True, slots=True)
class Window:
    """A rectangle of pixels: ``row_off``/``col_off`` may be negative (boundless reads)."""

    row_off: int
    col_off: int
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.height < 0 or self.width < 0:
            raise InputError(f"window size must be non-negative, got {self.height}x{self.width}")

    @property
    def row_end(self) -> int:
        return self.row_off + self.height

    @property
    def col_end(self) -> int:
        return self.col_off + self.width

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def size(self) -> int:
        return self.height * self.width

    def slices(self) -> tuple[slice, slice]:
        """Numpy slices ``(rows, cols)``; only meaningful for non-negative offsets."""
        return (slice(self.row_off, self.row_end), slice(self.col_off, self.col_end))

    def pad(self, halo: int) -> Window:
        """This window grown by ``halo`` pixels on every side."""
        return Window(self.row_off - halo, self.col_off - halo, self.height + 2 * halo,
                      self.width + 2 * halo)

    def intersect(self, other: Window) -> Window:
        """Overlap of two windows (empty window when they do not overlap)."""
        r0, c0 = max(self.row_off, other.row_off), max(self.col_off, other.col_off)
        r1, c1 = min(self.row_end, other.row_end), min(self.col_end, other.col_end)
        return Window(r0, c0, max(0, r1 - r0), max(0, c1 - c0))

    def relative_to(self, outer: Window) -> Window:
        """This window in the pixel coordinates of ``outer``."""
        return Window(self.row_off - outer.row_off, self.col_off - outer.col_off,
                      self.height, self.width)

    def contains(self, other: Window) -> bool:
        return (other.row_off >= self.row_off and other.col_off >= self.col_off
                and other.row_end <= self.row_end and other.col_end <= self.col_end)


@dataclass(frozen=True, slots=True)
class Bounds:
    """World rectangle ``(left, bottom, right, top)`` in ``crs``."""

    left: float
    bottom: float
    right: float
    top: float
    crs: CRS

    def __post_init__(self) -> None:
        if not (self.right > self.left and self.top > self.bottom):
            raise InputError(
                f"empty bounds {self.left, self.bottom, self.right, self.top}: "
                "give minx < maxx and miny < maxy")

    def to_crs(self, crs: CRS, densify: int = 21) -> Bounds:
        """Bounds of this rectangle in ``crs`` (edges densified so curved edges are covered)."""
        if crs == self.crs:
            return self
        from pyproj import Transformer

        t = Transformer.from_crs(self.crs, crs, always_xy=True)
        left, bottom, right, top = t.transform_bounds(
            self.left, self.bottom, self.right, self.top, densify_pts=densify)
        return Bounds(left, bottom, right, top, crs)


@dataclass(frozen=True, slots=True)
class GeoBox:
    """A georeferenced pixel grid: ``shape`` (height, width), north-up ``transform``, ``crs``."""

    shape: tuple[int, int]
    transform: Affine
    crs: CRS

    def __post_init__(self) -> None:
        h, w = self.shape
        if h <= 0 or w <= 0:
            raise InputError(f"grid shape must be positive, got {self.shape}")
        if self.transform.b != 0 or self.transform.d != 0:
            raise InputError("rotated or sheared rasters are not supported: warp them north-up "
                             "first (e.g. gdalwarp)")

    @property
    def height(self) -> int:
        return self.shape[0]

    @property
    def width(self) -> int:
        return self.shape[1]

    @property
    def resolution(self) -> tuple[float, float]:
        """Pixel size ``(x, y)``, both positive."""
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def window(self) -> Window:
        return Window(0, 0, self.height, self.width)

    @property
    def bounds(self) -> Bounds:
        t = self.transform
        x0, y0 = t.c, t.f
        x1, y1 = t @ (self.width, self.height)
        return Bounds(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), self.crs)

    def __getitem__(self, win: Window) -> GeoBox:
        """The sub-grid covered by ``win`` (may extend beyond this grid)."""
        return GeoBox(win.shape, self.transform @ Affine.translation(win.col_off, win.row_off),
                      self.crs)

    def window_of(self, bounds: Bounds) -> Window:
        """Smallest pixel window of this grid covering ``bounds`` (reprojected if needed),
        snapped outwards to whole pixels."""
        b = bounds.to_crs(self.crs)
        inv = ~self.transform
        xs, ys = [], []
        for x, y in ((b.left, b.bottom), (b.left, b.top), (b.right, b.bottom), (b.right, b.top)):
            c, r = inv @ (x, y)
            xs.append(c)
            ys.append(r)
        eps = 1e-6
        c0, c1 = math.floor(min(xs) + eps), math.ceil(max(xs) - eps)
        r0, r1 = math.floor(min(ys) + eps), math.ceil(max(ys) - eps)
        return Window(r0, c0, r1 - r0, c1 - c0)

    def sample(self, x: Any, y: Any, read: Callable[[Window], Any]) -> tuple[Any, Any]:
        """The pixel values under points (arrays ``x``, ``y`` in this grid's CRS): ``read``
        of the one window that bounds them; returns ``(values, inside)``, ``values`` for the
        points inside the grid only."""
        import numpy as np

        col, row = ~self.transform * (np.asarray(x, np.float64), np.asarray(y, np.float64))
        r, c = np.floor(row).astype(np.int64), np.floor(col).astype(np.int64)
        inside = (r >= 0) & (r < self.height) & (c >= 0) & (c < self.width)
        if not inside.any():
            return np.empty(0), inside
        r, c = r[inside], c[inside]
        win = Window(int(r.min()), int(c.min()), int(r.max() - r.min()) + 1,
                     int(c.max() - c.min()) + 1)
        block = np.asarray(read(win))
        return block[r - win.row_off, c - win.col_off], inside


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit of work: the output Zarr chunk at ``index`` (iy, ix) covering ``window``."""

    index: tuple[int, int]
    window: Window

    @property
    def id(self) -> str:
        return f"{self.index[0]}_{self.index[1]}"


@dataclass(frozen=True, slots=True)
class ChunkGrid:
    """Regular chunking of a grid of ``shape`` into ``chunk`` x ``chunk`` blocks (edges smaller)."""

    shape: tuple[int, int]
    chunk: int

    def __post_init__(self) -> None:
        if self.chunk <= 0:
            raise InputError(f"chunk size must be positive, got {self.chunk}")

    @property
    def counts(self) -> tuple[int, int]:
        return (math.ceil(self.shape[0] / self.chunk), math.ceil(self.shape[1] / self.chunk))

    def __len__(self) -> int:
        ny, nx = self.counts
        return ny * nx

    def get(self, iy: int, ix: int) -> Chunk:
        ny, nx = self.counts
        if not (0 <= iy < ny and 0 <= ix < nx):
            raise IndexError(f"chunk {iy},{ix} outside {ny}x{nx}")
        r0, c0 = iy * self.chunk, ix * self.chunk
        return Chunk((iy, ix), Window(r0, c0, min(self.chunk, self.shape[0] - r0),
                                      min(self.chunk, self.shape[1] - c0)))

    def __iter__(self) -> Iterator[Chunk]:
        ny, nx = self.counts
        for iy in range(ny):
            for ix in range(nx):
                yield self.get(iy, ix)

    def neighbours(self, index: tuple[int, int], reach: int = 1) -> list[tuple[int, int]]:
        """Indices of the chunks within ``reach`` rings around ``index`` (1: the up to 8
        around it)."""
        ny, nx = self.counts
        iy, ix = index
        return [(y, x) for y in range(max(0, iy - reach), min(ny, iy + reach + 1))
                for x in range(max(0, ix - reach), min(nx, ix + reach + 1)) if (y, x) != index]
