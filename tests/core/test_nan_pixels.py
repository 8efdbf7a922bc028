"""NaN and ±inf pixels are never valid input, declared nodata or not (issue 13 C)."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from geoseg.grid import ChunkGrid, Window
from geoseg.io import open_info, read_window
from geoseg.outputs import NODATA_RGB, _image_panel
from tests.conftest import write_raster


def _float_image(h: int = 48, w: int = 40) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(yy + xx + 10 * b).astype(np.float32) for b in range(4)])
    img[:, 5, 7] = np.nan          # all bands
    img[2, 9, 3] = np.nan          # one band only
    img[1, 20, 20] = np.inf
    img[3, 30, 11] = -np.inf
    img[:, 40:, :] = np.nan        # a NaN collar
    return img


BAD = [(5, 7), (9, 3), (20, 20), (30, 11)]


@pytest.mark.parametrize("nodata", [None, float("nan")])
def test_nan_and_inf_are_invalid(tmp_path: Path, nodata: float | None) -> None:
    tif = write_raster(tmp_path / "f.tif", _float_image(), nodata=nodata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "declares no nodata value"
        info = open_info(tif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy cast/invalid-value warning leaks
        data, valid = read_window(info, Window(-4, -4, 56, 48), (1, 2, 3, 4), fill=-1.0)
    assert np.isfinite(data).all()
    for r, c in BAD:
        assert not valid[r + 4, c + 4] and (data[:, r + 4, c + 4] == -1).all()
    # outside the image, and the NaN collar (image rows 40..47), are invalid; the rest is valid
    assert not valid[44:].any() and not valid[:4].any() and not valid[:, :4].any()
    assert valid.sum() == 40 * 40 - len(BAD)
    assert data[0, 4, 4] == 0.0 and data[1, 4 + 10, 4 + 2] == 10 + 12


def test_no_nodata_warning_says_nan_is_excepted(tmp_path: Path) -> None:
    tif = write_raster(tmp_path / "f.tif", _float_image())
    with pytest.warns(UserWarning, match="except NaN/inf"):
        open_info(tif)


def test_quicklook_panel_with_nan_nodata_is_not_black(tmp_path: Path) -> None:
    img = _float_image()[:3]
    tif = write_raster(tmp_path / "f.tif", img, nodata=float("nan"))
    plan = SimpleNamespace(image=open_info(str(tif)), offset=Window(0, 0, 48, 40),
                           chunks=ChunkGrid((48, 40), 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        panel = _image_panel(plan, 1, (48, 40))  # type: ignore[arg-type]
    assert panel.dtype == np.uint8 and panel.shape == (48, 40, 3)
    assert (panel[40:] == NODATA_RGB).all() and (panel[5, 7] == NODATA_RGB).all()
    assert (panel[20, 20] == NODATA_RGB).all()  # inf in one band
    ok = panel[:40].reshape(-1, 3)
    assert ok.max() == 255 and ok.min() == 0  # stretched over the valid values
    row = panel[10, :, 0].astype(int)
    assert (np.diff(row) >= 0).all() and row[-1] - row[0] > 100


def test_quicklook_panel_ignores_declared_nodata(tmp_path: Path) -> None:
    img = (np.arange(40)[None, None, :] * np.ones((3, 48, 1)) + 100).astype(np.uint16)
    img[:, :12] = 0  # a nodata collar would pull the 2 % point to 0
    tif = write_raster(tmp_path / "u.tif", img, nodata=0)
    plan = SimpleNamespace(image=open_info(str(tif)), offset=Window(0, 0, 48, 40),
                           chunks=ChunkGrid((48, 40), 16))
    panel = _image_panel(plan, 1, (48, 40))  # type: ignore[arg-type]
    assert (panel[:12] == NODATA_RGB).all()
    assert panel[20, -1, 0] == 255 and panel[20, 0, 0] == 0
