"""A chunk's interior regions as columns (``FeatureTable``): the same features, attributes and
record columns as one :class:`Feature` per region, in planar and geographic CRSs, through
pickling (Ray) and through the GeoPackage writer's column path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import CRS

from geoseg.grid import ChunkGrid
from geoseg.vectorize.features import Feature, FeatureTable
from geoseg.vectorize.landcover import _feature, landcover_parts

UTM = (CRS.from_epsg(32633), Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0))
GEO = (CRS.from_epsg(4326), Affine(0.001, 0.0, 13.0, 0.0, -0.001, 52.0))


@pytest.mark.parametrize("crs_transform", [UTM, GEO, (None, UTM[1])], ids=["utm", "wgs84", "none"])
@pytest.mark.parametrize("with_confidence", [True, False])
def test_table_rows_are_the_features_one_by_one(crs_transform: tuple[CRS | None, Affine],
                                                with_confidence: bool) -> None:
    crs, transform = crs_transform
    rng = np.random.default_rng(5)
    classes = rng.integers(0, 3, (48, 48)).astype(np.uint8)
    classes[10:20, 10:20] = 255  # nodata: no polygon there
    confidence = rng.integers(0, 256, classes.shape).astype(np.uint8) if with_confidence else None
    grid = ChunkGrid(classes.shape, 48)
    chunk = grid.get(0, 0)
    parts = landcover_parts(classes, confidence, chunk, transform, fill=255, crs=crs)
    table = parts.interior
    assert isinstance(table, FeatureTable) and len(table) > 20
    # the same feature, one by one, from the polygon in pixel space and its first pixel
    inv = ~transform
    for f in table:
        assert isinstance(f, Feature) and f.id is not None
        r, c = map(int, f.id[2:].split("_"))
        pixel_poly = shapely.transform(f.geometry, lambda xy: np.column_stack(
            [inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c, inv.d * xy[:, 0] + inv.e * xy[:, 1]
             + inv.f]))
        pixel_poly = shapely.set_precision(pixel_poly, 1.0)  # exact integer corners
        csum = None if f.confidence is None else f.confidence * f.pixels
        one = _feature(pixel_poly, f.class_id, f.pixels, csum, (r, c), transform, crs)
        assert shapely.equals_exact(one.geometry, f.geometry, tolerance=1e-9)
        assert (one.class_id, one.pixels, one.id) == (f.class_id, f.pixels, f.id)
        for got, want in ((f.confidence, one.confidence), (f.area_m2, one.area_m2),
                          (f.perimeter_m, one.perimeter_m)):
            assert (got is None) == (want is None)
            if got is not None:
                assert got == pytest.approx(want, rel=1e-9)
    # columns are what the records say, in the records' order
    cols = table.columns()
    for i, f in enumerate(table):
        rec = f.to_record()
        assert list(cols) == list(rec)
        for key, value in rec.items():
            if key == "geometry":
                assert cols[key][i] is table.geometry[i]
            elif value is None:
                assert cols[key][i] is None
            else:
                assert cols[key][i] == value
    # a table crosses process boundaries (Ray) as it is
    again = pickle.loads(pickle.dumps(parts))
    assert [f.to_record()["id"] for f in again.interior] == [f.id for f in table]
    assert table[1:3] == [table[1], table[2]]


def test_a_table_pickles_as_arrays_and_comes_back_bit_for_bit() -> None:
    """Holes, an empty polygon, no confidence: the same coordinates, columns and str ids; a
    table holding another geometry type falls back to pickling the objects."""
    from shapely.geometry import MultiPolygon, Polygon

    square = Polygon([(0, 0), (4, 0), (4, 4), (0, 4)], [[(1, 1), (1, 2), (2, 2), (2, 1)]])
    geoms = np.array([square, Polygon(), Polygon([(0.1, 0.2), (3.3, 0.2), (0.1, 7.7)])],
                     dtype=object)
    table = FeatureTable(geoms, np.array([1, 2, 3]), np.array([16, 0, 5]), None,
                         np.array(["lc0_0", "lc1_1", "lc2_10"], dtype=object),
                         np.array([1.5, 0.0, 2.5]), None)
    again = pickle.loads(pickle.dumps(table))
    assert list(shapely.to_wkb(again.geometry)) == list(shapely.to_wkb(table.geometry))
    assert again.id.dtype == object and all(type(i) is str for i in again.id)
    assert list(again.id) == list(table.id) and again.confidence is None
    assert np.array_equal(again.area_m2, table.area_m2) and again.perimeter_m is None
    assert list(again) == list(table)
    mixed = FeatureTable(np.array([square, MultiPolygon([square])], dtype=object),
                         np.array([1, 1]), np.array([1, 1]), None,
                         np.array(["a", "b"], dtype=object))
    back = pickle.loads(pickle.dumps(mixed))
    assert back.geometry[1].equals(mixed.geometry[1]) and list(back.id) == ["a", "b"]
