"""Building changes: unchanged, modified (extended, merged annex), new, demolished, and the
evidence rule (footprint confidence and pixels) that turns unsupported ones into uncertain."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely
import zarr
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import CRS
from shapely.geometry.base import BaseGeometry

from geoseg.change import compare_runs
from geoseg.change import defaults as D
from geoseg.change.building_change import (
    GEOMETRY_ONLY,
    NO_EVIDENCE,
    Evidence,
    EvidenceRule,
    classify,
)
from tests.change.conftest import SHAPE, T_A, box_px, make_run, shifted

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


def _painted(items: list[tuple[int, BaseGeometry]], transform: Affine = T_A,
             shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Land cover that agrees with the footprints: building (1) under them, else vegetation."""
    from rasterio.features import rasterize

    cls = np.full(shape, 3, np.uint8)
    if items:
        cls[rasterize([g for _, g in items], out_shape=shape, transform=transform) > 0] = 1
    return cls


def test_building_changes_are_classified(tmp_path: Path) -> None:
    # the land cover agrees with the footprints, so the pixels back every geometric change
    a = make_run(tmp_path / "a", _painted(A_BUILDINGS), buildings=A_BUILDINGS)
    b = make_run(tmp_path / "b", _painted(B_BUILDINGS), buildings=B_BUILDINGS,
                 date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out")
    got = _frame(res.output)
    assert got == {(1, 11): "unchanged", (4, 14): "unchanged", (3, 13): "modified",
                   (5, 15): "modified", (6, 15): "modified", (2, None): "demolished",
                   (None, 16): "new"}
    assert res.building_counts == {"unchanged": 2, "modified": 3, "new": 1, "demolished": 1,
                                   "uncertain": 0}
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
    assert res.building_counts == {"unchanged": 6, "modified": 0, "new": 0, "demolished": 0,
                                   "uncertain": 0}
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


def test_split_matching_the_old_footprint_is_unchanged() -> None:
    crs = CRS.from_epsg(32633)
    a = gpd.GeoDataFrame({"id": [1]}, geometry=[shapely.box(0, 0, 20, 10)], crs=crs)
    b = gpd.GeoDataFrame({"id": [7, 8]}, geometry=[shapely.box(0, 0, 12, 10),
                                                   shapely.box(12.5, 0, 20, 10)], crs=crs)
    df = classify(a, b, crs, iou_modified=0.8, area_tolerance=0.1, date_a="", date_b="")
    # the two parts cover the old footprint (unions' IoU 0.975): another segmentation
    assert list(df["change"]) == ["unchanged", "unchanged"]
    assert set(df["candidate"]) == {"modified"}
    assert set(df["match"]) == {"split"} and set(df["id_b"]) == {"7", "8"}


def test_split_that_lost_area_is_modified() -> None:
    crs = CRS.from_epsg(32633)
    a = gpd.GeoDataFrame({"id": [1]}, geometry=[shapely.box(0, 0, 20, 10)], crs=crs)
    b = gpd.GeoDataFrame({"id": [7, 8]}, geometry=[shapely.box(0, 0, 12, 10),
                                                   shapely.box(14, 0, 17, 10)], crs=crs)
    df = classify(a, b, crs, iou_modified=0.8, area_tolerance=0.1, date_a="", date_b="")
    assert list(df["change"]) == ["modified", "modified"]  # unions' IoU 0.75


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
                   b_b: list[tuple[int, BaseGeometry]], tiles: tuple[int, ...]
                   ) -> set[str]:
    """The same records, counts and outside counts whatever the tile size (with the evidence
    rule: land cover and building pixels painted from the footprints, varied confidences)."""
    from geoseg.change.align import decide_grid
    from geoseg.change.building_change import PixelEvidence, compare_buildings
    from geoseg.change.runs import open_run

    def conf(i: int) -> float:
        return 0.8 + 0.04 * (i % 5)  # 0.8 .. 0.96: some below the default 0.88

    pa = _evidence_run(tmp_path / "a", [(i, g, conf(i)) for i, g in a_b], "2019-06-01")
    pb = _evidence_run(tmp_path / "b", [(i, g, conf(i)) for i, g in b_b], "2024-06-01")
    ra, rb = open_run(pa, "a"), open_run(pb, "b")
    store = compare_runs(pa, pb, tmp_path / "change").store  # the change mask
    evidence = PixelEvidence(store, ra, rb, decide_grid(ra, rb, "a"))
    results = []
    for t in tiles:
        out = tmp_path / f"t{t}.gpkg"
        res = compare_buildings(ra, rb, out, iou_modified=0.8, area_tolerance=0.1, tile_px=t,
                                margin_px=2,  # small: groups past it widen the margin
                                rule=RULE, evidence=evidence)
        assert res is not None
        results.append((_records(out), res.counts, res.outside_overlap))
    for other in results[1:]:
        assert other == results[0]
    recs, counts, _ = results[0]
    assert sum(counts.values()) == len(recs)
    # every footprint of each date appears in exactly one record (or one per relation)
    assert {r[1] for r in recs} - {"None", "<NA>", "nan"} == {str(i) for i, _ in a_b}
    assert {r[2] for r in recs} - {"None", "<NA>", "nan"} == {str(i) for i, _ in b_b}
    return {r[0] for r in recs}


