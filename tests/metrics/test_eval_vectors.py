"""geoseg eval scores footprints from any OGR format, layer and CRS; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
import shapely

from geoseg.cli import main


def _buildings(n: int = 6) -> gpd.GeoDataFrame:
    boxes = [shapely.box(500000 + 30 * i, 5100000, 500012 + 30 * i, 5100010) for i in range(n)]
    return gpd.GeoDataFrame({"confidence": [0.9] * n}, geometry=boxes, crs="EPSG:32633")


def _eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["eval", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err.strip()


def test_geojson_truth_in_another_crs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = tmp_path / "pred.gpkg"
    _buildings().to_file(pred, layer="detections", driver="GPKG")
    truth = tmp_path / "truth.geojson"
    t = _buildings().iloc[:4].to_crs("EPSG:4326")
    t = gpd.GeoDataFrame(geometry=[*t.geometry, shapely.Point(t.geometry.iloc[0].centroid)],
                         crs="EPSG:4326")  # a point among the polygons: ignored with a warning
    t.to_file(truth, driver="GeoJSON")
    rc, out, err = _eval(capsys, "--footprints", str(pred), "--truth-footprints", str(truth))
    assert rc == 0, err
    scores = json.loads(out)["buildings"]
    assert scores["tp"] == 4 and scores["fp"] == 2 and scores["fn"] == 0
    assert "non-polygon" in err


def test_named_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred = tmp_path / "pred.gpkg"
    _buildings().to_file(pred, layer="a", driver="GPKG")
    _buildings(2).to_file(pred, layer="b", driver="GPKG")
    truth = tmp_path / "truth.fgb"
    _buildings(2).to_file(truth, driver="FlatGeobuf")
    rc, out, _ = _eval(capsys, "--footprints", str(pred), "--footprints-layer", "b",
                       "--truth-footprints", str(truth))
    assert rc == 0 and json.loads(out)["buildings"]["f1"] == 1.0


@pytest.mark.parametrize("case", ["missing", "layer", "not-vector"])
def test_bad_vector_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     case: str) -> None:
    pred = tmp_path / "pred.gpkg"
    _buildings().to_file(pred, layer="buildings", driver="GPKG")
    truth = tmp_path / "truth.gpkg"
    _buildings().to_file(truth, layer="buildings", driver="GPKG")
    args = ["--footprints", str(pred), "--truth-footprints", str(truth)]
    if case == "missing":
        args[3] = str(tmp_path / "nope.geojson")
    elif case == "layer":
        args += ["--truth-layer", "footprints"]
    else:
        (tmp_path / "junk.geojson").write_text("not json")
        args[3] = str(tmp_path / "junk.geojson")
    rc, _, err = _eval(capsys, *args)
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert {"missing": "not found", "layer": "no layer 'footprints'",
            "not-vector": "not a vector file"}[case] in lines[0]
