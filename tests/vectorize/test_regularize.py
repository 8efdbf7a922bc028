"""Regularization: rectangles get right angles, round shapes stay round, output always valid."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.features
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Point, Polygon, shape

from geoseg.errors import InputError
from geoseg.vectorize.features import CROSS, apply_affine, trace_labels
from geoseg.vectorize.regularize import (
    _Frame,
    _largest_outlines,
    corner_angle_share,
    regularize_polygon,
    regularize_polygons,
)


def pixel_outline(shape: Polygon, size: int = 64, noise: float = 0.0, seed: int = 0) -> Polygon:
    """``shape`` burnt into a pixel grid (optionally with 1-px boundary noise) and traced back."""
    mask = rasterio.features.rasterize([shape], out_shape=(size, size)).astype(bool)
    if noise:
        rng = np.random.default_rng(seed)
        outer = ndimage.binary_dilation(mask, CROSS) & ~mask
        inner = mask & ~ndimage.binary_erosion(mask, CROSS)
        mask = (mask | (outer & (rng.random(mask.shape) < noise))) \
            & ~(inner & (rng.random(mask.shape) < noise))
        labels, _ = ndimage.label(mask, structure=CROSS)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == sizes.argmax()
    return max((p for _, p in trace_labels(mask.astype(np.int32), 0, 0)), key=lambda p: p.area)


def iou(a: Polygon, b: Polygon) -> float:
    return float(a.intersection(b).area / a.union(b).area)


@pytest.mark.parametrize(("angle", "seed"), [(25.0, 1), (61.0, 2), (8.0, 3)])
def test_noisy_rotated_rectangle_gets_four_right_angles(angle: float, seed: int) -> None:
    truth = affinity.rotate(shapely.box(16, 22, 48, 40), angle)
    raw = pixel_outline(truth, noise=0.1, seed=seed)
    reg = regularize_polygon(raw, 1.0)
    assert reg.is_valid and not reg.is_empty
    assert len(reg.exterior.coords) - 1 == 4
    assert corner_angle_share(reg, tol_deg=5) == 1.0
    assert iou(reg, raw) >= 0.9
    assert iou(reg, truth) >= iou(raw, truth) - 0.01      # no worse than the pixels


def test_l_shape_and_courtyard_keep_their_form() -> None:
    ell = affinity.rotate(Polygon([(10, 10), (50, 10), (50, 25), (30, 25), (30, 50), (10, 50)]),
                          12)
    reg = regularize_polygon(pixel_outline(ell), 1.0)
    assert len(reg.exterior.coords) - 1 == 6 and corner_angle_share(reg) == 1.0
    assert iou(reg, ell) > 0.97
    court = affinity.rotate(shapely.box(8, 8, 56, 56).difference(shapely.box(22, 22, 42, 42)), 33)
    reg = regularize_polygon(pixel_outline(court), 1.0)
    assert len(reg.interiors) == 1 and corner_angle_share(reg) == 1.0
    assert iou(reg, court) > 0.97


def test_circle_stays_round() -> None:
    raw = pixel_outline(Point(32, 32).buffer(20))
    for allow_45 in (False, True):
        reg = regularize_polygon(raw, 1.0, allow_45=allow_45)
        assert reg.is_valid
        assert iou(reg, raw) >= 0.9
        assert len(reg.exterior.coords) > 16               # not squared off
        assert corner_angle_share(reg) < 0.8


def test_allow_45_keeps_a_chamfer() -> None:
    truth = affinity.rotate(Polygon([(10, 10), (44, 10), (54, 20), (54, 50), (10, 50)]), 8)
    raw = pixel_outline(truth)
    square = regularize_polygon(raw, 1.0)
    chamfer = regularize_polygon(raw, 1.0, allow_45=True)
    assert corner_angle_share(square) == 1.0              # right angles only: a small step
    assert len(chamfer.exterior.coords) - 1 == 5           # four right angles + one chamfer
    assert corner_angle_share(chamfer) == pytest.approx(3 / 5)
    assert iou(chamfer, truth) > 0.97


def test_pixel_size_scales() -> None:
    raw = pixel_outline(affinity.rotate(shapely.box(16, 22, 48, 40), 25))
    unit = regularize_polygon(raw, 1.0)
    scaled = regularize_polygon(affinity.scale(raw, 0.5, 0.5, origin=(0, 0)), 0.5)
    assert iou(affinity.scale(unit, 0.5, 0.5, origin=(0, 0)), scaled) > 0.99


def test_axis_aligned_rectangle_is_unchanged() -> None:
    box = shapely.box(3, 4, 20, 11)
    assert regularize_polygon(box, 1.0).normalize().equals_exact(box.normalize(), 1e-9)


def test_bad_input() -> None:
    with pytest.raises(InputError):
        regularize_polygon(Polygon(), 1.0)
    with pytest.raises(InputError):
        regularize_polygon(shapely.box(0, 0, 4, 4), 0.0)
    assert corner_angle_share(Polygon()) == 0.0


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), allow_45=st.booleans())
def test_property_always_valid_polygon(seed: int, allow_45: bool) -> None:
    rng = np.random.default_rng(seed)
    mask = ndimage.binary_opening(rng.random((24, 24)) < 0.55) if seed % 2 else \
        rng.random((24, 24)) < 0.7
    labels, n = ndimage.label(mask, structure=CROSS)
    if n == 0:
        return
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    raw = next(p for _, p in trace_labels((labels == sizes.argmax()).astype(np.int32), 0, 0))
    reg = regularize_polygon(raw, 1.0, allow_45=allow_45)
    assert isinstance(reg, Polygon) and reg.is_valid and not reg.is_empty and reg.area > 0


def _blob(seed: int, angle: float) -> np.ndarray:
    """A rotated, noisy building-like mask (largest 4-connected piece), holes possible."""
    rng = np.random.default_rng(seed)
    w, h = rng.uniform(6, 30, 2)
    truth = affinity.rotate(shapely.box(32 - w / 2, 32 - h / 2, 32 + w / 2, 32 + h / 2), angle)
    if seed % 3 == 0:                                        # an L or a courtyard
        truth = truth.difference(affinity.rotate(shapely.box(30, 30, 34 + w / 3, 35), angle))
    mask = rasterio.features.rasterize([truth], out_shape=(64, 64)).astype(bool)
    mask ^= ndimage.binary_dilation(mask, CROSS) & (rng.random(mask.shape) < 0.08)
    labels, _ = ndimage.label(mask, structure=CROSS)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), angle=st.sampled_from([0.0, 45.0, 7.0, 22.5, 33.3, 71.0]),
       pixel_size=st.sampled_from([1.0, 0.5, 0.3, 2.7]), row=st.integers(-40, 40),
       col=st.integers(-40, 40))
def test_property_cells_give_the_same_result_as_rasterizing(seed: int, angle: float,
                                                            pixel_size: float, row: int,
                                                            col: int) -> None:
    """The footprint stage hands regularization the outline's pixels instead of letting it
    rasterize the outline (twice: for the gradient and, rotated, for the re-traced frame): the
    results must be the same polygons, coordinate for coordinate, at every angle (at 45°
    whole diagonals of fine cells sit on pixel corners, and GDAL's tie rule decides)."""
    mask = _blob(seed, angle)
    raw = max((p for _, p in trace_labels(mask.astype(np.int32), 0, 0)), key=lambda p: p.area)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    cells = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # the footprint stage's local frame: origin at a pixel, y growing with the row
    to_local = rasterio.Affine.scale(pixel_size, pixel_size) @ \
        rasterio.Affine.translation(-(cols[0] + col), -(rows[0] + row))
    local = apply_affine(raw, to_local)
    expected = regularize_polygon(local, pixel_size)
    got = regularize_polygon(local, pixel_size, cells=cells[::-1])
    assert shapely.equals_exact(got, expected, 0)


@pytest.mark.parametrize("batch_cells", [2**21, 3000])
def test_many_at_once_equal_one_by_one(batch_cells: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One tracing call for many outlines (laid out in shelves), or one per group of them,
    changes nothing."""
    import geoseg.vectorize.regularize as regularize

    monkeypatch.setattr(regularize, "_BATCH_CELLS", batch_cells)
    polys = []
    for seed in range(40):
        mask = _blob(seed, 13.0 * seed)
        polys.append(max((p for _, p in trace_labels(mask.astype(np.int32), 0, 0)),
                         key=lambda p: p.area))
    polys.append(shapely.box(0, 0, 5, 3))                     # already regular
    polys.append(Point(32, 32).buffer(20))                    # round: simplified only
    sizes = [1.0 + 0.1 * (i % 3) for i in range(len(polys))]
    together = regularize_polygons(polys, sizes, allow_45=True)
    for poly, size, got in zip(polys, sizes, together, strict=True):
        assert shapely.equals_exact(got, regularize_polygon(poly, size, allow_45=True), 0)
    assert regularize_polygons([], []) == []
    with pytest.raises(InputError):
        regularize_polygons(polys, sizes[:-1])


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_property_batched_frame_tracing_equals_gdals(seed: int) -> None:
    """The re-traced frames: one numpy tracing call for all of them gives, for each, GDAL's
    polygon of its largest piece vertex for vertex (its transform applied as GDAL does).
    Largest by pixel count, the first in raster order among equal ones (GDAL's float areas of
    equal pieces differ in the last bits, which decided such ties before)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(int(rng.integers(1, 12))):
        h, w = rng.integers(1, 40, 2)
        mask = ndimage.binary_opening(rng.random((h, w)) < 0.6).astype(np.uint8)
        if not mask.any():
            mask[0, 0] = 1
        cell = float(rng.choice([0.5, 0.15, 1.35]))
        transform = rasterio.Affine(cell, 0.0, float(rng.uniform(-50, 50)), 0.0, -cell,
                                    float(rng.uniform(-50, 50)))
        frames.append(_Frame(mask, transform, np.zeros(2), np.eye(2)))
    outlines = _largest_outlines(frames)
    for frame, got in zip(frames, outlines, strict=True):
        traced = [shape(g) for g, _ in rasterio.features.shapes(
            frame.mask, mask=frame.mask.astype(bool), connectivity=4,
            transform=frame.transform)]
        cell = frame.transform.a

        def rank(p: Polygon, cell: float = cell) -> tuple[int, float, float]:
            x, y = p.exterior.coords[0]                 # GDAL starts at the top-left corner
            return (-round(p.area / cell**2), -y, x)

        expected = min(traced, key=rank)
        assert got is not None
        assert shapely.equals_exact(got, expected, 0)
