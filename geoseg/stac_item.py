"""The STAC Item of a run: a ``stac-item.json`` beside the outputs that any STAC client
(``odc.stac``, ``stackstac``, QGIS, a STAC API) can load.

Written last, and only by a run that finished every chunk: its presence says "these outputs are
complete and these are their bytes" (``file:checksum``). Asset hrefs are relative to the item, so
the folder can be moved or uploaded as it is (a run in object storage builds its item in the
local staging folder, from the files it then uploads, beside a store already in the bucket).

- geometry/bbox: the footprint of the output grid (clipped to the region) in EPSG:4326;
- ``proj``: the grid (code or WKT2, shape, transform, bbox in the grid's CRS), for every asset;
- ``raster`` + ``classification`` on each class-map COG: uint8, nodata, resolution, classes with
  names, colours and pixel counts;
- ``file``: size and sha2-256 multihash of every file asset (the Zarr store is a folder: none);
- ``processing``: geoseg's version, when it ran, and a lineage line (image, models, engines).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import shapely
from pyproj import CRS, Transformer
from pystac.extensions.classification import Classification, ClassificationExtension
from pystac.extensions.file import FileExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import DataType, RasterBand, RasterExtension
from shapely.geometry import mapping

from geoseg import __version__
from geoseg.layout import RunLayout
from geoseg.objstore import is_object_url
from geoseg.outdir import atomic_write_text
from geoseg.plan import Plan
from geoseg.sources.remote import shown_name
from geoseg.store import FILL

log = logging.getLogger(__name__)

PROCESSING_SCHEMA = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
COG_TYPE = str(pystac.MediaType.COG)  # image/tiff; application=geotiff; profile=cloud-optimized
ZARR_TYPE = "application/vnd+zarr"
GPKG_TYPE = "application/geopackage+sqlite3"
SHA2_256 = "1220"  # multihash prefix: code 0x12 (sha2-256), digest length 0x20


def file_multihash(path: str | Path, block: int = 2**20) -> str:
    """sha2-256 of the file as a hex multihash (``1220`` + digest), as ``file:checksum`` wants."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(block):
            h.update(data)
    return SHA2_256 + h.hexdigest()


def write_stac_item(layout: RunLayout, plan: Plan, outputs: dict[str, str], *,
                    result_key: str = "", class_pixels: dict[str, list[int]] | None = None,
                    created: dt.datetime | None = None) -> Path:
    """Write ``layout.stac_item`` for a finished run: ``outputs`` is run_job's output map
    (``zarr``, ``gpkg``, ``cog_<layer>``, ``quicklook``: paths; others are ignored, and so are
    files that do not exist); ``class_pixels`` (per layer, per class id) fills the classes'
    counts. Returns the item's path."""
    item = build_stac_item(layout, plan, outputs, result_key=result_key,
                           class_pixels=class_pixels, created=created)
    path = layout.stac_item
    atomic_write_text(path, json.dumps(item.to_dict(include_self_link=False), indent=2))
    return path


