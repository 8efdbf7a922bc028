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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from scipy import ndimage
from shapely.geometry import Polygon

from geoseg.errors import InputError
from geoseg.vectorize.features import CROSS as _CROSS
from geoseg.vectorize.features import apply_affine_many, as_polygon
from geoseg.vectorize.trace import gdal_ring_order, trace_regions

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
_TIE = 1e-9          # cells: a fine cell centre this close to a pixel edge is a tie
_SHELF = 1024        # cells, width of the label image the re-traced outlines are laid out in
_BATCH_CELLS = 2**21  # cells of the frames traced in one call


def regularize_polygon(poly: Polygon, pixel_size: float, *, allow_45: bool = False,
                       min_edge: float | None = None, cells: np.ndarray | None = None) -> Polygon:
    """Regularize a (pixelated) building outline, holes included.

    ``pixel_size`` is in the polygon's units; ``min_edge`` (default 1.5 pixels) is the shortest
    wall kept. ``cells``, for an outline made of axis-aligned ``pixel_size`` cells (a pixel
    outline in a square-pixel frame), is its cells as a boolean array over its bounds, row 0 at
    the largest y: what rasterizing it would give, which is then skipped.
    """
    return regularize_polygons([poly], [pixel_size], allow_45=allow_45, min_edge=min_edge,
                               cells=[cells])[0]


def regularize_polygons(polys: Sequence[Polygon], pixel_sizes: Sequence[float], *,
                        allow_45: bool = False, min_edge: float | None = None,
                        cells: Sequence[np.ndarray | None] | None = None) -> list[Polygon]:
    """:func:`regularize_polygon` of each polygon (with its pixel size and cells), the same
    results, with the re-traced outlines of all of them traced in one call: tracing has a
    fixed cost per call that many small outlines would each pay."""
    if len(pixel_sizes) != len(polys) or (cells is not None and len(cells) != len(polys)):
        raise InputError("give one pixel size (and one cells array, if any) per polygon")
    out: list[Polygon | None] = [None] * len(polys)
    todo: list[tuple[int, Polygon, float, float, float, _Frame | None]] = []
    for i, (poly, pixel_size) in enumerate(zip(polys, pixel_sizes, strict=True)):
        if not (math.isfinite(pixel_size) and pixel_size > 0):
            raise InputError(f"pixel_size must be a positive number, got {pixel_size}")
        raw = as_polygon(poly)
        if raw.is_empty or raw.area <= 0:
            raise InputError("cannot regularize an empty polygon")
        edge = 1.5 * pixel_size if min_edge is None else float(min_edge)
        if _is_regular(raw, edge):
            out[i] = raw
            continue
        own = cells[i] if cells is not None else None
        theta, share = dominant_direction(raw, 90.0, pixel_size=pixel_size, cells=own)
        if share < MIN_AXIS_SHARE:
            out[i] = _fallback(raw, pixel_size)
            continue
        todo.append((i, raw, theta, pixel_size, edge, _smoothed_frame(raw, theta, pixel_size,
                                                                      own)))
    frames = [frame for *_, frame in todo if frame is not None]
    outlines = iter(_largest_outlines(frames))
    for i, raw, theta, pixel_size, edge, frame in todo:
        candidates: list[Polygon | None] = []
        outline = next(outlines) if frame is not None else None
        if frame is not None and outline is not None:
            rect = _orthogonalize(outline, 0.0, 90.0, edge)
            candidates.append(frame.to_world(rect) if rect is not None else None)
        if allow_45:
            coarse = _simplified(raw, pixel_size * _STAIRCASE)
            candidates.append(_orthogonalize(coarse, theta, 45.0, edge))
        best: Polygon | None = None
        best_score = -math.inf
        for cand in candidates:
            if cand is None or cand.is_empty or not cand.is_valid:
                continue
            iou = _iou(cand, raw)
            score = iou - _VERTEX_COST * shapely.get_num_coordinates(cand)
            if iou >= MIN_IOU and score > best_score:
                best, best_score = cand, score
        out[i] = best if best is not None else _fallback(raw, pixel_size)
    return [poly for poly in out if poly is not None]


