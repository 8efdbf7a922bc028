"""Vector features and the raster→polygon helpers shared by land cover and buildings.

Polygons are traced in *global pixel coordinates* (x = column, y = row of the grid; pixel corners
are exact integers), so two chunks trace a shared seam with bit-identical vertices and unions are
exact. Only the final geometry is mapped through the grid's affine transform into its CRS.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS
from shapely.geometry import MultiPolygon, Polygon

from geoseg.errors import InputError

if TYPE_CHECKING:
    import geopandas as gpd

#: 4-connectivity structuring element (same as ``rasterio.features.shapes(connectivity=4)``).
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


@dataclass(slots=True)
class Feature:
    """One output polygon with its attributes (land-cover region or building footprint).

    ``confidence`` is the mean confidence/probability inside the polygon in 0..1 (``None`` when
    no confidence raster was given). ``id`` is stable across chunk sizes and resumed runs: it is
    derived from the feature's first pixel in global raster order.
    """

    geometry: Polygon
    class_id: int
    pixels: int
    confidence: float | None
    id: str | None = None
    area_m2: float | None = None
    perimeter_m: float | None = None
    chunk_id: str | None = None

    def to_record(self) -> dict[str, Any]:
        """A flat dict for ``GeoDataFrame.from_records``/``GeoDataFrame(records)``; optional
        attributes that are ``None`` are left out so each layer only gets its own columns."""
        record: dict[str, Any] = {"geometry": self.geometry, "class_id": self.class_id,
                                  "pixels": self.pixels, "confidence": self.confidence}
        for key in ("id", "area_m2", "perimeter_m", "chunk_id"):
            value = getattr(self, key)
            if value is not None:
                record[key] = value
        return record


@dataclass(slots=True)
class FeatureTable(Sequence[Feature]):
    """Many features as columns (one chunk's interior land-cover regions): what the GeoPackage
    writer needs without a Python object and a dict per polygon. Iterating yields
    :class:`Feature` objects, so code that reads features one by one is unchanged.

    ``confidence``, ``area_m2`` and ``perimeter_m`` are None when no feature has them."""

    geometry: np.ndarray              # object array of polygons
    class_id: np.ndarray              # int64
    pixels: np.ndarray                # int64
    confidence: np.ndarray | None     # float64
    id: np.ndarray                    # object array of str
    area_m2: np.ndarray | None = None
    perimeter_m: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.geometry)

    @overload
    def __getitem__(self, i: int) -> Feature: ...
    @overload
    def __getitem__(self, i: slice) -> list[Feature]: ...

    def __getitem__(self, i: int | slice) -> Feature | list[Feature]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        return Feature(self.geometry[i], int(self.class_id[i]), int(self.pixels[i]),
                       _item(self.confidence, i), id=str(self.id[i]),
                       area_m2=_item(self.area_m2, i), perimeter_m=_item(self.perimeter_m, i))

    def __iter__(self) -> Iterator[Feature]:
        return (self[i] for i in range(len(self)))

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as arrays (a vector worker process sends a chunk's table back): polygons as
        their coordinates and ring/part offsets, ids as one string array, in a few C calls
        instead of a WKB object per polygon (the 16 chunks of the null model's 4096² map, 265 k
        regions: dump 2.03 → 0.55 CPU-s, load 1.07 → 0.28). Coordinates come back bit for
        bit."""
        geoms: Any = self.geometry
        if len(geoms) and bool(np.all(shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON)):
            _kind, coords, offsets = shapely.to_ragged_array(geoms)
            geoms = (coords, offsets)
        ids = self.id.astype(str) if len(self.id) else self.id
        return (_table, (geoms, self.class_id, self.pixels, self.confidence, ids, self.area_m2,
                         self.perimeter_m))

    def columns(self) -> dict[str, np.ndarray]:
        """The columns :meth:`Feature.to_record` would give each feature, in the same order."""
        cols = {"geometry": self.geometry, "class_id": self.class_id, "pixels": self.pixels,
                "confidence": (self.confidence if self.confidence is not None
                               else np.full(len(self), None, dtype=object)), "id": self.id}
        if self.area_m2 is not None:
            cols["area_m2"] = self.area_m2
        if self.perimeter_m is not None:
            cols["perimeter_m"] = self.perimeter_m
        return cols


def _table(geoms: Any, class_id: np.ndarray, pixels: np.ndarray, confidence: np.ndarray | None,
           ids: np.ndarray, area: np.ndarray | None, perimeter: np.ndarray | None
           ) -> FeatureTable:
    """A :class:`FeatureTable` from its pickled arrays (see ``FeatureTable.__reduce__``)."""
    if isinstance(geoms, tuple):
        coords, offsets = geoms
        geoms = np.asarray(shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords,
                                                     offsets), dtype=object)
    if ids.dtype != object:
        ids = ids.astype(object)
    return FeatureTable(geoms, class_id, pixels, confidence, ids, area, perimeter)


