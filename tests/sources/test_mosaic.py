"""Mosaics of overlapping images in two UTM zones: output grid, the three combining rules pixel
by pixel, hole filling, source indices, window-only reads, chunking invariance, pickling."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import shapely
from pyproj import CRS, Transformer

import geoseg.sources.warp as warp
from geoseg.errors import GeoSegWarning
from geoseg.grid import Window
from geoseg.io import RasterInfo, open_info, read_window
from geoseg.sources import open_source
from geoseg.sources.mosaic import Mosaic, read_window_sources
from tests.sources.conftest import B_HOLE, UTM32, UTM33, Scene

ORDER = {"first": (0, 1, 2), "latest": (1, 2, 0), "least-nodata": (2, 0, 1)}


def _mosaic(scene: Scene, rule: str = "first", **kw: Any) -> Mosaic:
    m = open_source([str(scene.a), str(scene.b), str(scene.c)], mosaic=rule, **kw)
    assert isinstance(m, Mosaic)
    return m


def _expected(scene: Scene, m: Mosaic) -> tuple[list[np.ndarray], np.ndarray]:
    """Per item: validity at each output pixel centre (exact), and the pixels where B's answer
    is ambiguous (centre within 0.01 px of a B pixel edge)."""
    g = m.geobox
    rr, cc = np.mgrid[0:g.height, 0:g.width]
    x, y = g.transform @ (cc + 0.5, rr + 0.5)

    def aligned(data: np.ndarray, t: object) -> np.ndarray:
        col, row = ~t @ (x, y)  # type: ignore[operator]
        r, c = np.floor(row).astype(int), np.floor(col).astype(int)
        inside = (r >= 0) & (r < 64) & (c >= 0) & (c < 64)
        ok = np.zeros(g.shape, bool)
        ok[inside] = data[:, r[inside], c[inside]].any(axis=0)
        return ok

    bx, by = Transformer.from_crs(UTM33, UTM32, always_xy=True).transform(x, y)
    bc, br = ~scene.b_transform @ (bx, by)
    ambiguous = (np.abs(bc - np.round(bc)) < 0.01) | (np.abs(br - np.round(br)) < 0.01)
    r, c = np.floor(br).astype(int), np.floor(bc).astype(int)
    hole = np.zeros((48, 48), bool)
    hole[B_HOLE] = True
    inside = (r >= 0) & (r < 48) & (c >= 0) & (c < 48)
    b_ok = np.zeros(g.shape, bool)
    b_ok[inside] = ~hole[r[inside], c[inside]]
    return [aligned(scene.a_data, scene.a_transform), b_ok,
            aligned(scene.c_data, scene.c_transform)], ambiguous


def test_output_grid_is_the_first_items_grid_over_the_union(scene: Scene) -> None:
    with pytest.warns(GeoSegWarning, match=r"2 CRSs .* pass --crs"):  # said, not refused
        m = _mosaic(scene)
    a = open_info(scene.a)
    g = m.geobox
    assert g.crs == CRS.from_user_input(UTM33) and g.resolution == (10.0, 10.0)
    col, row = ~a.geobox.transform @ (g.transform.c, g.transform.f)
    assert col == round(col) and row == round(row)  # aligned with A
    grid_box = shapely.box(*(lambda b: (b.left, b.bottom, b.right, b.top))(g.bounds))
    union = shapely.union_all([it.footprint for it in m.items])
    assert grid_box.buffer(1e-6).contains(union)
    minx, miny, maxx, maxy = union.bounds
    b = g.bounds
    assert max(minx - b.left, b.right - maxx, miny - b.bottom, b.top - maxy) < 10  # < 1 px
    assert m.count == 2 and m.band_names == ("red", "nir") and m.dtype == "uint8"
    assert m.acquisition_date == "2020-01-01/2020-03-01"
    assert [it.id for it in m.items] == ["a", "b", "c"]


def test_grid_override_crs_and_resolution(scene: Scene) -> None:
    m = _mosaic(scene, crs=UTM32, resolution=20.0)
    g = m.geobox
    assert g.crs == CRS.from_user_input(UTM32) and g.resolution == (20.0, 20.0)
    assert g.transform.c % 20 == 0 and g.transform.f % 20 == 0  # -tap alignment
    data, valid, source, _ = read_window_sources(m, g.window, (1, 2))
    assert valid.any() and set(np.unique(source)) == {0, 1, 2, 3}
    assert np.all(data[0][source == 2] == 200)


def test_a_resolution_in_other_units_is_one_line(scene: Scene) -> None:
    """0.5 meant as metres on a degree grid is 0.5° (~55 km: a 1×1 px run that looked
    complete); 1e-4 meant as degrees on a metre grid: both refused, with the pixel size in
    the grid's units."""
    from geoseg.errors import InputError

    with pytest.raises(InputError, match=r"--resolution 0.5 is in degrees of EPSG:4326, where "
                                         r"the images' pixels are about 0.000111 degrees"):
        _mosaic(scene, crs="EPSG:4326", resolution=0.5)
    with pytest.raises(InputError, match=r"0.0001 is in metres .* about 10 metres: give the "
                                         r"pixel size in those units \(e.g. --resolution 10\)"):
        _mosaic(scene, crs=UTM32, resolution=1e-4)
    assert _mosaic(scene, crs=UTM32, resolution=300.0).geobox.resolution == (300.0, 300.0)


