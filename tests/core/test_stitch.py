from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.stitch import axis_layout, classify, max_argmax, predict_window, ramp_weight


@given(n=st.integers(1, 3000), tile=st.sampled_from([64, 128, 256, 512]),
       ov=st.integers(0, 63))
def test_axis_layout_covers_with_overlap(n: int, tile: int, ov: int) -> None:
    lay = axis_layout(n, tile, ov)
    starts = lay.starts
    assert starts[0] == 0
    if n > tile:
        assert starts[-1] + tile == n
        for a, b in itertools.pairwise(starts):
            assert b > a and a + tile - b >= ov  # neighbours overlap by at least ov


def test_ramp_weight_is_positive_and_symmetric() -> None:
    w = ramp_weight(64, 16)
    assert np.all(w > 0) and np.allclose(w, w[::-1]) and w[32] == 1.0


def _pixelwise(x: np.ndarray) -> np.ndarray:
    """A 'model' whose output at a pixel depends only on that pixel: tiling must be exact."""
    a = x[:, 0]
    p1 = 1 / (1 + np.exp(-(a - 100) / 20))
    return np.stack([1 - p1, p1], axis=1).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(5, 200), w=st.integers(5, 200), tile=st.sampled_from([32, 64, 96]),
       ov=st.integers(0, 31))
def test_blending_is_exact_for_pixelwise_models(h: int, w: int, tile: int, ov: int) -> None:
    rng = np.random.default_rng(h * 1000 + w)
    img = rng.integers(0, 255, size=(2, h, w)).astype(np.float32)
    probs = predict_window(img, _pixelwise, 2, tile=tile, overlap=ov, batch_size=3)
    np.testing.assert_allclose(probs, _pixelwise(img[None])[0], rtol=1e-5, atol=1e-6)


def test_classify_masks_invalid() -> None:
    p = np.array([[[0.2, 0.7]], [[0.8, 0.3]]], dtype=np.float32)
    cls, conf = classify(p, np.array([[True, False]]))
    assert cls.tolist() == [[1, 255]] and conf.tolist() == [[204, 0]]


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 12), h=st.integers(1, 9), w=st.integers(1, 9),
       levels=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_max_argmax_equals_numpy(k: int, h: int, w: int, levels: int, seed: int) -> None:
    """The class-by-class max/argmax is numpy's, ties (few distinct values) to the lower
    class included."""
    values = np.random.default_rng(seed).integers(0, levels, (k, h, w)).astype(np.float32)
    top, cls = max_argmax(values)
    assert cls.dtype == np.uint8
    np.testing.assert_array_equal(cls, values.argmax(axis=0))
    np.testing.assert_array_equal(top, values.max(axis=0))


@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 40), h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 99))
def test_class_counts_equal_bincount(k: int, h: int, w: int, seed: int) -> None:
    """A chunk's class histogram (and its fill pixels) as ``bincount`` counts them, for few
    classes (one comparison each) and many (``bincount``)."""
    from geoseg.chunks import class_counts
    from geoseg.store import FILL

    rng = np.random.default_rng(seed)
    cls = rng.integers(0, k, (h, w)).astype(np.uint8)
    cls[rng.random((h, w)) < 0.2] = FILL
    want = np.bincount(cls.ravel(), minlength=256)
    assert class_counts(cls, k) == [int(v) for v in want[:k]] + [int(want[FILL])]
