"""``geoseg change`` through its parser: summary, one-line errors, overwrite, quicklooks,
evaluation against truth."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from geoseg.change import evaluate_change
from geoseg.change.quicklook import decimate
from geoseg.cli.change_cmd import add_change_command
from geoseg.errors import GeoSegError
from tests.change.conftest import SHAPE, T_A, make_run
from tests.change.test_buildings import A_BUILDINGS, B_BUILDINGS
from tests.conftest import write_raster


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """What geoseg.cli.main does once the command is wired: parse, run, one-line errors."""
    p = argparse.ArgumentParser(prog="geoseg")
    add_change_command(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    try:
        rc = int(args.fn(args))
    except GeoSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        rc = exc.exit_code
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture()
def runs(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    a_cls = np.full(SHAPE, 3, np.uint8)
    b_cls = a_cls.copy()
    b_cls[10:30, 40:80] = 1
    b_cls[50:90, 90:120] = 4
    a = make_run(tmp_path / "a", a_cls, buildings=A_BUILDINGS)
    b = make_run(tmp_path / "b", b_cls, buildings=B_BUILDINGS, date="2024-06-01")
    return a, b, a_cls, b_cls


def test_cli_prints_summary(tmp_path: Path, runs: tuple[Path, Path, np.ndarray, np.ndarray],
                            capsys: pytest.CaptureFixture[str]) -> None:
    a, b, _, _ = runs
    out = tmp_path / "out"
    # the fixture's land cover does not show the buildings' extensions: without pixel evidence
    # for them they are "uncertain" unless the modified check is off (issue 17)
    rc, stdout, err = _main(["change", str(a), str(b), "-o", str(out), "--min-confidence",
                             "0.6", "--modified-min-changed", "0"], capsys)
    assert rc == 0, err
    assert "ha changed" in stdout and "vegetation -> water" in stdout
    assert "1 new" in stdout and "1 demolished" in stdout and "3 modified" in stdout
    assert str(out / "change.zarr") in stdout
    for name in ("change.zarr", "change.gpkg", "transitions.csv", "change_summary.json",
                 "before.png", "after.png", "change.png"):
        assert (out / name).exists(), name


def test_cli_refuses_non_empty_output(tmp_path: Path,
                                      runs: tuple[Path, Path, np.ndarray, np.ndarray],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    a, b, _, _ = runs
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, _, err = _main(["change", str(a), str(b), "-o", str(out)], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "--overwrite" in err
    rc, _, err = _main(["change", str(a), str(b), "-o", str(out), "--overwrite"], capsys)
    assert rc == 0, err
    assert (out / "notes.txt").read_text() == "mine"  # only change outputs are replaced
    rc, _, err = _main(["change", str(a), str(b), "-o", str(out), "--overwrite"], capsys)
    assert rc == 0, err


def test_cli_overwrite_replaces_only_what_geoseg_wrote(
        tmp_path: Path, runs: tuple[Path, Path, np.ndarray, np.ndarray],
        capsys: pytest.CaptureFixture[str]) -> None:
    """A file with a change output's name that no `geoseg change` wrote is refused, --overwrite
    or not; in an earlier change output a symlink is removed, never its target."""
    a, b, _, _ = runs
    out = tmp_path / "u"
    out.mkdir()
    (out / "transitions.csv").write_text("my csv")
    (out / "evaluation.json").write_text("my eval")
    rc, _, err = _main(["change", str(a), str(b), "-o", str(out), "--overwrite"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "did not write" in err, err
    assert (out / "transitions.csv").read_text() == "my csv"
    assert (out / "evaluation.json").read_text() == "my eval"
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "x").write_text("precious")
    linked = tmp_path / "c2"
    linked.mkdir()
    (linked / "change.zarr").symlink_to(user)
    rc, _, err = _main(["change", str(a), str(b), "-o", str(linked), "--overwrite"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "change.zarr" in err, err
    assert (user / "x").read_text() == "precious" and sorted(user.iterdir()) == [user / "x"]
    done = tmp_path / "done"
    rc, _, err = _main(["change", str(a), str(b), "-o", str(done)], capsys)
    assert rc == 0, err
    (done / "before.png").unlink()
    (done / "before.png").symlink_to(user / "x")
    rc, _, err = _main(["change", str(a), str(b), "-o", str(done), "--overwrite"], capsys)
    assert rc == 0, err
    assert (user / "x").read_text() == "precious"
    assert not (done / "before.png").is_symlink() and (done / "before.png").stat().st_size > 0


def test_cli_output_in_use_is_refused(tmp_path: Path,
                                      runs: tuple[Path, Path, np.ndarray, np.ndarray],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.outdir import FolderLock

    a, b, _, _ = runs
    out = tmp_path / "c"
    out.mkdir()
    with FolderLock(out).acquire("geoseg change"):
        rc, _, err = _main(["change", str(a), str(b), "-o", str(out)], capsys)
    assert rc != 0 and err.count("\n") == 1 and "in use" in err, err
    assert sorted(p.name for p in out.iterdir()) == []
    rc, _, err = _main(["change", str(a), str(b), "-o", str(out)], capsys)
    assert rc == 0, err
    assert not (out / ".geoseg.lock").exists()


@pytest.mark.parametrize("argv_tail, needle", [
    (["--min-confidence", "2"], "min_confidence"),
    (["--iou-modified", "0"], "iou_modified"),
    (["--min-spectral-change", "-1"], "min_spectral_change"),
    (["--images", "nope_a.tif", "nope_b.tif"], "nope_a.tif"),
])
def test_cli_bad_values_one_line(tmp_path: Path, runs: tuple[Path, Path, np.ndarray, np.ndarray],
                                 capsys: pytest.CaptureFixture[str], argv_tail: list[str],
                                 needle: str) -> None:
    a, b, _, _ = runs
    rc, _, err = _main(["change", str(a), str(b), "-o", str(tmp_path / "o"), *argv_tail], capsys)
    assert rc == 2 and err.count("\n") == 1 and needle in err


def test_cli_output_in_object_storage_is_one_line(
        tmp_path: Path, runs: tuple[Path, Path, np.ndarray, np.ndarray],
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``-o s3://...`` made a local folder named ``s3:`` and ended in a traceback."""
    a, b, _, _ = runs
    monkeypatch.chdir(tmp_path)
    rc, _, err = _main(["change", str(a), str(b), "-o", "s3://bucket/change"], capsys)
    assert rc == 2 and err.count("\n") == 1 and "writes to a local folder" in err
    assert not (tmp_path / "s3:").exists()


