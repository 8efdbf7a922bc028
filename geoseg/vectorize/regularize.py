"""Building outline regularization: pixel staircases → straight, mostly right-angled outlines.

0. An outline that is already right-angled with no wall under ``min_edge`` (e.g. an
   axis-aligned pixel rectangle) is returned as it is.
1. *Dominant direction*: the gradient of the outline's mask, smoothed by one pixel so that pixel
   staircases and 1-px noise vote for the wall they follow; the angles (modulo 90°, weighted by
   gradient magnitude) are averaged as a circular mean, globally and around the histogram peak,
   and the minimum rotated rectangle's orientation competes: the direction explaining more of
   the outline wins. Circular means let corners and curves (spread evenly) cancel out.
2. *Round or irregular* outlines (less than ``MIN_AXIS_SHARE`` of the outline near the dominant
   axes) are only simplified (``simplify(0.7 px)``).
3. *Orthogonalization*: the outline is rotated into the dominant frame and re-rasterized on a
   half-pixel grid (Gaussian-smoothed by one pixel, which removes 1-px bumps, notches and
   stairs), so every edge is exactly horizontal or vertical; runs of equal direction become one
   fitted line, runs shorter than ``min_edge`` are dropped (their neighbours merge, collinear
   walls become one), corners are the intersections of consecutive lines, and the result is
   rotated back. With ``allow_45`` an edge snap to multiples of 45° of the staircase-free
   outline competes; the candidate with the best IoU minus a small cost per vertex wins.
4. A result with IoU < ``MIN_IOU`` against the raw outline falls back to the simplified raw
   outline (or the raw one when even that strays). The result is always valid and non-empty.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage
from shapely.geometry import Polygon, shape

from geoseg.errors import InputError
from geoseg.vectorize.features import as_polygon

#: Share of the outline within ±15° of the dominant right-angled axes below which an outline is
#: treated as round/irregular and only simplified (a circle scores ~1/3, a noisy rectangle ~0.8,
#: a rectangle with 45° chamfers ~0.85).
MIN_AXIS_SHARE = 0.55
#: Minimum IoU between the regularized and the raw outline; below it the simplified raw is kept.
MIN_IOU = 0.85
_AXIS_TOL = 1 / 6     # of the snapping step: ±15° for 90°, ±7.5° for 45° (uniform share = 1/3)
_SIMPLIFY = 0.7      # pixels, simplification of round outlines and the fallback
_STAIRCASE = 1.5     # pixels, simplification that straightens digital lines (45° snap input)
_GRID = 0.5          # pixels, cell of the rotated re-rasterization
_SMOOTH = 1.0        # pixels, Gaussian sigma that irons out 1-px bumps, notches and stairs
_VERTEX_COST = 0.002  # IoU a candidate outline must gain per extra vertex to be preferred


def regularize_polygon(poly: Polygon, pixel_size: float, *, allow_45: bool = False,
                       min_edge: float | None = None) -> Polygon:
    """Regularize a (pixelated) building outline, holes included.

    ``pixel_size`` is in the polygon's units; ``min_edge`` (default 1.5 pixels) is the shortest
    wall kept.
    """
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise InputError(f"pixel_size must be a positive number, got {pixel_size}")
    raw = as_polygon(poly)
    if raw.is_empty or raw.area <= 0:
        raise InputError("cannot regularize an empty polygon")
    min_edge = 1.5 * pixel_size if min_edge is None else float(min_edge)
    if _is_regular(raw, min_edge):
        return raw
    theta, share = dominant_direction(raw, 90.0, pixel_size=pixel_size)
    if share < MIN_AXIS_SHARE:
        return _fallback(raw, pixel_size)
    candidates: list[Polygon | None] = []
    frame = _smoothed_frame(raw, theta, pixel_size)
    if frame is not None:
        rect = _orthogonalize(frame[0], 0.0, 90.0, min_edge)
        candidates.append(frame[1](rect) if rect is not None else None)
    if allow_45:
        coarse = _simplified(raw, pixel_size * _STAIRCASE)
        candidates.append(_orthogonalize(coarse, theta, 45.0, min_edge))
    best: Polygon | None = None
    best_score = -math.inf
    for cand in candidates:
        if cand is None or cand.is_empty or not cand.is_valid:
            continue
        iou = _iou(cand, raw)
        score = iou - _VERTEX_COST * shapely.get_num_coordinates(cand)
        if iou >= MIN_IOU and score > best_score:
            best, best_score = cand, score
    return best if best is not None else _fallback(raw, pixel_size)


def _fallback(raw: Polygon, pixel_size: float) -> Polygon:
    """The simplified raw outline, or the raw one where simplification strays too far."""
    simple = _simplified(raw, pixel_size * _SIMPLIFY)
    return simple if _iou(simple, raw) >= MIN_IOU else raw


def dominant_direction(poly: Polygon, step: float = 90.0, *,
                       pixel_size: float = 1.0) -> tuple[float, float]:
    """``(theta_deg, share)``: the dominant wall direction modulo ``step`` and the share of the
    outline within ``step / 6`` of it (modulo ``step``).

    Votes come from the gradient of the polygon's mask, rasterized at ``pixel_size`` and
    smoothed by one pixel, so pixel staircases and 1-px noise vote for the wall they follow.
    """
    grad_x, grad_y = _mask_gradient(poly, pixel_size)
    weight = np.hypot(grad_x, grad_y)
    keep = weight > 1e-3 * weight.max() if weight.size and weight.max() > 0 else weight > 0
    if not keep.any():
        return _rectangle_angle(poly) % step, 0.0
    weight = weight[keep]
    # the edge runs perpendicular to the gradient; image rows grow downwards (y flipped)
    angle = (np.degrees(np.arctan2(-grad_y[keep], grad_x[keep])) + 90.0) % step
    bins = int(step)
    hist = np.bincount(np.floor(angle).astype(int) % bins, weights=weight, minlength=bins)
    smooth = np.convolve(np.concatenate([hist[-3:], hist, hist[:3]]), np.ones(7), mode="valid")
    peak = float(np.argmax(smooth)) + 0.5
    for _ in range(3):           # circular mean around the histogram peak (a second wing or a
        peak = _circular_mean(angle, weight, step, centre=peak)  # curved part pulls it less)
    candidates = (_circular_mean(angle, weight, step), peak, _rectangle_angle(poly) % step)
    best = (0.0, -1.0)
    for theta in candidates:
        dist = np.abs((angle - theta + step / 2) % step - step / 2)
        share = float(weight[dist <= step * _AXIS_TOL].sum() / weight.sum())
        if share > best[1] + 1e-9:
            best = (theta, share)
    return best


def _circular_mean(angle: np.ndarray, weight: np.ndarray, step: float,
                   centre: float | None = None) -> float:
    """Weighted circular mean of ``angle`` with period ``step`` (optionally of the angles within a
    quarter period of ``centre``). Uniformly spread angles (corners, curves) cancel out and a
    symmetric spread has no bias, unlike a windowed arithmetic mean."""
    phase = angle * (2.0 * math.pi / step)
    if centre is not None:
        delta = (angle - centre + step / 2) % step - step / 2
        near = np.abs(delta) <= step / 4
        phase, weight = phase[near], weight[near]
    mean = math.atan2(float((weight * np.sin(phase)).sum()), float((weight * np.cos(phase)).sum()))
    return round(mean * step / (2.0 * math.pi), 12) % step


def _mask_gradient(poly: Polygon, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    minx, miny, maxx, maxy = poly.bounds
    pad = 5
    shape_ = (math.ceil((maxy - miny) / pixel_size) + 2 * pad,
              math.ceil((maxx - minx) / pixel_size) + 2 * pad)
    transform = Affine(pixel_size, 0.0, minx - pad * pixel_size, 0.0, -pixel_size,
                       maxy + pad * pixel_size)
    mask = rasterio.features.rasterize([poly], out_shape=shape_, transform=transform,
                                       dtype="uint8").astype(np.float64)
    smooth = ndimage.gaussian_filter(mask, sigma=1.0, mode="constant")
    return (ndimage.sobel(smooth, axis=1, mode="constant"),
            ndimage.sobel(smooth, axis=0, mode="constant"))


def corner_angle_share(poly: Polygon, tol_deg: float = 5.0) -> float:
    """Share of corners whose angle is within ``tol_deg`` of 90° or 180° (all rings)."""
    ok = total = 0
    for ring in (poly.exterior, *poly.interiors) if not poly.is_empty else ():
        pts = np.asarray(ring.coords)[:-1]
        if len(pts) < 3:
            continue
        d_in = pts - np.roll(pts, 1, axis=0)
        d_out = np.roll(pts, -1, axis=0) - pts
        turn = np.degrees(np.abs(np.arctan2(d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0],
                                            (d_in * d_out).sum(axis=1))))
        ok += int(((np.abs(turn - 90.0) <= tol_deg) | (turn <= tol_deg)).sum())
        total += len(pts)
    return ok / total if total else 0.0


def _is_regular(poly: Polygon, min_edge: float) -> bool:
    """Already right-angled with no wall shorter than ``min_edge`` (e.g. an axis-aligned pixel
    rectangle): nothing to do, and returning it keeps its exact pixel coordinates."""
    if corner_angle_share(poly, tol_deg=1e-6) < 1.0:
        return False
    return all(float(np.hypot(*np.diff(np.asarray(r.coords), axis=0).T).min()) >= min_edge
               for r in (poly.exterior, *poly.interiors))


def _simplified(raw: Polygon, tolerance: float) -> Polygon:
    simple = as_polygon(shapely.simplify(raw, tolerance, preserve_topology=True))
    return simple if not simple.is_empty and simple.area > 0 else raw


def _rectangle_angle(poly: Polygon) -> float:
    rect = np.asarray(shapely.oriented_envelope(poly).exterior.coords)
    if len(rect) < 3:
        return 0.0
    dx, dy = rect[1] - rect[0]
    return math.degrees(math.atan2(dy, dx))


def _iou(a: Polygon, b: Polygon) -> float:
    inter = a.intersection(b).area
    union = a.area + b.area - inter
    return float(inter / union) if union > 0 else 0.0


def _smoothed_frame(raw: Polygon, theta: float, pixel_size: float
                    ) -> tuple[Polygon, Callable[[Polygon], Polygon]] | None:
    """``raw`` rotated by -theta about its centroid and re-traced on a fine axis-aligned grid
    after a Gaussian smoothing (every edge exactly horizontal or vertical), plus the function
    that maps a polygon of that frame back."""
    centre = np.asarray(raw.centroid.coords[0])
    rot = _rotation(theta)
    local = shapely.transform(raw, lambda xy: (xy - centre) @ rot)
    cell = pixel_size * _GRID
    minx, miny, maxx, maxy = local.bounds
    pad = 2 + round(3 * _SMOOTH / _GRID)                    # keeps the traced outline closed
    shape_ = (math.ceil((maxy - miny) / cell) + 2 * pad,
              math.ceil((maxx - minx) / cell) + 2 * pad)
    transform = Affine(cell, 0.0, minx - pad * cell, 0.0, -cell, maxy + pad * cell)
    mask = rasterio.features.rasterize([local], out_shape=shape_, transform=transform,
                                       dtype="uint8")
    if not mask.any():
        return None
    smoothed = ndimage.gaussian_filter(mask.astype(np.float32), _SMOOTH / _GRID,
                                       mode="constant") >= 0.5
    if smoothed.any():
        mask = smoothed.astype(np.uint8)
    traced = [shape(g) for g, _ in rasterio.features.shapes(mask, mask=mask.astype(bool),
                                                             connectivity=4, transform=transform)]

    def to_world(poly: Polygon) -> Polygon:
        return as_polygon(shapely.transform(poly, lambda xy: xy @ rot.T + centre))

    return as_polygon(max(traced, key=lambda p: p.area)), to_world


def _rotation(theta: float) -> np.ndarray:
    """Matrix rotating column vectors by ``theta`` degrees (rows @ it rotate by -theta)."""
    rad = math.radians(theta)
    return np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])


def _orthogonalize(poly: Polygon, theta: float, step: float, min_edge: float) -> Polygon | None:
    """Snap every ring of ``poly`` to directions ``theta + k*step``; None when it degenerates."""
    centre = np.asarray(poly.centroid.coords[0])
    rot = _rotation(theta)
    shell = _snap_ring(np.asarray(poly.exterior.coords)[:-1], centre, rot, step, min_edge)
    if shell is None:
        return None
    result = as_polygon(Polygon(shell))
    holes = []
    for interior in poly.interiors:
        hole = _snap_ring(np.asarray(interior.coords)[:-1], centre, rot, step, min_edge)
        if hole is not None and Polygon(hole).area >= min_edge * min_edge:
            holes.append(as_polygon(Polygon(hole)))
    if holes:
        result = as_polygon(result.difference(shapely.union_all(holes)))
    if result.is_empty or not result.is_valid:
        return None
    return as_polygon(shapely.simplify(result, 0.0))


def _snap_ring(pts: np.ndarray, centre: np.ndarray, rot: np.ndarray, step: float,
               min_edge: float) -> np.ndarray | None:
    """Corners of one ring snapped to the rotated axes; rotation ``rot`` maps frame → world."""
    local = (pts - centre) @ rot            # world → frame (rows times rot = rot.T applied)
    vec = np.roll(local, -1, axis=0) - local
    length = np.hypot(vec[:, 0], vec[:, 1])
    keep = length > 0
    local, vec, length = local[keep], vec[keep], length[keep]
    n_dir = round(360.0 / step)
    cls = np.round(np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) / step).astype(int) % n_dir
    runs = _runs(local, vec, length, cls, step)
    if runs is None:
        return None
    min_runs = 4 if step == 90.0 else 3
    runs = _drop_short(runs, min_edge, n_dir, min_runs)
    if len(runs) < min_runs:
        return None
    corners = []
    for (k1, o1, _), (k2, o2, _) in zip(runs, runs[1:] + runs[:1], strict=True):
        n1, n2 = _normal(k1, step), _normal(k2, step)
        det = n1[0] * n2[1] - n1[1] * n2[0]
        if abs(det) < 1e-9:
            return None
        corners.append(((o1 * n2[1] - o2 * n1[1]) / det, (n1[0] * o2 - n2[0] * o1) / det))
    return np.asarray(corners) @ rot.T + centre


Run = tuple[int, float, float]  # (direction class, line offset along its normal, length)


def _normal(k: int, step: float) -> tuple[float, float]:
    a = math.radians(k * step)
    return (-math.sin(a), math.cos(a))


def _runs(local: np.ndarray, vec: np.ndarray, length: np.ndarray, cls: np.ndarray,
          step: float) -> list[Run] | None:
    """Group consecutive edges of equal direction class into fitted lines."""
    change = np.flatnonzero(cls != np.roll(cls, 1))
    if len(change) == 0:
        return None
    start = int(change[0])
    order = np.roll(np.arange(len(cls)), -start)
    runs: list[Run] = []
    cur_k, acc_o, acc_l = -1, 0.0, 0.0
    for i in order.tolist():
        k = int(cls[i])
        normal = _normal(k, step)
        mid = local[i] + vec[i] / 2
        if k != cur_k and acc_l > 0:
            runs.append((cur_k, acc_o / acc_l, acc_l))
            acc_o, acc_l = 0.0, 0.0
        cur_k = k
        acc_o += float(length[i]) * (mid[0] * normal[0] + mid[1] * normal[1])
        acc_l += float(length[i])
    runs.append((cur_k, acc_o / acc_l, acc_l))
    return runs


def _drop_short(runs: list[Run], min_edge: float, n_dir: int, min_runs: int) -> list[Run]:
    """Remove runs shorter than ``min_edge``, shortest first, unless the neighbours are
    antiparallel (the end of a thin spike or notch) or too few runs would remain; neighbours
    left with the same direction merge into one line (offset weighted by squared length). A
    doubly linked ring plus a heap keeps this O(n log n)."""
    n = len(runs)
    cls = [r[0] for r in runs]
    off = [r[1] for r in runs]
    size = [r[2] for r in runs]
    weight = [r[2] * r[2] for r in runs]         # long walls dominate a merged line's position
    prev = [(i - 1) % n for i in range(n)]
    nxt = [(i + 1) % n for i in range(n)]
    alive = [True] * n
    version = [0] * n
    heap = [(size[i], i, 0) for i in range(n) if size[i] < min_edge]
    heapq.heapify(heap)
    count = n
    while heap:
        _, i, ver = heapq.heappop(heap)
        if not alive[i] or ver != version[i]:
            continue
        p, q = prev[i], nxt[i]
        merge = cls[p] == cls[q]
        if (cls[p] - cls[q]) % n_dir == n_dir // 2 or count - (2 if merge else 1) < min_runs:
            continue
        alive[i] = False
        nxt[p], prev[q] = q, p
        count -= 1
        if merge:
            total = weight[p] + weight[q]
            off[p] = (off[p] * weight[p] + off[q] * weight[q]) / total
            weight[p] = total
            size[p] += size[q]
            alive[q] = False
            nxt[p], prev[nxt[q]] = nxt[q], p
            count -= 1
            version[p] += 1
            if size[p] < min_edge:
                heapq.heappush(heap, (size[p], p, version[p]))
    start = alive.index(True)
    out, i = [], start
    while True:
        out.append((cls[i], off[i], size[i]))
        i = nxt[i]
        if i == start:
            return out
