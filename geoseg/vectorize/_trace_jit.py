"""The compiled parts of land-cover vectorizing (numba, without the GIL): the outline walk of
:mod:`geoseg.vectorize.trace` and the region labelling of
:func:`geoseg.vectorize.landcover.label_stats`.

The array walk builds every directed edge, a successor table and ring ranks by pointer jumping:
some twenty passes over the edges, holding the GIL between them. Walking each outline once is
one pass (``trace_regions`` 4-5.6x faster, ``benchmarks/bench_trace.py``), and it returns the
same rings, vertex for vertex and in the same order (hypothesis-tested against the array
version). Imported on first use only: numba's import and loading the cached machine code take
~0.5 s of interpreter time, once per process.
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
def _grown(a: np.ndarray) -> np.ndarray:  # pragma: no cover (compiled)
    """``a`` followed by as many unset entries (amortised appends)."""
    return np.concatenate((a, np.empty_like(a)))


@njit(cache=True, nogil=True)
def ring_vertices(lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                             np.ndarray]:  # pragma: no cover (compiled)
    """``(vx, vy, ring_start, ring_region)`` of every outline of the non-zero regions of
    ``lab`` (int32): each ring starts at its first top-side corner in raster order, runs
    clockwise on screen around its region (turning left first where the region touches itself
    at a corner) and keeps only corners; rings come in the raster order of those starts."""
    h, w = lab.shape
    traced = np.zeros((h, w), np.bool_)  # top sides already walked
    vx = np.empty(1024, np.int64)
    vy = np.empty(1024, np.int64)
    starts = np.empty(64, np.int64)
    regions = np.empty(64, np.int32)
    n = 0
    nr = 0
    for r in range(h):
        for c in range(w):
            region = lab[r, c]
            if region == 0 or traced[r, c] or (r > 0 and lab[r - 1, c] == region):
                continue
            # a top side not yet walked: the first corner of a new ring
            if nr == len(starts):
                starts = _grown(starts)
                regions = _grown(regions)
            starts[nr] = n
            regions[nr] = region
            nr += 1
            x, y, d = c, r, 0
            nd = 0
            while True:
                if nd != d or n == starts[nr - 1]:  # a corner: keep its start vertex
                    if n == len(vx):
                        vx = _grown(vx)
                        vy = _grown(vy)
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


@njit(cache=True, nogil=True)
def _root(parent: np.ndarray, a: int) -> int:  # pragma: no cover (compiled)
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


@njit(cache=True, nogil=True)
def label_stats(classes: np.ndarray, fill: int, conf: np.ndarray, scale: float,
                use_conf: bool) -> tuple[np.ndarray, int, np.ndarray, np.ndarray,
                                         np.ndarray]:  # pragma: no cover (compiled)
    """``(labels, n, pixels, conf_sum, first_index)`` of the 4-connected regions of equal
    class (``fill``: none), in one union-find labelling and one counting pass: the labels
    ``skimage.measure.label(classes, background=fill, connectivity=1)`` gives (numbered in the
    raster order of each region's first pixel), and per label (0: the fill pixels) its pixel
    count, the sum of ``conf * scale`` in raster order (as ``np.bincount`` adds them) and the
    flat index of its first pixel."""
    h, w = classes.shape
    lab = np.zeros((h, w), np.int32)
    parent = np.empty(h * w + 1, np.int32)
    parent[0] = 0
    m = 0
    for r in range(h):
        for c in range(w):
            v = classes[r, c]
            if v == fill:
                continue
            up = lab[r - 1, c] if r > 0 and classes[r - 1, c] == v else 0
            left = lab[r, c - 1] if c > 0 and classes[r, c - 1] == v else 0
            if up == 0 and left == 0:
                m += 1
                parent[m] = m
                lab[r, c] = m
            elif up == 0 or left == 0 or up == left:
                lab[r, c] = up if up else left
            else:
                a = _root(parent, up)
                b = _root(parent, left)
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
                lab[r, c] = min(a, b)
    # a region's smallest provisional label is its first pixel's: numbering the roots in
    # increasing order numbers the regions in the raster order of their first pixels
    final = np.zeros(m + 1, np.int32)
    n = 0
    for k in range(1, m + 1):
        if parent[k] == k:
            n += 1
            final[k] = n
    pixels = np.zeros(n + 1, np.int64)
    conf_sum = np.zeros(n + 1, np.float64)
    first = np.zeros(n + 1, np.int64)
    for r in range(h):
        for c in range(w):
            k = lab[r, c]
            if k:
                k = final[_root(parent, k)]
                lab[r, c] = k
                if pixels[k] == 0:
                    first[k] = r * w + c
            pixels[k] += 1
            if use_conf:
                conf_sum[k] += np.float64(conf[r, c]) * scale
    return lab, n, pixels, conf_sum, first
