"""Building changes between two footprint layers: unchanged, modified, new, demolished.

Matching, in A's CRS:

1. candidate pairs are overlapping footprints (STRtree) that overlap *substantially*: IoU of at
   least ``MIN_PAIR_IOU`` or the intersection covering at least ``MIN_COVER`` of the smaller one
   (so a neighbour touched by a sliver is not a match);
2. greedy one-to-one matching, highest IoU first (as SpaceNet scoring);
3. a matched pair is ``unchanged`` when IoU >= ``iou_modified`` and the ground area changed by at
   most ``area_tolerance`` (relative to A), else ``modified`` (e.g. extended);
4. leftover candidates are many-to-one or one-to-many relations: an old annex merged into a new
   building, a building split in two. Each leftover becomes a ``modified`` record paired with its
   best partner, and the partner's own pair is ``modified`` too (``match`` says ``merged`` or
   ``split``);
5. footprints of A without a candidate are ``demolished``, of B ``new``.

Only footprints whose representative point lies where both runs have imagery (the overlap of
their extents) are compared; the others are counted as outside the overlap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from geoseg.area import ground_area_m2
from geoseg.change.runs import RunInfo
from geoseg.errors import InputError

log = logging.getLogger(__name__)

LAYER = "building_changes"
KINDS = ("unchanged", "modified", "new", "demolished")
MIN_PAIR_IOU = 0.2
MIN_COVER = 0.5
COLUMNS = ("change", "id_a", "id_b", "date_a", "date_b", "area_a_m2", "area_b_m2", "iou",
           "match")


@dataclass(frozen=True)
class BuildingChanges:
    """The change features (a GeoDataFrame in A's CRS) and their counts."""

    frame: gpd.GeoDataFrame
    outside_overlap: dict[str, int]

    @property
    def counts(self) -> dict[str, int]:
        vc = self.frame["change"].value_counts() if len(self.frame) else {}
        return {k: int(vc.get(k, 0)) for k in KINDS}


def check_params(iou_modified: float, area_tolerance: float) -> None:
    if not 0.0 < iou_modified <= 1.0:
        raise InputError(f"iou_modified must be in (0, 1], got {iou_modified}")
    if not area_tolerance >= 0.0:
        raise InputError(f"area_tolerance must be >= 0, got {area_tolerance}")


def load_buildings(run: RunInfo, label: str, crs: CRS) -> gpd.GeoDataFrame | None:
    """Footprints of a run in ``crs`` (None when the run has no building layer)."""
    if run.gpkg is None:
        return None
    if "buildings" not in {str(n) for n, _ in pyogrio.list_layers(run.gpkg)}:
        return None
    df = gpd.read_file(run.gpkg, layer="buildings", engine="pyogrio")
    if df.crs is None:
        raise InputError(f"run {label}'s {run.gpkg} has no CRS: rerun `geoseg run`")
    if "id" not in df.columns:
        df["id"] = [str(i) for i in range(1, len(df) + 1)]
    if CRS.from_user_input(df.crs) != crs:
        df = df.to_crs(crs)
    geoms = np.asarray(df.geometry.values, dtype=object)
    if geoms.size:
        bad = ~shapely.is_valid(geoms)
        geoms[bad] = shapely.make_valid(geoms[bad])
    # ids as text: geoseg's footprint ids are "b{row}_{col}", other producers use numbers
    return gpd.GeoDataFrame({"id": df["id"].astype(str).to_numpy()},
                            geometry=gpd.GeoSeries(geoms, crs=crs), crs=crs)


def overlap_polygon(a: RunInfo, b: RunInfo) -> BaseGeometry:
    """Where both runs have a grid, in A's CRS (B's extent densified and reprojected)."""
    ab, bb = a.grid.bounds, b.grid.bounds
    box_b = shapely.box(bb.left, bb.bottom, bb.right, bb.top)
    if b.grid.crs != a.grid.crs:
        box_b = shapely.segmentize(box_b, max((bb.right - bb.left), (bb.top - bb.bottom)) / 32)
        t = Transformer.from_crs(b.grid.crs, a.grid.crs, always_xy=True)
        box_b = shapely.transform(box_b, lambda xy: np.column_stack(t.transform(xy[:, 0],
                                                                                 xy[:, 1])))
    return shapely.intersection(shapely.box(ab.left, ab.bottom, ab.right, ab.top), box_b)


def ground_areas(geoms: np.ndarray, crs: CRS) -> np.ndarray:
    if not crs.is_geographic:
        f = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
        return np.asarray(shapely.area(geoms), np.float64) * f * f
    return np.array([ground_area_m2(g, crs) for g in geoms], np.float64)


def _candidates(ga: np.ndarray, gb: np.ndarray) -> list[tuple[int, int, float]]:
    if not ga.size or not gb.size:
        return []
    ia, ib = shapely.STRtree(gb).query(ga, predicate="intersects")
    if not len(ia):
        return []
    inter = shapely.area(shapely.intersection(ga[ia], gb[ib]))
    aa, ab = shapely.area(ga[ia]), shapely.area(gb[ib])
    union = aa + ab - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    cover = np.divide(inter, np.minimum(aa, ab), out=np.zeros_like(inter),
                      where=np.minimum(aa, ab) > 0)
    keep = (iou >= MIN_PAIR_IOU) | (cover >= MIN_COVER)
    return [(int(i), int(j), float(v)) for i, j, v, k in zip(ia, ib, iou, keep, strict=True)
            if k]


def match(ga: np.ndarray, gb: np.ndarray) -> tuple[dict[int, tuple[int, float]],
                                                  dict[int, tuple[int, float, str]]]:
    """Greedy one-to-one pairs ``a -> (b, iou)`` and leftover relations keyed by
    ``("a"|"b", index)`` flattened as ``±(index + 1)`` -> (partner, iou, relation)."""
    pairs = sorted(_candidates(ga, gb), key=lambda p: (-p[2], p[0], p[1]))
    a2b: dict[int, tuple[int, float]] = {}
    used_b: set[int] = set()
    for i, j, v in pairs:
        if i not in a2b and j not in used_b:
            a2b[i] = (j, v)
            used_b.add(j)
    leftover: dict[int, tuple[int, float, str]] = {}
    for i, j, v in pairs:  # best partner first, as pairs are sorted by IoU
        if i not in a2b and i + 1 not in leftover:
            leftover[i + 1] = (j, v, "merged")  # old footprint absorbed by b's building j
        elif j not in used_b and -(j + 1) not in leftover:
            leftover[-(j + 1)] = (i, v, "split")  # new footprint carved out of a's building i
    return a2b, leftover


def _id_key(value: str | None) -> tuple[int, int, str]:
    """Sort key of a footprint id: numeric ids by value, others (``b{row}_{col}``) by their
    numbers in order, missing ones first."""
    if value is None:
        return (0, 0, "")
    if value.isdigit():
        return (1, int(value), "")
    return (2, 0, ".".join(f"{int(x):012d}" if x.isdigit() else x
                           for x in value.lstrip("b").split("_")))


def classify(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, crs: CRS, *, iou_modified: float,
             area_tolerance: float, date_a: str, date_b: str) -> gpd.GeoDataFrame:
    """The change features of footprints ``a`` and ``b`` (both in ``crs``)."""
    ga = np.asarray(a.geometry.values, dtype=object)
    gb = np.asarray(b.geometry.values, dtype=object)
    area_a, area_b = ground_areas(ga, crs), ground_areas(gb, crs)
    ids_a, ids_b = a["id"].to_numpy(), b["id"].to_numpy()
    a2b, leftover = match(ga, gb)
    related_a = {j for j, _, r in leftover.values() if r == "split"}
    related_b = {j for j, _, r in leftover.values() if r == "merged"}
    recs: list[dict[str, Any]] = []

    def rec(kind: str, i: int | None, j: int | None, iou: float | None, how: str) -> None:
        recs.append({"change": kind, "id_a": None if i is None else str(ids_a[i]),
                     "id_b": None if j is None else str(ids_b[j]), "date_a": date_a,
                     "date_b": date_b,
                     "area_a_m2": None if i is None else round(float(area_a[i]), 3),
                     "area_b_m2": None if j is None else round(float(area_b[j]), 3),
                     "iou": None if iou is None else round(iou, 6), "match": how,
                     "geometry": ga[i] if j is None else gb[j]})

    for i, (j, v) in a2b.items():
        grown = abs(area_b[j] - area_a[i]) / area_a[i] if area_a[i] > 0 else np.inf
        many = i in related_a or j in related_b
        same = v >= iou_modified and grown <= area_tolerance and not many
        how = "merged" if j in related_b else "split" if i in related_a else "one_to_one"
        rec("unchanged" if same else "modified", i, j, v, how)
    for key, (partner, v, how) in leftover.items():
        if key > 0:
            rec("modified", key - 1, partner, v, how)
        else:
            rec("modified", partner, -key - 1, v, how)
    matched_a = set(a2b) | {k - 1 for k in leftover if k > 0}
    matched_b = {j for j, _ in a2b.values()} | {-k - 1 for k in leftover if k < 0}
    for i in range(len(ga)):
        if i not in matched_a:
            rec("demolished", i, None, None, "")
    for j in range(len(gb)):
        if j not in matched_b:
            rec("new", None, j, None, "")
    order = {k: n for n, k in enumerate(KINDS)}
    recs.sort(key=lambda r: (order[r["change"]], _id_key(r["id_a"]), _id_key(r["id_b"])))
    frame = pd.DataFrame(recs, columns=[*COLUMNS, "geometry"])
    for col in ("id_a", "id_b"):
        frame[col] = frame[col].astype("string")
    for col in ("area_a_m2", "area_b_m2", "iou"):
        frame[col] = frame[col].astype("float64")
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(list(frame["geometry"]), crs=crs),
                            crs=crs)


