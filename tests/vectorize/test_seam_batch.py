"""Seam groups merged together equal the same groups merged one by one."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import label

from geoseg.vectorize import landcover as lc
from geoseg.vectorize.features import trace_labels


def _pieces(region: np.ndarray, chunk: int) -> list[shapely.Polygon]:
    h, w = region.shape
    return [p for r in range(0, h, chunk) for c in range(0, w, chunk)
            for _v, p in trace_labels(region[r:r + chunk, c:c + chunk].astype(np.int32), r, c)]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(4, 24), st.integers(1, 6))
def test_property_batched_coverage_unions_equal_one_by_one(seed: int, chunk: int,
                                                          n_groups: int) -> None:
    """Regions of a random map cut by a chunk lattice, with holes away from the seams (set
    aside and put back) and regions that are one piece: the batch gives each group's own
    result, vertex for vertex."""
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n_groups):
        blob = rng.random((3 * chunk, 3 * chunk)) < rng.uniform(0.5, 0.8)
        labels = label(blob, connectivity=1)
        if labels.max() == 0:
            continue
        region = labels == np.bincount(labels.ravel())[1:].argmax() + 1
        groups.append(_pieces(region, chunk))
    batched = lc._coverage_unions(groups, chunk)
    single = [lc._coverage_union(g, chunk) for g in groups]
    assert len(batched) == len(single)
    for b, s in zip(batched, single, strict=True):
        assert (b is None) == (s is None)
        if b is not None:
            assert shapely.equals_exact(b, s, 0)


def test_a_group_that_is_no_pixel_coverage_falls_back_for_all() -> None:
    """A part off the pixel lattice sends every group through the one-by-one path."""
    square = shapely.box(0, 0, 4, 4)
    halves = [shapely.box(0, 0, 2, 2), shapely.box(2, 0, 4, 2)]
    skewed = [shapely.Polygon([(0, 0), (2.5, 0), (2.5, 2), (0, 2)]), shapely.box(2.5, 0, 4, 2)]
    batched = lc._coverage_unions([halves, skewed, [square, shapely.box(4, 0, 8, 4)]], 2)
    single = [lc._coverage_union(g, 2) for g in (halves, skewed,
                                                  [square, shapely.box(4, 0, 8, 4)])]
    for b, s in zip(batched, single, strict=True):
        assert (b is None) == (s is None)
        if b is not None:
            assert shapely.equals_exact(b, s, 0)
