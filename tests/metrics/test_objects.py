"""SpaceNet one-to-one matching on hand-made polygons and instance rasters."""

from __future__ import annotations

import numpy as np
import pytest
from shapely.geometry import Polygon, box

from geoseg.metrics import (
    ObjectScores,
    greedy_match,
    match_instances,
    match_polygons,
    score_instances,
    score_polygons,
)

TRUTH = [box(0, 0, 10, 10), box(20, 0, 30, 10)]
PRED = [
    box(0, 0, 10, 8),          # IoU 80/100 = 0.8 with truth 0
    box(0, 0, 10, 6),          # IoU 60/100 = 0.6 with truth 0 too (many-to-one)
    box(20, 0, 25, 10),        # IoU 50/100 = 0.5 with truth 1: counts (>= 0.5)
    box(100, 100, 101, 101),   # overlaps nothing
]


def test_many_to_one_overlap_matches_once() -> None:
    matches = match_polygons(PRED, TRUTH)
    assert [(p, t) for p, t, _ in matches] == [(0, 0), (2, 1)]
    assert matches[0][2] == pytest.approx(0.8) and matches[1][2] == pytest.approx(0.5)
    s = score_polygons(PRED, TRUTH)
    assert (s.tp, s.fp, s.fn) == (2, 2, 0)
    assert s.precision == pytest.approx(0.5) and s.recall == 1.0
    assert s.f1 == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_threshold_is_inclusive_and_configurable() -> None:
    s = score_polygons(PRED, TRUTH, iou_threshold=0.7)
    assert (s.tp, s.fp, s.fn) == (1, 3, 1)


def test_greedy_takes_highest_iou_first() -> None:
    # prediction 0 fits truth 1 best; prediction 1 then has nothing left
    pairs = [(0, 0, 0.6), (0, 1, 0.9), (1, 1, 0.8)]
    assert greedy_match(pairs) == [(0, 1, 0.9)]


def test_invalid_polygon_is_repaired() -> None:
    # self-intersecting: repaired into two triangles of 25 each, inside the 10 x 10 box
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    matches = match_polygons([bowtie], [box(0, 0, 10, 10)])
    assert len(matches) == 1 and matches[0][2] == pytest.approx(50 / 100)


def test_instance_rasters_by_hand() -> None:
    truth = np.array([[7, 7, 0, 3, 3, 3],
                      [7, 7, 0, 3, 3, 3],
                      [0, 0, 0, 0, 0, 0]])
    pred = np.array([[1, 1, 0, 2, 2, 0],
                     [1, 1, 0, 2, 2, 0],
                     [0, 0, 0, 0, 0, 4]])
    # pred 1 = truth 7 (IoU 1); pred 2 vs truth 3: 4 / 6; pred 4 overlaps nothing
    matches = match_instances(pred, truth)
    assert [(p, t) for p, t, _ in matches] == [(0, 1), (1, 0)]  # objects ordered by id
    assert matches[1][2] == pytest.approx(4 / 6)
    assert score_instances(pred, truth) == ObjectScores(2, 1, 0)
    assert score_instances(pred, truth, iou_threshold=0.7) == ObjectScores(1, 2, 1)
    valid = np.ones_like(truth, dtype=bool)
    valid[:, 3:] = False  # objects wholly outside the valid area do not exist
    assert score_instances(pred, truth, valid=valid) == ObjectScores(1, 0, 0)


def test_rasters_and_polygons_agree() -> None:
    truth = np.zeros((12, 12), dtype=np.int32)
    truth[0:4, 0:4] = 1
    truth[6:10, 6:10] = 2
    pred = np.zeros_like(truth)
    pred[0:4, 0:3] = 5      # IoU 12/16
    pred[0:4, 3:4] = 6      # IoU 4/16
    pred[6:10, 8:12] = 9    # IoU 8/24
    polys = {k: box(c0, r0, c1, r1) for k, (r0, r1, c0, c1) in
             {5: (0, 4, 0, 3), 6: (0, 4, 3, 4), 9: (6, 10, 8, 12)}.items()}
    s_poly = score_polygons(list(polys.values()), [box(0, 0, 4, 4), box(6, 6, 10, 10)])
    assert score_instances(pred, truth) == s_poly == ObjectScores(1, 2, 1)


def test_nothing_at_all_is_perfect() -> None:
    s = score_polygons([], [])
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)
    s = score_polygons([], [box(0, 0, 1, 1)])
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)