def _item(column: np.ndarray | None, i: int) -> float | None:
    return None if column is None else float(column[i])


def features_to_frame(features: Iterable[Feature], crs: CRS) -> gpd.GeoDataFrame:
    """Features as a GeoDataFrame in ``crs`` (geopandas is imported lazily)."""
    import geopandas as gpd

    records = [f.to_record() for f in features]
    if not records:
        return gpd.GeoDataFrame({"class_id": [], "pixels": [], "confidence": []},
                                geometry=gpd.GeoSeries([], crs=crs), crs=crs)
    return gpd.GeoDataFrame(records, geometry="geometry", crs=crs)


def check_confidence(values: np.ndarray | None, shape: tuple[int, ...], name: str) -> float:
    """Validate a confidence/probability raster; return the factor that maps it to 0..1
    (1/255 for integer rasters, 1 for float rasters)."""
    if values is None:
        return 1.0
    if values.shape != shape:
        raise InputError(f"{name} has shape {values.shape} but the class map has {shape}: "
                         "pass both for the same window")
    if np.issubdtype(values.dtype, np.integer):
        return 1.0 / 255.0
    if np.issubdtype(values.dtype, np.floating):
        if values.size and (np.nanmin(values) < 0.0 or np.nanmax(values) > 1.0):
            raise InputError(f"float {name} must lie in 0..1: scale it (or pass uint8 0..255)")
        return 1.0
    raise InputError(f"{name} must be uint8 (0..255) or float (0..1), got {values.dtype}")


def check_class_map(classes: np.ndarray, shape: tuple[int, int], name: str = "class map") -> None:
    """The class map must be a 2-D integer array of the expected ``shape``."""
    if classes.ndim != 2 or classes.shape != shape:
        raise InputError(f"{name} has shape {classes.shape}, expected {shape} (the window's "
                         "height x width)")
    if not np.issubdtype(classes.dtype, np.integer):
        raise InputError(f"{name} must hold integer class ids, got {classes.dtype}")


def as_polygon(geom: shapely.Geometry) -> Polygon:
    """A valid polygon from ``geom``: repaired when invalid, largest part when it splits."""
    if not geom.is_valid:
        geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
    if isinstance(geom, Polygon):
        return geom
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon | MultiPolygon)]
    flat = [p for g in polys for p in (g.geoms if isinstance(g, MultiPolygon) else [g])]
    if not flat:
        return Polygon()
    return max(flat, key=lambda p: (p.area, p.bounds))


def trace_labels(labels: np.ndarray, row_off: int, col_off: int) -> Iterator[tuple[int, Polygon]]:
    """Yield ``(label, polygon)`` for each 4-connected region of equal non-zero label, in global
    pixel coordinates (the array's top-left pixel is at ``row_off``, ``col_off``)."""
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    transform = Affine.translation(col_off, row_off)
    values: list[int] = []
    rings: list[np.ndarray] = []
    ring_ends = [0]  # polygon i has rings ring_ends[i]:ring_ends[i + 1]
    for geom, value in rasterio.features.shapes(lab, mask=lab != 0, connectivity=4,
                                                transform=transform):
        values.append(int(value))
        rings.extend(np.asarray(r, dtype=np.float64) for r in geom["coordinates"])
        ring_ends.append(len(rings))
    if not values:
        return
    # one C call builds every polygon (shapely.geometry.shape would walk each vertex in Python)
    coords = np.concatenate(rings)
    ring_offsets = np.concatenate([[0], np.cumsum([len(r) for r in rings])])
    polys = shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords,
                                      (ring_offsets, np.asarray(ring_ends)))
    valid = shapely.is_valid(polys)
    for value, poly, ok in zip(values, polys, valid, strict=True):
        yield value, poly if ok else as_polygon(poly)


