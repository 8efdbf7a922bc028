"""Runs on different grids are aligned explicitly; no overlap and different classes fail."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from pyproj import CRS

from geoseg.bundle import ClassSpec
from geoseg.change import compare_runs
from geoseg.errors import InputError, RegionError
from tests.change.conftest import CLASSES, SHAPE, T_A, make_run, pattern, shifted

# B: origin 10.3 px right and 7.6 px down of A's, larger than the rest of A (sticks out)
B_SHAPE = (100, 130)
B_COLS, B_ROWS = 10.3, 7.6


def _read(out: Path, name: str) -> np.ndarray:
    arr = zarr.open_group(str(out / "change.zarr"), mode="r")[name]
    assert isinstance(arr, zarr.Array)
    return np.asarray(arr[...])


def _expected_on(dst_shape: tuple[int, int], src: np.ndarray, d_cols: float,
                 d_rows: float) -> np.ndarray:
    """Nearest neighbour: the source pixel containing each destination pixel centre, where
    the source origin is (d_cols, d_rows) destination pixels from the destination origin."""
    rr, cc = np.mgrid[0:dst_shape[0], 0:dst_shape[1]]
    sr = np.floor(rr + 0.5 - d_rows).astype(int)
    sc = np.floor(cc + 0.5 - d_cols).astype(int)
    inside = (sr >= 0) & (sr < src.shape[0]) & (sc >= 0) & (sc < src.shape[1])
    out = np.full(dst_shape, 255, np.uint8)
    out[inside] = src[sr[inside], sc[inside]]
    return out


@pytest.fixture()
def shifted_runs(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    a_cls = pattern(SHAPE, 3)
    b_cls = pattern(B_SHAPE, 4)
    a = make_run(tmp_path / "a", a_cls)
    b = make_run(tmp_path / "b", b_cls, transform=shifted(B_COLS, B_ROWS), chunk=64,
                 date="2024-06-01")
    return a, b, a_cls, b_cls


def test_shifted_grid_resampled_onto_a(tmp_path: Path,
                                       shifted_runs: tuple[Path, Path, np.ndarray, np.ndarray]
                                       ) -> None:
    a, b, a_cls, b_cls = shifted_runs
    res = compare_runs(a, b, tmp_path / "out", min_change_width=1)  # every differing pixel
    g = res.summary["grid"]
    assert g["mode"] == "resampled" and g["target"] == "a" and g["resampling"] == "nearest"
    assert "resampled b onto a's grid" in g["message"]
    expected_b = _expected_on(SHAPE, b_cls, B_COLS, B_ROWS)
    to_cls = _read(res.output, "to_class")
    np.testing.assert_array_equal(to_cls, expected_b)
    changed = _read(res.output, "changed")
    outside = expected_b == 255
    assert outside.any() and (changed[outside] == 255).all()
    np.testing.assert_array_equal(changed[~outside], (a_cls != expected_b)[~outside])
    assert res.summary["areas"]["unknown"]["pixels"] == int(outside.sum())
    with rasterio.open(f'ZARR:"{res.store}":/changed') as src:
        assert src.shape == SHAPE and src.transform.almost_equals(T_A, precision=1e-9)


def test_grid_b_gives_bs_grid(tmp_path: Path,
                              shifted_runs: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    import rioxarray  # noqa: F401
    import xarray as xr

    a, b, a_cls, b_cls = shifted_runs
    res = compare_runs(a, b, tmp_path / "out", grid="b")
    g = res.summary["grid"]
    assert g["target"] == "b" and "resampled a onto b's grid" in g["message"]
    ds = xr.open_zarr(res.store, decode_coords="all", mask_and_scale=False)
    assert ds["changed"].shape == B_SHAPE
    assert ds["changed"].rio.transform().almost_equals(shifted(B_COLS, B_ROWS), precision=1e-9)
    assert int(ds.attrs["chunk_size"]) == 64
    expected_a = _expected_on(B_SHAPE, a_cls, -B_COLS, -B_ROWS)
    np.testing.assert_array_equal(_read(res.output, "from_class"), expected_a)
    np.testing.assert_array_equal(_read(res.output, "to_class")[expected_a != 255],
                                  b_cls[expected_a != 255])
    assert (_read(res.output, "changed")[expected_a == 255] == 255).all()


def test_same_lattice_other_extent_is_copied(tmp_path: Path) -> None:
    a_cls = pattern(SHAPE, 5)
    b_cls = pattern((80, 100), 6)
    a = make_run(tmp_path / "a", a_cls)
    b = make_run(tmp_path / "b", b_cls, transform=shifted(40, -16), date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out")
    assert res.summary["grid"]["mode"] == "window"
    expected = np.full(SHAPE, 255, np.uint8)
    expected[0:64, 40:128] = b_cls[16:80, 0:88]
    np.testing.assert_array_equal(_read(res.output, "to_class"), expected)


def test_other_crs_is_reprojected(tmp_path: Path) -> None:
    from pyproj import Transformer

    a = make_run(tmp_path / "a", np.zeros(SHAPE, np.uint8))
    # B in the neighbouring UTM zone, covering A's centre, 1 m pixels, all water
    t = Transformer.from_crs(32633, 32632, always_xy=True)
    x, y = t.transform(500000.0 + 32.0, 5100000.0 - 24.0)
    b_crs = CRS.from_epsg(32632)
    b = make_run(tmp_path / "b", np.full((40, 40), 4, np.uint8), crs=b_crs,
                 transform=Affine(1.0, 0, math.floor(x) - 20.0, 0, -1.0, math.floor(y) + 20.0),
                 date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out")
    assert res.summary["grid"]["mode"] == "resampled" and "CRS" in res.summary["grid"]["message"]
    changed = _read(res.output, "changed")
    assert changed[48, 64] == 1 and changed[0, 0] == 255
    assert res.summary["transitions_m2"]["bare"]["water"] > 1000 * 0.25


def test_no_overlap_is_a_region_error(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", pattern(SHAPE))
    b = make_run(tmp_path / "b", pattern(SHAPE), transform=shifted(500.0, 0.0))
    with pytest.raises(RegionError, match="do not overlap") as err:
        compare_runs(a, b, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    # bounds as written (no exponent, no rounding to whole metres), each in its CRS
    assert "e+" not in str(err.value) and " in EPSG:" in str(err.value), err.value


def test_touching_grids_do_not_overlap(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", pattern(SHAPE))
    b = make_run(tmp_path / "b", pattern(SHAPE), transform=shifted(SHAPE[1], 0.0))
    with pytest.raises(RegionError):
        compare_runs(a, b, tmp_path / "out")


def test_different_class_schemes_are_refused(tmp_path: Path) -> None:
    other = (*CLASSES[:4], ClassSpec(id=4, name="snow", color="#ffffff"))
    a = make_run(tmp_path / "a", pattern(SHAPE))
    b = make_run(tmp_path / "b", pattern(SHAPE), classes=other)
    with pytest.raises(InputError, match="different land-cover classes") as exc:
        compare_runs(a, b, tmp_path / "out")
    assert "\n" not in str(exc.value)


def test_not_a_run_is_refused(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", pattern(SHAPE))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no predictions\.zarr"):
        compare_runs(a, tmp_path / "empty", tmp_path / "out")


def test_aligned_codes_read_any_slice(tmp_path: Path) -> None:
    from geoseg.change.align import AlignedCodes
    from geoseg.change.runs import open_run
    from geoseg.grid import GeoBox

    b = make_run(tmp_path / "b", pattern(B_SHAPE, 4), transform=shifted(B_COLS, B_ROWS))
    view = AlignedCodes(open_run(b, "b"), GeoBox(SHAPE, T_A, CRS.from_epsg(32633)), "resampled")
    full = view[0:SHAPE[0], 0:SHAPE[1]]
    np.testing.assert_array_equal(view[slice(33, 64, 3), slice(1, 120, 5)],
                                  full[33:64:3, 1:120:5])
    np.testing.assert_array_equal(full >> 8, _expected_on(SHAPE, pattern(B_SHAPE, 4), B_COLS,
                                                          B_ROWS))


def test_a_tiny_negative_offset_is_named_as_it_is(tmp_path: Path) -> None:
    """B's origin 1e-5 px left of A's lattice was reported 'off by (1.000, 0.000) px' (a
    negative offset taken modulo 1); the message gives the signed offset."""
    cls = pattern(SHAPE, seed=1)
    a = make_run(tmp_path / "a", cls)
    b = make_run(tmp_path / "b", cls, date="2024-06-01",
                 transform=Affine(T_A.a, 0, T_A.c - 0.5e-5, 0, T_A.e, T_A.f))
    msg = compare_runs(a, b, tmp_path / "out").summary["grid"]["message"]
    assert "origin off the pixel lattice by (-1e-05, 0) px" in msg, msg
