"""Real rasters from ``../shared/data/real`` (skipped where it is absent, as on a user's clone):
a uint8 RGBN subset with a nodata collar through the whole pipeline, and the real Sentinel-2
pair on one lattice but different extents through ``geoseg change``. Models are tiny random
U-Nets: these tests check georeferencing, nodata and grids, not accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
import zarr
from pyproj import CRS

from geoseg.bundle import ArchitectureSpec, BundleSpec, ClassSpec, Normalization
from geoseg.cli import main
from geoseg.models import build_model, save_bundle
from tests.pipeline.conftest import LC

pytestmark = [pytest.mark.real]


def _one_band_bundle(root: Path) -> Path:
    spec = BundleSpec(
        name="tiny-s2", version="0.0.1", task="landcover",
        architecture=ArchitectureSpec(name="unet", encoder="resnet18", encoder_depth=3,
                                      decoder_channels=(16, 8, 8)),
        bands=(1,), band_names=("red",), normalization=Normalization(mean=(1200.0,), std=(600.0,)),
        classes=tuple(ClassSpec(id=i, name=n, color=c) for i, (n, c) in enumerate(LC)),
        tile_size=256, pixel_size=10.0)
    torch.manual_seed(5)
    out = root / "s2"
    save_bundle(build_model(spec), spec, out)
    return out


def test_rgbn_with_nodata_collar(real_data: Path, tmp_path: Path,
                                 tiny_bundles: tuple[str, str]) -> None:
    import rioxarray  # noqa: F401
    import xarray as xr

    image = real_data / "rgbn_haiti" / "rgbn_suba.tif"
    out = tmp_path / "run"
    assert main(["-q", "run", str(image), "-o", str(out), "-m", tiny_bundles[0], "-m",
                 tiny_bundles[1], "--chunk-size", "128", "--workers", "1",
                 "--threads", "1"]) == 0
    with rasterio.open(image) as src:
        pixels, transform, crs, nodata = src.read(), src.transform, src.crs, src.nodata
    ds = xr.open_zarr(out / "predictions.zarr", decode_coords="all", mask_and_scale=False)
    lc = ds["landcover"]
    assert lc.shape == pixels.shape[1:]
    assert CRS.from_user_input(lc.rio.crs) == CRS.from_epsg(32618)
    assert lc.rio.transform().almost_equals(transform, precision=1e-9)
    collar = (pixels == nodata).all(axis=0)
    assert collar.sum() > 1000  # the subset's nodata collar (2,332 px)
    cls = np.asarray(lc.values)
    assert (cls[collar] == 255).all() and (cls[~collar] != 255).all()
    # no land-cover polygon covers the collar (pixel centres)
    polys = pyogrio.read_dataframe(out / "features.gpkg", layer="landcover")
    assert CRS.from_user_input(polys.crs) == CRS.from_epsg(32618)
    rows, cols = np.nonzero(collar)
    xs, ys = rasterio.transform.xy(transform, rows, cols)
    hit = shapely.STRtree(np.asarray(polys.geometry.values)).query(
        shapely.points(xs, ys), predicate="within")
    assert hit.size == 0
    with rasterio.open(out / "landcover.tif") as cog:
        assert cog.crs == crs and cog.nodata == 255
        assert cog.transform.almost_equals(transform)


def test_sentinel2_dates_on_different_extents(real_data: Path,
                                              tmp_path: Path) -> None:
    folder = real_data / "sentinel2_two_dates"
    bundle = _one_band_bundle(tmp_path)
    runs = []
    # two regions 6.4 km wide on the same 10 m lattice, overlapping by half each way
    for name, (x0, y0) in (("S2A_T33UUU_20160529.tif", (340000, 5840000)),
                           ("S2A_T33UUU_20160608.tif", (343200, 5843200))):
        out = tmp_path / name[:-4]
        bbox = f"{x0},{y0},{x0 + 6400},{y0 + 6400}"
        assert main(["-q", "run", str(folder / name), "-o", str(out), "-m", str(bundle),
                     "--bbox", bbox, "--bbox-crs", "EPSG:32633", "--chunk-size", "256",
                     "--no-vectors", "--workers", "1", "--threads", "1"]) == 0
        runs.append(out)
    change = tmp_path / "change"
    # random weights are never confident: keep every pixel with data known
    assert main(["-q", "change", str(runs[0]), str(runs[1]), "-o", str(change),
                 "--min-confidence", "0", "--min-change-confidence", "0"]) == 0
    summary = json.loads((change / "change_summary.json").read_text())
    grid = summary["grid"]
    assert grid["mode"] == "window" and grid["shape"] == [640, 640]
    assert grid["transform"][2] == 340000 and grid["transform"][5] == 5846400
    changed = np.asarray(zarr.open_group(str(change / "change.zarr"), mode="r")["changed"][:])  # type: ignore[index]
    # b covers the upper-right quarter of a's region (x >= 343200, y >= 5843200)
    inside = np.zeros((640, 640), bool)
    inside[:320, 320:] = True
    assert (changed[~inside] == 255).all()
    assert set(np.unique(changed[inside])) <= {0, 1, 3} and summary["buildings"] is None
    # the image check read both real scenes (one uint16 band, other extents) on the change
    # grid: a magnitude wherever both images have data (both scenes cover a's whole region,
    # beyond b's run)
    spectral = summary["spectral"]
    assert spectral["image_b"].endswith("S2A_T33UUU_20160608.tif") and spectral["bands"] == [1]
    mag = np.asarray(zarr.open_group(str(change / "change.zarr"), mode="r")["spectral_change"][:])  # type: ignore[index]
    assert (mag != 255).all()
    # the 05-29 scene is cloudy: its clouds are image change, clear ground mostly is not
    assert 0 < np.mean(mag[inside] * 0.02 >= 0.2) < 0.9
    unknown_m2 = summary["areas"]["unknown"]["m2"]
    assert unknown_m2 == pytest.approx(640 * 640 * 100 * 0.75)
