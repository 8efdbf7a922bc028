"""Land-cover parts + seam merge equal a whole-array polygonization, whatever the chunking."""

from __future__ import annotations

import dataclasses
import pickle
from collections import defaultdict

import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pyproj import CRS
from shapely.geometry import shape

from geoseg.errors import InputError
from geoseg.grid import ChunkGrid
from geoseg.vectorize.features import Feature
from geoseg.vectorize.landcover import (
    LandcoverParts,
    SeamMerger,
    first_pixels,
    landcover_parts,
    merge_landcover,
)

FILL = 255
# A UTM 33N grid (EPSG:32633) with 10 m pixels; the merge is done in pixel space, so the
# reference below must map pixels through the same transform.
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)


def chunked(classes: np.ndarray, chunk: int, confidence: np.ndarray | None = None,
            min_pixels: int = 0, order: int = 1) -> list[Feature]:
    grid = ChunkGrid(classes.shape, chunk)
    parts = [landcover_parts(classes[c.window.slices()],
                             None if confidence is None else confidence[c.window.slices()],
                             c, TRANSFORM, fill=FILL, min_pixels=min_pixels)
             for c in grid]
    return list(merge_landcover(parts[::order], grid))


def whole(classes: np.ndarray) -> list[tuple[int, shapely.Polygon]]:
    """Reference: rasterio/GDAL polygonization of the whole array in one go."""
    src = classes.astype(np.int32)
    return [(int(v), shapely.normalize(shape(g)))
            for g, v in rasterio.features.shapes(src, mask=classes != FILL, connectivity=4,
                                                 transform=TRANSFORM)]


def by_class(items: list[tuple[int, shapely.Polygon]]) -> dict[int, list[shapely.Polygon]]:
    out: dict[int, list[shapely.Polygon]] = defaultdict(list)
    for c, g in items:
        out[c].append(g)
    return out


def assert_same(features: list[Feature], classes: np.ndarray) -> None:
    got = by_class([(f.class_id, f.geometry) for f in features])
    ref = by_class(whole(classes))
    assert sorted(got) == sorted(ref)
    for c in ref:
        assert len(got[c]) == len(ref[c]), f"class {c}"
        assert all(g.is_valid for g in got[c])
        # identical up to vertex order: normalised WKT sets are equal
        assert sorted(g.wkt for g in got[c]) == sorted(g.wkt for g in ref[c])
    areas = [f.geometry.area for f in features]
    assert sum(areas) == pytest.approx(shapely.union_all([f.geometry for f in features]).area)
    assert sum(f.pixels for f in features) == int((classes != FILL).sum())


def scene() -> np.ndarray:
    rng = np.random.default_rng(7)
    a = np.zeros((48, 48), dtype=np.uint8)           # background class 0 spans all chunks
    a[5:40, 6:44] = 1                                # a big field over many seams
    a[12:20, 10:30] = 2                              # an island inside it (hole)
    a[14:17, 14:17] = 0                              # island inside the island
    a[30:46, 30:34] = 3                              # a strip crossing seams
    a[rng.random(a.shape) < 0.03] = 2                # salt
    a[44:48, 0:10] = FILL                            # nodata
    return a


@pytest.mark.parametrize("chunk", [16, 7, 48, 100])
def test_chunked_equals_whole(chunk: int) -> None:
    a = scene()
    assert_same(chunked(a, chunk), a)


def test_region_spanning_all_chunks_is_one_polygon_with_holes() -> None:
    a = np.zeros((48, 48), dtype=np.uint8)
    a[20:28, 20:28] = 1                              # hole spanning the centre chunk's edges
    a[2:4, 2:4] = 2
    feats = chunked(a, 16)
    bg = [f for f in feats if f.class_id == 0]
    assert len(bg) == 1
    assert len(bg[0].geometry.interiors) == 2
    assert bg[0].pixels == 48 * 48 - 64 - 4
    assert bg[0].geometry.area == pytest.approx(bg[0].pixels * 100.0)
    assert bg[0].id == "lc0_0"


def test_ring_around_seam_corner() -> None:
    a = np.full((32, 32), 0, dtype=np.uint8)
    a[8:24, 8:24] = 1
    a[12:20, 12:20] = 2                              # ring of class 1 around the 4-chunk corner
    feats = chunked(a, 16)
    ring = [f for f in feats if f.class_id == 1]
    assert len(ring) == 1 and len(ring[0].geometry.interiors) == 1
    assert ring[0].geometry.area == pytest.approx((256 - 64) * 100.0)
    assert_same(feats, a)