def build_stac_item(layout: RunLayout, plan: Plan, outputs: dict[str, str], *,
                    result_key: str = "", class_pixels: dict[str, list[int]] | None = None,
                    created: dt.datetime | None = None) -> pystac.Item:
    """The Item :func:`write_stac_item` writes (asset hrefs relative to the item's file)."""
    now = (created or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    grid = plan.grid
    footprint, bbox = _footprint(plan)
    footprint = shapely.orient_polygons(footprint)  # GeoJSON: exterior rings counterclockwise
    when, start, end = _acquired(plan.image.acquisition_date, now)
    image = shown_name(plan.image.path)  # no signature or token
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(image).stem) or "image"
    item = pystac.Item(
        id=f"{stem}-{result_key[:12]}" if result_key else stem,
        geometry=mapping(footprint), bbox=bbox,
        datetime=when, start_datetime=start, end_datetime=end,
        properties={"title": f"geoseg maps of {image}",
                    "description": f"Segmentation of {image} by geoseg "
                                   f"({', '.join(m.model_id for m in plan.models)})",
                    "created": _iso(now)})
    item.set_self_href(str(layout.stac_item.absolute()))

    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = grid.crs.to_epsg()
    b = grid.bounds
    proj.apply(code=f"EPSG:{epsg}" if epsg else None,
               wkt2=None if epsg else grid.crs.to_wkt(),
               shape=[grid.height, grid.width], transform=list(grid.transform)[:6],
               bbox=[b.left, b.bottom, b.right, b.top])

    engines = ", ".join(f"{m.model_id} ({m.engine}) -> {m.name}" for m in plan.models)
    item.stac_extensions.append(PROCESSING_SCHEMA)
    item.properties.update({
        "processing:software": {"geoseg": __version__},
        "processing:datetime": _iso(now),
        "processing:lineage": f"Segmented {image} on its own grid with {engines}; "
                              "tiled prediction stitched per chunk, then exported",
    })

    for key, value in outputs.items():
        path = Path(value)
        if key.startswith("cog_") and path.is_file():
            _cog_asset(item, plan, key[4:], path, (class_pixels or {}).get(key[4:]))
    files = {"zarr": ("predictions", ZARR_TYPE, "data",
                      "Predictions: class ids and confidence per model (Zarr v3, one chunk per "
                      "unit of work)"),
             "gpkg": ("features", GPKG_TYPE, "data", "Vector features (GeoPackage)"),
             "quicklook": ("quicklook", str(pystac.MediaType.PNG), "overview",
                           "Quicklook: image beside each class map")}
    for key, (name, media, role, title) in files.items():
        path = Path(outputs.get(key, ""))
        if key == "zarr" and is_object_url(outputs.get(key, "")):
            path = layout.store  # written straight to object storage, beside the item
            item.add_asset(name, pystac.Asset(str(path.absolute()), title=title,
                                              media_type=media, roles=[role]))
        elif key in outputs and path.exists():
            asset = pystac.Asset(str(path.absolute()), title=title, media_type=media,
                                 roles=[role])
            item.add_asset(name, asset)
            if path.is_file():
                _file_info(asset, path)
    if layout.summary.is_file():
        summary = pystac.Asset(str(layout.summary.absolute()), title="Run summary",
                               media_type=str(pystac.MediaType.JSON), roles=["metadata"])
        item.add_asset("summary", summary)
        _file_info(summary, layout.summary)
    item.make_asset_hrefs_relative()
    return item


def _cog_asset(item: pystac.Item, plan: Plan, layer: str, path: Path,
               pixels: list[int] | None) -> None:
    model = plan.model(layer)
    classes = model.spec.classes if model is not None else ()
    asset = pystac.Asset(str(path.absolute()), media_type=COG_TYPE, roles=["data"],
                         title=f"{layer} class map"
                               + (f" ({model.model_id})" if model is not None else ""))
    item.add_asset(layer, asset)
    res_m = math.sqrt(_pixel_area_m2(plan))
    RasterExtension.ext(asset, add_if_missing=True).apply([RasterBand.create(
        nodata=FILL, data_type=DataType.UINT8, spatial_resolution=round(res_m, 6))])
    counts = pixels or []
    ClassificationExtension.ext(asset, add_if_missing=True).apply(classes=[
        *(Classification.create(
            value=c.id, name=_class_name(c.name), title=c.name,
            color_hint=c.color.lstrip("#").upper(),
            count=int(counts[c.id]) if c.id < len(counts) else None) for c in classes),
        Classification.create(value=FILL, name="nodata", title="no data", nodata=True)])
    _file_info(asset, path)


def _file_info(asset: pystac.Asset, path: Path) -> None:
    FileExtension.ext(asset, add_if_missing=True).apply(size=path.stat().st_size,
                                                        checksum=file_multihash(path))


