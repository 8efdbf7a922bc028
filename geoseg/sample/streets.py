"""Districts (land-use zones) and the road network: arterials, collectors, local streets.

Districts are Voronoi cells of a jittered grid of centres; each gets a zone from a smooth
urbanisation field around a random city centre. Collector roads follow cell boundaries, local
street grids fill urban cells (some curved), arterials cross the whole scene. Everything is in
plan metres (x east, y south).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import LineString, MultiPoint, Polygon, box
from shapely.ops import substring

from geoseg.sample.noise import noise_at, subkey
from geoseg.sample.palette import CAR_COLOURS, Mat, mat_colour, pick_colour

Rng = np.random.Generator


class Zone(IntEnum):
    RURAL = 0
    SUBURBAN = 1
    URBAN = 2
    INDUSTRIAL = 3
    PARK = 4


@dataclass
class Road:
    line: LineString
    width: float
    mat: Mat
    kind: str  # arterial, collector, local, lane
    colour: NDArray[np.float32]


@dataclass
class Network:
    width: float  # scene extent (m)
    height: float
    cells: list[Polygon]
    zones: NDArray[np.int64]
    thetas: NDArray[np.float64]
    roads: list[Road]
    polys: NDArray[np.object_]  # road polygons, drawing order
    cell_tree: shapely.STRtree
    road_tree: shapely.STRtree

    def zone_at(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.int64]:
        """Zone of each point (rural outside every cell)."""
        pts = shapely.points(x, y)
        hit_pt, hit_cell = self.cell_tree.query(pts, predicate="within")
        out = np.zeros(len(pts), np.int64)
        out[hit_pt] = self.zones[hit_cell]
        return out

    def district_at(self, x: float, y: float) -> int:
        hits = self.cell_tree.query(shapely.Point(x, y), predicate="within")
        return int(hits[0]) if len(hits) else -1


def _districts(rng: Rng, w: float, h: float, key: int) -> tuple[list[Polygon], NDArray[np.float64]]:
    s = float(np.clip(min(w, h) / 2.2, 140.0, 520.0))
    gx = np.arange(-s, w + 2 * s, s)
    gy = np.arange(-s, h + 2 * s, s)
    px, py = np.meshgrid(gx, gy)
    pts = np.column_stack([px.ravel(), py.ravel()]) + rng.uniform(-0.35, 0.35, (px.size, 2)) * s
    env = box(-3 * s, -3 * s, w + 3 * s, h + 3 * s)
    vor = shapely.voronoi_polygons(MultiPoint(pts), extend_to=env, ordered=True)
    cells = [shapely.intersection(c, env) for c in vor.geoms]
    return cells, pts


def _zones(rng: Rng, pts: NDArray[np.float64], w: float, h: float, key: int) -> NDArray[np.int64]:
    cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
    scale = max(w, h) * 0.3 + 200.0
    d = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy)
    u = 0.55 / (1.0 + (d / scale) ** 2) + 0.5 * noise_at(pts[:, 0], pts[:, 1], 2200.0, key)
    zones = np.where(u > 0.68, Zone.URBAN, np.where(u > 0.48, Zone.SUBURBAN, Zone.RURAL))
    r = rng.random(len(pts))
    zones = np.where((zones != Zone.RURAL) & (r < 0.12), Zone.INDUSTRIAL, zones)
    zones = np.where((zones != Zone.RURAL) & (r > 0.92), Zone.PARK, zones)
    inside = (pts[:, 0] > 0) & (pts[:, 0] < w) & (pts[:, 1] > 0) & (pts[:, 1] < h)
    if not np.any(inside & ((zones == Zone.URBAN) | (zones == Zone.SUBURBAN))):
        near = int(np.argmin(np.hypot(pts[:, 0] - w / 2, pts[:, 1] - h / 2)))
        zones[near] = Zone.URBAN if rng.random() < 0.5 else Zone.SUBURBAN
    return zones.astype(np.int64)


def _bezier(p: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    t = np.linspace(0.0, 1.0, n)[:, None]
    return ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t ** 2 * p[2]
            + t ** 3 * p[3])


def crossing_curve(rng: Rng, w: float, h: float, bend: float) -> NDArray[np.float64]:
    """A smooth curve from one side of the scene to the opposite side (extending past both)."""
    m = 80.0
    if rng.random() < 0.5:
        p0 = np.array([-m, rng.uniform(0.1, 0.9) * h])
        p3 = np.array([w + m, rng.uniform(0.1, 0.9) * h])
    else:
        p0 = np.array([rng.uniform(0.1, 0.9) * w, -m])
        p3 = np.array([rng.uniform(0.1, 0.9) * w, h + m])
    d = p3 - p0
    nrm = np.array([-d[1], d[0]]) / np.hypot(*d)
    p1 = p0 + d / 3 + nrm * rng.uniform(-bend, bend) * np.hypot(*d)
    p2 = p0 + 2 * d / 3 + nrm * rng.uniform(-bend, bend) * np.hypot(*d)
    n = max(8, int(np.hypot(*d) / 15))
    return _bezier(np.stack([p0, p1, p2, p3]), n)


def _grid_streets(rng: Rng, cell: Polygon, zone: int, theta: float) -> list[LineString]:
    sx, sy = {Zone.URBAN: ((70, 110), (50, 80)), Zone.SUBURBAN: ((110, 170), (50, 70)),
              Zone.INDUSTRIAL: ((120, 200), (90, 150))}[Zone(zone)]
    e1 = np.array([math.cos(theta), math.sin(theta)])
    e2 = np.array([-e1[1], e1[0]])
    xy = np.asarray(cell.exterior.coords)
    p1, p2 = xy @ e1, xy @ e2
    wobble = zone == Zone.SUBURBAN and rng.random() < 0.45
    inner = cell.buffer(-1.0)
    out: list[LineString] = []
    for along, across, (lo, hi), span in ((e1, e2, (p2.min(), p2.max()), (p1.min(), p1.max())),
                                          (e2, e1, (p1.min(), p1.max()), (p2.min(), p2.max()))):
        step = rng.uniform(*(sy if along is e1 else sx))
        offs = np.arange(lo + rng.uniform(0.3, 0.7) * step, hi, step)
        t = np.arange(span[0] - 20, span[1] + 20, 10.0)
        for o in offs:
            if rng.random() < 0.08:
                continue
            shift = np.zeros_like(t)
            if wobble:
                shift = rng.uniform(6, 16) * np.sin(t / rng.uniform(40, 70) + rng.uniform(0, 6.3))
            pts = t[:, None] * along + (o + shift)[:, None] * across
            clipped = shapely.intersection(LineString(pts), inner)
            for g in getattr(clipped, "geoms", [clipped]):
                if isinstance(g, LineString) and g.length > 25:
                    if rng.random() < 0.1:  # dead end
                        g = substring(g, 0, g.length * rng.uniform(0.4, 0.8))
                    out.append(g)
    return out


def build_network(rng: Rng, w: float, h: float, key: int) -> Network:
    cells, pts = _districts(rng, w, h, key)
    zones = _zones(rng, pts, w, h, subkey(key, 1))
    thetas = rng.uniform(0, math.pi, len(pts))
    roads: list[Road] = []
    # collectors and lanes on district boundaries
    edges = shapely.voronoi_polygons(MultiPoint(pts), only_edges=True,
                                     extend_to=box(0, 0, w, h))
    for e in getattr(edges, "geoms", []):
        mid = np.asarray(e.interpolate(0.5, normalized=True).coords[0])
        near = np.argsort(np.hypot(pts[:, 0] - mid[0], pts[:, 1] - mid[1]))[:2]
        za, zb = int(zones[near[0]]), int(zones[near[1]])
        built = {za, zb} - {Zone.RURAL, Zone.PARK}
        if built:
            mat = Mat.ASPHALT if rng.random() < 0.8 else Mat.CONCRETE
            roads.append(Road(e, rng.uniform(8, 10.5), mat, "collector", mat_colour(rng, mat)))
        elif Zone.PARK not in (za, zb) and rng.random() < 0.45:
            mat = Mat.GRAVEL if rng.random() < 0.5 else Mat.ASPHALT
            roads.append(Road(e, rng.uniform(6, 7), mat, "lane", mat_colour(rng, mat)))
    for cell, zone, theta in zip(cells, zones, thetas, strict=True):
        if zone in (Zone.URBAN, Zone.SUBURBAN, Zone.INDUSTRIAL) and cell.intersects(
                box(-50, -50, w + 50, h + 50)):
            lo, hi = {Zone.URBAN: (7, 9), Zone.SUBURBAN: (6, 7.5), Zone.INDUSTRIAL: (8, 10)}[
                Zone(int(zone))]
            for line in _grid_streets(rng, cell, int(zone), float(theta)):
                mat = Mat.ASPHALT if rng.random() < 0.85 else Mat.CONCRETE
                roads.append(Road(line, rng.uniform(lo, hi), mat, "local", mat_colour(rng, mat)))
    n_art = max(1, round(math.sqrt(w * h) / 900))
    for _ in range(n_art):
        line = LineString(crossing_curve(rng, w, h, 0.12))
        roads.append(Road(line, rng.uniform(11, 14), Mat.ASPHALT, "arterial",
                          mat_colour(rng, Mat.ASPHALT)))
    order = {"lane": 0, "local": 1, "collector": 2, "arterial": 3}
    roads.sort(key=lambda r: order[r.kind])
    polys = np.array([shapely.buffer(r.line, r.width / 2, quad_segs=4) for r in roads],
                     dtype=object)
    cell_arr = np.array(cells, dtype=object)
    return Network(w, h, cells, zones, thetas, roads, polys, shapely.STRtree(cell_arr),
                   shapely.STRtree(polys))


def _others(net: Network, geoms: NDArray[np.object_], own: int) -> NDArray[np.bool_]:
    """Which ``geoms`` touch a road other than road ``own`` (i.e. lie in an intersection)."""
    gi, ri = net.road_tree.query(geoms, predicate="intersects")
    bad = np.zeros(len(geoms), bool)
    bad[gi[ri != own]] = True
    return bad


def markings(net: Network) -> NDArray[np.object_]:
    """Dashed centre lines and solid edge lines of the wide roads (render-only polygons)."""
    out: list[NDArray[np.object_]] = []
    for i, r in enumerate(net.roads):
        if r.width < 9.5 or r.mat == Mat.GRAVEL:
            continue
        t = np.arange(2.0, r.line.length - 3.0, 9.0)
        if len(t):
            a = shapely.get_coordinates(shapely.line_interpolate_point(r.line, t))
            b = shapely.get_coordinates(shapely.line_interpolate_point(r.line, t + 3.0))
            dashes = shapely.buffer(shapely.linestrings(np.stack([a, b], 1)), 0.1,
                                    cap_style="flat")
            out.append(dashes[~_others(net, dashes, i)])
        if r.kind == "arterial":
            for side in (1, -1):
                edge = shapely.buffer(shapely.offset_curve(r.line, side * (r.width / 2 - 0.7)),
                                      0.1, cap_style="flat")
                near = net.road_tree.query(edge, predicate="intersects")
                near = near[near != i]
                if len(near):
                    edge = shapely.difference(
                        edge, shapely.union_all(shapely.buffer(net.polys[near], 1.5)))
                out.append(np.array([edge], dtype=object))
    return np.concatenate(out) if out else np.empty(0, dtype=object)


def cars(rng: Rng, net: Network) -> tuple[NDArray[np.object_], NDArray[np.float32]]:
    """Parked cars along urban streets and moving cars on arterials (render-only)."""
    geoms: list[NDArray[np.object_]] = []
    cols: list[NDArray[np.float32]] = []
    for i, r in enumerate(net.roads):
        if r.kind == "lane":
            continue
        gap = (8.0, 40.0) if r.kind == "local" else (20.0, 90.0)
        t = np.cumsum(rng.uniform(*gap, int(r.line.length / gap[0]) + 1))
        t = t[t < r.line.length - 3]
        if not len(t):
            continue
        a = shapely.get_coordinates(shapely.line_interpolate_point(r.line, t - 0.5))
        b = shapely.get_coordinates(shapely.line_interpolate_point(r.line, t + 0.5))
        d = (b - a) / np.maximum(np.hypot(*(b - a).T), 1e-9)[:, None]
        n = np.column_stack([-d[:, 1], d[:, 0]])
        lane = r.width / 2 - 1.3 if r.kind == "local" else r.width / 4
        c = (a + b) / 2 + n * (lane * rng.choice([-1.0, 1.0], len(t)))[:, None]
        ln, wd = rng.uniform(4.0, 4.8, len(t))[:, None], rng.uniform(1.7, 1.9, len(t))[:, None]
        corners = [c + d * ln / 2 + n * wd / 2, c - d * ln / 2 + n * wd / 2,
                   c - d * ln / 2 - n * wd / 2, c + d * ln / 2 - n * wd / 2]
        poly = shapely.polygons(np.stack(corners, 1))
        keep = ~_others(net, poly, i)
        geoms.append(poly[keep])
        cols.append(np.stack([pick_colour(rng, CAR_COLOURS, 0.05) for _ in range(int(keep.sum()))]
                             ) if keep.any() else np.empty((0, 4), np.float32))
    if not geoms:
        return np.empty(0, dtype=object), np.empty((0, 4), np.float32)
    return np.concatenate(geoms), np.concatenate(cols).astype(np.float32)
