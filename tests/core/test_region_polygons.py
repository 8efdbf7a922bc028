"""A region is its polygons: lines and points are dropped with a warning (issue 13 D)."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine

from geoseg.cli import main
from geoseg.errors import GeoSegWarning, RegionError
from geoseg.grid import GeoBox
from geoseg.region import clip_grid, parse_wkt, read_region_file
from tests.conftest import CRS_UTM, write_raster

X0, Y0 = 500000.0, 5100000.0  # the image's top-left corner (0.5 m pixels)
POLY = shapely.box(X0 + 10, Y0 - 20, X0 + 20, Y0 - 10)
LINE = shapely.LineString([(X0 + 5, Y0 - 5), (X0 + 60, Y0 - 60)])
POINT = shapely.Point(X0 + 55, Y0 - 2)
COLLECTION = shapely.GeometryCollection([shapely.box(X0 + 20, Y0 - 20, X0 + 25, Y0 - 15),
                                         shapely.Point(X0 + 1, Y0 - 1)])


def _region_file(tmp_path: Path, geoms: list[shapely.Geometry]) -> Path:
    path = tmp_path / "area.geojson"
    gpd.GeoDataFrame(geometry=geoms, crs=CRS_UTM).to_file(path, driver="GeoJSON")
    return path


def test_mixed_file_keeps_polygons_and_warns(tmp_path: Path) -> None:
    path = _region_file(tmp_path, [POLY, LINE, POINT, COLLECTION])
    with pytest.warns(GeoSegWarning, match=r"dropped 3 non-polygon geometries "
                                           r"\(1 LineString, 2 Point\)"):
        region = read_region_file(path)
    assert region.geometry.bounds == (X0 + 10, Y0 - 20, X0 + 25, Y0 - 10)
    assert region.geometry.area == pytest.approx(100 + 25)
    grid = GeoBox((400, 400), Affine(0.5, 0, X0, 0, -0.5, Y0), region.crs)
    window, _ = clip_grid(grid, region)  # the polygons' extent, not the line's
    assert (window.row_off, window.col_off, window.height, window.width) == (20, 20, 20, 30)


def test_polygons_only_do_not_warn(tmp_path: Path) -> None:
    path = _region_file(tmp_path, [POLY, shapely.MultiPolygon([COLLECTION.geoms[0]])])
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeoSegWarning)
        region = read_region_file(path)
    assert region.geometry.area == pytest.approx(125)


def test_no_polygon_is_refused(tmp_path: Path) -> None:
    path = _region_file(tmp_path, [LINE, POINT])
    with pytest.raises(RegionError, match="no polygon with an area") as info, \
            pytest.warns(GeoSegWarning, match="dropped 2"):
        read_region_file(path)
    assert "\n" not in str(info.value)


def test_wkt_line_is_refused() -> None:
    with pytest.raises(RegionError, match="no polygon"), pytest.warns(GeoSegWarning):
        parse_wkt(LINE.wkt, CRS_UTM)


def test_cli_lines_only_region_one_line(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    tif = write_raster(tmp_path / "a.tif", np.ones((4, 64, 64), np.uint8))
    path = _region_file(tmp_path, [LINE, POINT])
    rc = main(["-q", "run", str(tif), "-o", str(tmp_path / "o"), "--region", str(path),
               "-m", "landcover"])
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(lines) == 1 and "no polygon" in lines[0], err
    assert "warning: " in err and "dropped 2 non-polygon geometries" in err


def test_a_gpkg_with_several_layers_uses_the_first_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "areas.gpkg"
    gpd.GeoDataFrame(geometry=[POLY], crs=CRS_UTM).to_file(path, layer="first")
    gpd.GeoDataFrame(geometry=[shapely.box(X0, Y0 - 100, X0 + 100, Y0)],
                     crs=CRS_UTM).to_file(path, layer="second")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        region = read_region_file(path)
    assert region.geometry.area == pytest.approx(100)  # layer "first"
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1, msgs  # ours only (not pyogrio's "Specify layer parameter")
    assert "has 2 layers (first, second): the region is the first, first" in msgs[0]


def test_a_missing_relative_region_file_says_where_it_was_looked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RegionError) as err:
        read_region_file("aoi.geojson")
    assert str(err.value) == (f"region file not found: aoi.geojson (that is {tmp_path}/aoi.geojson"
                              ": relative paths, in a config file too, are taken from the "
                              "working directory)")