def _class_name(name: str) -> str:
    """classification:classes ``name``: letters, digits, ``-`` and ``_`` only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def _pixel_area_m2(plan: Plan) -> float:
    from geoseg.area import pixel_area_m2

    return pixel_area_m2(plan.grid)


def _footprint(plan: Plan) -> tuple[Any, list[float]]:
    """Output grid (clipped to the region) in EPSG:4326, densified before reprojection, and its
    bbox."""
    b = plan.grid.bounds
    shape: Any = shapely.box(b.left, b.bottom, b.right, b.top)
    if plan.region is not None and not plan.region.is_box:
        clipped = shapely.intersection(shape, plan.region.to_crs(plan.grid.crs).geometry)
        if not clipped.is_empty:
            shape = clipped
    wgs84 = CRS.from_epsg(4326)
    if plan.grid.crs == wgs84:
        return _across_antimeridian(shape)
    seg = max(b.right - b.left, b.top - b.bottom) / 64 or 1.0
    t = Transformer.from_crs(plan.grid.crs, wgs84, always_xy=True)
    dense = shapely.segmentize(shape, max_segment_length=seg)
    lonlat = shapely.transform(dense, lambda xy: np.column_stack(t.transform(*xy.T)))
    # keep the vertices that bend the outline by more than ~1 cm: a few, not hundreds
    return _across_antimeridian(shapely.simplify(lonlat, 1e-7, preserve_topology=True))


def _across_antimeridian(lonlat: Any) -> tuple[Any, list[float]]:
    """``lonlat`` and its bbox as GeoJSON wants them (RFC 7946 §3.1.9, §5.2): a footprint that
    crosses 180° (its longitudes jump from +180 to -180, or run past ±180 on a lat/lon grid)
    is cut there into a MultiPolygon, and its bbox's west is then greater than its east."""
    west, south, east, north = lonlat.bounds
    if east - west > 180:  # jumps across 180: make it continuous, east of 180
        lonlat = shapely.transform(lonlat, lambda xy: np.column_stack(
            [np.where(xy[:, 0] < 0, xy[:, 0] + 360.0, xy[:, 0]), xy[:, 1]]))
        west, south, east, north = lonlat.bounds
    if west >= -180 and east <= 180:
        return lonlat, [west, south, east, north]
    edge = 180.0 if east > 180 else -180.0
    inside = shapely.intersection(lonlat, shapely.box(max(west, -180), -90, min(east, 180), 90))
    beyond = shapely.intersection(lonlat, shapely.box(edge, -90, east, 90) if edge > 0
                                  else shapely.box(west, -90, edge, 90))
    moved = shapely.transform(beyond, lambda xy: xy - np.array([np.sign(edge) * 360.0, 0.0]))
    parts = [g for part in (inside, moved) for g in getattr(part, "geoms", [part])
             if isinstance(g, shapely.Polygon) and not g.is_empty]
    return shapely.MultiPolygon(parts), [_wrap(west), south, _wrap(east), north]


def _wrap(lon: float) -> float:
    return (lon + 180.0) % 360.0 - 180.0


def _acquired(value: str | None, now: dt.datetime
              ) -> tuple[dt.datetime, dt.datetime | None, dt.datetime | None]:
    """(datetime, start, end): a full timestamp as it is (UTC if it names no zone); a bare date
    as its whole day (start/end, datetime its start); an interval ``A/B`` (a mosaic of several
    dates) from A's start to B's end; unknown or unreadable: the run's time."""
    if value:
        text = value.strip()
        try:
            first, _, last = text.partition("/")
            start, end = _span(first)[0], _span(last or first)[1]
            if not last and len(text) != 10:  # one timestamp: an instant, no range
                return start, None, None
            return start, start, end
        except ValueError:
            log.warning("acquisition date %r is not ISO 8601: the STAC item carries the run's "
                        "time instead", value)
    return now, None, None


def _span(text: str) -> tuple[dt.datetime, dt.datetime]:
    """The first and last instants of an ISO date (its whole day) or timestamp (UTC if it
    names no zone); ValueError when it is neither."""
    text = text.strip()
    if len(text) == 10:
        day = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), dt.UTC)
        return day, day + dt.timedelta(days=1) - dt.timedelta(microseconds=1)
    stamp = dt.datetime.fromisoformat(text)
    stamp = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
    return stamp, stamp


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


__all__ = ["build_stac_item", "file_multihash", "write_stac_item"]
