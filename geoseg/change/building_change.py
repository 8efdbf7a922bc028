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

That is the *geometric* call (column ``candidate``). Most false changes are one date's
segmentation error, so a geometric change counts only when the footprints' confidence and the
pixels back it (:class:`EvidenceRule`, thresholds chosen on a validation scene; the pixels are
the change store's ``changed`` mask and each run's building-class pixels, on the change grid):

6. a matched group (pair, split or merge) whose *shared* area (A's parts ∩ B's parts) the
   land-cover change mask calls changed for at least ``break_changed`` of its pixels is not one
   building at both dates: its A parts become demolished candidates, its B parts new ones
   (rubble or a new building where an old one stood);
7. in the other groups, a part that A's footprints have and B's lost (at least
   ``MIN_PART_M2``) whose pixels changed for at least ``min_part_changed`` is a ``demolished``
   record of its own (``match`` = ``part``: a row house pulled down beside its neighbour, which
   one footprint covered at date A) when it passes step 9's confidence and cover checks; a
   gained part (at least ``MIN_GAIN_M2``) that changed as much and that A's building pixels
   cover at most ``max_other_cover`` of is an extension: the group is modified, however
   small the extension next to the building;
8. then the group is ``unchanged`` when the unions of its parts (A's less its demolished
   parts) have IoU >= ``iou_modified`` and area within ``area_tolerance`` and it gained no
   extension: a split/merge that matches is another segmentation of the same building. Else
   its ``modified`` records stay modified only when the change mask calls at least
   ``min_modified_changed`` of the difference area (A's parts △ B's parts) changed, else
   they are ``uncertain``;
9. a ``new`` (``demolished``) footprint stays one only when its confidence is at least
   ``min_confidence``, the other date's building pixels cover at most ``max_other_cover`` of it
   and the change mask covers at least ``min_changed`` of it; else it is ``uncertain``.

``uncertain`` is a record of its own (counted separately, never as a change). A missing piece of
evidence (no confidence column, a run without a ``buildings`` pixel layer, unknown pixels)
never vetoes a change, nor makes one (a lost or gained part needs known changed pixels).
Without evidence (:data:`GEOMETRY_ONLY`) only step 8's geometric split/merge test applies.

Only footprints whose representative point lies where both runs have imagery (the overlap of
their extents, less the pixels where either date has no data) are compared; the others are
counted as outside the overlap: a building under one date's nodata stripe is not demolished.
A run with a ``buildings`` model but no footprint (a greenfield before construction) has an
empty set of them.

