"""Bad input files and numbers: one line on stderr saying what is wrong and what to do, a non-zero
exit, no traceback, nothing lost; ``geoseg eval`` never overwrites a file geoseg did not write
and never scores an unfinished run without ``--partial``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import geoseg
from geoseg.bundle import BUNDLE_FILE, builtin_bundle, read_spec
from geoseg.cli import main
from geoseg.config import load_job_config
from geoseg.errors import BundleError, ConfigError, IncompleteRunError, InputError
from geoseg.sources.inputs import expand_inputs
from geoseg.sources.stac import read_stac
from tests.change.conftest import SHAPE, T_A, make_run, pattern
from tests.conftest import write_raster


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``geoseg ARGS`` in-process: exit code, stdout, stderr."""
    rc = main(list(args))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line(err: str) -> str:
    """The one error line of ``err`` (warnings aside); fails on tracebacks and longer errors."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture()
def image(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "img.tif", np.full((4, 32, 32), 7, np.uint8))


# --- job configs -----------------------------------------------

@pytest.mark.parametrize("text, needle", [
    (b"- image: a.tif\n- output: o\n", "holds a YAML list, not a mapping"),
    (b"42\n", "holds a YAML int, not a mapping"),
    (b"just words\n", "holds a YAML str, not a mapping"),
    (b"image: a.tif\noutput: \xff\xfe\xfa\n", "is not UTF-8 text"),
    (b"inference: {chunk_size: 512\n", "invalid YAML"),
    (b"version: 99\n", "config version 99 is unknown"),
    (b"version: 0\n", "config version 0 is unknown"),
    (b"model: [landcover]\n", "model: not a setting (did you mean models? settings here: "
                              "version, image, output, models, region,"),
    (b"inference: {chunk: 512, halo: x}\n", "inference.chunk: not a setting (did you mean "
                                            "chunk_size? settings here: chunk_size, halo,"),
    (b"region: {bbx: [1, 2, 3, 4]}\n", "region.bbx: not a setting (did you mean bbox? settings "
                                       "here: bbox, file, wkt, crs)"),
    # what the value should be, in words, with the value given (both branches of a union)
    (b"inference: {halo: -5}\n", "inference.halo: should be at least 0 or 'auto', not -5"),
    (b"inference: {chunk_size: abc}\n", "inference.chunk_size: should be a whole number, "
                                        "not 'abc'"),
    (b"models: landcover\n", "models: should be a list, e.g. [landcover], not 'landcover'"),
    (b"vectors: {enabled: maybe}\n", "vectors.enabled: should be true or false, not 'maybe'"),
    (b"inference: {engine: trt}\n", "inference.engine: should be one of 'auto', 'torch', "
                                    "'torch-bf16' or 'onnx', not 'trt'"),
    (b"inference: 5\n", "inference: should be a mapping of settings (name: value), not 5"),
])
def test_bad_job_config_is_one_line(tmp_path: Path, image: Path, text: bytes, needle: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_bytes(text)
    rc, _, err = _cli(capsys, "-q", "run", str(image), "-o", str(tmp_path / "o"),
                      "--config", str(cfg))
    line = _one_line(err)
    assert rc == 2 and needle in line and str(cfg) in line, line
    assert not (tmp_path / "o").exists()
    assert cfg.read_bytes() == text


@pytest.mark.parametrize("flags, line", [
    (["--halo", "-5"], "error: --halo: should be at least 0 or 'auto', not -5"),
    (["--chunk-size", "0"], "error: --chunk-size: should be at least 64, not 0"),
    (["--threads", "0"], "error: --threads: should be at least 1, not 0"),
    (["--tile-size", "100"], "error: --tile-size: must be 'auto' or a multiple of 32 ≥ 64"),
    (["--bbox", "1,2,3,4"], "error: --bbox needs --bbox-crs, the CRS of its numbers (e.g. "
                            "--bbox-crs EPSG:4326 for longitudes and latitudes)"),
])
def test_a_bad_flag_value_is_named_as_the_flag(tmp_path: Path, image: Path, flags: list[str],
                                               line: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(capsys, "-q", "run", str(image), "-o", str(tmp_path / "o"), *flags)
    assert rc == 2 and _one_line(err) == line
    assert not (tmp_path / "o").exists()
    with pytest.raises(ConfigError) as exc:
        geoseg.run(image, out=tmp_path / "o", halo=-5)
    assert str(exc.value) == "geoseg.run(): halo: should be at least 0 or 'auto', not -5"


def test_config_errors_say_what_to_do(tmp_path: Path) -> None:
    """The API raises the same one-line :class:`ConfigError` (no AttributeError, no
    UnicodeDecodeError, no PyYAML excerpt), and it says what to do."""
    cfg = tmp_path / "job.yaml"
    cfg.write_bytes(b"- a\n- b\n")
    with pytest.raises(ConfigError, match="not a mapping of settings: write it as"):
        load_job_config(cfg)
    cfg.write_bytes(b"image: \xff\n")
    with pytest.raises(ConfigError, match="save the job config as UTF-8"):
        load_job_config(cfg)
    cfg.write_text("models: [landcover\nimage: a.tif\n")
    with pytest.raises(ConfigError) as err:
        load_job_config(cfg)
    assert "\n" not in str(err.value) and "line 2, column" in str(err.value)
    cfg.write_text("image: a.tif\noutput: o\nversion: 99\n")
    with pytest.raises(ConfigError) as err:
        load_job_config(cfg)
    msg = str(err.value)
    assert "version: 1" in msg and "upgrade geoseg" in msg and "Value error" not in msg, msg


def test_unreadable_config_and_bundle_are_one_line(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError reading the file (permission, I/O) is a one-line error too."""
    cfg = tmp_path / "job.yaml"
    cfg.write_text("image: a.tif\noutput: o\n")
    bundle = tmp_path / "b"
    bundle.mkdir()
    shutil.copy(builtin_bundle("landcover") / BUNDLE_FILE, bundle / BUNDLE_FILE)

    def denied(self: Path, *a: object, **k: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ConfigError, match="cannot read"):
        load_job_config(cfg)
    with pytest.raises(BundleError, match="cannot read"):
        read_spec(bundle)