def test_building_changes_do_not_depend_on_the_tiles(tmp_path: Path) -> None:
    # the hand-made cases, plus a long building across many small tiles (margin widening)
    a_b = [*A_BUILDINGS, (7, box_px(80, 2, 90, 120))]
    b_b = [*B_BUILDINGS, (17, box_px(80, 2, 90, 119)), (18, box_px(81, 60, 89, 70))]
    _compare_tiled(tmp_path, a_b, b_b, (2048, 40, 11))


def test_evidence_decisions_do_not_depend_on_the_tiles(tmp_path: Path) -> None:
    a_b = [(i, g) for i, g, _ in E_A] + [(7, box_px(85, 2, 92, 120))]
    b_b = [(i, g) for i, g, _ in E_B] + [(17, box_px(85, 2, 92, 119))]
    kinds = _compare_tiled(tmp_path, a_b, b_b, (2048, 40, 11))
    assert {"unchanged", "modified", "new", "demolished", "uncertain"} <= kinds


@settings(max_examples=5, deadline=None,  # ~2.5 s each; the hand-made layouts above too
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


# --- the evidence rule (issue 17): footprint confidence and pixels together ---

CRS_M = CRS.from_epsg(32633)
RULE = EvidenceRule(min_confidence=D.BUILDING_MIN_CONFIDENCE,
                    max_other_cover=D.BUILDING_MAX_OTHER_COVER,
                    min_changed=D.BUILDING_MIN_CHANGED, break_changed=D.BUILDING_BREAK_CHANGED,
                    min_modified_changed=D.MODIFIED_MIN_CHANGED,
                    min_part_changed=D.BUILDING_PART_CHANGED)


class _Pixels(Evidence):
    """Hand-made evidence: where the land cover changed and where each date has building
    pixels, as polygons (a geometry's cover is the share of its area inside them)."""

    def __init__(self, changed: list[BaseGeometry] = (),  # type: ignore[assignment]
                 buildings_a: list[BaseGeometry] = (),  # type: ignore[assignment]
                 buildings_b: list[BaseGeometry] = ()) -> None:  # type: ignore[assignment]
        self.layers = {"changed": shapely.union_all(list(changed)),
                       "buildings_a": shapely.union_all(list(buildings_a)),
                       "buildings_b": shapely.union_all(list(buildings_b))}

    def cover(self, geoms: np.ndarray, layer: str) -> np.ndarray:
        on = self.layers[layer]
        return np.array([np.nan if g is None or g.area == 0 else
                         shapely.intersection(g, on).area / g.area for g in geoms])


def _fp(items: list[tuple[int, BaseGeometry, float]]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"id": [i for i, _, _ in items],
                             "confidence": [c for _, _, c in items]},
                            geometry=[g for _, g, _ in items], crs=CRS_M)


def _decide(a: list[tuple[int, BaseGeometry, float]], b: list[tuple[int, BaseGeometry, float]],
            evidence: Evidence, rule: EvidenceRule = RULE) -> gpd.GeoDataFrame:
    return classify(_fp(a), _fp(b), CRS_M, iou_modified=0.8, area_tolerance=0.1, date_a="a",
                    date_b="b", rule=rule, evidence=evidence)


