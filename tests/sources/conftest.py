"""Fixtures for geoseg.sources: three small overlapping scenes in two UTM zones, and a local
HTTP server with Range support that counts the bytes it serves."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from tests.conftest import coord_image, write_raster
from tests.range_server import RangeServer

UTM32, UTM33 = "EPSG:32632", "EPSG:32633"
# ≈ 12°E 45°N, on the border of UTM zones 32 and 33: the two grids are rotated ~4° apart
X0, Y0 = 263_550.0, 4_987_330.0
A_HOLE = (slice(8, 20), slice(8, 20))  # rows, cols of A's nodata hole
B_HOLE = (slice(30, 48), slice(0, 20))


@dataclass(frozen=True)
class Scene:
    """A (33N, 10 m, 2020-01-01, hole), B (32N, 15 m, 2020-03-01, constant 200/201, hole) and
    C (33N, 10 m, 2020-02-01, no hole), overlapping; nodata 0 everywhere."""

    a: Path
    b: Path
    c: Path
    a_data: np.ndarray
    c_data: np.ndarray
    b_transform: Affine
    a_transform: Affine = field(default=Affine(10, 0, X0, 0, -10, Y0))
    c_transform: Affine = field(default=Affine(10, 0, X0 + 400, 0, -10, Y0 - 240))


def make_scene(root: Path) -> Scene:
    root.mkdir(parents=True, exist_ok=True)
    a = coord_image(64, 64, 2)
    a[:, A_HOLE[0], A_HOLE[1]] = 0
    c = ((coord_image(64, 64, 2).astype(np.int32) + 97) % 250 + 1).astype(np.uint8)
    b = np.stack([np.full((48, 48), 200, np.uint8), np.full((48, 48), 201, np.uint8)])
    b[:, B_HOLE[0], B_HOLE[1]] = 0
    bx, by = Transformer.from_crs(UTM33, UTM32, always_xy=True).transform(X0 - 200, Y0 + 150)
    bt = Affine(15, 0, round(bx / 15) * 15, 0, -15, round(by / 15) * 15)
    s = Scene(root / "a.tif", root / "b.tif", root / "c.tif", a, c, bt)
    write_raster(s.a, a, crs=UTM33, transform=s.a_transform, nodata=0,
                 descriptions=["red", "nir"], tags={"ACQUISITION_DATE": "2020-01-01"})
    write_raster(s.b, b, crs=UTM32, transform=bt, nodata=0, descriptions=["red", "nir"],
                 tags={"ACQUISITION_DATE": "2020-03-01"})
    write_raster(s.c, c, crs=UTM33, transform=s.c_transform, nodata=0,
                 descriptions=["red", "nir"], tags={"ACQUISITION_DATE": "2020-02-01"})
    return s


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    return make_scene(tmp_path_factory.mktemp("scene"))


_CountingServer = RangeServer  # the name the remote tests use


@pytest.fixture(scope="session")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_CountingServer]:
    """A local HTTP server over a session directory (``server.root``); ``server.served`` maps
    file name → bytes sent."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            mp.delenv(var, raising=False)  # 127.0.0.1 only: never through a proxy
        srv = RangeServer(tmp_path_factory.mktemp("www")).start()
        yield srv
        srv.shutdown()
        srv.server_close()


def write_cog(path: Path, data: np.ndarray, *, crs: str, transform: Affine,
              nodata: float | None = None, blocksize: int = 256,
              tags: dict[str, str] | None = None) -> Path:
    """A cloud-optimised GeoTIFF (GDAL's COG driver, deflate, no overviews) of ``data``."""
    import rasterio
    import rasterio.shutil
    from rasterio.io import MemoryFile

    if data.ndim == 2:
        data = data[None]
    c, h, w = data.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    with MemoryFile() as mem, mem.open(driver="GTiff", width=w, height=h, count=c,
                                       dtype=data.dtype.name, crs=crs, transform=transform,
                                       nodata=nodata) as tmp:
        tmp.write(data)
        if tags:
            tmp.update_tags(**tags)
        rasterio.shutil.copy(tmp, path, driver="COG", BLOCKSIZE=blocksize, COMPRESS="DEFLATE",
                             OVERVIEWS="NONE")
    return path
