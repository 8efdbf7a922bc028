"""Seam unions by cancelled edges (geoseg.vectorize.seam_union) equal GEOS's coverage union:
the same polygon once collinear vertices are dropped and rings normalized."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.measure import label

from geoseg.vectorize import landcover as lc
from geoseg.vectorize.features import drop_collinear_many, trace_labels
from geoseg.vectorize.seam_union import stitched_unions


def _pieces(region: np.ndarray, chunk: int) -> list[shapely.Polygon]:
    """A region's parts as the chunks of a ``chunk``-px lattice trace them."""
    h, w = region.shape
    return [p for r in range(0, h, chunk) for c in range(0, w, chunk)
            for _v, p in trace_labels(region[r:r + chunk, c:c + chunk].astype(np.int32), r, c)]


def _canonical(geom: shapely.Geometry) -> shapely.Geometry:
    one = np.empty(1, dtype=object)
    one[0] = geom
    return shapely.normalize(drop_collinear_many(one)[0])


def _dense(groups: list[list[shapely.Polygon]], chunk: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The groups' parts with unit vertices on the seams (ragged), their polygons, and each
    part's group."""
    flat = np.empty(sum(len(g) for g in groups), dtype=object)
    flat[:] = [p for g in groups for p in g]
    _kind, xy, (ring_off, poly_off) = shapely.to_ragged_array(flat)
    dense = lc._unit_vertices(xy, np.diff(ring_off), poly_off, chunk)
    assert dense is not None
    dxy, doff, dpoly = dense
    polys = np.asarray(shapely.from_ragged_array(shapely.GeometryType.POLYGON, dxy,
                                                 (doff, dpoly)))
    group_of = np.repeat(np.arange(len(groups)), [len(g) for g in groups])
    return dxy, doff, dpoly, polys, group_of


def _check(groups: list[list[shapely.Polygon]], chunk: int) -> None:
    dxy, doff, dpoly, polys, group_of = _dense(groups, chunk)
    got = stitched_unions(dxy, doff, dpoly, group_of, len(groups), chunk)
    for g, union in enumerate(got):
        assert union is not None, f"group {g} fell back to GEOS"
        assert union.is_valid
        ref = shapely.coverage_union_all(polys[group_of == g])
        assert shapely.equals_exact(_canonical(union), _canonical(ref), 0)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 12), st.integers(1, 5),
       st.floats(0.35, 0.85))
def test_property_one_region_per_group_equals_geos(seed: int, chunk: int, n_groups: int,
                                                   density: float) -> None:
    """The largest 4-connected region of random masks (holes, pockets that touch the outline
    at a corner, parts touching at corners across seams), several groups in one call."""
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n_groups):
        h, w = (int(v) for v in rng.integers(2 * chunk, 4 * chunk + 3, size=2))
        labels = label(rng.random((h, w)) < density, connectivity=1)
        if labels.max() == 0:
            continue
        region = labels == np.bincount(labels.ravel())[1:].argmax() + 1
        groups.append(_pieces(region, chunk))
    if groups:
        _check(groups, chunk)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 8), st.integers(2, 4))
def test_property_every_region_of_a_class_map_equals_geos(seed: int, chunk: int,
                                                          classes: int) -> None:
    """Every region of a class map, all in one call: neighbours of other classes share seam
    edges with a region too, and those must not cancel."""
    rng = np.random.default_rng(seed)
    cmap = rng.integers(0, classes, size=(3 * chunk + 1, 3 * chunk))
    groups = []
    for k in range(classes):
        labels = label(cmap == k, connectivity=1)
        groups += [_pieces(labels == i, chunk) for i in range(1, labels.max() + 1)]
    _check(groups, chunk)


def test_a_pocket_touching_the_outline_is_a_hole() -> None:
    """Pixels of the region touching at a corner across seams: the pocket between them is a
    hole touching the shell at that corner (valid), not a ring through the corner twice."""
    region = np.array([[1, 1, 1], [1, 0, 1], [0, 1, 1]], bool)
    groups = [_pieces(region, 2)]
    dxy, doff, dpoly, _polys, group_of = _dense(groups, 2)
    (union,) = stitched_unions(dxy, doff, dpoly, group_of, 1, 2)
    assert union is not None and union.is_valid
    assert shapely.get_num_interior_rings(union) == 1
    assert union.area == region.sum()
    _check(groups, 2)


def test_a_ring_that_loses_every_edge_leaves_nothing_behind() -> None:
    """A part surrounded by parts of its group on all sides (a chunk full of the region)."""
    region = np.ones((6, 6), bool)
    region[0, 0] = False
    _check([_pieces(region, 2)], 2)


def test_what_is_not_a_pixel_coverage_is_left_to_geos() -> None:
    """Off the pixel lattice, or parts that overlap: None (the seam merge then asks GEOS)."""
    dxy, doff, dpoly, _polys, group_of = _dense([[shapely.box(0, 0, 2, 2),
                                                   shapely.box(2, 0, 4, 2)]], 2)
    (union,) = stitched_unions(dxy, doff, dpoly, group_of, 1, 2)
    assert shapely.equals_exact(_canonical(union), _canonical(shapely.box(0, 0, 4, 2)), 0)
    skewed = [shapely.Polygon([(0, 0), (2.5, 0), (2.5, 2), (0, 2)]), shapely.box(2.5, 0, 4, 2)]
    overlapping = [shapely.box(0, 0, 2, 2), shapely.box(0, 0, 2, 2)]
    for parts in (skewed, overlapping):
        geoms = np.empty(len(parts), dtype=object)
        geoms[:] = parts
        _kind, xy, (ring_off, poly_off) = shapely.to_ragged_array(geoms)
        assert stitched_unions(xy, ring_off, poly_off, np.zeros(2, int), 1, 2) == [None]
