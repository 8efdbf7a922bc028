"""``geoseg eval`` refuses truth that would score a wrong result without saying so: footprint
truth with no features or none on the run's extent (as a raster truth already is), and a truth
raster's out-of-range class ids are reported as they are in the file (negative ones too)."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
from affine import Affine
from shapely.affinity import translate

from geoseg.cli import main
from tests.change.conftest import ORIGIN, SHAPE, T_A, box_px, make_run, pattern
from tests.conftest import write_raster

BOXES = [box_px(10, 10, 20, 24), box_px(40, 60, 52, 70)]


def _eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["eval", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err.strip()


def _one_line(rc: int, err: str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", pattern(SHAPE, seed=3),
                    buildings=[(i + 1, b) for i, b in enumerate(BOXES)])


@pytest.mark.parametrize("how", ["run", "footprints"])
def test_footprint_truth_off_the_run_is_refused(run: Path, tmp_path: Path, how: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Truth 100 km east of the run (GeoPackage, and GeoJSON in another CRS) is one line, whether
    the run is named or its features.gpkg is."""
    truth = gpd.GeoDataFrame(geometry=BOXES, crs="EPSG:32633")
    far = truth.copy()
    far["geometry"] = truth.geometry.translate(100_000, 0)
    far.to_file(tmp_path / "far.gpkg", layer="buildings", driver="GPKG")
    far.to_crs("EPSG:4326").to_file(tmp_path / "far.geojson", driver="GeoJSON")
    pred = ["--run", str(run)] if how == "run" else ["--footprints", str(run / "features.gpkg")]
    for name in ("far.gpkg", "far.geojson"):
        rc, out, err = _eval(capsys, *pred, "--truth-footprints", str(tmp_path / name))
        line = _one_line(rc, err)
        assert name in line and "do not overlap the predictions" in line, line
        assert "CRS and extent" in line and not out
    truth.to_file(tmp_path / "near.gpkg", layer="buildings", driver="GPKG")  # on the run: scored
    rc, out, err = _eval(capsys, *pred, "--truth-footprints", str(tmp_path / "near.gpkg"))
    assert rc == 0, err
    assert json.loads(out)["buildings"]["f1"] == 1.0


def test_footprint_truth_partly_on_the_run_is_scored(run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The truth building 100 km off the run was scored as missed (recall halved by truth
    nobody predicted); it is left out, with a warning that says how many."""
    truth = gpd.GeoDataFrame(geometry=[BOXES[0], translate(BOXES[1], 100_000)],
                             crs="EPSG:32633")
    truth.to_file(tmp_path / "half.gpkg", layer="buildings", driver="GPKG")
    rc, out, err = _eval(capsys, "--run", str(run), "--truth-footprints",
                         str(tmp_path / "half.gpkg"))
    assert rc == 0, err
    assert "warning: 1 of 2 truth footprints lie outside the run's grid" in err
    b = json.loads(out)["buildings"]
    assert (b["tp"], b["fp"], b["fn"]) == (1, 1, 0)


@pytest.mark.parametrize("how", ["run", "footprints"])
def test_empty_footprint_truth_is_refused(run: Path, tmp_path: Path, how: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    empty = gpd.GeoDataFrame(geometry=BOXES, crs="EPSG:32633").iloc[0:0]
    empty.to_file(tmp_path / "empty.gpkg", layer="buildings", driver="GPKG")
    pred = ["--run", str(run)] if how == "run" else ["--footprints", str(run / "features.gpkg")]
    rc, out, err = _eval(capsys, *pred, "--truth-footprints", str(tmp_path / "empty.gpkg"),
                         "--truth-layer", "buildings")
    line = _one_line(rc, err)
    assert "empty.gpkg" in line and "(layer buildings) holds no features" in line, line
    assert not out


def test_footprints_outside_a_run_are_still_scored(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Without a run there is no extent to check: disjoint files score 0 as before."""
    pred = gpd.GeoDataFrame({"confidence": [0.9, 0.8]}, geometry=BOXES, crs="EPSG:32633")
    pred.to_file(tmp_path / "pred.gpkg", layer="buildings", driver="GPKG")
    far = pred.copy()
    far["geometry"] = pred.geometry.translate(100_000, 0)
    far.to_file(tmp_path / "far.gpkg", layer="buildings", driver="GPKG")
    rc, out, err = _eval(capsys, "--footprints", str(tmp_path / "pred.gpkg"),
                         "--truth-footprints", str(tmp_path / "far.gpkg"))
    assert rc == 0, err
    b = json.loads(out)["buildings"]
    assert (b["tp"], b["fp"], b["fn"]) == (0, 2, 2)


@pytest.mark.parametrize("dtype,grid", [("int16", "same"), ("int16", "coarse"),
                                        ("int8", "same"), ("int8", "coarse"),
                                        ("int32", "coarse"), ("float32", "same")])
def test_negative_truth_class_is_reported_as_is(run: Path, tmp_path: Path, dtype: str, grid: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """-3 in a signed truth raster (on the predictions' grid or resampled) is named -3, never
    a wrapped 253."""
    truth = pattern(SHAPE, seed=3).astype(dtype)
    truth[:4, :4] = -3
    if grid == "same":
        path = write_raster(tmp_path / "neg.tif", truth, transform=T_A)
    else:
        path = write_raster(tmp_path / "neg.tif", truth[::2, ::2].copy(),
                            transform=Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1]))
    rc, out, err = _eval(capsys, "--run", str(run), "--truth", str(path), "--no-png")
    line = _one_line(rc, err)
    assert "truth holds class -3, outside 0..4" in line and "253" not in line, line
    assert not out


def test_footprint_truth_over_the_images_nodata_is_not_scored(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A truth building where the run's image had no data (a nodata collar) cannot have been
    predicted: it was a miss (the README says nodata is excluded); it is left out now."""
    cls = pattern(SHAPE, seed=3)
    first = BOXES[0]
    col, row = ~T_A * first.representative_point().coords[0]
    cls[: int(row) + 5, : int(col) + 5] = 255  # the image's nodata under the first building
    run = make_run(tmp_path / "run", cls, buildings=[(2, BOXES[1])])  # only the other found
    gpd.GeoDataFrame(geometry=BOXES[:2], crs="EPSG:32633").to_file(
        tmp_path / "truth.gpkg", layer="buildings", driver="GPKG")
    rc, out, err = _eval(capsys, "--run", str(run), "--truth-footprints",
                         str(tmp_path / "truth.gpkg"))
    assert rc == 0, err
    b = json.loads(out)["buildings"]
    assert (b["tp"], b["fp"], b["fn"]) == (1, 0, 0) and "1 of 2 truth footprints" in err
