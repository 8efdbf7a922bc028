"""End to end on a generated two-date scene, with runs made from its truth (no models): the
change found must be exactly the scene's change."""

from __future__ import annotations

from pathlib import Path

import pyogrio
import rasterio

from geoseg.change import compare_runs, evaluate_change
from geoseg.grid import normalize_crs
from geoseg.sample import generate_scene
from tests.change.conftest import make_run, write_buildings


def test_truth_runs_reproduce_the_scene_change(tmp_path: Path) -> None:
    scene = generate_scene(tmp_path / "scene", size=512, seed=3).root
    runs = []
    for date in ("t0", "t1"):
        with rasterio.open(scene / f"landcover_{date}.tif") as src:
            cls, transform, crs = src.read(1), src.transform, normalize_crs(src.crs)
        df = pyogrio.read_dataframe(scene / f"buildings_{date}.gpkg", layer="buildings")
        run = make_run(tmp_path / date, cls, 255, transform=transform, crs=crs, chunk=128,
                       date=date, buildings=None)
        write_buildings(run / "features.gpkg", list(zip(df["id"], df.geometry, strict=True)),
                        crs, date)
        runs.append(run)
    res = compare_runs(runs[0], runs[1], tmp_path / "out", min_change_width=1)
    rep = evaluate_change(res, scene)
    px = rep["pixels"]
    assert px["precision"] == 1.0 and px["recall"] == 1.0 and px["tp"] > 0
    assert rep["buildings"]["new"]["f1"] == 1.0
    assert rep["buildings"]["demolished"]["f1"] == 1.0
    assert rep["buildings"]["modified"]["precision"] == 1.0
