"""Building outline regularization: pixel staircases → straight, mostly right-angled outlines.

The dominant direction comes from an edge-length-weighted histogram of edge angles (modulo 90°,
or 45° when diagonal walls are allowed) of the lightly simplified outline; the minimum rotated
rectangle is the fallback. Edges are snapped to that direction (±90°, optionally ±45°), runs of
equal direction are merged into one fitted line, runs shorter than ``min_edge`` are dropped, and
the corners are the intersections of consecutive lines. Round or irregular outlines (few edges
near the dominant directions) are only simplified, and any result that strays from the raw
outline (IoU < 0.85) falls back to the simplified raw outline. The result is always a valid,
non-empty polygon.
"""

from __future__ import annotations

import math

import numpy as np
import shapely
from shapely.geometry import Polygon

from geoseg.errors import InputError
from geoseg.vectorize.features import as_polygon

#: Share of (simplified) outline length within ``_AXIS_TOL_DEG`` of the dominant axes below which
#: an outline is treated as round/irregular and only simplified.
MIN_AXIS_SHARE = 0.6
#: Minimum IoU between the regularized and the raw outline; below it the simplified raw is kept.
MIN_IOU = 0.85
_AXIS_TOL_DEG = 15.0
_SIMPLIFY = 0.7
#: Tolerance (pixels) that straightens the staircase of a digital line at any angle, so edge
#: angles reflect walls rather than pixel steps.
_STAIRCASE = float(__import__("os").environ.get("STAIR", "1.5"))


def regularize_polygon(poly: Polygon, pixel_size: float, *, allow_45: bool = False,
                       min_edge: float | None = None) -> Polygon:
    """Regularize a (pixelated) building outline; holes are regularized the same way.

    ``pixel_size`` is in the polygon's units; ``min_edge`` (default 1.5 pixels) is the shortest
    wall kept.
    """
    if not (math.isfinite(pixel_size) and pixel_size > 0):
        raise InputError(f"pixel_size must be a positive number, got {pixel_size}")
    raw = as_polygon(poly)
    if raw.is_empty or raw.area <= 0:
        raise InputError("cannot regularize an empty polygon")
    min_edge = 1.5 * pixel_size if min_edge is None else float(min_edge)
    simple = _simplified(raw, pixel_size * _SIMPLIFY)
    coarse = _simplified(raw, pixel_size * _STAIRCASE)
    step = 45.0 if allow_45 else 90.0
    theta, share = dominant_direction(coarse, step)
    if share < MIN_AXIS_SHARE:
        return simple
    result = _orthogonalize(coarse, theta, step, min_edge)
    if result is None or _iou(result, raw) < MIN_IOU:
        return simple
    return result


def dominant_direction(poly: Polygon, step: float = 90.0) -> tuple[float, float]:
    """``(theta_deg, share)``: the dominant wall direction modulo ``step`` and the share of the
    exterior's length within ±15° of it (modulo ``step``).

    Candidates are the peak of the length-weighted angle histogram and the minimum rotated
    rectangle's orientation; the one explaining more of the outline wins.
    """
    vec = np.diff(np.asarray(poly.exterior.coords), axis=0)
    length = np.hypot(vec[:, 0], vec[:, 1])
    if length.sum() <= 0:
        return 0.0, 0.0
    angle = np.degrees(np.arctan2(vec[:, 1], vec[:, 0])) % step
    bins = int(step)
    hist = np.bincount(np.floor(angle).astype(int) % bins, weights=length, minlength=bins)
    smooth = np.convolve(np.concatenate([hist[-3:], hist, hist[:3]]), np.ones(7), mode="valid")
    best = (0.0, -1.0)
    for peak in (float(np.argmax(smooth)) + 0.5, _rectangle_angle(poly) % step):
        delta = (angle - peak + step / 2) % step - step / 2
        near = np.abs(delta) <= 10.0
        theta = peak + (float(np.average(delta[near], weights=length[near])) if near.any()
                        else 0.0)
        theta %= step
        dist = np.abs((angle - theta + step / 2) % step - step / 2)
        share = float(length[dist <= _AXIS_TOL_DEG].sum() / length.sum())
        if share > best[1]:
            best = (theta, share)
    return best


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
    union = a.union(b).area
    return float(a.intersection(b).area / union) if union > 0 else 0.0


def _orthogonalize(poly: Polygon, theta: float, step: float, min_edge: float) -> Polygon | None:
    """Snap every ring of ``poly`` to directions ``theta + k*step``; None when it degenerates."""
    centre = np.asarray(poly.centroid.coords[0])
    rad = math.radians(theta)
    rot = np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])
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
    runs = _drop_short(runs, min_edge, n_dir)
    if len(runs) < (4 if step == 90.0 else 3):
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


def _drop_short(runs: list[Run], min_edge: float, n_dir: int) -> list[Run]:
    """Remove the shortest run below ``min_edge`` unless its neighbours are antiparallel (a thin
    spike or notch); neighbours that end up with the same direction merge into one line."""
    items = [(k, o, ln, False) for k, o, ln in runs]
    while len(items) > 4:
        short = [i for i, r in enumerate(items) if r[2] < min_edge and not r[3]]
        if not short:
            break
        i = min(short, key=lambda j: (items[j][2], j))
        prev, nxt = items[i - 1], items[(i + 1) % len(items)]
        if (prev[0] - nxt[0]) % n_dir == n_dir // 2:
            k, o, ln, _ = items[i]
            items[i] = (k, o, ln, True)
            continue
        del items[i]
        if prev[0] == nxt[0]:
            p, q = (i - 1) % len(items), i % len(items)
            total = prev[2] + nxt[2]
            items[p] = (prev[0], (prev[1] * prev[2] + nxt[1] * nxt[2]) / total, total,
                        prev[3] and nxt[3])
            del items[q]
    return [(k, o, ln) for k, o, ln, _ in items]
