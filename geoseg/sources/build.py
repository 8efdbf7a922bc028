"""Building a :class:`~geoseg.sources.mosaic.Mosaic`: open every raster once (in parallel, only
headers), check the items agree, derive the output grid, rank the items by the rule.

Output grid: by default the grid (CRS, pixel size, alignment) of the reference item, the first
item in the most common CRS (its finest band when bands differ in resolution), grown to cover
the union of all items' footprints. ``crs`` and/or ``resolution`` override it; a grid not taken
from the reference item has its pixel edges on multiples of the resolution (``gdalwarp -tap``),
and ``crs`` without ``resolution`` takes the resolution GDAL suggests for the reference item in
that CRS.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry.base import BaseGeometry

from geoseg.errors import BandMismatchError, CRSError, GeoSegWarning, InputError, RegionError
from geoseg.grid import Bounds, GeoBox
from geoseg.io import RasterInfo, open_info
from geoseg.sources.items import BandRef, SourceItem, item_id_of
from geoseg.sources.mosaic import MAX_ITEMS, ItemPart, Mosaic, MosaicItem, MosaicRule
from geoseg.sources.remote import gdal_path, redact, remote_env

log = logging.getLogger(__name__)
WGS84 = CRS.from_epsg(4326)
_EPS = 1e-6


def open_all(hrefs: Sequence[str], nodata: float | None = None) -> dict[str, RasterInfo]:
    """:func:`geoseg.io.open_info` of every href (headers only, 8 at a time); one summary
    warning for the rasters that declare no nodata value; ``nodata`` is the nodata value of
    those (:func:`with_nodata`)."""
    unique = list(dict.fromkeys(hrefs))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(unique)))) as pool:
            infos = dict(zip(unique, pool.map(open_info, unique), strict=True))
    no_nodata = 0
    for w in caught:
        if "declares no nodata" in str(w.message):
            no_nodata += 1
        else:
            warnings.warn(w.message, w.category, stacklevel=2)
    if nodata is not None:
        return with_nodata(infos, nodata)
    if no_nodata:
        warnings.warn(f"{no_nodata} of {len(unique)} mosaic file(s) declare no nodata value: "
                      "every pixel of those is valid and covers the images below it (give a "
                      "nodata value to treat e.g. zero collars as holes)", GeoSegWarning,
                      stacklevel=2)
    return infos


def with_nodata(infos: dict[str, RasterInfo], nodata: float) -> dict[str, RasterInfo]:
    """``nodata`` (``--nodata``) for the rasters that declare no nodata value (their mask, e.g.
    the alpha GDAL reads into a 4th band of 8 bits, gives way to it, as before); a raster's own
    nodata value is kept (its collar must not become data), with one warning when it differs
    from ``nodata``."""
    def same(a: float) -> bool:
        return a == float(nodata) or (math.isnan(a) and math.isnan(float(nodata)))

    own = [k for k, v in infos.items() if v.nodata is not None]
    differ = [k for k in own if not same(float(infos[k].nodata))]  # type: ignore[arg-type]
    if differ:
        warnings.warn(f"--nodata {nodata:g} is used for the images that declare none; "
                      f"{len(differ)} declare their own, kept ({redact(differ[0])}: nodata "
                      f"{infos[differ[0]].nodata:g})", GeoSegWarning, stacklevel=3)
    return _fill_nodata(infos, nodata)


def _fill_nodata(infos: dict[str, RasterInfo], nodata: float) -> dict[str, RasterInfo]:
    """``nodata`` for the rasters that declare none (see :func:`with_nodata`)."""
    return {k: v if v.nodata is not None
            else replace(v, nodata=float(nodata), has_dataset_mask=False)
            for k, v in infos.items()}


def file_items(paths: Sequence[str], bands: Sequence[str | int] | None,
               infos: dict[str, RasterInfo]) -> list[SourceItem]:
    """One item per image file: ``bands`` picked by 1-based index or by band description
    (None: every band, the same number in every file)."""
    out: list[SourceItem] = []
    for p in paths:
        info = infos[p]
        if bands is None:
            first = infos[paths[0]]
            if info.count != first.count:
                raise BandMismatchError(
                    f"{redact(p)} has {info.count} band(s) but {redact(paths[0])} has "
                    f"{first.count}: choose the same bands of each (--bands)")
            index = _same_bands_as(info, first)
        else:
            index = [_band_index(info, b) for b in bands]
        out.append(SourceItem(item_id_of(p), info.acquisition_date,
                              tuple(BandRef(p, i) for i in index)))
    return out


def _named(info: RasterInfo) -> list[str] | None:
    """The file's band descriptions, case-folded, when every band has its own; else None."""
    names = [str(n).casefold() for n in info.band_names if n]
    return names if len(names) == info.count and len(set(names)) == info.count else None


