"""Pixel metrics against numbers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoseg.errors import LabelError
from geoseg.metrics import (
    PixelScores,
    confusion_matrix,
    dice_per_class,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
)

TRUTH = np.array([[0, 0, 1], [1, 2, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 2]], dtype=np.uint8)
# counted (truth, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2); the 255 pixel is ignored
CM = [[1, 1, 0, 0],
      [0, 2, 0, 0],
      [0, 0, 1, 0],
      [0, 0, 0, 0]]


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(PRED, TRUTH, 4)
    assert cm.dtype == np.int64
    assert cm.tolist() == CM


def test_scores_by_hand() -> None:
    cm = np.array(CM)
    assert pixel_accuracy(cm) == pytest.approx(4 / 5)
    iou = iou_per_class(cm)
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 1, FN 0 -> 2/3; class 2: 1/1
    assert iou[:3] == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert math.isnan(iou[3])  # absent from truth and prediction
    assert mean_iou(cm) == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)  # class 3 left out
    dice = dice_per_class(cm)
    # Dice = 2TP / (2TP + FP + FN): 2/3, 4/5, 2/2
    assert dice[:3] == pytest.approx([2 / 3, 4 / 5, 1.0])
    assert math.isnan(dice[3])


def test_chunks_add_up() -> None:
    whole = confusion_matrix(PRED, TRUTH, 4)
    parts = confusion_matrix(PRED[:1], TRUTH[:1], 4) + confusion_matrix(PRED[1:], TRUTH[1:], 4)
    assert np.array_equal(whole, parts)


def test_ignore_applies_to_prediction_too() -> None:
    cm = confusion_matrix(np.array([255, 1]), np.array([0, 1]), 2)
    assert cm.tolist() == [[0, 0], [0, 1]]


def test_summary_is_json_ready() -> None:
    d = PixelScores.from_confusion(np.array(CM)).to_dict(["a", "b", "c", "d"])
    assert d["iou"] == {"a": 0.5, "b": pytest.approx(0.666667), "c": 1.0, "d": None}
    assert d["pixels"] == 5 and d["pixel_accuracy"] == 0.8


def test_bad_labels_are_refused() -> None:
    with pytest.raises(LabelError, match="outside"):
        confusion_matrix(np.array([0, 7]), np.array([0, 1]), 3)
    with pytest.raises(LabelError, match="shape"):
        confusion_matrix(np.zeros(3), np.zeros(4), 3)


def test_empty_is_nan() -> None:
    cm = confusion_matrix(np.array([255]), np.array([255]), 2)
    assert math.isnan(pixel_accuracy(cm)) and math.isnan(mean_iou(cm))