def test_diagonal_touch_is_not_connected() -> None:
    a = np.zeros((8, 8), dtype=np.uint8)
    a[2:4, 2:4] = 1
    a[4:6, 4:6] = 1                                  # touches only at the corner (4, 4) = seam
    feats = [f for f in chunked(a, 4) if f.class_id == 1]
    assert len(feats) == 2


def test_nodata_yields_nothing() -> None:
    a = np.full((20, 20), FILL, dtype=np.uint8)
    assert chunked(a, 8) == []
    a[5:9, 5:9] = 4
    feats = chunked(a, 8)
    assert [(f.class_id, f.pixels) for f in feats] == [(4, 16)]


def test_confidence_mean_and_min_pixels() -> None:
    a = np.zeros((16, 16), dtype=np.uint8)
    a[1:3, 1:3] = 1                                  # 4 px interior, dropped by min_pixels
    a[6:10, 6:10] = 2                                # 16 px across the seam at 8
    conf = np.full(a.shape, 255, dtype=np.uint8)
    conf[6:10, 6:8] = 0
    feats = chunked(a, 8, conf, min_pixels=5)
    assert sorted(f.class_id for f in feats) == [0, 2]
    f2 = next(f for f in feats if f.class_id == 2)
    assert f2.confidence == pytest.approx(0.5)
    float_conf = conf.astype(np.float32) / 255
    f2f = next(f for f in chunked(a, 8, float_conf) if f.class_id == 2)
    assert f2f.confidence == pytest.approx(0.5)
    rec = f2.to_record()
    assert set(rec) == {"geometry", "class_id", "pixels", "confidence", "id"}


def test_order_of_parts_does_not_matter_and_parts_pickle() -> None:
    a = scene()
    fwd = {f.id: f.geometry.wkb for f in chunked(a, 10)}
    rev = {f.id: f.geometry.wkb for f in chunked(a, 10, order=-1)}
    assert fwd == rev
    grid = ChunkGrid(a.shape, 10)
    c = grid.get(1, 1)
    parts = landcover_parts(a[c.window.slices()], None, c, TRANSFORM)
    again = pickle.loads(pickle.dumps(parts))
    assert isinstance(again, LandcoverParts) and len(again.border) == len(parts.border)


def test_driver_may_emit_interiors_itself_and_merge_only_border_parts() -> None:
    """The driver's streaming pattern: write interiors as chunks finish, keep only the parts with
    border regions (interiors stripped) and merge those at the end."""
    a = scene()
    a[:, 16:32] = FILL                                   # chunks (·, 1) hold nodata only
    grid = ChunkGrid(a.shape, 16)
    written: list[Feature] = []
    held: list[LandcoverParts] = []
    for c in grid:
        part = landcover_parts(a[c.window.slices()], None, c, TRANSFORM, fill=FILL)
        written += part.interior
        if part.border:
            held.append(dataclasses.replace(part, interior=[]))
    assert len(held) < len(grid)                          # the all-nodata chunks are left out
    written += merge_landcover(held, grid)
    assert_same(written, a)


def test_areas_with_a_crs() -> None:
    a = scene()
    grid = ChunkGrid(a.shape, 16)
    utm = CRS.from_epsg(32633)
    parts = [landcover_parts(a[c.window.slices()], None, c, TRANSFORM, crs=utm) for c in grid]
    feats = list(merge_landcover(parts, grid))
    assert all(f.area_m2 == pytest.approx(f.pixels * 100.0) for f in feats)
    assert all(f.perimeter_m == pytest.approx(f.geometry.length) for f in feats)
    geo = Affine(1e-4, 0.0, 15.0, 0.0, -1e-4, 45.0)
    wgs84 = CRS.from_epsg(4326)
    parts = [landcover_parts(a[c.window.slices()], None, c, geo, crs=wgs84) for c in grid]
    feats = list(merge_landcover(parts, grid))
    px_m2 = (1e-4 * 111_195 * np.cos(np.radians(45.0))) * (1e-4 * 111_195)
    assert all(f.area_m2 == pytest.approx(f.pixels * px_m2, rel=0.01) for f in feats)
    with pytest.raises(InputError):                     # CRS differs between chunks
        list(merge_landcover([*parts[:-1], dataclasses.replace(parts[-1], crs=utm)], grid))


