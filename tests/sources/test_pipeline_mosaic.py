"""A mosaic flows through the unchanged pipeline (plan → read_chunk → predict → Zarr): two
overlapping pieces of one image give the same predictions as the image itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from affine import Affine

import geoseg.plan
from geoseg.config import validate_job
from geoseg.io import RasterInfo
from geoseg.job import run_job
from geoseg.runtime.serial import SerialBackend
from geoseg.sources import open_source
from geoseg.sources.mosaic import Mosaic
from tests.conftest import write_raster
from tests.pipeline.conftest import textured, tiny_bundle

T = Affine(0.5, 0, 500000.0, 0, -0.5, 5100000.0)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("bundles")
    return str(tiny_bundle(root, "landcover", 1)), str(tiny_bundle(root, "buildings", 2))


def _cfg(image: Path, out: Path, bundles: tuple[str, str]) -> Any:
    # the quicklook reads plan.image.path with rasterio itself: not yet mosaic-aware
    return validate_job({"image": str(image), "output": str(out), "models": list(bundles),
                         "inference": {"chunk_size": 64, "halo": 64},
                         "vectors": {"halo": 48}, "runtime": {"threads_per_worker": 1},
                         "outputs": {"quicklook": False}})


def test_mosaic_of_two_pieces_predicts_like_the_whole_image(
        tmp_path: Path, bundles: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    img = textured(200, 264)
    names = ["red", "green", "blue", "nir"]
    tags = {"ACQUISITION_DATE": "2024-06-01"}
    whole = write_raster(tmp_path / "img.tif", img, transform=T, descriptions=names, tags=tags)
    left = write_raster(tmp_path / "left.tif", img[:, :, :160], transform=T,
                        descriptions=names, tags=tags)
    right = write_raster(tmp_path / "right.tif", img[:, :, 100:],
                         transform=T @ Affine.translation(100, 0), descriptions=names,
                         tags=tags)
    mosaic = open_source([str(left), str(right)], nodata=0)
    assert isinstance(mosaic, Mosaic)
    original: Any = geoseg.plan.open_info

    def open_image(path: str) -> RasterInfo | Mosaic:
        return mosaic if path == str(left) else original(path)

    monkeypatch.setattr(geoseg.plan, "open_info", open_image)
    a = run_job(_cfg(whole, tmp_path / "a", bundles), backend=SerialBackend())
    b = run_job(_cfg(left, tmp_path / "b", bundles), backend=SerialBackend())
    assert a.ok and b.ok
    za = zarr.open_group(str(tmp_path / "a" / "predictions.zarr"), mode="r")
    zb = zarr.open_group(str(tmp_path / "b" / "predictions.zarr"), mode="r")
    for name in ("landcover", "buildings", "landcover_confidence"):
        assert np.array_equal(np.asarray(za[name][:]), np.asarray(zb[name][:])), name
