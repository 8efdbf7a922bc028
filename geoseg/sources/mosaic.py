"""A mosaic of many images on one output grid, read window by window.

:class:`Mosaic` stands in for :class:`geoseg.io.RasterInfo` everywhere (same attribute names,
picklable, no open handles); :func:`geoseg.io.read_window` dispatches to
:func:`read_window_sources`. ``geobox`` is the *output* grid; each item is read only over the
window asked for, resampled onto that grid (nearest, see :mod:`geoseg.sources.warp`).

Combining rule (per output pixel, among the items valid there):

- ``first``: the first item in input order;
- ``latest``: the item with the latest datetime (items without one come last; ties keep input
  order);
- ``least-nodata``: the item with the smallest nodata fraction over its own extent, measured once
  when the mosaic is built from a coarse read (≤ 256 px a side, overviews used where the file has
  them); ties keep input order.

Every rule is a fixed ranking of the items, so a pixel's value never depends on the window it is
read in: chunks and their halos agree, and results do not depend on the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import shapely
from rasterio.errors import RasterioIOError
from shapely.geometry.base import BaseGeometry

from geoseg.errors import InputError
from geoseg.grid import GeoBox, Window
from geoseg.io import ImageInfo, RasterInfo
from geoseg.sources.remote import is_remote

MosaicRule = Literal["first", "latest", "least-nodata"]
RULES: tuple[str, ...] = ("first", "latest", "least-nodata")
MAX_ITEMS = 65535  # source indices are uint16, 0 = no source


@dataclass(frozen=True)
class ItemPart:
    """Bands ``bands`` (1-based, of ``info``) feed mosaic bands ``slots`` (1-based)."""

    info: RasterInfo
    bands: tuple[int, ...]
    slots: tuple[int, ...]


@dataclass(frozen=True)
class MosaicItem:
    """One acquisition of the mosaic: its rasters, and where it has pixels (``footprint``,
    in the mosaic's CRS)."""

    id: str
    datetime: str | None
    parts: tuple[ItemPart, ...]
    footprint: BaseGeometry

    @property
    def hrefs(self) -> tuple[str, ...]:
        return tuple(p.info.path for p in self.parts)


@dataclass(frozen=True)
class SourceRef:
    """An item that produced pixels of a window: ``index`` is its value in the source index
    array (1-based position in :attr:`Mosaic.items`)."""

    index: int
    id: str
    datetime: str | None


@dataclass(frozen=True)
class Mosaic(ImageInfo):
    """Many images on one output grid (``geobox``; ``path`` is a short description)."""

    items: tuple[MosaicItem, ...]
    rule: MosaicRule = "first"
    order: tuple[int, ...] = ()  # item positions, highest priority first (the rule applied)

    @cached_property
    def _tree(self) -> shapely.STRtree:
        return shapely.STRtree([it.footprint for it in self.items])

    @cached_property
    def _rank(self) -> np.ndarray:
        rank = np.empty(len(self.items), dtype=np.int64)
        rank[list(self.order)] = np.arange(len(self.order))
        return rank

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_tree", None)  # rebuilt on demand where it is unpickled
        state.pop("_rank", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def candidates(self, window: Window) -> list[int]:
        """Positions of the items whose footprint overlaps ``window`` (of the output grid),
        highest priority first."""
        box = shapely.box(*_xy_bounds(self.geobox[window]))
        hits = [int(i) for i in self._tree.query(box, predicate="intersects")
                if self.items[int(i)].footprint.intersection(box).area > 0]
        return sorted(hits, key=lambda i: int(self._rank[i]))


def _xy_bounds(grid: GeoBox) -> tuple[float, float, float, float]:
    b = grid.bounds
    return (b.left, b.bottom, b.right, b.top)


def _last_line(exc: BaseException) -> str:
    root: BaseException = exc
    while root.__cause__ is not None:  # rasterio chains GDAL's own message
        root = root.__cause__
    lines = [ln for ln in str(root).splitlines() if ln.strip()]
    return lines[-1] if lines else "read failed"


def _read_item(item: MosaicItem, bands: tuple[int, ...], grid: GeoBox, window: Window,
               fill: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Mosaic ``bands`` of one item over ``window`` of ``grid``; valid where every part read
    is valid."""
    from geoseg.sources.warp import read_onto

    data = np.full((len(bands), *window.shape), fill, dtype=np.float32)
    valid: np.ndarray | None = None
    for part in item.parts:
        pos = [(k, part.bands[part.slots.index(b)]) for k, b in enumerate(bands)
               if b in part.slots]
        if not pos:
            continue
        try:
            d, v = read_onto(part.info, tuple(src for _, src in pos), grid, window, fill)
        except RasterioIOError as exc:
            if is_remote(part.info.path):
                raise  # a remote read may succeed on retry
            raise InputError(f"{part.info.path} (mosaic item {item.id}) is damaged: "
                             f"{_last_line(exc)[:160]}: repair or re-download it; a rerun "
                             "cannot fix this") from exc
        data[[k for k, _ in pos]] = d
        valid = v if valid is None else valid & v
    return None if valid is None else (data, valid)


def read_window_sources(m: Mosaic, window: Window, bands: tuple[int, ...], fill: float = 0.0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[SourceRef, ...]]:
    """Boundless read of mosaic ``bands`` (1-based) over ``window`` of the output grid.

    Returns ``(data float32 (C, H, W), valid bool (H, W), source uint16 (H, W), used)``:
    ``source`` holds, per pixel, the 1-based position in ``m.items`` of the item the pixel
    comes from (0: none, pixel invalid); ``used`` lists those items (``SourceRef``) in index
    order. Only items overlapping the window are read, and only until every pixel is filled.
    """
    bad = [b for b in bands if not 1 <= b <= m.count]
    if bad:
        raise IndexError(f"band(s) {bad} outside 1..{m.count} of {m.path}")
    h, w = window.shape
    data = np.full((len(bands), h, w), fill, dtype=np.float32)
    valid = np.zeros((h, w), dtype=bool)
    source = np.zeros((h, w), dtype=np.uint16)
    used: list[int] = []
    if window.size == 0:
        return data, valid, source, ()
    for i in m.candidates(window):
        got = _read_item(m.items[i], bands, m.geobox, window, fill)
        if got is None:
            continue
        take = got[1] & ~valid
        if not take.any():
            continue
        np.copyto(data, got[0], where=take[None])
        valid |= take
        source[take] = i + 1
        used.append(i)
        if valid.all():
            break
    refs = tuple(SourceRef(i + 1, m.items[i].id, m.items[i].datetime) for i in sorted(used))
    return data, valid, source, refs


def sources_record(refs: tuple[SourceRef, ...]) -> list[dict[str, Any]]:
    """JSON-ready list of the items that produced a window (for a chunk's manifest entry)."""
    return [{"index": r.index, "id": r.id, "datetime": r.datetime} for r in refs]


def dominant_source(source: np.ndarray, mask: np.ndarray) -> int:
    """The item index (1-based, 0: none) behind most pixels of ``mask`` in ``source`` (e.g. a
    feature's pixels): its date is the feature's acquisition date. Ties: the lowest index."""
    counts = np.bincount(source[mask & (source > 0)].ravel(), minlength=1)
    return int(counts.argmax()) if counts.size > 1 and counts[1:].any() else 0
