"""Source items: what a mosaic is built from, before any raster is opened.

A :class:`SourceItem` is one acquisition (a STAC Item, or one image file): an id, a date and, per
band the job asks for, the file (local path or URL) and band index holding it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from shapely.geometry.base import BaseGeometry

from geoseg.sources.remote import redact


@dataclass(frozen=True)
class BandRef:
    """Band ``index`` (1-based) of the raster at ``href`` (absolute local path or URL)."""

    href: str
    index: int = 1


@dataclass(frozen=True)
class SourceItem:
    """One acquisition: ``bands[k]`` holds the k-th requested band; ``datetime`` is ISO 8601
    (or None when unknown); ``footprint`` is lon/lat (EPSG:4326), None when unknown (the
    rasters' own extent is used then)."""

    id: str
    datetime: str | None
    bands: tuple[BandRef, ...]
    footprint: BaseGeometry | None = None


def is_url(href: str) -> bool:
    return "://" in href and not href.lower().startswith("file://")


def resolve_href(href: str, base: str | None, uri: bool = False) -> str:
    """``href`` made absolute against ``base`` (the URL or path of the document naming it).
    ``file://`` URLs are percent-decoded (``my%20scene`` is the folder ``my scene``), and so
    is any local ``href`` when ``uri`` (a STAC href is a URI reference, RFC 3986; a line of a
    ``.txt`` list is a path, kept as written)."""
    if href.lower().startswith("file://"):
        return unquote(urlsplit(href).path)
    if is_url(href):
        return href
    if base and is_url(base) and not os.path.isabs(href):
        return urljoin(base, href)
    local = unquote(href) if uri else href
    if os.path.isabs(local) or not base:
        return local
    base_path = unquote(urlsplit(base).path) if base.lower().startswith("file://") else base
    return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(base_path)), local))


def item_id_of(href: str) -> str:
    """A short id for an image file: its name without extension (URLs: query removed)."""
    name = redact(href).split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    return Path(name).stem or name
