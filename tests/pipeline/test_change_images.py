"""``geoseg change IMAGE_A IMAGE_B``: both dates run in one command, then compared."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from affine import Affine

from geoseg.cli import main
from tests.conftest import write_raster
from tests.pipeline.conftest import textured


def test_two_images_run_both_dates_then_compare(tmp_path: Path,
                                                tiny_bundles: tuple[str, str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    a = write_raster(tmp_path / "a.tif", textured(128, 160, seed=0))
    b_data = textured(128, 160, seed=0)
    b_data[:, 40:100, 60:140] = textured(128, 160, seed=3)[:, 40:100, 60:140]
    b = write_raster(tmp_path / "b.tif", b_data)
    out = tmp_path / "change"
    models = ["-m", tiny_bundles[0], "-m", tiny_bundles[1]]
    args = ["-q", "change", str(a), str(b), "-o", str(out), *models, "--chunk-size", "64",
            "--workers", "1", "--threads", "1"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "date A: geoseg run" in text and "geoseg change complete" in text
    for label, image in (("a", a), ("b", b)):
        summary = json.loads((out / f"run_{label}" / "summary.json").read_text())
        assert summary["status"] == "complete" and str(summary["image"]).endswith(image.name)
    store = zarr.open_group(str(out / "change.zarr"), mode="r")
    changed = np.asarray(store["changed"][:])  # type: ignore[index]
    assert changed.shape == (128, 160)
    # a second call refuses before running anything, unless told to redo everything
    assert main(args) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    # a change stopped after its dates (outputs, no summary yet): the same command continues,
    # reusing both dates' runs and redoing the change outputs; no --overwrite needed
    (out / "change_summary.json").unlink()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "date A: geoseg run" in text and "(resume)" in text and "(overwrite)" not in text
    assert "0 computed" in text and "geoseg change complete" in text, text
    assert (out / "change_summary.json").is_file()


def test_a_users_files_in_a_dates_folder_are_refused_before_any_date_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_raster(tmp_path / "a.tif", textured(64, 64, seed=0))
    b = write_raster(tmp_path / "b.tif", textured(64, 64, seed=1))
    out = tmp_path / "change"
    (out / "run_b").mkdir(parents=True)
    (out / "run_b" / "notes.txt").write_text("mine")
    for more in ([], ["--overwrite"]):
        rc = main(["-q", "change", str(a), str(b), "-o", str(out), *more])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "run_b holds files geoseg did not write" in err[0]
        assert not (out / "run_a").exists()  # nothing ran
        assert (out / "run_b" / "notes.txt").read_text() == "mine"


@pytest.mark.ray
@pytest.mark.slow  # the same property on hand-made runs is in tests/change (default suite)
def test_identical_images_give_no_change(ray_cluster: None, tmp_path: Path,
                                         tiny_bundles: tuple[str, str]) -> None:
    a = write_raster(tmp_path / "a.tif", textured(96, 96, seed=1))
    b = write_raster(tmp_path / "b.tif", textured(96, 96, seed=1))
    out = tmp_path / "change"
    assert main(["-q", "change", str(a), str(b), "-o", str(out), "-m", tiny_bundles[0],
                 "--chunk-size", "64", "--workers", "1", "--threads", "1"]) == 0
    summary = json.loads((out / "change_summary.json").read_text())
    assert summary["areas"]["changed"]["m2"] == 0.0


def test_one_image_and_one_run_is_refused(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    a = write_raster(tmp_path / "a.tif", textured(64, 64))
    assert main(["change", str(a), str(tmp_path), "-o", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "two run directories or two images" in err[0]


@pytest.mark.parametrize("b_is", ["elsewhere", "three-band"])
def test_what_stops_a_date_is_found_before_either_date_runs(
        tmp_path: Path, b_is: str, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_raster(tmp_path / "a.tif", textured(64, 64, seed=0))
    if b_is == "elsewhere":  # 100 km east of A: nothing to compare
        b = write_raster(tmp_path / "b.tif", textured(64, 64, seed=1),
                         transform=Affine(0.5, 0, 600000.0, 0, -0.5, 5100000.0))
        expected = "images do not overlap (a: 500000,5099968,500032,5100000"
    else:  # the default land-cover model reads red, green, blue and nir
        b = write_raster(tmp_path / "b.tif", textured(64, 64, seed=1)[:3])
        expected = f"{b} has 3 band(s)"
    out = tmp_path / "change"
    rc = main(["-q", "change", str(a), str(b), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and expected in err[0], err
    assert not out.exists()  # date A did not run


def test_dates_given_as_globs_of_tiles_are_run_and_checked_against_their_images(
        tmp_path: Path, tiny_bundles: tuple[str, str],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Each date a quoted glob of two tiles read by band name (--bands): both dates run as
    mosaics, and the image check reads them as the runs did, here and when the two runs are
    compared again from their folders (a mosaic's recorded image was only its description:
    the check was skipped, "input not found: mosaic of 2 item(s)")."""
    names = ["red", "green", "blue", "nir"]
    for date, seed in (("t0", 0), ("t1", 3)):
        whole = textured(96, 160, seed=seed)
        for k, (c0, c1) in enumerate(((0, 96), (64, 160))):
            write_raster(tmp_path / f"{date}_{k}.tif", whole[:, :, c0:c1], descriptions=names,
                         transform=Affine(0.5, 0, 500000.0 + c0 * 0.5, 0, -0.5, 5100000.0))
    out = tmp_path / "change"
    common = ["-m", tiny_bundles[0], "--chunk-size", "64", "--workers", "1", "--threads", "1"]
    assert main(["-q", "change", str(tmp_path / "t0_*.tif"), str(tmp_path / "t1_*.tif"),
                 "-o", str(out), "--bands", ",".join(names), *common]) == 0
    capsys.readouterr()
    summary = json.loads((out / "change_summary.json").read_text())
    assert summary["spectral"]["image_a"] == str(tmp_path / "t0_*.tif"), summary["spectral"]
    again = tmp_path / "again"
    assert main(["-q", "change", str(out / "run_a"), str(out / "run_b"), "-o", str(again)]) == 0
    assert "not checked against the images" not in capsys.readouterr().err
    spectral = json.loads((again / "change_summary.json").read_text())["spectral"]
    assert spectral.get("min_spectral_change") and not spectral.get("skipped"), spectral