def test_bad_inputs_raise_input_error() -> None:
    a = scene()
    grid = ChunkGrid(a.shape, 16)
    c = grid.get(0, 0)
    with pytest.raises(InputError):
        landcover_parts(a, None, c, TRANSFORM)                     # not the core window
    with pytest.raises(InputError):
        landcover_parts(a[c.window.slices()].astype(float), None, c, TRANSFORM)
    with pytest.raises(InputError):
        landcover_parts(a[c.window.slices()], np.full((16, 16), 2.0), c, TRANSFORM)
    part = landcover_parts(a[c.window.slices()], None, c, TRANSFORM)
    with pytest.raises(InputError):
        list(merge_landcover([part, part], grid))
    with pytest.raises(InputError):
        list(merge_landcover([part], ChunkGrid(a.shape, 8)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), h=st.integers(12, 40), w=st.integers(12, 40), chunk=st.integers(3, 16))
def test_property_chunked_equals_whole(data: st.DataObject, h: int, w: int, chunk: int) -> None:
    values = st.sampled_from([0, 1, 2, FILL])
    a = data.draw(arrays(np.uint8, (h, w), elements=values))
    feats = chunked(a, chunk)
    ref = whole(a)
    for c in {c for c, _ in ref} | {f.class_id for f in feats}:
        got = [f.geometry for f in feats if f.class_id == c]
        exp = [g for k, g in ref if k == c]
        assert len(got) == len(exp)
        assert sum(g.area for g in got) == pytest.approx(sum(g.area for g in exp))
        assert sorted(g.wkt for g in got) == sorted(g.wkt for g in exp)
    union = shapely.union_all([f.geometry for f in feats])
    assert sum(f.geometry.area for f in feats) == pytest.approx(union.area)
    assert all(f.geometry.is_valid for f in feats)


def _key(f: Feature) -> tuple[object, ...]:
    return (f.id, f.class_id, f.pixels, f.confidence, shapely.normalize(f.geometry).wkt)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), h=st.integers(12, 40), w=st.integers(12, 40), chunk=st.integers(3, 16))
def test_property_streaming_merge_equals_batch_merge(data: st.DataObject, h: int, w: int,
                                                     chunk: int) -> None:
    """SeamMerger emits exactly merge_landcover's features, whatever the arrival order."""
    a = data.draw(arrays(np.uint8, (h, w), elements=st.sampled_from([0, 1, 2, FILL])))
    conf = data.draw(arrays(np.uint8, (h, w), elements=st.integers(0, 255)))
    grid = ChunkGrid(a.shape, chunk)
    parts = [landcover_parts(a[c.window.slices()], conf[c.window.slices()], c, TRANSFORM,
                             fill=FILL, min_pixels=3) for c in grid]
    order = data.draw(st.permutations(range(len(parts))))
    merger = SeamMerger(grid)
    got = [f for i in order for f in merger.add(parts[i])]
    assert merger.held == 0 and not merger.edges  # every group closed: nothing left over
    got += list(merger.finish())
    assert sorted(map(_key, got)) == sorted(map(_key, merge_landcover(parts, grid)))


def test_streaming_merge_holds_a_frontier_not_the_raster() -> None:
    """In raster order, the parts held stay near one row of chunks; a missing chunk keeps its
    neighbours' groups open until finish."""
    # 5-px blocks of 4 classes: regions cross seams but stay small (below percolation)
    rng = np.random.default_rng(3)
    a = rng.integers(0, 4, (20, 20)).astype(np.uint8).repeat(5, 0).repeat(5, 1)[:96, :96]
    grid = ChunkGrid(a.shape, 8)
    parts = [landcover_parts(a[c.window.slices()], None, c, TRANSFORM, fill=FILL) for c in grid]
    total = sum(len(p.border) for p in parts)
    merger = SeamMerger(grid)
    held = []
    for p in parts:
        list(merger.add(p))
        held.append(merger.held)
    _, nx = grid.counts
    per_chunk = total / len(parts)
    assert max(held) <= (2 * nx + 2) * per_chunk * 1.5 and held[-1] == 0
    assert max(held) < total
    assert list(SeamMerger(grid).finish()) == []             # a run without land cover
    merger = SeamMerger(grid)
    first = [f for p in parts[1:] for f in merger.add(p)]    # chunk (0, 0) never arrives
    assert merger.held > 0
    rest = list(merger.finish())
    batch = list(merge_landcover(parts[1:], grid))
    assert sorted(map(_key, first + rest)) == sorted(map(_key, batch))


def _tile_reference(a: np.ndarray, conf: np.ndarray, span: int, min_pixels: int) -> list[Feature]:
    """Each tile polygonized on its own: the parts of a grid whose chunks are the tiles,
    unmerged (a border part is then a whole region of its tile)."""
    from geoseg.vectorize.landcover import _feature

    grid = ChunkGrid(a.shape, span)
    out: list[Feature] = []
    for c in grid:
        p = landcover_parts(a[c.window.slices()], conf[c.window.slices()], c, TRANSFORM,
                            fill=FILL, min_pixels=min_pixels)
        out += p.interior
        out += [_feature(b.geometry, b.class_id, b.pixels, b.confidence_sum, b.ref, TRANSFORM,
                         None) for b in p.border if b.pixels >= min_pixels]
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), h=st.integers(12, 40), w=st.integers(12, 40), chunk=st.integers(3, 8),
       tile=st.integers(1, 3), min_pixels=st.sampled_from([0, 3]))