Out of core: the overlap is cut into square tiles (``TILE_PX`` pixels of A's grid). A tile reads
the footprints of both runs that meet it plus a margin (the GeoPackages' R-trees answer the bbox
query) and decides the *connected groups* of candidates it owns: a group belongs to the tile
holding the representative point of its first member (A before B, then by id), so every group is
decided once. A group that reaches beyond the margin is retried with a doubled margin, so the
result does not depend on the tile size. Records are appended to the output tile by tile (within
a tile, sorted by change then ids); memory follows the footprints of one tile, not the region.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
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

from geoseg.area import ground_areas_m2
from geoseg.change.building_evidence import (
    GEOMETRY_ONLY,
    NO_EVIDENCE,
    Evidence,
    EvidenceRule,
    PixelEvidence,
)
from geoseg.change.runs import RunInfo
from geoseg.errors import InputError

log = logging.getLogger(__name__)

LAYER = "building_changes"
KINDS = ("unchanged", "modified", "new", "demolished", "uncertain")
MIN_PAIR_IOU = 0.2
MIN_COVER = 0.5
TILE_PX = 2048
MARGIN_PX = 128
COLUMNS = ("change", "id_a", "id_b", "date_a", "date_b", "area_a_m2", "area_b_m2", "iou",
           "match", "candidate", "confidence_a", "confidence_b", "other_cover", "changed_cover",
           "shared_changed")
FLOATS = ("area_a_m2", "area_b_m2", "iou", "confidence_a", "confidence_b", "other_cover",
          "changed_cover", "shared_changed")
MIN_PART_M2 = 20.0  # a lost part smaller than the smallest footprint is no demolition
MIN_GAIN_M2 = 10.0  # a gained part smaller than this is no extension (a few pixels of outline)
@dataclass(frozen=True)
class BuildingChanges:
    """What the comparison wrote: features per change type, footprints outside the overlap."""

    path: Path
    counts: dict[str, int]
    outside_overlap: dict[str, int]


def check_params(iou_modified: float, area_tolerance: float) -> None:
    if not 0.0 < iou_modified <= 1.0:
        raise InputError(f"iou_modified must be in (0, 1], got {iou_modified}")
    if not area_tolerance >= 0.0:
        raise InputError(f"area_tolerance must be >= 0, got {area_tolerance}")


def building_layer(run: RunInfo) -> Path | None:
    """The run's GeoPackage when it has a ``buildings`` layer (none: no footprint, or no
    buildings model; :func:`has_buildings_model` tells them apart)."""
    if run.gpkg is None:
        return None
    if "buildings" not in {str(n) for n, _ in pyogrio.list_layers(run.gpkg)}:
        return None
    return run.gpkg


def has_buildings_model(run: RunInfo) -> bool:
    """Whether the run predicted buildings (its store has the ``buildings`` pixel layer), with
    or without footprints."""
    return (run.store / "buildings" / ".zarray").exists()


def _no_footprints(crs: CRS) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"id": np.array([], dtype=object), "confidence": np.zeros(0)},
                            geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def load_buildings(path: Path | None, label: str, crs: CRS, own: CRS,
                   bbox: tuple[float, float, float, float] | None = None) -> gpd.GeoDataFrame:
    """Footprints of a run's ``buildings`` layer (whose CRS is ``own``) in ``crs``, those
    meeting ``bbox`` (given in ``crs``) when set, with text ids and repaired geometries; none
    when ``path`` is None (a run without footprints)."""
    if path is None:
        return _no_footprints(crs)
    query = None
    if bbox is not None:
        if own != crs:
            qx0, qy0, qx1, qy1 = Transformer.from_crs(crs, own, always_xy=True).transform_bounds(
                *bbox, densify_pts=21)
            # densified edges still cut curved ones a little short: pad by 1 %
            px, py = (qx1 - qx0) * 0.01, (qy1 - qy0) * 0.01
            query = (qx0 - px, qy0 - py, qx1 + px, qy1 + py)
        else:
            query = bbox
    df = pyogrio.read_dataframe(path, layer="buildings", bbox=query, fid_as_index=True)
    conf = (pd.to_numeric(df["confidence"], errors="coerce").to_numpy(np.float64)
            if "confidence" in df.columns else np.full(len(df), np.nan))
    if df.crs is None:
        raise InputError(f"run {label}'s {path} has no CRS: rerun `geoseg run`")
    if "id" not in df.columns:  # another producer's layer: its feature ids
        df["id"] = [str(int(i)) for i in df.index]
    if CRS.from_user_input(df.crs) != crs:
        df = df.to_crs(crs)
    geoms = np.asarray(df.geometry.values, dtype=object)
    if geoms.size:
        bad = ~shapely.is_valid(geoms)
        geoms[bad] = shapely.make_valid(geoms[bad])
    # ids as text: geoseg's footprint ids are "b{row}_{col}", other producers use numbers
    return gpd.GeoDataFrame({"id": df["id"].astype(str).to_numpy(), "confidence": conf},
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


Pairs = list[tuple[int, int, float]]  # (index in a, index in b, IoU)


def _candidates(ga: np.ndarray, gb: np.ndarray) -> Pairs:
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


def match(ga: np.ndarray, gb: np.ndarray, candidates: Pairs | None = None
          ) -> tuple[dict[int, tuple[int, float]], dict[int, tuple[int, float, str]]]:
    """Greedy one-to-one pairs ``a -> (b, iou)`` and leftover relations keyed by
    ``("a"|"b", index)`` flattened as ``±(index + 1)`` -> (partner, iou, relation).
    ``candidates`` are :func:`_candidates` of ``ga``/``gb`` when the caller has them."""
    if candidates is None:
        candidates = _candidates(ga, gb)
    pairs = sorted(candidates, key=lambda p: (-p[2], p[0], p[1]))
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


def _polygonal(g: BaseGeometry | None) -> BaseGeometry | None:
    """The polygons of ``g`` (an intersection may add lines and points), None if none."""
    if g is None or g.is_empty:
        return None
    if shapely.get_type_id(g) in (3, 6):
        return g
    parts = [p for p in shapely.get_parts(g) if shapely.get_type_id(p) in (3, 6)]
    return shapely.union_all(parts) if parts else None


def _passes(value: float, ok: bool) -> bool:
    """A criterion on a value that may be unknown (NaN): unknown never vetoes."""
    return bool(ok) or value != value


def classify(a: gpd.GeoDataFrame, b: gpd.GeoDataFrame, crs: CRS, *, iou_modified: float,
             area_tolerance: float, date_a: str, date_b: str,
             candidates: Pairs | None = None, rule: EvidenceRule = GEOMETRY_ONLY,
             evidence: Evidence = NO_EVIDENCE) -> gpd.GeoDataFrame:
    """The change features of footprints ``a`` and ``b`` (both in ``crs``, with an optional
    ``confidence`` column); ``candidates`` as for :func:`match`; ``rule`` and ``evidence``
    decide which geometric changes count (module docstring)."""
    ga = np.asarray(a.geometry.values, dtype=object)
    gb = np.asarray(b.geometry.values, dtype=object)
    na, nb = len(ga), len(gb)
    area_a, area_b = ground_areas_m2(ga, crs), ground_areas_m2(gb, crs)
    ids_a, ids_b = a["id"].to_numpy(), b["id"].to_numpy()
    conf_a, conf_b = (np.asarray(f["confidence"], np.float64) if "confidence" in f.columns
                      else np.full(len(f), np.nan) for f in (a, b))
    if candidates is None:
        candidates = _candidates(ga, gb)
    a2b, leftover = match(ga, gb, candidates)
    related_a = {j for j, _, r in leftover.values() if r == "split"}
    related_b = {j for j, _, r in leftover.values() if r == "merged"}
    group = _groups(na, nb, candidates) if candidates else np.arange(na + nb)

    # the geometric call: (change, i, j, iou, match)
    geo: list[tuple[str, int | None, int | None, float | None, str]] = []
    for i, (j, v) in a2b.items():
        grown = abs(area_b[j] - area_a[i]) / area_a[i] if area_a[i] > 0 else np.inf
        many = i in related_a or j in related_b
        same = v >= iou_modified and grown <= area_tolerance and not many
        how = "merged" if j in related_b else "split" if i in related_a else "one_to_one"
        geo.append(("unchanged" if same else "modified", i, j, v, how))
    for key, (partner, v, how) in leftover.items():
        geo.append(("modified", key - 1, partner, v, how) if key > 0
                   else ("modified", partner, -key - 1, v, how))
    matched_a = set(a2b) | {k - 1 for k in leftover if k > 0}
    matched_b = {j for j, _ in a2b.values()} | {-k - 1 for k in leftover if k < 0}
    geo += [("demolished", i, None, None, "") for i in range(na) if i not in matched_a]
    geo += [("new", None, j, None, "") for j in range(nb) if j not in matched_b]

    # paired groups (at least one footprint of each date): the unions of their parts
    paired = sorted({int(group[i]) for _, i, j, _, _ in geo if i is not None and j is not None})
    members: dict[int, tuple[list[int], list[int]]] = {g: ([], []) for g in paired}
    for i in range(na):
        if int(group[i]) in members:
            members[int(group[i])][0].append(i)
    for j in range(nb):
        if int(group[na + j]) in members:
            members[int(group[na + j])][1].append(j)
    ua = {g: shapely.union_all(ga[members[g][0]]) for g in paired}
    ub = {g: shapely.union_all(gb[members[g][1]]) for g in paired}
    shared_changed = dict(zip(paired, evidence.cover(np.array(
        [_polygonal(shapely.intersection(ua[g], ub[g])) for g in paired], dtype=object),
        "changed"), strict=True))
    broken = {g for g in paired if shared_changed[g] >= rule.break_changed}
    whole = [g for g in paired if g not in broken]

    # candidates judged one by one: (side, index of the footprint, geometry, candidate, group)
    singles: list[tuple[str, int, BaseGeometry, str, int | None]] = []
    for kind, ia, jb, _, _ in geo:
        if jb is None and ia is not None:
            singles.append(("a", ia, ga[ia], kind, None))
        elif ia is None and jb is not None:
            singles.append(("b", jb, gb[jb], kind, None))
    for g in broken:  # not one building at both dates: each part on its own
        was = "modified" if any(k == "modified" and ia is not None and int(group[ia]) == g
                                for k, ia, _, _, _ in geo) else "unchanged"
        singles += [("a", m, ga[m], was, g) for m in members[g][0]]
        singles += [("b", m, gb[m], was, g) for m in members[g][1]]
    n_whole = len(singles)
    for g in whole:  # parts that A had and B lost: demolished candidates
        lost = _polygonal(shapely.difference(ua[g], ub[g]))
        pieces = np.array([] if lost is None else shapely.get_parts(lost), dtype=object)
        if not pieces.size:
            continue
        for piece in pieces[ground_areas_m2(pieces, crs) >= MIN_PART_M2]:
            owner = max(members[g][0], key=lambda m: float(shapely.area(shapely.intersection(
                ga[m], piece))))
            singles.append(("a", owner, piece, "part", g))
    verdicts = _judge(singles, conf_a, conf_b, rule, evidence)

    # the decision
    recs: list[dict[str, Any]] = []

    def rec(kind: str, i: int | None, j: int | None, iou: float | None, how: str,
            candidate: str, other: float = np.nan, changed: float = np.nan,
            shared: float = np.nan, geom: BaseGeometry | None = None) -> None:
        part = geom is not None  # a lost part of A's footprint i: its own area
        if geom is None:
            geom = ga[i] if j is None else gb[j]
        recs.append({"change": kind, "id_a": None if i is None else str(ids_a[i]),
                     "id_b": None if j is None else str(ids_b[j]), "date_a": date_a,
                     "date_b": date_b,
                     "area_a_m2": None if i is None else round(float(
                         ground_areas_m2(np.array([geom], dtype=object), crs)[0] if part
                         else area_a[i]), 3),
                     "area_b_m2": None if j is None else round(float(area_b[j]), 3),
                     "iou": None if iou is None else round(iou, 6), "match": how,
                     "candidate": candidate,
                     "confidence_a": None if i is None else _round(conf_a[i]),
                     "confidence_b": None if j is None else _round(conf_b[j]),
                     "other_cover": _round(other), "changed_cover": _round(changed),
                     "shared_changed": _round(shared), "geometry": geom})

    gone: dict[int, list[BaseGeometry]] = {}
    for n, ((side, k, geom, was, grp), (ok, other, changed)) in enumerate(
            zip(singles, verdicts, strict=True)):
        kind = "demolished" if side == "a" else "new"
        if n >= n_whole:  # a lost part: a change only where the pixels say so
            if ok and changed >= rule.min_part_changed and grp is not None:
                gone.setdefault(grp, []).append(geom)
                rec(kind, k, None, None, "part", "modified", other, changed,
                    shared_changed[grp], geom)
            continue
        ok = ok and _passes(changed, changed >= rule.min_changed)
        i_, j_ = (k, None) if side == "a" else (None, k)
        rec(kind if ok else "uncertain", i_, j_, None, "", was, other, changed,
            np.nan if grp is None else shared_changed[grp])

    # whole groups: unchanged when the unions (less the demolished parts) match, a
    # different segmentation of one building; else modified if the pixels changed
    rest = {g: shapely.difference(ua[g], shapely.union_all(gone[g])) if g in gone else ua[g]
            for g in whole}
    areas = ground_areas_m2(np.array([x for g in whole for x in (rest[g], ub[g])],
                                     dtype=object), crs).reshape(-1, 2)
    diff_changed = dict(zip(whole, evidence.cover(np.array(
        [_polygonal(shapely.symmetric_difference(rest[g], ub[g])) for g in whole],
        dtype=object), "changed"), strict=True))
    # parts that B gained where the pixels changed: an extension, however small next to the
    # building (IoU and area change may call it unchanged)
    gained: list[tuple[int, BaseGeometry]] = []
    for g in whole:
        new_part = _polygonal(shapely.difference(ub[g], ua[g]))
        grown = np.array([] if new_part is None else shapely.get_parts(new_part), dtype=object)
        if grown.size:
            gained += [(g, x) for x in grown[ground_areas_m2(grown, crs) >= MIN_GAIN_M2]]
    extended: set[int] = set()
    if gained:
        geoms = np.array([x for _, x in gained], dtype=object)
        for (g, _), c, o in zip(gained, evidence.cover(geoms, "changed"),
                                evidence.cover(geoms, "buildings_a"), strict=True):
            if c >= rule.min_part_changed and _passes(o, o <= rule.max_other_cover):
                extended.add(g)
    one_building: dict[int, bool] = {}
    for g, (sa, sb) in zip(whole, areas, strict=True):
        union = shapely.union(rest[g], ub[g]).area
        iou_g = shapely.intersection(rest[g], ub[g]).area / union if union > 0 else 0.0
        one_building[g] = (iou_g >= iou_modified and sa > 0
                           and abs(sb - sa) / sa <= area_tolerance and g not in extended)
    for kind, ia, jb, iou, how in geo:
        if ia is None or jb is None or int(group[ia]) in broken:
            continue
        g = int(group[ia])
        final = kind
        if kind == "modified" or g in gone or g in extended:
            final = ("unchanged" if one_building[g] else "modified" if _passes(
                diff_changed[g], diff_changed[g] >= rule.min_modified_changed)
                else "uncertain")
        rec(final, ia, jb, iou, how, kind, changed=diff_changed[g], shared=shared_changed[g])
    order = {k: n for n, k in enumerate(KINDS)}
    recs.sort(key=lambda r: (order[r["change"]], _id_key(r["id_a"]), _id_key(r["id_b"])))
    frame = pd.DataFrame(recs, columns=[*COLUMNS, "geometry"])
    for col in ("id_a", "id_b"):
        frame[col] = frame[col].astype("string")
    for col in FLOATS:
        frame[col] = frame[col].astype("float64")
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(list(frame["geometry"]), crs=crs),
                            crs=crs)