@pytest.mark.parametrize("rule", ["first", "latest", "least-nodata"])
def test_rules_pixel_by_pixel(scene: Scene, rule: str) -> None:
    m = _mosaic(scene, rule)
    assert m.order == ORDER[rule]
    data, valid, source, used = read_window_sources(m, m.geobox.window, (1, 2), fill=-1.0)
    ok, ambiguous = _expected(scene, m)
    expect = np.zeros(m.geobox.shape, np.uint16)
    for i in reversed(ORDER[rule]):  # highest priority written last
        expect[ok[i]] = i + 1
    wrong = (source != expect) & ~ambiguous
    assert not wrong.any(), f"{wrong.sum()} pixels from the wrong item"
    assert ambiguous.mean() < 0.05
    assert np.array_equal(valid, source > 0)
    assert np.all(data[:, ~valid] == -1.0)
    # values: A and C exactly their own pixels (same grid), B its constants
    g = m.geobox
    for i, (arr, t) in {0: (scene.a_data, scene.a_transform),
                        2: (scene.c_data, scene.c_transform)}.items():
        col, row = ~t @ (g.transform.c, g.transform.f)
        rows, cols = np.nonzero(source == i + 1)
        src = arr[:, rows + round(row), cols + round(col)]
        assert np.array_equal(data[:, rows, cols], src.astype(np.float32))
    assert np.all(data[0][source == 2] == 200) and np.all(data[1][source == 2] == 201)
    assert [u.index for u in used] == [1, 2, 3]
    assert [(u.id, u.datetime) for u in used] == [
        ("a", "2020-01-01"), ("b", "2020-03-01"), ("c", "2020-02-01")]


def test_nodata_hole_is_filled_from_the_next_item(scene: Scene) -> None:
    m = _mosaic(scene, "first")
    a = open_info(scene.a)
    col, row = ~m.geobox.transform @ (a.geobox.transform.c, a.geobox.transform.f)
    hole = Window(round(row) + 8, round(col) + 8, 12, 12)  # A's nodata hole
    data, valid, source, used = read_window_sources(m, hole, (1, 2))
    assert valid.all() and np.all(source == 2) and np.all(data[0] == 200)
    assert [u.id for u in used] == ["b"]


