"""Pixel evidence for building changes: when a change the footprints' geometry calls is backed
by confidence and pixels (:class:`EvidenceRule`), and the pixels themselves — the change store's
``changed`` mask and both runs' building-class pixels on the change grid (:class:`PixelEvidence`),
read one window of footprints at a time. See :mod:`geoseg.change.building_change` for the rule's
steps and DESIGN.md for how its thresholds were chosen."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import zarr
from affine import Affine
from pyproj import Transformer
from shapely.geometry.base import BaseGeometry

from geoseg.change.align import NODATA_CODE, AlignedCodes, GridDecision, Mode
from geoseg.change.runs import RunInfo
from geoseg.errors import InputError
from geoseg.grid import Bounds, GeoBox, Window
from geoseg.store import FILL

BUILDING_PIXELS = ("building", "boundary")  # classes of a run's ``buildings`` layer that
# make up footprints (geoseg.vectorize.footprints)


@dataclass(frozen=True)
class EvidenceRule:
    """When a geometric change counts (module docstring, steps 6-9). The defaults here change
    nothing: geometry alone decides, as before evidence was used."""

    min_confidence: float = 0.0  # new / demolished footprint confidence
    max_other_cover: float = 1.0  # ... at most this covered by the other date's buildings
    min_changed: float = 0.0  # ... at least this covered by changed pixels
    break_changed: float = math.inf  # a group whose shared area changed this much is broken
    min_modified_changed: float = 0.0  # a modified group's difference area changed this much
    min_part_changed: float = math.inf  # a part lost from a footprint that changed this much
    # is demolished

    def check(self) -> None:
        for name in ("min_confidence", "max_other_cover", "min_changed",
                     "min_modified_changed"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {v}")
        for name in ("break_changed", "min_part_changed"):
            v = getattr(self, name)
            if not v > 0.0:
                raise InputError(f"{name} must be > 0 (above 1: never), got {v}")

    def describe(self) -> dict[str, float | None]:
        return {"min_confidence": self.min_confidence, "max_other_cover": self.max_other_cover,
                "min_changed": self.min_changed,
                "break_changed": None if self.break_changed > 1 else self.break_changed,
                "min_modified_changed": self.min_modified_changed,
                "min_part_changed": None if self.min_part_changed > 1 else self.min_part_changed}


GEOMETRY_ONLY = EvidenceRule()


class Evidence:
    """Pixel evidence for footprints: the fraction of each geometry's pixels that a layer
    calls "on" (``changed``: the land-cover change mask says changed; ``buildings_a`` /
    ``buildings_b``: that date's building-class pixels), NaN where none of its pixels is
    known. This base class knows nothing (all NaN)."""

    def cover(self, geoms: np.ndarray, layer: str) -> np.ndarray:
        return np.full(len(geoms), np.nan)


NO_EVIDENCE = Evidence()


class _BuildingCodes(AlignedCodes):
    """A run's ``buildings`` class ids on another grid, as :class:`AlignedCodes` codes
    (class << 8; confidence not read)."""

    _layer: Any = None

    def _read(self, win: Window) -> np.ndarray:
        if self._layer is None:
            self._layer = zarr.open_group(str(self.run.store), mode="r",
                                          zarr_format=2)["buildings"]
        rs, cs = win.slices()
        cls = np.asarray(self._layer[rs, cs])
        return np.where(cls == FILL, NODATA_CODE, cls.astype(np.uint16) << 8).astype(np.uint16)


def _building_ids(run: RunInfo) -> tuple[int, ...] | None:
    """Class ids of the run's ``buildings`` pixel layer that make up footprints; None when
    the run has no such layer."""
    layer = run.store / "buildings"
    if not (layer / ".zarray").exists():
        return None
    try:
        attrs = json.loads((layer / ".zattrs").read_text())
    except (OSError, ValueError):
        attrs = {}
    values, meanings = attrs.get("flag_values"), str(attrs.get("flag_meanings", "")).split()
    if isinstance(values, list) and len(values) == len(meanings):
        ids = tuple(int(v) for v, m in zip(values, meanings, strict=True)
                    if m in BUILDING_PIXELS)
        if ids:
            return ids
    return (1,)


class PixelEvidence(Evidence):
    """The change store's ``changed`` mask and both runs' building-class pixels on the change
    grid, read for one window at a time (:meth:`window`)."""

    def __init__(self, store: Path, a: RunInfo, b: RunInfo, decision: GridDecision) -> None:
        self.grid: GeoBox = decision.grid
        self.crs = a.grid.crs  # footprints are compared in A's CRS
        group = zarr.open_group(str(store), mode="r", zarr_format=2)
        self._changed: Any = group["changed"]
        # > 0 exactly where both dates have a class (a class's probability is >= 1/255)
        self._both: Any = group["confidence"]
        self._buildings: dict[str, tuple[_BuildingCodes, tuple[int, ...]]] = {}
        for label, run in (("a", a), ("b", b)):
            ids = _building_ids(run)
            if ids is not None:
                mode: Mode = "window" if label == decision.target else decision.mode
                self._buildings[f"buildings_{label}"] = (
                    _BuildingCodes(run, self.grid, mode), ids)
        self._to_grid = (None if self.grid.crs == self.crs else
                         Transformer.from_crs(self.crs, self.grid.crs, always_xy=True))

    def both_dates(self, points: np.ndarray) -> np.ndarray:
        """Whether both dates have imagery (a class) at each point (in A's CRS): a footprint
        whose point is over one date's nodata cannot be compared, as outside the overlap."""
        x, y = shapely.get_x(points), shapely.get_y(points)
        if self._to_grid is not None and len(points):
            x, y = self._to_grid.transform(x, y)
        values, inside = self.grid.sample(x, y, lambda win: self._both[win.slices()])
        inside[inside] = values > 0
        return inside

    def window(self, geoms: Iterable[BaseGeometry]) -> Evidence:
        """The evidence for footprints ``geoms`` (in A's CRS): the pixels under their
        bounds."""
        arr = np.asarray(list(geoms), dtype=object)
        if not arr.size:
            return NO_EVIDENCE
        x0, y0, x1, y1 = shapely.total_bounds(arr)
        if not (x1 > x0 and y1 > y0):
            return NO_EVIDENCE
        win = self.grid.window_of(Bounds(x0, y0, x1, y1, self.crs)).pad(1).intersect(
            self.grid.window)
        if win.size == 0:
            return NO_EVIDENCE
        rs, cs = win.slices()
        layers: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {
            "changed": (np.asarray(self._changed[rs, cs]), (1,))}
        for name, (codes, ids) in self._buildings.items():
            layers[name] = ((codes.window(win) >> 8).astype(np.uint8), ids)
        return _WindowEvidence(self.grid[win].transform, layers, self._to_grid)


class _WindowEvidence(Evidence):
    def __init__(self, transform: Affine, layers: dict[str, tuple[np.ndarray,
                                                                 tuple[int, ...]]],
                 to_grid: Transformer | None) -> None:
        self.transform, self.layers, self.to_grid = transform, layers, to_grid

    def cover(self, geoms: np.ndarray, layer: str) -> np.ndarray:
        from rasterio.features import geometry_mask

        out = np.full(len(geoms), np.nan)
        if layer not in self.layers or not len(geoms):
            return out
        arr, on = self.layers[layer]
        if self.to_grid is not None:
            t = self.to_grid
            geoms = np.array([None if g is None else shapely.transform(
                g, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
                for g in geoms], dtype=object)
        inv = ~self.transform
        h, w = arr.shape
        for k, g in enumerate(geoms):
            if g is None or g.is_empty:
                continue
            gx0, gy0, gx1, gy1 = g.bounds
            c0, r0 = inv @ (gx0, gy1)
            c1, r1 = inv @ (gx1, gy0)
            r0, r1 = max(0, math.floor(min(r0, r1))), min(h, math.ceil(max(r0, r1)))
            c0, c1 = max(0, math.floor(min(c0, c1))), min(w, math.ceil(max(c0, c1)))
            if r1 <= r0 or c1 <= c0:
                continue
            sub = arr[r0:r1, c0:c1]
            at = self.transform @ Affine.translation(c0, r0)
            inside = geometry_mask([g], sub.shape, at, invert=True)
            if not inside.any():  # thinner than a pixel: the pixels it touches
                inside = geometry_mask([g], sub.shape, at, invert=True, all_touched=True)
            v = sub[inside]
            v = v[v != FILL]
            if v.size:
                out[k] = np.isin(v, on).sum() / v.size
        return out
