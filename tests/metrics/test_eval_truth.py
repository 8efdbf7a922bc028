"""``geoseg eval`` against real class labels: a truth raster on any grid or CRS (resampled
nearest-neighbour onto the predictions'), a per-class report under the run's class names, a
confusion-matrix PNG, and one line for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from PIL import Image
from rasterio.warp import Resampling, calculate_default_transform, reproject

from geoseg.cli import main
from geoseg.layout import RunLayout
from geoseg.metrics import confusion_matrix
from geoseg.scoring import evaluate_class_map
from tests.change.conftest import ORIGIN, SHAPE, T_A, make_run, pattern
from tests.conftest import write_raster

NAMES = ["bare", "building", "road", "vegetation", "water"]


def _eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict, str]:
    rc = main(["eval", *args])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc == 0 else {}), cap.err.strip()


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run", pattern(SHAPE, seed=3), buildings=None)


def test_coarser_truth_is_resampled_nearest(run: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A 1 m truth of the 0.5 m predictions' 8-px blocks resamples onto them exactly."""
    pred = pattern(SHAPE, seed=3)
    coarse = write_raster(tmp_path / "coarse.tif", pred[::2, ::2], nodata=255,
                          transform=Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1]))
    same = write_raster(tmp_path / "same.tif", pred, transform=T_A, nodata=255)
    rc, rep, err = _eval(capsys, "--run", str(run), "--truth", str(coarse), "--no-png")
    assert rc == 0, err
    lc = rep["landcover"]
    assert lc["truth_resampled"] is True and lc["pixel_accuracy"] == 1.0
    assert lc["pixels"] == SHAPE[0] * SHAPE[1]
    rc, rep2, err = _eval(capsys, "--run", str(run), "--truth", str(same), "--no-png")
    assert rc == 0, err
    assert rep2["landcover"]["truth_resampled"] is False
    assert rep2["landcover"]["confusion"] == lc["confusion"]


def test_truth_in_another_crs(run: Path, tmp_path: Path) -> None:
    """Truth warped to EPSG:4326 at a finer pixel still scores the same map almost perfectly."""
    pred = pattern(SHAPE, seed=3)
    h, w = SHAPE
    left, top = ORIGIN
    bounds = (left, top - h * 0.5, left + w * 0.5, top)
    t, width, height = calculate_default_transform("EPSG:32633", "EPSG:4326", w, h, *bounds,
                                                   resolution=2e-6)
    out = np.full((height, width), 255, np.uint8)
    reproject(pred, out, src_transform=T_A, src_crs="EPSG:32633", dst_transform=t,
              dst_crs="EPSG:4326", resampling=Resampling.nearest, dst_nodata=255)
    truth = write_raster(tmp_path / "wgs84.tif", out, crs="EPSG:4326", transform=t, nodata=255)
    cs = evaluate_class_map(run / "predictions.zarr", "landcover", truth)
    assert cs.truth_resampled and cs.class_names == tuple(NAMES)
    assert cs.pixels.accuracy > 0.97
    assert cs.pixels.confusion.sum() > 0.95 * h * w


