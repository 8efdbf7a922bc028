"""Ground areas and lengths, true for projected and geographic CRSs alike: all of geoseg's area
maths lives here.

Projected CRSs whose scale is true within :data:`DISTORTION` over their area of use (UTM,
national grids, state planes, equal-area projections): planar area × (axis unit in metres)².
Geographic CRSs (x = lon, y = lat), and projected ones that distort areas more (Web Mercator:
×4 at 60° N; polar stereographic): geodesic on the CRS's own ellipsoid, the geometry taken to
longitude and latitude first; a pixel's area then depends on where it is, so per-pixel areas
are given per row.
"""

from __future__ import annotations

import functools

import numpy as np
import shapely
from pyproj import CRS, Geod, Proj, Transformer
from pyproj.exceptions import ProjError
from shapely.geometry.base import BaseGeometry

from geoseg.errors import CRSError
from geoseg.grid import GeoBox

#: A projected CRS whose areal scale departs from 1 by more than this anywhere in its area of
#: use is measured geodesically (UTM: 0.2 %, Lambert-93: 0.7 %; Web Mercator: up to ×135).
DISTORTION = 0.01


def _distorts(crs: CRS) -> bool:
    """Whether projected ``crs`` distorts areas by more than :data:`DISTORTION` somewhere in
    its area of use (a CRS without one, even through its EPSG code, is taken as true to
    scale). Cached by the CRS's text: hashing a pyproj CRS costs ~15 µs, and this is asked
    for every polygon measured."""
    return bool(crs.is_projected) and _distorts_srs(crs.srs)


@functools.lru_cache(maxsize=32)
def _distorts_srs(srs: str) -> bool:
    crs = CRS.from_user_input(srs)
    aou = crs.area_of_use
    if aou is None:  # a CRS read from a file's WKT: its EPSG entry's, where it has one
        code = crs.to_epsg()
        aou = CRS.from_epsg(code).area_of_use if code is not None else None
    if aou is None:
        return False
    east = aou.east if aou.east >= aou.west else aou.east + 360.0  # across the antimeridian
    lon, lat = np.meshgrid(np.linspace(aou.west, east, 7),
                           np.linspace(max(aou.south, -89.0), min(aou.north, 89.0), 7))
    lon = (lon + 180.0) % 360.0 - 180.0
    try:
        scale = np.asarray(_proj(crs).get_factors(lon.ravel(), lat.ravel(),
                                                  errcheck=False).areal_scale, np.float64)
    except (ProjError, ValueError):  # a projection PROJ gives no factors for: as before
        return False
    scale = scale[np.isfinite(scale) & (scale > 0)]
    return bool(scale.size) and bool(np.any(np.abs(scale - 1.0) > DISTORTION))


def geodesic(crs: CRS) -> bool:
    """Whether areas in ``crs`` are measured on the ellipsoid (geographic, or a projection that
    distorts areas: see :data:`DISTORTION`) rather than in the plane."""
    return bool(crs.is_geographic) or _distorts(crs)


@functools.lru_cache(maxsize=32)
def _proj(crs: CRS) -> Proj:
    return Proj(crs)  # (~1 ms to build: once per CRS, not once per building)


@functools.lru_cache(maxsize=32)
def _to_lonlat(crs: CRS) -> Transformer:
    return Transformer.from_crs(crs, crs.geodetic_crs or CRS.from_epsg(4326), always_xy=True)


def _lonlat(geom: BaseGeometry, crs: CRS) -> BaseGeometry:
    """``geom`` (in projected ``crs``) in longitude and latitude of the CRS's own datum."""
    tr = _to_lonlat(crs)

    def move(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, move)


def local_scale(crs: CRS, x: float, y: float) -> float:
    """Linear scale of ``crs`` at point (x, y) of it: projected metres per ground metre
    (1 where :func:`geodesic` is false; the square root of the areal scale elsewhere)."""
    if crs.is_geographic or not _distorts(crs):
        return 1.0
    lon, lat = _to_lonlat(crs).transform(x, y)
    areal = float(_proj(crs).get_factors(lon, lat, errcheck=False).areal_scale)
    return float(np.sqrt(areal)) if np.isfinite(areal) and areal > 0 else 1.0


def unit_m(crs: CRS) -> float:
    """Metres per unit of the CRS's first axis (1 for metres, 0.3048 for feet)."""
    return crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0


def _geod(crs: CRS) -> Geod:
    geod = crs.get_geod()
    if geod is None:
        raise CRSError(f"{crs.name} has no ellipsoid: cannot measure geodesic areas")
    return geod


def ground_area_m2(geom: BaseGeometry, crs: CRS) -> float:
    """Area of ``geom`` in m²."""
    return area_perimeter_m(geom, crs)[0]


def area_perimeter_m(geom: BaseGeometry, crs: CRS) -> tuple[float, float]:
    """``(area m², perimeter m)`` of ``geom``."""
    if geodesic(crs):
        lonlat = geom if crs.is_geographic else _lonlat(geom, crs)
        area, perimeter = _geod(crs).geometry_area_perimeter(lonlat)
        return abs(float(area)), float(perimeter)
    f = unit_m(crs)
    return float(geom.area) * f * f, float(geom.length) * f


def ground_areas_m2(geoms: np.ndarray, crs: CRS) -> np.ndarray:
    """Areas in m² of an array of geometries (vectorised in the plane)."""
    if not geodesic(crs):
        f = unit_m(crs)
        return np.asarray(shapely.area(geoms), np.float64) * f * f
    return np.array([ground_area_m2(g, crs) for g in geoms], np.float64)


def pixel_area_m2(grid: GeoBox) -> float:
    """Area of one pixel in m²; where :func:`geodesic`, the pixel at the grid's centre (for
    exact sums over rows use :func:`row_pixel_areas_m2`)."""
    if not geodesic(grid.crs):
        rx, ry = grid.resolution
        f = unit_m(grid.crs)
        return rx * ry * f * f
    row = grid.height // 2
    return float(row_pixel_areas_m2(grid, row, row + 1)[0])


def row_pixel_areas_m2(grid: GeoBox, start: int = 0, stop: int | None = None,
                       col: int | None = None) -> np.ndarray:
    """Area in m² of one pixel of each row ``start..stop`` of the grid: constant in the plane;
    where :func:`geodesic`, the pixel at column ``col`` (default: the grid's centre column) of
    each row, on the ellipsoid (for a geographic or Mercator grid, any column: the same)."""
    stop = grid.height if stop is None else stop
    n = max(stop - start, 0)
    if not geodesic(grid.crs):
        return np.full(n, pixel_area_m2(grid), np.float64)
    t = grid.transform
    c = grid.width // 2 if col is None else col
    x0, x1 = sorted((t.c + t.a * c, t.c + t.a * (c + 1)))
    out = np.empty(n, np.float64)
    for i, r in enumerate(range(start, stop)):
        y0, y1 = sorted((t.f + t.e * r, t.f + t.e * (r + 1)))
        out[i] = ground_area_m2(shapely.box(x0, y0, x1, y1), grid.crs)
    return out


def pixel_areas_by_row(grid: GeoBox) -> np.ndarray | float:
    """One pixel's area in m²: a constant in the plane, one value per row where
    :func:`geodesic` (broadcasts over a (rows, cols) block either way)."""
    if not geodesic(grid.crs):
        return pixel_area_m2(grid)
    return row_pixel_areas_m2(grid)
