"""The quicklook's image panel: read chunk by chunk, stretched from the image's own values."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
from affine import Affine

from geoseg.grid import ChunkGrid, Window
from geoseg.io import open_info
from geoseg.outputs import _image_panel


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_image_panel_keeps_the_order_of_any_dtype(tmp_path: Path, dtype: str) -> None:
    h, w = 96, 80
    scale = {"uint8": 2, "uint16": 300, "float32": 0.01}[dtype]
    ramp = (np.arange(w)[None, :] * scale * np.ones((h, 1))).astype(dtype)  # rises left to right
    path = tmp_path / f"img-{dtype}.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype=dtype,
                       crs="EPSG:32633", transform=Affine(0.5, 0, 500000, 0, -0.5, 5100000)
                       ) as dst:
        dst.write(np.stack([ramp] * 3))
    offset = Window(8, 4, 64, 72)  # the output grid is a window of the image
    plan = SimpleNamespace(image=open_info(str(path)), offset=offset,
                           chunks=ChunkGrid((64, 72), 16))
    step = 4
    panel = _image_panel(plan, step, (16, 18))  # type: ignore[arg-type]
    assert panel.shape == (16, 18, 3) and panel.dtype == np.uint8
    row = panel[5, :, 0].astype(int)
    assert (np.diff(row) >= 0).all() and row[-1] - row[0] > 200  # stretched, not wrapped
    # the sampled pixels are the output grid's every 4th, as the class panels sample them
    cols = offset.col_off + np.arange(0, 72, step)
    expected = np.argsort(np.argsort(ramp[0, cols]))
    np.testing.assert_array_equal(np.argsort(np.argsort(row, kind="stable"), kind="stable"),
                                  expected)
