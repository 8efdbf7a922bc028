"""Pixel overlaps of two instance rasters with scene-wide ids, summed window by window.

Objects that cross window edges are scored whole: each window contributes its pixel counts per
predicted id, per true id and per (predicted, true) pair, and the sums give the IoU pairs of
the whole raster, the same as :func:`~geoseg.metrics.objects.instance_pairs` on it in one piece,
without holding the raster in memory (only one number per object and per overlapping pair).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoseg.errors import LabelError
from geoseg.metrics.objects import Match


def _group_sum(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys (values, or rows of a 2-D array), sorted, with the sums of their values."""
    if not len(keys):
        return keys, values.astype(np.int64)
    k = keys.reshape(len(keys), -1)
    order = np.lexsort(k.T[::-1])
    k, v = k[order], values[order].astype(np.int64)
    first = np.ones(len(k), bool)
    first[1:] = (k[1:] != k[:-1]).any(axis=1)
    starts = np.flatnonzero(first)
    uniq = k[starts]
    return (uniq if keys.ndim == 2 else uniq.ravel()), np.add.reduceat(v, starts)


def _counts(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, n = np.unique(a[a != 0], return_counts=True)
    return ids.astype(np.int64), n.astype(np.int64)


@dataclass(frozen=True)
class InstanceOverlaps:
    """Per-id pixel counts and pairwise intersections (sorted by id); add windows with ``+``.

    ``pred_area`` counts a prediction's pixels inside the valid area and ``pred_void`` those
    outside it; true objects only exist inside the valid area.
    """

    pred_ids: np.ndarray
    pred_area: np.ndarray
    pred_void: np.ndarray
    truth_ids: np.ndarray
    truth_area: np.ndarray
    pair_ids: np.ndarray  # (N, 2): predicted id, true id
    pair_inter: np.ndarray

    @classmethod
    def empty(cls) -> InstanceOverlaps:
        z = np.zeros(0, np.int64)
        return cls(z, z, z, z, z, np.zeros((0, 2), np.int64), z)

    @classmethod
    def from_rasters(cls, pred: np.ndarray, truth: np.ndarray,
                     valid: np.ndarray | None = None) -> InstanceOverlaps:
        """Counts of one window (0 = no object; pixels outside ``valid`` are void)."""
        pred = np.asarray(pred).astype(np.int64)
        truth = np.asarray(truth).astype(np.int64)
        if pred.shape != truth.shape or pred.ndim != 2:
            raise LabelError(f"instance rasters must be 2-D with one shape, got {pred.shape} "
                             f"and {truth.shape}")
        if pred.size and (pred.min() < 0 or truth.min() < 0):
            raise LabelError("instance ids must be >= 0 (0 = no object)")
        ok = np.ones(pred.shape, bool) if valid is None else np.asarray(valid, dtype=bool)
        if ok.shape != pred.shape:
            raise LabelError(f"valid mask {ok.shape} does not match the rasters {pred.shape}")
        p_in = np.where(ok, pred, 0)
        t_in = np.where(ok, truth, 0)
        pid, parea = _counts(p_in)
        vid, varea = _counts(np.where(ok, 0, pred))
        keys = np.union1d(pid, vid)
        area = np.zeros(len(keys), np.int64)
        area[np.searchsorted(keys, pid)] = parea
        void = np.zeros(len(keys), np.int64)
        void[np.searchsorted(keys, vid)] = varea
        tid, tarea = _counts(t_in)
        both = (p_in != 0) & (t_in != 0)
        pair, inter = _group_sum(np.stack([p_in[both], t_in[both]], axis=1),
                                 np.ones(int(both.sum()), np.int64))
        return cls(keys, area, void, tid, tarea, pair.reshape(-1, 2), inter)

    def __add__(self, other: InstanceOverlaps) -> InstanceOverlaps:
        pid = np.concatenate([self.pred_ids, other.pred_ids])
        keys, area = _group_sum(pid, np.concatenate([self.pred_area, other.pred_area]))
        _, void = _group_sum(pid, np.concatenate([self.pred_void, other.pred_void]))
        tid, tarea = _group_sum(np.concatenate([self.truth_ids, other.truth_ids]),
                                np.concatenate([self.truth_area, other.truth_area]))
        pair, inter = _group_sum(np.concatenate([self.pair_ids, other.pair_ids]),
                                 np.concatenate([self.pair_inter, other.pair_inter]))
        return InstanceOverlaps(keys, area, void, tid, tarea, pair.reshape(-1, 2), inter)

    @property
    def objects(self) -> np.ndarray:
        """Ids of the predicted objects (those with valid pixels), in index order."""
        return self.pred_ids[self.pred_area > 0]

    def pairs(self) -> tuple[list[Match], int, int]:
        """``(pred, truth, iou)`` pairs indexing objects in id order, and the object counts,
        as :func:`~geoseg.metrics.objects.instance_pairs` gives for the whole raster."""
        keep = self.pred_area > 0
        pids, parea = self.pred_ids[keep], self.pred_area[keep]
        pi = np.searchsorted(pids, self.pair_ids[:, 0])
        ti = np.searchsorted(self.truth_ids, self.pair_ids[:, 1])
        iou = self.pair_inter / (parea[pi] + self.truth_area[ti] - self.pair_inter)
        pairs = [(int(a), int(b), float(c)) for a, b, c in zip(pi, ti, iou, strict=True)]
        return pairs, len(pids), len(self.truth_ids)

    def void_fractions(self) -> np.ndarray:
        """Per predicted object (index order), the share of its pixels that are void."""
        keep = self.pred_area > 0
        area, void = self.pred_area[keep], self.pred_void[keep]
        return void / (area + void)
