"""The second date: new, demolished and extended buildings, cleared vegetation, a new pond.

Unchanged buildings keep their polygon and id. New buildings come from the same conflict-free
plan (their lots are empty at t0) and get ids after all t0 ids; extended buildings keep their id
and gain an annex that shares a wall with them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely import affinity
from shapely.geometry import Polygon

from geoseg.sample.land import CHANGE, LOT, Area, blob, water_body
from geoseg.sample.palette import Mat, mat_colour
from geoseg.sample.placement import Group, annex
from geoseg.sample.shapes import Building, Part
from geoseg.sample.streets import Network, Zone

Rng = np.random.Generator
VEG_MATS = (Mat.GRASS, Mat.CROP, Mat.MEADOW, Mat.FOREST_FLOOR)


@dataclass
class Record:
    b: Building
    group: int
    t0: bool = True
    t1: bool = True
    id: int = 0
    fp1: Polygon | None = None
    parts1: list[Part] = field(default_factory=list)

    def footprint(self, date: int) -> Polygon:
        return self.fp1 if (date == 1 and self.fp1 is not None) else self.b.footprint

    def parts(self, date: int) -> list[Part]:
        return self.parts1 if (date == 1 and self.parts1) else self.b.parts


@dataclass
class Evolution:
    records: list[Record]
    changes: list[tuple[str, int | None, int | None, Polygon]]
    areas: list[Area]


def _key(r: Record) -> tuple[float, float]:
    c = r.b.footprint.centroid
    return (round(c.y, 3), round(c.x, 3))


def evolve(rng: Rng, groups: list[Group], net: Network, obstacles: NDArray[np.object_],
           inner: Polygon) -> Evolution:
    records = [Record(m, gi) for gi, g in enumerate(groups) for m in g.members]
    total = len(records)
    n_new = max(1 if total >= 5 else 0, round(0.08 * total))
    new_groups: set[int] = set()
    count = 0
    for gi in rng.permutation(len(groups)):
        if count >= n_new or len(new_groups) >= len(groups) - 1:
            break
        if len(groups[gi].members) <= 4:
            new_groups.add(int(gi))
            count += len(groups[gi].members)
    for r in records:
        r.t0 = r.group not in new_groups
    old = sorted((r for r in records if r.t0), key=_key)
    new = sorted((r for r in records if not r.t0), key=_key)
    for i, r in enumerate(old + new):
        r.id = i + 1
    changes: list[tuple[str, int | None, int | None, Polygon]] = [
        ("new", None, r.id, r.b.footprint) for r in new]
    areas: list[Area] = []
    n_dem = max(1 if len(old) >= 10 else 0, round(0.05 * len(old)))
    for i in rng.permutation(len(old))[:n_dem]:
        r = old[int(i)]
        r.t1 = False
        changes.append(("demolished", r.id, None, r.b.footprint))
        patch = shapely.buffer(r.b.footprint, rng.uniform(0.5, 2.0), join_style="mitre")
        mat = Mat.RUBBLE if rng.random() < 0.6 else Mat.SOIL
        areas.append(Area(patch, mat, mat_colour(rng, mat), CHANGE, 2))
    n_ext = max(1 if len(old) >= 10 else 0, round(0.05 * len(old)))
    changes += _extend(rng, [r for r in old if r.t1], records, net, obstacles, inner, n_ext)
    for gi in sorted(new_groups):
        if rng.random() < 0.5:
            hull = shapely.convex_hull(groups[gi].hull)
            areas.append(Area(shapely.buffer(hull, rng.uniform(3, 6)), Mat.SOIL,
                              mat_colour(rng, Mat.SOIL), CHANGE, 2))
    for gi, g in enumerate(groups):
        if g.yard:
            hull = shapely.buffer(shapely.convex_hull(g.hull), rng.uniform(4, 12),
                                  join_style="mitre")
            mat = Mat.YARD if rng.random() < 0.7 else Mat.SOIL
            areas.append(Area(hull, mat, mat_colour(rng, mat), LOT, 2 if gi in new_groups else 3))
    changes.sort(key=lambda c: (c[2] if c[2] is not None else c[1]) or 0)
    return Evolution(records, changes, areas)


def _extend(rng: Rng, cands: list[Record], records: list[Record], net: Network,
            obstacles: NDArray[np.object_], inner: Polygon, n: int) -> list[
                tuple[str, int | None, int | None, Polygon]]:
    fps = np.array([r.b.footprint for r in records], dtype=object)
    owner = {id(r): i for i, r in enumerate(records)}
    tree = shapely.STRtree(fps)
    obs_tree = shapely.STRtree(obstacles) if len(obstacles) else None
    taken: dict[tuple[int, int], list[Polygon]] = {}  # accepted annexes by 50 m cell
    out: list[tuple[str, int | None, int | None, Polygon]] = []
    for i in rng.permutation(len(cands)):
        if len(out) >= n:
            break
        r = cands[int(i)]
        part = annex(rng, r.b)
        if part is None or not inner.contains(part.poly):
            continue
        hits = tree.query(part.poly, predicate="dwithin", distance=0.6)
        if np.any(hits != owner[id(r)]) or len(net.road_tree.query(
                part.poly, predicate="dwithin", distance=0.8)):
            continue
        if obs_tree is not None and len(obs_tree.query(part.poly, predicate="dwithin",
                                                       distance=1.0)):
            continue
        cx, cy = int(part.cx // 50), int(part.cy // 50)
        near = [t for dx in (-1, 0, 1) for dy in (-1, 0, 1)
                for t in taken.get((cx + dx, cy + dy), [])]
        if any(shapely.dwithin(part.poly, t, 0.6) for t in near):
            continue
        fp = shapely.union(r.b.footprint, part.poly)
        if not isinstance(fp, Polygon) or fp.area < r.b.footprint.area + 8.0:
            continue
        part.rise = min(part.rise, max(p.rise for p in r.b.parts))
        r.fp1 = fp
        r.parts1 = sorted([*r.b.parts, part], key=lambda p: p.rise)
        taken.setdefault((cx, cy), []).append(part.poly)
        out.append(("extended", r.id, r.id, fp))
    return out


def landscape_changes(rng: Rng, net: Network, areas: list[Area], blocked: NDArray[np.object_],
                      inner: Polygon, km2: float) -> list[Area]:
    """Vegetation cleared to bare ground and a new pond (t1 only)."""
    out: list[Area] = []
    extent = min(net.width, net.height)
    b_tree = shapely.STRtree(blocked) if len(blocked) else None
    veg = [a for a in areas if a.mat in VEG_MATS and a.dates == 3]
    wanted = [("clear", 1 + int(km2 > 1.0) + int(km2 // 12)), ("pond", 1 + int(km2 // 8))]
    x0, y0, x1, y1 = inner.bounds
    for kind, n in wanted:
        for attempt in range(70):
            if n <= 0:
                break
            if kind == "clear" and veg and attempt < 40:
                a = veg[int(rng.integers(len(veg)))]
                pts = a.geom.representative_point()
                cx, cy = pts.x + rng.uniform(-20, 20), pts.y + rng.uniform(-20, 20)
            else:
                cx, cy = rng.uniform(x0, x1), rng.uniform(y0, y1)
            zone = int(net.zone_at(np.array([cx]), np.array([cy]))[0])
            if kind == "pond" and zone in (Zone.URBAN, Zone.INDUSTRIAL) and attempt < 40:
                continue
            rad = min(rng.uniform(25, 60) if kind == "clear" else rng.uniform(12, 35),
                      extent * (0.15 if kind == "clear" else 0.1)) * (1.0 - attempt / 80)
            if kind == "clear":
                ang = rng.uniform(0, math.pi)
                poly = affinity.rotate(shapely.box(cx - rad, cy - rad * 0.7, cx + rad,
                                                           cy + rad * 0.7), ang, use_radians=True)
            else:
                poly = blob(rng, cx, cy, rad, 0.35)
            if not inner.contains(poly):
                continue
            clear = 2.0 if kind == "clear" else 4.0
            if b_tree is not None and len(b_tree.query(poly, predicate="dwithin", distance=clear)):
                continue
            if kind == "pond" and len(net.road_tree.query(poly, predicate="dwithin",
                                                          distance=4.0)):
                continue
            if kind == "clear":
                mat = Mat.SOIL if rng.random() < 0.6 else Mat.RUBBLE
                out.append(Area(poly, mat, mat_colour(rng, mat), CHANGE, 2))
            else:
                out += water_body(rng, poly, 2)
            n -= 1
    return out