def test_more_classes_than_the_run_names_keep_its_names(run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``--num-classes`` above the run's list (truth with an extra class) keeps the run's
    names and labels the extra ids ``class <id>``, instead of dropping every name."""
    truth = pattern(SHAPE, seed=3).copy()
    truth[:8, :8] = 6                          # a class the run does not predict
    path = write_raster(tmp_path / "seven.tif", truth, transform=T_A, nodata=255)
    rc, rep, err = _eval(capsys, "--run", str(run), "--truth", str(path), "--no-png",
                         "--num-classes", "7")
    assert rc == 0, err
    per_class = rep["landcover"]["per_class"]
    assert list(per_class) == [*NAMES, "class 5", "class 6"]
    assert per_class["class 6"]["truth_px"] == 64 and per_class["class 6"]["recall"] == 0


def test_partial_overlap_and_declared_nodata(run: Path, tmp_path: Path) -> None:
    """Only the overlap is scored; the truth's declared nodata (here 9) is ignored."""
    pred = pattern(SHAPE, seed=3)
    truth = np.full((SHAPE[0], 128), 9, np.uint8)
    truth[:, :64] = pred[:, 64:]      # the truth starts at column 64 of the predictions
    truth[:10, :] = 9
    shifted = Affine(0.5, 0, ORIGIN[0] + 64 * 0.5, 0, -0.5, ORIGIN[1])
    path = write_raster(tmp_path / "half.tif", truth, transform=shifted, nodata=9)
    cs = evaluate_class_map(run / "predictions.zarr", "landcover", path)
    assert not cs.truth_resampled
    assert cs.pixels.confusion.sum() == (SHAPE[0] - 10) * 64 and cs.pixels.accuracy == 1.0


def test_per_class_report_and_png(run: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    pred = pattern(SHAPE, seed=3)
    truth = pred.copy()
    truth[40:72, 0:48] = 4            # water the model took for other classes
    path = write_raster(tmp_path / "truth.tif", truth, transform=T_A, nodata=255)
    rc, rep, err = _eval(capsys, "--run", str(run), "--truth", str(path))
    assert rc == 0, err
    lc = rep["landcover"]
    cm = confusion_matrix(pred, truth, 5)
    assert lc["confusion"] == cm.tolist()
    water = lc["per_class"]["water"]
    tp = cm[4, 4]
    assert water["precision"] == pytest.approx(tp / cm[:, 4].sum(), abs=1e-6)
    assert water["recall"] == pytest.approx(tp / cm[4].sum(), abs=1e-6)
    assert water["f1"] == pytest.approx(2 * tp / (cm[:, 4].sum() + cm[4].sum()), abs=1e-6)
    assert water["iou"] == pytest.approx(lc["iou"]["water"], abs=1e-6)
    assert list(lc["per_class"]) == NAMES  # the run's class names
    png = RunLayout(run).confusion("landcover")
    assert lc["confusion_png"] == str(png) and f"confusion matrix: {png}" in err
    assert png.name in RunLayout(run).outputs(["landcover", "buildings"])
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 200
    # beside --json, or where --confusion-png says; --no-png: none
    rc, rep, _ = _eval(capsys, "--run", str(run), "--truth", str(path), "--json",
                       str(tmp_path / "r.json"))
    beside = tmp_path / "r_confusion_landcover.png"
    assert rc == 0 and rep["landcover"]["confusion_png"] == str(beside) and beside.is_file()
    rc, _, _ = _eval(capsys, "--store", str(run / "predictions.zarr"), "--truth", str(path),
                     "--confusion-png", str(tmp_path / "cm_{layer}.png"))
    assert rc == 0 and (tmp_path / "cm_landcover.png").is_file()
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, rep, _ = _eval(capsys, "--run", str(run), "--truth", str(path), "--no-png")
    assert rc == 0 and "confusion_png" not in rep["landcover"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("case", ["missing", "not-raster", "no-crs", "no-overlap", "layer",
                                  "store", "not-run", "class", "all-nodata", "no-polygon-layer",
                                  "points-only", "nothing"])
def test_bad_input_is_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               case: str) -> None:
    pred = pattern(SHAPE, seed=3)
    good = write_raster(tmp_path / "truth.tif", pred, transform=T_A, nodata=255)
    args = ["--run", str(run), "--truth", str(good)]
    expect = {"missing": "not found", "not-raster": "not a raster", "no-crs": "has no CRS",
              "no-overlap": "does not overlap", "layer": "no layer 'roads'",
              "store": "not found", "not-run": "not a geoseg run",
              "class": "outside 0..4: mark nodata with 255 or give the right class count "
                       "(geoseg eval --num-classes)",
              "all-nodata": "share no valid pixel", "no-polygon-layer": "no polygon layer",
              "points-only": "holds no polygons", "nothing": "nothing to evaluate"}[case]
    if case == "missing":
        args[3] = str(tmp_path / "nope.tif")
    elif case == "not-raster":
        (tmp_path / "junk.tif").write_text("not a raster")
        args[3] = str(tmp_path / "junk.tif")
    elif case == "no-crs":
        args[3] = str(write_raster(tmp_path / "nocrs.tif", pred, crs=None, transform=T_A))
    elif case == "no-overlap":
        far = Affine(0.5, 0, ORIGIN[0] + 10_000, 0, -0.5, ORIGIN[1])
        args[3] = str(write_raster(tmp_path / "far.tif", pred, transform=far))
    elif case == "layer":
        args += ["--layer", "roads"]
    elif case == "store":
        args = ["--store", str(tmp_path / "nope.zarr"), "--truth", str(good)]
    elif case == "not-run":
        (tmp_path / "empty").mkdir()
        args[1] = str(tmp_path / "empty")
    elif case == "class":
        bad = pred.copy()
        bad[0, 0] = 7
        args[3] = str(write_raster(tmp_path / "bad.tif", bad, transform=T_A))
    elif case == "all-nodata":
        args[3] = str(write_raster(tmp_path / "nod.tif", np.full(SHAPE, 255, np.uint8),
                                   transform=T_A, nodata=255))
    elif case in ("no-polygon-layer", "points-only"):
        pts = gpd.GeoDataFrame(geometry=[shapely.Point(ORIGIN[0] + 5, ORIGIN[1] - 5)],
                               crs="EPSG:32633")
        boxes = gpd.GeoDataFrame({"confidence": [0.9]}, crs="EPSG:32633",
                                 geometry=[shapely.box(ORIGIN[0], ORIGIN[1] - 9,
                                                       ORIGIN[0] + 9, ORIGIN[1])])
        boxes.to_file(tmp_path / "pred.gpkg", layer="buildings", driver="GPKG")
        pts.to_file(tmp_path / "pts.gpkg", layer="points", driver="GPKG")
        args = ["--footprints", str(tmp_path / "pred.gpkg"), "--truth-footprints",
                str(tmp_path / "pts.gpkg")]
        if case == "points-only":
            args += ["--truth-layer", "points"]
    else:
        args = ["--run", str(run)]
    rc, _, err = _eval(capsys, *args)
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert rc != 0 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: ") and expect in lines[0], lines[0]


def test_truth_reader_is_bounded(run: Path, tmp_path: Path) -> None:
    """The warped truth is read one chunk window at a time (never as a whole raster)."""
    from geoseg.store import store_grid
    from geoseg.truth_raster import TruthReader

    pred = pattern(SHAPE, seed=3)
    path = write_raster(tmp_path / "coarse.tif", pred[::2, ::2], nodata=255,
                        transform=Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1]))
    grid, _ = store_grid(run / "predictions.zarr")
    with TruthReader(path, grid) as reader:
        from geoseg.grid import Window

        block = reader.read(Window(32, 32, 32, 32))
        outside = reader.read(Window(-8, -8, 16, 16))
    assert block.shape == (32, 32) and np.array_equal(block, pred[32:64, 32:64])
    assert (outside[:8] == 255).all() and (outside[:, :8] == 255).all()
    assert np.array_equal(outside[8:, 8:], pred[:8, :8])
    with rasterio.open(path) as src:
        assert src.width == SHAPE[1] // 2


