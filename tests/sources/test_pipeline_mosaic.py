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
    # (the quicklook of a mosaic is checked through the CLI below)
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


def test_geoseg_run_on_two_images_records_where_each_pixel_came_from(
        tmp_path: Path, bundles: tuple[str, str]) -> None:
    """`geoseg run A B`: one grid over both, a `source` layer, each chunk's items in
    chunks.jsonl, each feature's date from the image that produced its pixels, a quicklook."""
    import json

    import geopandas as gpd

    from geoseg.cli import main

    img = textured(200, 264)
    names = ["red", "green", "blue", "nir"]
    left = write_raster(tmp_path / "left.tif", img[:, :, :160], transform=T, descriptions=names,
                        tags={"ACQUISITION_DATE": "2024-05-01"})
    right = write_raster(tmp_path / "right.tif", img[:, :, 100:],
                         transform=T @ Affine.translation(100, 0), descriptions=names,
                         tags={"ACQUISITION_DATE": "2024-06-01"})
    out = tmp_path / "out"
    args = ["run", str(left), str(right), "-o", str(out), "--nodata", "0", "--mosaic", "latest",
            "--chunk-size", "64", "--halo", "32", *(x for b in bundles for x in ("-m", b))]
    assert main(args) == 0
    store = zarr.open_group(str(out / "predictions.zarr"), mode="r")
    source = np.asarray(store["source"][:])
    assert source.shape == (200, 264)
    # latest first: the right image (item 2) wins where both have pixels
    assert (source[:, :100] == 1).all() and (source[:, 100:] == 2).all()
    items = store["source"].attrs["items"]
    assert [i["datetime"][:10] for i in items] == ["2024-05-01", "2024-06-01"]
    records = [json.loads(line) for line in (out / "chunks.jsonl").read_text().splitlines()]
    seen = {s["index"] for r in records for s in r.get("stats", r).get("sources", [])}
    assert seen == {1, 2}
    feats = gpd.read_file(out / "features.gpkg", layer="landcover")
    x_mid = feats.geometry.representative_point().x
    left_edge = T.c + 100 * T.a
    assert set(feats["acquisition_date"][x_mid < left_edge - 1]) == {"2024-05-01"}
    assert set(feats["acquisition_date"][x_mid > left_edge + 1]) == {"2024-06-01"}
    assert (out / "quicklook.png").stat().st_size > 0
    assert (out / "stac-item.json").is_file()
