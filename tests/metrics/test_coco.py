"""COCO mask AP against numbers worked out by hand, and against pycocotools when installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geoseg.errors import LabelError
from geoseg.metrics import (
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    CocoDetections,
    CocoScores,
    coco_instances,
    coco_match,
)

# 3 truths, 4 predictions (index, score, best IoU):
#   0  0.9  0.82 with truth 0
#   1  0.8  0.62 with truth 0 (a duplicate: truth 0 is taken by prediction 0 first)
#   2  0.7  overlaps nothing
#   3  0.6  0.57 with truth 1
# truth 2 is never found.
PAIRS = [(0, 0, 0.82), (1, 0, 0.62), (3, 1, 0.57)]
SCORES = [0.9, 0.8, 0.7, 0.6]


def test_thresholds_are_cocos() -> None:
    assert len(IOU_THRESHOLDS) == 10 and IOU_THRESHOLDS[0] == 0.5
    assert IOU_THRESHOLDS[5] == pytest.approx(0.75) and IOU_THRESHOLDS[-1] == pytest.approx(0.95)
    assert len(RECALL_THRESHOLDS) == 101 and RECALL_THRESHOLDS[-1] == 1.0


def test_ap_by_hand() -> None:
    d = coco_match(PAIRS, 4, 3, SCORES)
    # IoU 0.50, 0.55: TP FP FP TP -> recall 1/3 1/3 1/3 2/3, precision 1 1/2 1/3 1/2, made
    # monotone from the right: 1 1/2 1/2 1/2. The 101 recall points 0.00..0.33 (34) get 1,
    # 0.34..0.66 (33) get 1/2, the rest 0: AP = (34 + 16.5) / 101 = 0.5
    assert d.matched[0].tolist() == [True, False, False, True]
    # IoU 0.60 .. 0.80: only prediction 0 is a TP: 34 points at 1 -> 34/101
    assert d.matched[2].tolist() == [True, False, False, False]
    # IoU 0.85 .. 0.95: nothing -> 0
    assert not d.matched[7:].any()
    s = CocoScores.from_detections(d)
    assert s.ap50 == pytest.approx(0.5)
    assert s.ap75 == pytest.approx(34 / 101)
    assert s.ap == pytest.approx((2 * 50.5 + 5 * 34) / 101 / 10)
    assert s.ar == pytest.approx((2 * 2 / 3 + 5 * 1 / 3) / 10)
    assert (s.n_truth, s.n_dets) == (3, 4)


def test_max_dets_keeps_the_best_scored() -> None:
    d = coco_match(PAIRS, 4, 3, SCORES, max_dets=2)
    assert d.scores.tolist() == [0.9, 0.8]
    # TP FP: recall 1/3, 1/3 -> AP50 = 34/101
    assert CocoScores.from_detections(d).ap50 == pytest.approx(34 / 101)


def test_highest_iou_unmatched_truth_wins() -> None:
    # prediction 0 (scored first) overlaps truths 0 and 1; it takes truth 1 (higher IoU), so
    # prediction 1 still finds truth 0
    d = coco_match([(0, 0, 0.6), (0, 1, 0.9), (1, 1, 0.95), (1, 0, 0.7)], 2, 2, [0.9, 0.8])
    assert d.matched[0].tolist() == [True, True]
    # equal IoUs: the truth with the higher index, as in pycocotools' loop
    d = coco_match([(0, 0, 0.7), (0, 1, 0.7), (1, 0, 0.7)], 2, 2, [0.9, 0.8])
    assert d.matched[0].tolist() == [True, True]
    d = coco_match([(0, 0, 0.7), (0, 1, 0.7), (1, 1, 0.7)], 2, 2, [0.9, 0.8])
    assert d.matched[0].tolist() == [True, False]


def test_windows_pool_before_ranking() -> None:
    # window A: one truth, one TP scored 0.9; window B: two truths, an FP scored 0.95 and a TP
    # scored 0.5. Pooled by score: FP TP TP -> recall 0 1/3 2/3, precision 0 1/2 2/3 -> 2/3
    # for the 67 recall points up to 0.66: AP50 = 67 * 2/3 / 101
    a = coco_match([(0, 0, 0.9)], 1, 1, [0.9])
    b = coco_match([(1, 0, 0.8)], 2, 2, [0.95, 0.5])
    s = CocoScores.from_detections(a + b)
    assert s.ap50 == pytest.approx(67 * (2 / 3) / 101)
    assert CocoScores.from_detections(CocoDetections.empty() + a + b).ap == s.ap


def test_instance_rasters() -> None:
    truth = np.zeros((6, 8), np.int32)
    truth[0:4, 0:4] = 3
    pred = np.zeros_like(truth)
    pred[0:4, 0:4] = 11       # exact: IoU 1
    pred[5, 5:8] = 12         # on background
    # the FP is scored higher: FP TP -> precision made monotone is 1/2 at every recall point
    s = CocoScores.from_detections(coco_instances(pred, truth, {11: 0.5, 12: 0.9}))
    assert s.ap == pytest.approx(0.5) and s.ap50 == pytest.approx(0.5)
    valid = np.ones(truth.shape, bool)
    valid[5] = False          # the FP lies wholly in ignored pixels: not a detection
    s = CocoScores.from_detections(coco_instances(pred, truth, {11: 0.5, 12: 0.9},
                                                  valid=valid))
    assert s.ap == pytest.approx(1.0) and s.n_dets == 1


def test_no_truth_is_nan_and_bad_input_is_refused() -> None:
    s = CocoScores.from_detections(coco_match([], 1, 0, [0.3]))
    assert math.isnan(s.ap) and s.to_dict()["ap"] is None
    with pytest.raises(LabelError, match="score"):
        coco_instances(np.ones((2, 2), np.int32), np.zeros((2, 2), np.int32), {})
    with pytest.raises(LabelError, match="scores"):
        coco_match([], 2, 0, [0.1])
    with pytest.raises(LabelError, match="finite"):
        coco_match([], 1, 0, [float("nan")])


def _random_image(rng: np.random.Generator, shape: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
    truth = np.zeros(shape, np.int32)
    pred = np.zeros(shape, np.int32)
    for k in range(1, int(rng.integers(0, 9)) + 1):
        r, c = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        h, w = rng.integers(3, 9, size=2)
        truth[r:r + h, c:c + w] = k
        if rng.random() < 0.8:  # a jittered prediction of it
            dr, dc, dh, dw = rng.integers(-2, 3, size=4)
            pred[max(0, r + dr):r + h + dh, max(0, c + dc):c + w + dw] = 10 + k
    for k in range(int(rng.integers(0, 4))):  # spurious predictions
        r, c = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        pred[r:r + 3, c:c + 2] = 30 + k
    ids = [int(i) for i in np.unique(pred) if i]
    scores = {i: round(float(rng.random()), 1) for i in ids}  # rounded: ties happen
    return pred, truth, scores


@pytest.mark.parametrize("max_dets", [100, 3])
def test_agrees_with_pycocotools(max_dets: int) -> None:
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(7)
    shape = (40, 50)
    images = [_random_image(rng, shape) for _ in range(12)]
    gt: dict[str, list[dict[str, object]]] = {
        "images": [{"id": i + 1, "height": shape[0], "width": shape[1]}
                   for i in range(len(images))],
        "categories": [{"id": 1, "name": "building"}], "annotations": []}
    dt: list[dict[str, object]] = []
    ours = CocoDetections.empty()
    for i, (pred, truth, scores) in enumerate(images):
        for k in (int(v) for v in np.unique(truth) if v):
            rle = mask_utils.encode(np.asfortranarray((truth == k).astype(np.uint8)))
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1,
                                      "category_id": 1, "iscrowd": 0, "segmentation": rle,
                                      "area": float(mask_utils.area(rle))})
        for k in sorted(scores):  # ascending id, the order coco_instances breaks ties in
            rle = mask_utils.encode(np.asfortranarray((pred == k).astype(np.uint8)))
            dt.append({"image_id": i + 1, "category_id": 1, "segmentation": rle,
                       "score": scores[k]})
        ours = ours + coco_instances(pred, truth, scores, max_dets=max_dets)
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    ev = COCOeval(coco_gt, coco_gt.loadRes(dt), "segm")
    ev.params.maxDets = [1, 2, max_dets]  # COCOeval sorts them: keep ours last
    ev.evaluate()
    ev.accumulate()
    s = CocoScores.from_detections(ours)
    np.testing.assert_allclose(s.precision, ev.eval["precision"][:, :, 0, 0, 2], atol=1e-12)
    np.testing.assert_allclose(s.recall, ev.eval["recall"][:, 0, 0, 2], atol=1e-12)
    if max_dets == 100:
        ev.summarize()
        assert (s.ap, s.ap50, s.ap75, s.ar) == pytest.approx(
            (ev.stats[0], ev.stats[1], ev.stats[2], ev.stats[8]), abs=1e-12)
