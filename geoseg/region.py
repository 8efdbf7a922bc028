"""Regions of interest: bbox (+ CRS), GeoJSON / vector file, WKT, or the whole image.

A region is normalised to a shapely geometry in the image's CRS (reprojected, never rejected for
being in another CRS). The output grid is the input grid clipped to the region's bounds; pixels of
that grid outside a non-rectangular region are nodata.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from geoseg.errors import GeoSegWarning, RegionError
from geoseg.grid import Bounds, GeoBox, Window, normalize_crs


@dataclass(frozen=True)
class Region:
    geometry: BaseGeometry
    crs: CRS

    @property
    def is_box(self) -> bool:
        g = self.geometry
        return bool(abs(g.area - shapely.envelope(g).area) <= 1e-9 * max(g.area, 1.0))

    def to_crs(self, crs: CRS) -> Region:
        if crs == self.crs:
            return self
        t = Transformer.from_crs(self.crs, crs, always_xy=True)
        g = shapely.segmentize(self.geometry, max_segment_length=_seg_len(self.geometry))
        return Region(shapely.transform(g, lambda xy: np.column_stack(t.transform(*xy.T))), crs)


def _seg_len(g: BaseGeometry) -> float:
    minx, miny, maxx, maxy = g.bounds
    return max(maxx - minx, maxy - miny) / 50 or 1.0


def parse_bbox(text: str, crs: str | CRS | None) -> Region:
    """``"minx,miny,maxx,maxy"`` in ``crs``."""
    try:
        vals = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError as exc:
        raise RegionError(f"bad --bbox {text!r}: give minx,miny,maxx,maxy numbers") from exc
    if len(vals) != 4:
        raise RegionError(f"bad --bbox {text!r}: give exactly 4 numbers minx,miny,maxx,maxy")
    if crs is None:
        raise RegionError("--bbox needs --bbox-crs (e.g. EPSG:32633 or EPSG:4326)")
    minx, miny, maxx, maxy = vals
    if not (maxx > minx and maxy > miny):
        raise RegionError(f"empty --bbox {text!r}: need minx < maxx and miny < maxy")
    return Region(shapely.box(minx, miny, maxx, maxy), normalize_crs(crs))


def read_region_file(path: str | Path, crs: str | CRS | None = None) -> Region:
    """A GeoJSON / GeoPackage / any OGR vector file (all features unioned)."""
    p = Path(path)
    if not p.exists():
        raise RegionError(f"region file not found: {p}" + ("" if p.is_absolute() else
                          f" (that is {p.absolute()}: relative paths, in a config file too, "
                          "are taken from the working directory)"))
    import geopandas as gpd
    import pyogrio

    try:
        layers = [str(name) for name, _kind in pyogrio.list_layers(p)]
        df = gpd.read_file(p, layer=layers[0] if layers else None)
    except Exception as exc:
        raise RegionError(f"cannot read region {p}: {str(exc).splitlines()[0]}") from exc
    if len(layers) > 1:
        shown = ", ".join(layers[:5]) + (", ..." if len(layers) > 5 else "")
        warnings.warn(f"region file {p} has {len(layers)} layers ({shown}): the region is the "
                      f"first, {layers[0]}; to use another, write it to a file of its own "
                      f"(ogr2ogr region.gpkg {p} LAYER)", GeoSegWarning, stacklevel=2)
    if df.empty:
        raise RegionError(f"region file {p} has no features")
    src_crs = df.crs if df.crs is not None else crs
    if src_crs is None:
        raise RegionError(f"region file {p} has no CRS: add one or pass --region-crs")
    geom = polygonal(df.geometry.values, f"region file {p}")
    return Region(geom, normalize_crs(src_crs))


def polygonal(geoms: Iterable[BaseGeometry | None], what: str) -> BaseGeometry:
    """The union of the polygonal parts of ``geoms`` (GeometryCollections opened up).

    Lines and points have no area: kept, they would stretch the grid to their extent and get
    their pixels classified. They are dropped with a :class:`GeoSegWarning`; no polygon at all
    is a :class:`RegionError`."""
    polys: list[BaseGeometry] = []
    dropped: list[str] = []

    def visit(g: BaseGeometry | None) -> None:
        if g is None or g.is_empty:
            return
        if isinstance(g, shapely.Polygon | shapely.MultiPolygon):
            polys.append(g)
        elif isinstance(g, shapely.GeometryCollection):
            for part in g.geoms:
                visit(part)
        else:
            dropped.append(g.geom_type)

    for g in geoms:
        visit(g)
    if dropped:
        kinds = ", ".join(f"{dropped.count(k)} {k}" for k in dict.fromkeys(dropped))
        warnings.warn(f"{what}: dropped {len(dropped)} non-polygon geometr"
                      f"{'y' if len(dropped) == 1 else 'ies'} ({kinds}): a region is its "
                      "polygons only", GeoSegWarning, stacklevel=3)
    geom = shapely.union_all(polys) if polys else shapely.Polygon()
    if geom.is_empty or geom.area == 0:
        raise RegionError(f"{what} has no polygon with an area: give Polygon or MultiPolygon "
                          "geometries")
    return geom


def parse_wkt(text: str, crs: str | CRS | None) -> Region:
    try:
        geom = shapely.from_wkt(text)
    except Exception as exc:
        raise RegionError(f"bad WKT region: {(str(exc).strip() or 'unreadable').splitlines()[0]}"
                          ) from exc
    if crs is None:
        raise RegionError("a WKT region needs --region-crs")
    return Region(polygonal([geom], "WKT region"), normalize_crs(crs))


def region_from_geojson_text(text: str, crs: str | CRS | None = None) -> Region:
    obj = json.loads(text)
    geoms = [shapely.geometry.shape(f["geometry"]) for f in obj.get("features", [obj])]
    return Region(polygonal(geoms, "GeoJSON region"), normalize_crs(crs or "EPSG:4326"))


def clip_grid(image: GeoBox, region: Region | None) -> tuple[Window, Region | None]:
    """Window of the image grid covering ``region`` (clipped to the image), plus the region in the
    image CRS (None when the region is a box covering its window, so no per-pixel mask is
    needed)."""
    if region is None:
        return image.window, None
    r = region.to_crs(image.crs)
    minx, miny, maxx, maxy = r.geometry.bounds
    try:
        win = image.window_of(Bounds(minx, miny, maxx, maxy, image.crs))
    except Exception as exc:
        raise RegionError(f"region has no area in the image CRS: {exc}") from exc
    clipped = win.intersect(image.window)
    if clipped.size == 0:
        ib = image.bounds
        raise RegionError(
            f"region {tuple(round(v, 2) for v in (minx, miny, maxx, maxy))} lies outside the "
            f"image {tuple(round(v, 2) for v in (ib.left, ib.bottom, ib.right, ib.top))} "
            f"({image.crs.to_string()}): pick a region that overlaps it")
    if not r.is_box and not _overlaps(r.geometry, image.bounds):
        ib = image.bounds
        raise RegionError(
            f"region {tuple(round(v, 2) for v in (minx, miny, maxx, maxy))} does not overlap "
            f"the image {tuple(round(v, 2) for v in (ib.left, ib.bottom, ib.right, ib.top))} "
            f"({image.crs.to_string()}): only its bounding box does; pick a region whose "
            "polygons cover part of the image")
    return clipped, (None if r.is_box else r)


def _overlaps(geometry: BaseGeometry, bounds: Bounds) -> bool:
    """Whether ``geometry`` shares an area with ``bounds`` (same CRS); touching is not enough.
    An invalid polygon (a bow tie) is repaired for the test only."""
    footprint = shapely.box(bounds.left, bounds.bottom, bounds.right, bounds.top)
    g = geometry if geometry.is_valid else shapely.make_valid(geometry)
    if not g.intersects(footprint):
        return False
    return bool(g.intersection(footprint).area > 0)


def region_mask(region: Region, grid: GeoBox, window: Window) -> np.ndarray:
    """Boolean mask of ``window`` (in ``grid`` pixels) that lies inside the region."""
    from rasterio.features import geometry_mask

    sub = grid[window]
    return geometry_mask([region.geometry], out_shape=window.shape, transform=sub.transform,
                         invert=True)