def compare_buildings(a: RunInfo, b: RunInfo, *, iou_modified: float,
                      area_tolerance: float) -> BuildingChanges | None:
    """Building changes of two runs inside their overlap; None when a run has no footprints."""
    crs = a.grid.crs
    fa, fb = load_buildings(a, "a", crs), load_buildings(b, "b", crs)
    if fa is None or fb is None:
        missing = "a" if fa is None else "b"
        log.warning("run %s has no building footprints: building changes skipped", missing)
        return None
    area = overlap_polygon(a, b)
    outside: dict[str, int] = {}
    kept: list[gpd.GeoDataFrame] = []
    for label, df in (("a", fa), ("b", fb)):
        pts = shapely.point_on_surface(np.asarray(df.geometry.values, dtype=object))
        inside = shapely.within(pts, area) if len(df) else np.zeros(0, bool)
        outside[label] = int((~inside).sum())
        kept.append(df[inside].reset_index(drop=True))
    frame = classify(kept[0], kept[1], crs, iou_modified=iou_modified,
                     area_tolerance=area_tolerance, date_a=a.date, date_b=b.date)
    return BuildingChanges(frame, outside)


def write_changes(frame: gpd.GeoDataFrame, path: Path) -> Path:
    """The ``building_changes`` layer (Polygon or MultiPolygon) of a GeoPackage."""
    types = set(frame.geometry.geom_type) if len(frame) else {"Polygon"}
    multi = bool(types - {"Polygon"})
    pyogrio.write_dataframe(frame, path, layer=LAYER, driver="GPKG",
                            geometry_type="MultiPolygon" if multi else "Polygon",
                            promote_to_multi=multi)
    return path
