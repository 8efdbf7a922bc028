"""A region whose polygons miss the image is refused, although its bounding box overlaps it
(such a run used to "complete" with 0 valid pixels)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import CRS, Transformer

from geoseg.cli import main
from geoseg.errors import RegionError
from geoseg.grid import GeoBox
from geoseg.region import Region, clip_grid
from tests.conftest import CRS_UTM, write_raster

X0, Y0 = 500_000.0, 5_100_000.0  # the image's top-left corner: 400 × 400 pixels of 0.5 m
GRID = GeoBox((400, 400), Affine(0.5, 0, X0, 0, -0.5, Y0), CRS.from_user_input(CRS_UTM))
# an L around the image's lower-left: its bounding box covers the whole image, its area none
L_MISS = shapely.Polygon([(X0 - 100, Y0 - 300), (X0 + 300, Y0 - 300), (X0 + 300, Y0 - 250),
                          (X0 - 50, Y0 - 250), (X0 - 50, Y0 + 100), (X0 - 100, Y0 + 100)])
# two squares on opposite corners, both outside the image
TWO_MISS = shapely.MultiPolygon([shapely.box(X0 - 60, Y0 + 10, X0 - 10, Y0 + 60),
                                 shapely.box(X0 + 210, Y0 - 260, X0 + 260, Y0 - 210)])


@pytest.mark.parametrize("geom", [L_MISS, TWO_MISS], ids=["l-shape", "two-parts"])
def test_polygon_missing_the_image_is_refused(geom: shapely.Geometry) -> None:
    b = GRID.bounds
    assert shapely.box(*geom.bounds).contains(shapely.box(b.left, b.bottom, b.right, b.top))
    with pytest.raises(RegionError, match="does not overlap the image") as err:
        clip_grid(GRID, Region(geom, GRID.crs))
    assert "\n" not in str(err.value) and "EPSG:32633" in str(err.value)


def test_polygon_missing_the_image_is_refused_after_reprojection() -> None:
    """The region given in lon/lat is tested in the image's CRS."""
    to_ll = Transformer.from_crs(CRS_UTM, "EPSG:4326", always_xy=True)
    geom = shapely.transform(shapely.segmentize(L_MISS, 10.0),
                             lambda xy: np.column_stack(to_ll.transform(*xy.T)))
    with pytest.raises(RegionError, match="does not overlap the image"):
        clip_grid(GRID, Region(geom, CRS.from_epsg(4326)))


def test_polygon_touching_the_image_only_along_an_edge_is_refused() -> None:
    edge = shapely.Polygon([(X0 - 50, Y0 - 300), (X0, Y0 - 300), (X0, Y0 + 50),
                            (X0 + 300, Y0 + 50), (X0 + 300, Y0 + 100), (X0 - 50, Y0 + 100)])
    with pytest.raises(RegionError, match="does not overlap the image"):
        clip_grid(GRID, Region(edge, GRID.crs))


def test_polygon_with_one_part_inside_is_kept() -> None:
    """Only a region with no area in the image is refused: one part inside suffices, and the
    window is the region's bounding box clipped to the image, as before."""
    geom = shapely.MultiPolygon([*TWO_MISS.geoms, shapely.box(X0 + 10, Y0 - 30, X0 + 20,
                                                              Y0 - 20)])
    window, clipped = clip_grid(GRID, Region(geom, GRID.crs))
    assert window == GRID.window and clipped is not None
    window, _ = clip_grid(GRID, Region(L_MISS.union(shapely.box(X0, Y0 - 10, X0 + 10, Y0)),
                                       GRID.crs))
    assert window == GRID.window


def test_cli_refuses_a_region_missing_the_image_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tif = write_raster(tmp_path / "a.tif", np.ones((4, 400, 400), np.uint8),
                       transform=GRID.transform, nodata=0)
    region = tmp_path / "l.geojson"
    gpd.GeoDataFrame(geometry=[L_MISS], crs=CRS_UTM).to_file(region, driver="GeoJSON")
    out = tmp_path / "o"
    rc = main(["-q", "run", str(tif), "-o", str(out), "--region", str(region),
               "-m", "landcover"])
    err = capsys.readouterr().err.strip()
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(lines) == 1 and "does not overlap the image" in lines[0], err
    assert "Traceback" not in err and not (out / "summary.json").exists()