def _judge(singles: list[tuple[str, int, BaseGeometry, str, int | None]], conf_a: np.ndarray,
           conf_b: np.ndarray, rule: EvidenceRule, evidence: Evidence
           ) -> list[tuple[bool, float, float]]:
    """(confident and not covered by the other date's buildings, the other date's building
    cover, the changed cover) of each new (side "b") or demolished (side "a") candidate."""
    if not singles:
        return []
    geoms = np.array([geom for _, _, geom, _, _ in singles], dtype=object)
    side = np.array([s for s, _, _, _, _ in singles])
    other = np.full(len(singles), np.nan)
    for s, layer in (("a", "buildings_b"), ("b", "buildings_a")):
        if (side == s).any():
            other[side == s] = evidence.cover(geoms[side == s], layer)
    changed = evidence.cover(geoms, "changed")
    out = []
    for (s, k, _, was, _), o, c in zip(singles, other, changed, strict=True):
        conf = conf_a[k] if s == "a" else conf_b[k]
        # a part of a broken group lies on the other date's footprint by construction
        ok = (_passes(conf, conf >= rule.min_confidence)
              and (was in ("unchanged", "modified") or _passes(o, o <= rule.max_other_cover)))
        out.append((ok, float(o), float(c)))
    return out


def _round(v: float) -> float | None:
    return None if v != v else round(float(v), 6)