def test_cli_missing_run_one_line(tmp_path: Path, runs: tuple[Path, Path, np.ndarray, np.ndarray],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    a, _, _, _ = runs
    rc, _, err = _main(["change", str(a), str(tmp_path / "nope"), "-o", str(tmp_path / "o")],
                       capsys)
    assert rc == 2 and err.count("\n") == 1 and "geoseg run" in err


def test_quicklooks_show_the_change(tmp_path: Path,
                                    runs: tuple[Path, Path, np.ndarray, np.ndarray],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    a, b, _, _ = runs
    out = tmp_path / "out"
    assert _main(["change", str(a), str(b), "-o", str(out)], capsys)[0] == 0
    img = np.asarray(Image.open(out / "change.png").convert("RGB"))
    assert img.shape[0] >= SHAPE[0] and img.shape[1] > SHAPE[1]  # map + legend
    unchanged, to_water, to_building = img[2, 2], img[70, 100], img[20, 60]
    assert max(unchanged) - min(unchanged) < 40  # grey-ish
    assert to_water[2] > 200 and to_water[0] < 100  # strong blue
    assert to_building[0] > 200 and to_building[1] < 100  # strong red
    before = np.asarray(Image.open(out / "before.png").convert("RGB"))
    after = np.asarray(Image.open(out / "after.png").convert("RGB"))
    assert tuple(before[70, 100]) == (0x31, 0xA3, 0x54) and tuple(after[70, 100]) == (
        0x31, 0x82, 0xBD)


def test_decimate_bounds_the_size() -> None:
    import dask.array as da
    import xarray as xr

    arr = xr.DataArray(da.zeros((3000, 2100), np.uint8, chunks=512), dims=("y", "x"))
    assert decimate(arr, 1024).shape == (1000, 700)


def _scene(root: Path, a_cls: np.ndarray, b_cls: np.ndarray) -> Path:
    import geopandas as gpd
    import pyogrio
    from pyproj import CRS

    root.mkdir()
    write_raster(root / "landcover_t0.tif", a_cls, transform=T_A, nodata=255)
    write_raster(root / "landcover_t1.tif", b_cls, transform=T_A, nodata=255)
    a = dict(A_BUILDINGS)
    b = dict(B_BUILDINGS)
    rows = [("new", None, 16, b[16]), ("demolished", 2, None, a[2]),
            ("extended", 3, 3, b[13]), ("extended", 5, 5, b[15])]
    crs = CRS.from_epsg(32633)
    df = gpd.GeoDataFrame({"change": [r[0] for r in rows],
                           "id_t0": pd.array([r[1] for r in rows], dtype="Int64"),
                           "id_t1": pd.array([r[2] for r in rows], dtype="Int64")},
                          geometry=gpd.GeoSeries([r[3] for r in rows], crs=crs), crs=crs)
    pyogrio.write_dataframe(df, root / "changes.gpkg", layer="building_changes",
                            driver="GPKG", geometry_type="Polygon")
    return root


def test_evaluate_change_against_truth(tmp_path: Path,
                                       runs: tuple[Path, Path, np.ndarray, np.ndarray],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    a, b, a_cls, b_cls = runs
    from geoseg.change import compare_runs

    res = compare_runs(a, b, tmp_path / "out", modified_min_changed=0.0)  # as above
    truth_b = b_cls.copy()
    truth_b[0:5, 0:5] = 0  # a change the prediction missed (25 px)
    truth_a = a_cls.copy()
    truth_a[90:96, :] = 255  # truth nodata: not scored
    scene = _scene(tmp_path / "scene", truth_a, truth_b)
    rep = evaluate_change(res, scene)
    px = rep["pixels"]
    assert px["fp"] == 0 and px["fn"] == 25 and px["precision"] == 1.0
    assert px["tp"] == 20 * 40 + 40 * 30 and px["coverage"] == 1.0
    assert rep["buildings"]["new"]["f1"] == 1.0
    assert rep["buildings"]["demolished"]["f1"] == 1.0
    assert rep["buildings"]["modified"]["tp"] == 2 and rep["buildings"]["modified"]["fp"] == 0
    assert evaluate_change(res.output, scene)["pixels"] == px


def test_nothing_known_is_not_scored_perfect(tmp_path: Path,
                                            runs: tuple[Path, Path, np.ndarray, np.ndarray],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Truth unknown everywhere (or a date all nodata): precision and recall were 1.000 with
    tp = fp = fn = tn = 0; they are null, 'n/a' in the summary, with a warning."""
    a, b, a_cls, _ = runs
    nothing = np.full_like(a_cls, 255)
    scene = _scene(tmp_path / "scene", nothing, nothing.copy())
    out = tmp_path / "out"
    from geoseg.errors import GeoSegWarning

    with pytest.warns(GeoSegWarning, match=r"cannot be scored \(precision, recall and F1 are "
                      r"null\)"):
        rc, stdout, err = _main(["change", str(a), str(b), "-o", str(out), "--scene",
                                 str(scene)], capsys)
    assert rc == 0, err
    assert "changed px precision n/a, changed px recall n/a" in stdout
    import json

    px = json.loads((out / "evaluation.json").read_text())["pixels"]
    assert px["precision"] is None and px["recall"] is None and px["f1"] is None


def test_cli_scores_against_scene(tmp_path: Path,
                                  runs: tuple[Path, Path, np.ndarray, np.ndarray],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    a, b, a_cls, b_cls = runs
    scene = _scene(tmp_path / "scene", a_cls.copy(), b_cls.copy())
    out = tmp_path / "out"
    rc, stdout, err = _main(["change", str(a), str(b), "-o", str(out), "--scene", str(scene)],
                            capsys)
    assert rc == 0, err
    assert "changed px precision 1.000" in stdout and "changed px recall 1.000" in stdout
    import json

    rep = json.loads((out / "evaluation.json").read_text())
    assert rep["pixels"]["tp"] == 20 * 40 + 40 * 30 and rep["pixels"]["fn"] == 0
    assert (out / "change_pr_curve.png").is_file() and "pr_curve" in stdout


def test_confidence_curve_trades_recall_for_precision(tmp_path: Path) -> None:
    """Changed pixels by confidence: right ones at high confidence, wrong ones at low; raising
    the threshold drops the wrong ones first."""
    from PIL import Image

    from geoseg.change.change_scores import confidence_curve, write_pr_png

    hits = np.zeros(256, np.int64)
    falses = np.zeros(256, np.int64)
    hits[200] = 60   # right changes, confident
    hits[100] = 20   # right changes, unsure
    falses[90] = 80  # false changes, unsure
    curve = confidence_curve(hits, falses, missed=20)
    assert curve["precision"][0] == pytest.approx(80 / 160)
    assert curve["recall"][0] == pytest.approx(80 / 100)
    assert curve["precision"][91] == 1.0 and curve["recall"][91] == pytest.approx(0.8)
    assert curve["precision"][101] == 1.0 and curve["recall"][101] == pytest.approx(0.6)
    at = curve["precision_0.8_at"]
    assert at == {"min_confidence": round(91 / 255, 4), "precision": 1.0, "recall": 0.8}
    png = write_pr_png({"min confidence": curve}, tmp_path / "pr.png")
    with Image.open(png) as im:
        px = np.asarray(im.convert("RGB"))
    assert im.size == (360, 360) and (px == [200, 40, 40]).all(axis=2).any()  # the curve is drawn


def test_dates_in_the_wrong_order_or_one_run_twice_warn(
        tmp_path: Path, runs: tuple[Path, Path, np.ndarray, np.ndarray]) -> None:
    """run_a is the earlier date: given newest first, new and demolished swapped silently."""
    from geoseg.change import compare_runs
    from geoseg.errors import GeoSegWarning

    a, b, _, _ = runs
    with pytest.warns(GeoSegWarning, match=r"run a \(2024-06-01\) is later than run b "
                      r"\(2019-06-01\).*new and demolished swap"):
        compare_runs(b, a, tmp_path / "reversed")
    with pytest.warns(GeoSegWarning, match="are the same run"):
        compare_runs(a, a, tmp_path / "same")
