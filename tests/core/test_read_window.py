"""``read_window`` against its definition: rasterio's boundless read, the fill outside the
image and at nodata pixels, ``valid`` exactly where a pixel is inside and not nodata; for
windows inside the image (the fast path), partly outside and wholly outside."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from hypothesis import example, given, settings
from hypothesis import strategies as st
from rasterio.windows import Window as RioWindow

from geoseg.grid import Window
from geoseg.io import RasterInfo, open_info, read_window
from tests.conftest import write_raster

H, W = 70, 90


@pytest.fixture(scope="module")
def rasters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RasterInfo]:
    root = tmp_path_factory.mktemp("read-window")
    rng = np.random.default_rng(4)
    img = rng.integers(1, 4000, (3, H, W)).astype(np.uint16)
    holes = img.copy()
    holes[:, 10:14, 20:30] = 7  # nodata in every band: invalid
    holes[1, 40, 40] = 7        # nodata in one band: invalid only when read alone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "declares no nodata value"
        return {"plain": open_info(write_raster(root / "plain.tif", img)),
                "nodata": open_info(write_raster(root / "nodata.tif", holes, nodata=7))}


@settings(max_examples=60, deadline=None)
@example(kind="nodata", row=30, col=30, h=20, w=20, bands=(2,))   # the one-band hole, inside
@example(kind="nodata", row=-5, col=15, h=30, w=30, bands=(1, 2, 3))  # holes at a border
@example(kind="plain", row=0, col=0, h=H, w=W, bands=(1, 2, 3))   # the whole image
@given(kind=st.sampled_from(["plain", "nodata"]), row=st.integers(-40, H + 5),
       col=st.integers(-40, W + 5), h=st.integers(1, 60), w=st.integers(1, 60),
       bands=st.sampled_from([(1, 2, 3), (3, 1), (2,)]))
def test_read_window_is_the_masked_boundless_read(rasters: dict[str, RasterInfo], kind: str,
                                                  row: int, col: int, h: int, w: int,
                                                  bands: tuple[int, ...]) -> None:
    info = rasters[kind]
    data, valid = read_window(info, Window(row, col, h, w), bands, fill=-5.0)
    with rasterio.open(info.path) as src:
        raw = src.read(list(bands), window=RioWindow(col, row, w, h), boundless=True,
                       fill_value=0)
    rr, cc = np.mgrid[row:row + h, col:col + w]
    inside = (rr >= 0) & (rr < H) & (cc >= 0) & (cc < W)
    # nodata: every band read holds the nodata value
    want_valid = inside & ~np.all(raw == 7, axis=0) if kind == "nodata" else inside
    want = np.where(want_valid[None], raw.astype(np.float32), np.float32(-5.0))
    assert data.dtype == np.float32 and data.shape == (len(bands), h, w)
    assert valid.dtype == bool and np.array_equal(valid, want_valid)
    assert np.array_equal(data, want)
