"""Instance overlaps summed over windows equal those of the whole raster."""

from __future__ import annotations

import numpy as np
import pytest

from geoseg.errors import LabelError
from geoseg.grid import ChunkGrid
from geoseg.metrics import (
    CocoScores,
    InstanceOverlaps,
    coco_instances,
    coco_match,
    instance_pairs,
    panoptic_instances,
    panoptic_match,
    pred_void_fractions,
)


def _rasters(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.zeros((37, 45), np.uint32)
    pred = np.zeros((37, 45), np.int32)
    for k in range(1, 15):
        r, c = rng.integers(0, 33), rng.integers(0, 41)
        h, w = rng.integers(3, 12, size=2)
        truth[r:r + h, c:c + w] = 100 + k          # ids far from 1..n: kept as given
        dr, dc = rng.integers(-2, 3, size=2)
        pred[max(0, r + dr):r + h, max(0, c + dc):c + w] = 7 * k
    valid = rng.random(truth.shape) > 0.05
    valid[:, :4] = False
    return pred, truth, valid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_add_up_to_instance_pairs(seed: int) -> None:
    pred, truth, valid = _rasters(seed)
    total = InstanceOverlaps.empty()
    for ch in ChunkGrid(pred.shape, 10):
        rs, cs = ch.window.slices()
        total = total + InstanceOverlaps.from_rasters(pred[rs, cs], truth[rs, cs], valid[rs, cs])
    pairs, n_pred, n_truth = total.pairs()
    ref_pairs, ref_pred, ref_truth = instance_pairs(pred, truth, valid)
    assert (n_pred, n_truth) == (ref_pred, ref_truth)
    got, ref = sorted(pairs), sorted(ref_pairs)
    assert [p[:2] for p in got] == [p[:2] for p in ref]
    assert [p[2] for p in got] == pytest.approx([p[2] for p in ref])
    assert total.void_fractions() == pytest.approx(pred_void_fractions(pred, valid))
    assert total.objects.tolist() == [int(i) for i in np.unique(pred[valid]) if i]
    # so whole-raster COCO and PQ come out the same from the summed windows
    scores = {int(i): (int(i) % 10) / 10 for i in np.unique(pred) if i}
    dets = coco_match(pairs, n_pred, n_truth, [scores[int(i)] for i in total.objects])
    ref = coco_instances(pred, truth, scores, valid=valid)
    assert CocoScores.from_detections(dets).ap == CocoScores.from_detections(ref).ap
    pq = panoptic_match(pairs, n_pred, n_truth, total.void_fractions())
    ref_pq = panoptic_instances(pred, truth, valid)
    assert (pq.tp, pq.fp, pq.fn) == (ref_pq.tp, ref_pq.fp, ref_pq.fn)
    assert pq.iou_sum == pytest.approx(ref_pq.iou_sum)


def test_bad_rasters_are_refused() -> None:
    with pytest.raises(LabelError, match="shape"):
        InstanceOverlaps.from_rasters(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(LabelError, match=">= 0"):
        InstanceOverlaps.from_rasters(-np.ones((2, 2)), np.zeros((2, 2)))
