"""The quicklook of a run is built from the pixels its chunks kept (geoseg.thumbs) without
reading the image or the store again, and is byte for byte the quicklook read back from them:
plain image, nodata holes with a region, threads, a mosaic of two images, and chunks whose
thumbs are missing (a resumed run)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st

import geoseg.thumbs
from geoseg import outputs
from geoseg.config import validate_job
from geoseg.grid import Window
from geoseg.job import run_job
from geoseg.plan import Plan, make_plan
from geoseg.runtime.local import LocalBackend
from geoseg.runtime.serial import SerialBackend
from geoseg.thumbs import IMAGE, image_thumb, quicklook_step, sample_slices
from tests.conftest import write_raster
from tests.pipeline.conftest import textured

T = Affine(0.5, 0, 500000.0, 0, -0.5, 5100000.0)
REGION = ("POLYGON ((500010 5099910, 500120 5099910, 500120 5099985, 500010 5099985, "
          "500010 5099910), (500050 5099940, 500080 5099940, 500080 5099970, "
          "500050 5099970, 500050 5099940))")


@pytest.fixture(autouse=True)
def small_quicklook(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quicklooks of at most 50 px: every 6th pixel of the 264 px wide test images, a step that
    does not divide the chunk size (64), so chunks start off the sampling grid."""
    monkeypatch.setattr(geoseg.thumbs, "QUICKLOOK_PX", 50)