def _kinds(df: gpd.GeoDataFrame) -> dict[tuple[str, str], str]:
    return {("-" if pd.isna(a) else str(a), "-" if pd.isna(b) else str(b)): c
            for a, b, c in zip(df["id_a"], df["id_b"], df["change"], strict=True)}


def test_new_and_demolished_need_confidence_and_no_other_date_building() -> None:
    sure, unsure, seen = shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10), \
        shapely.box(40, 0, 50, 10)
    gone, still = shapely.box(0, 40, 10, 50), shapely.box(20, 40, 30, 50)
    ev = _Pixels(changed=[sure, unsure, seen, gone, still],
                 buildings_a=[gone, still, shapely.box(40, 0, 46, 10)],  # 60 % of "seen"
                 buildings_b=[sure, unsure, seen, still])  # B's pixels still on "still"
    df = _decide([(1, gone, 0.95), (2, still, 0.95)],
                 [(11, sure, 0.95), (12, unsure, 0.7), (13, seen, 0.95)], ev)
    assert _kinds(df) == {("-", "11"): "new", ("-", "12"): "uncertain",
                          ("-", "13"): "uncertain", ("1", "-"): "demolished",
                          ("2", "-"): "uncertain"}
    rows = df.set_index(df["id_b"].fillna(df["id_a"]))
    assert rows.loc["13", "other_cover"] == pytest.approx(0.6)
    assert rows.loc["2", "other_cover"] == pytest.approx(1.0)
    assert set(rows.loc[["12", "13"], "candidate"]) == {"new"}
    assert rows.loc["2", "candidate"] == "demolished"
    # the change mask as well, when asked: a new footprint on unchanged land cover is not new
    quiet = _Pixels(buildings_a=[], buildings_b=[sure])
    strict = EvidenceRule(min_confidence=0.88, min_changed=0.5)
    assert _kinds(_decide([], [(11, sure, 0.95)], quiet, strict)) == {("-", "11"): "uncertain"}
    assert _kinds(_decide([], [(11, sure, 0.95)], quiet)) == {("-", "11"): "new"}


def test_missing_evidence_never_vetoes_a_change() -> None:
    a = gpd.GeoDataFrame({"id": [1]}, geometry=[shapely.box(0, 0, 10, 10)], crs=CRS_M)
    b = gpd.GeoDataFrame({"id": [2]}, geometry=[shapely.box(30, 0, 40, 10)], crs=CRS_M)
    df = classify(a, b, CRS_M, iou_modified=0.8, area_tolerance=0.1, date_a="", date_b="",
                  rule=RULE, evidence=NO_EVIDENCE)  # no confidence column, no pixels
    assert _kinds(df) == {("1", "-"): "demolished", ("-", "2"): "new"}
    assert df["confidence_a"].isna().all() and df["other_cover"].isna().all()


def test_pair_whose_shared_area_changed_is_demolished_and_new() -> None:
    house = shapely.box(0, 0, 10, 10)
    rubble = shapely.box(0.5, 0, 10, 9.5)  # B's model sees a building in the rubble
    ev = _Pixels(changed=[house], buildings_a=[house], buildings_b=[rubble])
    df = _decide([(1, house, 0.95)], [(2, rubble, 0.8)], ev)
    assert _kinds(df) == {("1", "-"): "demolished", ("-", "2"): "uncertain"}
    assert set(df["candidate"]) == {"unchanged"}  # IoU 0.90: geometry alone said unchanged
    assert (df["shared_changed"] == 1.0).all()
    # the same footprints where the land cover did not change: one building
    ev = _Pixels(changed=[], buildings_a=[house], buildings_b=[rubble])
    assert _kinds(_decide([(1, house, 0.95)], [(2, rubble, 0.8)], ev)) == {
        ("1", "2"): "unchanged"}


def test_modified_needs_changed_pixels_where_the_footprints_differ() -> None:
    old, ext = shapely.box(0, 0, 10, 10), shapely.box(0, 0, 14, 10)  # IoU 0.71
    annex = shapely.box(10, 0, 14, 10)
    built = _Pixels(changed=[annex], buildings_a=[old], buildings_b=[ext])
    assert _kinds(_decide([(1, old, 0.95)], [(2, ext, 0.95)], built)) == {
        ("1", "2"): "modified"}
    wobble = _Pixels(changed=[], buildings_a=[old], buildings_b=[ext])
    df = _decide([(1, old, 0.95)], [(2, ext, 0.95)], wobble)
    assert _kinds(df) == {("1", "2"): "uncertain"}
    assert df["candidate"].iloc[0] == "modified" and df["changed_cover"].iloc[0] == 0.0