def test_warped_truth_without_nodata_counts_only_its_extent(run: Path, tmp_path: Path) -> None:
    """Pixels outside a resampled truth are not class 0 even when it declares no nodata."""
    zeros = np.zeros((SHAPE[0] // 2, SHAPE[1] // 4), np.uint8)  # 1 m px: the left half
    path = write_raster(tmp_path / "zeros.tif", zeros,
                        transform=Affine(1.0, 0, ORIGIN[0], 0, -1.0, ORIGIN[1]))
    cs = evaluate_class_map(run / "predictions.zarr", "landcover", path)
    assert cs.truth_resampled and cs.pixels.confusion.sum() == SHAPE[0] * SHAPE[1] // 2
    assert cs.pixels.confusion[1:].sum() == 0


def test_run_supplies_the_footprints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--run RUN --truth-footprints FILE scores the run's own features.gpkg (truth in another
    CRS and format)."""
    from tests.change.conftest import box_px

    boxes = [box_px(10, 10, 20, 24), box_px(40, 60, 52, 70)]
    run = make_run(tmp_path / "run", pattern(SHAPE, seed=3),
                   buildings=[(i + 1, b) for i, b in enumerate(boxes)])
    truth = gpd.GeoDataFrame(geometry=boxes[:1], crs="EPSG:32633").to_crs("EPSG:4326")
    truth.to_file(tmp_path / "truth.geojson", driver="GeoJSON")
    rc, rep, err = _eval(capsys, "--run", str(run), "--truth-footprints",
                         str(tmp_path / "truth.geojson"))
    assert rc == 0, err
    b = rep["buildings"]
    assert (b["tp"], b["fp"], b["fn"]) == (1, 1, 0)


def test_class_scores_match_the_pixel_metrics(tmp_path: Path) -> None:
    from geoseg.class_report import class_scores, confusion_png
    from geoseg.metrics import dice_per_class, iou_per_class

    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50_000, (6, 6))
    cm[2, :] = 0                                   # a class absent from the truth
    scores = class_scores(cm)
    np.testing.assert_allclose([s.iou for s in scores], iou_per_class(cm))
    np.testing.assert_allclose([s.f1 for s in scores], dice_per_class(cm))
    assert np.isnan(scores[2].recall) and scores[2].to_dict()["recall"] is None
    assert scores[2].precision == 0.0 and scores[3].truth_px == int(cm[3].sum())
    for k in (1, 20):  # any class count renders
        png = confusion_png(np.eye(k, dtype=np.int64) * 10**9, None, tmp_path / f"{k}.png")
        with Image.open(png) as im:
            assert im.size[0] >= 200 and im.size[1] >= 100


def test_report_and_png_never_replace_a_users_file(run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--json (and the PNG beside it) may name a new file or geoseg's own earlier one; anything
    else, the truth raster it reads included, is refused before the scoring."""
    pred = pattern(SHAPE, seed=3)
    truth = write_raster(tmp_path / "truth.tif", pred, transform=T_A, nodata=255)
    before = truth.read_bytes()
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    for target in (truth, notes):
        rc, _, err = _eval(capsys, "--run", str(run), "--truth", str(truth), "--json",
                           str(target))
        assert rc == 2 and err.count("\n") == 0, err
        assert err.startswith("error: --json") and "geoseg did not write it" in err, err
    assert truth.read_bytes() == before and notes.read_text() == '{"mine": 1}'
    rc, _, err = _eval(capsys, "--run", str(run), "--truth", str(truth), "--json",
                       str(tmp_path / "nope" / "r.json"))
    assert rc == 2 and "does not exist" in err and not (tmp_path / "nope").exists(), err
    report = tmp_path / "r.json"
    for _ in range(2):  # a report of geoseg eval, and its PNG, are replaced
        rc, rep, err = _eval(capsys, "--run", str(run), "--truth", str(truth), "--json",
                             str(report))
        assert rc == 0, err
        assert json.loads(report.read_text())["report"] == "geoseg eval"
        assert rep["landcover"]["miou"] == 1.0
    png = tmp_path / "r_confusion_landcover.png"
    png.write_bytes(b"my figure")
    rc, _, err = _eval(capsys, "--run", str(run), "--truth", str(truth), "--json", str(report))
    assert rc == 2 and "confusion matrix" in err and "geoseg did not write it" in err, err
    assert png.read_bytes() == b"my figure"


def test_incomplete_run_needs_partial(run: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.store import COMPLETE_ATTR

    pred = pattern(SHAPE, seed=3)
    truth = write_raster(tmp_path / "truth.tif", pred, transform=T_A, nodata=255)
    attrs_file = run / "predictions.zarr" / ".zattrs"
    attrs = json.loads(attrs_file.read_text())
    attrs_file.write_text(json.dumps({**attrs, COMPLETE_ATTR: False}))
    rc, _, err = _eval(capsys, "--run", str(run), "--truth", str(truth))
    assert rc != 0 and err.count("\n") == 0 and "--partial" in err and "--resume" in err, err
    rc, rep, err = _eval(capsys, "--run", str(run), "--truth", str(truth), "--partial")
    assert rc == 0 and rep["landcover"]["miou"] == 1.0, err


@pytest.mark.parametrize("flags, needle", [(["--num-classes", "-1"], "num_classes"),
                                           (["--iou", "5"], "iou"),
                                           (["--boundary-tol", "-2"], "boundary_tol")])
def test_bad_numbers_are_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  flags: list[str], needle: str) -> None:
    truth = write_raster(tmp_path / "truth.tif", pattern(SHAPE, seed=3), transform=T_A,
                         nodata=255)
    rc, _, err = _eval(capsys, "--run", str(run), "--truth", str(truth), *flags)
    assert rc == 2 and err.count("\n") == 0 and needle in err and "Traceback" not in err, err


@pytest.mark.parametrize("model, needle", [
    (False, "has no building footprints: it ran without a buildings model"),
    (True, "found no building (its features.gpkg has no buildings layer)")])
def test_a_run_without_footprints_is_not_scored_by_its_land_cover(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], model: bool, needle: str) -> None:
    """A land-cover-only run's features.gpkg holds only land-cover polygons, which eval
    scored as building footprints (162 false positives); it is one line now."""
    run = make_run(tmp_path / "run", pattern(SHAPE, seed=3), buildings=None,
                   building_model=model)
    gpd.GeoDataFrame({"class_id": [1]}, geometry=[shapely.box(*T_A * (0, 8), *T_A * (8, 0))],
                     crs="EPSG:32633").to_file(run / "features.gpkg", layer="landcover")
    truth = tmp_path / "truth.gpkg"
    gpd.GeoDataFrame(geometry=[shapely.box(*T_A * (0, 8), *T_A * (8, 0))],
                     crs="EPSG:32633").to_file(truth, layer="buildings")
    rc, _, err = _eval(capsys, "--run", str(run), "--truth-footprints", str(truth))
    assert rc == 2 and needle in err and len(err.splitlines()) == 1, err