def _groups(na: int, nb: int, pairs: Pairs) -> np.ndarray:
    """Connected-group label of each footprint (A's ``na`` then B's ``nb``) over the
    candidate pairs."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = na + nb
    rows = np.array([i for i, _, _ in pairs], np.int64)
    cols = np.array([na + j for _, j, _ in pairs], np.int64)
    graph = coo_matrix((np.ones(len(pairs)), (rows, cols)), shape=(n, n))
    return np.asarray(connected_components(graph, directed=False)[1])


def _tile_of(pts: np.ndarray, origin: tuple[float, float], size: float,
             tiles: tuple[int, int]) -> np.ndarray:
    """(row, col) of the tile holding each point, rows counted down from the top."""
    x, y = shapely.get_x(pts), shapely.get_y(pts)
    col = np.clip(np.floor((x - origin[0]) / size), 0, tiles[1] - 1).astype(np.int64)
    row = np.clip(np.floor((origin[1] - y) / size), 0, tiles[0] - 1).astype(np.int64)
    return np.stack([row, col], axis=1)


@dataclass
class _Tiles:
    """The square tiles over the overlap and the footprints that meet one of them."""

    paths: tuple[Path | None, Path | None]
    crs: CRS
    layer_crs: tuple[CRS, CRS]
    area: BaseGeometry
    origin: tuple[float, float]  # top-left corner
    size: float
    shape: tuple[int, int]
    # whether both dates have imagery at given points (None: their extents' overlap decides)
    both_dates: Callable[[np.ndarray], np.ndarray] | None = None

    def load(self, row: int, col: int, margin: float
             ) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, BaseGeometry]:
        x0 = self.origin[0] + col * self.size - margin
        y1 = self.origin[1] - row * self.size + margin
        box = (x0, y1 - self.size - 2 * margin, x0 + self.size + 2 * margin, y1)
        frames = []
        for path, label, own in zip(self.paths, ("a", "b"), self.layer_crs, strict=True):
            df = load_buildings(path, label, self.crs, own, box)
            pts = shapely.point_on_surface(np.asarray(df.geometry.values, dtype=object))
            inside = shapely.within(pts, self.area) if len(df) else np.zeros(0, bool)
            if self.both_dates is not None and inside.any():  # over a date's nodata: outside
                inside[inside] = self.both_dates(pts[inside])
            df = df[inside].reset_index(drop=True)
            df["tile"] = list(map(tuple, _tile_of(pts[inside], self.origin, self.size,
                                                  self.shape)))
            frames.append(df)
        return frames[0], frames[1], shapely.box(*box)

    def owned(self, row: int, col: int, margin: float
              ) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, Pairs, int, int]:
        """The footprints of the groups this tile owns (in layer order) with their candidate
        pairs, and how many inside footprints of each run lie in the tile. Widens the margin
        until each owned group lies inside the loaded box, so that no partner of a member can
        be missing."""
        while True:
            fa, fb, box = self.load(row, col, margin)
            ga = np.asarray(fa.geometry.values, dtype=object)
            gb = np.asarray(fb.geometry.values, dtype=object)
            pairs = _candidates(ga, gb)
            group = _groups(len(ga), len(gb), pairs)
            keys = [(0, _id_key(v)) for v in fa["id"]] + [(1, _id_key(v)) for v in fb["id"]]
            tile = list(fa["tile"]) + list(fb["tile"])
            first: dict[int, int] = {}
            for k, g in enumerate(group):
                if g not in first or keys[k] < keys[first[g]]:
                    first[g] = k
            mine = np.array([tile[first[g]] == (row, col) for g in group], bool)
            geoms = np.concatenate([ga, gb])
            if shapely.covers(box, shapely.envelope(geoms[mine])).all():
                na = len(fa)
                here = np.array([t == (row, col) for t in tile], bool)
                # renumber the owned pairs (both ends of a pair share a group, so both are
                # owned); the renumbering keeps their order, hence the matching's tie-breaks
                new_a = np.cumsum(mine[:na]) - 1
                new_b = np.cumsum(mine[na:]) - 1
                owned = [(int(new_a[i]), int(new_b[j]), v) for i, j, v in pairs if mine[i]]
                return (fa[mine[:na]].reset_index(drop=True),
                        fb[mine[na:]].reset_index(drop=True), owned,
                        int(here[:na].sum()), int(here[na:].sum()))
            margin *= 2


def compare_buildings(a: RunInfo, b: RunInfo, path: Path, *, iou_modified: float,
                      area_tolerance: float, tile_px: int = TILE_PX,
                      margin_px: int = MARGIN_PX, rule: EvidenceRule = GEOMETRY_ONLY,
                      evidence: PixelEvidence | None = None) -> BuildingChanges | None:
    """Building changes of two runs inside their overlap, written to the ``building_changes``
    layer of the GeoPackage ``path`` tile by tile; None when a run has no footprints.
    ``rule`` says which geometric changes the footprints' confidence and the ``evidence``
    pixels must back (without ``evidence``, only the confidence)."""
    rule.check()
    crs = a.grid.crs
    pa, pb = building_layer(a), building_layer(b)
    for label, run, p in (("a", a, pa), ("b", b, pb)):
        if p is None and not has_buildings_model(run):
            log.warning("run %s has no buildings model (no building pixels nor footprints): "
                        "building changes skipped", label)
            return None
        if p is None:
            log.info("run %s has no building footprint: the other run's are new or "
                     "demolished where both dates have imagery", label)
    area = overlap_polygon(a, b)
    info: list[dict[str, Any]] = [
        pyogrio.read_info(p, layer="buildings") if p is not None else
        {"features": 0, "crs": None, "geometry_type": "Polygon"} for p in (pa, pb)]
    res = abs(a.grid.transform.a)
    size = tile_px * res
    if area.is_empty:  # grids that touch only along an edge: no tile, an empty layer
        x0 = y0 = x1 = y1 = 0.0
        shape = (0, 0)
    else:
        x0, y0, x1, y1 = area.bounds
        shape = (max(1, math.ceil((y1 - y0) / size)), max(1, math.ceil((x1 - x0) / size)))
    own = tuple(CRS.from_user_input(i["crs"]) if i["crs"] else crs for i in info)
    tiles = _Tiles((pa, pb), crs, (own[0], own[1]), area, (x0, y1), size, shape,
                   None if evidence is None else evidence.both_dates)
    counts = dict.fromkeys(KINDS, 0)
    inside = {"a": 0, "b": 0}
    multi = any(str(i["geometry_type"]) != "Polygon" for i in info)
    written = False
    for row in range(shape[0]):
        for col in range(shape[1]):
            fa, fb, pairs, na, nb = tiles.owned(row, col, margin_px * res)
            inside["a"] += na
            inside["b"] += nb
            ev = (NO_EVIDENCE if evidence is None else
                  evidence.window([*fa.geometry.values, *fb.geometry.values]))
            frame = classify(fa, fb, crs, iou_modified=iou_modified,
                             area_tolerance=area_tolerance, date_a=a.date, date_b=b.date,
                             candidates=pairs, rule=rule, evidence=ev)
            for k, v in frame["change"].value_counts().items():
                counts[str(k)] += int(v)
            if len(frame):
                _append(frame, path, multi, append=written)
                written = True
    if not written:  # the layer exists (empty) whatever was found
        none = gpd.GeoDataFrame({"id": [], "confidence": []}, geometry=[], crs=crs)
        _append(classify(none, none, crs, iou_modified=iou_modified,
                         area_tolerance=area_tolerance, date_a=a.date, date_b=b.date),
                path, multi, append=False)
    outside = {label: int(i["features"]) - inside[label]
               for label, i in zip(("a", "b"), info, strict=True)}
    return BuildingChanges(path, counts, outside)


def _append(frame: gpd.GeoDataFrame, path: Path, multi: bool, *, append: bool) -> None:
    """Add records to the ``building_changes`` layer: MultiPolygon when an input layer is, else
    Polygon (a footprint that repair split in parts keeps its largest part there)."""
    if not multi and len(frame):
        geoms = np.asarray(frame.geometry.values, dtype=object)
        split = shapely.get_type_id(geoms) != 3  # not a Polygon
        if split.any():
            log.warning("%d repaired footprints came out in parts: their largest part is "
                        "written", int(split.sum()))
            geoms[split] = [max(shapely.get_parts(g), key=shapely.area, default=g)
                            for g in geoms[split]]
            frame = frame.set_geometry(gpd.GeoSeries(geoms, crs=frame.crs))
    pyogrio.write_dataframe(frame, path, layer=LAYER, driver="GPKG", append=append,
                            geometry_type="MultiPolygon" if multi else "Polygon",
                            promote_to_multi=multi)
