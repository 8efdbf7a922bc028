"""The vector "city plan" of a scene, laid out once and globally, then rendered block by block.

Layout happens in plan metres (x east, y south from the top-left corner). :func:`build_plan`
converts everything to what the renderer needs: polygons in world coordinates (the very
polygons written to the GeoPackages) and per-object parameters in global pixel units.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import shapely
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS
from shapely.geometry import Polygon, box

from geoseg.sample import land, placement, shapes
from geoseg.sample.changes import Record, evolve, landscape_changes
from geoseg.sample.noise import subkey
from geoseg.sample.palette import MAT_COLOURS, Mat, mat_colour
from geoseg.sample.shapes import Frame
from geoseg.sample.streets import Network, build_network, cars, markings

log = logging.getLogger(__name__)
F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Obj = NDArray[np.object_]


@dataclass
class Layer:
    """Buildings of one date: footprints by id, and their roof parts (pixel units)."""

    ids: NDArray[np.int64]
    geoms: Obj
    kinds: list[str]
    part_geoms: Obj
    part: F64  # (n, 7): bid, cx, cy, ux, uy, a, b
    part_roof: NDArray[np.uint8]
    part_rise: F32
    tree: shapely.STRtree = field(init=False)
    part_tree: shapely.STRtree = field(init=False)

    def __post_init__(self) -> None:
        self.tree = shapely.STRtree(self.geoms)
        self.part_tree = shapely.STRtree(self.part_geoms)


@dataclass(frozen=True)
class Illumination:
    azimuth: float  # degrees clockwise from north
    elevation: float
    ambient: float
    tint: tuple[float, ...]  # per band: colour of the skylight that fills shadows
    gain: tuple[float, ...]
    haze: tuple[float, ...]
    gamma: float
    noise_dn: float

    def sun(self) -> tuple[float, float, float]:
        """Unit vector towards the sun in the pixel frame (x = column, y = row, z = up)."""
        az, el = math.radians(self.azimuth), math.radians(self.elevation)
        return (math.sin(az) * math.cos(el), -math.cos(az) * math.cos(el), math.sin(el))


@dataclass
class Plan:
    shape: tuple[int, int]
    pixel_size: float
    transform: Affine
    crs: CRS
    seed: int
    key: int
    collar: int
    collar_extra: int
    veg_threshold: float
    base_colour: F32  # (n_mat, 4): scene colour of each base-ground material
    area_geoms: Obj
    area_mat: NDArray[np.uint8]
    area_colour: F32
    area_stripe: F32  # (n, 4): dx, dy, 1 / period (1/px), amplitude
    area_dates: NDArray[np.uint8]
    marks: Obj
    car_geoms: Obj
    car_colour: F32
    trees: F64  # (n, 4): x, y, r (px), height (m)
    tree_colour: F32
    tree_alive: NDArray[np.bool_]  # (n, 2)
    layers: tuple[Layer, Layer]
    wall: F32  # per building id
    roof_colour: F32  # (max id + 1, 4)
    roof_texture: F32
    solar: NDArray[np.bool_]
    illum: tuple[Illumination, Illumination]
    changes: list[tuple[str, int | None, int | None, Polygon]]
    area_tree: shapely.STRtree = field(init=False)
    mark_tree: shapely.STRtree = field(init=False)
    car_tree: shapely.STRtree = field(init=False)

    ground_mat: NDArray[np.uint8] = field(init=False)
    ground_colour: F32 = field(init=False)
    ground_stripe: F32 = field(init=False)

    def __post_init__(self) -> None:
        n_mat = len(self.base_colour)
        self.ground_mat = np.concatenate([self.area_mat, np.arange(n_mat, dtype=np.uint8)])
        self.ground_colour = np.ascontiguousarray(
            np.concatenate([self.area_colour, self.base_colour]).T)
        self.ground_stripe = np.concatenate([self.area_stripe, np.zeros((n_mat, 4), np.float32)])
        self.area_tree = shapely.STRtree(self.area_geoms)
        self.mark_tree = shapely.STRtree(self.marks)
        self.car_tree = shapely.STRtree(self.car_geoms)

    @property
    def max_height(self) -> float:
        return shapes.MAX_HEIGHT_M + 1.5

    def margin(self) -> int:
        """Halo (px) a block needs so shadows and blur cross block edges seamlessly."""
        low = min(i.elevation for i in self.illum)
        return math.ceil(self.max_height / math.tan(math.radians(low)) / self.pixel_size) + 6


def _illumination(rng: np.random.Generator) -> tuple[Illumination, Illumination]:
    az, el = rng.uniform(110, 250), rng.uniform(45, 62)
    amb = rng.uniform(0.32, 0.45)
    gain = rng.uniform(0.9, 1.1, 4)
    haze = rng.uniform(0.0, 0.04) * np.array([0.7, 0.85, 1.0, 0.4])
    gamma = rng.uniform(1.15, 1.35)
    tint = (0.9, 1.0, 1.25, 0.8)
    t0 = Illumination(az, el, amb, tint, tuple(gain.tolist()), tuple(haze.tolist()), gamma, 1.3)
    t1 = Illumination(az + rng.uniform(-10, 10), el + rng.uniform(-4, 3),
                      amb + rng.uniform(-0.04, 0.04), tint,
                      tuple((gain * rng.uniform(0.95, 1.05, 4)).tolist()),
                      tuple((haze * rng.uniform(0.6, 1.5)).tolist()),
                      gamma + rng.uniform(-0.1, 0.1), 1.5)
    return t0, t1


def _world(geoms: Obj, origin: tuple[float, float]) -> Obj:
    ox, oy = origin
    arr = np.asarray(geoms, dtype=object)
    if not len(arr):
        return arr
    return np.asarray(shapely.transform(
        arr, lambda c: np.column_stack([ox + c[:, 0], oy - c[:, 1]])), dtype=object)


def _layer(records: list[Record], date: int, ps: float, origin: tuple[float, float]) -> Layer:
    live = sorted((r for r in records if (r.t0 if date == 0 else r.t1)), key=lambda r: r.id)
    geoms = _world(np.array([r.footprint(date) for r in live], dtype=object), origin)
    parts = [(r.id, p) for r in live for p in r.parts(date)]
    pg = _world(np.array([p.poly for _, p in parts], dtype=object), origin)
    par = np.array([(i, p.cx / ps, p.cy / ps, p.ux, p.uy, p.a / ps, p.b / ps) for i, p in parts],
                   np.float64).reshape(-1, 7)
    return Layer(np.array([r.id for r in live], np.int64), geoms, [r.b.kind for r in live], pg,
                 par, np.array([p.roof for _, p in parts], np.uint8),
                 np.array([p.rise for _, p in parts], np.float32))


def _rows_fallback(rng: np.random.Generator, net: Network) -> list[placement.Group]:
    """Extra terrace candidates so that even a tiny scene has buildings sharing walls."""
    out = []
    for _ in range(60):
        road = net.roads[int(rng.integers(len(net.roads)))]
        t = rng.uniform(0, road.line.length)
        p0, p1 = road.line.interpolate(t), road.line.interpolate(min(t + 1, road.line.length))
        ang = math.atan2(p1.y - p0.y, p1.x - p0.x)
        side = 1.0 if rng.random() < 0.5 else -1.0
        off = side * (road.width / 2 + 2.0)
        f = Frame.make(p0.x - math.sin(ang) * off, p0.y + math.cos(ang) * off, ang, side)
        out.append(placement.Group(shapes.row(rng, f, 3), rng.random(), 1.2))
    return out


def build_plan(shape: tuple[int, int], pixel_size: float, origin: tuple[float, float],
               crs: CRS, seed: int, collar: int) -> Plan:
    h, w = shape
    ps = pixel_size
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence([seed, 0x6E05E6]).spawn(8)]
    key = subkey(seed, 0x5CE4E)
    wm, hm = w * ps, h * ps
    km2 = wm * hm / 1e6
    extra = max(1, collar // 4) if collar else 0
    m = (collar + extra + 2) * ps + 1.0
    inner = box(m, m, wm - m, hm - m)
    net = build_network(streams[0], wm, hm, subkey(key, 1))
    areas = land.water(streams[1], net, km2)
    if not any(a.geom.intersects(inner) for a in areas):
        rng = streams[1]
        for _ in range(200):
            x, y = rng.uniform(inner.bounds[0], inner.bounds[2]), rng.uniform(
                inner.bounds[1], inner.bounds[3])
            poly = land.blob(rng, x, y, min(rng.uniform(8, 20), min(wm, hm) / 8), 0.3)
            if not len(net.road_tree.query(poly, predicate="dwithin", distance=3.0)):
                areas += land.water_body(rng, poly)
                break
    areas += land.fields(streams[2], net) + land.greens(streams[2], net, km2)
    obstacles = np.array([a.geom for a in areas if a.priority in (land.WATER, land.PARK,
                                                                   land.FOREST, land.LOT)],
                         dtype=object)
    cands = placement.street_lots(streams[3], net) + placement.clusters(streams[3], net, km2)
    groups = placement.select(cands, net, obstacles, inner)
    if not any(len(g.members) > 1 and g.members[0].kind != "farmstead" for g in groups):
        for g in groups:
            g.priority += 10.0
        groups = placement.select(groups + _rows_fallback(streams[3], net), net, obstacles, inner)
    evo = evolve(streams[4], groups, net, obstacles, inner)
    areas += evo.areas
    fps = np.array([r.footprint(d) for r in evo.records for d in (0, 1)], dtype=object)
    water_geoms = np.array([a.geom for a in areas if a.priority == land.WATER], dtype=object)
    areas += landscape_changes(streams[5], net, areas, np.concatenate([fps, water_geoms]), inner,
                               km2)
    trees = land.plant(streams[6], net, areas, np.concatenate([fps, water_geoms]), km2)
    t1_only = np.array([a.geom for a in areas if a.dates == 2], dtype=object)
    alive = np.ones((len(trees.x), 2), bool)
    if len(t1_only) and len(trees.x):
        ti, _ = shapely.STRtree(t1_only).query(shapely.points(trees.x, trees.y),
                                               predicate="dwithin", distance=1.0)
        alive[ti, 1] = False
    areas.sort(key=lambda a: a.priority)
    rng = streams[7]
    area_geoms = [a.geom for a in areas] + list(net.polys)
    area_mat = [int(a.mat) for a in areas] + [int(r.mat) for r in net.roads]
    area_col = [a.colour for a in areas] + [r.colour for r in net.roads]
    stripes = [(a.stripe[0], a.stripe[1], ps / a.stripe[2] if a.stripe[2] else 0.0, a.stripe[3])
               for a in areas] + [(0.0, 0.0, 0.0, 0.0)] * len(net.roads)
    dates = [a.dates for a in areas] + [3] * len(net.roads)
    car_geoms, car_col = cars(rng, net)
    n_ids = len(evo.records) + 1
    wall = np.zeros(n_ids, np.float32)
    roof = np.zeros((n_ids, 4), np.float32)
    tex = np.zeros(n_ids, np.float32)
    solar = np.zeros(n_ids, bool)
    for r in evo.records:
        wall[r.id], roof[r.id] = r.b.wall, r.b.colour
        tex[r.id], solar[r.id] = r.b.texture, r.b.solar
    base = np.stack([mat_colour(rng, Mat(i), 0.06) if Mat(i) in MAT_COLOURS else np.zeros(4)
                     for i in range(len(Mat))]).astype(np.float32)
    plan = Plan(
        shape=(h, w), pixel_size=ps,
        transform=Affine(ps, 0.0, origin[0], 0.0, -ps, origin[1]), crs=crs, seed=seed, key=key,
        collar=collar, collar_extra=extra, veg_threshold=float(rng.uniform(0.44, 0.56)),
        base_colour=base,
        area_geoms=_world(np.array(area_geoms, dtype=object), origin),
        area_mat=np.array(area_mat, np.uint8), area_colour=np.array(area_col, np.float32),
        area_stripe=np.array(stripes, np.float32).reshape(-1, 4),
        area_dates=np.array(dates, np.uint8),
        marks=_world(markings(net), origin), car_geoms=_world(car_geoms, origin),
        car_colour=car_col,
        trees=np.column_stack([trees.x / ps, trees.y / ps, trees.r / ps, trees.h]),
        tree_colour=trees.colour, tree_alive=alive,
        layers=(_layer(evo.records, 0, ps, origin), _layer(evo.records, 1, ps, origin)),
        wall=wall, roof_colour=roof, roof_texture=tex, solar=solar,
        illum=_illumination(rng), changes=[(c, a, b, _world(np.array([g], dtype=object), origin)[0])
                                          for c, a, b, g in evo.changes])
    log.debug("plan: %d roads, %d areas, %d/%d buildings, %d trees", len(net.roads), len(areas),
              len(plan.layers[0].ids), len(plan.layers[1].ids), len(trees.x))
    return plan