def test_runs_of_relative_paths_are_checked_against_their_own_images(
        tmp_path: Path, tiny_bundles: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Each date run from its own folder as `geoseg run img.tif`: a change made from one of
    those folders read the same img.tif for both dates (every change vetoed, no word), and
    from elsewhere skipped the check. The runs record their inputs as absolute paths."""
    for date, seed in (("a", 0), ("b", 3)):
        (tmp_path / date).mkdir()
        write_raster(tmp_path / date / "img.tif", textured(96, 128, seed=seed),
                     descriptions=["red", "green", "blue", "nir"])
        monkeypatch.chdir(tmp_path / date)
        assert main(["-q", "run", "img.tif", "-o", str(tmp_path / f"run_{date}"), "-m",
                     tiny_bundles[0], "--chunk-size", "64", "--no-vectors"]) == 0
    capsys.readouterr()
    assert main(["-q", "change", str(tmp_path / "run_a"), str(tmp_path / "run_b"), "-o",
                 str(tmp_path / "change")]) == 0  # from b's folder
    assert "not checked against the images" not in capsys.readouterr().err
    spectral = json.loads((tmp_path / "change" / "change_summary.json").read_text())["spectral"]
    assert (spectral["image_a"], spectral["image_b"]) == (
        str(tmp_path / "a" / "img.tif"), str(tmp_path / "b" / "img.tif")), spectral
    capsys.readouterr()
    assert main(["-q", "change", str(tmp_path / "run_a"), str(tmp_path / "run_b"), "-o",
                 str(tmp_path / "c2"), "--bands", "9,9", "--crs", "EPSG:4326"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --bands, --crs: how to read image dates")
    assert not (tmp_path / "c2").exists()
