"""Non-rectangular regions through a whole run: a polygon with a hole, given as a GeoJSON file
in EPSG:4326 and as WKT in another projected CRS (EPSG:3857). The output grid is the image grid
clipped to the region's bounds, pixels outside the region (and in its hole) are nodata, and no
land-cover polygon lies outside the region."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import zarr
from pyproj import Transformer
from rasterio.features import geometry_mask

from geoseg.config import validate_job
from geoseg.job import run_job
from geoseg.runtime.serial import SerialBackend

# the scene_tif fixture: 264 x 200 px at 0.5 m from (500000, 5100000), EPSG:32633
SHELL = [(500020.0, 5099920.0), (500110.0, 5099920.0), (500110.0, 5099990.0),
         (500020.0, 5099990.0)]
HOLE = [(500050.0, 5099940.0), (500080.0, 5099940.0), (500080.0, 5099970.0),
        (500050.0, 5099970.0)]


def _in(crs: str) -> shapely.Polygon:
    t = Transformer.from_crs("EPSG:32633", crs, always_xy=True)
    poly = shapely.Polygon(SHELL, [HOLE])
    poly = shapely.segmentize(poly, 1.0)  # straight in UTM stays (nearly) straight elsewhere
    return shapely.transform(poly, lambda xy: np.column_stack(t.transform(*xy.T)))


def _run(tmp_path: Path, image: Path, bundles: tuple[str, str], region: dict[str, Any]) -> Path:
    out = tmp_path / "out"
    cfg = validate_job({"image": str(image), "output": str(out), "models": [bundles[0]],
                        "region": region, "inference": {"chunk_size": 64, "halo": 32},
                        "runtime": {"threads_per_worker": 1}})
    assert run_job(cfg, backend=SerialBackend()).ok
    return out


@pytest.mark.parametrize("form", ["geojson-4326", "wkt-3857"])
def test_region_with_a_hole(tmp_path: Path, scene_tif: Path, tiny_bundles: tuple[str, str],
                            form: str) -> None:
    if form == "geojson-4326":
        path = tmp_path / "region.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {},
             "geometry": shapely.geometry.mapping(_in("EPSG:4326"))}]}))
        region: dict[str, Any] = {"file": str(path)}
    else:
        region = {"wkt": _in("EPSG:3857").wkt, "crs": "EPSG:3857"}
    out = _run(tmp_path, scene_tif, tiny_bundles, region)

    g = zarr.open_group(str(out / "predictions.zarr"), mode="r")
    cls = np.asarray(g["landcover"][:])
    t = g.attrs["transform"]
    with rasterio.open(scene_tif) as src:
        # the grid is the image's, clipped to the region's bounds (90 m x 70 m at 0.5 m)
        assert (t[0], t[4]) == (src.transform.a, src.transform.e)
        assert abs(t[2] - 500020.0) <= 0.5 and abs(t[5] - 5099990.0) <= 0.5
    assert abs(cls.shape[0] - 140) <= 1 and abs(cls.shape[1] - 180) <= 1
    # pixel centres inside the shell and outside the hole are predicted; the rest is nodata
    from affine import Affine

    inside = geometry_mask([shapely.Polygon(SHELL, [HOLE])], cls.shape, Affine(*t[:6]),
                           invert=True)
    agree = np.mean((cls != 255) == inside)
    assert agree > 0.99, agree  # the 4326/3857 outline is a densified, reprojected square
    hole_centre = (int((5099990.0 - 5099955.0) / 0.5), int((500065.0 - 500020.0) / 0.5))
    assert cls[hole_centre] == 255

    lc = pyogrio.read_dataframe(out / "features.gpkg", layer="landcover")
    assert len(lc) > 0
    region_utm = shapely.Polygon(SHELL, [HOLE]).buffer(1.0)  # 2 px of reprojection slack
    assert lc.geometry.within(region_utm).all()