def test_small_extension_with_changed_pixels_is_modified() -> None:
    old = shapely.box(0, 0, 30, 20)
    ext = shapely.union(old, shapely.box(30, 0, 33, 5))  # +15 m²: IoU 0.976, area +2.5 %
    built = _Pixels(changed=[shapely.box(30, 0, 33, 5)], buildings_a=[old], buildings_b=[ext])
    assert _kinds(_decide([(1, old, 0.95)], [(2, ext, 0.95)], built)) == {
        ("1", "2"): "modified"}
    assert _kinds(_decide([(1, old, 0.95)], [(2, ext, 0.95)], _Pixels())) == {
        ("1", "2"): "unchanged"}


def test_lost_part_with_changed_pixels_is_a_demolished_building() -> None:
    # date A's footprint covers two row houses; the right one was pulled down
    row, left, right = shapely.box(0, 0, 20, 10), shapely.box(0, 0, 10, 10), \
        shapely.box(10, 0, 20, 10)
    ev = _Pixels(changed=[right], buildings_a=[row], buildings_b=[left])
    df = _decide([(1, row, 0.95)], [(2, left, 0.95)], ev)
    assert _kinds(df) == {("1", "2"): "unchanged", ("1", "-"): "demolished"}
    part = df[df["change"] == "demolished"].iloc[0]
    assert part["match"] == "part" and part["candidate"] == "modified"
    assert shapely.equals(part.geometry, right) and part["area_a_m2"] == pytest.approx(100.0)
    # no changed pixels there: the footprints just differ (a different segmentation?)
    ev = _Pixels(changed=[], buildings_a=[row], buildings_b=[left])
    assert _kinds(_decide([(1, row, 0.95)], [(2, left, 0.95)], ev)) == {
        ("1", "2"): "uncertain"}


def test_geometry_only_rule_keeps_the_geometric_call() -> None:
    old, ext = shapely.box(0, 0, 10, 10), shapely.box(0, 0, 14, 10)
    df = _decide([(1, old, 0.1), (3, shapely.box(50, 0, 60, 10), 0.1)],
                 [(2, ext, 0.1)], _Pixels(), GEOMETRY_ONLY)
    assert _kinds(df) == {("1", "2"): "modified", ("3", "-"): "demolished"}
    assert list(df["change"]) == list(df["candidate"])


def test_bad_evidence_thresholds_are_rejected(tmp_path: Path) -> None:
    from geoseg.errors import InputError

    cls = np.zeros(SHAPE, np.uint8)
    a = make_run(tmp_path / "a", cls, buildings=A_BUILDINGS)
    with pytest.raises(InputError, match="min_confidence"):
        compare_runs(a, a, tmp_path / "o1", building_min_confidence=1.5)
    with pytest.raises(InputError, match="break_changed"):
        compare_runs(a, a, tmp_path / "o2", building_break_changed=0.0)


# end to end: runs whose pixels (land cover, building class) and footprints are hand-made

ROW = box_px(70, 60, 80, 100)  # two row houses at date A, one footprint
E_A = [(1, box_px(5, 5, 15, 20), 0.95),  # unchanged
       (2, box_px(5, 30, 15, 40), 0.95),  # demolished, rubble seen as a building at B
       (3, box_px(30, 5, 40, 20), 0.95),  # extended
       (4, box_px(5, 60, 15, 70), 0.95),  # demolished
       (5, ROW, 0.95)]  # the right house (cols 80-100) pulled down
E_B = [(11, box_px(5, 5, 15, 20), 0.95),
       (12, box_px(5, 31, 14, 40), 0.8),  # the rubble (land cover: bare)
       (13, shapely.union(box_px(30, 5, 40, 20), box_px(30, 20, 36, 28)), 0.95),
       (14, box_px(40, 60, 50, 72), 0.95),  # new
       (15, box_px(40, 90, 50, 100), 0.7),  # new, low confidence
       (16, box_px(70, 60, 80, 80), 0.95)]
