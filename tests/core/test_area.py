"""Area maths (geoseg.area): per-row geodesic pixel areas on geographic grids."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import CRS

from geoseg.area import (
    area_perimeter_m,
    ground_area_m2,
    ground_areas_m2,
    pixel_area_m2,
    row_pixel_areas_m2,
)
from geoseg.grid import GeoBox


def test_rows_of_a_geographic_grid_sum_to_its_geodesic_area() -> None:
    # 0.01° x 0.2° at 41° N
    crs = CRS.from_epsg(4326)
    grid = GeoBox((200, 10), Affine(0.001, 0, 6.6, 0, -0.001, 41.1), crs)
    rows = row_pixel_areas_m2(grid)
    whole = ground_area_m2(shapely.box(6.6, 40.9, 6.61, 41.1), crs)
    assert rows.sum() * grid.width == pytest.approx(whole, rel=1e-9)
    assert np.all(np.diff(rows) > 0)  # further south, larger pixels


def test_projected_areas_scale_by_the_axis_unit() -> None:
    feet = CRS.from_epsg(2264)  # NAD83 / North Carolina (ftUS)
    grid = GeoBox((4, 4), Affine(2.0, 0, 0, 0, -2.0, 0), feet)
    f = feet.axis_info[0].unit_conversion_factor
    assert pixel_area_m2(grid) == pytest.approx(4 * f * f)
    assert set(row_pixel_areas_m2(grid)) == {pixel_area_m2(grid)}
    sq = shapely.box(0, 0, 10, 10)
    assert area_perimeter_m(sq, feet) == pytest.approx((100 * f * f, 40 * f))
    assert ground_areas_m2(np.array([sq, sq]), feet) == pytest.approx([100 * f * f] * 2)


def test_which_crs_is_measured_on_the_ellipsoid() -> None:
    """Geographic CRSs and projections that distort areas beyond 1 % in their area of use;
    UTM, state planes, national grids and equal-area projections stay planar. A CRS read from
    a file (WKT without its area of use) is judged by its EPSG entry."""
    from rasterio.crs import CRS as RioCRS

    from geoseg.area import geodesic
    from geoseg.grid import normalize_crs

    assert [geodesic(CRS.from_epsg(c)) for c in (4326, 3857, 3395, 3031, 3413)] == [True] * 5
    assert [geodesic(CRS.from_epsg(c)) for c in (32633, 32733, 2263, 27700, 2154, 3035,
                                                 5070)] == [False] * 7
    from_file = normalize_crs(RioCRS.from_epsg(3857))
    assert from_file.area_of_use is None and geodesic(from_file)
    custom = CRS.from_proj4("+proj=tmerc +lon_0=11 +k=1 +x_0=0 +y_0=0 +ellps=GRS80 +units=m")
    assert not geodesic(custom)  # no area of use: as true to scale as it claims


def test_web_mercator_areas_are_ground_areas() -> None:
    """At 60° N a Web Mercator metre is half a ground metre: a 100 × 100 'm' square is
    ~2500 m² on the ground (it was reported as 10,000), pixels likewise, row by row."""
    from pyproj import Geod, Transformer

    crs = CRS.from_epsg(3857)
    x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(15.0, 60.0)
    sq = shapely.box(x, y, x + 100, y + 100)
    to_ll = Transformer.from_crs(3857, 4326, always_xy=True)
    ring = np.array(sq.exterior.coords)
    lon, lat = to_ll.transform(ring[:, 0], ring[:, 1])
    truth, _ = Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)
    area, perimeter = area_perimeter_m(sq, crs)
    assert area == pytest.approx(abs(truth), rel=1e-9)
    assert area == pytest.approx(2500, rel=0.01) and perimeter == pytest.approx(200, rel=0.01)
    assert ground_areas_m2(np.array([sq]), crs) == pytest.approx([area])
    grid = GeoBox((200, 200), Affine(0.5, 0, x, 0, -0.5, y + 100), crs)
    rows = row_pixel_areas_m2(grid)
    assert rows.sum() * grid.width == pytest.approx(area, rel=1e-4)
    assert np.all(np.diff(rows) > 0)  # further south (nearer the equator), larger pixels
    assert pixel_area_m2(grid) == pytest.approx(0.0625, rel=0.01)
