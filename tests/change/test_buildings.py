"""Building changes: unchanged, modified (extended, merged annex), new, demolished."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import CRS
from shapely.geometry.base import BaseGeometry

from geoseg.change import compare_runs
from geoseg.change.building_change import classify
from tests.change.conftest import SHAPE, box_px, make_run, shifted

# a: ids 1..6; b: ids 11..16 (a model numbers its own features)
A_BUILDINGS = [
    (1, box_px(5, 5, 15, 20)),  # unchanged
    (2, box_px(5, 30, 15, 40)),  # demolished
    (3, box_px(30, 5, 40, 20)),  # extended by an annex in b
    (4, box_px(30, 30, 42, 45)),  # slightly shifted in b (same building)
    (5, box_px(60, 5, 75, 25)),  # merged in b with its separate annex 6
    (6, box_px(60, 26, 68, 32)),
]
B_BUILDINGS = [
    (11, box_px(5, 5, 15, 20)),
    (13, shapely.union(box_px(30, 5, 40, 20), box_px(32, 20, 38, 26))),
    (14, box_px(30.5, 30.5, 42.5, 45.5)),
    (15, box_px(60, 5, 75, 32)),
    (16, box_px(60, 60, 70, 72)),  # new
]


def _frame(out: Path) -> dict[tuple[int | None, int | None], str]:
    df = pyogrio.read_dataframe(out / "change.gpkg", layer="building_changes")
    return {(None if a is None or a != a else int(a), None if b is None or b != b else int(b)): c
            for a, b, c in zip(df["id_a"], df["id_b"], df["change"], strict=True)}


def test_building_changes_are_classified(tmp_path: Path) -> None:
    cls = np.zeros(SHAPE, np.uint8)
    a = make_run(tmp_path / "a", cls, buildings=A_BUILDINGS)
    b = make_run(tmp_path / "b", cls, buildings=B_BUILDINGS, date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out")
    got = _frame(res.output)
    assert got == {(1, 11): "unchanged", (4, 14): "unchanged", (3, 13): "modified",
                   (5, 15): "modified", (6, 15): "modified", (2, None): "demolished",
                   (None, 16): "new"}
    assert res.building_counts == {"unchanged": 2, "modified": 3, "new": 1, "demolished": 1}
    df = pyogrio.read_dataframe(res.output / "change.gpkg", layer="building_changes")
    assert CRS.from_user_input(df.crs) == CRS.from_epsg(32633)
    assert {"change", "id_a", "id_b", "date_a", "date_b", "area_a_m2", "area_b_m2", "iou",
            "geometry"} <= set(df.columns)
    ext = df[(df["id_a"] == "3")].iloc[0]   # ids are text (geoseg's are "b{row}_{col}")
    assert ext["area_a_m2"] == pytest.approx(10 * 15 * 0.25)
    assert ext["area_b_m2"] == pytest.approx((10 * 15 + 6 * 6) * 0.25)
    assert ext["date_a"] == "2019-06-01" and ext["date_b"] == "2024-06-01"
    assert shapely.equals(ext.geometry, B_BUILDINGS[1][1])
    dem = df[df["change"] == "demolished"].iloc[0]
    assert shapely.equals(dem.geometry, A_BUILDINGS[1][1])  # A's geometry for demolished
    assert set(df.loc[df["id_b"] == "15", "match"]) == {"merged"}


def test_identical_buildings_all_unchanged(tmp_path: Path) -> None:
    cls = np.zeros(SHAPE, np.uint8)
    a = make_run(tmp_path / "a", cls, buildings=A_BUILDINGS)
    b = make_run(tmp_path / "b", cls, buildings=A_BUILDINGS, date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out")
    assert res.building_counts == {"unchanged": 6, "modified": 0, "new": 0, "demolished": 0}
    df = pyogrio.read_dataframe(res.output / "change.gpkg", layer="building_changes")
    assert (df["iou"] == 1.0).all()


def test_buildings_outside_the_overlap_are_not_changes(tmp_path: Path) -> None:
    cls = np.zeros(SHAPE, np.uint8)
    # b covers only columns >= 28 of a: buildings 1, 3 and 5 lie outside it
    a = make_run(tmp_path / "a", cls, buildings=A_BUILDINGS)
    b = make_run(tmp_path / "b", np.zeros((96, 100), np.uint8), transform=shifted(28, 0),
                 buildings=[(14, box_px(30, 30, 42, 45))], date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out")
    assert res.summary["buildings"]["outside_overlap"] == {"a": 3, "b": 0}
    assert _frame(res.output) == {(4, 14): "unchanged", (2, None): "demolished",
                                  (6, None): "demolished"}


def test_split_building_is_modified() -> None:
    import geopandas as gpd

    crs = CRS.from_epsg(32633)
    a = gpd.GeoDataFrame({"id": [1]}, geometry=[shapely.box(0, 0, 20, 10)], crs=crs)
    b = gpd.GeoDataFrame({"id": [7, 8]}, geometry=[shapely.box(0, 0, 12, 10),
                                                   shapely.box(12.5, 0, 20, 10)], crs=crs)
    df = classify(a, b, crs, iou_modified=0.8, area_tolerance=0.1, date_a="", date_b="")
    assert list(df["change"]) == ["modified", "modified"]
    assert set(df["match"]) == {"split"} and set(df["id_b"]) == {"7", "8"}


def test_pipeline_ids_are_kept_as_text() -> None:
    import geopandas as gpd

    crs = CRS.from_epsg(32633)
    a = gpd.GeoDataFrame({"id": ["b10_200", "b9_30"]},
                         geometry=[shapely.box(0, 0, 10, 10), shapely.box(50, 0, 60, 10)],
                         crs=crs)
    b = gpd.GeoDataFrame({"id": ["b10_201"]}, geometry=[shapely.box(0, 0, 10, 10)], crs=crs)
    df = classify(a, b, crs, iou_modified=0.8, area_tolerance=0.1, date_a="", date_b="")
    assert list(zip(df["change"], df["id_a"], df["id_b"].fillna("-"), strict=True)) == [
        ("unchanged", "b10_200", "b10_201"), ("demolished", "b9_30", "-")]


def test_touching_neighbour_is_not_a_match() -> None:
    import geopandas as gpd

    crs = CRS.from_epsg(32633)
    a = gpd.GeoDataFrame({"id": [1]}, geometry=[shapely.box(0, 0, 10, 10)], crs=crs)
    b = gpd.GeoDataFrame({"id": [2]}, geometry=[shapely.box(9.8, 0, 20, 10)], crs=crs)
    df = classify(a, b, crs, iou_modified=0.8, area_tolerance=0.1, date_a="", date_b="")
    assert sorted(df["change"]) == ["demolished", "new"]


def _records(path: Path) -> list[tuple[str, str, str, float, str]]:
    df = pyogrio.read_dataframe(path, layer="building_changes")
    return sorted((c, str(a), str(b), round(float(i), 9) if i == i else -1.0, g.wkb_hex)
                  for c, a, b, i, g in zip(df["change"], df["id_a"], df["id_b"], df["iou"],
                                           df.geometry, strict=True))


def _compare_tiled(tmp_path: Path, a_b: list[tuple[int, BaseGeometry]],
                   b_b: list[tuple[int, BaseGeometry]], tiles: tuple[int, ...]) -> None:
    """The same records, counts and outside counts whatever the tile size."""
    from geoseg.change.building_change import compare_buildings
    from geoseg.change.runs import open_run

    cls = np.zeros(SHAPE, np.uint8)
    ra = open_run(make_run(tmp_path / "a", cls, buildings=a_b), "a")
    rb = open_run(make_run(tmp_path / "b", cls, buildings=b_b, date="2024-06-01"), "b")
    results = []
    for t in tiles:
        out = tmp_path / f"t{t}.gpkg"
        res = compare_buildings(ra, rb, out, iou_modified=0.8, area_tolerance=0.1, tile_px=t,
                                margin_px=2)  # small: groups past it widen the margin
        assert res is not None
        results.append((_records(out), res.counts, res.outside_overlap))
    for other in results[1:]:
        assert other == results[0]
    recs, counts, _ = results[0]
    assert sum(counts.values()) == len(recs)
    # every footprint of each date appears in exactly one record (or one per relation)
    assert {r[1] for r in recs} - {"None", "<NA>", "nan"} == {str(i) for i, _ in a_b}
    assert {r[2] for r in recs} - {"None", "<NA>", "nan"} == {str(i) for i, _ in b_b}


def test_building_changes_do_not_depend_on_the_tiles(tmp_path: Path) -> None:
    # the hand-made cases, plus a long building across many small tiles (margin widening)
    a_b = [*A_BUILDINGS, (7, box_px(80, 2, 90, 120))]
    b_b = [*B_BUILDINGS, (17, box_px(80, 2, 90, 119)), (18, box_px(81, 60, 89, 70))]
    _compare_tiled(tmp_path, a_b, b_b, (2048, 40, 11))


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.floats(0, 85), st.floats(0, 115), st.floats(3, 20),
                          st.floats(3, 25), st.booleans(), st.floats(-2, 2)),
                min_size=1, max_size=14))
def test_random_layouts_do_not_depend_on_the_tiles(
        tmp_path_factory: pytest.TempPathFactory,
        boxes: list[tuple[float, float, float, float, bool, float]]) -> None:
    a_b: list[tuple[int, BaseGeometry]] = []
    b_b: list[tuple[int, BaseGeometry]] = []
    for n, (r, c, h, w, in_a, d) in enumerate(boxes):
        geom = box_px(r, c, min(r + h, 96), min(c + w, 128))
        (a_b if in_a else b_b).append((n + 1, geom))
        if n % 3 == 0:  # the same building at the other date, moved or grown a little
            b_b.append((100 + n, box_px(r + d, c, min(r + h + abs(d), 96), min(c + w, 128))))
    _compare_tiled(tmp_path_factory.mktemp("tiles"), a_b, b_b, (2048, 40, 21))