def test_property_tiles_cut_regions_and_name_them(data: st.DataObject, h: int, w: int,
                                                  chunk: int, tile: int,
                                                  min_pixels: int) -> None:
    """With tiles, the streamed features are each tile's own polygonization, whatever the
    arrival order; dissolving the pieces by region id gives back the uncut regions and ids."""
    a = data.draw(arrays(np.uint8, (h, w), elements=st.sampled_from([0, 1, 2, FILL])))
    conf = data.draw(arrays(np.uint8, (h, w), elements=st.integers(0, 255)))
    grid = ChunkGrid(a.shape, chunk)
    parts = [landcover_parts(a[c.window.slices()], conf[c.window.slices()], c, TRANSFORM,
                             fill=FILL, min_pixels=min_pixels) for c in grid]
    order = data.draw(st.permutations(range(len(parts))))
    merger = SeamMerger(grid, tile=tile)
    got = [f for i in order for f in merger.add(parts[i])]
    got += list(merger.finish())
    assert merger.held == 0 and not merger.cross_edges
    ref = _tile_reference(a, conf, chunk * tile, min_pixels)

    def key(f: Feature) -> tuple[object, ...]:  # confidence: sums over other chunkings
        return (*_key(f)[:3], round(f.confidence or 0, 9), _key(f)[4])

    assert sorted(map(key, got)) == sorted(map(key, ref))
    if min_pixels:
        return
    region = merger.regions()
    pieces: dict[str, list[shapely.Geometry]] = defaultdict(list)
    for f in got:
        assert f.id is not None
        pieces[region.get(f.id, f.id)].append(f.geometry)
    uncut = {f.id: f for f in merge_landcover(parts, grid)}
    assert sorted(pieces) == sorted(uncut)
    for rid, geoms in pieces.items():
        assert shapely.union_all(geoms).symmetric_difference(uncut[rid].geometry).area == 0


def test_tiles_bound_what_a_raster_spanning_region_holds() -> None:
    """A background class spanning the raster: uncut, every chunk's part is held to the end;
    with tiles of 2x2 chunks, the parts held stay within about a row of tiles."""
    a = np.zeros((96, 96), dtype=np.uint8)
    a[2::6, 2::6] = 1                                     # dots: holes in the background
    grid = ChunkGrid(a.shape, 8)
    parts = [landcover_parts(a[c.window.slices()], None, c, TRANSFORM, fill=FILL) for c in grid]
    peaks, backgrounds = {}, {}
    for tile in (0, 2):
        merger = SeamMerger(grid, tile=tile)
        held, feats = [], []
        for p in parts:
            feats += merger.add(p)
            held.append(merger.held)
        feats += merger.finish()
        peaks[tile] = max(held)
        backgrounds[tile] = sum(f.class_id == 0 for f in feats)
    assert peaks[0] >= len(parts) and peaks[2] <= 2 * 12 + 16  # 144 chunks; a row of tiles
    assert backgrounds == {0: 1, 2: 36}
    assert len(set(merger.regions().values())) == 1 and len(merger.regions()) == 35
    with pytest.raises(InputError, match="tile"):
        SeamMerger(grid, tile=-1)


@settings(max_examples=60, deadline=None)
@given(classes=arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24)),
                      elements=st.sampled_from([0, 1, 2, FILL])),
       shuffle=st.booleans(), seed=st.integers(0, 2**16))
def test_first_pixels_are_those_of_a_sort(classes: np.ndarray, shuffle: bool,
                                          seed: int) -> None:
    """The one-pass first pixels equal np.unique's on skimage's labels, and on labels numbered
    in any other order (the check sends those to the sort)."""
    from skimage.measure import label

    labels = label(classes, background=FILL, connectivity=1).astype(np.int32)
    n = int(labels.max())
    if shuffle and n > 1:
        perm = np.concatenate([[0], 1 + np.random.default_rng(seed).permutation(n)])
        labels = perm[labels].astype(np.int32)
    flat = labels.ravel()
    present, first = np.unique(flat, return_index=True)
    want = np.zeros(n + 1, dtype=np.int64)
    want[present] = first
    want[0] = 0
    assert np.array_equal(first_pixels(flat, n), want)
