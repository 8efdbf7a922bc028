"""The outline walk of :mod:`geoseg.vectorize.trace`, compiled (numba, without the GIL).

The array version builds every directed edge, a successor table and ring ranks by pointer
jumping: some twenty passes over the edges, holding the GIL between them. Walking each outline
once is one pass and an order of magnitude faster (a 1024² land-cover chunk: 5 ms against 55–75),
and it returns the same rings, vertex for vertex and in the same order (hypothesis-tested against
the array version). Imported on first use only: numba's import and the cached compilation take
~0.3 s, once per process.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# the unit step of each direction: 0 top sides (+x), 1 right sides (+y), 2 bottom (-x), 3 left (-y)
_DX = (1, 0, -1, 0)
_DY = (0, 1, 0, -1)


@njit(cache=True, nogil=True)
def _has_edge(lab: np.ndarray, x: int, y: int, d: int, region: int) -> bool:  # pragma: no cover
    """Whether ``region`` has the directed edge that starts at vertex ``(x, y)`` going ``d``:
    the pixel on its right is the region's and the one across the side is not."""
    h, w = lab.shape
    if d == 0:
        r, c, nr, nc = y, x, y - 1, x
    elif d == 1:
        r, c, nr, nc = y, x - 1, y, x
    elif d == 2:
        r, c, nr, nc = y - 1, x - 1, y, x - 1
    else:
        r, c, nr, nc = y - 1, x, y - 1, x - 1
    if r < 0 or r >= h or c < 0 or c >= w or lab[r, c] != region:
        return False
    return not (0 <= nr < h and 0 <= nc < w and lab[nr, nc] == region)


@njit(cache=True, nogil=True)
def ring_vertices(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                             np.ndarray]:  # pragma: no cover (compiled)
    """``(vx, vy, ring_start, ring_region)`` of every outline of the non-zero regions of
    ``lab`` (int32): each ring starts at its first top-side corner in raster order, runs
    clockwise on screen around its region (turning left first where the region touches itself
    at a corner) and keeps only corners; rings come in the raster order of those starts."""
    h, w = lab.shape
    traced = np.zeros((h, w), np.bool_)  # top sides already walked
    cap, rcap = 1024, 64
    vx = np.empty(cap, np.int64)
    vy = np.empty(cap, np.int64)
    starts = np.empty(rcap, np.int64)
    regions = np.empty(rcap, np.int32)
    n = 0
    nr = 0
    for r in range(h):
        for c in range(w):
            region = lab[r, c]
            if region == 0 or traced[r, c] or (r > 0 and lab[r - 1, c] == region):
                continue
            # a top side not yet walked: the first corner of a new ring
            if nr == rcap:
                rcap *= 2
                starts = np.concatenate((starts, np.empty(rcap - nr, np.int64)))
                regions = np.concatenate((regions, np.empty(rcap - nr, np.int32)))
            starts[nr] = n
            regions[nr] = region
            nr += 1
            x, y, d = c, r, 0
            nd = 0
            while True:
                if nd != d or n == starts[nr - 1]:  # a corner: keep its start vertex
                    if n == cap:
                        cap *= 2
                        vx = np.concatenate((vx, np.empty(cap - n, np.int64)))
                        vy = np.concatenate((vy, np.empty(cap - n, np.int64)))
                    vx[n] = x
                    vy[n] = y
                    n += 1
                d = nd
                if d == 0:
                    traced[y, x] = True
                x += _DX[d]
                y += _DY[d]
                left = (d + 3) % 4
                if _has_edge(lab, x, y, left, region):
                    nd = left
                elif _has_edge(lab, x, y, d, region):
                    nd = d
                else:
                    nd = (d + 1) % 4
                if x == c and y == r and nd == 0:
                    break
    return vx[:n], vy[:n], starts[:nr], regions[:nr]
