"""Vector training labels (polygons in any CRS), rasterized on the fly per chip window.

A :class:`VectorLabels` is opened once per scene: the features are read and checked, invalid
polygons are repaired (``shapely.make_valid``), everything is reprojected to the image CRS once
and indexed (``gdf.sindex``). Each read rasterizes only the features that intersect the
requested window, with that window's own transform (pixel centres decide, ``all_touched=False``),
so a whole scene is never rasterized.

* ``landcover``: every polygon carries its class in ``field``, as an integer id or as a class
  name; pixels that no polygon covers get ``background`` (a class id, or ``IGNORE``).
* ``buildings``: every feature is one building instance, numbered 1..n in file order (0 = none).

Where polygons overlap, the later feature in the file wins.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from rasterio.features import rasterize

from geoseg.errors import LabelError
from geoseg.grid import GeoBox, Window
from geoseg.training.targets import IGNORE

logger = logging.getLogger(__name__)

VECTOR_SUFFIXES = frozenset({".gpkg", ".geojson", ".json", ".shp", ".fgb"})
RASTER_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".img", ".jp2"})
POLYGONAL = ("Polygon", "MultiPolygon")


def is_vector(path: str | Path) -> bool:
    """Whether ``path`` is a vector label file (by extension, else by asking OGR)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in VECTOR_SUFFIXES:
        return True
    if suffix in RASTER_SUFFIXES or not p.is_file():
        return False
    try:
        pyogrio.read_info(p)
    except Exception:  # not something OGR opens: the raster path reports what it is
        return False
    return True


def _extent(b: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in b) + ")"


def _read(path: Path, layer: str | None = None) -> gpd.GeoDataFrame:
    if not path.is_file():
        raise LabelError(f"labels not found: {path} (check the path)")
    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        raise LabelError(_unreadable(path, exc)) from exc
    if layer is not None and layer not in layers:
        raise LabelError(f"{path} has no layer {layer!r} (layers: {', '.join(layers)}): pass "
                         "--labels-layer with one of them")
    if layer is None and len(layers) > 1:
        logger.warning("%s has %d layers: using the first, %r (--labels-layer NAME picks "
                       "another: %s)", path, len(layers), layers[0], ", ".join(layers[1:]))
    try:
        df = pyogrio.read_dataframe(path, layer=layer if layer is not None else 0)
    except Exception as exc:
        raise LabelError(_unreadable(path, exc)) from exc
    if not isinstance(df, gpd.GeoDataFrame):
        raise LabelError(f"{path}{'' if layer is None else f' layer {layer!r}'} has no geometry "
                         "column: give polygon labels")
    return df


def _unreadable(path: Path, exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"cannot read labels {path}: {first} (give a GeoPackage, GeoJSON, shapefile or "
            "FlatGeobuf of polygons)")


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    """The polygonal part of a (repaired) geometry; empty when there is none."""
    if geom.geom_type in POLYGONAL:
        return geom
    parts = [g for g in shapely.get_parts(geom) if g.geom_type in POLYGONAL]
    return shapely.union_all(parts) if parts else shapely.Polygon()


