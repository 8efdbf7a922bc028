"""The Python API (geoseg.run / open_run / Run / train / evaluate) and its documented example,
which runs once per module on a generated 512² scene; the other tests look at its run."""

from __future__ import annotations

import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from pyproj import CRS

import geoseg
from geoseg.errors import (
    ConfigError,
    GeoSegError,
    GeoSegWarning,
    IncompleteRunError,
    InputError,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "notebook_example.py"


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """docs/examples/notebook_example.py, executed as a user would (its main())."""
    ns = runpy.run_path(str(EXAMPLE), run_name="geoseg_example")
    out: dict[str, Any] = ns["main"](tmp_path_factory.mktemp("example"))
    return out


def test_example_runs_and_scores(example: dict[str, Any]) -> None:
    run = example["run"]
    assert isinstance(run, geoseg.Run) and run.complete and run.status == "complete"
    assert set(example["report"]["headline"]) >= {"landcover mIoU", "building F1@0.5"}
    lc = example["landcover"]
    assert set(lc["per_class"]) == {"bare", "building", "road", "vegetation", "water"}
    assert lc["truth_resampled"] is False and lc["miou"] > 0.5
    assert Path(lc["confusion_png"]) == run.layout.confusion("landcover")
    assert run.layout.confusion("landcover").is_file()


def test_predictions_are_exact(example: dict[str, Any]) -> None:
    """xarray sees the COGs' CRS, transform and values; nothing masked or scaled."""
    rioxarray = pytest.importorskip("rioxarray")
    assert rioxarray
    run = example["run"]
    ds = run.predictions()
    assert ds["landcover"].dtype == np.uint8 and ds["landcover_confidence"].dtype == np.uint8
    assert ds["landcover"].attrs["_FillValue"] == 255
    assert ds["landcover"].chunks is not None  # dask, the store's chunks
    for layer in run.layers:
        with rasterio.open(run.cog(layer)) as src:
            assert CRS.from_wkt(src.crs.to_wkt()) == ds.rio.crs == run.crs
            assert src.transform == ds.rio.transform() == ds[layer].rio.transform()
            assert src.transform == run.transform
            assert np.array_equal(src.read(1), ds[layer].values)
    # pixel-centre coordinates, exactly from the transform
    t = run.transform
    assert ds.x.values[0] == t.c + t.a / 2 and ds.y.values[0] == t.f + t.e / 2
    eager = run.predictions(chunks=None)
    assert eager["landcover"].chunks is None
    assert np.array_equal(eager["landcover"].values, ds["landcover"].values)


def test_features_summary_quicklook(example: dict[str, Any]) -> None:
    run = example["run"]
    s = run.summary
    assert isinstance(s, geoseg.RunSummary) and s.complete and s.raw["status"] == "complete"
    assert s.grid.crs == run.crs and s.grid.shape == tuple(run.grid.shape)
    assert s.chunks.total == 4 and s.chunks.failed == () and run.failed_chunks == ()
    assert set(run.feature_layers) == {"buildings", "landcover"}
    for layer in run.feature_layers:
        df = run.features(layer)
        assert len(df) == s.features[layer] and CRS.from_user_input(df.crs) == run.crs
    assert all(p.exists() and p.parent == run.path for p in s.outputs.values())
    assert s.class_areas_m2["landcover"]["vegetation"] > 0
    ql = run.quicklook()
    assert Path(ql).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" == ql._repr_png_()[:8]
    left, bottom = s.grid.bounds[:2]
    sub = run.features("buildings", bbox=(left, bottom, left + 50, bottom + 50))
    assert len(sub) < s.features["buildings"]
    assert run.config.inference.chunk_size == 256
    assert run.class_names("buildings")[0] == "background"
    with pytest.raises(InputError, match="no layer 'roads'"):
        run.features("roads")


def test_open_run_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    for path, words in ((tmp_path / "nope", "not found"), (tmp_path / "file.txt", "not a geoseg"),
                        (tmp_path / "empty", "not a geoseg run")):
        with pytest.raises(InputError, match=words) as info:
            geoseg.open_run(path)
        assert "\n" not in str(info.value)


def test_incomplete_run_says_so(example: dict[str, Any], tmp_path: Path) -> None:
    """An interrupted run opens; its outputs need partial=True; its summary is missing."""
    src = example["run"].path
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").write_text(json.dumps({**manifest, "status": "interrupted"}))
    (dst / "summary.json").unlink()
    (dst / "predictions.zarr" / "landcover" / "0.0").unlink()  # a chunk never written
    run = geoseg.open_run(dst)
    assert not run.complete and run.status == "interrupted"
    with pytest.raises(IncompleteRunError, match="resume=True"):
        run.predictions()
    with pytest.raises(IncompleteRunError, match="partial=True"):
        run.features("buildings")
    with pytest.raises(IncompleteRunError, match="no summary"):
        _ = run.summary
    assert run.failed_chunks == ()  # no summary: nothing recorded as failed
    ds = run.predictions(partial=True)
    assert int(ds["landcover"][:256, :256].max()) == 255  # the missing chunk reads as fill
    assert len(run.features("buildings", partial=True)) > 0


def test_run_rejects_unknown_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting.*chunksize.*known:.*chunk_size"):
        geoseg.run(tmp_path / "img.tif", tmp_path / "out", chunksize=256)
    with pytest.raises(GeoSegError, match="not found"):
        geoseg.run(tmp_path / "img.tif", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_is_light_and_names_are_lazy() -> None:
    code = ("import sys, geoseg; heavy = [m for m in ('torch', 'rasterio', 'xarray', 'geopandas', "
            "'zarr', 'geoseg.api') if m in sys.modules]; assert not heavy, heavy; "
            "print(geoseg.__version__, geoseg.Run.__module__, geoseg.errors.InputError.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [geoseg.__version__, "geoseg.api", "InputError"]


def test_train_and_evaluate_are_plain_functions() -> None:
    """geoseg.train / geoseg.evaluate are the API functions; the library behind them keeps its
    own names (geoseg.training, geoseg.scoring), so importing it never shadows them."""
    import geoseg.scoring
    import geoseg.training
    from geoseg import api

    assert geoseg.train is api.train and geoseg.evaluate is api.evaluate
    with pytest.raises(ConfigError, match="no training data"):
        geoseg.train("unused", task="landcover")
    # what the CLI accepts, and shapes it would never pass: one ConfigError each (they were a
    # TypeError from a comparison and a ValueError from unpacking)
    with pytest.raises(ConfigError, match="no training data"):
        geoseg.train("unused", task="landcover", background="ignore")
    with pytest.raises(ConfigError, match="background must be a class id"):
        geoseg.train("unused", task="landcover", background="none")
    with pytest.raises(ConfigError, match=r"pairs are \(image, labels\) tuples, got 'img.tif'"):
        geoseg.train("unused", task="landcover", pairs=[("img.tif")])
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        geoseg.evaluate()


def test_train_builds_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """geoseg.train maps its arguments onto TrainConfig and SceneFiles (training faked)."""
    import geoseg.training as tr
    from tests.train.conftest import write_scene

    scene = write_scene(tmp_path / "scene")
    seen: dict[str, Any] = {}

    def fake(config: Any, scenes: Any, out: Any, *, resume: bool, overwrite: bool,
             progress: Any) -> str:
        seen.update(config=config, scenes=scenes, out=out, resume=resume)
        return "result"

    monkeypatch.setattr(tr, "train", fake)
    res = geoseg.train(tmp_path / "b", task="landcover",
                       pairs=[(scene / "image_t0.tif", scene / "landcover_t0.tif")],
                       steps=3, chip_size=64, seed=4, background=255)
    assert res == "result" and seen["out"] == tmp_path / "b" and seen["resume"] is False
    cfg = seen["config"]
    assert (cfg.steps, cfg.chip_size, cfg.seed, cfg.name) == (3, 64, 4, "landcover-custom")
    assert [c.name for c in cfg.classes] == ["bare", "building", "road", "vegetation", "water"]
    assert seen["scenes"][0].background == 255
    with pytest.raises(ConfigError, match="chip_size"):
        geoseg.train(tmp_path / "b", task="landcover", scenes=[], chip_size=70,
                     pairs=[(scene / "image_t0.tif", scene / "landcover_t0.tif")])


def test_train_for_real_then_run_with_the_bundle(tmp_path: Path) -> None:
    """One real (tiny) training step writes a bundle that geoseg.run uses."""
    from geoseg.bundle import ArchitectureSpec
    from tests.train.conftest import write_scene

    scene = write_scene(tmp_path / "scene")
    res = geoseg.train(tmp_path / "bundle", task="landcover",
                       pairs=[(scene / "image_t0.tif", scene / "landcover_t0.tif")],
                       steps=1, batch_size=1, chip_size=64, device="cpu", threads=1,
                       val_windows_per_scene=1,
                       architecture=ArchitectureSpec(name="unet", encoder="resnet18",
                                                     encoder_depth=3,
                                                     decoder_channels=(8, 8, 8)))
    assert (res.bundle_dir / "bundle.yaml").is_file() and len(res.losses) == 1
    with rasterio.open(scene / "image_t0.tif") as src:  # the region: the image's left half
        left, bottom, right, top = src.bounds
        crs = src.crs.to_string()
    region = tmp_path / "left.geojson"
    gpd.GeoDataFrame(geometry=[shapely.box(left, bottom, (left + right) / 2, top)],
                     crs=crs).to_file(region)
    # path objects, as train returns them, for the bundle and the region file
    run = geoseg.run(scene / "image_t0.tif", tmp_path / "run", models=[res.bundle_dir],
                     region={"file": region}, chunk_size=64, threads=1, device="cpu")
    assert run.complete and run.layers == ("landcover",)
    assert run.predictions()["landcover"].shape == (128, 64)


def test_failed_chunks_warn_and_return_the_run(example: dict[str, Any], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """geoseg.run passes its settings, overwrite/resume and progress to run_job; failed chunks
    are a warning and an incomplete Run, not an exception."""
    from geoseg.job import JobResult
    from geoseg.runtime.base import ChunkFailure

    out = tmp_path / "run"
    shutil.copytree(example["run"].path, out)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest,
                                                   "status": "completed with 1 failed chunks"}))
    summary = json.loads((out / "summary.json").read_text())
    failure = ChunkFailure("0_1", (0, 256, 256, 256), "RuntimeError: boom", 3)
    summary["status"] = "completed_with_failures"
    summary["chunks"]["failed"] = [failure.__dict__]
    (out / "summary.json").write_text(json.dumps(summary))
    seen: dict[str, Any] = {}

    def fake_run_job(cfg: Any, **kw: Any) -> JobResult:
        seen.update(cfg=cfg, **kw)
        return JobResult(out, summary, [failure])

    monkeypatch.setattr("geoseg.job.run_job", fake_run_job)
    calls: list[object] = []
    with pytest.warns(GeoSegWarning, match="1 chunk.*0_1.*resume=True"):
        run = geoseg.run(tmp_path / "img.tif", out, resume=True, progress=calls.append,
                         chunk_size=512, tta="flips")
    assert (seen["resume"], seen["overwrite"], seen["progress"]) == (True, False, calls.append)
    assert seen["cfg"].inference.chunk_size == 512 and seen["cfg"].inference.tta == "flips"
    assert not run.complete and not run.summary.complete
    assert run.failed_chunks == (geoseg.FailedChunk("0_1", (0, 256, 256, 256),
                                                    "RuntimeError: boom", 3, True),)
    with pytest.raises(IncompleteRunError):
        run.predictions()


@pytest.mark.parametrize(("call", "says"), [
    (lambda tmp: geoseg.open_run(None), "open_run takes a run folder's path"),  # type: ignore[arg-type]
    (lambda tmp: geoseg.run(None, tmp / "o"), "image must be a path or URL"),  # type: ignore[arg-type]
    (lambda tmp: geoseg.run([], tmp / "o"), "image must be a path or URL"),
    (lambda tmp: geoseg.run(tmp / "a.tif", 5), "out must be a folder's path"),  # type: ignore[arg-type]
    (lambda tmp: geoseg.run(tmp / "a.tif", tmp / "o", progress=5),  # type: ignore[arg-type]
     "progress must be a function"),
    (lambda tmp: geoseg.run(tmp / "a.tif", tmp / "o", overwrite=True, resume=True),
     "contradict each other"),
    (lambda tmp: geoseg.run(tmp / "a.tif", tmp / "o", output=tmp / "x"),
     "output is not a setting: the output folder is run's second argument"),
    (lambda tmp: geoseg.train(tmp / "o", task="trees", scenes=[tmp]),  # type: ignore[arg-type]
     "task must be 'landcover' or 'buildings', got 'trees'"),
    (lambda tmp: geoseg.train(tmp / "o", task="landcover", scenes=str(tmp)),
     r"scenes is a list of scene folders: pass scenes=\['"),
])
def test_wrong_arguments_are_one_geoseg_error_before_any_work(
        tmp_path: Path, call: Any, says: str) -> None:
    from geoseg.errors import InputError

    with pytest.raises(InputError, match=says):
        call(tmp_path)
    assert not (tmp_path / "o").exists()


def test_a_run_without_vectors_and_a_relative_path(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A complete run made without vectors says so (it is not incomplete), and a run opened by
    a relative path stays the same run after the working folder changes."""
    from tests.conftest import write_raster
    from tests.pipeline.conftest import textured, tiny_bundle

    image = write_raster(tmp_path / "a.tif", textured(64, 64),
                         descriptions=["red", "green", "blue", "nir"])
    bundle = tiny_bundle(tmp_path / "bundles", "landcover", 1)
    geoseg.run(image, tmp_path / "plain", models=[bundle], vectors=False, chunk_size=64,
               workers=1, threads=1)
    monkeypatch.chdir(tmp_path)
    run = geoseg.open_run("plain")
    assert run.complete and run.path == tmp_path / "plain"
    with pytest.raises(InputError, match="made without vectors") as info:
        run.feature_layers  # noqa: B018
    assert not isinstance(info.value, IncompleteRunError)
    monkeypatch.chdir(image.parent.parent)
    assert run.summary.chunks.total == 1