def test_window_reads_only_intersecting_items(scene: Scene,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    m = _mosaic(scene, "latest")
    a = open_info(scene.a)
    col, row = ~m.geobox.transform @ (a.geobox.transform.c, a.geobox.transform.f)
    # a window inside A, east of B and north of C: only A may be read
    win = Window(round(row) + 2, round(col) + 55, 6, 6)
    assert m.candidates(win) == [0]
    read: list[str] = []
    real = warp.read_onto

    def spy(info: RasterInfo, *args: object, **kw: object) -> object:
        read.append(info.path)
        return real(info, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(warp, "read_onto", spy)
    _, valid, source, _ = read_window_sources(m, win, (1,))
    assert read == [str(scene.a)] and valid.all() and np.all(source == 1)
    # the first item fills a window: the others are not read at all
    read.clear()
    inside_a = Window(round(row) + 2, round(col) + 2, 4, 4)
    m_first = _mosaic(scene, "first")
    assert len(m_first.candidates(inside_a)) == 2  # B overlaps there too
    read_window_sources(m_first, inside_a, (1,))
    assert read == [str(scene.a)]


def test_chunked_reads_equal_one_whole_read(scene: Scene) -> None:
    """A pixel's value never depends on the window it is read in (chunks, halos)."""
    m = _mosaic(scene, "first")
    whole = read_window_sources(m, m.geobox.window, (1, 2))
    for size, halo in ((16, 0), (23, 5), (40, 7)):
        for r in range(0, m.geobox.height, size):
            for c in range(0, m.geobox.width, size):
                ctx = Window(r, c, size, size).pad(halo)
                data, _, source, _ = read_window_sources(m, ctx, (1, 2))
                core = Window(r, c, size, size).intersect(m.geobox.window)
                rs, cs = core.relative_to(ctx).slices()
                ws, wc = core.slices()
                assert np.array_equal(data[:, rs, cs], whole[0][:, ws, wc])
                assert np.array_equal(source[rs, cs], whole[2][ws, wc])


def test_io_read_window_dispatches_and_boundless(scene: Scene) -> None:
    m = _mosaic(scene)
    win = Window(-5, -5, 30, 30)
    data, valid = read_window(m, win, (2,), fill=7.0)
    d2, v2, _, _ = read_window_sources(m, win, (2,), fill=7.0)
    assert np.array_equal(data, d2) and np.array_equal(valid, v2)
    assert not valid[:5].any() and np.all(data[0, :5] == 7.0)


def test_pickle_round_trip(scene: Scene) -> None:
    m = _mosaic(scene, "least-nodata")
    m.candidates(Window(0, 0, 10, 10))  # builds the (unpicklable-by-design) cached index
    back = pickle.loads(pickle.dumps(m))
    assert back == m and back.order == m.order
    a = read_window_sources(m, Window(10, 10, 50, 60), (1, 2))
    b = read_window_sources(back, Window(10, 10, 50, 60), (1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3], strict=True))
    assert a[3] == b[3]


def test_single_image_is_the_plain_raster_info(scene: Scene) -> None:
    info = open_source([str(scene.a)])
    assert isinstance(info, RasterInfo) and info == open_info(scene.a)
    assert open_source([str(scene.a)], bands=["red", "nir"]) == info


def test_one_item_mosaic_reads_the_same_bytes(scene: Scene) -> None:
    info = open_info(scene.a)
    m = open_source([str(scene.a)], crs=UTM33)
    assert isinstance(m, Mosaic) and m.geobox == info.geobox
    win = Window(-3, 7, 40, 70)
    assert all(np.array_equal(x, y) for x, y in
               zip(read_window(m, win, (2, 1)), read_window(info, win, (2, 1)), strict=True))


def test_band_selection_by_name_and_number(scene: Scene) -> None:
    m = open_source([str(scene.a), str(scene.c)], bands=["nir"])
    assert isinstance(m, Mosaic) and m.count == 1 and m.band_names == ("nir",)
    by_number = open_source([str(scene.a), str(scene.c)], bands=[2])
    assert isinstance(by_number, Mosaic) and by_number.band_names == ("nir",)
    win = Window(0, 0, 40, 40)
    assert np.array_equal(read_window(m, win, (1,))[0], read_window(by_number, win, (1,))[0])


def test_a_file_storing_the_bands_in_another_order_is_read_by_name(scene: Scene) -> None:
    """C stored nir, red (and described so) in a mosaic after A (red, nir): its bands are
    matched by name, so the mosaic reads what it reads with C stored red, nir; a file whose
    bands have other names is refused (by position they would be mixed)."""
    from geoseg.errors import BandMismatchError
    from tests.conftest import write_raster

    swapped = scene.a.with_name("c_swapped.tif")
    write_raster(swapped, scene.c_data[::-1], crs=UTM33, transform=scene.c_transform, nodata=0,
                 descriptions=["nir", "red"], tags={"ACQUISITION_DATE": "2020-02-01"})
    m = open_source([str(scene.a), str(swapped)])
    ref = open_source([str(scene.a), str(scene.c)])
    assert isinstance(m, Mosaic) and m.band_names == ("red", "nir")
    win = Window(0, 0, 70, 90)
    assert all(np.array_equal(x, y) for x, y in
               zip(read_window(m, win, (1, 2)), read_window(ref, win, (1, 2)), strict=True))
    other = scene.a.with_name("c_other.tif")
    write_raster(other, scene.c_data, crs=UTM33, transform=scene.c_transform, nodata=0,
                 descriptions=["green", "swir"])
    with pytest.raises(BandMismatchError, match=r"has bands named green, swir but .*a.tif has "
                                                "red, nir: pick the same bands of each"):
        open_source([str(scene.a), str(other)])
    partly = scene.a.with_name("c_partly.tif")  # nir, (unnamed): by position nir is read as red
    write_raster(partly, scene.c_data[::-1], crs=UTM33, transform=scene.c_transform, nodata=0,
                 descriptions=["nir", ""])
    with pytest.raises(BandMismatchError, match=r"names its bands nir, \(unnamed\) but .*a.tif "
                                                r"red, nir: by position they would be mixed"):
        open_source([str(scene.a), str(partly)])


def test_source_helpers() -> None:
    from geoseg.sources.mosaic import SourceRef, dominant_source, sources_record

    src = np.array([[0, 2, 2], [1, 1, 2], [0, 0, 0]], np.uint16)
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 0, 0]], bool)
    assert dominant_source(src, mask) == 2
    assert dominant_source(src, src == 1) == 1 and dominant_source(src, src == 0) == 0
    refs = (SourceRef(1, "a", "2020-01-01"), SourceRef(2, "b", None))
    assert sources_record(refs) == [{"index": 1, "id": "a", "datetime": "2020-01-01"},
                                    {"index": 2, "id": "b", "datetime": None}]
