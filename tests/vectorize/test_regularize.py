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
from shapely.geometry import Point, Polygon

from geoseg.errors import InputError
from geoseg.vectorize.features import CROSS, trace_labels
from geoseg.vectorize.regularize import corner_angle_share, regularize_polygon


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
