"""A chunk's share of the quicklook, taken while the chunk is in memory.

The quicklook shows every ``step``-th pixel of the output grid: the image's first three bands
(or its first band) beside each class map. Reading them back from the image and the store once
the run is over cost a second decode of the whole image (3.6 of 4.9 CPU-s at 16384²; a remote
image's tiles are fetched again unless GDAL's cache still holds them). Instead each chunk keeps
those pixels as it goes: the image's from its read, the classes from its prediction. A
quicklook built from these thumbs is the one built from reads (tested byte for byte); chunks
without a thumb (done by an earlier run of a resumed job, or a model reading other bands) are
read as before.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from geoseg.grid import Window

QUICKLOOK_PX = 1024  # the quicklook's longest side at most, in panel pixels
THUMBS = "thumbs"  # the key of a chunk's thumbs in its stats (taken out before its record)
IMAGE = "image"  # the image's thumb among a chunk's thumbs (the others: one per model)


class Thumbs(NamedTuple):
    """A chunk's quicklook pixels: every ``step``-th grid pixel of the image (:data:`IMAGE`,
    where the read had its bands) and of each model's classes (by model name). The step is
    the one of the process that took them (a Ray worker's may differ from the driver's)."""

    step: int
    arrays: dict[str, np.ndarray]


def quicklook_step(height: int, width: int, max_px: int | None = None) -> int:
    """Grid pixels per quicklook pixel: every ``step``-th row and column is shown, so that the
    longest side has at most ``max_px`` (default :data:`QUICKLOOK_PX`) pixels."""
    return max(1, -(-max(height, width) // quicklook_limit(max_px)))


def quicklook_limit(max_px: int | None = None) -> int:
    """The quicklook's longest side at most, in panel pixels (``max_px`` or the default)."""
    return max_px or QUICKLOOK_PX


def sample_slices(window: Window, step: int) -> tuple[slice, slice]:
    """The pixels of ``window`` (relative to it) on the quicklook's grid of every ``step``-th
    row and column of the output grid."""
    r0 = -(-window.row_off // step) * step - window.row_off
    c0 = -(-window.col_off // step) * step - window.col_off
    return slice(r0, window.height, step), slice(c0, window.width, step)


def panel_bands(count: int) -> tuple[int, ...]:
    """The image bands the quicklook shows: the first three as RGB, else the first as grey (a
    two-band image, e.g. radar VV + VH, has no natural colour: its two bands as R and G made
    a two-channel panel that broke the PNG, and the run with it)."""
    return (1, 2, 3) if count >= 3 else (1,)


def image_thumb(data: np.ndarray, valid: np.ndarray, bands: tuple[int, ...], count: int,
                core: Window, window: Window, step: int) -> np.ndarray | None:
    """``(rows, cols, panel bands)`` float32 of the sampled pixels of a chunk's read: ``data``
    (bands, H, W) of ``bands`` over the chunk's context, ``core`` the chunk's window relative
    to that context, ``window`` its window in the output grid. Invalid pixels (``valid``
    False: nodata, masked, NaN, outside the image) are NaN. None when the read lacks a band
    the quicklook shows."""
    shown = panel_bands(count)
    if not set(shown) <= set(bands):
        return None
    rs, cs = sample_slices(window, step)
    rows = slice(core.row_off + rs.start, core.row_off + core.height, step)
    cols = slice(core.col_off + cs.start, core.col_off + core.width, step)
    picked = data[:, rows, cols][[bands.index(b) for b in shown]]  # sampled, then the bands
    out = np.where(valid[rows, cols][None], picked, np.float32(np.nan)).astype(np.float32)
    return np.moveaxis(out, 0, -1)


def class_thumb(classes: np.ndarray, window: Window, step: int) -> np.ndarray:
    """``(rows, cols)`` uint8: the sampled pixels of a chunk's class map."""
    rs, cs = sample_slices(window, step)
    return np.ascontiguousarray(classes[rs, cs])