def _listed(info: RasterInfo) -> str:
    return ", ".join(str(n) if n else "(unnamed)" for n in info.band_names)


def _same_bands_as(info: RasterInfo, first: RasterInfo) -> list[int]:
    """The bands of ``info`` in the order of the mosaic's first file: by name where both
    files name every band (a file stored blue, green, red is read red, green, blue), else by
    position. Files that name different bands are refused: position would mix them."""
    mine, theirs = _named(info), _named(first)
    if mine is None or theirs is None:  # by position, unless the names it has disagree
        pairs = zip(info.band_names, first.band_names, strict=False)
        if any(a and b and str(a).casefold() != str(b).casefold() for a, b in pairs):
            raise BandMismatchError(
                f"{redact(info.path)} names its bands {_listed(info)} but {redact(first.path)} "
                f"{_listed(first)}: by position they would be mixed; name every band of both "
                "(gdal_edit.py), so that they are matched by name")
        return list(range(1, info.count + 1))
    if mine == theirs:
        return list(range(1, info.count + 1))
    if sorted(mine) != sorted(theirs):
        raise BandMismatchError(
            f"{redact(info.path)} has bands named {', '.join(mine)} but {redact(first.path)} "
            f"has {', '.join(theirs)}: pick the same bands of each by name (--bands), or fix "
            "the band descriptions (gdal_edit.py)")
    return [mine.index(name) + 1 for name in theirs]


def _band_index(info: RasterInfo, band: str | int) -> int:
    if isinstance(band, int) or str(band).isdigit():
        i = int(band)
        if not 1 <= i <= info.count:
            raise BandMismatchError(f"{redact(info.path)} has no band {i} (it has "
                                    f"{info.count}): choose bands 1..{info.count}")
        return i
    names = [str(n).casefold() if n else None for n in info.band_names]
    if str(band).casefold() in names:
        return names.index(str(band).casefold()) + 1
    listed = ", ".join(str(n) for n in info.band_names)
    raise BandMismatchError(f"{redact(info.path)} has no band named {band!r} (its bands are "
                            f"named: {listed}): use band numbers, or name the bands "
                            "(gdal_edit.py -mo / band descriptions)")


def _parts(item: SourceItem, infos: dict[str, RasterInfo]) -> tuple[ItemPart, ...]:
    by_href: dict[str, list[tuple[int, int]]] = {}
    for slot, ref in enumerate(item.bands, start=1):
        by_href.setdefault(ref.href, []).append((ref.index, slot))
    parts = []
    for href, pairs in by_href.items():
        info = infos[href]
        for index, _ in pairs:
            if not 1 <= index <= info.count:
                raise BandMismatchError(f"item {item.id}: {redact(href)} has no band {index} "
                                        f"(it has {info.count})")
        parts.append(ItemPart(info, tuple(i for i, _ in pairs), tuple(s for _, s in pairs)))
    return tuple(parts)


def _check_dtypes(items: Sequence[SourceItem], parts: Sequence[tuple[ItemPart, ...]],
                  names: Sequence[str | None]) -> str:
    """The common dtype of every mosaic band (one per band across items, else an error)."""
    seen: dict[int, tuple[str, str]] = {}
    for item, item_parts in zip(items, parts, strict=True):
        for part in item_parts:
            for slot in part.slots:
                first = seen.setdefault(slot, (part.info.dtype, item.id))
                if first[0] != part.info.dtype:
                    band = names[slot - 1] or slot
                    raise InputError(
                        f"band {band} is {part.info.dtype} in item {item.id} but {first[0]} in "
                        f"item {first[1]}: a mosaic needs one pixel type (and scale) per band; "
                        "convert the images first (gdal_translate -ot ...)")
    return str(np.result_type(*[np.dtype(d) for d, _ in seen.values()]))


def outline(grid: GeoBox, crs: CRS, points: int = 21) -> BaseGeometry:
    """The extent of ``grid`` as a polygon in ``crs`` (edges densified, so curved edges of a
    reprojected extent are followed)."""
    b = grid.bounds
    poly = shapely.box(b.left, b.bottom, b.right, b.top)
    if crs == grid.crs:
        return poly
    poly = shapely.segmentize(poly, max(b.right - b.left, b.top - b.bottom) / points)
    t = Transformer.from_crs(grid.crs, crs, always_xy=True)
    out = shapely.transform(poly, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))
    if not np.all(np.isfinite(shapely.get_coordinates(out))):
        raise CRSError(f"{redact(grid.crs.name)} extent cannot be expressed in {crs.name}: "
                       "choose an output CRS that covers every image")
    return shapely.make_valid(out)


