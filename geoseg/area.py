"""Ground areas that are true for projected and geographic CRSs alike."""

from __future__ import annotations

from pyproj import CRS, Geod
from shapely.geometry.base import BaseGeometry


def ground_area_m2(geom: BaseGeometry, crs: CRS) -> float:
    """Area in m²: geodesic on the CRS's ellipsoid for lat/lon, planar × unit² otherwise."""
    if crs.is_geographic:
        geod = Geod(ellps="WGS84") if crs.ellipsoid is None else Geod(
            a=crs.ellipsoid.semi_major_metre, rf=crs.ellipsoid.inverse_flattening or 0.0)
        return abs(float(geod.geometry_area_perimeter(geom)[0]))
    f = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return float(geom.area) * f * f