LANDCOVER_MISSES = {12}  # footprints the land-cover model does not call building


def _evidence_run(root: Path, items: list[tuple[int, BaseGeometry, float]], date: str,
                  transform: Affine = T_A, shape: tuple[int, int] = SHAPE) -> Path:
    """A run whose land cover and building pixels agree with its footprints (except the
    ones in LANDCOVER_MISSES, bare in the land cover), with footprint confidences."""
    from rasterio.features import rasterize

    lc = _painted([(i, g) for i, g, _ in items if i not in LANDCOVER_MISSES], transform, shape)
    lc[(lc == 3) & (rasterize([g for _, g, _ in items], out_shape=shape,
                              transform=transform) > 0)] = 0
    run = make_run(root, lc, transform=transform, date=date, buildings=None)
    px = rasterize([g for _, g, _ in items], out_shape=shape, transform=transform)
    zarr.open_group(str(run / "predictions.zarr"), mode="r+",
                    zarr_format=2)["buildings"][:] = (px > 0).astype(np.uint8)
    df = gpd.GeoDataFrame({"id": np.array([i for i, _, _ in items], np.int64),
                           "confidence": [c for _, _, c in items]},
                          geometry=[g for _, g, _ in items], crs=CRS_M)
    pyogrio.write_dataframe(df, run / "features.gpkg", layer="buildings", driver="GPKG",
                            geometry_type="Polygon")
    return run


EXPECTED = {(1, 11): "unchanged", (2, None): "demolished", (None, 12): "uncertain",
            (3, 13): "modified", (4, None): "demolished", (None, 14): "new",
            (None, 15): "uncertain", (5, 16): "unchanged", (5, None): "demolished"}


def test_compare_runs_backs_building_changes_with_pixels(tmp_path: Path) -> None:
    a = _evidence_run(tmp_path / "a", E_A, "2019-06-01")
    b = _evidence_run(tmp_path / "b", E_B, "2024-06-01")
    res = compare_runs(a, b, tmp_path / "out")
    assert _frame(res.output) == EXPECTED
    assert res.building_counts == {"unchanged": 2, "modified": 1, "new": 1, "demolished": 3,
                                   "uncertain": 2}
    summary = json.loads((res.output / "change_summary.json").read_text())
    assert summary["buildings"]["evidence"] == {
        "min_confidence": D.BUILDING_MIN_CONFIDENCE,
        "max_other_cover": D.BUILDING_MAX_OTHER_COVER, "min_changed": D.BUILDING_MIN_CHANGED,
        "break_changed": D.BUILDING_BREAK_CHANGED,
        "min_modified_changed": D.MODIFIED_MIN_CHANGED,
        "min_part_changed": D.BUILDING_PART_CHANGED}
    df = pyogrio.read_dataframe(res.output / "change.gpkg", layer="building_changes")
    new = df[df["id_b"] == "14"].iloc[0]
    assert new["other_cover"] == 0.0 and new["changed_cover"] > 0.9
    rubble = df[df["id_b"] == "12"].iloc[0]
    assert rubble["candidate"] == "modified" and rubble["shared_changed"] > 0.9
    # the thresholds are keyword arguments: geometry alone gives the old answer
    off = compare_runs(a, b, tmp_path / "off", building_min_confidence=0.0,
                       building_max_other_cover=1.0, building_break_changed=2.0,
                       modified_min_changed=0.0, building_part_changed=2.0)
    assert _frame(off.output) == {(1, 11): "unchanged", (2, 12): "modified",
                                  (3, 13): "modified", (4, None): "demolished",
                                  (None, 14): "new", (None, 15): "new", (5, 16): "modified"}
    assert off.summary["buildings"]["evidence"]["break_changed"] is None


def test_footprints_over_a_dates_nodata_are_outside_the_overlap(tmp_path: Path) -> None:
    """B has no imagery in rows 0-19 (a swath edge, a cloud mask): A's buildings there have
    no footprint at B, but that is no evidence of demolition; they were reported demolished.
    They now count as outside the overlap, like buildings beyond B's extent."""
    a = _evidence_run(tmp_path / "a", E_A, "2019-06-01")
    b = _evidence_run(tmp_path / "b", E_B, "2024-06-01")
    lc = zarr.open_group(str(b / "predictions.zarr"), mode="r+", zarr_format=2)["landcover"]
    stripe = np.asarray(lc[:])
    stripe[:20] = 255
    lc[:] = stripe
    res = compare_runs(a, b, tmp_path / "out")
    striped = {k: v for k, v in EXPECTED.items() if not {1, 2, 4, 11, 12} & set(k)}
    assert _frame(res.output) == striped  # A's 1, 2, 4 and B's 11, 12 lie in the stripe
    assert res.summary["buildings"]["outside_overlap"] == {"a": 3, "b": 2}


