"""Areas a run reports are ground areas on every CRS: a Web Mercator image at 60° N (where its
metre is half a ground metre) gets the ellipsoid's m², not the projection's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyogrio
import shapely
from affine import Affine
from pyproj import Geod, Transformer

from geoseg.config import validate_job
from geoseg.job import run_job
from geoseg.runtime.serial import SerialBackend
from tests.conftest import write_raster
from tests.pipeline.conftest import textured


def test_a_web_mercator_run_reports_ground_areas(tmp_path: Path,
                                                 tiny_bundles: tuple[str, str]) -> None:
    x, y = Transformer.from_crs(4326, 3857, always_xy=True).transform(15.0, 60.0)
    size = 96
    tif = write_raster(tmp_path / "merc.tif", textured(size, size, seed=2), crs="EPSG:3857",
                       transform=Affine(0.5, 0, x, 0, -0.5, y), nodata=0,
                       descriptions=["red", "green", "blue", "nir"])
    to_ll = Transformer.from_crs(3857, 4326, always_xy=True)
    ring = np.array(shapely.box(x, y - size / 2, x + size / 2, y).exterior.coords)
    lon, lat = to_ll.transform(ring[:, 0], ring[:, 1])
    ground = abs(Geod(ellps="WGS84").polygon_area_perimeter(lon, lat)[0])  # ~576 m², not 2304
    cfg = validate_job({"image": str(tif), "output": str(tmp_path / "o"),
                        "models": [tiny_bundles[0]],
                        "inference": {"chunk_size": 64, "halo": 32},
                        "runtime": {"threads_per_worker": 1}})
    res = run_job(cfg, backend=SerialBackend())  # type: ignore[arg-type]
    assert res.ok
    areas = res.summary["class_areas_m2"]["landcover"]
    assert sum(areas.values()) == np.float64(sum(areas.values()))
    assert abs(sum(areas.values()) - ground) < 1e-3 * ground, (areas, ground)
    lc = pyogrio.read_dataframe(tmp_path / "o" / "features.gpkg", layer="landcover")
    assert abs(lc["area_m2"].sum() - ground) < 1e-3 * ground
    assert 0.24 * size * size / 4 < ground < 0.26 * size * size / 4 * 4