def _plan(out: Path) -> Plan:
    cfg = validate_job(json.loads((out / "manifest.json").read_text())["config"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_plan(cfg)


def _no_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("the quicklook read the image or the store again")

    monkeypatch.setattr(outputs, "read_window", refuse)
    monkeypatch.setattr(outputs, "read_layer", refuse)


def _read_back(out: Path, tmp_path: Path) -> bytes:
    """The run's quicklook made again from the image and the store."""
    return outputs.quicklook(_plan(out), str(out / "predictions.zarr"),
                             tmp_path / "read-back.png").read_bytes()


def _holes(tmp_path: Path) -> Path:
    img = textured(200, 264).astype(np.float32)
    img[:, 20:60, 30:90] = -9999.0  # declared nodata
    img[1, 150:170, 200:240] = np.nan  # one band NaN
    return write_raster(tmp_path / "holes.tif", img, nodata=-9999.0)


@pytest.mark.parametrize("case", ["plain", "nodata-and-region", "threads"])
def test_quicklook_from_the_chunks_is_the_quicklook_read_back(
        tmp_path: Path, scene_tif: Path, tiny_bundles: tuple[str, str], case: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    image = _holes(tmp_path) if case == "nodata-and-region" else scene_tif
    job: dict[str, Any] = {"image": str(image), "output": str(out), "models": list(tiny_bundles),
                           "inference": {"chunk_size": 64, "halo": 32},
                           "vectors": {"enabled": False}, "outputs": {"cog": False},
                           "runtime": {"threads_per_worker": 1}}
    if case == "nodata-and-region":
        job["region"] = {"wkt": REGION, "crs": "EPSG:32633"}
    backend = LocalBackend() if case == "threads" else SerialBackend()
    with monkeypatch.context() as mp:
        _no_reads(mp)
        assert run_job(validate_job(job), backend=backend).ok
    assert quicklook_step(*_plan(out).grid.shape) > 1
    assert (out / "quicklook.png").read_bytes() == _read_back(out, tmp_path)


def test_mosaic_quicklook_from_the_chunks(tmp_path: Path, tiny_bundles: tuple[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from geoseg.cli import main

    img = textured(200, 264)
    left = write_raster(tmp_path / "left.tif", img[:, :, :160], transform=T)
    right = write_raster(tmp_path / "right.tif", img[:, 30:, 100:],
                         transform=T @ Affine.translation(100, 30))  # no pixels top right
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        _no_reads(mp)
        assert main(["run", str(left), str(right), "-o", str(out), "--nodata", "0",
                     "--chunk-size", "64", "--halo", "32", "--no-vectors", "--executor", "local",
                     *(x for b in tiny_bundles for x in ("-m", b))]) == 0
    assert (out / "quicklook.png").read_bytes() == _read_back(out, tmp_path)


def test_chunks_without_thumbs_are_read(tmp_path: Path, scene_tif: Path,
                                        tiny_bundles: tuple[str, str]) -> None:
    """A resumed run has thumbs only for the chunks it computed: the others are read, and the
    quicklook is the same."""
    out = tmp_path / "run"
    assert run_job(validate_job({
        "image": str(scene_tif), "output": str(out), "models": list(tiny_bundles),
        "inference": {"chunk_size": 64, "halo": 32}, "vectors": {"enabled": False},
        "outputs": {"cog": False}, "runtime": {"threads_per_worker": 1}}),
        backend=SerialBackend()).ok
    plan = _plan(out)
    store = str(out / "predictions.zarr")
    from geoseg.chunks import predict_chunk, read_chunk, write_output
    from geoseg.runtime.local import load_models

    models = load_models(plan, "cpu", 1)
    shutil.copytree(store, tmp_path / "rewrite.zarr")  # chunks computed again, written aside
    half = {c.id: write_output(plan, str(tmp_path / "rewrite.zarr"),
                               predict_chunk(plan, models, read_chunk(plan, c)))["thumbs"]
            for c in list(plan.chunks)[::2]}
    assert all(t.step == 6 and set(t.arrays) == {IMAGE, "landcover", "buildings"}
               for t in half.values())
    mixed = outputs.quicklook(plan, store, tmp_path / "mixed.png", thumbs=half)
    assert mixed.read_bytes() == (out / "quicklook.png").read_bytes()
    # thumbs taken for another size are not used
    other = outputs.quicklook(plan, store, tmp_path / "other.png", max_px=30, thumbs=half)
    assert other.read_bytes() == outputs.quicklook(plan, store, tmp_path / "other-read.png",
                                                   max_px=30).read_bytes()


@given(row=st.integers(-40, 300), col=st.integers(-40, 300), h=st.integers(1, 90),
       w=st.integers(1, 90), step=st.integers(1, 17))
def test_sample_slices_pick_every_step_th_grid_pixel(row: int, col: int, h: int, w: int,
                                                     step: int) -> None:
    rs, cs = sample_slices(Window(row, col, h, w), step)
    rows = np.arange(row, row + h)[rs]
    cols = np.arange(col, col + w)[cs]
    assert rows.tolist() == [r for r in range(row, row + h) if r % step == 0]
    assert cols.tolist() == [c for c in range(col, col + w) if c % step == 0]


def test_image_thumb_needs_the_bands_the_quicklook_shows() -> None:
    data = np.arange(2 * 10 * 10, dtype=np.float32).reshape(2, 10, 10)
    valid = np.ones((10, 10), bool)
    valid[4, 4] = False
    core, window = Window(2, 2, 6, 6), Window(62, 2, 6, 6)
    assert image_thumb(data, valid, (4, 5), 5, core, window, 2) is None  # no band 1-3
    thumb = image_thumb(data, valid, (1, 3), 3, core, window, 2)
    assert thumb is None  # band 2 shown, not read
    one = image_thumb(data[:1], valid, (1,), 1, core, window, 2)
    assert one is not None and one.shape == (3, 3, 1)
    assert np.isnan(one[1, 1, 0]) and one[0, 0, 0] == data[0, 2, 2]


def test_two_band_image_gets_a_grey_panel(tmp_path: Path) -> None:
    """A two-band image (radar VV + VH) made a two-channel image panel that broke the PNG and
    failed the run after its last chunk; its first band is now shown as grey."""
    import torch
    from PIL import Image

    from geoseg.bundle import ArchitectureSpec, BundleSpec, ClassSpec, Normalization
    from geoseg.models import build_model, save_bundle

    spec = BundleSpec(
        name="tiny-radar", version="0.0.1", task="landcover",
        architecture=ArchitectureSpec(name="unet", encoder="resnet18", encoder_depth=3,
                                      decoder_channels=(16, 8, 8)),
        bands=(1, 2), band_names=("vv", "vh"),
        normalization=Normalization(mean=(100.0,) * 2, std=(50.0,) * 2),
        classes=(ClassSpec(id=0, name="land", color="#c8b48c"),
                 ClassSpec(id=1, name="water", color="#3182bd")),
        tile_size=256, pixel_size=0.5)
    torch.manual_seed(0)
    bundle = tmp_path / "radar"
    save_bundle(build_model(spec), spec, bundle)
    image = write_raster(tmp_path / "radar.tif", textured(200, 264)[:2], nodata=0)
    out = tmp_path / "run"
    assert run_job(validate_job({
        "image": str(image), "output": str(out), "models": [str(bundle)],
        "inference": {"chunk_size": 64, "halo": 32}, "vectors": {"enabled": False},
        "outputs": {"cog": False}, "runtime": {"threads_per_worker": 1}}),
        backend=SerialBackend()).ok
    png = np.asarray(Image.open(out / "quicklook.png").convert("RGB"))
    panel = png[:34, :44]  # 264 px at every 6th
    assert png.shape[1] == 44 + 8 + 44 and png.shape[0] > 34  # the panels, then the legend
    legend = {tuple(int(v) for v in px) for px in png[34:].reshape(-1, 3)}
    assert {(0xc8, 0xb4, 0x8c), (0x31, 0x82, 0xbd)} <= legend  # land and water swatches
    assert (panel[..., 0] == panel[..., 1]).all() and (panel[..., 1] == panel[..., 2]).all()
    assert np.ptp(panel) > 100  # stretched grey, not blank
    assert (out / "quicklook.png").read_bytes() == _read_back(out, tmp_path)


def _quicklook_of_pixels(tmp_path: Path, bundles: tuple[str, str], height: float) -> np.ndarray:
    """The quicklook (RGB array) of a run on a 120 × 160 image of 0.5 × ``height`` m pixels."""
    from PIL import Image

    image = write_raster(tmp_path / "tall.tif", textured(120, 160),
                         transform=Affine(0.5, 0, 500000.0, 0, -height, 5100000.0))
    out = tmp_path / "run"
    assert run_job(validate_job({
        "image": str(image), "output": str(out), "models": list(bundles),
        "inference": {"chunk_size": 64, "halo": 32}, "vectors": {"enabled": False},
        "outputs": {"cog": False}, "runtime": {"threads_per_worker": 1}}),
        backend=SerialBackend()).ok
    return np.asarray(Image.open(out / "quicklook.png").convert("RGB"))


def test_the_quicklook_has_a_legend_and_the_grounds_shape(
        tmp_path: Path, tiny_bundles: tuple[str, str]) -> None:
    """0.5 × 0.75 m pixels: the panels are drawn 1.5 times as high as the pixel grid is (the
    ground's shape, not the array's), and a key under them names every class with its colour."""
    from tests.pipeline.conftest import BD, LC

    png = _quicklook_of_pixels(tmp_path, tiny_bundles, 0.75)
    step = quicklook_step(120, 160)
    h, w = -(-120 // step), -(-160 // step)
    assert png.shape[1] == 3 * w + 2 * 8  # image, landcover, buildings
    body = round(h * 1.5)  # the rows' ground height: 0.75 / 0.5
    assert png.shape[0] > body and (png[body] == 255).all()  # the legend's margin below
    assert (png[body - 1, w + 8:2 * w + 8] != 255).any(axis=-1).all()  # landcover's last row
    legend = {tuple(int(v) for v in px) for px in png[body:].reshape(-1, 3)}
    colours = {tuple(int(c.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)) for _, c in (*LC, *BD)}
    assert colours <= legend


def test_very_tall_ground_pixels_stay_within_the_quicklook_limit(
        tmp_path: Path, tiny_bundles: tuple[str, str]) -> None:
    """0.5 × 10 m pixels (20 times as high on the ground as wide): drawn in the ground's shape,
    the panels would be 20 times the limit's height; they are narrowed instead, so the
    quicklook keeps its limit (50 px here) and its shape."""
    png = _quicklook_of_pixels(tmp_path, tiny_bundles, 10.0)
    body = int(np.argmax((png == 255).all(axis=(1, 2))))  # the legend's white margin
    assert body == 50
    step = quicklook_step(120, 160)
    h, w = -(-120 // step), -(-160 // step)
    assert png.shape[1] == round((3 * w + 2 * 8) * 50 / (h * 20))  # the ground's shape kept
