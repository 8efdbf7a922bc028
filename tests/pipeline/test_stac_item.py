"""Every complete run writes a STAC Item (``stac-item.json``) for its outputs: the grid (proj),
the class maps (raster + classification), checksums (file) and provenance (processing); a real
STAC client (odc.stac) loads the land-cover COG from it onto the run's grid. A failed or
interrupted run has no item."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from pyproj import CRS, Transformer
from shapely.geometry import shape

from geoseg import __version__
from geoseg.bundle import read_spec
from geoseg.config import validate_job
from geoseg.job import Progress, run_job
from geoseg.runtime.serial import SerialBackend
from geoseg.stac_item import file_multihash
from tests.conftest import write_raster
from tests.pipeline.conftest import textured

# odc-geo multiplies Affines with `*` and calls shapely.ops.transform: not ours to fix
pytestmark = [pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning"),
              pytest.mark.filterwarnings("ignore:The 'shapely.ops.transform:DeprecationWarning")]

ITEM = "stac-item.json"
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def _cfg(image: Path, out: Path, bundles: tuple[str, str]) -> Any:
    return validate_job({"image": str(image), "output": str(out), "models": list(bundles),
                         "inference": {"chunk_size": 64, "halo": 32},
                         "vectors": {"halo": 48}, "runtime": {"threads_per_worker": 1}})


@pytest.fixture(scope="module")
def run(image: Path, tiny_bundles: tuple[str, str]) -> Path:
    out = image.parent / "run"
    assert run_job(_cfg(image, out, tiny_bundles), backend=SerialBackend()).ok
    return out


def _item(out: Path) -> pystac.Item:
    return pystac.Item.from_file(str(out / ITEM))


def test_item_describes_the_grid_classes_and_provenance(run: Path,
                                                        tiny_bundles: tuple[str, str]) -> None:
    raw = json.loads((run / ITEM).read_text())
    assert raw["type"] == "Feature" and raw["stac_version"].startswith("1.")
    assert not [ln for ln in raw["links"] if ln["rel"] == "self"]  # movable folder
    item = _item(run)
    names = {"projection", "raster", "classification", "file", "processing"}
    assert {e.split("/")[3] for e in item.stac_extensions} == names

    # datetime: the image's acquisition date (a date: the whole day)
    p = item.properties
    assert p["datetime"] == "2024-06-01T00:00:00Z"
    assert p["start_datetime"] == "2024-06-01T00:00:00Z"
    assert p["end_datetime"].startswith("2024-06-01T23:59:59")

    # proj: the output grid, which is the COG's grid
    with rasterio.open(run / "landcover.tif") as src:
        crs, transform, shp, bounds = src.crs, src.transform, src.shape, src.bounds
    assert p["proj:code"] == f"EPSG:{crs.to_epsg()}" == "EPSG:32633"
    assert p["proj:shape"] == list(shp) == [200, 264]
    assert Affine(*p["proj:transform"]) == transform
    assert p["proj:bbox"] == [bounds.left, bounds.bottom, bounds.right, bounds.top]

    # geometry/bbox in EPSG:4326: the grid's corners, counterclockwise
    to_ll = Transformer.from_crs(CRS.from_epsg(32633), CRS.from_epsg(4326), always_xy=True)
    geom = shape(item.geometry)
    assert geom.is_valid and geom.exterior.is_ccw and len(geom.exterior.coords) <= 10
    corners = [to_ll.transform(x, y) for x in (bounds.left, bounds.right)
               for y in (bounds.bottom, bounds.top)]
    w, s, e, n = item.bbox  # type: ignore[misc]
    for lon, lat in corners:
        assert w - 1e-9 <= lon <= e + 1e-9 and s - 1e-9 <= lat <= n + 1e-9
    assert geom.buffer(1e-6).contains(shape({"type": "MultiPoint", "coordinates": corners}))

    # processing
    assert p["processing:software"] == {"geoseg": __version__}
    assert "scene.tif" in p["processing:lineage"] and "tiny-landcover@0.0.1" in p[
        "processing:lineage"]

    # assets: one COG per model, the store, the GeoPackage, the quicklook; hrefs relative
    a = item.assets
    assert {"landcover", "buildings", "predictions", "features", "quicklook"} <= set(a)
    for key in ("landcover", "buildings"):
        assert a[key].media_type == COG and a[key].roles == ["data"]
    assert a["predictions"].media_type == "application/vnd+zarr"
    assert a["features"].media_type == "application/geopackage+sqlite3"
    assert a["quicklook"].roles == ["overview"] and a["quicklook"].media_type == "image/png"
    for key in a:
        href = raw["assets"][key]["href"]
        assert href.startswith("./") and "/" not in href[2:], href
        assert Path(a[key].get_absolute_href() or "").exists()

    # raster + classification: the bundles' classes, ids, colours, pixel counts
    summary = json.loads((run / "summary.json").read_text())
    assert summary["outputs"]["stac_item"] == str(run / ITEM)
    for key, bundle in zip(("landcover", "buildings"), tiny_bundles, strict=True):
        d = raw["assets"][key]
        (band,) = d["raster:bands"]
        assert band == {"nodata": 255, "data_type": "uint8", "spatial_resolution": 0.5}
        spec = read_spec(bundle)
        classes = d["classification:classes"]
        assert [(c["value"], c["title"], "#" + c["color_hint"].lower()) for c in classes[:-1]] \
            == [(c.id, c.name, c.color.lower()) for c in spec.classes]
        assert classes[-1] == {"value": 255, "name": "nodata", "title": "no data",
                               "nodata": True}
        with rasterio.open(run / f"{key}.tif") as src:
            arr = src.read(1)
        assert [c["count"] for c in classes[:-1]] == [
            int((arr == c.id).sum()) for c in spec.classes]


def test_checksums_match_the_files(run: Path) -> None:
    raw = json.loads((run / ITEM).read_text())
    checked = 0
    for key, asset in raw["assets"].items():
        path = run / asset["href"]
        if path.is_dir():  # the Zarr store: a folder has no file checksum
            assert "file:checksum" not in asset, key
            continue
        data = path.read_bytes()
        assert asset["file:size"] == len(data)
        assert asset["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest()
        assert asset["file:checksum"] == file_multihash(path)
        checked += 1
    assert checked >= 5  # 2 COGs, GeoPackage, quicklook, summary


def test_odc_stac_loads_the_landcover_cog_on_the_run_grid(run: Path, tmp_path: Path) -> None:
    odc_stac = pytest.importorskip("odc.stac")
    from odc.geo.geobox import GeoBox

    moved = tmp_path / "uploaded"  # relative hrefs: the folder works wherever it lies
    shutil.copytree(run, moved)
    item = _item(moved)
    p = item.properties
    geobox = GeoBox(tuple(p["proj:shape"]), Affine(*p["proj:transform"]), p["proj:code"])
    with rasterio.open(moved / "landcover.tif") as src:
        expected, crs, transform = src.read(1), src.crs, src.transform

    for kw in ({"geobox": geobox},
               {"crs": p["proj:code"], "resolution": p["proj:transform"][0]},
               {}):  # explicit grid, crs + resolution, and the item's native grid (proj)
        ds = odc_stac.load([item], bands=["landcover"], **kw)
        got = ds["landcover"]
        assert got.shape == (1, *expected.shape), kw
        assert got.dtype == np.uint8 and got.attrs.get("nodata") == 255
        assert np.array_equal(got.values[0], expected), kw
        assert ds.odc.geobox.crs == crs.to_string()
        assert ds.odc.geobox.affine == transform
        assert str(got.time.values[0]).startswith("2024-06-01")


def test_failed_chunk_writes_no_item_and_resume_does(image: Path, tmp_path: Path,
                                                    tiny_bundles: tuple[str, str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import geoseg.runtime.serial as serial

    real = serial.predict_chunk

    def failing(plan: Any, models: Any, data: Any) -> Any:
        if data.chunk.id == "1_1":
            raise ValueError("injected failure")
        return real(plan, models, data)

    out = tmp_path / "o"
    monkeypatch.setattr(serial, "predict_chunk", failing)
    res = run_job(_cfg(image, out, tiny_bundles), backend=SerialBackend())
    assert not res.ok and (out / "summary.json").is_file()
    assert not (out / ITEM).exists() and "stac_item" not in res.summary["outputs"]
    monkeypatch.setattr(serial, "predict_chunk", real)
    assert run_job(_cfg(image, out, tiny_bundles), resume=True, backend=SerialBackend()).ok
    assert _item(out).assets["landcover"].href


def test_interrupted_overwrite_removes_the_item_and_a_finished_run_rewrites_it(
        image: Path, tmp_path: Path, tiny_bundles: tuple[str, str]) -> None:
    out = tmp_path / "o"
    assert run_job(_cfg(image, out, tiny_bundles), backend=SerialBackend()).ok
    assert ITEM in json.loads((out / "manifest.json").read_text())["outputs"]
    first = json.loads((out / ITEM).read_text())

    def stop(p: Progress) -> None:
        if p.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_job(_cfg(image, out, tiny_bundles), overwrite=True, backend=SerialBackend(),
                progress=stop)
    assert not (out / ITEM).exists()  # --overwrite removed it; an unfinished run writes none
    assert run_job(_cfg(image, out, tiny_bundles), resume=True, backend=SerialBackend()).ok
    second = json.loads((out / ITEM).read_text())
    assert second["id"] == first["id"]  # same inputs and settings: same results, same id
    assert second["assets"]["landcover"]["file:checksum"] == first["assets"]["landcover"][
        "file:checksum"]
    assert second["properties"]["created"] != first["properties"]["created"]


def test_lat_lon_grid_without_date_and_a_region(tmp_path: Path,
                                                tiny_bundles: tuple[str, str]) -> None:
    """Unknown acquisition date: the run's time; a lat/lon grid: proj:code EPSG:4326 and the
    resolution in metres; a polygon region: the footprint is the region, not the grid."""
    tif = write_raster(tmp_path / "ll.tif", textured(96, 128), crs="EPSG:4326",
                       transform=Affine(5e-6, 0, 15.0, 0, -5e-6, 46.0))
    tri = "POLYGON ((15.0 46.0, 15.00064 46.0, 15.0 45.99952, 15.0 46.0))"
    cfg = validate_job({"image": str(tif), "output": str(tmp_path / "o"),
                        "models": [tiny_bundles[0]], "region": {"wkt": tri, "crs": "EPSG:4326"},
                        "inference": {"chunk_size": 64, "halo": 32},
                        "vectors": {"enabled": False}, "runtime": {"threads_per_worker": 1}})
    assert run_job(cfg, backend=SerialBackend()).ok
    raw = json.loads((tmp_path / "o" / ITEM).read_text())
    p = raw["properties"]
    assert p["datetime"] == p["created"] == p["processing:datetime"]
    assert "start_datetime" not in p and "end_datetime" not in p
    assert p["proj:code"] == "EPSG:4326" and p["proj:shape"] == [96, 128]
    (band,) = raw["assets"]["landcover"]["raster:bands"]
    assert 0.4 < band["spatial_resolution"] < 0.56  # 5e-6° at 46° N, in metres
    geom = shape(raw["geometry"])
    assert geom.symmetric_difference(shape({"type": "Polygon", "coordinates": [[
        (15.0, 46.0), (15.0, 45.99952), (15.00064, 46.0), (15.0, 46.0)]]})).area < 1e-14
    assert set(raw["assets"]) == {"landcover", "predictions", "quicklook", "summary"}


def test_a_grid_across_the_antimeridian_is_cut_there(tmp_path: Path,
                                                     tiny_bundles: tuple[str, str]) -> None:
    """A UTM 60S image over 180° (Fiji): its footprint's longitudes jump from +180 to -180;
    it was a polygon around the whole world (bbox -180..180). GeoJSON's way: two polygons cut
    at 180° and a bbox whose west is greater than its east."""
    x, y = Transformer.from_crs(4326, 32760, always_xy=True).transform(180.0, -16.5)
    tif = write_raster(tmp_path / "fiji.tif", textured(96, 128), crs="EPSG:32760",
                       transform=Affine(0.5, 0, x - 30, 0, -0.5, y))
    cfg = validate_job({"image": str(tif), "output": str(tmp_path / "o"),
                        "models": [tiny_bundles[0]], "inference": {"chunk_size": 64, "halo": 32},
                        "vectors": {"enabled": False}, "runtime": {"threads_per_worker": 1}})
    assert run_job(cfg, backend=SerialBackend()).ok
    raw = json.loads((tmp_path / "o" / ITEM).read_text())
    west, south, east, north = raw["bbox"]
    assert 179.999 < west < 180 and -180 < east < -179.999 and south < north < -16.49
    geom = shape(raw["geometry"])
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    assert all(-180 <= v <= 180 for v in geom.bounds[::2])
    to_m = Transformer.from_crs(4326, 32760, always_xy=True)
    area = sum(shape({"type": "Polygon", "coordinates": [[to_m.transform(*p)
                                                        for p in g.exterior.coords]]}).area
               for g in geom.geoms)
    assert area == pytest.approx(96 * 0.5 * 128 * 0.5, rel=1e-3)  # nothing lost in the cut


def test_a_lat_lon_grid_past_180_is_cut_there() -> None:
    """On a lat/lon grid whose columns run past 180° (179.999 to 180.0023)."""
    import shapely

    from geoseg.stac_item import _across_antimeridian

    geom, bbox = _across_antimeridian(shapely.box(179.999, -16.0023, 180.0023, -16.0))
    assert bbox == pytest.approx([179.999, -16.0023, -179.9977, -16.0])
    assert geom.geom_type == "MultiPolygon" and geom.area == pytest.approx(0.0033 * 0.0023)
    geom, bbox = _across_antimeridian(shapely.box(-180.002, 60.0, -179.99, 60.01))  # and west
    assert bbox == pytest.approx([179.998, 60.0, -179.99, 60.01]) and len(geom.geoms) == 2
    assert geom.area == pytest.approx(0.012 * 0.01)
    same, box = _across_antimeridian(shapely.box(15.0, 45.0, 15.1, 45.1))
    assert same.geom_type == "Polygon" and box == pytest.approx([15.0, 45.0, 15.1, 45.1])


@pytest.mark.parametrize(("value", "start", "end"), [
    ("2019-06-01", "2019-06-01T00:00:00Z", "2019-06-01T23:59:59.999999Z"),
    ("2019-06-01/2024-06-01", "2019-06-01T00:00:00Z", "2024-06-01T23:59:59.999999Z"),
    ("2019-06-01T10:00:00/2019-06-02", "2019-06-01T10:00:00Z", "2019-06-02T23:59:59.999999Z"),
    ("2019-06-01T10:00:00", None, None),
])
def test_acquisition_dates_and_a_mosaics_span(value: str, start: str | None,
                                              end: str | None) -> None:
    """A mosaic of two dates is acquired over an interval (``A/B``): its item has
    start_datetime / end_datetime (it had the run's own time, with a warning)."""
    import datetime as dt

    from geoseg.stac_item import _acquired, _iso

    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    when, s, e = _acquired(value, now)
    assert when != now and (s and _iso(s), e and _iso(e)) == (start, end)
