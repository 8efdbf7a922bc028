"""Panoptic quality for one "thing" class (Kirillov et al. 2019, "Panoptic Segmentation"),
following the reference ``panopticapi`` (``pq_compute_single_core``).

* A predicted and a true segment match when IoU > 0.5 (strictly); segments of a label raster do
  not overlap, so such matches are unique without any assignment step.
* Void (ignored) pixels: the IoU's union leaves out the predicted segment's void pixels, which is
  the IoU of the two rasters with void pixels removed (:func:`~geoseg.metrics.objects.
  instance_pairs` with ``valid``). True segments have no void pixels by definition.
* TP = matches, FN = unmatched true segments, FP = unmatched predicted segments except those
  with more than half of their area (void included) on void pixels, which are not counted.
* SQ = sum of matched IoUs / TP (0 when TP = 0, as in panopticapi), RQ = TP / (TP + FP/2 +
  FN/2), PQ = SQ x RQ. With no segment at all (TP = FP = FN = 0) panopticapi skips the class;
  here all three are NaN.

Crowd regions are not handled (a label raster has none); mark them void to ignore predictions on
them. Windows combine with ``+`` on :class:`PanopticScores` (counts and the IoU sum), like the
per-image statistics of panopticapi.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.errors import LabelError
from geoseg.metrics.objects import Match, instance_pairs


@dataclass(frozen=True)
class PanopticScores:
    """TP/FP/FN counts and the sum of matched IoUs, with PQ, SQ and RQ derived from them."""

    tp: int
    fp: int
    fn: int
    iou_sum: float

    @property
    def sq(self) -> float:
        if self.tp + self.fp + self.fn == 0:
            return math.nan
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.tp / denom if denom else math.nan

    @property
    def pq(self) -> float:
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        return self.iou_sum / denom if denom else math.nan

    def __add__(self, other: PanopticScores) -> PanopticScores:
        return PanopticScores(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                              self.iou_sum + other.iou_sum)

    def to_dict(self) -> dict[str, float | int | None]:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 6)

        return {"pq": num(self.pq), "sq": num(self.sq), "rq": num(self.rq), "tp": self.tp,
                "fp": self.fp, "fn": self.fn}


def panoptic_match(pairs: Sequence[Match], n_pred: int, n_truth: int,
                   pred_void_fraction: Sequence[float] | np.ndarray | None = None
                   ) -> PanopticScores:
    """PQ counts from candidate ``(pred, truth, iou)`` pairs (IoUs with void pixels removed) and,
    per prediction, the fraction of its area on void pixels (None: no void)."""
    void = (np.zeros(n_pred) if pred_void_fraction is None
            else np.asarray(pred_void_fraction, dtype=np.float64))
    if void.shape != (n_pred,):
        raise LabelError(f"{void.size} void fractions for {n_pred} predicted segments")
    hits = [(p, t, iou) for p, t, iou in pairs if iou > 0.5]
    preds = {p for p, _, _ in hits}
    truths = {t for _, t, _ in hits}
    if len(preds) != len(hits) or len(truths) != len(hits):
        raise LabelError("a segment has IoU > 0.5 with two others: predicted or true segments "
                         "overlap each other, which panoptic segmentation does not allow")
    unmatched = np.ones(n_pred, bool)
    unmatched[list(preds)] = False
    fp = int(np.count_nonzero(unmatched & ~(void > 0.5)))
    return PanopticScores(len(hits), fp, n_truth - len(hits), float(sum(i for *_, i in hits)))


def pred_void_fractions(pred: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """For each predicted instance with pixels inside ``valid`` (ascending id), the share of its
    pixels outside ``valid``."""
    pred = np.asarray(pred)
    if valid is None:
        ids = np.unique(pred)
        return np.zeros(int(np.count_nonzero(ids)))
    valid = np.asarray(valid, dtype=bool)
    ids, area = np.unique(pred[pred != 0], return_counts=True)
    inside, in_area = np.unique(pred[(pred != 0) & valid], return_counts=True)
    total = area[np.searchsorted(ids, inside)]
    return 1.0 - in_area / total


def panoptic_instances(pred: np.ndarray, truth: np.ndarray,
                       valid: np.ndarray | None = None) -> PanopticScores:
    """PQ counts of two instance rasters (0 = none); pixels outside ``valid`` are void."""
    pairs, n_pred, n_truth = instance_pairs(pred, truth, valid)
    return panoptic_match(pairs, n_pred, n_truth, pred_void_fractions(pred, valid))
