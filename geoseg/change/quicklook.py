"""Quicklook PNGs of a change: before, after and a change map, each with a legend.

Images are decimated (every ``step``-th pixel, step chosen so the longer side is ≤ ``max_px``)
while dask reads the stored chunks one at a time, so memory is O(chunk + quicklook).
Change map colours: unchanged pixels are a light grey faintly tinted by their class, changed
pixels a strong colour of the class they changed *to*, unknown pixels dark.
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
import xarray as xr
from PIL import Image, ImageDraw, ImageFont

from geoseg.change.raster import NOT_CHANGE
from geoseg.change.runs import ClassScheme
from geoseg.store import FILL

NODATA_RGB = (40, 40, 40)
UNKNOWN_RGB = (28, 28, 40)
UNCERTAIN_RGB = (120, 110, 150)  # a muted violet: neither "unchanged" grey nor a class colour
UNCHANGED_RGB = (175, 175, 175)
UNCHANGED_GREY = np.array(UNCHANGED_RGB, np.float64)
FALLBACK = ((230, 0, 200), (255, 140, 0), (0, 200, 220), (150, 60, 255), (255, 220, 0))


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    c = hex_colour.lstrip("#")
    return (int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16))


def strong(hex_colour: str, index: int) -> tuple[int, int, int]:
    """A saturated, bright version of a class colour (a distinct fallback for greys)."""
    r, g, b = (v / 255 for v in _rgb(hex_colour))
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if s < 0.25:
        return FALLBACK[index % len(FALLBACK)]
    r2, g2, b2 = colorsys.hsv_to_rgb(h, max(s, 0.9), max(v, 0.9))
    return (round(r2 * 255), round(g2 * 255), round(b2 * 255))


def decimate(arr: xr.DataArray, max_px: int) -> np.ndarray:
    """Every ``step``-th pixel of a lazy 2-D array, computed block by block."""
    h, w = arr.shape
    step = max(1, math.ceil(max(h, w) / max_px))
    return np.asarray(arr.data[::step, ::step].compute(scheduler="threads"))


def class_lut(classes: ClassScheme) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = NODATA_RGB
    for v, c in zip(classes.values, classes.colors, strict=True):
        lut[v] = _rgb(c)
    return lut


def change_rgb(changed: np.ndarray, to_class: np.ndarray, classes: ClassScheme) -> np.ndarray:
    """RGB change map from decimated ``changed`` and ``to_class`` arrays."""
    strong_lut = np.zeros((256, 3), np.uint8)
    tint_lut = np.zeros((256, 3), np.uint8)
    for n, (v, c) in enumerate(zip(classes.values, classes.colors, strict=True)):
        strong_lut[v] = strong(c, n)
        tint_lut[v] = np.round(0.8 * UNCHANGED_GREY + 0.2 * np.array(_rgb(c))).astype(np.uint8)
    out = np.empty((*changed.shape, 3), np.uint8)
    out[:] = UNKNOWN_RGB
    out[changed == 0] = tint_lut[to_class[changed == 0]]
    out[changed == 1] = strong_lut[to_class[changed == 1]]
    out[np.isin(changed, NOT_CHANGE)] = UNCERTAIN_RGB
    return out


def with_legend(img: np.ndarray, title: str,
                entries: list[tuple[tuple[int, int, int], str]]) -> Image.Image:
    """The image with a legend panel (title, colour swatches and labels) on its right."""
    font = ImageFont.load_default()
    row, pad, sw = 18, 8, 14
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [title, *(t for _, t in entries)]
    text_w = max(int(probe.textlength(t, font=font)) for t in labels)
    panel_w = pad * 3 + sw + text_w
    h = max(img.shape[0], pad * 2 + row * (len(entries) + 1))
    canvas = Image.new("RGB", (img.shape[1] + panel_w, h), (255, 255, 255))
    canvas.paste(Image.fromarray(img), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = img.shape[1] + pad
    draw.text((x0, pad), title, fill=(0, 0, 0), font=font)
    for n, (colour, label) in enumerate(entries, start=1):
        y = pad + n * row
        draw.rectangle([x0, y, x0 + sw, y + sw], fill=colour, outline=(90, 90, 90))
        draw.text((x0 + sw + pad, y + 1), label, fill=(0, 0, 0), font=font)
    return canvas


def render(out: Path, inputs: dict[str, xr.DataArray], change: dict[str, xr.DataArray],
           classes: ClassScheme, dates: tuple[str, str], max_px: int = 1024) -> dict[str, Path]:
    """Write ``before.png``, ``after.png`` and ``change.png`` into ``out``."""
    lut = class_lut(classes)
    class_entries = [(_rgb(c), m) for c, m in zip(classes.colors, classes.meanings, strict=True)]
    class_entries.append((NODATA_RGB, "no data"))
    paths: dict[str, Path] = {}
    for key, src, date in (("before", "a_class", dates[0]), ("after", "b_class", dates[1])):
        img = lut[decimate(inputs[src], max_px)]
        title = f"{key} ({date})" if date else key
        paths[key] = out / f"{key}.png"
        with_legend(img, title, class_entries).save(paths[key])
    changed = decimate(change["changed"], max_px)
    to_class = decimate(change["to_class"], max_px)
    to_class = np.where(changed == FILL, 0, to_class)
    entries = [(UNCHANGED_RGB, "unchanged (faint class tint)"),
               (UNKNOWN_RGB, "unknown"),
               (UNCERTAIN_RGB, "uncertain (classes differ, low confidence or same image)")]
    entries += [(strong(c, n), f"changed to {m}")
                for n, (c, m) in enumerate(zip(classes.colors, classes.meanings, strict=True))]
    paths["change"] = out / "change.png"
    span = " -> ".join(d for d in dates if d) or "a -> b"
    with_legend(change_rgb(changed, to_class, classes), f"change {span}",
                entries).save(paths["change"])
    return paths
