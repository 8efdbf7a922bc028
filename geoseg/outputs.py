"""Derived outputs: Cloud-Optimized GeoTIFF of a class map, quicklook PNG, pixel areas.

All read the store chunk by chunk: memory is O(chunk), not O(scene).
"""

from __future__ import annotations

import functools
import io
import math
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.shutil import copy as rio_copy
from rasterio.windows import Window as RioWindow

from geoseg.area import pixel_area_m2
from geoseg.bundle import ClassSpec
from geoseg.grid import Window
from geoseg.io import read_window
from geoseg.objstore import is_object_url
from geoseg.outdir import atomic_write_bytes, storage_errors
from geoseg.plan import Plan
from geoseg.store import FILL, read_layer
from geoseg.thumbs import (
    IMAGE,
    Thumbs,
    panel_bands,
    quicklook_limit,
    quicklook_step,
    sample_slices,
)

# GDAL's block cache (default 5 % of RAM) fills with the whole raster while a COG and its
# overviews are built: the 16384² class map took 343 MB RSS to convert with the default, 87 MB
# with a capped cache, in the same time. Exports stream chunks, so a small cache keeps them
# O(chunk). rasterio hands GDAL_CACHEMAX to GDALSetCacheMax64, in BYTES: "64" was a 64-byte
# cache (every block flushed and re-read at once; a concurrent export then lost a chunk of a
# COG once in a full test run), so the cap is given in bytes, and GeoTIFF writers take turns.
EXPORT_CACHE_BYTES = 64 * 2**20
_GTIFF_WRITES = threading.Lock()
# libdeflate's level 6 (GDAL's default) searches matches much harder than level 5: the COG of
# the 16384² replay class map (main image + overviews, one thread) took 5.2-5.4 CPU-s at level
# 6 against 3.1 at 5, for 14.9 against 17.2 MB; the demo's 4096² land cover 0.40 → 0.25 CPU-s
# for 1.0 → 1.1 MB (DESIGN.md, "COG at DEFLATE level 5"). The export is the tail of every job.
COG_DEFLATE_LEVEL = 5


def export_cog(plan: Plan, store: str, layer: str, path: str | Path, threads: int = 1) -> Path:
    """Class map of ``layer`` as a COG (DEFLATE at :data:`COG_DEFLATE_LEVEL`, 512 tiles,
    overviews, colour table, nodata), its tiles compressed by ``threads`` GDAL threads (the
    same file for any number).

    GDAL's COG driver only copies: from a local store it copies a VRT over the store's Zarr
    array (GDAL reads Zarr v2 with Blosc), otherwise from a tiled GeoTIFF written chunk by
    chunk. The VRT saves that GeoTIFF's DEFLATE encode and decode: 14.9 → 11.3 CPU-s for the
    null model's 16384² class map (DESIGN.md); both give the same pixels, overviews, colour
    table and tags (tested). The export runs after the last chunk, so its DEFLATE is the tail of
    a job: 2 threads took the null model's 16384² map from 9.3–9.4 to 4.7–5.1 s of wall time
    for the same CPU-s and bytes (DESIGN.md)."""
    final = Path(path)
    tmp = final.with_name(f".tiles-{final.stem}.tif")
    vrt = final.with_name(f".tiles-{final.stem}.vrt")
    out_tmp = final.with_name(f".partial-{final.name}")
    for t in (tmp, vrt, out_tmp):  # geoseg's own temporary names: never write through a link
        if t.is_symlink() or t.exists():
            t.unlink()
    classes = next(m.spec.classes for m in plan.models if m.name == layer)
    source = _zarr_source(store, layer)
    with _GTIFF_WRITES, storage_errors(final), rasterio.Env(GDAL_CACHEMAX=EXPORT_CACHE_BYTES):
        if source is not None:
            vrt.write_text(_class_vrt(plan, source, classes, plan.chunks.chunk))
            src = vrt
        else:
            _write_tiles(plan, store, layer, classes, tmp)
            src = tmp
        rio_copy(src, out_tmp, driver="COG", compress="DEFLATE", level=COG_DEFLATE_LEVEL,
                 blocksize=512, overview_resampling="nearest", num_threads=max(1, threads))
    src.unlink()
    os.replace(out_tmp, final)
    return final


