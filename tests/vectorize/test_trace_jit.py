"""The compiled outline walk equals the array version ring for ring, vertex for vertex, and the
tracer falls back to the array version where numba is not installed."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from skimage.measure import label

from geoseg.vectorize import landcover, trace
from geoseg.vectorize._trace_jit import ring_vertices

# raw labels (a label may be several pieces, or touch itself at corners) and skimage's regions
label_maps = st.integers(1, 5).flatmap(lambda k: arrays(
    np.int32, st.tuples(st.integers(1, 24), st.integers(1, 24)), elements=st.integers(0, k)))


def assert_same_rings(lab: np.ndarray) -> None:
    got = ring_vertices(lab)
    want = trace._ring_vertices_numpy(lab)
    for g, w, name in zip(got, want, ("vx", "vy", "ring_start", "ring_region"), strict=True):
        np.testing.assert_array_equal(g, w, err_msg=name)
        assert g.dtype == w.dtype, name


@settings(max_examples=500, deadline=None)
@given(label_maps, st.booleans())
def test_property_compiled_walk_equals_array_walk(labels: np.ndarray, regions: bool) -> None:
    if not labels.any():
        return  # the tracer returns before walking
    if regions:
        labels = label(labels, background=0, connectivity=1).astype(np.int32)
    assert_same_rings(labels)


# class maps with nodata (255) and a confidence raster of either kind
class_maps = st.integers(1, 4).flatmap(lambda k: arrays(
    np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)),
    elements=st.sampled_from([*range(k), 255])))


@settings(max_examples=400, deadline=None)
@given(class_maps, st.sampled_from(["none", "uint8", "float32"]), st.integers(0, 2**31))
def test_property_compiled_label_stats_equal_skimage_and_bincount(
        classes: np.ndarray, conf_kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    conf = {"none": None,
            "uint8": rng.integers(0, 256, classes.shape, dtype=np.uint8),
            "float32": rng.random(classes.shape, dtype=np.float32)}[conf_kind]
    scale = 1 / 255 if conf_kind == "uint8" else 1.0
    got = landcover.label_stats(classes, 255, conf, scale)
    want = landcover._label_stats_numpy(classes, 255, conf, scale)
    for g, w, name in zip(got, want, ("labels", "n", "pixels", "conf_sum", "first"),
                          strict=True):
        if w is None:
            assert g is None, name
            continue
        np.testing.assert_array_equal(g, w, err_msg=name)  # sums: the same order, bit for bit
        assert np.asarray(g).dtype == np.asarray(w).dtype, name


def test_compiled_walk_on_a_large_noisy_map() -> None:
    """Thousands of regions with holes, pinches and regions on the map's edges."""
    rng = np.random.default_rng(7)
    coarse = rng.integers(0, 4, (64, 64))
    classes = np.kron(coarse, np.ones((4, 4), np.int64))
    classes[rng.random(classes.shape) < 0.05] = 4  # speckle: single-pixel holes, pinches
    lab = label(classes, background=-1, connectivity=1).astype(np.int32)
    assert lab.max() > 1000
    assert_same_rings(lab)
    classes = classes.astype(np.uint8)
    classes[:3, :5] = 255  # and some nodata
    conf = rng.integers(0, 256, classes.shape, dtype=np.uint8)
    got = landcover.label_stats(classes, 255, conf, 1 / 255)
    want = landcover._label_stats_numpy(classes, 255, conf, 1 / 255)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_without_numba_the_array_walk_traces_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    lab = label(rng.integers(0, 3, (40, 50)), background=0, connectivity=1).astype(np.int32)
    with_jit = trace.trace_regions(lab, 5, -7)
    monkeypatch.setitem(sys.modules, "geoseg.vectorize._trace_jit", None)  # import fails
    trace.compiled.cache_clear()
    try:
        assert trace.compiled() is None
        without = trace.trace_regions(lab, 5, -7)
    finally:
        trace.compiled.cache_clear()
    assert with_jit is not None and without is not None
    np.testing.assert_array_equal(with_jit[0], without[0])
    assert shapely.equals_exact(with_jit[1], without[1], 0).all()


def test_a_numba_that_fails_to_load_falls_back_with_a_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """numba raises RuntimeError at import when it finds no writable cache folder (a read-only
    install without a home folder): the array walk takes over and says how to fix it."""
    import types

    broken = types.ModuleType("geoseg.vectorize._trace_jit")

    def fail(name: str) -> None:
        raise RuntimeError("cannot cache function 'ring_vertices': no locator available")

    broken.__getattr__ = fail  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "geoseg.vectorize._trace_jit", broken)
    trace.compiled.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="geoseg.vectorize.trace"):
            assert trace.compiled() is None
    finally:
        trace.compiled.cache_clear()
    assert "NUMBA_CACHE_DIR" in caplog.text
