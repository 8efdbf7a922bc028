"""``geoseg eval`` end to end on a tiny hand-made run and scene: boundary F1 of the land cover,
SpaceNet F1, COCO AP and PQ of the footprints, in the JSON report and its headline."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
from shapely.geometry.base import BaseGeometry

from geoseg.cli import main
from geoseg.errors import GeoSegError
from geoseg.metrics import BoundaryScores, boundary_counts
from geoseg.scoring import evaluate_instances, evaluate_run
from tests.change.conftest import SHAPE, T_A, UTM, box_px, make_run, pattern
from tests.conftest import write_raster

# truth buildings (rows r0..r1, cols c0..c1 in pixels); B1 crosses the 32 px chunk edges
B1, B2, B3 = (28, 28, 38, 38), (50, 70, 60, 80), (80, 100, 90, 110)
# predictions (confidence, rectangle): P1 = B1 (IoU 1); P2 = B2 two columns to the right
# (IoU 80/120 = 2/3); P3 on background; P4 wholly on truth nodata rows 90..95 (void)
PREDICTIONS = [(0.9, B1), (0.6, (50, 72, 60, 82)), (0.95, (5, 100, 10, 110)),
               (0.99, (90, 10, 96, 20))]
# COCO, by score: P4 is no detection (no valid pixel); P3 FP, P1 TP, then P2 TP at IoU
# thresholds 0.50..0.65 (recall 0, 1/3, 2/3; precision made monotone 2/3 up to recall 2/3:
# 67 of 101 points) and FP at 0.70..0.95 (precision 1/2 up to recall 1/3: 34 points)
AP50 = 67 * (2 / 3) / 101
AP75 = 34 * 0.5 / 101
AP = (4 * AP50 + 6 * AP75) / 10
# PQ: matches P1-B1 (1.0), P2-B2 (2/3); FP P3; P4 lies in void; FN B3
PQ, SQ, RQ = (5 / 3) / 3, (5 / 3) / 2, 2 / 3


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``geoseg.cli.main`` (parse, run, one-line errors) with its captured output."""
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _rect(r: tuple[int, int, int, int]) -> BaseGeometry:
    return box_px(*r)


def _scene(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    truth_lc = pattern(SHAPE, seed=1)
    truth_lc[90:, :] = 255                      # truth nodata
    pred_lc = truth_lc.copy()
    pred_lc[90:, :] = 3
    pred_lc[8:24, 40:72] = 4                    # a misplaced water body
    run = make_run(tmp_path / "run", pred_lc, buildings=None)
    geoms = [_rect(r) for _, r in PREDICTIONS]
    df = gpd.GeoDataFrame({"id": np.arange(1, len(geoms) + 1),
                           "confidence": [c for c, _ in PREDICTIONS]},
                          geometry=gpd.GeoSeries(geoms, crs=UTM), crs=UTM)
    pyogrio.write_dataframe(df, run / "features.gpkg", layer="buildings", driver="GPKG",
                            geometry_type="Polygon")
    scene = tmp_path / "scene"
    scene.mkdir()
    write_raster(scene / "landcover_t0.tif", truth_lc, transform=T_A, nodata=255)
    inst = np.zeros(SHAPE, np.uint32)
    for k, (r0, c0, r1, c1) in enumerate((B1, B2, B3), start=1):
        inst[r0:r1, c0:c1] = k
    write_raster(scene / "instances_t0.tif", inst, transform=T_A)
    truth = gpd.GeoDataFrame({"id": [1, 2, 3]},
                             geometry=gpd.GeoSeries([_rect(b) for b in (B1, B2, B3)], crs=UTM),
                             crs=UTM)
    pyogrio.write_dataframe(truth, scene / "buildings_t0.gpkg", layer="buildings",
                            driver="GPKG", geometry_type="Polygon")
    return run, scene, pred_lc, truth_lc


def test_evaluate_run_reports_the_new_metrics(tmp_path: Path) -> None:
    run, scene, pred_lc, truth_lc = _scene(tmp_path)
    rep = evaluate_run(run, scene)
    # boundary F1 over 32 px chunks equals that of the whole map at once
    whole = BoundaryScores.from_counts(boundary_counts(pred_lc, truth_lc, 5, tol=2))
    lc = rep["landcover"]
    assert lc["boundary"]["mean_f1"] == pytest.approx(whole.mean_f1, abs=1e-6)
    assert lc["boundary"]["f1"]["water"] == pytest.approx(whole.f1[4], abs=1e-6)
    assert 0 < whole.mean_f1 < 1 and lc["boundary"]["tolerance_px"] == 2
    assert {"pixel_accuracy", "miou", "iou", "dice", "pixels", "confusion"} < set(lc)
    b = rep["buildings"]
    assert (b["tp"], b["fp"], b["fn"]) == (2, 2, 1)  # SpaceNet on polygons: P4 is an FP here
    coco = b["coco"]
    assert coco["ap50"] == pytest.approx(AP50, abs=1e-6)
    assert coco["ap75"] == pytest.approx(AP75, abs=1e-6)
    assert coco["ap"] == pytest.approx(AP, abs=1e-6)
    assert (coco["truths"], coco["detections"], coco["max_dets"]) == (3, 3, None)
    assert b["panoptic"] == {"pq": pytest.approx(PQ, abs=1e-6), "sq": pytest.approx(SQ, abs=1e-6),
                             "rq": pytest.approx(RQ, abs=1e-6), "tp": 2, "fp": 1, "fn": 1}
    assert set(rep["headline"]) == {"landcover mIoU", "landcover boundary F1",
                                    "building F1@0.5", "building AP", "building PQ"}
    assert rep["headline"]["building AP"] == pytest.approx(AP)
    assert rep["headline"]["building PQ"] == pytest.approx(PQ)


def test_eval_command_prints_and_writes_json(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run, scene, _, _ = _scene(tmp_path)
    out = tmp_path / "eval.json"
    rc, stdout, err = _main(["eval", "--run", str(run), "--scene", str(scene), "--json",
                             str(out), "--boundary-tol", "1"], capsys)
    assert rc == 0, err
    rep = json.loads(out.read_text())
    assert json.loads(stdout) == rep
    assert rep["landcover"]["boundary"]["tolerance_px"] == 1
    assert rep["buildings"]["coco"]["ap50"] == pytest.approx(AP50, abs=1e-6)
    # the separate inputs: a store layer + truth raster, footprints + truth instances
    rc, stdout, err = _main(["eval", "--store", str(run / "predictions.zarr"), "--truth",
                             str(scene / "landcover_t0.tif"), "--footprints",
                             str(run / "features.gpkg"), "--truth-instances",
                             str(scene / "instances_t0.tif")], capsys)
    assert rc == 0, err
    rep = json.loads(stdout)
    assert "mean_f1" in rep["landcover"]["boundary"]
    # no void raster here: P4 is a detection (the top-scored one, an FP) and a PQ FP
    assert rep["buildings"]["panoptic"]["fp"] == 2
    assert rep["buildings"]["coco"]["detections"] == 4


def test_footprints_need_confidence(tmp_path: Path) -> None:
    run, scene, _, _ = _scene(tmp_path)
    df = gpd.read_file(run / "features.gpkg", layer="buildings").drop(columns="confidence")
    pyogrio.write_dataframe(df, tmp_path / "noconf.gpkg", layer="buildings", driver="GPKG")
    with pytest.raises(GeoSegError, match="confidence"):
        evaluate_instances(tmp_path / "noconf.gpkg", scene / "instances_t0.tif")
