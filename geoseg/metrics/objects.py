"""Object metrics: SpaceNet-style one-to-one matching of predicted and true footprints.

A prediction and a truth object *match* when their IoU (area of intersection / area of union)
is at least the threshold (0.5 in SpaceNet). Candidate pairs are all overlapping pairs; they are
taken in order of decreasing IoU and a pair is kept only if neither its prediction nor its truth
is matched yet, so each object is matched at most once. Then TP = matches, FP = unmatched
predictions, FN = unmatched truths, precision = TP/(TP+FP), recall = TP/(TP+FN),
F1 = 2PR/(P+R) (Van Etten et al. 2018, "SpaceNet: A Remote Sensing Dataset and Challenge Series").

Two entry points give the same answer for the same objects: polygons (shapely, candidates from
an STRtree) and instance rasters (integer label arrays, overlaps counted per pixel; much faster
for whole tiles).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from shapely import STRtree
from shapely.geometry.base import BaseGeometry

from geoseg.errors import LabelError

Match = tuple[int, int, float]  # (prediction index, truth index, IoU)


@dataclass(frozen=True)
class ObjectScores:
    """Counts of a one-to-one matching and the scores derived from them.

    With no objects at all (TP = FP = FN = 0) every score is 1.0 (nothing to find, nothing
    wrong); otherwise a score whose denominator is 0 is 0.0.
    """

    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        if self.tp + self.fp + self.fn == 0:
            return 1.0
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        if self.tp + self.fp + self.fn == 0:
            return 1.0
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def __add__(self, other: ObjectScores) -> ObjectScores:
        return ObjectScores(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def to_dict(self) -> dict[str, float | int]:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn,
                "precision": round(self.precision, 6), "recall": round(self.recall, 6),
                "f1": round(self.f1, 6)}


def greedy_match(pairs: Sequence[Match], iou_threshold: float = 0.5) -> list[Match]:
    """One-to-one matches from candidate ``(pred, truth, iou)`` pairs: highest IoU first
    (ties by prediction then truth index), each side used at most once, IoU >= threshold."""
    if not 0.0 < iou_threshold <= 1.0:
        raise LabelError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    ordered = sorted((p for p in pairs if p[2] >= iou_threshold),
                     key=lambda m: (-m[2], m[0], m[1]))
    used_pred: set[int] = set()
    used_truth: set[int] = set()
    out: list[Match] = []
    for p, t, iou in ordered:
        if p in used_pred or t in used_truth:
            continue
        used_pred.add(p)
        used_truth.add(t)
        out.append((p, t, iou))
    return out


def _valid(geoms: Sequence[BaseGeometry]) -> np.ndarray:
    arr = np.asarray(list(geoms), dtype=object)
    if arr.size and not all(isinstance(g, BaseGeometry) for g in arr):
        raise LabelError("objects must be shapely geometries (polygons)")
    if arr.size:
        bad = ~shapely.is_valid(arr)
        if bad.any():
            arr[bad] = shapely.make_valid(arr[bad])
    return arr


def match_polygons(pred: Sequence[BaseGeometry], truth: Sequence[BaseGeometry],
                   iou_threshold: float = 0.5) -> list[Match]:
    """SpaceNet one-to-one matching of predicted and true polygons (same CRS); invalid
    geometries are repaired with ``make_valid`` first."""
    p_arr, t_arr = _valid(pred), _valid(truth)
    if not p_arr.size or not t_arr.size:
        return []
    tree = STRtree(t_arr)
    pi, ti = tree.query(p_arr, predicate="intersects")
    if not len(pi):
        return []
    inter = shapely.area(shapely.intersection(p_arr[pi], t_arr[ti]))
    union = shapely.area(p_arr[pi]) + shapely.area(t_arr[ti]) - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    pairs = [(int(a), int(b), float(c)) for a, b, c in zip(pi, ti, iou, strict=True)]
    return greedy_match(pairs, iou_threshold)


def score_polygons(pred: Sequence[BaseGeometry], truth: Sequence[BaseGeometry],
                   iou_threshold: float = 0.5) -> ObjectScores:
    """TP/FP/FN (and precision, recall, F1) of predicted vs true polygons."""
    tp = len(match_polygons(pred, truth, iou_threshold))
    return ObjectScores(tp, len(pred) - tp, len(truth) - tp)


def _compact(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 0 (background), 1..n (objects in order of their original id)."""
    ids, inv = np.unique(labels, return_inverse=True)
    inv = inv.reshape(labels.shape)
    if ids.size and ids[0] == 0:
        return inv.astype(np.int64), int(ids.size - 1)
    return inv.astype(np.int64) + 1, int(ids.size)


def instance_pairs(pred: np.ndarray, truth: np.ndarray,
                   valid: np.ndarray | None = None) -> tuple[list[Match], int, int]:
    """Overlapping (pred, truth, IoU) pairs of two instance rasters (0 = no object), with the
    number of predicted and true objects. Pixels outside ``valid`` are not counted (objects
    that lie wholly outside it do not exist)."""
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise LabelError(f"instance rasters must be 2-D with one shape, got {pred.shape} and "
                         f"{truth.shape}")
    if valid is not None:
        pred = np.where(valid, pred, 0)
        truth = np.where(valid, truth, 0)
    p, n_pred = _compact(pred)
    t, n_truth = _compact(truth)
    p_area = np.bincount(p.ravel(), minlength=n_pred + 1)
    t_area = np.bincount(t.ravel(), minlength=n_truth + 1)
    both = (p > 0) & (t > 0)
    codes, inter = np.unique(p[both] * (n_truth + 1) + t[both], return_counts=True)
    pi, ti = codes // (n_truth + 1), codes % (n_truth + 1)
    iou = inter / (p_area[pi] + t_area[ti] - inter)
    pairs = [(int(a) - 1, int(b) - 1, float(c)) for a, b, c in zip(pi, ti, iou, strict=True)]
    return pairs, n_pred, n_truth


def match_instances(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5,
                    valid: np.ndarray | None = None) -> list[Match]:
    """SpaceNet matching of two instance rasters; indices refer to objects ordered by id."""
    pairs, _, _ = instance_pairs(pred, truth, valid)
    return greedy_match(pairs, iou_threshold)


def score_instances(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5,
                    valid: np.ndarray | None = None) -> ObjectScores:
    """TP/FP/FN (and precision, recall, F1) of two instance rasters."""
    pairs, n_pred, n_truth = instance_pairs(pred, truth, valid)
    tp = len(greedy_match(pairs, iou_threshold))
    return ObjectScores(tp, n_pred - tp, n_truth - tp)
