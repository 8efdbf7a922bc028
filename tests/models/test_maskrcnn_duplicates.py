"""Route (b): a building that a detector reports in two overlapping tiles becomes one footprint.

The detector is faked by hand (a trained Mask R-CNN is too slow and too uncertain for a unit
test): tiles carry their own global pixel coordinates in two bands (the odc-geo trick), and the
fake reports, in each tile that sees part of a building, that part as an instance with its own
score, exactly what a real detector's per-tile output looks like. Everything after it is the real
pipeline code: :func:`instances_to_proba` per tile, the cosine blending of
:func:`geoseg.stitch.predict_window`, :func:`geoseg.stitch.classify` and the chunk-owned
:func:`geoseg.vectorize.footprints.extract_buildings` on the confidence the store would hold.
"""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from pyproj import CRS

from geoseg.grid import Chunk, GeoBox, Window
from geoseg.models.maskrcnn import instances_to_proba
from geoseg.stitch import ProbaFn, classify, predict_window
from geoseg.vectorize.features import Feature
from geoseg.vectorize.footprints import extract_buildings

LAYOUT = (0, 1, 2)            # background, building, boundary (BUILDING_CLASSES)
H, W, TILE, OVERLAP = 96, 160, 96, 32   # two tiles: columns [0, 96) and [64, 160)


def _image() -> np.ndarray:
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float32)
    return np.stack([rows, cols, np.zeros_like(rows), np.zeros_like(rows)])


def _fake_detector(buildings: list[tuple[int, int, int, int]], scores: tuple[float, float],
                   shift: int) -> tuple[list[int], ProbaFn]:
    """proba function: each tile reports the visible part of every building (rows, cols in
    global pixels, end exclusive) as one instance; the second tile's masks are ``shift`` px
    wider and its scores differ, as two independent detections would."""
    tiles: list[int] = []

    def proba(batch: np.ndarray) -> np.ndarray:
        out = []
        for tile in batch:
            r0, c0 = int(tile[0, 0, 0]), int(tile[1, 0, 0])
            h, w = tile.shape[1:]
            second = c0 > 0
            masks, kept = [], []
            for top, bottom, left, right in buildings:
                m = np.zeros((h, w), np.float32)
                m[max(top - r0, 0):max(bottom - r0, 0),
                  max(left - c0, 0):max(right + (shift if second else 0) - c0, 0)] = 0.97
                if m.any():
                    masks.append(m)
                    kept.append(scores[1] if second else scores[0])
            tiles.append(c0)
            out.append(instances_to_proba(np.asarray(masks, np.float32).reshape(-1, h, w),
                                          np.asarray(kept, np.float32), 3, LAYOUT))
        return np.stack(out)

    return tiles, proba


def _footprints(probs: np.ndarray, chunks: list[Window]) -> list[Feature]:
    grid = GeoBox((H, W), Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 5_000_000.0),
                  CRS.from_epsg(32633))
    cls, conf = classify(probs, np.ones((H, W), bool))
    context = Window(0, 0, H, W)           # the halo covers the window: no cut clusters
    feats: list[Feature] = []
    for i, win in enumerate(chunks):
        feats += extract_buildings(cls, conf.astype(np.float32) / 255.0, context,
                                   Chunk((0, i), win), grid, building_id=1, boundary_id=2,
                                   min_area_m2=4.0)
    return feats


@pytest.mark.parametrize(("building", "shift"), [
    ((30, 54, 70, 90), 0),     # wholly inside both tiles (in their overlap), identical masks
    ((30, 54, 70, 90), 1),     # both tiles, masks differing by a pixel column
    ((30, 54, 84, 110), 0),    # cut by the first tile's edge: a partial and a whole detection
])
def test_building_detected_in_two_tiles_gives_one_footprint(
        building: tuple[int, int, int, int], shift: int) -> None:
    tiles, proba = _fake_detector([building], (0.9, 0.8), shift)
    probs = predict_window(_image(), proba, 3, tile=TILE, overlap=OVERLAP, batch_size=1)
    assert sorted(tiles) == [0, 64]        # two tiles, both saw the building
    one_chunk = _footprints(probs, [Window(0, 0, H, W)])
    assert len(one_chunk) == 1
    # two chunks splitting the building between them: still one owner, one footprint
    two_chunks = _footprints(probs, [Window(0, 0, H, 80), Window(0, 80, H, W - 80)])
    assert len(two_chunks) == 1
    top, bottom, left, right = building
    area = (bottom - top) * (right - left) * 0.25
    assert one_chunk[0].area_m2 is not None
    assert abs(one_chunk[0].area_m2 - area) / area < 0.15


def test_two_buildings_stay_two() -> None:
    """The blending does not merge neighbours: two buildings 6 px apart, both in the overlap."""
    _, proba = _fake_detector([(30, 54, 66, 78), (30, 54, 84, 94)], (0.9, 0.8), 0)
    probs = predict_window(_image(), proba, 3, tile=TILE, overlap=OVERLAP, batch_size=1)
    assert len(_footprints(probs, [Window(0, 0, H, W)])) == 2
