"""Panoptic quality against numbers worked out by hand (panopticapi conventions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoseg.errors import LabelError
from geoseg.metrics import PanopticScores, panoptic_instances, panoptic_match, pred_void_fractions


def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = np.zeros((8, 16), np.int32)
    truth[0:4, 0:4] = 1       # T1, 16 px
    truth[0:4, 5:9] = 2       # T2, 16 px
    truth[6:8, 0:2] = 3       # T3, 4 px, never predicted
    truth[6:8, 10:12] = 4     # T4, 4 px
    valid = np.ones(truth.shape, bool)
    valid[4:8, 12:16] = False  # void
    pred = np.zeros_like(truth)
    pred[0:4, 0:4] = 10
    pred[0, 0:2] = 0          # P10: 14 px of T1 -> IoU 14/16 = 0.875, a match
    pred[0:2, 5:9] = 20       # P20: half of T2 -> IoU 8/16 = 0.5, not > 0.5: FP (and T2 FN)
    pred[4, 11:15] = 30       # P30: 3 of 4 px void -> more than half void: not counted
    pred[5, 10:14] = 40       # P40: 2 of 4 px void -> exactly half: an FP
    pred[6:8, 10:14] = 50     # P50: T4 plus 4 void px -> IoU 4/4 with void left out: a match
    return pred, truth, valid


def test_pq_by_hand() -> None:
    pred, truth, valid = _case()
    s = panoptic_instances(pred, truth, valid)
    assert (s.tp, s.fp, s.fn) == (2, 2, 2)          # TP P10, P50; FP P20, P40; FN T2, T3
    assert s.iou_sum == pytest.approx(0.875 + 1.0)
    assert s.sq == pytest.approx(1.875 / 2)         # 0.9375
    assert s.rq == pytest.approx(2 / (2 + 1 + 1))   # 0.5
    assert s.pq == pytest.approx(1.875 / 4)         # SQ x RQ = 0.46875
    assert s.pq == pytest.approx(s.sq * s.rq)
    assert s.to_dict() == {"pq": 0.46875, "sq": 0.9375, "rq": 0.5, "tp": 2, "fp": 2, "fn": 2}


def test_without_void_every_pixel_counts() -> None:
    pred, truth, _ = _case()
    s = panoptic_instances(pred, truth)
    # P50 now has IoU 4/8 (not a match), P30 is an FP: TP P10 only; FP P20 P30 P40 P50;
    # FN T2 T3 T4
    assert (s.tp, s.fp, s.fn) == (1, 4, 3)
    assert s.pq == pytest.approx(0.875 / (1 + 2 + 1.5))


def test_void_fractions() -> None:
    pred, _, valid = _case()
    # ids with valid pixels, ascending: 10 20 30 40 50
    assert pred_void_fractions(pred, valid).tolist() == [0.0, 0.0, 0.75, 0.5, 0.5]
    assert pred_void_fractions(pred, None).tolist() == [0.0] * 5


def test_windows_add_and_edge_cases() -> None:
    a = PanopticScores(1, 0, 1, 0.75)
    b = PanopticScores(1, 2, 0, 0.95)
    s = a + b
    assert (s.tp, s.fp, s.fn) == (2, 2, 1) and s.iou_sum == pytest.approx(1.7)
    assert s.pq == pytest.approx(1.7 / 3.5)
    nothing = PanopticScores(0, 0, 0, 0.0)
    assert math.isnan(nothing.pq) and math.isnan(nothing.sq) and math.isnan(nothing.rq)
    assert nothing.to_dict()["pq"] is None
    missed = PanopticScores(0, 1, 2, 0.0)
    assert (missed.pq, missed.sq, missed.rq) == (0.0, 0.0, 0.0)  # panopticapi: SQ 0 if no TP


def test_overlapping_segments_are_refused() -> None:
    with pytest.raises(LabelError, match="overlap"):
        panoptic_match([(0, 0, 0.6), (1, 0, 0.7)], 2, 1)
    with pytest.raises(LabelError, match="void"):
        panoptic_match([], 2, 0, [0.1])