def _reference(parts: Sequence[tuple[ItemPart, ...]]) -> GeoBox:
    """The finest grid of the first item in the most common CRS."""
    crss: list[CRS] = []
    for item_parts in parts:
        crss.append(min((p.info.geobox for p in item_parts), key=lambda g: g.resolution[0]).crs)
    counts = [sum(c == other for other in crss) for c in crss]
    first = counts.index(max(counts))
    return min((p.info.geobox for p in parts[first]), key=lambda g: g.resolution[0])


def _default_resolution(ref: GeoBox, crs: CRS) -> float:
    from rasterio.crs import CRS as RioCRS
    from rasterio.warp import calculate_default_transform

    b = ref.bounds
    t, _, _ = calculate_default_transform(RioCRS.from_wkt(ref.crs.to_wkt()),
                                          RioCRS.from_wkt(crs.to_wkt()), ref.width, ref.height,
                                          b.left, b.bottom, b.right, b.top)
    return float(abs(t.a))


UNIT_SLIP = 1000.0
"""A ``--resolution`` this many times coarser or finer than the images' pixels is a unit slip
(metres given for a degree grid: 0.5 "m" is 0.5° ≈ 55 km), not a choice."""


def _check_units(resolution: float, native: float, crs: CRS) -> None:
    if native > 0 and not native / UNIT_SLIP <= resolution <= native * UNIT_SLIP:
        unit = crs.axis_info[0].unit_name if crs.axis_info else "unit"
        units = f"{unit}s" if unit in ("metre", "meter", "degree", "unit") else f"units ({unit})"
        raise InputError(
            f"--resolution {resolution:g} is in {units} of {crs.to_string()}, where the "
            f"images' pixels are about {native:.3g} {units}: give the pixel size in those "
            f"units (e.g. --resolution {native:.3g})")


def output_grid(ref: GeoBox, footprints: Sequence[BaseGeometry], crs: CRS | None,
                resolution: float | None) -> GeoBox:
    """The output grid (see the module docstring) covering ``footprints`` (in its CRS)."""
    out_crs = crs or ref.crs
    rx, ry = ref.resolution
    ox, oy = ref.transform.c, ref.transform.f
    if ref.transform.e > 0:
        raise InputError("south-up rasters are not supported: warp them north-up first")
    if out_crs != ref.crs or (resolution is not None and not (
            math.isclose(resolution, rx) and math.isclose(resolution, ry))):
        native = _default_resolution(ref, out_crs)
        if resolution is not None:
            _check_units(resolution, native, out_crs)
        rx = ry = float(resolution) if resolution is not None else native
        ox = oy = 0.0
    left, bottom, right, top = shapely.total_bounds(list(footprints))
    c0, c1 = math.floor((left - ox) / rx + _EPS), math.ceil((right - ox) / rx - _EPS)
    r0, r1 = math.floor((oy - top) / ry + _EPS), math.ceil((oy - bottom) / ry - _EPS)
    transform = Affine(rx, 0.0, ox + c0 * rx, 0.0, -ry, oy - r0 * ry)
    return GeoBox((max(1, r1 - r0), max(1, c1 - c0)), transform, out_crs)


