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
