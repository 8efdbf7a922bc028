"""STAC inputs: an Item, an ItemCollection or a static Catalog/Collection (a local file or an
http(s) URL) → :class:`~geoseg.sources.items.SourceItem` per item, bands chosen by name.

A requested band name matches, case-insensitively and in this order: a band's ``name`` or
``common_name`` in an asset's ``eo:bands`` (STAC 1.0), ``name`` or ``eo:common_name`` in its
``bands`` (STAC 1.1), a ``name`` in ``raster:bands``, then the asset key of a single-band asset.
Where several assets match (e.g. ``red`` and ``red-jp2``), a GeoTIFF/COG asset wins, then the
first. Thumbnails, overviews and metadata assets are never chosen. Relative asset hrefs are
resolved against the document that names them.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import shapely.errors
import shapely.geometry

from geoseg.errors import InputError
from geoseg.sources.items import BandRef, SourceItem, resolve_href
from geoseg.sources.remote import redact

log = logging.getLogger(__name__)

_SKIP_ROLES = {"thumbnail", "overview", "metadata", "visual-thumbnail"}


def _pystac() -> Any:
    try:
        import pystac
    except ImportError as exc:  # pragma: no cover - pystac is a dependency
        from geoseg.errors import MissingDependencyError

        raise MissingDependencyError("STAC inputs need pystac: pip install pystac") from exc
    return pystac


def load_items(href: str) -> list[tuple[Any, str]]:
    """``(pystac.Item, base href)`` for every item of the STAC document at ``href`` (catalogs:
    recursively); relative asset hrefs resolve against the base."""
    pystac = _pystac()
    scheme = href.partition("://")[0].lower() if "://" in href else ""
    if scheme and scheme not in ("http", "https", "file"):
        raise InputError(f"{redact(href)}: STAC documents are read from local files or "
                         "http(s) only; copy it locally (its assets may stay in "
                         f"{scheme}://: they are read as any image)")
    try:
        d = pystac.StacIO.default().read_json(href)
    except Exception as exc:  # OSError, HTTPError, JSON errors: all one answer
        raise InputError(f"cannot read STAC document {redact(href)}: "
                         f"{redact(str(exc)).splitlines()[0] if str(exc) else exc!r}") from exc
    kind = d.get("type") if isinstance(d, dict) else None
    try:
        if kind == "FeatureCollection":
            # items of a collection have no self link: hrefs are relative to the collection
            return [(it, href) for it in pystac.ItemCollection.from_dict(d).items]
        if kind in ("Feature", "Catalog", "Collection"):
            obj = pystac.read_dict(d, href=href)
            if kind == "Feature":
                return [(obj, href)]
            return [(it, it.get_self_href() or href) for it in obj.get_items(recursive=True)]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{redact(href)} is not valid STAC ({type(exc).__name__}: "
                         f"{redact(str(exc))[:160]}): check it with stac-validator") from exc
    raise InputError(f"{redact(href)} is not a STAC Item, ItemCollection or Catalog (type "
                     f"{kind!r}): give one of those, or image files")


def _band_entries(asset: Any, item: Any) -> list[Mapping[str, Any]]:
    """The band descriptions of ``asset`` (one per band of its file, in order)."""
    extra = asset.extra_fields
    for key in ("eo:bands", "bands"):
        entries = extra.get(key)
        if isinstance(entries, list) and entries:
            if all(isinstance(e, int) for e in entries):  # STAC 0.x: indexes into the item's
                bands = item.properties.get("eo:bands") or []
                return [bands[i] if 0 <= i < len(bands) else {} for i in entries]
            return [e if isinstance(e, Mapping) else {} for e in entries]
    entries = extra.get("raster:bands")
    if isinstance(entries, list):
        return [e if isinstance(e, Mapping) else {} for e in entries]
    return []


def _names(entry: Mapping[str, Any]) -> set[str]:
    keys = ("name", "common_name", "eo:common_name")
    return {str(entry[k]).casefold() for k in keys if entry.get(k)}


def _is_data(asset: Any) -> bool:
    roles = set(asset.roles or [])
    if roles & _SKIP_ROLES and "data" not in roles:
        return False
    media = (asset.media_type or "").lower()
    return not media or "tiff" in media or "jp2" in media or "octet" in media or "vrt" in media


def _is_tiff(key: str, asset: Any) -> bool:
    media = (asset.media_type or "").lower()
    return "tiff" in media or asset.href.lower().split("?")[0].endswith((".tif", ".tiff"))


def find_band(item: Any, name: str) -> tuple[str, int] | None:
    """(asset key, 1-based band index) of band ``name`` in ``item``, or None."""
    want = name.casefold()
    hits: list[tuple[int, str, int]] = []  # (rank, key, index)
    for key, asset in item.assets.items():
        if not _is_data(asset):
            continue
        entries = _band_entries(asset, item)
        for i, entry in enumerate(entries):
            if want in _names(entry):
                hits.append((0 if _is_tiff(key, asset) else 1, key, i + 1))
                break
        else:
            if key.casefold() == want and len(entries) <= 1:
                hits.append((2 if _is_tiff(key, asset) else 3, key, 1))
    if not hits:
        return None
    _, key, index = min(hits, key=lambda h: h[0])  # stable: first asset of the best rank
    return key, index


def _describe_assets(item: Any) -> str:
    parts = []
    for key, asset in item.assets.items():
        if not _is_data(asset):
            continue
        names = sorted({str(e[k]) for e in _band_entries(asset, item)
                        for k in ("name", "common_name", "eo:common_name") if e.get(k)})
        parts.append(f"{key} ({', '.join(names)})" if names else key)
    return ", ".join(parts) or "none"


def _datetime(item: Any) -> str | None:
    when = item.datetime
    if when is None:
        start = item.properties.get("start_datetime")
        return str(start) if start else None
    if isinstance(when, dt.datetime):
        if when.tzinfo is not None and when.utcoffset() == dt.timedelta(0):
            return when.replace(tzinfo=None).isoformat() + "Z"
        return when.isoformat()
    return str(when)


def to_source_item(item: Any, bands: Sequence[str], base: str) -> SourceItem:
    """The :class:`SourceItem` of one ``pystac.Item`` for ``bands`` (names)."""
    refs: list[BandRef] = []
    for name in bands:
        found = find_band(item, name)
        if found is None:
            raise InputError(f"STAC item {item.id} has no asset for band {name!r}; its data "
                             f"assets (band names) are: {_describe_assets(item)}: choose bands "
                             "from these")
        key, index = found
        asset = item.assets[key]
        if not str(asset.href or "").strip():
            raise InputError(f"STAC item {item.id}: asset {key!r} (band {name!r}) has an empty "
                             "href: fix the item, or choose another band")
        href = asset.get_absolute_href() or asset.href
        refs.append(BandRef(resolve_href(href, item.get_self_href() or base, uri=True),
                                index))
    footprint = None
    try:
        if item.geometry:
            footprint = shapely.geometry.shape(item.geometry)
        elif item.bbox:
            footprint = shapely.geometry.box(*item.bbox[:2], *item.bbox[-2:])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError,
            shapely.errors.ShapelyError) as exc:
        raise InputError(f"STAC item {item.id} has a malformed geometry or bbox ({exc}): fix "
                         "the item (GeoJSON geometry, bbox [west, south, east, north])") from exc
    return SourceItem(str(item.id), _datetime(item), tuple(refs), footprint)


def read_stac(hrefs: Iterable[str], bands: Sequence[str | int] | None) -> list[SourceItem]:
    """Source items of every STAC document in ``hrefs`` (in document order)."""
    docs = list(hrefs)
    if not bands or not all(isinstance(b, str) for b in bands):
        raise InputError("STAC inputs need band names (e.g. --bands red,green,blue,nir): "
                         "a STAC item's bands are separate assets, chosen by name")
    names = [str(b) for b in bands]
    out: list[SourceItem] = []
    for href in docs:
        pairs = load_items(href)
        if not pairs:
            raise InputError(f"{redact(href)} holds no STAC items: point at a catalog with "
                             "items, an ItemCollection or an Item")
        out += [to_source_item(item, names, base) for item, base in pairs]
    ids = [it.id for it in out]
    if len(set(ids)) != len(ids):
        log.warning("STAC inputs repeat item ids; each occurrence is used as its own item")
    log.info("%d STAC item(s) from %d document(s)", len(out), len(docs))
    return out
