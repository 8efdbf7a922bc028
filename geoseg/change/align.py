"""Put both runs on one grid, explicitly.

The grid decision is made once from the two grids and recorded in the report. The run that owns
the target grid is read as stored; the other one is brought onto it lazily, one output chunk at a
time: by a plain window copy when it lies on the same pixel lattice (same CRS, pixel size and
alignment), else by nearest-neighbour resampling with ``rasterio.warp.reproject``. Target pixels
that the other run does not cover come out as nodata (unknown). Memory is O(chunk).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize

from geoseg.change.runs import LAYER, RunInfo
from geoseg.errors import CRSError, RegionError
from geoseg.grid import Bounds, GeoBox, Window
from geoseg.store import FILL, pixel_centres

log = logging.getLogger(__name__)

Mode = Literal["identical", "window", "resampled"]
NODATA_CODE = 0xFFFF  # class 255, confidence 255: a code that no valid pixel has
_EPS = 1e-6


@dataclass(frozen=True)
class GridDecision:
    """Which grid the comparison runs on and how the other run gets there."""

    target: Literal["a", "b"]
    mode: Mode
    grid: GeoBox
    chunk: int
    overlap: Window
    message: str

    @property
    def other(self) -> Literal["a", "b"]:
        return "b" if self.target == "a" else "a"

    def describe(self) -> dict[str, Any]:
        o = self.overlap
        return {"target": self.target, "mode": self.mode, "resampling": (
                    "nearest" if self.mode == "resampled" else "none"),
                "message": self.message, "crs": self.grid.crs.to_string(),
                "shape": list(self.grid.shape), "transform": list(self.grid.transform)[:6],
                "chunk_size": self.chunk,
                "overlap_window": [o.row_off, o.col_off, o.height, o.width],
                "overlap_fraction": round(o.size / (self.grid.height * self.grid.width), 6)}


def _bounds_in(bounds: Bounds, grid: GeoBox, label: str, what: str = "runs") -> Bounds:
    try:
        out = bounds.to_crs(grid.crs)
    except Exception as exc:  # pyproj raises its own error types
        raise CRSError(f"cannot reproject {what[:-1]} {label}'s extent into "
                       f"{grid.crs.to_string()}: {exc}; compare {what} whose CRSs can be "
                       "transformed") from exc
    if not all(math.isfinite(v) for v in (out.left, out.bottom, out.right, out.top)):
        raise CRSError(f"{what[:-1]} {label}'s extent has no finite position in "
                       f"{grid.crs.to_string()}: compare {what} whose CRSs can be transformed")
    return out


def lattice_offset(target: GeoBox, other: GeoBox) -> tuple[float, float] | None:
    """(row, col) of ``other``'s origin in ``target``'s pixels when both share CRS and pixel
    size and orientation; else None."""
    ta, oa = target.transform, other.transform
    if target.crs != other.crs or not (math.isclose(ta.a, oa.a, rel_tol=1e-9)
                                       and math.isclose(ta.e, oa.e, rel_tol=1e-9)):
        return None
    col, row = ~ta @ (oa.c, oa.f)
    return float(row), float(col)


def overlap_window(a: GeoBox, b: GeoBox, target: Literal["a", "b"],
                   what: str = "runs") -> Window:
    """The window of the target grid (``a`` or ``b``) that the other grid covers; raises
    :class:`RegionError` naming both extents when it is empty (``what``: "runs" or "images")."""
    grid, other = (a, b) if target == "a" else (b, a)
    ob = _bounds_in(other.bounds, grid, "b" if target == "a" else "a", what)
    tb = grid.bounds
    if ob.left >= tb.right or ob.right <= tb.left or ob.bottom >= tb.top or ob.top <= tb.bottom:
        raise RegionError(_no_overlap(a, b, what))
    overlap = grid.window_of(ob).intersect(grid.window)
    if overlap.size == 0:
        raise RegionError(_no_overlap(a, b, what))
    return overlap


def decide_grid(a: RunInfo, b: RunInfo, target: Literal["a", "b"]) -> GridDecision:
    """The grid to compare on (``target``'s) and how the other run is aligned to it; raises
    :class:`RegionError` when the runs do not overlap."""
    tgt, oth = (a, b) if target == "a" else (b, a)
    other_label = "b" if target == "a" else "a"
    grid = tgt.grid
    overlap = overlap_window(a.grid, b.grid, target)
    off = lattice_offset(grid, oth.grid)
    reasons: list[str] = []
    if off is None:
        if grid.crs != oth.grid.crs:
            reasons.append(f"CRS {oth.grid.crs.to_string()} -> {grid.crs.to_string()}")
        if not np.allclose(grid.resolution, oth.grid.resolution, rtol=1e-9):
            reasons.append(f"pixel size {oth.grid.resolution} -> {grid.resolution}")
    elif abs(off[0] - round(off[0])) > _EPS or abs(off[1] - round(off[1])) > _EPS:
        dc, dr = off[1] - round(off[1]), off[0] - round(off[0])  # signed: -2e-5, not 1.000
        reasons.append(f"origin off the pixel lattice by ({dc:.3g}, {dr:.3g}) px")
    if reasons:
        mode: Mode = "resampled"
        msg = (f"resampled {other_label} onto {target}'s grid (nearest neighbour; "
               f"{'; '.join(reasons)}); pixels outside the overlap are unknown")
    elif off == (0.0, 0.0) and oth.grid.shape == grid.shape:
        mode = "identical"
        msg = f"{other_label} is on {target}'s grid (same CRS, transform and shape): no resampling"
    else:
        mode = "window"
        msg = (f"{other_label} shares {target}'s pixel lattice with another extent: copied onto "
               f"{target}'s grid without resampling; pixels outside the overlap are unknown")
    log.info("grid decision: %s", msg)
    return GridDecision(target, mode, grid, tgt.chunk, overlap, msg)


def _no_overlap(a: GeoBox, b: GeoBox, what: str) -> str:
    def box(g: GeoBox) -> str:  # to ~1 cm in metres, ~1e-7 degrees
        digits = 7 if g.crs.is_geographic else 2
        b = g.bounds
        return (",".join(f"{v:.{digits}f}".rstrip("0").rstrip(".")
                         for v in (b.left, b.bottom, b.right, b.top))
                + f" in {g.crs.to_string()}")

    return (f"{what} do not overlap (a: {box(a)}; b: {box(b)}): compare {what} of the same "
            "region")


class WindowedArray:
    """A 2-D array-like whose every read computes just the requested window (dask reads it one
    chunk at a time); subclasses set ``shape`` and ``dtype`` and define :meth:`window`."""

    ndim = 2
    shape: tuple[int, int]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        (r0, r1, rstep), (c0, c1, cstep) = (k.indices(n) for k, n in zip(key, self.shape,
                                                                         strict=True))
        win = Window(r0, c0, max(0, r1 - r0), max(0, c1 - c0))
        return self.window(win)[::rstep, ::cstep]

    def window(self, win: Window) -> np.ndarray:
        raise NotImplementedError


class AlignedCodes(WindowedArray):
    """Array-like view of a run's (class << 8 | confidence) on another grid."""

    dtype = np.dtype(np.uint16)

    def __init__(self, run: RunInfo, grid: GeoBox, mode: Mode) -> None:
        self.run, self.grid, self.mode = run, grid, mode
        self.shape = grid.shape
        self._arrays: tuple[Any, Any] | None = None

    def _open(self) -> tuple[Any, Any]:
        if self._arrays is None:
            g = zarr.open_group(str(self.run.store), mode="r", zarr_format=2)
            self._arrays = (g[LAYER], g[f"{LAYER}_confidence"])
        return self._arrays

    def _read(self, win: Window) -> np.ndarray:
        cls, conf = self._open()
        rs, cs = win.slices()
        return (np.asarray(cls[rs, cs]).astype(np.uint16) << 8) | np.asarray(conf[rs, cs])

    def window(self, win: Window) -> np.ndarray:
        """Codes of target window ``win`` (nodata code where the run has no pixel)."""
        out = np.full(win.shape, NODATA_CODE, np.uint16)
        if win.size == 0:
            return out
        if self.mode == "resampled":
            self._warp(win, out)
            return out
        row, col = lattice_offset(self.run.grid, self.grid) or (0.0, 0.0)
        src = Window(win.row_off + round(row), win.col_off + round(col), win.height, win.width)
        inside = src.intersect(self.run.grid.window)
        if inside.size:
            rs, cs = inside.relative_to(src).slices()
            out[rs, cs] = self._read(inside)
        return out

    def _warp(self, win: Window, out: np.ndarray) -> None:
        from rasterio.crs import CRS as RioCRS
        from rasterio.warp import Resampling, reproject

        dst = self.grid[win]
        src_grid = self.run.grid
        need = source_window(src_grid, dst)
        if need is None:
            return
        reproject(self._read(need), out, src_transform=src_grid[need].transform,
                  src_crs=RioCRS.from_wkt(src_grid.crs.to_wkt()), src_nodata=NODATA_CODE,
                  dst_transform=dst.transform, dst_crs=RioCRS.from_wkt(dst.crs.to_wkt()),
                  dst_nodata=NODATA_CODE, resampling=Resampling.nearest)


def source_window(src_grid: GeoBox, dst: GeoBox) -> Window | None:
    """The window of ``src_grid`` that nearest-neighbour resampling onto ``dst`` reads (2 px
    of margin), or None when ``dst`` has no position in it or misses it."""
    try:
        need = src_grid.window_of(dst.bounds.to_crs(src_grid.crs)).pad(2)
    except (OverflowError, ValueError, ArithmeticError) as exc:
        log.debug("%s has no position in %s: %s", dst.bounds, src_grid.crs.to_string(), exc)
        return None
    need = need.intersect(src_grid.window)
    return need if need.size else None


@contextmanager
def quiet_warp() -> Iterator[None]:
    """Silence rasterio's spurious ``NotGeoreferencedWarning`` from in-memory warps run in
    threads (we always pass both transforms; see odc-geo #131). Enter it in the driver thread
    around a whole dask compute: Python's warning filters are process-wide."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def _wrap(data: da.Array, grid: GeoBox) -> xr.DataArray:
    return xr.DataArray(data, dims=("y", "x"), coords=pixel_centres(grid))


def open_layer(run: RunInfo) -> tuple[da.Array, da.Array]:
    """Class ids and confidence of a run on its own grid, as dask arrays of its stored chunks
    (callers rechunk to the output chunks)."""
    ds = xr.open_zarr(str(run.store), chunks={"y": run.chunk, "x": run.chunk},
                      mask_and_scale=False,
                      decode_coords="all", zarr_format=2)
    return ds[LAYER].data, ds[f"{LAYER}_confidence"].data


def aligned_inputs(decision: GridDecision, a: RunInfo, b: RunInfo) -> dict[str, xr.DataArray]:
    """``a_class``, ``a_conf``, ``b_class``, ``b_conf`` on the decision's grid, lazily, in
    chunk-sized dask blocks; pixels without data are 255 (class) / 0 (confidence)."""
    grid, c = decision.grid, decision.chunk
    runs = {"a": a, "b": b}
    out: dict[str, xr.DataArray] = {}
    for label, run in runs.items():
        if label == decision.target or decision.mode == "identical":
            cls, conf = open_layer(run)
        else:
            token = tokenize(str(run.path), grid.shape, tuple(grid.transform),
                             grid.crs.to_wkt(), decision.mode)
            codes = da.from_array(AlignedCodes(run, grid, decision.mode), chunks=(c, c),
                                  asarray=False, meta=np.empty((0, 0), np.uint16),
                                  name=f"aligned-{label}-{token}")
            cls = (codes >> 8).astype(np.uint8)
            conf = da.where(cls == FILL, 0, codes & 0xFF).astype(np.uint8)
        out[f"{label}_class"] = _wrap(cls.rechunk((c, c)), grid)
        out[f"{label}_conf"] = _wrap(conf.rechunk((c, c)), grid)
    return out
