"""Building shapes in a local street frame: rectangles, L, T, courtyards, rows, sheds, silos.

A building is a union of *parts* (rectangles or regular polygons); every part carries its own
roof (flat, gable, hip or dome) so that compound buildings get cross-gabled roofs. Coordinates
are plan metres (x east, y south, origin at the scene's top-left corner).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import Polygon

from geoseg.sample.palette import ROOF_COLOURS, pick_colour

FLAT, GABLE, HIP, DOME = 0, 1, 2, 3
MAX_HEIGHT_M = 18.0
Rng = np.random.Generator


@dataclass
class Part:
    poly: Polygon
    cx: float
    cy: float
    ux: float  # ridge direction (unit)
    uy: float
    a: float  # half length along the ridge
    b: float  # half width across the ridge
    roof: int
    rise: float


@dataclass
class Building:
    kind: str
    parts: list[Part]
    wall: float
    colour: NDArray[np.float32]
    texture: float
    solar: bool
    footprint: Polygon = field(init=False)

    def __post_init__(self) -> None:
        self.parts.sort(key=lambda p: p.rise)
        if len(self.parts) == 1:
            self.footprint = self.parts[0].poly
        else:
            u = shapely.union_all([p.poly for p in self.parts])
            self.footprint = u if isinstance(u, Polygon) else shapely.convex_hull(u)


@dataclass(frozen=True)
class Frame:
    """Local frame: ``a`` along the street (unit ``u``), ``b`` away from it (unit ``v``)."""

    ox: float
    oy: float
    ux: float
    uy: float
    vx: float
    vy: float

    @staticmethod
    def make(x: float, y: float, angle: float, side: float = 1.0) -> Frame:
        ux, uy = math.cos(angle), math.sin(angle)
        return Frame(x, y, ux, uy, -uy * side, ux * side)

    def pt(self, a: float, b: float) -> tuple[float, float]:
        return (self.ox + a * self.ux + b * self.vx, self.oy + a * self.uy + b * self.vy)

    def rect(self, a0: float, a1: float, b0: float, b1: float, roof: int, pitch: float,
             along_u: bool | None = None) -> Part:
        """Rectangle part; the ridge runs along the longer side unless ``along_u`` says."""
        poly = Polygon([self.pt(a0, b0), self.pt(a1, b0), self.pt(a1, b1), self.pt(a0, b1)])
        cx, cy = self.pt((a0 + a1) / 2, (b0 + b1) / 2)
        la, lb = (a1 - a0) / 2, (b1 - b0) / 2
        if along_u is None:
            along_u = la >= lb
        if along_u:
            ux, uy, a, b = self.ux, self.uy, la, lb
        else:
            ux, uy, a, b = self.vx, self.vy, lb, la
        rise = 0.0 if roof == FLAT else b * math.tan(math.radians(pitch))
        return Part(poly, cx, cy, ux, uy, a, b, roof, rise)

    def disc(self, a: float, b: float, radius: float, sides: int) -> Part:
        cx, cy = self.pt(a, b)
        ang = np.arange(sides) * (2 * math.pi / sides) + math.atan2(self.uy, self.ux)
        poly = Polygon(np.column_stack([cx + radius * np.cos(ang), cy + radius * np.sin(ang)]))
        return Part(poly, cx, cy, self.ux, self.uy, radius, radius, DOME, 0.35 * radius)


HOUSE_ROOFS = [0, 1, 2, 3, 6, 9]
FLAT_ROOFS = [2, 3, 4, 5, 10]
METAL_ROOFS = [3, 4, 5, 7, 8]


def _colour(rng: Rng, choices: list[int], jitter: float = 0.08) -> NDArray[np.float32]:
    return pick_colour(rng, [ROOF_COLOURS[i] for i in choices], jitter)


def _pitched(rng: Rng, p_flat: float, p_hip: float) -> int:
    u = rng.random()
    return FLAT if u < p_flat else HIP if u < p_flat + p_hip else GABLE


def _make(kind: str, parts: list[Part], wall: float, colour: NDArray[np.float32], rng: Rng,
          texture: float = 0.10) -> Building:
    top = max(p.rise for p in parts)
    wall = min(wall, MAX_HEIGHT_M - top)
    solar = bool(rng.random() < 0.12) and any(p.roof == GABLE for p in parts)
    return Building(kind, parts, wall, colour, texture, solar)


def house(rng: Rng, f: Frame) -> list[Building]:
    """Detached house: rectangle (most), L or T plan."""
    u = rng.random()
    pitch = rng.uniform(25, 42)
    col = _colour(rng, HOUSE_ROOFS)
    wall = rng.uniform(3.0, 6.5)
    if u < 0.62:
        w, d = rng.uniform(8, 14), rng.uniform(7, 12)
        roof = _pitched(rng, 0.10, 0.25)
        return [_make("rect", [f.rect(-w / 2, w / 2, 0, d, roof, pitch)], wall, col, rng)]
    w, d = rng.uniform(10, 16), rng.uniform(7, 10)
    ww, ext = rng.uniform(5, 8), rng.uniform(4, 9)
    main = f.rect(-w / 2, w / 2, 0, d, GABLE, pitch, along_u=True)
    if u < 0.85:
        a0 = w / 2 - ww if rng.random() < 0.5 else -w / 2
        kind = "L"
    else:
        a0, kind = -ww / 2, "T"
    wing = f.rect(a0, a0 + ww, d * 0.45, d + ext, GABLE, pitch, along_u=False)
    return [_make(kind, [main, wing], wall, col, rng)]


def row(rng: Rng, f: Frame, n: int, kind: str = "row-house") -> list[Building]:
    """Terraced houses sharing walls: separate buildings with varied roof colours."""
    widths = rng.uniform(5.0, 8.0, n) if kind == "row-house" else np.full(n, rng.uniform(6, 9))
    edges = np.concatenate([[0.0], np.cumsum(widths)]) - widths.sum() / 2
    d, pitch = rng.uniform(9, 13), rng.uniform(28, 40)
    family = _colour(rng, HOUSE_ROOFS)
    wall = rng.uniform(5.5, 9.0)
    out = []
    for k in range(n):
        if rng.random() < 0.65:  # same roofing as the neighbours, slightly weathered
            col = (family * rng.uniform(0.9, 1.1)).astype(np.float32)
        else:
            col = _colour(rng, HOUSE_ROOFS, 0.12)
        part = f.rect(float(edges[k]), float(edges[k + 1]), 0.0, d, GABLE, pitch, along_u=True)
        out.append(_make(kind, [part], wall + rng.uniform(-0.4, 0.4), col, rng))
    return out


def apartment(rng: Rng, f: Frame) -> list[Building]:
    w, d = rng.uniform(18, 45), rng.uniform(10, 16)
    roof = _pitched(rng, 0.5, 0.25)
    col = _colour(rng, FLAT_ROOFS if roof == FLAT else HOUSE_ROOFS)
    part = f.rect(-w / 2, w / 2, 0, d, roof, rng.uniform(18, 30), along_u=True)
    return [_make("apartment", [part], rng.uniform(9, 15), col, rng, 0.14)]


def courtyard(rng: Rng, f: Frame) -> list[Building]:
    w, d, t = rng.uniform(24, 45), rng.uniform(24, 40), rng.uniform(8, 11)
    roof = FLAT if rng.random() < 0.4 else GABLE
    pitch = rng.uniform(25, 38)
    parts = [f.rect(-w / 2, w / 2, 0, t, roof, pitch, along_u=True),
             f.rect(-w / 2, w / 2, d - t, d, roof, pitch, along_u=True),
             f.rect(-w / 2, -w / 2 + t, 0, d, roof, pitch, along_u=False),
             f.rect(w / 2 - t, w / 2, 0, d, roof, pitch, along_u=False)]
    col = _colour(rng, FLAT_ROOFS if roof == FLAT else HOUSE_ROOFS)
    return [_make("courtyard", parts, rng.uniform(8, 13), col, rng, 0.12)]


def shed(rng: Rng, f: Frame, a: float = 0.0, b: float = 0.0) -> list[Building]:
    w, d = rng.uniform(25, 45), rng.uniform(12, 22)
    roof = FLAT if rng.random() < 0.55 else GABLE
    part = f.rect(a - w / 2, a + w / 2, b, b + d, roof, rng.uniform(8, 15), along_u=True)
    return [_make("shed", [part], rng.uniform(5, 9), _colour(rng, METAL_ROOFS), rng, 0.06)]


def silos(rng: Rng, f: Frame, a: float, b: float, n: int) -> list[Building]:
    radius = rng.uniform(3, 7)
    sides, kind = (8, "octagonal") if rng.random() < 0.3 else (20, "round")
    col = _colour(rng, [3, 4, 5], 0.05)
    gap = rng.uniform(1.0, 3.0)
    wall = rng.uniform(8, 14)
    discs = [f.disc(a + radius + k * (2 * radius + gap), b + radius, radius, sides)
             for k in range(n)]
    return [_make(kind, [d], wall, col, rng) for d in discs]


def office(rng: Rng, f: Frame) -> list[Building]:
    w, d = rng.uniform(12, 25), rng.uniform(10, 18)
    part = f.rect(-w / 2, w / 2, 0, d, FLAT, 0.0)
    return [_make("office", [part], rng.uniform(6, 12), _colour(rng, FLAT_ROOFS), rng, 0.12)]


def hut(rng: Rng, f: Frame, a: float = 0.0, b: float = 0.0) -> list[Building]:
    """Small building of a dense cluster."""
    w, d = rng.uniform(5.5, 9), rng.uniform(5, 8)
    roof = _pitched(rng, 0.5, 0.0)
    part = f.rect(a - w / 2, a + w / 2, b, b + d, roof, rng.uniform(15, 30))
    col = _colour(rng, [0, 2, 3, 4, 6, 8, 10], 0.14)
    return [_make("hut", [part], rng.uniform(2.8, 4.5), col, rng, 0.16)]


def garage(rng: Rng, f: Frame, a: float, b: float) -> list[Building]:
    w, d = rng.uniform(6, 8), rng.uniform(4.5, 6.5)
    part = f.rect(a - w / 2, a + w / 2, b, b + d, FLAT if rng.random() < 0.6 else GABLE, 25)
    return [_make("garage", [part], rng.uniform(2.5, 3.2), _colour(rng, [2, 3, 4, 9]), rng)]


def farmstead(rng: Rng, f: Frame) -> list[Building]:
    out = house(rng, f)
    side = 1.0 if rng.random() < 0.5 else -1.0
    out += shed(rng, f, side * rng.uniform(32, 42), rng.uniform(2, 10))
    if rng.random() < 0.6:
        out += silos(rng, f, -side * rng.uniform(12, 20), rng.uniform(22, 30),
                     int(rng.integers(1, 3)))
    return out


def industrial(rng: Rng, f: Frame) -> list[Building]:
    u = rng.random()
    if u < 0.5:
        return shed(rng, f)
    if u < 0.7:
        out = shed(rng, f)
        x0 = float(out[0].parts[0].a) + rng.uniform(3, 6)
        return out + silos(rng, f, x0, 2.0, int(rng.integers(1, 4)))
    if u < 0.9:
        return office(rng, f)
    return apartment(rng, f)


def pavilion(rng: Rng, f: Frame) -> list[Building]:
    part = f.disc(0.0, 5.0, rng.uniform(3, 5), 8)
    return [_make("octagonal", [part], rng.uniform(3, 5), _colour(rng, [0, 2, 7]), rng)]


Maker = Callable[[Rng, Frame], list[Building]]