def _fallback(raw: Polygon, pixel_size: float) -> Polygon:
    """The simplified raw outline, or the raw one where simplification strays too far."""
    simple = _simplified(raw, pixel_size * _SIMPLIFY)
    return simple if _iou(simple, raw) >= MIN_IOU else raw


def dominant_direction(poly: Polygon, step: float = 90.0, *, pixel_size: float = 1.0,
                       cells: np.ndarray | None = None) -> tuple[float, float]:
    """``(theta_deg, share)``: the dominant wall direction modulo ``step`` and the share of the
    outline within ``step / 6`` of it (modulo ``step``).

    Votes come from the gradient of the polygon's mask, rasterized at ``pixel_size`` and
    smoothed by one pixel, so pixel staircases and 1-px noise vote for the wall they follow
    (``cells``: that rasterization, when the caller has it; see :func:`regularize_polygon`).
    """
    grad_x, grad_y = _mask_gradient(poly, pixel_size, cells)
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


def _mask_gradient(poly: Polygon, pixel_size: float,
                   cells: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    minx, miny, maxx, maxy = poly.bounds
    pad = 5
    shape_ = (math.ceil((maxy - miny) / pixel_size) + 2 * pad,
              math.ceil((maxx - minx) / pixel_size) + 2 * pad)
    if cells is not None and all(c + 2 * pad <= s for c, s in zip(cells.shape, shape_,
                                                                  strict=True)):
        # the grid below starts at the bounds' top-left corner, so the cells sit at (pad, pad)
        mask = np.zeros(shape_, dtype=np.float64)
        mask[pad:pad + cells.shape[0], pad:pad + cells.shape[1]] = cells
    else:
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


@dataclass(frozen=True)
class _Frame:
    """An outline rotated into its dominant frame and rasterized on a fine grid (``mask``,
    ``transform``), smoothed; ``centre`` and ``rot`` map the frame back."""

    mask: np.ndarray
    transform: Affine
    centre: np.ndarray
    rot: np.ndarray

    def to_world(self, poly: Polygon) -> Polygon:
        return as_polygon(shapely.transform(poly, lambda xy: xy @ self.rot.T + self.centre))


def _smoothed_frame(raw: Polygon, theta: float, pixel_size: float,
                    cells: np.ndarray | None = None) -> _Frame | None:
    """``raw`` rotated by -theta about its centroid and rasterized on a fine axis-aligned grid
    after a Gaussian smoothing, whose traced outline (:func:`_largest_outlines`) has every edge
    exactly horizontal or vertical. With ``cells`` (see :func:`regularize_polygon`) the fine
    grid is filled by looking its cell centres up in them instead of rasterizing."""
    centre = np.asarray(raw.centroid.coords[0])
    rot = _rotation(theta)
    local = shapely.transform(raw, lambda xy: (xy - centre) @ rot)
    cell = pixel_size * _GRID
    minx, miny, maxx, maxy = local.bounds
    pad = 2 + round(3 * _SMOOTH / _GRID)                    # keeps the traced outline closed
    shape_ = (math.ceil((maxy - miny) / cell) + 2 * pad,
              math.ceil((maxx - minx) / cell) + 2 * pad)
    transform = Affine(cell, 0.0, minx - pad * cell, 0.0, -cell, maxy + pad * cell)
    mask = (_rotated_cells(cells, raw.bounds, pixel_size, centre, rot, transform, shape_)
            if cells is not None else None)
    if mask is None:
        mask = rasterio.features.rasterize([local], out_shape=shape_, transform=transform,
                                           dtype="uint8")
    if not mask.any():
        return None
    smoothed = ndimage.gaussian_filter(mask.astype(np.float32), _SMOOTH / _GRID,
                                       mode="constant") >= 0.5
    if smoothed.any():
        mask = smoothed.astype(np.uint8)
    return _Frame(mask, transform, centre, rot)


def _largest_outlines(frames: Sequence[_Frame]) -> list[Polygon | None]:
    """Each frame's largest 4-connected piece (the first in raster order among equal ones),
    traced, with GDAL's ring conventions, in the frame's coordinates. The masks are laid out
    side by side in shelves of one label image and traced in one call per group of at most
    :data:`_BATCH_CELLS` cells (the tracer's tables grow with the image: a chunk of large
    buildings stays within ~0.1 GB)."""
    out: list[Polygon | None] = []
    group: list[_Frame] = []
    cells = 0
    for f in frames:
        if group and cells + f.mask.size > _BATCH_CELLS:
            out += _traced_group(group)
            group, cells = [], 0
        group.append(f)
        cells += f.mask.size
    if group:
        out += _traced_group(group)
    return out


def _traced_group(frames: Sequence[_Frame]) -> list[Polygon | None]:
    """:func:`_largest_outlines` of frames traced together."""
    width = max(_SHELF, max(f.mask.shape[1] for f in frames))
    slots: list[tuple[int, int]] = []            # top-left (row, col) of each mask
    row = col = shelf = 0
    for f in frames:
        h, w = f.mask.shape
        if col + w > width:
            row, col, shelf = row + shelf, 0, 0
        slots.append((row, col))
        col += w
        shelf = max(shelf, h)
    labels = np.zeros((row + shelf, width), dtype=np.int32)
    first_label = []
    count = 0
    for f, (r, c) in zip(frames, slots, strict=True):
        pieces, n = ndimage.label(f.mask, structure=_CROSS)
        first_label.append(count + 1)
        view = labels[r:r + pieces.shape[0], c:c + pieces.shape[1]]
        view[pieces > 0] = pieces[pieces > 0] + count
        count += n
    traced = trace_regions(labels)
    if traced is None:                                   # cannot happen: labels are components
        raise RuntimeError("tracer found a piece with two outlines")
    values, polys = traced
    frame_of = np.searchsorted(np.asarray(first_label), values, side="right") - 1
    area = shapely.area(polys)
    best: dict[int, int] = {}
    for k in np.lexsort((values, -area, frame_of)).tolist():   # largest first, then label
        best.setdefault(int(frame_of[k]), k)
    chosen = [best.get(i) for i in range(len(frames))]
    picked = gdal_ring_order(polys[[k for k in chosen if k is not None]])
    outlines: list[Polygon | None] = []
    it = iter(picked)
    for f, (r, c), k in zip(frames, slots, chosen, strict=True):
        if k is None:
            outlines.append(None)
            continue
        # back to the mask's own pixel grid (integers: exact), then through its transform
        local = shapely.transform(next(it), lambda xy, r=r, c=c: xy - (c, r))
        outlines.append(as_polygon(apply_affine_many(np.asarray([local], dtype=object),
                                                     f.transform)[0]))
    return outlines


def _rotated_cells(cells: np.ndarray, bounds: tuple[float, float, float, float],
                   pixel_size: float, centre: np.ndarray, rot: np.ndarray, transform: Affine,
                   shape_: tuple[int, int]) -> np.ndarray | None:
    """The rotated frame's grid (``transform``, ``shape_``) with the cells whose centre falls
    in a set cell of ``cells`` (over ``bounds``, row 0 at the top): what rasterizing the
    rotated outline gives, since the outline is exactly the union of its cells. None when a
    centre lies on a cell edge (to 1e-9 of a cell; at 45° whole diagonals do), where GDAL's
    tie rule decides: the caller rasterizes then."""
    cols = transform.c + (np.arange(shape_[1]) + 0.5) * transform.a
    rows = transform.f + (np.arange(shape_[0]) + 0.5) * transform.e
    # frame → outline coordinates: xy @ rot.T + centre, for every cell centre
    x = cols[None, :] * rot[0, 0] + rows[:, None] * rot[0, 1] + centre[0]
    y = cols[None, :] * rot[1, 0] + rows[:, None] * rot[1, 1] + centre[1]
    fx = (x - bounds[0]) / pixel_size
    fy = (bounds[3] - y) / pixel_size
    if (np.abs(fx - np.rint(fx)) < _TIE).any() or (np.abs(fy - np.rint(fy)) < _TIE).any():
        return None
    col = np.floor(fx).astype(np.int64)
    row = np.floor(fy).astype(np.int64)
    inside = (col >= 0) & (col < cells.shape[1]) & (row >= 0) & (row < cells.shape[0])
    mask = np.zeros(shape_, dtype=np.uint8)
    mask[inside] = cells[row[inside], col[inside]]
    return mask


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
