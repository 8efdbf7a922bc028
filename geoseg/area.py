"""Ground areas and lengths, true for projected and geographic CRSs alike: all of geoseg's area
maths lives here.

Projected CRSs: planar area × (axis unit in metres)². Geographic CRSs (x = lon, y = lat):
geodesic on the CRS's own ellipsoid; a pixel's area then depends on its row (latitude), so
per-pixel areas are given per row.
"""

from __future__ import annotations

import numpy as np
import shapely
from pyproj import CRS, Geod
from shapely.geometry.base import BaseGeometry

from geoseg.errors import CRSError
from geoseg.grid import GeoBox


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
    if crs.is_geographic:
        area, perimeter = _geod(crs).geometry_area_perimeter(geom)
        return abs(float(area)), float(perimeter)
    f = unit_m(crs)
    return float(geom.area) * f * f, float(geom.length) * f


def ground_areas_m2(geoms: np.ndarray, crs: CRS) -> np.ndarray:
    """Areas in m² of an array of geometries (vectorised for projected CRSs)."""
    if not crs.is_geographic:
        f = unit_m(crs)
        return np.asarray(shapely.area(geoms), np.float64) * f * f
    return np.array([ground_area_m2(g, crs) for g in geoms], np.float64)


def pixel_area_m2(grid: GeoBox) -> float:
    """Area of one pixel in m²; for a geographic grid, the pixel at the grid's centre row (for
    exact sums over rows use :func:`row_pixel_areas_m2`)."""
    if not grid.crs.is_geographic:
        rx, ry = grid.resolution
        f = unit_m(grid.crs)
        return rx * ry * f * f
    row = grid.height // 2
    return float(row_pixel_areas_m2(grid, row, row + 1)[0])


def row_pixel_areas_m2(grid: GeoBox, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Area in m² of one pixel of each row ``start..stop`` of the grid (constant for projected
    grids; geodesic per latitude for geographic ones)."""
    stop = grid.height if stop is None else stop
    n = max(stop - start, 0)
    if not grid.crs.is_geographic:
        return np.full(n, pixel_area_m2(grid), np.float64)
    t = grid.transform
    x0, x1 = sorted((t.c, t.c + t.a))
    out = np.empty(n, np.float64)
    for i, r in enumerate(range(start, stop)):
        y0, y1 = sorted((t.f + t.e * r, t.f + t.e * (r + 1)))
        out[i] = ground_area_m2(shapely.box(x0, y0, x1, y1), grid.crs)
    return out


def pixel_areas_by_row(grid: GeoBox) -> np.ndarray | float:
    """One pixel's area in m²: a constant for projected grids, one value per row for geographic
    grids (broadcasts over a (rows, cols) block either way)."""
    if not grid.crs.is_geographic:
        return pixel_area_m2(grid)
    return row_pixel_areas_m2(grid)
