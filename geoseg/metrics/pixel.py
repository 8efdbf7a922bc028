"""Pixel metrics from a confusion matrix (rows = truth, columns = prediction).

Definitions (as in Everingham et al., PASCAL VOC; Csurka et al. 2013):

* pixel accuracy = trace(CM) / sum(CM)
* IoU_c (Jaccard) = TP_c / (TP_c + FP_c + FN_c)
* Dice_c (= F1_c) = 2 TP_c / (2 TP_c + FP_c + FN_c)
* mIoU = mean of IoU_c over the classes present in the truth or the prediction (classes absent
  from both have an undefined IoU, reported as NaN, and are left out of the mean)

Confusion matrices are plain int64 arrays, so chunks of a large raster are scored one at a time
and their matrices summed (``sum(confusion_matrix(p, t, k) for p, t in chunks)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from geoseg.errors import LabelError


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, num_classes: int,
                     ignore: int | None = 255) -> np.ndarray:
    """``(K, K)`` int64 counts ``cm[t, p]`` of pixels with truth ``t`` and prediction ``p``.

    Pixels where either array equals ``ignore`` (nodata) are not counted; any other value
    outside ``0..K-1`` is an error.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise LabelError(f"prediction {pred.shape} and truth {truth.shape} differ in shape: "
                         "compare rasters on the same grid")
    if num_classes < 1:
        raise LabelError(f"num_classes must be >= 1, got {num_classes}")
    p = pred.ravel().astype(np.int64)
    t = truth.ravel().astype(np.int64)
    if ignore is not None:
        keep = (p != ignore) & (t != ignore)
        p, t = p[keep], t[keep]
    for name, arr in (("prediction", p), ("truth", t)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            bad = arr[(arr < 0) | (arr >= num_classes)][0]
            raise LabelError(f"{name} holds class {bad}, outside 0..{num_classes - 1}: mark "
                             f"nodata with {ignore} or give the right class count "
                             "(geoseg eval --num-classes)")
    counts = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _parts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise LabelError(f"a confusion matrix must be square, got shape {cm.shape}")
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    return tp, fp, fn


def pixel_accuracy(cm: np.ndarray) -> float:
    """Fraction of counted pixels whose prediction equals the truth (NaN when none)."""
    total = float(np.asarray(cm).sum())
    return float(np.trace(cm)) / total if total else math.nan


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """IoU per class; NaN for classes absent from both truth and prediction."""
    tp, fp, fn = _parts(cm)
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean IoU over classes present in truth or prediction (NaN when nothing was counted)."""
    iou = iou_per_class(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan


def dice_per_class(cm: np.ndarray) -> np.ndarray:
    """Dice coefficient (= F1 score) per class; NaN for classes absent from both."""
    tp, fp, fn = _parts(cm)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def _num(v: float) -> float | None:
    """JSON-friendly float (NaN becomes None)."""
    return None if math.isnan(v) else round(float(v), 6)


@dataclass(frozen=True)
class PixelScores:
    """All pixel metrics of one confusion matrix."""

    confusion: np.ndarray
    accuracy: float
    iou: np.ndarray
    miou: float
    dice: np.ndarray

    @classmethod
    def from_confusion(cls, cm: np.ndarray) -> PixelScores:
        cm = np.asarray(cm, dtype=np.int64)
        return cls(cm, pixel_accuracy(cm), iou_per_class(cm), mean_iou(cm), dice_per_class(cm))

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, object]:
        """JSON-ready summary keyed by class name (or id)."""
        names = list(class_names) if class_names is not None else [
            str(i) for i in range(len(self.iou))]
        if len(names) != len(self.iou):
            raise LabelError(f"{len(names)} class names for {len(self.iou)} classes")
        return {
            "pixel_accuracy": _num(self.accuracy),
            "miou": _num(self.miou),
            "iou": {n: _num(v) for n, v in zip(names, self.iou, strict=True)},
            "dice": {n: _num(v) for n, v in zip(names, self.dice, strict=True)},
            "pixels": int(self.confusion.sum()),
            "confusion": self.confusion.tolist(),
        }
