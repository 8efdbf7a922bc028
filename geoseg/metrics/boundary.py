"""Boundary F1 (the BF score of Csurka et al. 2013, "What is a good evaluation measure for
semantic segmentation?"; the contour measure F of DAVIS, Perazzi et al. 2016).

Definitions used here, per class ``c``:

* A pixel is *valid* when it is inside ``valid`` (if given) and neither the prediction nor the
  truth holds ``ignore`` there (as in :func:`~geoseg.metrics.pixel.confusion_matrix`).
* The *boundary* of ``c`` in a label map is the set of valid pixels of class ``c`` that have at
  least one valid 4-neighbour (up, down, left, right) of another class. Invalid neighbours and
  neighbours outside the array do not make a boundary: the edge of the data (image border,
  nodata collar, a chunk edge) is not an object boundary. Both sides of an edge between two
  classes are boundary pixels, each of its own class.
* A predicted boundary pixel is *matched* when a truth boundary pixel of the same class lies at
  Euclidean distance ``<= tol`` px (``scipy.ndimage.distance_transform_edt``), and vice versa.
* precision = matched predicted / predicted boundary pixels, recall = matched truth / truth
  boundary pixels, BF = 2PR / (P + R) (0 when P + R = 0).
* Edge cases follow DAVIS: no predicted boundary but a true one gives P = 1, R = 0; a predicted
  boundary but no true one gives P = 0, R = 1 (so BF = 0 either way). A class with neither has
  an undefined BF (NaN) and is left out of the mean, as classes absent from both are for mIoU.
* mean BF = mean of BF over the classes where it is defined.

Counts are pooled: the scores of a raster cut into windows are computed from the summed counts
(not averaged per window). Pass each window with ``boundary_halo(tol)`` px of context around it
and ``core`` = the window inside the padded arrays: the counts then equal those of the whole
raster restricted to the core, so the sum over a tiling equals the whole raster's exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from geoseg.errors import LabelError
from geoseg.grid import Window


def boundary_halo(tol: float) -> int:
    """Context (px) a window needs on each side for exact boundary counts at ``tol``."""
    return math.ceil(tol) + 1


def class_boundary(mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Pixels of ``mask & valid`` with a valid 4-neighbour outside ``mask``."""
    other = valid & ~mask
    near = np.zeros_like(mask, dtype=bool)
    near[1:, :] |= other[:-1, :]
    near[:-1, :] |= other[1:, :]
    near[:, 1:] |= other[:, :-1]
    near[:, :-1] |= other[:, 1:]
    return mask & valid & near


@dataclass(frozen=True)
class BoundaryCounts:
    """Per-class boundary pixel counts at tolerance ``tol``; windows add up with ``+``."""

    tol: float
    matched_pred: np.ndarray
    n_pred: np.ndarray
    matched_truth: np.ndarray
    n_truth: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int, tol: float = 2.0) -> BoundaryCounts:
        z = np.zeros(num_classes, np.int64)
        return cls(tol, z, z.copy(), z.copy(), z.copy())

    def __add__(self, other: BoundaryCounts) -> BoundaryCounts:
        if other.tol != self.tol or other.n_pred.shape != self.n_pred.shape:
            raise LabelError(f"cannot add boundary counts of {len(self.n_pred)} classes at "
                             f"tol {self.tol} and {len(other.n_pred)} classes at tol {other.tol}")
        return BoundaryCounts(self.tol, self.matched_pred + other.matched_pred,
                              self.n_pred + other.n_pred,
                              self.matched_truth + other.matched_truth,
                              self.n_truth + other.n_truth)


def _checked(pred: np.ndarray, truth: np.ndarray, num_classes: int, ignore: int | None,
             valid: np.ndarray | None) -> np.ndarray:
    """The valid-pixel mask, after checking shapes and class values."""
    if pred.shape != truth.shape or pred.ndim != 2:
        raise LabelError(f"prediction {pred.shape} and truth {truth.shape} must be 2-D with one "
                         "shape: compare rasters on the same grid")
    if num_classes < 1:
        raise LabelError(f"num_classes must be >= 1, got {num_classes}")
    ok = np.ones(pred.shape, bool) if valid is None else np.asarray(valid, dtype=bool)
    if ok.shape != pred.shape:
        raise LabelError(f"valid mask {ok.shape} does not match the labels {pred.shape}")
    if ignore is not None:
        ok = ok & (pred != ignore) & (truth != ignore)
    for name, arr in (("prediction", pred), ("truth", truth)):
        vals = arr[ok]
        if vals.size and (vals.min() < 0 or vals.max() >= num_classes):
            bad = vals[(vals < 0) | (vals >= num_classes)][0]
            raise LabelError(f"{name} holds class {bad}, outside 0..{num_classes - 1}: mark "
                             f"nodata with {ignore} or pass the right num_classes")
    return ok