def test_a_date_without_footprints_has_an_empty_set_of_them(tmp_path: Path) -> None:
    """A run with a buildings model but no footprint (its GeoPackage has no buildings layer:
    every building was cleared) was 'no building footprints: building changes skipped'. Its
    set is empty: the other date's buildings are demolished where the pixels back it."""
    a = _evidence_run(tmp_path / "a", E_A, "2019-06-01")
    b = make_run(tmp_path / "b", np.full(SHAPE, 0, np.uint8), date="2024-06-01",
                 buildings=None)  # bare land, building pixels 0, no features.gpkg
    zarr.open_group(str(b / "predictions.zarr"), mode="r+",
                    zarr_format=2)["buildings"][:] = np.zeros(SHAPE, np.uint8)
    res = compare_runs(a, b, tmp_path / "out")
    assert _frame(res.output) == {(i, None): "demolished" for i, _, _ in E_A}
    assert res.building_counts["demolished"] == len(E_A)
    # a run without a buildings model at all still skips them
    (b / "predictions.zarr" / "buildings" / ".zarray").unlink()
    assert compare_runs(a, b, tmp_path / "out2").building_counts is None


@pytest.mark.parametrize("grid", ["a", "b"])
def test_pixel_evidence_on_another_lattice(tmp_path: Path, grid: str) -> None:
    """B on a shifted grid (a window of A's lattice) or at another pixel size (resampled):
    the same decisions, whichever grid the comparison runs on."""
    a = _evidence_run(tmp_path / "a", E_A, "2019-06-01")
    b_win = _evidence_run(tmp_path / "bw", E_B, "2024-06-01", shifted(-4, -2), (100, 136))
    res = compare_runs(a, b_win, tmp_path / "w", grid=grid)  # type: ignore[arg-type]
    assert _frame(res.output) == EXPECTED
    fine = shifted(-4, -2, pix=0.25)
    b_res = _evidence_run(tmp_path / "br", E_B, "2024-06-01", fine, (200, 272))
    res = compare_runs(a, b_res, tmp_path / "r", grid=grid)  # type: ignore[arg-type]
    assert res.summary["grid"]["mode"] == "resampled"
    assert _frame(res.output) == EXPECTED


def test_cli_flags_set_the_evidence_rule(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from geoseg.cli.change_cmd import add_change_command

    a = _evidence_run(tmp_path / "a", E_A, "2019-06-01")
    b = _evidence_run(tmp_path / "b", E_B, "2024-06-01")
    p = argparse.ArgumentParser(prog="geoseg")
    add_change_command(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(["change", str(a), str(b), "-o", str(tmp_path / "out"),
                         "--building-min-confidence", "0.5", "--building-max-other-cover",
                         "0.9", "--building-min-changed", "0.2", "--building-break-changed",
                         "0.6", "--modified-min-changed", "0.1", "--building-part-changed",
                         "0.7"])
    assert args.fn(args) == 0
    assert "uncertain" in capsys.readouterr().out
    ev = json.loads((tmp_path / "out" / "change_summary.json").read_text())["buildings"][
        "evidence"]
    assert ev == {"min_confidence": 0.5, "max_other_cover": 0.9, "min_changed": 0.2,
                  "break_changed": 0.6, "min_modified_changed": 0.1, "min_part_changed": 0.7}
    assert _frame(tmp_path / "out")[(None, 15)] == "new"  # 0.7 >= 0.5 now
    defaults = p.parse_args(["change", str(a), str(b), "-o", "x"])
    assert (defaults.building_min_confidence, defaults.building_part_changed) == (
        D.BUILDING_MIN_CONFIDENCE, D.BUILDING_PART_CHANGED)
    assert not math.isnan(defaults.modified_min_changed)
