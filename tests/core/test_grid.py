from __future__ import annotations

import pytest
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st
from pyproj import CRS

from geoseg.errors import CRSError, InputError
from geoseg.grid import Bounds, ChunkGrid, GeoBox, Window, normalize_crs

UTM = CRS.from_epsg(32633)
T = Affine(0.5, 0, 500000.0, 0, -0.5, 5100000.0)


def test_normalize_crs_forms_agree() -> None:
    assert normalize_crs("EPSG:32633") == normalize_crs(32633) == normalize_crs(UTM.to_wkt())
    with pytest.raises(CRSError, match="no CRS"):
        normalize_crs(None)
    with pytest.raises(CRSError, match="cannot understand"):
        normalize_crs("not a crs")


def test_slicing_keeps_georeferencing() -> None:
    g = GeoBox((100, 200), T, UTM)
    sub = g[Window(10, 20, 30, 40)]
    assert sub.shape == (30, 40)
    assert sub.transform.c == 500000.0 + 20 * 0.5
    assert sub.transform.f == 5100000.0 - 10 * 0.5
    assert sub.crs == UTM


def test_window_of_bounds_roundtrip_and_reprojection() -> None:
    g = GeoBox((100, 200), T, UTM)
    w = Window(10, 20, 30, 40)
    assert g.window_of(g[w].bounds) == w
    # the same rectangle given in lat/lon covers (at least) the window
    ll = g[w].bounds.to_crs(CRS.from_epsg(4326))
    w2 = g.window_of(ll)
    assert w2.contains(w)


def test_rotated_and_empty_rejected() -> None:
    with pytest.raises(InputError, match="rotated"):
        GeoBox((10, 10), Affine(0.5, 0.1, 0, 0, -0.5, 0), UTM)
    with pytest.raises(InputError):
        Bounds(1, 0, 0, 1, UTM)


@given(h=st.integers(1, 300), w=st.integers(1, 300), c=st.integers(1, 128))
def test_chunk_grid_partitions_the_grid(h: int, w: int, c: int) -> None:
    grid = ChunkGrid((h, w), c)
    seen = 0
    for ch in grid:
        assert Window(0, 0, h, w).contains(ch.window)
        assert ch.window.row_off % c == 0 and ch.window.col_off % c == 0
        seen += ch.window.size
    assert seen == h * w  # chunks tile the grid exactly, no overlap, no gap
    assert len(grid) == len(list(grid))


@given(r=st.integers(-50, 50), c=st.integers(-50, 50), h=st.integers(0, 60),
       w=st.integers(0, 60), halo=st.integers(0, 20))
def test_window_algebra(r: int, c: int, h: int, w: int, halo: int) -> None:
    win = Window(r, c, h, w)
    padded = win.pad(halo)
    assert padded.contains(win)
    rel = win.relative_to(padded)
    assert (rel.row_off, rel.col_off) == (halo, halo)
    outer = Window(0, 0, 40, 40)
    inter = win.intersect(outer)
    assert outer.contains(inter) or inter.size == 0
    assert inter.size <= min(win.size, outer.size)


def test_sample_reads_the_pixels_under_points_in_one_window() -> None:
    """GeoBox.sample: the values under points inside the grid, from one bounding read."""
    import numpy as np

    grid = GeoBox((4, 5), Affine(2.0, 0, 100.0, 0, -2.0, 50.0), CRS.from_epsg(32633))
    data = np.arange(20).reshape(4, 5)
    reads: list[Window] = []

    def read(win: Window) -> np.ndarray:
        reads.append(win)
        return data[win.slices()]

    values, inside = grid.sample([101.0, 109.9, 95.0, 103.0], [49.0, 42.1, 49.0, 51.0], read)
    assert inside.tolist() == [True, True, False, False]
    assert values.tolist() == [0, 19] and reads == [Window(0, 0, 4, 5)]
    values, inside = grid.sample([], [], read)
    assert values.size == 0 and not inside.any() and len(reads) == 1
