"""Boundary F1 against numbers worked out by hand, and window sums equal to the whole map."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoseg.errors import LabelError
from geoseg.grid import ChunkGrid, Window
from geoseg.metrics import (
    BoundaryCounts,
    BoundaryScores,
    boundary_counts,
    boundary_halo,
    class_boundary,
)

# truth: a 3x3 square of class 1 at rows 1-3, cols 1-3; prediction: the same square one column
# to the right (cols 2-4, touching the right edge of the array)
TRUTH = np.zeros((5, 5), np.uint8)
TRUTH[1:4, 1:4] = 1
PRED = np.zeros((5, 5), np.uint8)
PRED[1:4, 2:5] = 1


def test_boundary_pixels_by_hand() -> None:
    ok = np.ones((5, 5), bool)
    # truth class 1: the ring of the square (the centre has no neighbour of another class)
    assert np.argwhere(class_boundary(TRUTH == 1, ok)).tolist() == [
        [1, 1], [1, 2], [1, 3], [2, 1], [2, 3], [3, 1], [3, 2], [3, 3]]
    # prediction class 1: (2, 4) touches only the array edge on its right: not a boundary
    assert np.argwhere(class_boundary(PRED == 1, ok)).tolist() == [
        [1, 2], [1, 3], [1, 4], [2, 2], [3, 2], [3, 3], [3, 4]]
    # class 0 around the predicted square: 3 above, 3 below, 3 on the left, none on the right
    assert int(class_boundary(PRED == 0, ok).sum()) == 9
    assert int(class_boundary(TRUTH == 0, ok).sum()) == 12


def test_scores_by_hand_at_three_tolerances() -> None:
    # tol 0: only coinciding boundary pixels match
    c = boundary_counts(PRED, TRUTH, 2, tol=0)
    assert c.n_pred.tolist() == [9, 7] and c.n_truth.tolist() == [12, 8]
    assert c.matched_pred.tolist() == [4, 4] and c.matched_truth.tolist() == [4, 4]
    s = BoundaryScores.from_counts(c)
    # class 0: P 4/9, R 4/12 -> F 8/21; class 1: P 4/7, R 4/8 -> F 8/15
    assert s.precision.tolist() == pytest.approx([4 / 9, 4 / 7])
    assert s.recall.tolist() == pytest.approx([1 / 3, 1 / 2])
    assert s.f1.tolist() == pytest.approx([8 / 21, 8 / 15])
    assert s.mean_f1 == pytest.approx((8 / 21 + 8 / 15) / 2)
    # tol 1: every predicted pixel is within 1 px; truth class 0 pixel (2, 4) is 2 px from the
    # nearest predicted class-0 boundary pixel, (0, 4) and (4, 4): R 11/12, F 22/23
    s = BoundaryScores.from_counts(boundary_counts(PRED, TRUTH, 2, tol=1))
    assert s.f1.tolist() == pytest.approx([22 / 23, 1.0])
    # tol 2: distance <= tol counts, so everything matches
    s = BoundaryScores.from_counts(boundary_counts(PRED, TRUTH, 2, tol=2))
    assert s.f1.tolist() == [1.0, 1.0] and s.mean_f1 == 1.0


def test_diagonal_distance_is_euclidean() -> None:
    truth = np.zeros((4, 4), np.uint8)
    truth[:2, :2] = 1
    pred = np.zeros((4, 4), np.uint8)
    pred[:3, :3] = 1
    # predicted corner (2, 2) is sqrt(2) from the truth corner (1, 1)
    assert boundary_counts(pred, truth, 2, tol=1.0).matched_pred[1] == 4
    assert boundary_counts(pred, truth, 2, tol=1.5).matched_pred[1] == 5


def test_ignored_pixels_are_neither_boundaries_nor_neighbours() -> None:
    truth = np.zeros((3, 6), np.uint8)
    truth[:, 3] = 255  # nodata column: class 0 on both sides, no boundary anywhere
    c = boundary_counts(truth.copy(), truth, 2)
    assert c.n_pred.sum() == 0 and c.n_truth.sum() == 0
    s = BoundaryScores.from_counts(c)
    assert math.isnan(s.mean_f1) and all(math.isnan(v) for v in s.f1)
    # prediction nodata or a mask work the same way
    pred = np.zeros((3, 6), np.uint8)
    pred[:, 3:] = 1
    pred[:, 3] = 255
    assert boundary_counts(pred, np.zeros((3, 6), np.uint8), 2).n_pred.sum() == 0
    valid = np.ones((3, 6), bool)
    valid[:, 3] = False
    assert boundary_counts(np.where(valid, pred, 1), np.zeros((3, 6), np.uint8), 2,
                           valid=valid).n_pred.sum() == 0


def test_one_sided_classes_score_zero() -> None:
    truth = np.zeros((4, 4), np.uint8)
    truth[:, 2:] = 1
    pred = np.zeros((4, 4), np.uint8)
    pred[:, 2:] = 2  # class 1 missed, class 2 invented
    s = BoundaryScores.from_counts(boundary_counts(pred, truth, 3))
    assert (s.precision[1], s.recall[1], s.f1[1]) == (1.0, 0.0, 0.0)
    assert (s.precision[2], s.recall[2], s.f1[2]) == (0.0, 1.0, 0.0)
    assert s.f1[0] == 1.0 and s.mean_f1 == pytest.approx(1 / 3)


@pytest.mark.parametrize("tol", [0.0, 1.0, 1.5, 2.0, 3.2])
def test_windows_with_halo_add_up_to_the_whole_map(tol: float) -> None:
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 4, size=(10, 12))
    truth = np.kron(blocks, np.ones((3, 3), np.int64))[:29, :34].astype(np.uint8)
    pred = truth.copy()
    flip = rng.random(truth.shape) < 0.1
    pred[flip] = rng.integers(0, 4, size=int(flip.sum()))
    pred[rng.random(truth.shape) < 0.03] = 255
    truth[:3, :5] = 255
    whole = boundary_counts(pred, truth, 4, tol=tol)
    halo = boundary_halo(tol)
    total = BoundaryCounts.zeros(4, tol)
    for ch in ChunkGrid(truth.shape, 7):
        padded = ch.window.pad(halo).intersect(Window(0, 0, *truth.shape))
        rs, cs = padded.slices()
        total = total + boundary_counts(pred[rs, cs], truth[rs, cs], 4, tol=tol,
                                        core=ch.window.relative_to(padded))
    for name in ("matched_pred", "n_pred", "matched_truth", "n_truth"):
        assert getattr(total, name).tolist() == getattr(whole, name).tolist(), name


def test_summary_is_json_ready() -> None:
    d = BoundaryScores.from_counts(boundary_counts(PRED, TRUTH, 3, tol=0)).to_dict(
        ["bg", "building", "road"])
    assert d["tolerance_px"] == 0 and d["mean_f1"] == pytest.approx((8 / 21 + 8 / 15) / 2,
                                                                     abs=1e-6)
    assert d["f1"] == {"bg": pytest.approx(8 / 21, abs=1e-6),
                       "building": pytest.approx(8 / 15, abs=1e-6), "road": None}
    assert d["boundary_pixels"] == {"pred": 16, "truth": 20}


def test_bad_input_is_refused() -> None:
    with pytest.raises(LabelError, match="outside"):
        boundary_counts(np.array([[0, 5]]), np.array([[0, 1]]), 2)
    with pytest.raises(LabelError, match="shape"):
        boundary_counts(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(LabelError, match="tol"):
        boundary_counts(np.zeros((2, 2)), np.zeros((2, 2)), 2, tol=-1)
    with pytest.raises(LabelError, match="add"):
        _ = BoundaryCounts.zeros(2, 1.0) + BoundaryCounts.zeros(2, 2.0)