def drop_collinear(poly: Polygon) -> Polygon:
    """Remove vertices where a ring runs straight on (exact for integer pixel coordinates);
    seam unions leave such vertices where the chunk grid crossed a boundary. Rings of at most
    four vertices are kept as they are."""
    polys = np.empty(1, dtype=object)
    polys[0] = poly
    return drop_collinear_many(polys)[0]  # type: ignore[no-any-return]


def drop_collinear_many(polys: np.ndarray) -> np.ndarray:
    """:func:`drop_collinear` of many polygons at once: all their rings in one numpy pass (a
    region spanning the raster has tens of thousands of holes; a chunk's seam groups are
    hundreds of small polygons, where one call per polygon was most of the seam merge)."""
    out_polys = np.array(polys, dtype=object)
    full = np.flatnonzero(~shapely.is_empty(out_polys))
    if not len(full):
        return out_polys
    _kind, xy, (ring_off, poly_off) = shapely.to_ragged_array(out_polys[full])
    counts = np.diff(ring_off)
    ring = np.repeat(np.arange(len(counts)), counts)
    start = ring_off[:-1][ring]
    distinct = (counts - 1)[ring]
    pos = np.arange(len(xy)) - start
    closing = pos == distinct
    safe = np.maximum(distinct, 1)
    d_in = xy - xy[start + (pos - 1) % safe]
    d_out = xy[start + (pos + 1) % safe] - xy
    cross = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0]
    dot = (d_in * d_out).sum(axis=1)
    keep = ~closing & ~((cross == 0) & (dot > 0) & (distinct > 4))
    kept = np.flatnonzero(keep)
    per_ring = np.bincount(ring[kept], minlength=len(counts))
    first = kept[np.concatenate([[0], np.cumsum(per_ring)[:-1]])]
    new_off = np.concatenate([[0], np.cumsum(per_ring + 1)])
    out = np.empty((int(new_off[-1]), 2))
    ends = new_off[1:] - 1
    body = np.ones(len(out), bool)
    body[ends] = False
    out[body] = xy[kept]
    out[ends] = xy[first]
    out_polys[full] = shapely.from_ragged_array(shapely.GeometryType.POLYGON, out,
                                                (new_off, poly_off))
    return out_polys


def _affine_fn(transform: Affine) -> Callable[[np.ndarray], np.ndarray]:
    a, b, c, d, e, f = (transform.a, transform.b, transform.c, transform.d, transform.e,
                        transform.f)

    def apply(xy: np.ndarray) -> np.ndarray:
        out = np.empty_like(xy)
        out[:, 0] = a * xy[:, 0] + b * xy[:, 1] + c
        out[:, 1] = d * xy[:, 0] + e * xy[:, 1] + f
        return out

    return apply


def apply_affine(geom: Polygon, transform: Affine) -> Polygon:
    """``geom`` with every vertex mapped through ``transform`` (same arithmetic for every
    vertex, so equal input coordinates give bit-identical output coordinates)."""
    result = shapely.transform(geom, _affine_fn(transform))
    return result if isinstance(result, Polygon) else as_polygon(result)


def apply_affine_many(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """:func:`apply_affine` over an array of geometries in one call."""
    return np.asarray(shapely.transform(geoms, _affine_fn(transform)))


def pixel_to_world(geom: Polygon, transform: Affine) -> Polygon:
    """Map a polygon from global pixel coordinates to the grid CRS; normalised (canonical ring
    order and start vertex) so equal geometries compare equal whatever the chunking."""
    result = shapely.normalize(apply_affine(geom, transform))
    return result if isinstance(result, Polygon) else as_polygon(result)


