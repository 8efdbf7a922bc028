"""Where buildings go: lots along streets, dense clusters, conflict-free selection.

Candidates are groups (one building, or several that share walls such as a terrace). A group is
kept when it clears roads, obstacles and the scene edge, and does not come closer than its gap
to a group kept before it (greedy in priority order, with pairs found by an STRtree).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import LineString, MultiPolygon, Polygon

from geoseg.sample import shapes
from geoseg.sample.shapes import Building, Frame
from geoseg.sample.streets import Network, Zone

Rng = np.random.Generator


@dataclass
class Group:
    members: list[Building]
    priority: float
    gap: float
    yard: bool = False

    @property
    def hull(self) -> MultiPolygon:
        return MultiPolygon([m.footprint for m in self.members])


def _clean(members: list[Building]) -> list[Building]:
    """Drop members that overlap an earlier member (touching is fine)."""
    kept: list[Building] = []
    for m in members:
        if all(shapely.intersection(m.footprint, k.footprint).area < 1e-6 for k in kept):
            kept.append(m)
    return kept


def _lot_maker(rng: Rng, zone: int) -> tuple[Callable[[Rng, Frame], list[Building]] | None,
                                             float, float]:
    """(maker or None for an empty lot, setback, gap after) for a lot in ``zone``."""
    u = rng.random()
    if zone == Zone.URBAN:
        setback, gap = rng.uniform(0.8, 3.0), rng.uniform(0.5, 3.0)
        if u < 0.42:
            n = int(rng.integers(3, 9))
            return (lambda r, f: shapes.row(r, f, n)), setback, gap
        if u < 0.64:
            return shapes.apartment, setback, gap
        if u < 0.72:
            return shapes.courtyard, setback, gap
        if u < 0.84:
            return shapes.house, setback, gap
        return (shapes.office if u < 0.92 else None), setback, gap + 10
    if zone == Zone.SUBURBAN:
        setback, gap = rng.uniform(4.0, 9.0), rng.uniform(4.0, 14.0)
        if u < 0.60:
            return shapes.house, setback, gap
        if u < 0.74:
            return (lambda r, f: shapes.row(r, f, 2, "semi-detached")), setback, gap
        if u < 0.82:
            n = int(rng.integers(3, 5))
            return (lambda r, f: shapes.row(r, f, n)), setback, gap
        if u < 0.90:
            return None, setback, rng.uniform(15, 30)

        def with_garage(r: Rng, f: Frame) -> list[Building]:
            out = shapes.house(r, f)
            return out + shapes.garage(r, f, r.uniform(-4, 4), r.uniform(15, 20))
        return with_garage, setback, gap
    if zone == Zone.INDUSTRIAL:
        return shapes.industrial, rng.uniform(6, 15), rng.uniform(8, 25)
    if zone == Zone.RURAL and u < 0.07:
        return shapes.farmstead, rng.uniform(8, 20), rng.uniform(60, 200)
    return None, 0.0, rng.uniform(40, 150)


def _span(members: list[Building], f: Frame) -> tuple[float, float]:
    xy = np.concatenate([np.asarray(m.footprint.exterior.coords) for m in members])
    a = (xy[:, 0] - f.ox) * f.ux + (xy[:, 1] - f.oy) * f.uy
    return float(a.min()), float(a.max())


def street_lots(rng: Rng, net: Network) -> list[Group]:
    out: list[Group] = []
    for road in net.roads:
        line: LineString = road.line
        length = line.length
        if length < 20:
            continue
        ts = np.arange(0.0, length, 5.0)
        pa = shapely.get_coordinates(shapely.line_interpolate_point(line, ts))
        pb = shapely.get_coordinates(
            shapely.line_interpolate_point(line, np.minimum(ts + 1, length)))
        d = pb - pa
        d /= np.maximum(np.hypot(*d.T), 1e-9)[:, None]
        nrm = np.column_stack([-d[:, 1], d[:, 0]])
        for side in (1.0, -1.0):
            probe = pa + nrm * side * (road.width / 2 + 12)
            zones = net.zone_at(probe[:, 0], probe[:, 1])
            t = rng.uniform(0, 10)
            while t < length - 5:
                maker, setback, gap = _lot_maker(rng, int(zones[int(t / 5)]))
                if maker is None:
                    t += gap
                    continue
                state = rng.bit_generator.state
                lo, hi = _span(maker(rng, Frame.make(0, 0, 0)), Frame.make(0, 0, 0))
                rng.bit_generator.state = state
                tc = float(np.clip(t - lo, 0.0, length - 1.0))
                p0, p1 = line.interpolate(tc), line.interpolate(tc + 1.0)
                ang = math.atan2(p1.y - p0.y, p1.x - p0.x)
                off = side * (road.width / 2 + setback)
                f = Frame.make(p0.x - math.sin(ang) * off, p0.y + math.cos(ang) * off, ang, side)
                members = _clean(maker(rng, f))
                if members:
                    pri = rng.random() + (1.0 if members[0].kind == "courtyard" else 0.0)
                    yard = any(m.kind in ("shed", "office", "round", "octagonal") for m in members)
                    out.append(Group(members, pri, 1.2, yard))
                t += (hi - lo) + gap
    return out


def clusters(rng: Rng, net: Network, km2: float) -> list[Group]:
    """Deliberately dense clusters of small buildings, some sharing walls."""
    out: list[Group] = []
    built = [i for i, z in enumerate(net.zones) if z in (Zone.URBAN, Zone.SUBURBAN)]
    if not built:
        return out
    n = max(1, round(km2 * 1.0))
    for _ in range(n * 10):
        if n <= 0:
            break
        cx, cy = rng.uniform(0, net.width), rng.uniform(0, net.height)
        if net.zone_at(np.array([cx]), np.array([cy]))[0] not in (Zone.URBAN, Zone.SUBURBAN):
            continue
        n -= 1
        radius = min(rng.uniform(25, 55), min(net.width, net.height) / 4)
        theta, step = rng.uniform(0, math.pi), rng.uniform(8.5, 10.5)
        e1 = np.array([math.cos(theta), math.sin(theta)])
        e2 = np.array([-e1[1], e1[0]])
        g = np.arange(-radius, radius, step)
        for a in g:
            for b in g:
                if a * a + b * b > radius * radius or rng.random() < 0.1:
                    continue
                p = np.array([cx, cy]) + a * e1 + b * e2 + rng.uniform(-0.8, 0.8, 2)
                f = Frame.make(float(p[0]), float(p[1]), theta + rng.uniform(-0.2, 0.2))
                twin = rng.random() < 0.2
                members = shapes.row(rng, f, 2, "hut") if twin else shapes.hut(rng, f)
                out.append(Group(members, 3.0 + rng.random(), 0.4))
    return out


def select(groups: list[Group], net: Network, obstacles: NDArray[np.object_],
           inner: Polygon) -> list[Group]:
    """Groups that clear roads, obstacles and the scene edge, greedily without conflicts."""
    if not groups:
        return []
    hulls = np.array([g.hull for g in groups], dtype=object)
    ok = shapely.contains(inner, hulls)
    bad = net.road_tree.query(hulls, predicate="dwithin", distance=0.8)[0]
    ok[bad] = False
    if len(obstacles):
        bad = shapely.STRtree(obstacles).query(hulls, predicate="dwithin", distance=1.5)[0]
        ok[bad] = False
    idx = np.flatnonzero(ok)
    if not len(idx):
        return []
    hulls = hulls[idx]
    gap = np.array([groups[i].gap for i in idx])
    pri = np.array([groups[i].priority for i in idx])
    i, j = shapely.STRtree(hulls).query(hulls, predicate="dwithin", distance=float(gap.max()))
    keep = i != j
    i, j = i[keep], j[keep]
    conflict = shapely.distance(hulls[i], hulls[j]) < np.maximum(gap[i], gap[j])
    i, j = i[conflict], j[conflict]
    order = np.argsort(i, kind="stable")
    i, j = i[order], j[order]
    starts = np.searchsorted(i, np.arange(len(idx) + 1))
    accepted = np.zeros(len(idx), bool)
    for g in np.argsort(-pri, kind="stable"):
        if not accepted[j[starts[g]:starts[g + 1]]].any():
            accepted[g] = True
    return [groups[int(k)] for k in idx[accepted]]


def annex(rng: Rng, b: Building) -> shapes.Part | None:
    """An extension attached to one wall of the building's largest part."""
    if b.kind in ("round", "octagonal", "courtyard"):
        return None
    p = max(b.parts, key=lambda q: q.a * q.b)
    nx, ny = -p.uy, p.ux
    side = int(rng.integers(4))
    if side < 2:  # long walls
        s = 1.0 if side == 0 else -1.0
        ox, oy = p.cx + nx * p.b * s, p.cy + ny * p.b * s
        wx, wy, half, outx, outy = p.ux, p.uy, p.a, nx * s, ny * s
    else:
        s = 1.0 if side == 2 else -1.0
        ox, oy = p.cx + p.ux * p.a * s, p.cy + p.uy * p.a * s
        wx, wy, half, outx, outy = nx, ny, p.b, p.ux * s, p.uy * s
    length = min(2 * half, max(4.0, rng.uniform(0.4, 0.8) * 2 * half))
    off = rng.uniform(-(half - length / 2), half - length / 2) if half > length / 2 else 0.0
    depth = rng.uniform(3.0, 7.0)
    f = Frame(ox, oy, wx, wy, outx, outy)
    roof = shapes.FLAT if rng.random() < 0.5 else shapes.GABLE
    return f.rect(off - length / 2, off + length / 2, -0.05, depth, roof, rng.uniform(20, 35),
                  along_u=False)