def _when(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def rank(items: Sequence[MosaicItem], rule: MosaicRule) -> tuple[int, ...]:
    """Item positions, highest priority first, for ``rule`` (see :mod:`.mosaic`)."""
    n = range(len(items))
    if rule == "first":
        return tuple(n)
    if rule == "latest":
        stamps = [_when(it.datetime) for it in items]
        secs = [s.timestamp() if s is not None else 0.0 for s in stamps]
        return tuple(sorted(n, key=lambda i: (stamps[i] is None, -secs[i], i)))
    if rule == "least-nodata":
        fractions = [min(valid_fraction(p) for p in it.parts) for it in items]
        for it, f in zip(items, fractions, strict=True):
            log.info("item %s: %.1f %% valid", it.id, 100 * f)
        return tuple(sorted(n, key=lambda i: (-fractions[i], i)))
    raise InputError(f"unknown mosaic rule {rule!r}: use first, latest or least-nodata")


def valid_fraction(part: ItemPart, size: int = 256) -> float:
    """Fraction of valid pixels of a part, from a nearest-neighbour read of ≤ ``size`` px a
    side (validity as :func:`geoseg.io.read_window` decides it)."""
    import rasterio
    from rasterio.enums import Resampling

    info = part.info
    h, w = info.geobox.shape
    step = max(1, math.ceil(max(h, w) / size))
    shape = (max(1, h // step), max(1, w // step))
    with remote_env(info.path), rasterio.open(gdal_path(info.path)) as src:
        arr = src.read(list(part.bands), out_shape=(len(part.bands), *shape),
                       resampling=Resampling.nearest)
        if info.nodata is not None and not np.isnan(info.nodata):
            ok = ~np.all(arr == info.nodata, axis=0)
        elif info.has_dataset_mask:
            ok = src.dataset_mask(out_shape=shape, resampling=Resampling.nearest) > 0
        else:
            ok = np.ones(shape, dtype=bool)
    if arr.dtype.kind in "fc":
        ok &= np.all(np.isfinite(arr), axis=0)
    return float(ok.mean())


def _acquisition(items: Sequence[MosaicItem]) -> str | None:
    days = sorted({it.datetime[:10] for it in items if it.datetime})
    if not days:
        return None
    return days[0] if len(days) == 1 else f"{days[0]}/{days[-1]}"


def _keep(items: list[SourceItem], region: Bounds | None) -> list[SourceItem]:
    """Items whose known (lon/lat) footprint meets ``region``; unknown footprints are kept."""
    if region is None:
        return items
    r = region.to_crs(WGS84)
    box = shapely.box(r.left, r.bottom, r.right, r.top)
    return [it for it in items if it.footprint is None or it.footprint.intersects(box)]


def build_mosaic(items: Sequence[SourceItem], *, band_names: Sequence[str | None],
                 rule: MosaicRule = "first", crs: CRS | None = None,
                 resolution: float | None = None, nodata: float | None = None,
                 region: Bounds | None = None,
                 infos: dict[str, RasterInfo] | None = None) -> Mosaic:
    """The mosaic of ``items`` (see the module docstring); ``region`` (any CRS) drops the
    items that do not overlap it; ``infos`` are rasters already opened (by href)."""
    kept = _keep(list(items), region)
    if not kept:
        raise RegionError(f"none of the {len(items)} item(s) overlaps the region: check the "
                          "region and its CRS, or the inputs")
    if len(kept) > MAX_ITEMS:
        raise InputError(f"{len(kept)} items: a mosaic takes at most {MAX_ITEMS}; narrow the "
                         "inputs (region, dates)")
    hrefs = [ref.href for it in kept for ref in it.bands]
    known = {k: v for k, v in (infos or {}).items() if k in hrefs}
    opened = open_all([h for h in hrefs if h not in known], nodata)
    if nodata is not None and known:  # opened by the caller (open_all: already applied)
        known = _fill_nodata(known, nodata)
    all_infos = {**known, **opened}
    parts = [_parts(it, all_infos) for it in kept]
    dtype = _check_dtypes(kept, parts, band_names)
    ref = _reference(parts)
    out_crs = crs or ref.crs
    crss = {p.info.geobox.crs.to_string() for ps in parts for p in ps}
    if crs is None and len(crss) > 1:  # a choice the user should see, not an error
        warnings.warn(f"the images are in {len(crss)} CRSs ({', '.join(sorted(crss))}): the "
                      f"output grid is in {ref.crs.to_string()}, the most common; pass --crs "
                      "(and --resolution) to choose", GeoSegWarning, stacklevel=2)
    feet = [shapely.union_all([outline(p.info.geobox, out_crs) for p in ps]) for ps in parts]
    mitems = [MosaicItem(it.id, it.datetime, ps, fp)
              for it, ps, fp in zip(kept, parts, feet, strict=True)]
    if region is not None:
        r = region.to_crs(out_crs)
        box = shapely.box(r.left, r.bottom, r.right, r.top)
        mitems = [m for m in mitems if m.footprint.intersection(box).area > 0]
        if not mitems:
            raise RegionError(f"none of the {len(kept)} image(s) overlaps the region: check "
                              "the region and its CRS, or the inputs")
    grid = output_grid(ref, [m.footprint for m in mitems], crs, resolution)
    nodatas = {p.info.nodata for m in mitems for p in m.parts}
    ids = [m.id for m in mitems]
    path = (f"mosaic of {len(ids)} item(s) ({rule}): {', '.join(ids[:3])}"
            f"{', …' if len(ids) > 3 else ''}")
    log.info("%s on a %dx%d grid, %s", path, grid.height, grid.width, grid.crs.name)
    return Mosaic(path, grid, len(band_names), dtype,
                  nodatas.pop() if len(nodatas) == 1 else None, True,
                  tuple(band_names), _acquisition(mitems), tuple(mitems), rule,
                  rank(mitems, rule))
