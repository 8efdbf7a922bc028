"""Outlines of 4-connected label regions, traced in numpy.

GDAL's polygonizer (``rasterio.features.shapes``) hands every vertex to Python as a GeoJSON
tuple, and that conversion, not the tracing, was most of the land-cover vector cost; it also holds
the GIL, so vector threads did not scale. Here the tracing is array arithmetic:

1. Every pixel side between a region and anything else is a directed unit edge, oriented so that
   each region's outline runs clockwise on screen (rows down): top sides left to right, right
   sides downwards, bottom sides right to left, left sides upwards. A directed edge is named by
   its start vertex and direction, so a lookup table finds the edges leaving a vertex.
2. Each edge's successor is the region's edge leaving its end vertex; where two of the region's
   pixels touch only at a corner (4-connectivity keeps them apart) the outline turns back into
   the same pixel.
3. Straight runs collapse to their first edge (only corners become vertices); the successor
   permutation on corners splits into rings by pointer jumping (ring = smallest member, order by
   list ranking), each ``O(n log n)`` over arrays.
4. A ring with positive shoelace area is a region's exterior, negative ones are its holes: a
   4-connected region has exactly one exterior, so no point-in-polygon tests are needed.

Steps 1-3 walk each outline once in compiled code where numba is installed
(:mod:`geoseg.vectorize._trace_jit`, without the GIL: ``trace_regions`` 4-5.6x faster in
``benchmarks/bench_trace.py``); the array version is the fallback and the walk's reference
(the two are hypothesis-tested equal, ring for ring).

Every ring is simple (a ring bounds one connected piece of the region's complement, and the
left turn at a pinch keeps those pieces apart), so every polygon is valid as traced. The result
equals GDAL's polygons, repaired where GDAL's were invalid and normalized, on every region
(hypothesis-tested against ``rasterio.features.shapes``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import shapely

log = logging.getLogger(__name__)


def trace_regions(labels: np.ndarray, row_off: int = 0,
                  col_off: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """``(values, polygons)``: one polygon per non-zero label, in label order, in global pixel
    coordinates (the array's top-left pixel is at ``row_off``, ``col_off``).

    Every label must be one 4-connected region (as ``skimage.measure.label(connectivity=1)``
    makes them); returns None when one is not, for the caller to trace otherwise.
    """
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    empty = np.zeros(0, np.int32), np.zeros(0, dtype=object)
    if lab.size == 0 or not lab.any():
        return empty
    vx, vy, ring_start, ring_region = _ring_vertices(lab)
    n = len(vx)
    ring_len = np.diff(np.concatenate([ring_start, [n]]))
    ring_id = np.repeat(np.arange(len(ring_start)), ring_len)
    # shoelace with the ring's next vertex (wrapping to its first)
    nxt_v = np.arange(n) + 1
    nxt_v[ring_start + ring_len - 1] = ring_start
    area2 = np.bincount(ring_id, weights=(vx * vy[nxt_v] - vx[nxt_v] * vy).astype(np.float64),
                        minlength=len(ring_start))
    exterior = area2 > 0
    values = np.unique(ring_region)
    if not np.array_equal(np.bincount(ring_region[exterior], minlength=int(values[-1]) + 1)[values],
                          np.ones(len(values), np.int64)):
        return None  # a label with two exteriors: not one 4-connected region
    # 4. polygons: per region its exterior, then its holes
    ring_order = np.lexsort((~exterior, ring_region))
    lens = ring_len[ring_order]
    take = _ranges(ring_start[ring_order], lens)
    closed = np.cumsum(lens + 1)
    coords = np.empty((int(closed[-1]), 2))
    body = np.ones(len(coords), bool)
    body[closed - 1] = False
    coords[body, 0] = vx[take] + col_off
    coords[body, 1] = vy[take] + row_off
    coords[closed - 1] = coords[closed - lens - 1]
    ring_offsets = np.concatenate([[0], closed])
    per_region = np.bincount(np.searchsorted(values, ring_region[ring_order]),
                             minlength=len(values))
    poly_offsets = np.concatenate([[0], np.cumsum(per_region)])
    polys = shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords,
                                      (ring_offsets, poly_offsets))
    return values.astype(np.int32), polys


def _ring_vertices(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-3: ``(vx, vy, ring_start, ring_region)``, each ring's corners in order, rings
    in the raster order of their first top-side corner. Compiled when numba is installed
    (:mod:`geoseg.vectorize._trace_jit`), else the array version below; both return the same."""
    jit = compiled()
    if jit is not None:
        return jit.ring_vertices(lab)  # type: ignore[no-any-return]
    return _ring_vertices_numpy(lab)


class Compiled(NamedTuple):
    """The compiled kernels of :mod:`geoseg.vectorize._trace_jit`."""

    ring_vertices: Callable[..., Any]
    label_stats: Callable[..., Any]


@functools.cache
def compiled() -> Compiled | None:
    """The compiled kernels, or None where numba is missing or fails to load (the callers
    then run their numpy versions, which give the same results)."""
    try:
        from geoseg.vectorize._trace_jit import label_stats, ring_vertices
    except ImportError as exc:  # numba missing (or not built for this Python): the array walk
        log.info("land-cover vectors traced with numpy (%s); pip install numba: ~3x faster",
                 exc)
        return None
    except Exception as exc:  # numba found no writable cache folder, or failed otherwise
        log.warning("outlines traced with numpy: numba failed to load the compiled walk "
                    "(%s: %s); set NUMBA_CACHE_DIR to a writable folder", type(exc).__name__,
                    exc)
        return None
    return Compiled(ring_vertices, label_stats)


def _ring_vertices_numpy(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                    np.ndarray]:
    """:func:`_ring_vertices` in array arithmetic: every directed edge at once, successors by
    table lookup, rings split by pointer jumping (``O(n log n)``)."""
    h, w = lab.shape
    pad = np.pad(lab, 1)
    inner = pad[1:-1, 1:-1]
    region = inner != 0
    # (neighbour across the side, straight runs consecutive column-major?, start, end offsets)
    sides = ((pad[:-2, 1:-1], False, (0, 0), (1, 0)),  # 0: top sides, left → right
             (pad[1:-1, 2:], True, (1, 0), (1, 1)),    # 1: right sides, downwards
             (pad[2:, 1:-1], False, (1, 1), (0, 1)),   # 2: bottom sides, right → left
             (pad[1:-1, :-2], True, (0, 1), (0, 0)))   # 3: left sides, upwards
    sx, sy, ex, ey, reg = [], [], [], [], []
    for other, by_column, (sdx, sdy), (edx, edy) in sides:
        side = region & (other != inner)
        if by_column:
            c, r = np.nonzero(side.T)
        else:
            r, c = np.nonzero(side)
        sx.append(c + sdx)
        sy.append(r + sdy)
        ex.append(c + edx)
        ey.append(r + edy)
        reg.append(inner[r, c])
    sizes = [len(a) for a in sx]
    x0, y0, x1, y1 = (np.concatenate(a).astype(np.int64) for a in (sx, sy, ex, ey))
    dirs = np.repeat(np.arange(4, dtype=np.int64), sizes)
    regs = np.concatenate(reg)
    n_edges = len(dirs)
    idx = np.arange(n_edges, dtype=np.int64)

    # 2. successors: the region's edge leaving the end vertex (turn left first: where the region
    # touches itself at a corner, the outline crosses to the other pixel, so every ring stays
    # simple and a pinched-off hole touches the exterior at that corner, as OGC allows)
    stride = np.int64(w + 1)
    table = np.full((h + 1) * (w + 1) * 4, -1, np.int32)
    table[(y0 * stride + x0) * 4 + dirs] = idx
    end = (y1 * stride + x1) * 4
    succ = np.full(n_edges, -1, np.int64)
    for turn in (1, 0, 3):  # right, straight, left (in directions 0..3): later ones win
        cand = table[end + (dirs + turn) % 4].astype(np.int64)
        ok = cand >= 0
        ok[ok] = regs[cand[ok]] == regs[ok]
        succ[ok] = cand[ok]
    pred = np.empty_like(succ)
    pred[succ] = idx

    # 3. corners (an edge whose predecessor runs another way) and the last edge of each run;
    # within a direction's array, runs are consecutive and pair up in order
    corner = dirs[pred] != dirs
    last = dirs[succ] != dirs
    starts = np.concatenate([[0], np.cumsum(sizes)])
    firsts, lasts = [], []
    for k in range(4):
        lo, hi = starts[k], starts[k + 1]
        cs = lo + np.flatnonzero(corner[lo:hi])
        ls = lo + np.flatnonzero(last[lo:hi])
        firsts.append(cs)
        lasts.append(ls)
    first_e = np.concatenate(firsts)
    last_e = np.concatenate(lasts)
    n = len(first_e)
    pos = np.full(n_edges, -1, np.int64)
    pos[first_e] = np.arange(n)
    nxt = pos[succ[last_e]]

    ring = _cycle_min(nxt)
    rank = _rank_in_cycle(nxt, ring)
    order = np.lexsort((rank, ring))
    ring_sorted = ring[order]
    vx = x0[first_e][order]
    vy = y0[first_e][order]
    bounds = np.flatnonzero(np.diff(ring_sorted)) + 1
    ring_start = np.concatenate([[0], bounds])
    ring_region = regs[first_e][order][ring_start]
    return vx, vy, ring_start, ring_region


def gdal_ring_order(polys: np.ndarray) -> np.ndarray:
    """``polys`` from :func:`trace_regions` with the ring conventions of GDAL's polygonizer
    (``rasterio.features.shapes``): rings run the other way round (the exterior keeps its
    top-left start vertex), each hole starts at its top-left vertex (smallest row, then
    column), and holes come in that vertex's raster order. Equal vertex for vertex to GDAL's
    valid polygons (tested), so code whose results depend on where a ring starts (Douglas-Peucker
    simplification, ties between equal runs) gives the same results with either tracer."""
    out = np.asarray(shapely.reverse(polys), dtype=object)
    for i in np.flatnonzero(shapely.get_num_interior_rings(out) > 0):
        poly = out[i]
        holes = []
        for ring in poly.interiors:
            body = np.asarray(ring.coords)[:-1]
            body = np.roll(body, -int(np.lexsort((body[:, 0], body[:, 1]))[0]), axis=0)
            holes.append(np.vstack([body, body[:1]]))
        holes.sort(key=lambda h: (h[0, 1], h[0, 0]))
        out[i] = shapely.Polygon(poly.exterior.coords, holes)
    return out


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + m)`` for each start and length."""
    total = int(lengths.sum())
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total) + offsets


def _cycle_min(nxt: np.ndarray) -> np.ndarray:
    """The smallest index on each element's cycle of the permutation ``nxt``."""
    rep = np.arange(len(nxt))
    jump = nxt.copy()
    while True:
        new = np.minimum(rep, rep[jump])
        if np.array_equal(new, rep):
            return rep
        rep = new
        jump = jump[jump]


def _rank_in_cycle(nxt: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Steps from each cycle's smallest element to each element, along ``nxt``."""
    idx = np.arange(len(nxt))
    # cut each cycle before its smallest element: the element that leads to it ends the list
    tail = nxt == ring
    dist = np.where(tail, 0, 1)
    jump = np.where(tail, idx, nxt)
    while True:  # Wyllie's list ranking
        further = jump[jump]
        if np.array_equal(further, jump):
            break
        dist = dist + dist[jump]
        jump = further
    length = np.bincount(ring)[ring]
    return length - 1 - dist
