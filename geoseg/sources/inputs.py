"""Turning what a user typed into a list of inputs: globs expanded, ``.txt`` lists read, STAC
documents told apart from rasters."""

from __future__ import annotations

import glob
import logging
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from geoseg.errors import InputError, RasterNotFoundError
from geoseg.sources.items import is_url, resolve_href
from geoseg.sources.remote import is_remote, redact

log = logging.getLogger(__name__)

Kind = Literal["raster", "stac"]
STAC_SUFFIXES = (".json", ".geojson")
LIST_SUFFIXES = (".txt",)
_MAX_DEPTH = 3


def names_several(href: str) -> bool:
    """Whether one input may name several images (a glob, a ``.txt`` list, a STAC document),
    or must be made a path first (a ``file://`` URL): :func:`expand_inputs` reads it."""
    pattern = not _addressed(href) and glob.has_magic(href) and not os.path.exists(href)
    return (pattern or _suffix(href) in LIST_SUFFIXES + STAC_SUFFIXES
            or href.lower().startswith("file://"))  # made a path by expand_inputs


def _addressed(href: str) -> bool:
    """Whether ``href`` is a URL or a GDAL virtual path, not a local path (nor a pattern)."""
    return is_remote(href) or "://" in href or href.startswith("/vsi")


def _suffix(href: str) -> str:
    name = href.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return Path(name).suffix.lower()


def _read_list(href: str) -> list[str]:
    """Lines of a text file of paths/URLs (blank lines and ``#`` comments skipped), relative
    paths resolved against the file's location."""
    try:
        if href.lower().startswith(("http://", "https://")):
            with urllib.request.urlopen(href, timeout=60) as r:
                text = r.read().decode("utf-8")
        elif is_url(href):
            raise InputError(f"{redact(href)}: lists of inputs are read from local files or "
                             "http(s) only; copy it locally")
        else:
            text = Path(href).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the input list {redact(href)}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"the input list {redact(href)} is not UTF-8 text (byte {exc.start}): "
                         "give a text file with one path or URL per line") from exc
    lines = [ln.strip() for ln in text.splitlines()]
    return [resolve_href(ln, href) for ln in lines if ln and not ln.startswith("#")]


def expand_inputs(inputs: Sequence[str], _depth: int = 0) -> list[tuple[Kind, str]]:
    """``(kind, href)`` per input in order: globs expanded (sorted), ``.txt`` lists read, ``.json``
    taken as STAC, anything else as a raster (local path, URL, VRT); duplicates dropped."""
    if _depth > _MAX_DEPTH:
        raise InputError("input lists nest too deeply (a .txt naming itself?)")
    out: list[tuple[Kind, str]] = []
    for raw in inputs:
        href = str(raw).strip()
        if not href:
            continue
        if href.lower().startswith("file://"):  # a local file, as GDAL does not read the URL
            href = resolve_href(href, None)
        suffix = _suffix(href)
        if suffix in LIST_SUFFIXES:
            listed = _read_list(href)
            if not listed:
                raise InputError(f"the input list {redact(href)} names no image: write one "
                                 "path or URL per line")
            try:
                out += expand_inputs(listed, _depth + 1)
            except RasterNotFoundError as exc:
                raise RasterNotFoundError(f"{exc} (listed in {redact(href)})") from None
        elif _addressed(href):
            out.append(("stac" if suffix in STAC_SUFFIXES else "raster", href))
        elif glob.has_magic(href) and not Path(href).exists():  # scan[1].tif: that file
            matches = sorted(p for p in glob.glob(href, recursive=True) if Path(p).is_file())
            if not matches:
                raise RasterNotFoundError(f"no file matches {href} (check the pattern)")
            out += expand_inputs(matches, _depth + 1)
        elif not Path(href).exists():
            raise RasterNotFoundError(f"input not found: {href} (check the path)")
        else:
            out.append(("stac" if suffix in STAC_SUFFIXES else "raster", href))
    first: dict[tuple[Kind, str], tuple[Kind, str]] = {}
    for kind, href in out:  # a.tif, ./a.tif and /abs/a.tif are one file
        first.setdefault((kind, href if _addressed(href) else os.path.realpath(href)),
                         (kind, href))
    unique = list(first.values())
    if len(unique) < len(out):
        log.warning("%d repeated input(s) ignored", len(out) - len(unique))
    return unique
