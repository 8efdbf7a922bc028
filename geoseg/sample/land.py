"""Land areas of the plan: water, fields, forests, parks, lots; and where trees stand.

Areas are polygons in plan metres with a material, a per-object colour and an optional stripe
pattern (crop rows, mowing lines). They are drawn in ``priority`` order; roads come on top of
all of them and buildings and tree crowns on top of roads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely import affinity
from shapely.geometry import LineString, Polygon, box

from geoseg.sample.noise import noise_at
from geoseg.sample.palette import Mat, mat_colour, tree_colours
from geoseg.sample.streets import Network, Zone, crossing_curve

Rng = np.random.Generator
FIELD, PARK, FOREST, LOT, CHANGE, WATER = range(6)


@dataclass
class Area:
    geom: Polygon
    mat: Mat
    colour: NDArray[np.float32]
    priority: int
    dates: int = 3  # bit 0: exists at t0, bit 1: exists at t1
    stripe: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # dx, dy, period m, amp


def blob(rng: Rng, cx: float, cy: float, radius: float, rough: float = 0.3) -> Polygon:
    """A smooth irregular closed shape (lakes, forests, clearings)."""
    ang = np.linspace(0, 2 * math.pi, 56, endpoint=False)
    r = np.ones_like(ang)
    for k in range(2, 6):
        r += rough * rng.uniform(0, 1) / k * np.sin(k * ang + rng.uniform(0, 2 * math.pi))
    poly = Polygon(np.column_stack([cx + radius * r * np.cos(ang), cy + radius * r * np.sin(ang)]))
    return poly if poly.is_valid else shapely.make_valid(poly).geoms[0]


def _free(net: Network, geom: Polygon, clearance: float) -> bool:
    return len(net.road_tree.query(geom, predicate="dwithin", distance=clearance)) == 0


def _points_in(rng: Rng, poly: Polygon, n: int) -> NDArray[np.float64]:
    x0, y0, x1, y1 = poly.bounds
    xy = rng.uniform((x0, y0), (x1, y1), (max(n, 1) * 3, 2))
    return xy[shapely.contains_xy(poly, xy[:, 0], xy[:, 1])][:n]


def water(rng: Rng, net: Network, km2: float) -> list[Area]:
    w, h = net.width, net.height
    out: list[Area] = []
    if rng.random() < (0.6 if km2 > 1 else 0.3):
        out += water_body(rng, shapely.buffer(_meander(rng, crossing_curve(rng, w, h, 0.25)),
                                              rng.uniform(9, 25), cap_style="flat"))
    extent = min(w, h)
    for kind, count in (("lake", rng.poisson(km2 * 0.3)), ("pond", rng.poisson(km2 * 2.5) + 1)):
        for _ in range(int(count) * 4):
            if count <= 0:
                break
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            zone = int(net.zone_at(np.array([cx]), np.array([cy]))[0])
            if zone in (Zone.URBAN, Zone.INDUSTRIAL):
                continue
            rad = rng.uniform(40, 180) if kind == "lake" else rng.uniform(7, 24)
            poly = blob(rng, cx, cy, min(rad, extent * 0.2), 0.35)
            if _free(net, poly, 4.0):
                out += water_body(rng, poly)
                count -= 1
    return out


def _meander(rng: Rng, xy: NDArray[np.float64]) -> LineString:
    """The curve with river-like lateral swings added."""
    d = np.gradient(xy, axis=0)
    d /= np.maximum(np.hypot(*d.T), 1e-9)[:, None]
    s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
    off = np.zeros_like(s)
    for lam, amp in ((rng.uniform(250, 500), rng.uniform(15, 50)),
                     (rng.uniform(90, 180), rng.uniform(4, 15))):
        off += amp * np.sin(2 * math.pi * s / lam + rng.uniform(0, 2 * math.pi))
    return LineString(xy + np.column_stack([-d[:, 1], d[:, 0]]) * off[:, None])


def water_body(rng: Rng, poly: Polygon, dates: int = 3) -> list[Area]:
    """A water polygon as a lighter shallow rim around a deeper interior (both water)."""
    deep = mat_colour(rng, Mat.WATER, 0.15)
    shallow = (deep * 0.55 + np.array([0.30, 0.32, 0.24, 0.08], np.float32) * 0.45)
    out = [Area(poly, Mat.WATER, shallow.astype(np.float32), WATER, dates)]
    inner = shapely.buffer(poly, -rng.uniform(1.5, 4.0))
    if not inner.is_empty:
        out.append(Area(inner, Mat.WATER, deep, WATER, dates))
    return out


def fields(rng: Rng, net: Network) -> list[Area]:
    out: list[Area] = []
    mats = [Mat.CROP, Mat.CROP, Mat.CROP, Mat.PLOUGHED, Mat.MEADOW, Mat.DRY_GRASS, Mat.SOIL]
    scene = box(-50, -50, net.width + 50, net.height + 50)
    for cell, zone, theta in zip(net.cells, net.zones, net.thetas, strict=True):
        if zone != Zone.RURAL or not cell.intersects(scene):
            continue
        e1 = np.array([math.cos(theta), math.sin(theta)])
        e2 = np.array([-e1[1], e1[0]])
        xy = np.asarray(cell.exterior.coords)
        p1, p2 = xy @ e1, xy @ e2
        inner = shapely.intersection(cell.buffer(-4.0), scene)
        b = p2.min()
        while b < p2.max():
            wd = rng.uniform(30, 120)
            a = p1.min() - rng.uniform(0, 100)
            while a < p1.max():
                ln = rng.uniform(80, 350)
                corners = [a * e1 + b * e2, (a + ln) * e1 + b * e2, (a + ln) * e1 + (b + wd) * e2,
                           a * e1 + (b + wd) * e2]
                poly = shapely.intersection(Polygon(corners).buffer(-1.5, join_style="mitre"),
                                            inner)
                a += ln
                if poly.is_empty or poly.area < 400 or rng.random() < 0.12:
                    continue
                mat = mats[int(rng.integers(len(mats)))]
                along = e1 if rng.random() < 0.7 else e2
                stripe = (float(along[1]), float(-along[0]), rng.uniform(1.2, 3.0),
                          rng.uniform(0.04, 0.12) if mat != Mat.MEADOW else 0.0)
                for g in getattr(poly, "geoms", [poly]):
                    if isinstance(g, Polygon) and g.area > 200:
                        out.append(Area(g, mat, mat_colour(rng, mat, 0.1), FIELD, 3, stripe))
            b += wd
    return out


def greens(rng: Rng, net: Network, km2: float) -> list[Area]:
    """Forests (rural), parks (park districts, small urban lawns) and bare lots."""
    out: list[Area] = []
    w, h = net.width, net.height
    n_forest = int(rng.poisson(km2 * 0.6)) + 1
    for _ in range(n_forest * 6):
        if n_forest <= 0:
            break
        cx, cy = rng.uniform(-50, w + 50), rng.uniform(-50, h + 50)
        if int(net.zone_at(np.array([cx]), np.array([cy]))[0]) not in (Zone.RURAL, Zone.PARK):
            continue
        rad = min(rng.uniform(60, 300), min(w, h) * 0.3)
        out.append(Area(blob(rng, cx, cy, rad, 0.45), Mat.FOREST_FLOOR,
                        mat_colour(rng, Mat.FOREST_FLOOR), FOREST))
        n_forest -= 1
    scene = box(-50, -50, w + 50, h + 50)
    for cell, zone in zip(net.cells, net.zones, strict=True):
        if not cell.intersects(scene):
            continue
        if zone == Zone.PARK:
            lawn = cell.buffer(-6.0)
            if not lawn.is_empty:
                ang = rng.uniform(0, math.pi)
                out.append(Area(lawn, Mat.GRASS, mat_colour(rng, Mat.GRASS), PARK, 3,
                                (math.cos(ang), math.sin(ang), rng.uniform(2.5, 5), 0.05)))
        elif zone in (Zone.URBAN, Zone.SUBURBAN, Zone.INDUSTRIAL):
            for _ in range(int(rng.poisson(1.2))):
                pts = _points_in(rng, cell, 1)
                if not len(pts):
                    continue
                x, y = pts[0]
                sw, sh, ang = rng.uniform(20, 70), rng.uniform(20, 60), rng.uniform(0, math.pi)
                poly = affinity.rotate(box(x - sw / 2, y - sh / 2, x + sw / 2, y + sh / 2),
                                               ang, use_radians=True)
                if not _free(net, poly, 1.0):
                    continue
                if rng.random() < 0.55:
                    out.append(Area(poly, Mat.GRASS, mat_colour(rng, Mat.GRASS), PARK))
                else:
                    mat = [Mat.SAND, Mat.SOIL, Mat.RUBBLE, Mat.YARD][int(rng.integers(4))]
                    out.append(Area(poly, mat, mat_colour(rng, mat), LOT))
    return out


@dataclass
class Trees:
    x: NDArray[np.float64]
    y: NDArray[np.float64]
    r: NDArray[np.float64]
    h: NDArray[np.float64]
    colour: NDArray[np.float32]


def _along(line: LineString, step: float, offset: float, rng: Rng) -> NDArray[np.float64]:
    t = np.arange(rng.uniform(0, step), line.length, step)
    if not len(t):
        return np.empty((0, 2))
    a = shapely.get_coordinates(shapely.line_interpolate_point(line, t))
    b = shapely.get_coordinates(
        shapely.line_interpolate_point(line, np.minimum(t + 1, line.length)))
    d = b - a
    n = np.column_stack([-d[:, 1], d[:, 0]]) / np.maximum(np.hypot(*d.T), 1e-9)[:, None]
    return a + n * offset


def plant(rng: Rng, net: Network, areas: list[Area], obstacles: NDArray[np.object_],
          km2: float) -> Trees:
    """Tree positions: forests, parks, gardens, streets, hedgerows, scattered; off obstacles."""
    groups: list[tuple[NDArray[np.float64], tuple[float, float], tuple[float, float]]] = []
    for a in areas:
        if a.dates != 3:
            continue
        if a.priority == FOREST:
            x0, y0, x1, y1 = a.geom.bounds
            s = rng.uniform(4.5, 6.0)
            gx, gy = np.meshgrid(np.arange(x0, x1, s), np.arange(y0, y1, s))
            xy = np.column_stack([gx.ravel(), gy.ravel()])
            xy += rng.uniform(-0.4, 0.4, (gx.size, 2)) * s
            xy = xy[shapely.contains_xy(a.geom, xy[:, 0], xy[:, 1])]
            groups.append((xy, (2.0, 4.2), (9.0, 16.0)))
        elif a.priority == PARK:
            xy = _points_in(rng, a.geom, int(a.geom.area / 60))
            clump = noise_at(xy[:, 0], xy[:, 1], 60.0, int(rng.integers(1 << 30)))
            groups.append((xy[clump > 0.55], (2.0, 5.0), (6, 15)))
        elif a.priority == FIELD and rng.random() < 0.25:
            ring = LineString(a.geom.exterior.coords)
            groups.append((_along(ring, rng.uniform(3.0, 5.0), 0.0, rng), (1.5, 3.0), (4, 9)))
        elif a.priority == WATER and a.geom.area > 3000:
            bank = shapely.buffer(a.geom, 4.5)
            for ring in getattr(bank, "geoms", [bank]):
                xy = _along(LineString(ring.exterior.coords), 5.0, 0.0, rng)
                groups.append((xy[rng.random(len(xy)) < 0.55], (2.0, 3.8), (6, 14)))
    for road in net.roads:
        if road.kind == "local" and rng.random() < 0.35:
            for side in (1.0, -1.0):
                xy = _along(road.line, rng.uniform(8, 12), side * (road.width / 2 + 1.5), rng)
                groups.append((xy, (2.0, 3.5), (6, 12)))
    w, h = net.width, net.height
    xy = rng.uniform((0, 0), (w, h), (int(km2 * 14000), 2))
    zone = net.zone_at(xy[:, 0], xy[:, 1])
    keep = rng.random(len(xy)) < np.choose(zone, [0.04, 0.9, 0.25, 0.05, 0.3])
    groups.append((xy[keep], (1.8, 4.5), (5, 13)))
    xs, rs, hs = [], [], []
    for pts, (r0, r1), (h0, h1) in groups:
        if len(pts):
            xs.append(pts)
            rs.append(rng.uniform(r0, r1, len(pts)))
            hs.append(rng.uniform(h0, h1, len(pts)))
    pts = np.concatenate(xs) if xs else np.empty((0, 2))
    r = np.concatenate(rs) if rs else np.empty(0)
    hh = np.concatenate(hs) if hs else np.empty(0)
    keep = _clear_of(pts, r, net.polys, 0.8, 0.0) & _clear_of(pts, r, obstacles, 1.0, 0.6)
    pts, r, hh = pts[keep], r[keep], np.minimum(hh[keep], 16.0)
    return Trees(pts[:, 0], pts[:, 1], r, hh, tree_colours(rng, len(r)))


def _clear_of(xy: NDArray[np.float64], r: NDArray[np.float64], geoms: NDArray[np.object_],
              k: float, extra: float) -> NDArray[np.bool_]:
    """Points whose distance to every geometry is at least ``k * r + extra``."""
    ok = np.ones(len(xy), bool)
    if not len(xy) or not len(geoms):
        return ok
    pts = shapely.points(xy)
    tree = shapely.STRtree(geoms)
    pi, gi = tree.query(pts, predicate="dwithin", distance=float(k * r.max() + extra))
    if len(pi):
        d = shapely.distance(pts[pi], geoms[gi])
        ok[pi[d < k * r[pi] + extra]] = False
    return ok
