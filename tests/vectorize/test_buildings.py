"""Building footprints: one feature per building whatever the chunking, split at boundaries."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import rasterio.features
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import CRS, Transformer
from scipy import ndimage
from shapely import affinity

from geoseg.errors import InputError
from geoseg.grid import Chunk, ChunkGrid, GeoBox, Window
from geoseg.vectorize.features import CROSS, Feature, features_to_frame
from geoseg.vectorize.footprints import extract_buildings
from geoseg.vectorize.regularize import corner_angle_share

BG, BUILDING, BOUNDARY, FILL = 0, 1, 2, 255
UTM = CRS.from_epsg(32633)


def utm_grid(shape: tuple[int, int], res: float = 0.5) -> GeoBox:
    return GeoBox(shape, Affine(res, 0.0, 500_000.0, 0.0, -res, 5_000_000.0), UTM)


def run_chunks(classes: np.ndarray, prob: np.ndarray, grid: GeoBox, chunk: int, halo: int,
               **kw: Any) -> list[Feature]:
    out: list[Feature] = []
    for c in ChunkGrid(grid.shape, chunk):
        ctx = c.window.pad(halo).intersect(grid.window)
        out += extract_buildings(classes[ctx.slices()], prob[ctx.slices()], ctx, c, grid,
                                 building_id=BUILDING, boundary_id=BOUNDARY, **kw)
    return out


def with_boundaries(instances: np.ndarray) -> np.ndarray:
    """Class map from an instance raster: building, plus a 2-px boundary where two meet."""
    classes = np.where(instances > 0, BUILDING, BG).astype(np.uint8)
    for axis in (0, 1):
        for shift in (1, -1):
            other = np.roll(instances, shift, axis=axis)
            edge = (instances > 0) & (other > 0) & (other != instances)
            if shift == 1:
                edge[(0,) if axis == 0 else (slice(None), 0)] = False
            else:
                edge[(-1,) if axis == 0 else (slice(None), -1)] = False
            classes[edge] = BOUNDARY
    return classes


def scene(seed: int, size: int = 64, n: int = 9) -> np.ndarray:
    """Random rotated rectangles (later ones overlap earlier ones) with predicted boundaries."""
    rng = np.random.default_rng(seed)
    shapes = []
    for value in range(1, n + 1):
        w, h = rng.integers(4, 13, size=2)
        x, y = rng.integers(0, size - 8, size=2)
        box = shapely.box(x, y, x + w, y + h)
        shapes.append((affinity.rotate(box, float(rng.choice([0, 20, 35]))), value))
    instances = rasterio.features.rasterize(shapes, out_shape=(size, size), dtype="int32")
    return with_boundaries(instances)


def prob_of(classes: np.ndarray) -> np.ndarray:
    return np.where(classes == BG, 10, 230).astype(np.uint8)


def test_building_across_a_chunk_corner_is_one_feature() -> None:
    classes = np.zeros((64, 64), dtype=np.uint8)
    classes[26:38, 27:41] = BUILDING
    grid = utm_grid(classes.shape)
    feats = run_chunks(classes, prob_of(classes), grid, chunk=32, halo=16)
    assert len(feats) == 1
    f = feats[0]
    assert f.id == "b26_27" and f.chunk_id == "0_0" and f.pixels == 12 * 14
    assert f.area_m2 == pytest.approx(12 * 14 * 0.25)
    assert f.perimeter_m == pytest.approx(2 * (12 + 14) * 0.5)
    assert f.confidence == pytest.approx(230 / 255)
    x0, y0 = grid.transform @ (27, 38)
    assert f.geometry.equals(shapely.box(x0, y0, x0 + 14 * 0.5, y0 + 12 * 0.5))


def test_touching_buildings_split_at_the_boundary_line() -> None:
    classes = np.zeros((40, 40), dtype=np.uint8)
    classes[10:20, 10:34] = BUILDING
    classes[10:20, 21:23] = BOUNDARY                      # 2-px line where the two meet
    classes[30:33, 5:12] = BOUNDARY                       # a cluster of boundary pixels only
    grid = utm_grid(classes.shape)
    feats = run_chunks(classes, prob_of(classes), grid, chunk=16, halo=24)
    assert [f.id for f in feats] == ["b10_10", "b10_22", "b30_5"]
    assert [f.pixels for f in feats] == [120, 120, 21]    # the line is shared halfway
    a, b = feats[0].geometry, feats[1].geometry
    assert a.touches(b) and a.intersection(b).length == pytest.approx(10 * 0.5)
    # a model without a boundary class: the same pixels are one building
    merged = np.where(classes == BOUNDARY, BUILDING, classes).astype(np.uint8)
    one = extract_buildings(merged, prob_of(merged), grid.window, Chunk((0, 0), grid.window),
                            grid, building_id=BUILDING, boundary_id=None)
    assert [(f.id, f.pixels) for f in one] == [("b10_10", 240), ("b30_5", 21)]


def test_faint_party_wall_splits_with_split_confidence() -> None:
    """Two terraced houses whose shared wall the model sees only faintly: the wall pixels are
    still 'building' by argmax but at low probability, so strong-interior markers split them;
    a third house beyond a predicted boundary line, weak everywhere, keeps a marker of its own."""
    classes = np.zeros((40, 60), dtype=np.uint8)
    classes[10:20, 5:45] = BUILDING
    classes[10:20, 30:32] = BOUNDARY                       # a wall the model does see
    prob = np.where(classes == BUILDING, 0.95, 0.9).astype(np.float32)
    prob[10:20, 18:21] = 0.6                               # the faint wall
    prob[10:20, 32:45] = 0.7                               # a weakly seen house
    grid = utm_grid(classes.shape)
    whole = Chunk((0, 0), grid.window)
    kw: dict[str, Any] = {"building_id": BUILDING, "boundary_id": BOUNDARY}
    merged = extract_buildings(classes, prob, grid.window, whole, grid, **kw)
    split = extract_buildings(classes, prob, grid.window, whole, grid, split_confidence=0.9, **kw)
    assert [(f.id, f.pixels) for f in merged] == [("b10_5", 260), ("b10_31", 140)]
    cols = [int(f.id.split("_")[1]) for f in split]
    assert len(split) == 3 and cols[0] == 5 and 18 <= cols[1] <= 21 and cols[2] == 31
    # the faint wall is shared between the two houses, the weak house keeps its pixels
    assert split[0].pixels + split[1].pixels == 260 and split[2].pixels == 140
    assert 130 <= split[0].pixels <= 150
    # the same on uint8 probabilities (the store's) and whatever the chunking
    as_uint8 = np.rint(prob * 255).astype(np.uint8)
    tiled = run_chunks(classes, as_uint8, grid, chunk=16, halo=48, split_confidence=0.9)
    assert sorted((f.id, f.pixels) for f in tiled) == sorted((f.id, f.pixels) for f in split)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_features_whatever_the_chunk_size(seed: int) -> None:
    classes = scene(seed)
    classes[:6, 40:50] = FILL                             # some nodata too
    grid = utm_grid(classes.shape)
    prob = prob_of(classes)
    results = []
    for chunk in (16, 24, 40, 64):
        feats = run_chunks(classes, prob, grid, chunk=chunk, halo=24)
        assert len({f.id for f in feats}) == len(feats)  # no feature twice
        results.append({f.id: (f.geometry.wkb, f.pixels, f.area_m2, f.confidence)
                        for f in feats})
    assert results[0] and all(r == results[0] for r in results[1:])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000), chunk=st.integers(8, 40))
def test_property_chunked_equals_one_chunk(seed: int, chunk: int) -> None:
    classes = scene(seed, n=7)
    grid = utm_grid(classes.shape)
    labels, _ = ndimage.label(classes != BG, structure=CROSS)
    boxes = [b for b in ndimage.find_objects(labels) if b is not None]
    halo = max((max(b[0].stop - b[0].start, b[1].stop - b[1].start) for b in boxes), default=1)
    whole = extract_buildings(classes, prob_of(classes), grid.window, Chunk((0, 0), grid.window),
                              grid, building_id=BUILDING, boundary_id=BOUNDARY)
    tiled = run_chunks(classes, prob_of(classes), grid, chunk=chunk, halo=halo)
    assert sorted((f.id, f.geometry.wkb, f.pixels) for f in tiled) == \
        sorted((f.id, f.geometry.wkb, f.pixels) for f in whole)
    assert all(f.geometry.is_valid for f in tiled)


def test_count_equals_components_when_nothing_touches() -> None:
    rng = np.random.default_rng(5)
    classes = np.zeros((96, 96), dtype=np.uint8)
    for r in range(0, 96, 16):
        for c in range(0, 96, 16):
            h, w = rng.integers(3, 14, size=2)
            classes[r + 1:r + 1 + h, c + 1:c + 1 + w] = BUILDING
    _, expected = ndimage.label(classes == BUILDING, structure=CROSS)
    grid = utm_grid(classes.shape, res=1.0)               # smallest 3x3 px = 9 m² > 4 m²
    feats = run_chunks(classes, prob_of(classes), grid, chunk=40, halo=16)
    assert len(feats) == expected == 36
    assert all(f.geometry.is_valid and corner_angle_share(f.geometry) == 1.0 for f in feats)
    frame = features_to_frame(feats, grid.crs)
    assert len(frame) == 36 and frame.crs == grid.crs
    assert {"id", "area_m2", "perimeter_m", "chunk_id", "confidence"} <= set(frame.columns)


def test_nodata_and_small_buildings_give_nothing() -> None:
    grid = utm_grid((32, 32))
    classes = np.full((32, 32), FILL, dtype=np.uint8)
    assert run_chunks(classes, prob_of(classes), grid, chunk=16, halo=8) == []
    classes[:] = BG
    classes[5:8, 5:8] = BUILDING                          # 9 px * 0.25 m² = 2.25 m² < 4 m²
    assert run_chunks(classes, prob_of(classes), grid, chunk=16, halo=8) == []
    assert len(run_chunks(classes, prob_of(classes), grid, chunk=16, halo=8,
                          min_area_m2=2.0)) == 1


def test_rotated_buildings_are_regularized() -> None:
    truth = affinity.rotate(shapely.box(10, 12, 40, 30), 25)
    classes = rasterio.features.rasterize([truth], out_shape=(48, 48), dtype="uint8")
    grid = utm_grid(classes.shape)
    raw, = run_chunks(classes, prob_of(classes), grid, chunk=24, halo=24, regularize=False)
    reg, = run_chunks(classes, prob_of(classes), grid, chunk=24, halo=24)
    assert raw.id == reg.id and raw.pixels == reg.pixels
    assert len(reg.geometry.exterior.coords) == 5 and corner_angle_share(reg.geometry) == 1.0
    iou = reg.geometry.intersection(raw.geometry).area / reg.geometry.union(raw.geometry).area
    assert iou > 0.9 and reg.geometry.is_valid


def test_geographic_grid_uses_geodesic_area() -> None:
    grid = GeoBox((64, 64), Affine(1e-5, 0.0, 15.0, 0.0, -1e-5, 45.0), CRS.from_epsg(4326))
    classes = np.zeros(grid.shape, dtype=np.uint8)
    classes[10:30, 12:42] = BUILDING
    feats = extract_buildings(classes, prob_of(classes), grid.window,
                              Chunk((0, 0), grid.window), grid, building_id=BUILDING,
                              boundary_id=BOUNDARY)
    assert len(feats) == 1
    f = feats[0]
    to_utm = Transformer.from_crs(grid.crs, UTM, always_xy=True)
    planar = shapely.transform(f.geometry, lambda xy: np.column_stack(to_utm.transform(*xy.T)))
    assert f.area_m2 is not None and f.area_m2 > 0
    assert f.area_m2 == pytest.approx(planar.area, rel=2e-3)       # UTM scale k0 = 0.9996
    assert f.perimeter_m == pytest.approx(planar.length, rel=2e-3)
    assert 500 < f.area_m2 < 560                                   # 600 px of ~0.87 m²


def test_cluster_larger_than_halo_warns(caplog: pytest.LogCaptureFixture) -> None:
    classes = np.zeros((48, 48), dtype=np.uint8)
    classes[4:40, 4:12] = BUILDING                        # 36 px tall, halo only 8
    grid = utm_grid(classes.shape)
    with caplog.at_level(logging.WARNING, logger="geoseg.vectorize.footprints"):
        feats = run_chunks(classes, prob_of(classes), grid, chunk=16, halo=8)
    assert [f.id for f in feats] == ["b4_4"]              # still emitted, by its owner
    assert "chunk 0_0" in caplog.text and "enlarge" in caplog.text


def test_bad_inputs_raise_input_error() -> None:
    grid = utm_grid((32, 32))
    classes = np.zeros((32, 32), dtype=np.uint8)
    prob = prob_of(classes)
    chunk = Chunk((0, 0), Window(0, 0, 16, 16))
    kw: dict[str, Any] = {"building_id": BUILDING, "boundary_id": BOUNDARY}
    with pytest.raises(InputError):                       # context outside the grid
        extract_buildings(classes, prob, Window(-4, -4, 32, 32), chunk, grid, **kw)
    with pytest.raises(InputError):                       # chunk not inside the context
        extract_buildings(classes[:8, :8], prob[:8, :8], Window(0, 0, 8, 8), chunk, grid, **kw)
    with pytest.raises(InputError):                       # shape does not match the context
        extract_buildings(classes[:20], prob[:20], grid.window, chunk, grid, **kw)
    with pytest.raises(InputError):
        extract_buildings(classes, prob, grid.window, chunk, grid, building_id=FILL,
                          boundary_id=None)
    with pytest.raises(InputError):
        extract_buildings(classes, prob.astype(float), grid.window, chunk, grid, **kw)


@pytest.mark.parametrize("angle, cx", [(20, 58), (45, 58), (65, 58)])
def test_squared_footprints_stay_inside_the_image(angle: int, cx: int) -> None:
    """A slanted building cut by the image's right edge: squaring it up pushed its corner up
    to 2 m past the edge (off the map); the footprint is clipped to the grid, and its area is
    measured after the clip."""
    grid = utm_grid((64, 64))
    rect = affinity.rotate(shapely.box(cx - 10, 20, cx + 10, 36), angle)
    classes = np.zeros((64, 64), np.uint8)
    classes[rasterio.features.rasterize([rect], out_shape=(64, 64)).astype(bool)] = BUILDING
    (f,) = extract_buildings(classes, prob_of(classes), grid.window,
                             Chunk((0, 0), grid.window), grid, building_id=BUILDING,
                             boundary_id=None)
    left, top = grid.transform.c, grid.transform.f
    image = shapely.box(left, top - 64 * 0.5, left + 64 * 0.5, top)
    assert f.geometry.is_valid and f.geometry.difference(image).area < 1e-9
    assert f.geometry.bounds[2] == pytest.approx(left + 32)  # it still reaches the edge
    assert f.area_m2 == pytest.approx(f.geometry.area)