def _write_tiles(plan: Plan, store: str, layer: str, classes: tuple[ClassSpec, ...],
                 tmp: Path) -> None:
    """The class map as a tiled GeoTIFF, read from the store chunk by chunk."""
    g = plan.grid
    profile = {"driver": "GTiff", "width": g.width, "height": g.height, "count": 1,
               "dtype": "uint8", "crs": g.crs.to_wkt(), "transform": g.transform,
               "nodata": FILL, "tiled": True, "blockxsize": 512, "blockysize": 512,
               "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    with rasterio.open(tmp, "w", **profile) as dst:
        for chunk in plan.chunks:
            w = chunk.window
            dst.write(read_layer(store, layer, w), 1,
                      window=RioWindow(w.col_off, w.row_off, w.width, w.height))
        dst.write_colormap(1, {c.id: (*c.rgb, 255) for c in classes})
        dst.update_tags(1, **{f"class_{c.id}": c.name for c in classes})


def _zarr_source(store: str, layer: str) -> str | None:
    """GDAL's name of a local store's array (None for object storage, or a path GDAL's
    ``ZARR:"path":/array`` syntax cannot quote)."""
    if is_object_url(store):
        return None
    path = str(Path(store).resolve())
    if '"' in path or not (Path(path) / layer / ".zarray").is_file():
        return None
    return f'ZARR:"{path}":/{layer}'


def _class_vrt(plan: Plan, source: str, classes: tuple[ClassSpec, ...], block: int) -> str:
    """A VRT of one class array with the grid's georeferencing, nodata, colour table (the
    entries ``write_colormap`` makes: up to the largest class id, others transparent black)
    and class-name tags. Its blocks are the array's ``block``² chunks (the store is chunked
    as the plan, :func:`geoseg.store.init_store`): with VRT's default 128² blocks each
    chunk was decoded many times, and more so by the COG's compression threads (16384² null
    map: 9.9 → 9.1 CPU-s alone, with 2 threads 12.2 → 9.0 CPU-s and 7.0 → 4.7 s)."""
    from xml.sax.saxutils import escape

    g = plan.grid
    t = g.transform
    colors = {c.id: c.rgb for c in classes}
    entries = "".join(
        '<Entry c1="{}" c2="{}" c3="{}" c4="{}"/>'.format(*colors[i], 255) if i in colors
        else '<Entry c1="0" c2="0" c3="0" c4="0"/>' for i in range(max(colors) + 1))
    tags = "".join(f'<MDI key="class_{c.id}">{escape(c.name)}</MDI>' for c in classes)
    return (f'<VRTDataset rasterXSize="{g.width}" rasterYSize="{g.height}">'
            f"<SRS>{escape(g.crs.to_wkt())}</SRS>"
            f"<GeoTransform>{t.c!r}, {t.a!r}, {t.b!r}, {t.f!r}, {t.d!r}, {t.e!r}</GeoTransform>"
            f'<VRTRasterBand dataType="Byte" band="1" blockXSize="{block}" '
            f'blockYSize="{block}">'
            f"<Metadata>{tags}</Metadata><NoDataValue>{FILL}</NoDataValue>"
            f"<ColorInterp>Palette</ColorInterp><ColorTable>{entries}</ColorTable>"
            f'<SimpleSource><SourceFilename relativeToVRT="0">{escape(source)}'
            "</SourceFilename><SourceBand>1</SourceBand></SimpleSource>"
            "</VRTRasterBand></VRTDataset>")


def _palette(classes: tuple[ClassSpec, ...]) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    for c in classes:
        lut[c.id] = c.rgb
    lut[FILL] = (40, 40, 40)
    return lut


def quicklook(plan: Plan, store: str, path: str | Path, max_px: int | None = None,
              thumbs: Mapping[str, Thumbs] | None = None) -> Path:
    """PNG: the image (RGB) beside each predicted class map, decimated to ≤ ``max_px`` wide
    (default :data:`~geoseg.thumbs.QUICKLOOK_PX`).

    Every panel is sampled at the same pixels, chunk by chunk, so memory is O(chunk + PNG).
    ``thumbs`` (chunk id -> its sampled pixels, taken by the run: :mod:`geoseg.thumbs`) spare
    reading the image and the store again; a chunk without them is read."""
    g = plan.grid
    step = quicklook_step(g.height, g.width, max_px)
    have = {k: t.arrays for k, t in (thumbs or {}).items() if t.step == step}
    shape = (-(-g.height // step), -(-g.width // step))
    panels = [_image_panel(plan, step, shape, {k: t[IMAGE] for k, t in have.items()
                                               if IMAGE in t})]
    for m in plan.models:  # class ids decimated first, coloured once at PNG size
        ids = _decimate(plan, step, shape, 1, functools.partial(_class_ids, store, m.name),
                        np.uint8,
                        {k: t[m.name][..., None] for k, t in have.items() if m.name in t})
        panels.append(_palette(m.spec.classes)[ids[..., 0]])
    gap = np.full((shape[0], 8, 3), 255, np.uint8)
    row = Image.fromarray(np.concatenate([p for pan in panels for p in (pan, gap)][:-1], axis=1))
    aspect = abs(g.transform.e) / abs(g.transform.a)  # ground shape: a pixel 0.5 × 0.75 m
    if g.crs.is_geographic:  # is drawn 2 wide by 3 high; a degree of longitude is cos(lat)
        lat = (g.bounds.bottom + g.bounds.top) / 2  # of one of latitude
        aspect /= max(0.05, math.cos(math.radians(lat)))
    if abs(aspect - 1.0) > 0.01:  # a panel taller than the limit is narrowed instead
        shrink = min(1.0, quicklook_limit(max_px) / (row.height * aspect))
        row = row.resize((max(1, round(row.width * shrink)),
                          max(1, round(row.height * aspect * shrink))), Image.Resampling.NEAREST)
    legend = _legend(row.width, [(m.name, m.spec.classes) for m in plan.models])
    sheet = Image.new("RGB", (row.width, row.height + legend.height), (255, 255, 255))
    sheet.paste(row, (0, 0))
    sheet.paste(legend, (0, row.height))
    final = Path(path)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(final, buf.getvalue())  # replaces a symlink, never follows it
    return final


def _legend(width: int, layers: list[tuple[str, tuple[ClassSpec, ...]]]) -> Image.Image:
    """The key under the quicklook's panels (image, then one per model, left to right): per
    model its name, then a swatch and the name of each class (and of nodata), in lines that
    wrap at ``width``; Pillow's built-in font, so it draws the same everywhere."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    pad, box, line = 4, 10, 14
    items: list[tuple[str, tuple[int, int, int] | None]] = [("panels: image", None)]
    for name, classes in layers:
        items += [(f"| {name}:", None), *((c.name, c.rgb) for c in classes)]
    items.append(("nodata", (40, 40, 40)))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed: list[tuple[int, int, str, tuple[int, int, int] | None]] = []
    x = y = pad
    for text, rgb in items:
        w = round(scratch.textlength(text, font=font)) + (box + 3 if rgb else 0) + 8
        if x > pad and x + w > width:
            x, y = pad, y + line
        placed.append((x, y, text, rgb))
        x += w
    img = Image.new("RGB", (width, y + line + pad), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for x, y, text, rgb in placed:
        if rgb is not None:
            draw.rectangle((x, y + 1, x + box - 1, y + box), fill=rgb, outline=(0, 0, 0))
            x += box + 3
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return img


def _class_ids(store: str, layer: str, w: Window) -> np.ndarray:
    return np.asarray(read_layer(store, layer, w))[..., None]


def _decimate(plan: Plan, step: int, shape: tuple[int, int], bands: int,
              read: Callable[[Window], np.ndarray], dtype: type = np.uint8,
              taken: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """Every ``step``-th pixel of the output grid, chunk by chunk: a chunk's pixels from
    ``taken`` (chunk id -> its sampled (rows, cols, bands)) where there, else ``read(window)``
    returns that chunk as (rows, cols, bands) and is sampled."""
    out: np.ndarray = np.zeros((*shape, bands), dtype)
    for chunk in plan.chunks:
        w = chunk.window
        r0, c0 = -(-w.row_off // step), -(-w.col_off // step)
        block = (taken or {}).get(chunk.id)
        if block is None:
            block = read(w)[sample_slices(w, step)]
        out[r0:r0 + block.shape[0], c0:c0 + block.shape[1]] = block
    return out


def _image_panel(plan: Plan, step: int, shape: tuple[int, int],
                 taken: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    """The image's first three bands (or its first band as grey), 2–98 % stretched; pixels the
    reads find invalid (nodata, masked, NaN) in the nodata grey. Chunks of ``taken`` come from
    the run's reads, the others are read in whole chunks: a decimated read of the whole image
    through GDAL either filled the block cache with the whole raster (1.1 GB RSS at 16384²) or,
    with a small cache, re-read blocks (385 s)."""
    info = plan.image
    bands = panel_bands(info.count)
    o = plan.offset

    def read(w: Window) -> np.ndarray:  # as a chunk's read sees the image (geoseg.io)
        win = Window(o.row_off + w.row_off, o.col_off + w.col_off, w.height, w.width)
        data, _ = read_window(info, win, bands, fill=float("nan"))
        return np.moveaxis(data, 0, -1)

    return _stretch(_decimate(plan, step, shape, len(bands), read, np.float32, taken),
                    info.nodata)


NODATA_RGB = (40, 40, 40)  # as the class panels draw FILL


def _stretch(arr: np.ndarray, nodata: float | None) -> np.ndarray:
    """(rows, cols, bands) float to uint8 RGB, 2–98 % of the valid values; invalid pixels
    (declared nodata, NaN, ±inf in any band) neither move the stretch nor show as image: they are
    drawn in the class panels' nodata grey."""
    valid = np.all(np.isfinite(arr), axis=-1)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~np.all(arr == np.float32(nodata), axis=-1)
    lo, hi = ((float(v) for v in np.percentile(arr[valid], [2, 98])) if valid.any()
              else (0.0, 1.0))
    scaled = np.nan_to_num((arr - lo) / max(hi - lo, 1e-6) * 255, nan=0.0, posinf=255.0,
                           neginf=0.0)
    img = np.clip(scaled, 0, 255).astype(np.uint8)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    img[~valid] = NODATA_RGB
    return img


def class_areas(plan: Plan, hist: dict[str, list[int]],
                areas: dict[str, list[float]] | None = None) -> dict[str, dict[str, float]]:
    """Area per class in m²: pixel counts × pixel area on projected grids; on geographic grids
    the per-row (latitude) areas the chunks summed (``areas``)."""
    px_m2 = pixel_area_m2(plan.grid)
    out: dict[str, dict[str, float]] = {}
    for m in plan.models:
        counts = hist.get(m.name, [])
        summed = (areas or {}).get(m.name)
        out[m.name] = {c.name: (round(summed[c.id], 2) if summed is not None
                                else round(counts[c.id] * px_m2, 2))
                       if c.id < len(counts) else 0.0
                       for c in m.spec.classes}
    return out


__all__ = ["class_areas", "export_cog", "quicklook"]
