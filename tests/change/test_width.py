"""The minimum change width: a binary opening of the change mask, exact across chunks."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage

from geoseg.change import compare_runs
from geoseg.change.raster import change_arrays
from geoseg.errors import InputError
from tests.change.conftest import SHAPE, make_run


def _inputs(a: np.ndarray, b: np.ndarray, chunk: int) -> dict[str, xr.DataArray]:
    conf = np.full(a.shape, 200, np.uint8)
    return {k: xr.DataArray(da.from_array(v, chunks=chunk), dims=("y", "x"))
            for k, v in (("a_class", a), ("b_class", b), ("a_conf", conf), ("b_conf", conf))}


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)),
              elements=st.integers(0, 1)),
       st.integers(1, 6), st.integers(3, 17))
def test_blockwise_equals_whole_array_opening(diff: np.ndarray, width: int, chunk: int) -> None:
    a = np.zeros(diff.shape, np.uint8)
    layers = change_arrays(_inputs(a, diff, chunk), threshold=0, min_width=width)
    got = np.asarray(layers["changed"].compute(scheduler="sync"))
    want = ndimage.binary_opening(diff.astype(bool), structure=np.ones((width, width), bool),
                                  border_value=0)
    np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_thin_differences_are_no_change(tmp_path: Path) -> None:
    a_cls = np.zeros(SHAPE, np.uint8)
    b_cls = a_cls.copy()
    b_cls[10:30, 10:30] = 3  # a 20×20 px change: kept
    b_cls[50:52, :] = 2  # a boundary drawn 2 px apart: not a change at width 3
    a = make_run(tmp_path / "a", a_cls, chunk=32)
    b = make_run(tmp_path / "b", b_cls, chunk=32, date="2024-06-01")
    res = compare_runs(a, b, tmp_path / "out", min_change_width=3)
    g = zarr.open_group(str(res.store), mode="r")
    changed = np.asarray(g["changed"][...])  # type: ignore[index]
    assert changed[10:30, 10:30].all() and changed.sum() == 400
    assert (np.asarray(g["to_class"][50:52, :]) == 2).all()  # type: ignore[index]
    m = res.summary["transitions_m2"]  # the sliver counts as bare -> bare
    assert m["bare"]["vegetation"] == pytest.approx(400 * 0.25)
    assert m["bare"]["road"] == 0.0
    assert m["bare"]["bare"] == pytest.approx((SHAPE[0] * SHAPE[1] - 400) * 0.25)
    assert res.summary["min_change_width_px"] == 3
    raw = compare_runs(a, b, tmp_path / "raw", min_change_width=1)
    assert raw.summary["transitions_m2"]["bare"]["road"] == pytest.approx(2 * SHAPE[1] * 0.25)


def test_bad_width_is_refused(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", np.zeros(SHAPE, np.uint8))
    with pytest.raises(InputError, match="min_change_width"):
        compare_runs(a, a, tmp_path / "out", min_change_width=0)
