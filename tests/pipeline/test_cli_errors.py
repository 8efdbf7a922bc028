"""Bad input: one line on stderr, non-zero exit, no traceback, nothing lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geoseg.cli import main
from tests.conftest import write_raster
from tests.pipeline.conftest import textured


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["-q", "run", *args])
    err = capsys.readouterr().err.strip()
    return rc, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      tiny_bundles: tuple[str, str]) -> None:
    rc, err = _run(capsys, str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o"),
                   "-m", tiny_bundles[0])
    assert rc != 0 and "image not found" in _one_line(err)


def test_not_a_raster(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      tiny_bundles: tuple[str, str]) -> None:
    bad = tmp_path / "notes.tif"
    bad.write_text("hello, I am text")
    rc, err = _run(capsys, str(bad), "-o", str(tmp_path / "o"), "-m", tiny_bundles[0])
    assert rc != 0 and "not a raster" in _one_line(err)


def test_no_crs(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                tiny_bundles: tuple[str, str]) -> None:
    tif = write_raster(tmp_path / "nocrs.tif", textured(64, 64), crs=None)
    rc, err = _run(capsys, str(tif), "-o", str(tmp_path / "o"), "-m", tiny_bundles[0])
    assert rc != 0 and "has no CRS" in _one_line(err)


def test_ground_control_points_only(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    tiny_bundles: tuple[str, str]) -> None:
    """An image georeferenced by GCPs (a CRS on the points, no grid) is told to warp, not
    to assign a CRS it already has."""
    import rasterio
    from rasterio.control import GroundControlPoint

    gcps = [GroundControlPoint(r, c, 500000.0 + c / 2, 5100000.0 - r / 2)
            for r, c in ((0, 0), (0, 64), (64, 0), (64, 64))]
    tif = tmp_path / "gcps.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8",
                       gcps=gcps, crs="EPSG:32633") as dst:
        dst.write(textured(64, 64))
    rc, err = _run(capsys, str(tif), "-o", str(tmp_path / "o"), "-m", tiny_bundles[0])
    line = _one_line(err)
    assert rc == 2 and "georeferenced only by 4 ground control points" in line, line
    assert "gdalwarp -t_srs EPSG:32633" in line and not (tmp_path / "o").exists()


def test_region_outside(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                        tiny_bundles: tuple[str, str]) -> None:
    tif = write_raster(tmp_path / "a.tif", textured(64, 64))
    rc, err = _run(capsys, str(tif), "-o", str(tmp_path / "o"), "-m", tiny_bundles[0],
                   "--bbox", "600000,5100000,600100,5100100", "--bbox-crs", "EPSG:32633")
    assert rc != 0 and "outside the image" in _one_line(err)
    assert not (tmp_path / "o").exists()  # nothing half-made


def test_band_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       tiny_bundles: tuple[str, str]) -> None:
    tif = write_raster(tmp_path / "rgb.tif", textured(64, 64)[:3])
    rc, err = _run(capsys, str(tif), "-o", str(tmp_path / "o"), "-m", tiny_bundles[0])
    assert rc != 0 and "band" in _one_line(err)


def test_bad_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tif = write_raster(tmp_path / "a.tif", textured(64, 64))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bundle.yaml").write_text("name: x\nunknown_key: 1\n")
    rc, err = _run(capsys, str(tif), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "b"))
    assert rc != 0 and "bundle.yaml" in _one_line(err)


def test_output_exists_refused_then_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           tiny_bundles: tuple[str, str]) -> None:
    tif = write_raster(tmp_path / "a.tif", textured(96, 96),
                       descriptions=["red", "green", "blue", "nir"])
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    rc, err = _run(capsys, str(tif), "-o", str(out), "-m", tiny_bundles[0])
    line = _one_line(err)
    assert rc != 0 and "geoseg did not write" in line and "precious.txt" in line
    assert (out / "precious.txt").read_text() == "keep me"
    rc, err = _run(capsys, str(tif), "-o", str(out), "-m", tiny_bundles[0], "--overwrite")
    assert rc != 0 and "precious.txt" in _one_line(err)  # --overwrite never takes it either
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]


def test_bad_bbox_text(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       tiny_bundles: tuple[str, str]) -> None:
    tif = write_raster(tmp_path / "a.tif", textured(64, 64))
    rc, err = _run(capsys, str(tif), "-o", str(tmp_path / "o"), "-m", tiny_bundles[0],
                   "--bbox", "1,2,3", "--bbox-crs", "EPSG:32633")
    assert rc != 0 and "bbox" in _one_line(err)


def test_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text("inference: {chunk_sise: 512}\n")
    tif = write_raster(tmp_path / "a.tif", np.ones((4, 32, 32), np.uint8))
    rc, err = _run(capsys, str(tif), "-o", str(tmp_path / "o"), "--config", str(cfg))
    assert rc != 0 and "chunk_sise" in _one_line(err)


@pytest.mark.parametrize("text, needle", [
    (b"- image: a.tif\n- output: o\n", "holds a YAML list, not a mapping"),
    (b"just a string\n", "holds a YAML str, not a mapping"),
    (b"image: a.tif\n\xff\xfe output: o\n", "not UTF-8"),
    (b"inference: {chunk_size: 512\n", "invalid YAML"),
    (b"image: !!python/object/apply:os.system [echo]\n", "is refused"),
    (b"version: 99\n", "version"),
])
def test_bad_config_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       text: bytes, needle: str) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_bytes(text)
    tif = write_raster(tmp_path / "a.tif", np.ones((4, 32, 32), np.uint8))
    rc, err = _run(capsys, str(tif), "-o", str(tmp_path / "o"), "--config", str(cfg))
    line = _one_line(err)
    assert rc == 2 and needle in line and "job.yaml" in line, line


@pytest.mark.parametrize("text, needle", [
    (b"name: x\n\xff\xfe\n", "not UTF-8"),
    (b"- a\n- b\n", "holds a YAML list"),
    (None, "1-based"),
])
def test_bad_bundle_files_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       tiny_bundles: tuple[str, str], text: bytes | None,
                                       needle: str) -> None:
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundles[0], bundle)
    spec = bundle / "bundle.yaml"
    if text is None:  # a band index that is not 1-based
        spec.write_text(spec.read_text().replace("- 1\n", "- 0\n", 1))
    else:
        spec.write_bytes(text)
    tif = write_raster(tmp_path / "a.tif", textured(64, 64))
    rc, err = _run(capsys, str(tif), "-o", str(tmp_path / "o"), "-m", str(bundle))
    line = _one_line(err)
    assert rc == 2 and needle in line, line


def test_bad_input_lists_and_stac_items_are_one_line(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    lst = tmp_path / "inputs.txt"
    lst.write_bytes(b"\xff\xfe a.tif\n")
    rc, err = _run(capsys, str(lst), "-o", str(tmp_path / "o"))
    assert rc == 2 and "not UTF-8" in _one_line(err)
    tif = write_raster(tmp_path / "a.tif", textured(64, 64))
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "it1", "properties":
            {"datetime": "2024-01-01T00:00:00Z"}, "geometry": {"type": "Polygon",
                                                           "coordinates": 5},
            "bbox": [13.0, 46.0, 13.1, 46.1], "links": [],
            "assets": {"red": {"href": str(tif), "type": "image/tiff; application=geotiff",
                               "roles": ["data"], "eo:bands": [{"name": "red"}]}}}
    import json

    (tmp_path / "item.json").write_text(json.dumps(item))
    rc, err = _run(capsys, str(tmp_path / "item.json"), "-o", str(tmp_path / "o2"),
                   "--bands", "red")
    line = _one_line(err)
    assert rc == 2 and "malformed geometry" in line and "it1" in line, line


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"geoseg {__version__}"


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: random)" in out and "(default: 0.5)" in out  # set by the parser
    assert "(default 0) (default" not in out  # said once where the help already says it


@pytest.mark.parametrize("cmd, resumes", [("run", True), ("train", True), ("change", False),
                                          ("export", False), ("eval", False),
                                          ("sample", False)])
def test_interrupt_says_how_this_command_goes_on(cmd: str, resumes: bool,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C names --resume only for the commands that have it."""
    import argparse

    from geoseg.cli.app import _dispatch

    def stop(_: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    rc = _dispatch(argparse.Namespace(cmd=cmd, fn=stop), lambda _exc: 130)
    err = capsys.readouterr().err
    assert rc == 130 and err.count("\n") == 1 and err.startswith("interrupted: ")
    assert ("--resume" in err) is resumes, err


def test_a_run_stopped_before_its_folder_says_nothing_was_finished(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while a run connects to a cluster (no manifest yet) has nothing to resume."""
    import argparse

    from geoseg.cli.app import _dispatch

    def stop(_: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    for out, resumes in ((tmp_path / "never", False), (tmp_path / "began", True)):
        if resumes:
            out.mkdir()
            (out / "manifest.json").write_text("{}")
        rc = _dispatch(argparse.Namespace(cmd="run", fn=stop, out=str(out)), lambda _exc: 130)
        err = capsys.readouterr().err
        assert rc == 130 and ("--resume" in err) is resumes, err


def test_out_under_a_file_does_not_say_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              tiny_bundles: tuple[str, str]) -> None:
    """Nothing ran: the line says what is wrong, not "rerun with --resume"."""
    img = write_raster(tmp_path / "img.tif", textured(64, 64))
    (tmp_path / "afile").write_text("x")
    rc, err = _run(capsys, str(img), "-o", str(tmp_path / "afile" / "sub"),
                   "-m", tiny_bundles[0])
    line = _one_line(err)
    assert rc != 0 and "--resume" not in line and "afile" in line, line
    assert (tmp_path / "afile").read_text() == "x"


def test_global_quiet_and_verbose_reach_run() -> None:
    """`geoseg -q run ...` shows no progress (run's own defaults used to undo -q)."""
    from geoseg.cli.app import build_parser

    args = build_parser().parse_args(["-q", "-v", "run", "img.tif", "-o", "out"])
    assert args.quiet is True and args.verbose == 1
    args = build_parser().parse_args(["run", "img.tif", "-o", "out"])
    assert args.quiet is False and args.verbose == 0


def test_a_config_that_names_image_and_output_is_enough(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``geoseg run --config job.yaml`` alone: argparse demanded IMAGE and -o although the
    file gives them (configs/demo.yaml does)."""
    tif = write_raster(tmp_path / "img.tif", textured(64, 64),
                       descriptions=["red", "green", "blue", "nir"])
    job = tmp_path / "job.yaml"
    job.write_text(f"image: {tif}\noutput: {tmp_path / 'out'}\nmodels: [landcover]\n"
                   "vectors: {enabled: false}\n")
    assert main(["-q", "run", "--config", str(job)]) == 0
    assert (tmp_path / "out" / "summary.json").is_file()
    # a flag still overrides the file
    assert main(["-q", "run", "--config", str(job), "-o", str(tmp_path / "other")]) == 0
    assert (tmp_path / "other" / "summary.json").is_file()
    # without a config, the image and -o are required, in one line
    rc, err = _run(capsys, str(tif))
    assert rc == 2 and "geoseg run needs the image and -o OUT" in _one_line(err)


def test_the_run_summary_keeps_each_line_whole(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               tiny_bundles: tuple[str, str]) -> None:
    """Printed to a pipe (80 columns), the summary broke its lines mid-value ("in 3.6\\ns")
    and mid-path; each line is now whole, so a path can be copied and a figure grepped."""
    tif = write_raster(tmp_path / "img.tif", textured(64, 64),
                       descriptions=["red", "green", "blue", "nir"])
    out = tmp_path / ("a-long-folder-name-" * 4) / "run"
    rc = main(["-q", "run", str(tif), "-o", str(out), "-m", tiny_bundles[0], "--no-vectors",
               "--chunk-size", "64"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert lines[0].startswith("geoseg run complete: 64×64 px") and lines[0].endswith("end to end")
    assert any(ln.split() == ["summary", str(out / "summary.json")] for ln in lines), lines
