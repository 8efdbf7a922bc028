"""Pipeline invariants on tiny generated rasters (serial backend: no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import torch
import zarr

from geoseg.config import validate_job
from geoseg.job import run_job
from geoseg.runtime.serial import SerialBackend
from tests.conftest import write_raster
from tests.pipeline.conftest import textured


def _cfg(image: Path, out: Path, bundles: tuple[str, str], device: str = "cpu",
         **inf: object) -> object:
    return validate_job({"image": str(image), "output": str(out), "models": list(bundles),
                         "inference": {"chunk_size": 64, "halo": 64, **inf},
                         "vectors": {"halo": 48},
                         "runtime": {"threads_per_worker": 1, "device": device}})


def _arr(out: Path, name: str) -> np.ndarray:
    return np.asarray(zarr.open_group(str(out / "predictions.zarr"), mode="r")[name][:])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_tiled_equals_whole_image(tmp_path: Path, scene_tif: Path,
                                  tiny_bundles: tuple[str, str], device: str) -> None:
    """Seam-free: chunked prediction equals one forward pass over the whole crop (on a GPU:
    tiles blended there, bf16 autocast)."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    tiled = run_job(_cfg(scene_tif, tmp_path / "tiled", tiny_bundles,  # type: ignore[arg-type]
                         device, engine="torch"), backend=SerialBackend())
    whole = run_job(_cfg(scene_tif, tmp_path / "whole", tiny_bundles,  # type: ignore[arg-type]
                         device, engine="torch", chunk_size=512, tile_size=576),
                    backend=SerialBackend())
    assert tiled.ok and whole.ok
    assert tiled.summary["runtime"]["device"] == device
    assert whole.summary["chunks"]["total"] == 1
    for name in ("landcover", "buildings"):
        a, b = _arr(tmp_path / "tiled", name), _arr(tmp_path / "whole", name)
        agree = float(np.mean(a == b))
        assert agree >= 0.999, f"{name}: tiled agrees with whole-image on {agree:.5f}"


def test_nodata_collar_gives_fill_and_no_polygons(tmp_path: Path,
                                                  tiny_bundles: tuple[str, str]) -> None:
    img = textured(160, 160, seed=3)
    img[:, :20, :] = 0
    img[:, :, -24:] = 0
    tif = write_raster(tmp_path / "collar.tif", img, nodata=0,
                       descriptions=["red", "green", "blue", "nir"])
    res = run_job(_cfg(tif, tmp_path / "out", tiny_bundles),  # type: ignore[arg-type]
                  backend=SerialBackend())
    lc = _arr(tmp_path / "out", "landcover")
    assert np.all(lc[:20] == 255) and np.all(lc[:, -24:] == 255)
    assert np.all(lc[20:, :-24] != 255)
    assert np.all(_arr(tmp_path / "out", "landcover_confidence")[:20] == 0)
    gpkg = tmp_path / "out" / "features.gpkg"
    collar_top = 5100000.0 - 20 * 0.5
    collar_right = 500000.0 + (160 - 24) * 0.5
    for layer in ("landcover", "buildings"):
        if layer not in [n for n, _ in pyogrio.list_layers(gpkg)]:
            continue
        df = pyogrio.read_dataframe(gpkg, layer=layer)
        b = df.geometry.bounds
        assert (b.maxy <= collar_top + 1e-6).all() and (b.maxx <= collar_right + 1e-6).all()
    with rasterio.open(res.output / "landcover.tif") as src:
        assert src.nodata == 255 and src.read(1)[0, 0] == 255


def test_outputs_open_in_real_clients(tmp_path: Path, scene_tif: Path,
                                      tiny_bundles: tuple[str, str]) -> None:
    import rioxarray  # noqa: F401
    import xarray as xr
    from pyproj import CRS

    res = run_job(_cfg(scene_tif, tmp_path / "o", tiny_bundles),  # type: ignore[arg-type]
                  backend=SerialBackend())
    with rasterio.open(scene_tif) as src:
        crs, transform, shape = CRS.from_wkt(src.crs.to_wkt()), src.transform, src.shape
    ds = xr.open_zarr(str(res.output / "predictions.zarr"), decode_coords="all",
                      mask_and_scale=False)
    assert CRS.from_wkt(ds["landcover"].rio.crs.to_wkt()) == crs
    assert ds["landcover"].rio.transform().almost_equals(transform, precision=1e-9)
    assert ds["landcover"].shape == shape
    with rasterio.open(res.output / "landcover.tif") as cog:  # GDAL
        assert cog.profile["tiled"] and cog.crs == src.crs and cog.transform == transform
        assert cog.read(1).shape == shape
    layers = dict(pyogrio.list_layers(res.output / "features.gpkg"))
    assert layers == {"landcover": "Polygon", "buildings": "Polygon"}
    for layer in layers:  # each layer streamed on its own, with its spatial index
        info = pyogrio.read_info(res.output / "features.gpkg", layer=layer)
        assert info["capabilities"]["fast_spatial_filter"] and info["geometry_name"] == "geom"
    assert not [p.name for p in res.output.iterdir() if p.name.startswith(".partial-")]
    info = pyogrio.read_info(res.output / "features.gpkg", layer="landcover")
    assert CRS.from_user_input(info["crs"]) == crs
    df = pyogrio.read_dataframe(res.output / "features.gpkg", layer="landcover")
    assert {"class_id", "class_name", "area_m2", "confidence", "source_image",
            "acquisition_date", "model_id"} <= set(df.columns)
    assert (df.acquisition_date == "2024-06-01").all() and df.geometry.is_valid.all()
    # polygons tile the valid area exactly once: area of polygons == valid pixel area
    valid_px = int(np.sum(_arr(res.output, "landcover") != 255))
    assert df.geometry.area.sum() == pytest.approx(valid_px * 0.25, rel=1e-9)
    assert (res.output / "quicklook.png").stat().st_size > 0
    assert res.summary["status"] == "complete"


def test_region_in_other_crs_is_reprojected(tmp_path: Path, scene_tif: Path,
                                            tiny_bundles: tuple[str, str]) -> None:
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lon0, lat0 = t.transform(500010.0, 5099960.0)
    lon1, lat1 = t.transform(500060.0, 5099990.0)
    cfg = validate_job({"image": str(scene_tif), "output": str(tmp_path / "r"),
                        "models": list(tiny_bundles), "region": {
                            "bbox": [lon0, lat0, lon1, lat1], "crs": "EPSG:4326"},
                        "inference": {"chunk_size": 64, "halo": 32}})
    res = run_job(cfg, backend=SerialBackend())
    h, w = res.summary["grid"]["shape"]
    assert 55 <= h <= 70 and 95 <= w <= 110  # ≈ 30 m × 50 m at 0.5 m, snapped outwards
