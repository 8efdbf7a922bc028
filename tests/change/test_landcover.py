"""Land-cover change: zero change for identical inputs, exact areas, unknown never 'no change'."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from geoseg.area import pixel_areas_by_row as row_areas_m2
from geoseg.change import compare_runs
from geoseg.change.raster import confidence_threshold
from geoseg.errors import InputError
from geoseg.grid import GeoBox
from tests.change.conftest import SHAPE, make_run, pattern

PX_M2 = 0.25


def _read(out: Path, name: str) -> np.ndarray:
    arr = zarr.open_group(str(out / "change.zarr"), mode="r")[name]
    assert isinstance(arr, zarr.Array)
    return np.asarray(arr[...])


def test_identical_inputs_zero_change(tmp_path: Path) -> None:
    cls = pattern(SHAPE)
    a = make_run(tmp_path / "a", cls, chunk=32)
    b = make_run(tmp_path / "b", cls, chunk=64, date="2024-06-01")  # other chunking, same grid
    res = compare_runs(a, b, tmp_path / "out")
    assert res.summary["grid"]["mode"] == "identical"
    assert (_read(res.output, "changed") == 0).all()
    np.testing.assert_array_equal(_read(res.output, "from_class"), cls)
    np.testing.assert_array_equal(_read(res.output, "to_class"), cls)
    m = res.summary["transitions_m2"]
    for f, row in m.items():
        for t, v in row.items():
            assert v == 0 or f == t
    areas = res.summary["areas"]
    assert areas["changed"]["m2"] == 0 and areas["unknown"]["m2"] == 0
    assert areas["unchanged"]["m2"] == pytest.approx(SHAPE[0] * SHAPE[1] * PX_M2)


def test_handmade_change_has_exact_areas(tmp_path: Path) -> None:
    a_cls = np.full(SHAPE, 3, np.uint8)
    b_cls = a_cls.copy()
    b_cls[10:20, 30:50] = 0  # 200 px vegetation -> bare (spans a chunk border)
    b_cls[60:65, 100:104] = 4  # 20 px vegetation -> water
    a = make_run(tmp_path / "a", a_cls)
    b = make_run(tmp_path / "b", b_cls, date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out")
    m = res.summary["transitions_m2"]
    assert m["vegetation"]["bare"] == pytest.approx(200 * PX_M2)
    assert m["vegetation"]["water"] == pytest.approx(20 * PX_M2)
    assert m["vegetation"]["vegetation"] == pytest.approx((SHAPE[0] * SHAPE[1] - 220) * PX_M2)
    assert res.summary["areas"]["changed"]["ha"] == pytest.approx(220 * PX_M2 / 1e4)
    changed = _read(res.output, "changed")
    assert changed.sum() == 220 and set(np.unique(changed)) == {0, 1}
    assert (_read(res.output, "to_class")[10:20, 30:50] == 0).all()
    with (res.output / "transitions.csv").open() as fh:
        rows = {(r["from_class"], r["to_class"]): r for r in csv.DictReader(fh)}
    assert float(rows["vegetation", "bare"]["area_m2"]) == pytest.approx(50.0)
    assert float(rows["vegetation", "bare"]["area_ha"]) == pytest.approx(0.005)
    assert int(rows["vegetation", "water"]["pixels"]) == 20
    assert float(rows["unknown", "unknown"]["area_m2"]) == 0
    summary = json.loads((res.output / "change_summary.json").read_text())
    assert summary["transitions_m2"]["vegetation"]["bare"] == pytest.approx(50.0)
    assert set(summary["timings_s"]) >= {"landcover_s", "buildings_s", "total_s"}


def test_nodata_and_low_confidence_are_unknown(tmp_path: Path) -> None:
    a_cls = np.full(SHAPE, 3, np.uint8)
    a_cls[0:8, :] = 255  # nodata collar at date a
    b_cls = np.full(SHAPE, 0, np.uint8)  # everything changed where known
    b_conf = np.full(SHAPE, 230, np.uint8)
    b_conf[40:50, 0:20] = 127  # just below 0.5
    b_conf[50:60, 0:20] = 128  # just at 0.5 (128/255 >= 0.5)
    a = make_run(tmp_path / "a", a_cls, 200)
    b = make_run(tmp_path / "b", b_cls, b_conf, date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out", min_confidence=0.5, min_change_confidence=0.0)
    changed = _read(res.output, "changed")
    assert (changed[0:8] == 255).all() and (changed[40:50, 0:20] == 255).all()
    assert (changed[50:60, 0:20] == 1).all()
    assert (_read(res.output, "from_class")[40:50, 0:20] == 255).all()
    assert not (changed == 0).any()  # unknown is never "no change"
    n_unknown = 8 * SHAPE[1] + 10 * 20
    assert (changed == 255).sum() == n_unknown
    assert res.summary["areas"]["unknown"]["m2"] == pytest.approx(n_unknown * PX_M2)
    conf = _read(res.output, "confidence")
    assert conf[0, 0] == 0 and conf[45, 5] == 127 and conf[20, 20] == 200


def test_confidence_threshold() -> None:
    assert confidence_threshold(0.5) == 128
    assert confidence_threshold(0.0) == 0
    assert confidence_threshold(1.0) == 255
    assert confidence_threshold(100 / 255) == 100
    with pytest.raises(InputError, match="min_confidence"):
        confidence_threshold(1.5)


def test_geographic_row_areas() -> None:
    import shapely
    from affine import Affine
    from pyproj import CRS

    from geoseg.area import ground_area_m2

    crs = CRS.from_epsg(4326)
    grid = GeoBox((40, 10), Affine(0.001, 0, 15.0, 0, -0.001, 60.0), crs)
    rows = row_areas_m2(grid)
    assert isinstance(rows, np.ndarray) and rows[0] < rows[-1]  # smaller towards the pole
    whole = ground_area_m2(shapely.box(15.0, 59.96, 15.01, 60.0), crs)
    assert math.isclose(float(rows.sum()) * 10, whole, rel_tol=1e-6)


def test_store_opens_in_xarray_and_gdal(tmp_path: Path) -> None:
    import rioxarray  # noqa: F401
    import xarray as xr
    from pyproj import CRS

    a = make_run(tmp_path / "a", pattern(SHAPE, 1))
    b = make_run(tmp_path / "b", pattern(SHAPE, 2), date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out")
    store = res.output / "change.zarr"
    from tests.change.conftest import T_A

    ds = xr.open_zarr(store, decode_coords="all", mask_and_scale=False)
    for name in ("from_class", "to_class", "changed", "confidence"):
        da = ds[name]
        assert da.shape == SHAPE and da.dtype == np.uint8
        assert CRS.from_wkt(da.rio.crs.to_wkt()) == CRS.from_epsg(32633)
        assert da.rio.transform().almost_equals(T_A, precision=1e-9)
    with rasterio.open(f'ZARR:"{store}":/changed') as src:
        assert src.shape == SHAPE and src.nodata == 255
        assert src.transform.almost_equals(T_A, precision=1e-9)
        assert CRS.from_wkt(src.crs.to_wkt()) == CRS.from_epsg(32633)
        np.testing.assert_array_equal(src.read(1), _read(res.output, "changed"))


def test_geographic_grid_uses_ground_areas(tmp_path: Path) -> None:
    import shapely
    from affine import Affine
    from pyproj import CRS

    from geoseg.area import ground_area_m2

    crs = CRS.from_epsg(4326)
    t = Affine(1e-5, 0, 15.0, 0, -1e-5, 60.0)
    a_cls = np.full(SHAPE, 3, np.uint8)
    b_cls = a_cls.copy()
    b_cls[:, :64] = 0  # west half changes
    a = make_run(tmp_path / "a", a_cls, crs=crs, transform=t)
    b = make_run(tmp_path / "b", b_cls, crs=crs, transform=t, date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out")
    h, w = SHAPE
    whole = ground_area_m2(shapely.box(15.0, 60.0 - h * 1e-5, 15.0 + w * 1e-5, 60.0), crs)
    areas = res.summary["areas"]
    assert areas["total"]["m2"] == pytest.approx(whole, rel=1e-6)
    assert areas["changed"]["m2"] == pytest.approx(whole / 2, rel=1e-6)
    assert res.summary["transitions_m2"]["vegetation"]["bare"] == pytest.approx(whole / 2,
                                                                                rel=1e-6)


def test_low_confidence_flips_are_uncertain_not_changed(tmp_path: Path) -> None:
    a_cls = np.full(SHAPE, 3, np.uint8)
    b_cls = np.full(SHAPE, 3, np.uint8)
    b_cls[0:20, :] = 0                   # a confident change
    b_cls[40:60, :] = 0                  # a flip at low confidence on date b
    b_conf = np.full(SHAPE, 240, np.uint8)
    b_conf[40:60, :] = 150               # 0.59: known (>= 0.5) but below 0.8
    b_conf[80:90, :] = 150               # low confidence, same class: plain "no change"
    a = make_run(tmp_path / "a", a_cls, 240)
    b = make_run(tmp_path / "b", b_cls, b_conf, date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out", min_confidence=0.5, min_change_confidence=0.8)
    changed = _read(res.output, "changed")
    assert (changed[0:20] == 1).all() and (changed[40:60] == 2).all()
    assert (changed[80:90] == 0).all() and (changed[20:40] == 0).all()
    areas = res.summary["areas"]
    assert areas["changed"]["pixels"] == 20 * SHAPE[1]
    assert areas["uncertain"]["pixels"] == 20 * SHAPE[1]
    assert areas["uncertain"]["m2"] == pytest.approx(20 * SHAPE[1] * PX_M2)
    assert res.summary["min_change_confidence"] == 0.8
    every = compare_runs(a, b, tmp_path / "out0", min_change_confidence=0.0)  # old behaviour
    assert every.summary["areas"]["changed"]["pixels"] == 40 * SHAPE[1]
    assert every.summary["areas"]["uncertain"]["pixels"] == 0
