"""Image sources: one raster, many rasters, STAC catalogs, local or remote, as one input.

:func:`open_source` returns either a plain :class:`geoseg.io.RasterInfo` (one raster, read on its
own grid: the single-image path, unchanged) or a :class:`geoseg.sources.mosaic.Mosaic` (several
items, or a regridded raster). Both go wherever a ``RasterInfo`` goes;
:func:`geoseg.io.read_window` reads either.

Modules: :mod:`.remote` (GDAL network settings, URL mapping, redaction), :mod:`.inputs` (globs,
lists), :mod:`.stac` (STAC documents), :mod:`.build` (opening, output grid, ranking),
:mod:`.mosaic` (the mosaic and its window reads), :mod:`.warp` (one raster onto another grid).
Imports here are deferred: :mod:`geoseg.io` imports :mod:`.remote` while it loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geoseg.grid import Bounds
    from geoseg.io import RasterInfo
    from geoseg.sources.items import SourceItem
    from geoseg.sources.mosaic import Mosaic

__all__ = ["open_source"]


def _identity(bands: Sequence[str | int], info: RasterInfo) -> bool:
    """Whether ``bands`` are all of ``info``'s bands, in order (by number or description)."""
    want = [str(b).casefold() for b in bands]
    numbers = [str(i) for i in range(1, info.count + 1)]
    names = [str(n).casefold() for n in info.band_names]
    return want in (numbers, names)


def band_refs(bands: Sequence[str | int] | None) -> list[str | int] | None:
    """Bands as a config or a flag gives them (``red``, ``"2"``) as :func:`open_source` takes
    them: digits are 1-based band numbers, other text band names."""
    if bands is None:
        return None
    return [int(b) if str(b).isdigit() else b for b in bands]


def open_source(inputs: Sequence[str], *, bands: Sequence[str | int] | None = None,
                crs: Any = None, resolution: float | None = None, mosaic: str = "first",
                nodata: float | None = None, region: Bounds | None = None
                ) -> RasterInfo | Mosaic:
    """Open the job's imagery.

    ``inputs``: image paths or URLs (``https://``, ``s3://``, ``gs://``, ``az://``), globs,
    ``.txt`` files of paths/URLs (one per line), STAC ``.json`` documents (Item,
    ItemCollection, Catalog; local or http(s)), GDAL VRTs. ``bands``: band names (STAC: asset
    band names such as ``red``; files: band descriptions) or 1-based numbers; None: every band
    (files only). ``crs``/``resolution``: the output grid (default: the grid of the first item in
    the most common CRS). ``mosaic``: ``first``, ``latest`` or ``least-nodata`` (see
    :mod:`geoseg.sources.mosaic`). ``nodata``: a value treated as nodata in every item (for
    images that declare none, e.g. zero collars). ``region``: drop items that miss it.

    One raster without ``crs``/``resolution``/``nodata`` (and ``bands`` None or all of its bands
    in order) gives the plain :class:`~geoseg.io.RasterInfo`; anything else a ``Mosaic``.
    """
    from geoseg.errors import InputError
    from geoseg.grid import normalize_crs
    from geoseg.io import open_info
    from geoseg.sources.build import build_mosaic, file_items, open_all
    from geoseg.sources.inputs import expand_inputs
    from geoseg.sources.mosaic import RULES
    from geoseg.sources.stac import read_stac

    if mosaic not in RULES:
        raise InputError(f"unknown mosaic rule {mosaic!r}: use one of {', '.join(RULES)}")
    if resolution is not None and not resolution > 0:
        raise InputError(f"resolution must be positive, got {resolution}")
    entries = expand_inputs(inputs)
    if not entries:
        raise InputError("no input images given")
    out_crs = normalize_crs(crs) if crs is not None else None
    rasters = [h for kind, h in entries if kind == "raster"]
    if len(entries) == 1 and rasters and out_crs is None and resolution is None \
            and nodata is None:
        info = open_info(rasters[0])
        if bands is None or _identity(bands, info):
            return info
    infos = open_all(rasters, nodata)
    by_file = dict(zip(rasters, file_items(rasters, bands, infos), strict=True))
    items: list[SourceItem] = []
    for kind, href in entries:  # input order: it decides the "first" rule
        items += [by_file[href]] if kind == "raster" else read_stac([href], bands)
    return build_mosaic(items, band_names=_band_names(bands, items, infos),
                        rule=mosaic,  # type: ignore[arg-type]  # checked above
                        crs=out_crs, resolution=resolution, nodata=nodata, region=region,
                        infos=infos)


def _band_names(bands: Sequence[str | int] | None, items: Sequence[SourceItem],
                infos: dict[str, RasterInfo]) -> list[str | None]:
    """Mosaic band names: the names asked for, else the first item's band descriptions."""
    first = items[0]
    out: list[str | None] = []
    for k, ref in enumerate(first.bands):
        asked = bands[k] if bands is not None else None
        if isinstance(asked, str) and not asked.isdigit():
            out.append(asked)
        else:
            info = infos.get(ref.href)
            out.append(info.band_names[ref.index - 1] if info else None)
    return out
