"""COCO mask average precision for one category, following ``pycocotools`` (``COCOeval`` with
``iouType="segm"``) step by step.

Per image (here: a window, or a whole scene):

1. Detections are sorted by score, highest first, with a stable sort (``mergesort``, as in
   pycocotools), so equal scores keep their input order (ascending instance id for rasters).
   Only the first ``max_dets`` are kept (COCO's default is 100 per image; ``None`` keeps all).
2. For each IoU threshold ``t`` in 0.50:0.05:0.95, detections are taken in that order and each
   is matched to the not yet matched truth with the highest IoU >= ``t`` (ties: the truth with
   the higher index, which is what pycocotools' loop does).

Over all images, the detections are pooled and sorted by score again (stable, in image order),
and per threshold precision = TP / (TP + FP + eps) and recall = TP / number of truths are
cumulated; precision is made monotone from the right and sampled at the 101 recall thresholds
``np.linspace(0, 1, 101)`` with ``searchsorted(..., side="left")`` (0 beyond the highest
recall). AP is the mean over thresholds and recall points; AP50 and AP75 use one threshold;
AR is the mean over thresholds of the final recall.

What is left out: area ranges (only "all", which ignores nothing) and crowd regions (``iscrowd``
truths): there are none in a label raster; an ignore mask plays their part here (pixels outside
it are removed from both rasters before IoUs are computed, as in
:func:`~geoseg.metrics.objects.instance_pairs`). With no truth object at all, pycocotools reports
-1; here the scores are NaN.

Windows combine with ``+`` on :class:`CocoDetections` (per-detection score and matches per
threshold, and the truth count); compute :class:`CocoScores` once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.errors import LabelError
from geoseg.metrics.objects import Match, instance_pairs

#: IoU thresholds 0.50:0.05:0.95, computed as in pycocotools' ``Params.setDetParams``.
IOU_THRESHOLDS = np.linspace(.5, 0.95, int(np.round((0.95 - .5) / .05)) + 1, endpoint=True)
#: Recall points 0:0.01:1 of the interpolated precision.
RECALL_THRESHOLDS = np.linspace(.0, 1.00, int(np.round((1.00 - .0) / .01)) + 1, endpoint=True)
#: COCO's detections per image.
MAX_DETS = 100


@dataclass(frozen=True)
class CocoDetections:
    """Kept detections of one or more images: ``scores`` (D,), ``matched`` (T, D) bool (matched
    at each IoU threshold) in image order, and the number of truth objects."""

    scores: np.ndarray
    matched: np.ndarray
    n_truth: int

    @classmethod
    def empty(cls) -> CocoDetections:
        return cls(np.zeros(0), np.zeros((len(IOU_THRESHOLDS), 0), bool), 0)

    def __add__(self, other: CocoDetections) -> CocoDetections:
        return CocoDetections(np.concatenate([self.scores, other.scores]),
                              np.concatenate([self.matched, other.matched], axis=1),
                              self.n_truth + other.n_truth)


def coco_match(pairs: Sequence[Match], n_pred: int, n_truth: int,
               scores: Sequence[float] | np.ndarray,
               max_dets: int | None = MAX_DETS) -> CocoDetections:
    """pycocotools' per-image matching from candidate ``(pred, truth, iou)`` pairs (pairs that
    are absent have IoU 0) and one score per prediction ``0..n_pred-1``."""
    sc = np.asarray(scores, dtype=np.float64)
    if sc.shape != (n_pred,):
        raise LabelError(f"{sc.size} scores for {n_pred} predicted objects: give one each")
    if sc.size and not np.isfinite(sc).all():
        raise LabelError("detection scores must be finite numbers")
    if max_dets is not None and max_dets < 1:
        raise LabelError(f"max_dets must be >= 1 or None, got {max_dets}")
    order = np.argsort(-sc, kind="mergesort")[:max_dets]
    cands: dict[int, list[tuple[int, float]]] = {}
    for p, t, iou in sorted(pairs, key=lambda m: (m[0], m[1])):
        if not (0 <= p < n_pred and 0 <= t < n_truth):
            raise LabelError(f"pair ({p}, {t}) outside {n_pred} predictions, {n_truth} truths")
        cands.setdefault(p, []).append((t, iou))
    matched = np.zeros((len(IOU_THRESHOLDS), len(order)), bool)
    for ti, thr in enumerate(IOU_THRESHOLDS):
        used = np.zeros(n_truth, bool)
        for d, p in enumerate(order.tolist()):
            best, m = min(float(thr), 1 - 1e-10), -1
            for t, iou in cands.get(p, ()):
                if used[t] or iou < best:
                    continue
                best, m = iou, t
            if m >= 0:
                used[m] = True
                matched[ti, d] = True
    return CocoDetections(sc[order], matched, n_truth)


def coco_instances(pred: np.ndarray, truth: np.ndarray, scores: Mapping[int, float], *,
                   valid: np.ndarray | None = None,
                   max_dets: int | None = MAX_DETS) -> CocoDetections:
    """Detections of one image given as instance rasters (0 = none) and a score per predicted
    instance id. Ids with no pixel inside ``valid`` are not detections."""
    pairs, n_pred, n_truth = instance_pairs(pred, truth, valid)
    masked = np.asarray(pred) if valid is None else np.where(valid, pred, 0)
    ids = np.unique(masked)
    ids = ids[ids != 0]
    missing = [int(i) for i in ids if int(i) not in scores]
    if missing:
        raise LabelError(f"no score for predicted instance(s) {missing[:5]}: give every "
                         "instance id a score")
    return coco_match(pairs, n_pred, n_truth, [scores[int(i)] for i in ids], max_dets)


def _mean(a: np.ndarray) -> float:
    return float(np.mean(a)) if a.size else math.nan


@dataclass(frozen=True)
class CocoScores:
    """AP (IoU 0.50:0.95), AP50, AP75 and AR, with the (T, R) precision table behind them."""

    ap: float
    ap50: float
    ap75: float
    ar: float
    precision: np.ndarray
    recall: np.ndarray
    n_truth: int
    n_dets: int

    @classmethod
    def from_detections(cls, dets: CocoDetections) -> CocoScores:
        t_n, r_n = len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS)
        nd = dets.scores.size
        if dets.n_truth == 0:
            nan = np.full((t_n, r_n), np.nan)
            return cls(math.nan, math.nan, math.nan, math.nan, nan, np.full(t_n, np.nan), 0, nd)
        order = np.argsort(-dets.scores, kind="mergesort")
        tps = dets.matched[:, order]
        tp_sum = np.cumsum(tps, axis=1).astype(np.float64)
        fp_sum = np.cumsum(~tps, axis=1).astype(np.float64)
        precision = np.zeros((t_n, r_n))
        recall = np.zeros(t_n)
        for t in range(t_n):
            rc = tp_sum[t] / dets.n_truth
            pr = tp_sum[t] / (fp_sum[t] + tp_sum[t] + np.spacing(1))
            recall[t] = rc[-1] if nd else 0.0
            pr = np.maximum.accumulate(pr[::-1])[::-1]  # monotone from the right
            inds = np.searchsorted(rc, RECALL_THRESHOLDS, side="left")
            hit = inds < nd
            precision[t, hit] = pr[inds[hit]]
        i50 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.5))[0])
        i75 = int(np.flatnonzero(np.isclose(IOU_THRESHOLDS, 0.75))[0])
        return cls(_mean(precision), _mean(precision[i50]), _mean(precision[i75]),
                   _mean(recall), precision, recall, dets.n_truth, nd)

    def to_dict(self) -> dict[str, float | int | None]:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else round(v, 6)

        return {"ap": num(self.ap), "ap50": num(self.ap50), "ap75": num(self.ap75),
                "ar": num(self.ar), "truths": self.n_truth, "detections": self.n_dets}