def _check_geometry(df: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    if len(df) == 0:
        raise LabelError(f"{path} has no features: give a label file with polygons")
    missing = df.geometry.isna() | df.geometry.is_empty
    if missing.all():
        raise LabelError(f"{path}: none of its {len(df)} features has a geometry: give polygons")
    if missing.any():
        logger.warning("%s: %d of %d features have no geometry and are left out", path,
                       int(missing.sum()), len(df))
        df = df[~missing]
    types = df.geom_type
    wrong = ~types.isin([*POLYGONAL, "GeometryCollection"])
    if wrong.any():
        found = ", ".join(sorted(set(types[wrong])))
        raise LabelError(f"{path}: {int(wrong.sum())} of {len(df)} features are {found}, "
                         "training needs polygons: buffer points/lines into polygons or give "
                         "polygon labels")
    if df.crs is None:
        raise LabelError(f"{path} has no CRS: assign the one its coordinates are in (e.g. "
                         "ogr2ogr -a_srs EPSG:4326 OUT IN)")
    return df


def _class_ids(df: gpd.GeoDataFrame, field: str, class_names: Sequence[str] | None,
               path: Path) -> np.ndarray:
    """Class id of every feature from ``field`` (ids or names); bad values are named."""
    if field not in df.columns or field == df.geometry.name:
        fields = ", ".join(str(c) for c in df.columns if c != df.geometry.name) or "none"
        raise LabelError(f"{path} has no field {field!r} (fields: {fields}): pass "
                         "--class-field NAME, the attribute that holds each polygon's class")
    col = df[field]
    if col.isna().any():
        raise LabelError(f"{path}: {int(col.isna().sum())} features have no value in {field!r}: "
                         "give every polygon a class")
    k = len(class_names) if class_names is not None else IGNORE
    lookup = {n.strip().lower(): i for i, n in enumerate(class_names or ())}
    ids, bad = [], []
    for v in col.tolist():
        if isinstance(v, str):
            key = v.strip().lower()
            i = lookup.get(key, int(key) if key.isdigit() else -1)
        elif isinstance(v, int | float | np.integer | np.floating) and float(v).is_integer():
            i = int(v)
        else:
            i = -1
        if not (0 <= i < k or i == IGNORE):
            bad.append(v)
        ids.append(i)
    if bad:
        shown = sorted({str(b) for b in bad})
        more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
        known = (f"ids 0..{k - 1} or names {', '.join(class_names)}"
                 if class_names is not None else f"ids 0..{IGNORE - 1}")
        raise LabelError(f"{path}: {field!r} has values not in the class list: "
                         f"{', '.join(shown[:10])}{more}; use {known} ({IGNORE} = ignore)")
    return np.asarray(ids, dtype=np.int64)


class VectorLabels:
    """Polygon labels on an image grid, rasterized per window.

    ``read(win)`` returns class ids (uint8, ``landcover``) or instance ids (uint32, 0 = none,
    ``buildings``) for any window of ``geobox``, also one reaching beyond it.
    """

    def __init__(self, path: str | Path, geobox: GeoBox,
                 task: Literal["landcover", "buildings"], *, field: str = "class_id",
                 class_names: Sequence[str] | None = None, background: int = 0,
                 layer: str | None = None) -> None:
        self.path = Path(path)
        self.geobox = geobox
        self.task = task
        k = len(class_names) if class_names is not None else IGNORE
        if task == "landcover" and not (0 <= background < k or background == IGNORE):
            raise LabelError(f"background class {background} is not a class id (0..{k - 1}) "
                             f"nor {IGNORE} (ignore): pick one of the bundle's classes")
        self.fill = background if task == "landcover" else 0
        self.dtype = "uint8" if task == "landcover" else "uint32"
        df = _check_geometry(_read(self.path, layer), self.path)
        if task == "landcover":
            values = _class_ids(df, field, class_names, self.path)
        else:
            values = np.arange(1, len(df) + 1, dtype=np.int64)
        src_crs = df.crs
        geoms = gpd.GeoSeries(df.geometry.values, crs=src_crs)
        if src_crs != geobox.crs:
            geoms = geoms.to_crs(geobox.crs)
        self.frame = self._repaired(gpd.GeoDataFrame({"value": values}, geometry=geoms))
        self._check_overlap(src_crs, df.total_bounds)
        self.frame.sindex  # noqa: B018 - build the spatial index once, at open
        self._geoms = np.asarray(self.frame.geometry.values, dtype=object)
        self._values = self.frame["value"].to_numpy()

    def _repaired(self, frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        geoms = np.asarray(frame.geometry.values, dtype=object)
        invalid = ~shapely.is_valid(geoms)
        if invalid.any():
            logger.info("%s: repaired %d invalid polygons", self.path, int(invalid.sum()))
            geoms = geoms.copy()
            geoms[invalid] = shapely.make_valid(geoms[invalid])
        geoms = np.asarray([_polygonal(g) for g in geoms], dtype=object)
        empty = shapely.is_empty(geoms) | ~np.isfinite(shapely.area(geoms))
        if empty.all():
            raise LabelError(f"{self.path}: no polygon has any area (after repair and "
                             f"reprojection to {self.geobox.crs.to_string()}): give polygons")
        if empty.any():
            logger.warning("%s: %d features have no area after repair and are left out",
                           self.path, int(empty.sum()))
        out = gpd.GeoDataFrame({"value": frame["value"].to_numpy()[~empty]},
                               geometry=gpd.GeoSeries(geoms[~empty], crs=self.geobox.crs))
        return out.reset_index(drop=True)

    def _check_overlap(self, src_crs: object, src_bounds: np.ndarray) -> None:
        b = self.geobox.bounds
        lx0, ly0, lx1, ly1 = (float(v) for v in self.frame.total_bounds)
        finite = all(math.isfinite(v) for v in (lx0, ly0, lx1, ly1))
        if finite and lx0 < b.right and lx1 > b.left and ly0 < b.top and ly1 > b.bottom:
            return
        crs = self.geobox.crs.to_string()
        src = getattr(src_crs, "to_string", lambda: str(src_crs))()
        raise LabelError(
            f"labels {self.path} do not overlap the image: labels extent "
            f"{_extent((lx0, ly0, lx1, ly1))}, image extent "
            f"{_extent((b.left, b.bottom, b.right, b.top))} (both in {crs}; labels "
            f"{_extent(tuple(src_bounds))} in their own CRS {src}): pair the labels with the "
            "image they cover, or fix the labels' CRS")

    def __len__(self) -> int:
        return len(self._values)

    def read(self, win: Window) -> np.ndarray:
        """Labels of ``win`` rasterized from the features that intersect it."""
        box = self.geobox[win]
        b = box.bounds
        query = shapely.box(b.left, b.bottom, b.right, b.top)
        idx = np.sort(np.asarray(self.frame.sindex.query(query, predicate="intersects")))
        if idx.size == 0:
            return np.full(win.shape, self.fill, dtype=self.dtype)
        shapes = zip(self._geoms[idx], self._values[idx].tolist(), strict=True)
        return rasterize(shapes, out_shape=win.shape, transform=box.transform, fill=self.fill,
                         all_touched=False, dtype=self.dtype)