def _matched(points: np.ndarray, targets: np.ndarray, core: tuple[slice, slice],
             tol: float) -> int:
    """How many ``points`` inside ``core`` lie within ``tol`` px of a ``targets`` pixel."""
    if not targets.any():
        return 0
    dist = ndimage.distance_transform_edt(~targets)
    return int(np.count_nonzero(dist[core][points[core]] <= tol))


def boundary_counts(pred: np.ndarray, truth: np.ndarray, num_classes: int, *,
                    tol: float = 2.0, ignore: int | None = 255,
                    valid: np.ndarray | None = None,
                    core: Window | None = None) -> BoundaryCounts:
    """Boundary pixel counts of a class map against the truth (see the module docstring).

    Only boundary pixels inside ``core`` (a window of the arrays; default all of them) are
    counted; the rest of the arrays is context for the neighbour test and the distances.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if not tol >= 0:
        raise LabelError(f"tol must be a distance >= 0 px, got {tol}")
    ok = _checked(pred, truth, num_classes, ignore, valid)
    full = Window(0, 0, *pred.shape)
    if core is not None and not full.contains(core):
        raise LabelError(f"core {core} is not inside the arrays {pred.shape}")
    cs = (core or full).slices()
    out = BoundaryCounts.zeros(num_classes, tol)
    present = np.union1d(np.unique(pred[ok]), np.unique(truth[ok]))
    for c in present.astype(np.int64).tolist():
        pb = class_boundary(pred == c, ok)
        tb = class_boundary(truth == c, ok)
        out.n_pred[c] = np.count_nonzero(pb[cs])
        out.n_truth[c] = np.count_nonzero(tb[cs])
        out.matched_pred[c] = _matched(pb, tb, cs, tol) if out.n_pred[c] else 0
        out.matched_truth[c] = _matched(tb, pb, cs, tol) if out.n_truth[c] else 0
    return out


def _nan_none(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 6)


@dataclass(frozen=True)
class BoundaryScores:
    """Per-class boundary precision, recall and F1, and their mean F1, from pooled counts."""

    counts: BoundaryCounts
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    mean_f1: float

    @classmethod
    def from_counts(cls, counts: BoundaryCounts) -> BoundaryScores:
        mp, npred = counts.matched_pred.astype(float), counts.n_pred.astype(float)
        mt, ntruth = counts.matched_truth.astype(float), counts.n_truth.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.where(npred > 0, mp / npred, np.where(ntruth > 0, 1.0, np.nan))
            r = np.where(ntruth > 0, mt / ntruth, np.where(npred > 0, 1.0, np.nan))
            f = np.where(p + r > 0, 2 * p * r / (p + r), np.where(np.isnan(p), np.nan, 0.0))
        mean = float(np.nanmean(f)) if np.isfinite(f).any() else math.nan
        return cls(counts, p, r, f, mean)

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict[str, object]:
        """JSON-ready summary keyed by class name (or id); NaN (class absent) becomes None."""
        names = list(class_names) if class_names is not None else [
            str(i) for i in range(len(self.f1))]
        if len(names) != len(self.f1):
            raise LabelError(f"{len(names)} class names for {len(self.f1)} classes")
        return {
            "tolerance_px": self.counts.tol,
            "mean_f1": _nan_none(self.mean_f1),
            "f1": {n: _nan_none(v) for n, v in zip(names, self.f1, strict=True)},
            "precision": {n: _nan_none(v) for n, v in zip(names, self.precision, strict=True)},
            "recall": {n: _nan_none(v) for n, v in zip(names, self.recall, strict=True)},
            "boundary_pixels": {"pred": int(self.counts.n_pred.sum()),
                                "truth": int(self.counts.n_truth.sum())},
        }