def test_submit_plan_with_a_list_config(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text("- image: a.tif\n")
    rc, _, err = _cli(capsys, "submit", str(cfg), "--plan")
    assert rc == 2 and "not a mapping" in _one_line(err)


# --- bundle.yaml ----------------------------------------------------------

def _bundle(tmp_path: Path, text: bytes | None = None, bands: str | None = None) -> Path:
    """A bundle directory holding only a (changed) copy of the built-in land-cover
    bundle.yaml: it is read, and refused, before anything else of the bundle."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = (builtin_bundle("landcover") / BUNDLE_FILE).read_text()
    if bands is not None:
        start = spec.index("bands:")
        end = spec.index("\n", start)
        while spec[end + 1:].startswith(("- ", "  -")):
            end = spec.index("\n", end + 1)
        spec = spec[:start] + f"bands: {bands}" + spec[end:]
    (bundle / BUNDLE_FILE).write_bytes(text if text is not None else spec.encode())
    return bundle


@pytest.mark.parametrize("text, bands, needle", [
    (b"name: x\nversion: \xff\xfe\n", None, "is not UTF-8 text"),
    (b"", None, "is empty, not a bundle's settings"),
    (b"[1, 2]\n", None, "holds a YAML list"),
    (b"name: [x\n", None, "invalid YAML"),
    (None, "[0, 1, 2, 3]", "bands are 1-based image band numbers"),              # bands >= 1
    (None, "[-1, 1, 2, 3]", "bands are 1-based image band numbers"),
])
def test_bad_bundle_yaml_is_one_line(tmp_path: Path, image: Path, text: bytes | None,
                                     bands: str | None, needle: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _bundle(tmp_path, text, bands)
    with pytest.raises(BundleError, match=needle):
        read_spec(bundle)
    rc, _, err = _cli(capsys, "-q", "run", str(image), "-o", str(tmp_path / "o"),
                      "-m", str(bundle))
    line = _one_line(err)
    assert rc == 2 and needle in line and "Value error" not in line, line


# --- .txt input lists -------------------------------------------------------------------

def test_non_utf8_input_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lst = tmp_path / "inputs.txt"
    lst.write_bytes(b"\xff\xfea.tif\n")
    with pytest.raises(InputError, match="is not UTF-8 text"):
        expand_inputs([str(lst)])
    rc, _, err = _cli(capsys, "-q", "run", str(lst), "-o", str(tmp_path / "o"))
    assert rc == 2 and "one path or URL per line" in _one_line(err)


# --- STAC items with a malformed geometry -------------------------------------------------

@pytest.mark.parametrize("geometry", [
    {"type": "Polygon", "coordinates": 5},
    {"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]},
    {"type": "Polygon"},
    {"type": "Polygon", "coordinates": [[[0, 0], [1, "a"], [1, 0], [0, 0]]]},
    {"type": "Hexagon", "coordinates": [1, 2]},
])
def test_stac_item_with_malformed_geometry(tmp_path: Path, image: Path, geometry: object,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "it1",
            "properties": {"datetime": "2024-01-01T00:00:00Z"}, "geometry": geometry,
            "bbox": [13.0, 46.0, 13.1, 46.1], "links": [],
            "assets": {"red": {"href": str(image), "type": "image/tiff; application=geotiff",
                               "roles": ["data"], "eo:bands": [{"name": "red"}]}}}
    doc = tmp_path / "item.json"
    doc.write_text(json.dumps(item))
    with pytest.raises(InputError, match="malformed geometry"):
        read_stac([str(doc)], ["red"])
    rc, _, err = _cli(capsys, "-q", "run", str(doc), "-o", str(tmp_path / "o"),
                      "--bands", "red")
    line = _one_line(err)
    assert rc == 2 and "it1" in line and "malformed geometry" in line, line


# --- eval -----------------------------------------------------------------

@pytest.fixture()
def run(tmp_path: Path) -> Path:
    """A complete hand-made run (land cover only) and its perfect truth."""
    return make_run(tmp_path / "run", pattern(SHAPE, seed=3), buildings=None)


@pytest.fixture()
def truth(tmp_path: Path) -> Path:
    return write_raster(tmp_path / "truth.tif", pattern(SHAPE, seed=3), transform=T_A,
                        nodata=255)


@pytest.fixture()
def scene(tmp_path: Path, truth: Path) -> Path:
    """A scene folder with the land-cover truth of t0 (the run has no buildings)."""
    d = tmp_path / "scene"
    d.mkdir()
    shutil.copy(truth, d / "landcover_t0.tif")
    return d


@pytest.fixture()
def no_scoring(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring fails the test: a refusal must come before it."""
    import geoseg.scoring

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("scored before refusing")

    for name in ("evaluate_run", "evaluate_class_map", "evaluate_footprints",
                 "evaluate_instances"):
        monkeypatch.setattr(geoseg.scoring, name, boom)


@pytest.mark.parametrize("flags, needle", [
    (["--num-classes", "-1"], "num_classes must be at least 1"),
    (["--num-classes", "0"], "num_classes must be at least 1"),
    (["--iou", "5"], "iou must be in (0, 1]"),
    (["--iou", "0"], "iou must be in (0, 1]"),
    (["--boundary-tol", "-1"], "boundary_tol"),
])
def test_eval_bad_numbers_with_a_scene(run: Path, scene: Path, flags: list[str], needle: str,
                                       no_scoring: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """--run --scene too (where --num-classes used to be ignored without a word)."""
    rc, out, err = _cli(capsys, "eval", "--run", str(run), "--scene", str(scene), "--no-png",
                        *flags)
    assert rc == 2 and needle in _one_line(err) and out == "", err


def test_eval_scene_mode_uses_iou_and_num_classes(run: Path, scene: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _cli(capsys, "eval", "--run", str(run), "--scene", str(scene), "--no-png",
                        "--num-classes", "7")
    assert rc == 0, err
    assert len(json.loads(out)["landcover"]["confusion"]) == 7


def test_eval_iou_reaches_the_scene_footprints(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tests.metrics.test_evaluate import _scene

    run_dir, scene_dir, _, _ = _scene(tmp_path)
    rc, out, err = _cli(capsys, "eval", "--run", str(run_dir), "--scene", str(scene_dir),
                        "--no-png", "--iou", "0.9")
    assert rc == 0, err
    rep = json.loads(out)
    assert "building F1@0.9" in rep["headline"] and "building F1@0.5" not in rep["headline"]
    assert rep["buildings"]["tp"] == 1  # P2 (IoU 2/3) matches at 0.5, not at 0.9


def test_eval_json_in_a_missing_folder_is_refused_first(run: Path, scene: Path,
                                                        tmp_path: Path, no_scoring: None,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """checked before the evaluation, not after it."""
    target = tmp_path / "nope" / "d" / "x.json"
    rc, out, err = _cli(capsys, "eval", "--run", str(run), "--scene", str(scene), "--json",
                        str(target))
    line = _one_line(err)
    assert rc == 2 and "does not exist" in line and out == "", line
    assert not (tmp_path / "nope").exists()


def test_eval_json_never_replaces_an_input_or_a_users_file(
        run: Path, scene: Path, truth: Path, tmp_path: Path, no_scoring: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """the truth raster it reads, a user's JSON, a folder: refused before the scoring,
    byte for byte unchanged."""
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    folder = tmp_path / "folder.json"
    folder.mkdir()
    for target in (scene / "landcover_t0.tif", truth, notes, folder):
        before = target.read_bytes() if target.is_file() else None
        for mode in (["--scene", str(scene)], ["--truth", str(truth)]):
            rc, out, err = _cli(capsys, "eval", "--run", str(run), *mode, "--json",
                                str(target))
            line = _one_line(err)
            assert rc == 2 and "geoseg did not write it" in line and out == "", line
            if before is not None:
                assert target.read_bytes() == before


def test_eval_json_replaces_only_its_own_report_atomically(
        run: Path, truth: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """an earlier report of geoseg eval (marked by its first key) is replaced by rename: a
    symlink to one is replaced, its target left as it was."""
    report = tmp_path / "r.json"
    for _ in range(2):
        rc, out, err = _cli(capsys, "eval", "--run", str(run), "--truth", str(truth), "--json",
                            str(report), "--no-png")
        assert rc == 0, err
        assert json.loads(report.read_text())["report"] == "geoseg eval"
        assert json.loads(out)["landcover"]["miou"] == 1.0
    elsewhere = tmp_path / "kept.json"
    shutil.copy(report, elsewhere)
    kept = elsewhere.read_bytes()
    link = tmp_path / "link.json"
    link.symlink_to(elsewhere)
    rc, _, err = _cli(capsys, "eval", "--run", str(run), "--truth", str(truth), "--json",
                      str(link), "--no-png")
    assert rc == 0, err
    assert not link.is_symlink() and elsewhere.read_bytes() == kept
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*tmp*"))


def test_eval_confusion_png_never_replaces_a_users_file(
        run: Path, truth: Path, tmp_path: Path, no_scoring: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """the PNG derived from --json, a --confusion-png, and the run folder's default name:
    a file geoseg did not write there is refused before the scoring."""
    beside = tmp_path / "r_confusion_landcover.png"
    beside.write_bytes(b"my figure")
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my other figure")
    in_run = run / "confusion_landcover.png"
    in_run.write_bytes(b"a figure I keep with the run")
    for flags, png in ((["--json", str(tmp_path / "r.json")], beside),
                       (["--confusion-png", str(mine)], mine),
                       ([], in_run)):
        before = png.read_bytes()
        rc, out, err = _cli(capsys, "eval", "--run", str(run), "--truth", str(truth), *flags)
        line = _one_line(err)
        assert rc == 2 and str(png) in line and "did not write" in line and out == "", line
        assert png.read_bytes() == before
    assert not (tmp_path / "r.json").exists()


def test_eval_confusion_png_replaces_its_own(run: Path, truth: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):
        rc, out, err = _cli(capsys, "eval", "--run", str(run), "--truth", str(truth))
        assert rc == 0, err
        assert json.loads(out)["landcover"]["confusion_png"] == str(
            run / "confusion_landcover.png")


def _interrupt(run: Path) -> None:
    """Make ``run`` look like an interrupted run: its manifest and store say so."""
    from geoseg.layout import MANIFEST
    from geoseg.store import COMPLETE_ATTR

    (run / MANIFEST).write_text(json.dumps({"status": "interrupted"}))
    attrs_file = run / "predictions.zarr" / ".zattrs"
    attrs_file.write_text(json.dumps({**json.loads(attrs_file.read_text()),
                                      COMPLETE_ATTR: False}))


@pytest.mark.parametrize("how", ["run+scene", "run+truth", "store+truth"])
def test_eval_refuses_an_incomplete_run(run: Path, scene: Path, truth: Path, how: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """refused in one line naming --partial (as the API's IncompleteRunError), whether the
    run is named by --run or by its --store; --partial scores what exists."""
    _interrupt(run)
    args = {"run+scene": ["--run", str(run), "--scene", str(scene)],
            "run+truth": ["--run", str(run), "--truth", str(truth)],
            "store+truth": ["--store", str(run / "predictions.zarr"), "--truth", str(truth)],
            }[how] + ["--no-png"]
    rc, out, err = _cli(capsys, "eval", *args)
    line = _one_line(err)
    assert rc == IncompleteRunError.exit_code and "--partial" in line and out == "", line
    rc, out, err = _cli(capsys, "eval", *args, "--partial")
    assert rc == 0 and json.loads(out)["landcover"]["miou"] == 1.0, err


def test_evaluate_api_refuses_an_unfinished_store(run: Path, truth: Path) -> None:
    """A store whose run did not finish, without its run folder's manifest beside it."""
    from geoseg.scoring import evaluate_outputs
    from geoseg.store import COMPLETE_ATTR

    attrs_file = run / "predictions.zarr" / ".zattrs"
    attrs_file.write_text(json.dumps({**json.loads(attrs_file.read_text()),
                                      COMPLETE_ATTR: False}))
    with pytest.raises(IncompleteRunError, match="partial=True"):
        evaluate_outputs(store=run / "predictions.zarr", truth=truth, plot=False)
    rep = evaluate_outputs(store=run / "predictions.zarr", truth=truth, plot=False,
                           partial=True)
    assert rep["landcover"]["miou"] == 1.0


def test_tile_size_auto_is_a_flag_value_as_in_yaml(tmp_path: Path) -> None:
    """``--tile-size auto`` is accepted like ``tile_size: auto`` in a job YAML and
    ``--halo auto``; a word that is neither a number nor auto is refused by the parser."""
    from geoseg.cli.app import build_parser
    from geoseg.cli.run_cmds import job_config

    a = build_parser().parse_args(["run", "img.tif", "-o", str(tmp_path / "o"),
                                   "--tile-size", "auto", "--halo", "auto"])
    cfg = job_config(a, "img.tif", str(tmp_path / "o"))
    assert cfg.inference.tile_size == "auto" and cfg.inference.halo == "auto"
    a = build_parser().parse_args(["run", "img.tif", "-o", "o", "--tile-size", "512"])
    assert job_config(a, "img.tif", "o").inference.tile_size == 512
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "img.tif", "-o", "o", "--tile-size", "big"])


def test_a_model_that_fails_as_it_loads_leaves_a_run_the_same_command_starts_again(
        tmp_path: Path, tiny_bundles: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A driver without torch checks only the weights' header; a tensor of the wrong shape
    is found as the model loads, after --out was started. That run finished nothing, so once
    the bundle is fixed the same command runs (it said "pass --resume or --overwrite")."""
    import torch
    from safetensors.torch import load_file, save_file

    import geoseg.models.preflight as preflight
    from tests.pipeline.conftest import textured

    bundle = Path(shutil.copytree(tiny_bundles[0], tmp_path / "bundle"))
    good = (bundle / "weights.safetensors").read_bytes()
    weights = load_file(str(bundle / "weights.safetensors"))
    name = next(k for k, v in weights.items() if k.startswith("decoder.") and v.ndim == 4)
    weights[name] = torch.zeros((weights[name].shape[0] + 1, *weights[name].shape[1:]))
    save_file(weights, str(bundle / "weights.safetensors"))
    real = preflight.check_model_file
    monkeypatch.setattr(preflight, "check_model_file",
                        lambda *a, **k: real(*a, **{**k, "architecture": False}))
    img = write_raster(tmp_path / "img.tif", textured(64, 64),
                       descriptions=["red", "green", "blue", "nir"])
    argv = ["-q", "run", str(img), "-o", str(tmp_path / "out"), "-m", str(bundle),
            "--chunk-size", "64", "--no-vectors", "--engine", "torch"]
    rc, _, err = _cli(capsys, *argv)
    assert rc == 2 and name in _one_line(err)
    (bundle / "weights.safetensors").write_bytes(good)
    rc, _, err = _cli(capsys, *argv)
    assert rc == 0, err
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["status"] == "complete"
